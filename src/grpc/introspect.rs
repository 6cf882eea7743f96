//! The Introspect adapter: parses an `IntrospectRequest` once, calls [`Introspection`],
//! converts the [`Answer`] with `to_proto`, and maps an [`IntrospectError`] onto a
//! [`BoundaryError`] (so `to_status` stays the one mapping to gRPC statuses).

use tracing::debug;

use super::{BoundaryError, Limits, check_field, convert, non_empty, parse_token, pb};
use crate::{
    introspect::{Answer, IntrospectError, IntrospectInput, Introspection},
    registry::RequestError,
};

/// An answer as an `IntrospectResponse`; an inactive one is `active: false` alone.
pub fn to_proto(a: &Answer) -> pb::IntrospectResponse {
    if !a.active {
        return pb::IntrospectResponse::default();
    }
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    pb::IntrospectResponse {
        active: true,
        scope: s(&a.scope),
        client_id: s(&a.client_id),
        username: s(&a.username),
        token_type: s(&a.token_type),
        exp: a.exp.unwrap_or_default(),
        iat: a.iat.unwrap_or_default(),
        nbf: a.nbf.unwrap_or_default(),
        sub: s(&a.sub),
        aud: a.aud.clone(),
        iss: s(&a.iss),
        jti: s(&a.jti),
        claims: (!a.claims.is_empty()).then(|| convert::json_to_struct(&a.claims)),
        tenant: s(&a.tenant),
    }
}

/// The boundary error of an Introspect failure: bad requests are INVALID_ARGUMENT, the
/// concurrency cap RESOURCE_EXHAUSTED, every upstream fault UNAVAILABLE.
pub fn boundary_error(e: IntrospectError) -> BoundaryError {
    match e {
        IntrospectError::UnknownTenant(t) => BoundaryError::Request(RequestError::UnknownTenant(t)),
        IntrospectError::NoIntrospection(_)
        | IntrospectError::TenantRequired(_)
        | IntrospectError::NotConfigured => BoundaryError::Invalid(e.to_string()),
        IntrospectError::Busy { .. } => BoundaryError::Exhausted(e.to_string()),
        IntrospectError::Unavailable { .. } | IntrospectError::Misconfigured { .. } => {
            BoundaryError::Unavailable(e.to_string())
        }
    }
}

/// Introspect without the tonic wrapping.
pub async fn introspect_message(
    introspection: &Introspection,
    limits: &Limits,
    req: &pb::IntrospectRequest,
) -> Result<pb::IntrospectResponse, BoundaryError> {
    let token = parse_token(&req.token, limits.max_token_bytes)?;
    check_field("tenant", &req.tenant)?;
    check_field("token_type_hint", &req.token_type_hint)?;
    let input = IntrospectInput {
        token,
        token_type_hint: non_empty(&req.token_type_hint),
        tenant: non_empty(&req.tenant),
    };
    match introspection.introspect(&input).await {
        Ok(answer) => Ok(to_proto(&answer)),
        Err(e) => {
            debug!(error = %e, "introspect failed");
            Err(boundary_error(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tonic::{Code, Request};

    use super::*;
    use crate::{
        config,
        grpc::{
            TokenServiceImpl,
            pb::token_service_server::TokenService,
            testing::{SECRET, hs256},
        },
        registry::Registry,
    };

    fn service() -> TokenServiceImpl {
        crate::install_crypto();
        let yaml = "tenants:\n  - id: fp\n    issuer: https://fp.example\n    audiences: [api]\n    algorithms: [HS256]\n    hmac_secret_env: S\n";
        let settings = config::load_str(yaml, &|_| Some(SECRET.to_string()), &[]).expect("config");
        let registry = Registry::new(&settings).expect("registry");
        let limits = Limits {
            max_token_bytes: 1024,
            watchers: crate::grpc::watch::WatcherLimits::total(1),
        };
        TokenServiceImpl::new(registry.clone(), limits)
            .with_introspector(Introspection::local_only(registry))
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }

    async fn call(
        svc: &TokenServiceImpl,
        req: pb::IntrospectRequest,
    ) -> Result<pb::IntrospectResponse, tonic::Status> {
        svc.introspect(Request::new(req))
            .await
            .map(|r| r.into_inner())
    }

    #[tokio::test]
    async fn jwt_answers_through_the_service_trait() {
        let svc = service();
        let n = now();
        let t = hs256(
            &json!({"iss": "https://fp.example", "aud": "api", "sub": "u", "exp": n + 60, "iat": n, "azp": "app", "x": 1}),
        );
        let r = call(
            &svc,
            pb::IntrospectRequest {
                token: format!("Bearer {t}"),
                ..Default::default()
            },
        )
        .await
        .expect("ok");
        assert!(r.active);
        assert_eq!(
            (r.tenant.as_str(), r.sub.as_str(), r.client_id.as_str()),
            ("fp", "u", "app")
        );
        assert_eq!(r.token_type, "Bearer");
        assert_eq!(r.exp, n + 60);
        assert!(r.claims.expect("claims").fields.contains_key("x"));

        let wrong_aud = hs256(&json!({"iss": "https://fp.example", "aud": "other", "exp": n + 60}));
        let r = call(
            &svc,
            pb::IntrospectRequest {
                token: wrong_aud,
                ..Default::default()
            },
        )
        .await
        .expect("ok");
        assert_eq!(
            r,
            pb::IntrospectResponse::default(),
            "inactive and nothing else"
        );
    }

    #[tokio::test]
    async fn bad_requests_are_invalid_argument() {
        let svc = service();
        for req in [
            pb::IntrospectRequest::default(),
            pb::IntrospectRequest {
                token: "x".repeat(1025),
                ..Default::default()
            },
            pb::IntrospectRequest {
                token: "opaque".into(),
                tenant: "nope".into(),
                ..Default::default()
            },
        ] {
            let err = call(&svc, req.clone()).await.expect_err("refused");
            assert_eq!(err.code(), Code::InvalidArgument, "{req:?}: {err}");
        }
    }

    #[tokio::test]
    async fn tokens_no_tenant_can_answer_are_inactive() {
        let svc = service();
        for (token, tenant) in [
            ("opaque", ""),
            ("opaque", "fp"),
            ("a.b.c", ""),
            ("a.b.c", "fp"),
            ("eyJhbGciOiJIUzI1NiJ9..", ""),
        ] {
            let r = call(
                &svc,
                pb::IntrospectRequest {
                    token: token.into(),
                    tenant: tenant.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("answered");
            assert_eq!(r, pb::IntrospectResponse::default(), "{token} at {tenant}");
        }
    }

    #[test]
    fn error_mapping() {
        use crate::grpc::to_status;
        let code = |e: IntrospectError| to_status(&boundary_error(e)).code();
        assert_eq!(code(IntrospectError::NotConfigured), Code::InvalidArgument);
        assert_eq!(
            code(IntrospectError::UnknownTenant("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(IntrospectError::Busy {
                tenant: "t".into(),
                limit: 1
            }),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(IntrospectError::Unavailable {
                tenant: "t".into(),
                reason: "r".into()
            }),
            Code::Unavailable
        );
        assert_eq!(
            code(IntrospectError::Misconfigured {
                tenant: "t".into(),
                reason: "r".into()
            }),
            Code::Unavailable
        );
    }

    #[test]
    fn inactive_answers_carry_nothing() {
        let mut a = Answer::inactive();
        a.sub = Some("leak".into());
        a.tenant = Some("t".into());
        assert_eq!(to_proto(&a), pb::IntrospectResponse::default());
    }
}

//! `introspect.v1.AdminService`, the operator view: every key set's keys and fetch
//! history (`ListIssuers`), a forced refresh of one key set that reports what changed
//! (`RefreshIssuer`), and revocation rules (`Revoke`). This adapter checks the caller's
//! token (`server.admin_auth`, for every method), parses requests and converts answers;
//! the work is the registry's ([`Registry::key_sets_of`], [`Registry::force_refresh`],
//! [`Registry::revoke`]).

use std::{sync::Arc, time::SystemTime};

use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::warn;

use super::{
    BoundaryError, convert,
    pb::{self, admin_service_server::AdminService},
};
use crate::{
    config::AdminAuthSettings,
    jwt::ErrorCode,
    registry::{KeySetState, Registry, RevokeError, ValidateError, ValidateInput},
};

/// The AdminService handler (cheap to clone).
#[derive(Debug, Clone)]
pub struct AdminServiceImpl {
    registry: Registry,
    auth: Option<Arc<AdminAuth>>,
}

#[derive(Debug)]
struct AdminAuth {
    settings: AdminAuthSettings,
    max_token_bytes: usize,
}

/// The token of an `authorization` value: scheme `Bearer` (case-insensitive), then the
/// token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl AdminServiceImpl {
    /// A handler over `registry`, open to every caller (see [`Self::with_auth`]).
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            auth: None,
        }
    }

    /// Every call must then carry `authorization: Bearer <token>` that Validate accepts
    /// with `auth` (tokens up to `max_token_bytes`); `None` leaves the service open.
    pub fn with_auth(mut self, auth: Option<AdminAuthSettings>, max_token_bytes: usize) -> Self {
        self.auth = auth.map(|settings| {
            Arc::new(AdminAuth {
                settings,
                max_token_bytes,
            })
        });
        self
    }

    /// Checks a call's `authorization` metadata: UNAUTHENTICATED when it is absent or
    /// its token is not accepted, PERMISSION_DENIED when a required scope is missing.
    pub async fn authorize(&self, metadata: &MetadataMap) -> Result<(), BoundaryError> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let unauthenticated = |why: &str| BoundaryError::Unauthenticated(why.to_string());
        let value = metadata.get("authorization").ok_or_else(|| {
            unauthenticated("admin calls need `authorization: Bearer <token>` metadata")
        })?;
        let token =
            value.to_str().ok().and_then(bearer).ok_or_else(|| {
                unauthenticated("the authorization metadata is not `Bearer <token>`")
            })?;
        if token.len() > auth.max_token_bytes {
            return Err(unauthenticated("the admin token is too large"));
        }
        let s = &auth.settings;
        let input = ValidateInput {
            token,
            tenant: Some(&s.tenant),
            audiences: &s.audiences,
            required_scopes: &s.required_scopes,
            peek_replay: true,
            ..ValidateInput::default()
        };
        match self.registry.validate(&input).await {
            Ok(_) => Ok(()),
            Err(ValidateError::Rejected { rejection, .. }) => {
                warn!(code = %rejection.code, reason = %rejection.message, "admin call refused");
                if rejection.code == ErrorCode::InsufficientScope {
                    Err(BoundaryError::PermissionDenied(format!(
                        "the admin token lacks a required scope: {}",
                        rejection.message
                    )))
                } else {
                    Err(BoundaryError::Unauthenticated(format!(
                        "the admin token is not accepted ({})",
                        rejection.code
                    )))
                }
            }
            Err(ValidateError::Request(e)) => {
                warn!(error = %e, "admin call refused");
                Err(unauthenticated("the admin token is not accepted"))
            }
        }
    }

    /// ListIssuers without the tonic wrapping.
    pub fn list_issuers_message(
        &self,
        req: &pb::ListIssuersRequest,
    ) -> Result<pb::ListIssuersResponse, BoundaryError> {
        super::check_list("tenants", &req.tenants)?;
        let issuers = self
            .registry
            .key_sets_of(&req.tenants)?
            .iter()
            .map(|s| convert::issuer_status(s, self.replica()))
            .collect();
        Ok(pb::ListIssuersResponse { issuers })
    }

    /// The key set a RefreshIssuer request names: a tenant, plus its policy for B2C.
    pub fn find(&self, tenant: &str, policy: &str) -> Result<Arc<KeySetState>, BoundaryError> {
        if tenant.is_empty() {
            return Err(BoundaryError::Invalid("tenant is required".into()));
        }
        super::check_field("tenant", tenant)?;
        super::check_field("policy", policy)?;
        let policy = (!policy.is_empty()).then_some(policy);
        Ok(self.registry.find_key_set(tenant, policy)?)
    }

    /// RefreshIssuer without the tonic wrapping: forces a full refresh (joining one in
    /// flight; inside the tenant's `unknown_kid_cooldown` since the last forced one,
    /// repeating its last result instead), waits at most the tenant's `fetch_timeout`,
    /// and reports the difference between the keys before and after, by the same rule
    /// as WatchKeys' ADDED/REMOVED.
    pub async fn refresh_issuer_message(
        &self,
        req: &pb::RefreshIssuerRequest,
    ) -> Result<pb::RefreshIssuerResponse, BoundaryError> {
        let state = self.find(&req.tenant, &req.policy)?;
        let report = self
            .registry
            .force_refresh(
                &state.id,
                state.settings.fetch_timeout,
                state.settings.unknown_kid_cooldown,
            )
            .await?;
        Ok(convert::refresh_report(&report, self.replica()))
    }

    /// This replica's name (empty without `shared_state`).
    fn replica(&self) -> &str {
        self.registry.shared().map_or("", |s| s.fetch.replica())
    }

    /// Revoke without the tonic wrapping.
    pub async fn revoke_message(
        &self,
        req: &pb::RevokeRequest,
    ) -> Result<pb::RevokeResponse, BoundaryError> {
        let input = convert::revoke_input(req)?;
        let done = self.registry.revoke(&input).await.map_err(|e| match e {
            RevokeError::Invalid(m) => BoundaryError::Invalid(m),
            RevokeError::Unavailable(m) => BoundaryError::Unavailable(m),
            RevokeError::Full(m) => BoundaryError::Exhausted(m),
        })?;
        let expires_at = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(
                u64::try_from(done.revocation.expires_at).unwrap_or(0),
            );
        let message = if done.fleet_wide {
            "recorded for every replica of the fleet"
        } else {
            "recorded for this replica only: shared_state is not configured, so other replicas do not know it"
        };
        Ok(pb::RevokeResponse {
            fleet_wide: done.fleet_wide,
            expires_at: Some(convert::system_time(expires_at)),
            message: message.to_string(),
        })
    }
}

#[tonic::async_trait]
impl AdminService for AdminServiceImpl {
    async fn list_issuers(
        &self,
        request: Request<pb::ListIssuersRequest>,
    ) -> Result<Response<pb::ListIssuersResponse>, Status> {
        self.authorize(request.metadata()).await?;
        Ok(Response::new(
            self.list_issuers_message(&request.into_inner())?,
        ))
    }

    async fn refresh_issuer(
        &self,
        request: Request<pb::RefreshIssuerRequest>,
    ) -> Result<Response<pb::RefreshIssuerResponse>, Status> {
        self.authorize(request.metadata()).await?;
        Ok(Response::new(
            self.refresh_issuer_message(&request.into_inner()).await?,
        ))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        self.authorize(request.metadata()).await?;
        Ok(Response::new(
            self.revoke_message(&request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn admin() -> AdminServiceImpl {
        let yaml = "tenants:\n  - id: file\n    issuer: https://f.example\n    audiences: [x]\n    jwks_file: /nonexistent/f.json\n  - id: b2c\n    issuer: https://b.example/\n    audiences: [x]\n    b2c:\n      metadata_url: https://b.example/{policy}/.well-known/openid-configuration\n      policies: [B2C_1_signin, B2C_1_reset]\n  - id: first-party\n    issuer: https://fp.example\n    audiences: [x]\n    algorithms: [HS256]\n    hmac_secret_env: SECRET\n";
        let env = |name: &str| (name == "SECRET").then(|| "s".repeat(32));
        let settings = config::load_str(yaml, &env, &[]).expect("config");
        AdminServiceImpl::new(Registry::new(&settings).expect("registry"))
    }

    #[test]
    fn list_issuers_covers_every_key_set_and_filters_by_tenant() {
        let a = admin();
        let all = a
            .list_issuers_message(&pb::ListIssuersRequest::default())
            .expect("list");
        let ids: Vec<(String, String, String)> = all
            .issuers
            .iter()
            .map(|i| (i.tenant.clone(), i.policy.clone(), i.source.clone()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("b2c".into(), "B2C_1_reset".into(), "discovery".into()),
                ("b2c".into(), "B2C_1_signin".into(), "discovery".into()),
                ("file".into(), String::new(), "jwks_file".into()),
                ("first-party".into(), String::new(), "static".into()),
            ]
        );
        assert_eq!(
            all.issuers[1].metadata_url,
            "https://b.example/B2C_1_signin/.well-known/openid-configuration"
        );
        let fp = &all.issuers[3];
        assert_eq!(fp.keys.len(), 1);
        assert_eq!(fp.keys[0].key_type, "oct");
        assert!(
            fp.keys[0].thumbprint.is_empty(),
            "no hash of a secret is shown"
        );
        assert!(fp.last_success.is_some());
        let one = a
            .list_issuers_message(&pb::ListIssuersRequest {
                tenants: vec!["file".into()],
            })
            .expect("list");
        assert_eq!(one.issuers.len(), 1);
        let err = a
            .list_issuers_message(&pb::ListIssuersRequest {
                tenants: vec!["nope".into()],
            })
            .expect_err("unknown tenant");
        assert_eq!(
            super::super::to_status(&err).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn refresh_targets_are_checked() {
        let a = admin();
        let code = |t: &str, p: &str| {
            a.find(t, p)
                .map(|s| s.id.to_string())
                .map_err(|e| super::super::to_status(&e).code())
        };
        assert_eq!(code("b2c", "b2c_1_SIGNIN"), Ok("b2c/B2C_1_signin".into()));
        assert_eq!(code("file", ""), Ok("file".into()));
        assert_eq!(code("", ""), Err(tonic::Code::InvalidArgument));
        assert_eq!(code("nope", ""), Err(tonic::Code::InvalidArgument));
        assert_eq!(code("b2c", ""), Err(tonic::Code::InvalidArgument));
        assert_eq!(
            code("b2c", "B2C_1_other"),
            Err(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code("file", "B2C_1_signin"),
            Err(tonic::Code::InvalidArgument)
        );
    }

    #[tokio::test]
    async fn static_keys_cannot_be_refreshed() {
        let a = admin();
        let err = a
            .refresh_issuer_message(&pb::RefreshIssuerRequest {
                tenant: "first-party".into(),
                policy: String::new(),
            })
            .await
            .expect_err("static");
        assert_eq!(
            super::super::to_status(&err).code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_nobody_serves_times_out_with_an_error_not_a_hang() {
        // No refresher runs in this test, so the forced refresh never completes.
        let a = admin();
        let r = a
            .refresh_issuer_message(&pb::RefreshIssuerRequest {
                tenant: "file".into(),
                policy: String::new(),
            })
            .await
            .expect("answer");
        assert!(!r.refreshed);
        assert!(r.error.contains("did not finish within"), "{}", r.error);
        assert!(r.added.is_empty() && r.removed.is_empty());
    }
}

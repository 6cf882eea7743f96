//! The Validate answer written straight to the wire, and the route that sends it: an
//! accepted token's fields are encoded from the core's values where they are (the claims
//! are already in the wire form of `google.protobuf.Struct`, see `jwt::compact`), so a
//! call builds no `ValidateResponse`, no `Struct` and no per-field `String`. It decodes
//! as the proto's `ValidateResponse`; rejections use the generated message.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint},
};
use tonic::{Status, body::Body, server::NamedService};
use tonic_prost::ProstCodec;

use super::{
    TokenServiceImpl,
    pb::{self, token_service_server::TokenServiceServer},
};
use crate::registry::Validated;

/// The fields of an accepted token's `ValidateResponse`, borrowed from the core.
#[derive(Debug, Clone, Copy)]
pub struct ValidFields<'a, A, S> {
    /// `tenant` (3).
    pub tenant: &'a str,
    /// `policy` (4).
    pub policy: &'a str,
    /// `issuer` (5).
    pub issuer: &'a str,
    /// `subject` (6).
    pub subject: &'a str,
    /// `audiences` (7).
    pub audiences: A,
    /// `scopes` (8).
    pub scopes: S,
    /// `expires_at` (9), `issued_at` (10), `not_before` (11): seconds since the epoch.
    pub times: [Option<f64>; 3],
    /// `key_id` (12).
    pub key_id: &'a str,
    /// `algorithm` (13).
    pub algorithm: &'a str,
    /// `claims` (14): the content of a `google.protobuf.Struct`, already encoded.
    pub claims: &'a [u8],
    /// `binding` (15): its `kind`, `jkt` and `x5t_s256`.
    pub binding: (pb::BindingKind, &'a str, &'a str),
    /// `dpop_nonce` (16).
    pub dpop_nonce: &'a str,
}

const fn tag(field: u32, wire: u32) -> u64 {
    ((field << 3) | wire) as u64
}

fn str_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        encoded_len_varint(tag(field, 2)) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(field: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(field, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

/// `google.protobuf.Timestamp` of fractional seconds, as `convert::timestamp` makes it.
fn timestamp(secs: f64) -> (i64, i32) {
    let whole = secs.floor();
    (whole as i64, ((secs - whole) * 1e9) as i32)
}

fn timestamp_body_len(secs: f64) -> usize {
    let (s, n) = timestamp(secs);
    let mut len = 0;
    if s != 0 {
        len += 1 + encoded_len_varint(s as u64);
    }
    if n != 0 {
        len += 1 + encoded_len_varint(i64::from(n) as u64);
    }
    len
}

fn put_timestamp(field: u32, secs: f64, buf: &mut impl BufMut) {
    let (s, n) = timestamp(secs);
    encode_key(field, WireType::LengthDelimited, buf);
    encode_varint(timestamp_body_len(secs) as u64, buf);
    if s != 0 {
        encode_key(1, WireType::Varint, buf);
        encode_varint(s as u64, buf);
    }
    if n != 0 {
        encode_key(2, WireType::Varint, buf);
        encode_varint(i64::from(n) as u64, buf);
    }
}

impl<'a, A, S> ValidFields<'a, A, S>
where
    A: Iterator<Item = &'a str> + Clone,
    S: Iterator<Item = &'a str> + Clone,
{
    /// Bytes of the `Binding` message's content.
    fn binding_len(&self) -> usize {
        let (kind, jkt, x5t) = self.binding;
        let kind = kind as i32;
        let kind_len = if kind == 0 {
            0
        } else {
            1 + encoded_len_varint(kind as u64)
        };
        kind_len + str_len(2, jkt) + str_len(3, x5t)
    }

    /// Bytes of the encoded message.
    pub fn encoded_len(&self) -> usize {
        let times: usize = self
            .times
            .iter()
            .flatten()
            .map(|t| {
                let body = timestamp_body_len(*t);
                1 + encoded_len_varint(body as u64) + body
            })
            .sum();
        2 + str_len(3, self.tenant)
            + str_len(4, self.policy)
            + str_len(5, self.issuer)
            + str_len(6, self.subject)
            + self
                .audiences
                .clone()
                .map(|a| 1 + encoded_len_varint(a.len() as u64) + a.len())
                .sum::<usize>()
            + self
                .scopes
                .clone()
                .map(|s| 1 + encoded_len_varint(s.len() as u64) + s.len())
                .sum::<usize>()
            + times
            + str_len(12, self.key_id)
            + str_len(13, self.algorithm)
            + 1
            + encoded_len_varint(self.claims.len() as u64)
            + self.claims.len()
            + 1
            + encoded_len_varint(self.binding_len() as u64)
            + self.binding_len()
            + str_len(16, self.dpop_nonce)
    }

    /// Writes the message (fields in number order, empty strings left out, as prost
    /// writes them).
    pub fn encode(&self, buf: &mut impl BufMut) {
        encode_key(1, WireType::Varint, buf);
        encode_varint(1, buf);
        put_str(3, self.tenant, buf);
        put_str(4, self.policy, buf);
        put_str(5, self.issuer, buf);
        put_str(6, self.subject, buf);
        for a in self.audiences.clone() {
            encode_key(7, WireType::LengthDelimited, buf);
            encode_varint(a.len() as u64, buf);
            buf.put_slice(a.as_bytes());
        }
        for s in self.scopes.clone() {
            encode_key(8, WireType::LengthDelimited, buf);
            encode_varint(s.len() as u64, buf);
            buf.put_slice(s.as_bytes());
        }
        for (field, t) in [9, 10, 11].into_iter().zip(self.times) {
            if let Some(t) = t {
                put_timestamp(field, t, buf);
            }
        }
        put_str(12, self.key_id, buf);
        put_str(13, self.algorithm, buf);
        encode_key(14, WireType::LengthDelimited, buf);
        encode_varint(self.claims.len() as u64, buf);
        buf.put_slice(self.claims);
        // `binding` is always present, as `convert::validated` sets it.
        let (kind, jkt, x5t) = self.binding;
        encode_key(15, WireType::LengthDelimited, buf);
        encode_varint(self.binding_len() as u64, buf);
        if kind as i32 != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(kind as i32 as u64, buf);
        }
        put_str(2, jkt, buf);
        put_str(3, x5t, buf);
        put_str(16, self.dpop_nonce, buf);
    }
}

/// The fields of an accepted token, borrowed from it.
fn fields(
    v: &Validated,
) -> ValidFields<'_, impl Iterator<Item = &str> + Clone, impl Iterator<Item = &str> + Clone> {
    let c = v.claims();
    ValidFields {
        tenant: v.tenant.id(),
        policy: v.policy().unwrap_or_default(),
        issuer: c.iss().unwrap_or_default(),
        subject: c.sub().unwrap_or_default(),
        audiences: c.aud(),
        scopes: c.scopes(),
        times: [c.exp, c.iat, c.nbf],
        key_id: v.kid().or(v.key().kid.as_deref()).unwrap_or_default(),
        // The header's `alg` is the algorithm's exact name (it parsed as one).
        algorithm: v.token.alg_name(),
        claims: c.encoded(),
        binding: (
            super::convert::binding_kind(v.binding.kind),
            v.binding.jkt.as_deref().unwrap_or_default(),
            v.binding.x5t_s256.as_deref().unwrap_or_default(),
        ),
        dpop_nonce: v.dpop_nonce.as_deref().unwrap_or_default(),
    }
}

/// The response of the Validate route.
pub enum Reply {
    /// An accepted token, encoded from its core values.
    Valid(Validated),
    /// A generated message (rejections).
    Message(Box<pb::ValidateResponse>),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Valid(v) => f.debug_tuple("Reply::Valid").field(&v.tenant.id()).finish(),
            Reply::Message(m) => f.debug_tuple("Reply::Message").field(m).finish(),
        }
    }
}

impl Default for Reply {
    fn default() -> Self {
        Reply::Message(Box::default())
    }
}

impl Reply {
    /// The generated message with the same content (for handler tests and tools).
    pub fn into_message(self) -> pb::ValidateResponse {
        match self {
            Reply::Valid(v) => super::convert::validated(&v),
            Reply::Message(m) => *m,
        }
    }
}

impl Message for Reply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Reply::Valid(v) => fields(v).encode(buf),
            Reply::Message(m) => m.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever sent; decoding one gives the generated message.
        if let Reply::Valid(_) = self {
            *self = Reply::default();
        }
        match self {
            Reply::Message(m) => m.merge_field(tag, wire_type, buf, ctx),
            Reply::Valid(_) => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Reply::Valid(v) => fields(v).encoded_len(),
            Reply::Message(m) => m.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Reply::default();
    }
}

/// Path of the Validate method.
pub const VALIDATE_PATH: &str = "/introspect.v1.TokenService/Validate";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// `introspect.v1.TokenService` as mounted on the server: Validate answered with a
/// [`Reply`], every other method by the generated server.
#[derive(Debug, Clone)]
pub struct TokenServiceRoutes {
    handler: Arc<TokenServiceImpl>,
    generated: TokenServiceServer<TokenServiceImpl>,
    max_decoding: usize,
}

impl TokenServiceRoutes {
    /// Routes for `handler`, refusing requests over `max_decoding` bytes.
    pub fn new(handler: TokenServiceImpl, max_decoding: usize) -> Self {
        let handler = Arc::new(handler);
        Self {
            generated: TokenServiceServer::from_arc(handler.clone())
                .max_decoding_message_size(max_decoding),
            handler,
            max_decoding,
        }
    }
}

impl NamedService for TokenServiceRoutes {
    const NAME: &'static str = pb::token_service_server::SERVICE_NAME;
}

struct ValidateSvc(Arc<TokenServiceImpl>);

impl tonic::server::UnaryService<pb::ValidateRequest> for ValidateSvc {
    type Response = Reply;
    type Future = BoxFuture<Result<tonic::Response<Reply>, Status>>;

    fn call(&mut self, request: tonic::Request<pb::ValidateRequest>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            match handler.validate_reply(&req).await {
                Ok(reply) => Ok(tonic::Response::new(reply)),
                Err(e) => Err(super::to_status(&e)),
            }
        })
    }
}

impl<B> tower::Service<http::Request<B>> for TokenServiceRoutes
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != VALIDATE_PATH {
            return self.generated.call(req);
        }
        let method = ValidateSvc(self.handler.clone());
        let max = self.max_decoding;
        Box::pin(async move {
            let codec = ProstCodec::<Reply, pb::ValidateRequest>::default();
            let mut grpc =
                tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use serde_json::json;

    use super::*;
    use crate::grpc::testing::{hs256, service};

    /// The hand-written encoding decodes to the generated message, field for field,
    /// the sender-constraint fields (15, 16) included, for a bearer token and a
    /// certificate-bound one.
    #[tokio::test]
    async fn the_written_reply_is_the_generated_message() {
        let svc = service();
        let now = crate::jwt::claims::now_secs() as i64;
        let der = b"a client certificate".to_vec();
        let x5t = crate::jwt::dpop::sha256_b64url(&der);
        let base = json!({"iss": "https://fp.example", "aud": ["api", "other"], "sub": "u",
            "exp": now + 60, "iat": now, "scope": "a b", "x": {"y": [1, 2.5, null]}});
        let mut bound = base.clone();
        bound["cnf"] = json!({"x5t#S256": x5t});
        for (name, req) in [
            (
                "bearer",
                pb::ValidateRequest {
                    token: hs256(&base),
                    ..Default::default()
                },
            ),
            (
                "certificate-bound",
                pb::ValidateRequest {
                    token: hs256(&bound),
                    client_certificate: der.clone(),
                    ..Default::default()
                },
            ),
        ] {
            let reply = svc.validate_reply(&req).await.expect("answered");
            assert!(matches!(reply, Reply::Valid(_)), "{name}: {reply:?}");
            let wire = reply.encode_to_vec();
            assert_eq!(wire.len(), reply.encoded_len(), "{name}");
            let decoded = pb::ValidateResponse::decode(wire.as_slice()).expect("decodes");
            assert_eq!(decoded, reply.into_message(), "{name}");
            if name == "certificate-bound" {
                let b = decoded.binding.expect("binding");
                assert_eq!(b.kind, pb::BindingKind::Mtls as i32);
                assert_eq!(b.x5t_s256, x5t);
            }
        }
    }
}

//! The floor: a tonic TokenService that answers every Validate `valid: true` without
//! looking at the token, on tonic's default server settings (`TCP_NODELAY` included). What it costs per call is
//! the cost of the RPC itself (HTTP/2, protobuf, the runtime) on this machine.

use introspectd::grpc::{
    KeyEventStream,
    pb::{self, token_service_server::TokenService, token_service_server::TokenServiceServer},
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

#[derive(Debug, Default)]
struct Floor;

#[tonic::async_trait]
impl TokenService for Floor {
    async fn validate(
        &self,
        _request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        Ok(Response::new(pb::ValidateResponse {
            valid: true,
            ..Default::default()
        }))
    }

    async fn introspect(
        &self,
        _request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            ..Default::default()
        }))
    }

    type WatchKeysStream = KeyEventStream;

    async fn watch_keys(
        &self,
        _request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        Err(Status::unimplemented("the floor server streams nothing"))
    }
}

/// Serves the floor on 127.0.0.1 (a port the kernel picks), printing `listening PORT`,
/// until the process is killed.
pub fn serve() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Bound here to learn the port; `serve_with_incoming` ignores the builder's
        // `tcp_nodelay` (on by default), so the incoming stream sets it, as tonic's own
        // `serve(addr)` does. Without it Nagle's algorithm holds small replies back for
        // the peer's delayed ACK: 40 ms stalls in the floor's p99.
        let listener = TcpIncoming::bind("127.0.0.1:0".parse()?)?.with_nodelay(Some(true));
        println!("listening {}", listener.local_addr()?.port());
        tonic::transport::Server::builder()
            .add_service(TokenServiceServer::new(Floor))
            .serve_with_incoming(listener)
            .await?;
        Ok(())
    })
}

//! Finding 4: WatchKeys slots were global and anonymous, so one client took all 1,024 and
//! an operator's `introspectd watch` was refused.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use introspectd::grpc::pb::{self, KeyEventType, token_service_client::TokenServiceClient};
use tonic::{Code, Streaming, transport::Channel};

use crate::{net, serve, victim_validates};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OPERATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn open(channel: &Channel) -> Result<Streaming<pb::KeyEvent>, tonic::Status> {
    let mut client = TokenServiceClient::new(channel.clone());
    let call = client.watch_keys(pb::WatchKeysRequest::default());
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(r) => r.map(|r| r.into_inner()),
        // Held back by the connection's stream limit: as good as refused.
        Err(_) => Err(tonic::Status::resource_exhausted("stream limit")),
    }
}

#[tokio::test]
async fn one_client_cannot_take_every_watch_slot() {
    let (idp, key, h) = serve("", "").await;
    let addr = h.server.addr;
    let mut held = Vec::new();
    let mut per_connection = Vec::new();
    // The attacker opens streams on one connection until refused, then on another...
    for _ in 0..80 {
        let channel = net::channel_from(ATTACKER, addr).await;
        let mut here = 0;
        loop {
            match open(&channel).await {
                Ok(s) => {
                    held.push(s);
                    here += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    break;
                }
            }
            if held.len() >= 1100 {
                break;
            }
        }
        per_connection.push(here);
        if here == 0 || held.len() >= 1100 {
            break;
        }
    }
    let most = per_connection.iter().copied().max().unwrap_or(0);
    assert!(
        most <= 16,
        "at most 16 streams per connection: {per_connection:?}"
    );
    assert!(
        held.len() <= 64,
        "at most 64 streams per peer address: {} held",
        held.len()
    );

    // Meanwhile an operator on another address is served.
    let operator = net::channel_from(OPERATOR, addr).await;
    let mut s = tokio::time::timeout(crate::VICTIM_DEADLINE, open(&operator))
        .await
        .expect("in time")
        .expect("the operator's WatchKeys is accepted");
    loop {
        let e = tokio::time::timeout(crate::VICTIM_DEADLINE, s.message())
            .await
            .expect("the snapshot arrives in time")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type == KeyEventType::Synced as i32 {
            break;
        }
    }
    victim_validates(addr, &key, &idp.issuer()).await;
    drop(held);
}

#[tokio::test]
async fn the_global_cap_still_holds_across_peers() {
    let (_idp, _key, h) = serve(
        "  max_watchers: 6\n  max_watchers_per_connection: 2\n  max_watchers_per_peer: 4\n",
        "",
    )
    .await;
    let addr = h.server.addr;
    let mut held = Vec::new();
    for last in 1..=4u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let channel = net::channel_from(ip, addr).await;
        for _ in 0..2 {
            if let Ok(s) = open(&channel).await {
                held.push(s);
            }
        }
    }
    assert_eq!(held.len(), 6, "the global cap");
    // Closing streams frees their places everywhere.
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channel = net::channel_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), addr).await;
    assert!(open(&channel).await.is_ok());
}

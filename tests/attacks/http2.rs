//! Finding 2: one HTTP/2 connection locked every caller out. Header-only streams took the
//! global concurrency permits; nothing capped streams per connection; provoked resets
//! were unlimited; silent sockets were never closed and could starve TLS handshakes.

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use crate::{
    common::*,
    connections_closed,
    net::{self, Frame, Raw},
    serve, victim_validates,
};

#[tokio::test]
async fn header_only_streams_on_one_connection_do_not_lock_other_callers_out() {
    let (idp, key, h) = serve("", "").await;
    let attack = net::header_only_streams(
        h.server.addr,
        net::VALIDATE_PATH,
        1100,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        attack.opened, 1100,
        "the client queues what it may not send yet"
    );
    assert_eq!(
        attack.server_limit, 128,
        "the server advertises MAX_CONCURRENT_STREAMS (server.max_concurrent_streams)"
    );
    // Let the client put every stream it may on the wire.
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
    // And the victim's own connection is not limited by the attacker's.
    let mut client = h.client.clone();
    let again = client
        .validate(introspectd::grpc::pb::ValidateRequest {
            token: key.token(&claims(&idp.issuer(), "api://demo")),
            ..Default::default()
        })
        .await
        .expect("an established client is answered");
    assert!(again.get_ref().valid);
    drop(attack);
}

/// Nine connections of 128 header-only streams each are more streams than there are
/// concurrency permits (1,024): a permit is taken only once a request's message has
/// arrived, so none of them holds one.
#[tokio::test]
async fn header_only_streams_hold_no_concurrency_permit() {
    let (idp, key, h) = serve("", "").await;
    let mut attacks = Vec::new();
    for _ in 0..9 {
        attacks.push(
            net::header_only_streams(
                h.server.addr,
                net::VALIDATE_PATH,
                128,
                Duration::from_millis(300),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
    drop(attacks);
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_are_refused_even_from_a_client_that_ignores_it() {
    let (idp, key, h) = serve("  max_concurrent_streams: 16\n", "").await;
    let mut raw = Raw::open(h.server.addr).await;
    let block = net::grpc_request_block(net::VALIDATE_PATH);
    let mut batch = Vec::new();
    for i in 0..40u32 {
        batch.extend(net::frame(
            net::HEADERS,
            net::END_HEADERS,
            2 * i + 1,
            &block,
        ));
    }
    raw.send(&batch).await.expect("send");
    let mut refused = Vec::new();
    let (_frames, _) = raw
        .read_until(Duration::from_secs(5), |f: &Frame| {
            if f.kind == net::RST_STREAM && f.error_code() == Some(net::REFUSED_STREAM) {
                refused.push(f.stream);
            }
            refused.len() >= 24
        })
        .await;
    assert_eq!(refused.len(), 24, "streams 17..40 are refused: {refused:?}");
    assert!(
        refused.iter().all(|id| *id >= 33),
        "only streams past the 16th: {refused:?}"
    );
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

/// CVE-2025-8671 ("MadeYouReset"): frames that make the server reset streams itself. h2
/// bounds these per connection, unless the bound is turned off (tonic passes `None`).
#[tokio::test]
async fn provoked_stream_resets_end_the_connection_with_enhance_your_calm() {
    let (idp, key, h) = serve("", "").await;
    let mut raw = Raw::open(h.server.addr).await;
    let request = net::grpc_request_block(net::VALIDATE_PATH);
    let trailers = net::trailer_block();
    // Trailers without END_STREAM are malformed: the server must reset the stream.
    let mut sent = 0u32;
    let mut goaway = None;
    'attack: for round in 0..11u32 {
        let mut batch = Vec::new();
        for i in 0..100u32 {
            let id = 2 * (round * 100 + i) + 1;
            batch.extend(net::frame(net::HEADERS, net::END_HEADERS, id, &request));
            batch.extend(net::frame(net::HEADERS, net::END_HEADERS, id, &trailers));
        }
        if raw.send(&batch).await.is_err() {
            break;
        }
        sent += 100;
        let (frames, closed) = raw
            .read_until(Duration::from_millis(200), |f: &Frame| {
                f.kind == net::GOAWAY
            })
            .await;
        if let Some(g) = frames.iter().find(|f| f.kind == net::GOAWAY) {
            goaway = Some(g.clone());
            break 'attack;
        }
        if closed {
            break;
        }
    }
    if goaway.is_none() {
        let (frames, _) = raw
            .read_until(Duration::from_secs(3), |f: &Frame| f.kind == net::GOAWAY)
            .await;
        goaway = frames.into_iter().find(|f| f.kind == net::GOAWAY);
    }
    let goaway = goaway
        .unwrap_or_else(|| panic!("{sent} provoked resets and no GOAWAY: the reset limit is off"));
    assert_eq!(goaway.error_code(), Some(net::ENHANCE_YOUR_CALM));
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

/// Silent sockets, sockets that send only the preface, and sockets that keep pinging but
/// never ask anything are all closed once `server.handshake_timeout` has passed.
#[tokio::test]
async fn a_connection_without_a_request_is_closed_after_the_handshake_timeout() {
    let (idp, key, h) = serve("  handshake_timeout: 1s\n", "").await;
    let addr = h.server.addr;
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut preface_only = Raw::open(addr).await;
    let mut pinger = Raw::open(addr).await;
    let pings = tokio::spawn(async move {
        for i in 0..40u64 {
            let ping = net::frame(6, 0, 0, &i.to_be_bytes());
            if pinger.send(&ping).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    victim_validates(addr, &key, &idp.issuer()).await;
    let limit = Duration::from_secs(4);
    assert!(
        net::closed_within(&mut silent, limit).await,
        "a silent connection is closed"
    );
    assert!(
        net::closed_within(&mut preface_only.stream, limit).await,
        "a connection that sent only its preface is closed"
    );
    assert!(
        pings.await.expect("pinger"),
        "pings are not requests: the pinging connection is closed too"
    );
    assert_eq!(connections_closed(&h, "handshake_timeout").await, 3.0);
    // The harness's own connection made its requests long ago and stays open.
    assert_eq!(h.health("").await, crate::SERVING);
}

async fn established(addr: SocketAddr, key: &TestKey, issuer: &str) -> tonic::transport::Channel {
    let channel = net::own_channel(addr).await;
    let ok = introspectd::grpc::pb::token_service_client::TokenServiceClient::new(channel.clone())
        .validate(introspectd::grpc::pb::ValidateRequest {
            token: key.token(&claims(issuer, "api://demo")),
            ..Default::default()
        })
        .await
        .expect("call on a new connection");
    assert!(ok.get_ref().valid);
    channel
}

#[tokio::test]
async fn at_max_connections_new_connections_are_refused_and_established_ones_keep_working() {
    // The harness holds one connection; three more make four.
    let (idp, key, h) = serve("  max_connections: 4\n", "").await;
    let iss = idp.issuer();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(established(h.server.addr, &key, &iss).await);
    }
    let mut fifth = TcpStream::connect(h.server.addr)
        .await
        .expect("tcp connect");
    assert!(
        net::closed_within(&mut fifth, Duration::from_secs(1)).await,
        "the fifth connection is refused at once"
    );
    assert!(connections_closed(&h, "max_connections").await >= 1.0);
    for channel in &open {
        let r =
            introspectd::grpc::pb::token_service_client::TokenServiceClient::new(channel.clone())
                .validate(introspectd::grpc::pb::ValidateRequest {
                    token: key.token(&claims(&iss, "api://demo")),
                    ..Default::default()
                })
                .await
                .expect("established connections keep working");
        assert!(r.get_ref().valid);
    }
    assert_eq!(h.health("").await, crate::SERVING);
    // A closed connection frees its place.
    drop(open.pop());
    let mut ok = false;
    for _ in 0..50 {
        let mut probe = TcpStream::connect(h.server.addr)
            .await
            .expect("tcp connect");
        probe.write_all(net::PREFACE).await.expect("preface");
        if !net::closed_within(&mut probe, Duration::from_millis(100)).await {
            ok = true;
            break;
        }
    }
    assert!(ok, "a place freed by a closed connection is reusable");
}

#[tokio::test]
async fn idle_sockets_are_evicted_before_a_real_client_is_refused() {
    let (idp, key, h) = serve("  max_connections: 8\n", "").await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            TcpStream::connect(h.server.addr)
                .await
                .expect("tcp connect"),
        );
    }
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
    // The harness's established connection was never the one closed.
    assert_eq!(h.health("").await, crate::SERVING);
    let mut closed = 0;
    for s in &mut idle {
        if net::closed_within(s, Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 12,
        "idle sockets made room: {closed} of 20 closed"
    );
    assert!(connections_closed(&h, "evicted").await >= 12.0);
}

mod tls {
    //! The TLS listener: idle sockets against handshakes, and the first-request deadline
    //! after a finished handshake.
    use std::sync::Arc;

    use super::*;
    use introspectd::{app::RunningServer, config::TlsSettings};
    use rustls_pki_types::{CertificateDer, ServerName};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    /// A TLS server for one OIDC tenant, its certificate (PEM and DER) and key.
    async fn tls_server(
        handshake_timeout: Duration,
    ) -> (
        RunningServer,
        String,
        CertificateDer<'static>,
        FakeIdp,
        TestKey,
        tempfile::TempDir,
    ) {
        introspectd::install_crypto();
        let dir = tempfile::tempdir().expect("dir");
        let key_pair = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.self_signed(&key_pair).expect("cert");
        std::fs::write(dir.path().join("tls.crt"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("tls.key"), key_pair.serialize_pem()).expect("write");

        let idp = FakeIdp::start().await;
        let key = TestKey::rsa("k1", "RS256");
        idp.serve_oidc(&[&key]);
        let mut s = settings(&oidc_tenant(&idp, ""));
        s.server.handshake_timeout = handshake_timeout;
        // The default TLS handshake timeout, so idle sockets are not dropped by it in time.
        s.server.tls = Some(TlsSettings {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            client_ca_file: None,
            reload_interval: Duration::from_secs(5),
            handshake_timeout: introspectd::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        });
        let server = introspectd::app::spawn(s).await.expect("server starts");
        (server, cert.pem(), cert.der().clone(), idp, key, dir)
    }

    #[tokio::test]
    async fn idle_sockets_do_not_starve_tls_handshakes() {
        let (server, pem, _, idp, key, _dir) =
            tls_server(introspectd::config::DEFAULT_HANDSHAKE_TIMEOUT).await;
        let addr = server.addr;
        // More idle sockets than the old cap on pending handshakes (1024).
        let mut idle = Vec::new();
        for _ in 0..1100 {
            idle.push(TcpStream::connect(addr).await.expect("tcp connect"));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name("localhost");
        let token = key.token(&claims(&idp.issuer(), "api://demo"));
        let call = async move {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .expect("endpoint")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("TLS connect");
            introspectd::grpc::pb::token_service_client::TokenServiceClient::new(channel)
                .validate(introspectd::grpc::pb::ValidateRequest {
                    token,
                    ..Default::default()
                })
                .await
        };
        let answer = tokio::time::timeout(crate::VICTIM_DEADLINE, call)
            .await
            .expect("a TLS client completes its handshake and call within 1 s")
            .expect("the call is answered");
        assert!(answer.get_ref().valid);
        drop(idle);
        server.shutdown().await.expect("clean shutdown");
    }

    #[tokio::test]
    async fn a_tls_connection_without_a_request_is_closed_after_the_handshake_timeout() {
        let (server, _, der, _idp, _key, _dir) = tls_server(Duration::from_secs(1)).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(server.addr).await.expect("tcp connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        // The handshake is done; no preface, no request follows.
        let started = tokio::time::Instant::now();
        let mut sink = vec![0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt as _;
            loop {
                match tls.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the server closes the silent TLS connection"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "not before the deadline"
        );
        server.shutdown().await.expect("clean shutdown");
    }
}

//! Clients an attacker would use: a gRPC channel from another loopback address (so two
//! "peers" can meet on one machine), header-only HTTP/2 streams through the `h2` crate,
//! and raw HTTP/2 frames for what no well-behaved client library sends.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};
use tonic::transport::{Channel, Endpoint};

pub const VALIDATE_PATH: &str = "/introspect.v1.TokenService/Validate";

/// A gRPC channel whose TCP connection comes from `local` (any 127.0.0.0/8 address works
/// on Linux loopback), so the server sees another peer.
pub async fn channel_from(local: IpAddr, server: SocketAddr) -> Channel {
    let connector = tower::service_fn(move |_: http::Uri| async move {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = socket.connect(server).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    });
    Endpoint::from_shared(format!("http://{server}"))
        .expect("endpoint")
        .connect_with_connector(connector)
        .await
        .expect("connect from another loopback address")
}

/// A fresh gRPC channel on its own connection.
pub async fn own_channel(server: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{server}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// The streams an `h2` client opened and never finished: headers sent, no body, no end.
pub struct HeaderOnlyStreams {
    /// Streams handed to the client (it sends at most what the server allows at once
    /// and queues the rest).
    pub opened: usize,
    /// The server's MAX_CONCURRENT_STREAMS as the client saw it (`usize::MAX`: none).
    pub server_limit: usize,
    _streams: Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
    _send: h2::client::SendRequest<Bytes>,
}

/// Opens up to `max` gRPC streams to `path` on ONE new connection, sending the request
/// headers only. Stops early when the client may not open more (the server's
/// MAX_CONCURRENT_STREAMS holds the next one back for longer than `patience`).
pub async fn header_only_streams(
    server: SocketAddr,
    path: &str,
    max: usize,
    patience: Duration,
) -> HeaderOnlyStreams {
    let tcp = TcpStream::connect(server).await.expect("connect");
    let (mut send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Until the server's SETTINGS arrive the client assumes no stream limit.
    for _ in 0..100 {
        if send.current_max_send_streams() != usize::MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut streams = Vec::new();
    while streams.len() < max {
        send = match tokio::time::timeout(patience, send.clone().ready()).await {
            Ok(Ok(s)) => s,
            _ => break,
        };
        let req = http::Request::post(format!("http://{server}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        match send.send_request(req, false) {
            Ok(s) => streams.push(s),
            Err(_) => break,
        }
    }
    HeaderOnlyStreams {
        server_limit: send.current_max_send_streams(),
        opened: streams.len(),
        _streams: streams,
        _send: send,
    }
}

// ---- raw frames ----

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const END_HEADERS: u8 = 0x4;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const REFUSED_STREAM: u32 = 0x7;

/// One frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK string literal, no Huffman coding (lengths here stay under 127).
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The header block of a gRPC POST to `path`: static-table `:method POST` and
/// `:scheme http`, literal `:path`, `:authority`, `content-type`, `te`.
pub fn grpc_request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    b.push(0x04); // literal without indexing, name = static index 4 (:path)
    hpack_str(&mut b, path);
    b.push(0x01); // :authority
    hpack_str(&mut b, "localhost");
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        b.push(0x00);
        hpack_str(&mut b, name);
        hpack_str(&mut b, value);
    }
    b
}

/// A trailer block (one ordinary header field).
pub fn trailer_block() -> Vec<u8> {
    let mut b = vec![0x00];
    hpack_str(&mut b, "x-trailer");
    hpack_str(&mut b, "1");
    b
}

/// A frame as read back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A raw HTTP/2 connection.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and sends the client preface and an empty SETTINGS frame.
    pub async fn open(server: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(server).await.expect("connect");
        stream.write_all(PREFACE).await.expect("preface");
        stream
            .write_all(&frame(SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Frames read until `stop` says so, the peer closes, or `limit` passes. The bool is
    /// true when the peer closed the connection.
    pub async fn read_until(
        &mut self,
        limit: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> (Vec<Frame>, bool) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() < 9 + len {
                    break;
                }
                let f = Frame {
                    kind: self.buf[3],
                    stream: u32::from_be_bytes([
                        self.buf[5],
                        self.buf[6],
                        self.buf[7],
                        self.buf[8],
                    ]) & 0x7fff_ffff,
                    payload: self.buf[9..9 + len].to_vec(),
                };
                self.buf.drain(..9 + len);
                let done = stop(&f);
                frames.push(f);
                if done {
                    return (frames, false);
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return (frames, false),
                Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// True when the server closes `stream` within `limit` (EOF or reset), reading and
/// discarding whatever it sends meanwhile.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

//! One gateway node in-process on a free port (in-process registry, bus and rate limiter), and
//! the WebSocket client calls the gateway's black-box tests share.

#![allow(dead_code)]

pub mod slow_registry;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use gateway::{Deps, Settings};
use shared::auth::{JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::protocol::{decode_server, Encoding, ServerFrame};
use shared::revocation::RevocationCheck;
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::{fan_out, NodeBus, RouteRegistry};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Harness {
    pub addr: std::net::SocketAddr,
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    pub signer: Signer,
    pub revocations: Arc<RevocationCheck>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    pub async fn start(settings: Settings) -> Harness {
        Harness::start_with_bus(settings, Arc::new(MemoryBus::default())).await
    }

    /// A node on the given in-process bus (e.g. one with a small channel).
    pub async fn start_with_bus(settings: Settings, bus: Arc<dyn NodeBus>) -> Harness {
        Harness::start_with(settings, Arc::new(MemoryRegistry::new()), bus).await
    }

    /// A node on the given in-process registry and bus.
    pub async fn start_with(
        settings: Settings,
        registry: Arc<dyn RouteRegistry>,
        bus: Arc<dyn NodeBus>,
    ) -> Harness {
        let verifier = Verifier::new(&JwtSettings {
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let revocations = Arc::new(RevocationCheck::memory());
        let deps = Deps {
            registry: registry.clone(),
            bus: bus.clone(),
            verifier,
            metrics: None,
            limiter: shared::ratelimit::memory(),
            revocations: revocations.clone(),
        };
        let task = tokio::spawn(gateway::serve(listener, settings, deps, async {
            let _ = rx.await;
        }));
        Harness {
            addr,
            registry,
            bus,
            signer: Signer::hmac(jsonwebtoken::Algorithm::HS256, DEV_SECRET.as_bytes()),
            revocations,
            stop: Some(tx),
            task,
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.signer.token(user, Duration::from_secs(3600), None)
    }

    pub async fn connect(&self, user: &str, encoding: &str) -> (Ws, ServerFrame) {
        let url = format!(
            "ws://{}/ws?encoding={encoding}&access_token={}",
            self.addr,
            self.token(user)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let enc = Encoding::parse(encoding).unwrap();
        let hello = next_frame(&mut ws, enc).await;
        (ws, hello)
    }

    pub fn url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws?access_token={t}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        }
    }

    /// Status of an upgrade attempt (101 when it succeeded) and the Retry-After header, if any.
    pub async fn attempt(&self, token: Option<&str>) -> (u16, Option<String>) {
        match tokio_tungstenite::connect_async(self.url(token)).await {
            Ok((mut ws, r)) => {
                let _ = ws.close(None).await;
                (r.status().as_u16(), None)
            }
            Err(tungstenite::Error::Http(r)) => (
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
            ),
            Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
        }
    }

    pub async fn publish(&self, users: &[&str], frame: &ServerFrame) {
        let users: Vec<String> = users.iter().map(|s| s.to_string()).collect();
        fan_out(&self.registry, &self.bus, &users, frame)
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The next protocol frame (skipping control frames), decoded.
pub async fn next_frame(ws: &mut Ws, enc: Encoding) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("frame in time");
        match msg.expect("stream open").expect("frame") {
            WsMessage::Text(t) => {
                assert_eq!(enc, Encoding::Json, "text frame on a msgpack socket");
                return decode_server(Encoding::Json, t.as_bytes()).unwrap();
            }
            WsMessage::Binary(b) => {
                assert_eq!(enc, Encoding::Msgpack, "binary frame on a json socket");
                return decode_server(Encoding::Msgpack, &b).unwrap();
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A frame as it came off the wire.
#[derive(Debug, PartialEq)]
pub struct WireFrame {
    /// FIN, RSV1-3 and the opcode.
    pub first: u8,
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// One unmasked server frame parsed off the front of `buf`, and the bytes it took; `None` while
/// `buf` holds only part of it.
pub fn parse_server_frame(buf: &[u8]) -> Option<(WireFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    let frame = WireFrame {
        first: buf[0],
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload: buf[head..head + len].to_vec(),
    };
    Some((frame, head + len))
}

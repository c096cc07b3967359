//! Slow and idle HTTP clients against the real server loop (`chat_api::run` on a loopback port):
//! a request head trickled one byte at a time is cut after API_HEADER_READ_TIMEOUT, an idle
//! connection is closed after API_KEEP_ALIVE_TIMEOUT, a prompt client is served on a kept-alive
//! connection, and shutdown still lets a request in progress finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_api::store::sqlite::SqliteStore;
use chat_api::{AppState, Limits};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::testkit::{dev_key_verifier, read_until_closed};
use shared::IdGenerator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(dir.path().join("chat.db"), Default::default()).unwrap();
        let verifier = dev_key_verifier(Duration::from_secs(2));
        let state = AppState::new(
            Arc::new(store),
            Arc::new(MemoryRegistry::new()),
            Arc::new(MemoryBus::new(64)),
            verifier,
            Arc::new(IdGenerator::new(1)),
        )
        .with_limits(limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_api::run(listener, state, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn a_trickled_request_head_is_cut_after_the_header_read_timeout() {
    let header_read = Duration::from_millis(500);
    let server = Server::start(Limits {
        header_read_timeout: header_read,
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    // Slowloris: one byte every 100 ms, a head that would take seconds to finish.
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        cut || closed.is_some(),
        "the trickled head was never cut (read {text:?})"
    );
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "the trickled request was served: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}; the header-read timeout is {header_read:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn prompt_requests_share_a_kept_alive_connection_until_it_idles_out() {
    let keep_alive = Duration::from_millis(600);
    let server = Server::start(Limits {
        header_read_timeout: Duration::from_millis(300),
        keep_alive_timeout: keep_alive,
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // Two requests, 400 ms apart: longer than the header-read timeout (which counts from a
    // head's first byte, not from the last response), shorter than the keep-alive timeout.
    for i in 0..2 {
        s.write_all(HEALTHZ).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle connection must be closed");
    assert!(
        idle_from.elapsed() < Duration::from_secs(3),
        "closed after {:?} idle",
        idle_from.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let server = Server::start(Limits::default()).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    server.stop().await;
    // Stopped well before API_SHUTDOWN_GRACE (10 s): the idle connection did not hold it up.
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed.is_some());
}

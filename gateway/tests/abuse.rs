//! Abuse resistance of one gateway node over real sockets: the upgrade's authorization matrix,
//! connection attempts per IP (429 with Retry-After), concurrent handshakes (503), slow and
//! oversized request heads, and refresh frames with someone else's or a service's token.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use gateway::Settings;
use shared::auth::{Claims, Signer};
use shared::ids::now_unix_ms;
use shared::protocol::{decode_server, ErrorCode, ServerFrame};
use shared::ratelimit::Quota;
use shared::testkit::read_until_closed;
use support::Harness;

fn settings() -> Settings {
    Settings {
        node_id: "abuse-node".into(),
        drain_window: Duration::from_millis(50),
        drain_deadline: Duration::from_secs(3),
        connect_rate_per_ip: None,
        ..Settings::default()
    }
}

#[tokio::test]
async fn upgrade_authorization_matrix() {
    let node = Harness::start(settings()).await;
    let ttl = Duration::from_secs(600);
    let now = now_unix_ms() / 1000;
    let expired = node.signer.sign(&Claims {
        sub: "alice".into(),
        exp: now - 120,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
        scope: None,
    });
    let forged = Signer::hmac(
        jsonwebtoken::Algorithm::HS256,
        b"not-the-server-key-0123456789-abcdefgh",
    )
    .token("alice", ttl, None);
    let alg_none = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine;
        format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now + 600))
        )
    };
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("user", Some(node.signer.token("alice", ttl, None)), 101),
        (
            "service with push",
            Some(node.signer.token("svc", ttl, Some("push"))),
            403,
        ),
        (
            "service without push",
            Some(node.signer.token("svc", ttl, Some("x"))),
            403,
        ),
        ("no token", None, 401),
        ("forged", Some(forged), 401),
        ("expired", Some(expired), 401),
        ("alg none", Some(alg_none), 401),
        ("garbage", Some("abc".into()), 401),
    ];
    for (name, token, expected) in cases {
        let (status, _) = node.attempt(token.as_deref()).await;
        assert_eq!(status, expected, "{name}");
    }
    node.stop().await;
}

#[tokio::test]
async fn connection_attempts_per_ip_are_limited_with_retry_after() {
    let hold = Duration::from_millis(300);
    let node = Harness::start(Settings {
        connect_rate_per_ip: Some(Quota::per_minute(1, 3)),
        connect_rate_limited_hold: hold,
        ..settings()
    })
    .await;
    let token = node.signer.token("alice", Duration::from_secs(600), None);
    for i in 0..3 {
        assert_eq!(node.attempt(Some(&token)).await.0, 101, "attempt {i}");
    }
    let started = std::time::Instant::now();
    let (status, retry_after) = node.attempt(Some(&token)).await;
    assert_eq!(status, 429);
    // Held for its retry-after (20 s here), at most CONNECT_RATE_LIMITED_HOLD, before the answer.
    assert!(
        started.elapsed() >= hold,
        "answered after {:?}",
        started.elapsed()
    );
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // Failed attempts count too: a token-guessing flood is throttled the same way.
    assert_eq!(node.attempt(None).await.0, 429);
    // Health checks are not upgrade attempts and stay reachable.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    node.stop().await;
}

#[tokio::test]
async fn concurrent_handshakes_are_bounded() {
    let node = Harness::start(Settings {
        max_concurrent_handshakes: 2,
        handshake_timeout: Duration::from_secs(30),
        ..settings()
    })
    .await;
    // Two connections that never send a request hold both permits.
    let held: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(TcpStream::connect(node.addr).await.unwrap());
        }
        v
    };
    // The node needs a moment to accept them; the third is refused at once once they are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let mut third = TcpStream::connect(node.addr).await.unwrap();
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (text, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "third connection must be answered and closed"
        );
        if text.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    // Releasing one frees a permit.
    drop(held);
    let token = node.signer.token("alice", Duration::from_secs(600), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = match tokio_tungstenite::connect_async(node.url(Some(&token))).await {
            Ok((mut ws, r)) => {
                let _ = ws.close(None).await;
                (r.status().as_u16(), None::<String>)
            }
            Err(tungstenite::Error::Http(r)) => (r.status().as_u16(), None),
            // The canned 503 closes the connection; tungstenite may see that as an I/O error.
            Err(_) => (0, None),
        };
        if status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "permits were not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let node = Harness::start(Settings {
        handshake_timeout: Duration::from_millis(500),
        ..settings()
    })
    .await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let started = Instant::now();
    // Slowloris: one header byte at a time, never finishing.
    let writer = async {
        for b in b"GET /ws HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(8), writer).await;
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let closed = closed.expect("the node closes a slow handshake");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed after {closed:?}, the handshake timeout is 500 ms"
    );
    node.stop().await;
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let node = Harness::start(Settings {
        max_request_head_bytes: 8192,
        ..settings()
    })
    .await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let mut req = b"GET /ws HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..400 {
        req.extend_from_slice(format!("x-pad-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let _ = s.write_all(&req).await;
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "connection must be closed");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "expected 431 or a plain close, got {text}"
    );
    node.stop().await;
}

#[tokio::test]
async fn refresh_with_a_foreign_or_service_token_is_refused() {
    let node = Harness::start(settings()).await;
    let ttl = Duration::from_secs(600);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(node.url(Some(&node.signer.token("alice", ttl, None))))
            .await
            .unwrap();
    for token in [
        node.signer.token("mallory", ttl, None),
        node.signer.token("alice", ttl, Some("push")),
        "garbage".to_string(),
    ] {
        ws.send(WsMessage::Text(
            format!(r#"{{"type":"refresh","token":"{token}"}}"#).into(),
        ))
        .await
        .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("answer in time")
                .expect("open")
                .unwrap();
            let WsMessage::Text(t) = msg else { continue };
            match decode_server(shared::protocol::Encoding::Json, t.as_bytes()).unwrap() {
                ServerFrame::Hello { .. } => continue,
                ServerFrame::Error { code, .. } => {
                    assert_eq!(code, ErrorCode::InvalidToken);
                    break;
                }
                other => panic!("refresh with {token:.20}… answered {other:?}"),
            }
        }
    }
    node.stop().await;
}

/// A validly signed token whose `exp` is `u64::MAX`, at connect or in a `refresh`, must not kill
/// the socket's task (an `Instant` overflow once did, leaking the user's socket slot): each such
/// socket keeps working, and after more of them than MAX_SOCKETS_PER_USER the user's real device
/// still connects.
#[tokio::test]
async fn huge_token_expiry_neither_panics_nor_leaks_socket_slots() {
    const CONNECTS: usize = 20;
    let heartbeat = Duration::from_millis(50);
    let node = Harness::start(Settings {
        heartbeat_interval: heartbeat,
        idle_timeout: Duration::from_secs(10),
        max_sockets_per_user: 4,
        ..settings()
    })
    .await;
    let huge = node.signer.sign(&Claims {
        sub: "alice".into(),
        exp: u64::MAX,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
        scope: None,
    });
    let plain = node.token("alice");
    for i in 0..CONNECTS {
        // Even connects carry the huge expiry from the start, odd ones get it by `refresh`.
        let first = if i % 2 == 0 { &huge } else { &plain };
        let (mut ws, r) = tokio_tungstenite::connect_async(node.url(Some(first)))
            .await
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        assert_eq!(r.status().as_u16(), 101);
        let hello = support::next_frame(&mut ws, shared::protocol::Encoding::Json).await;
        let ServerFrame::Hello {
            token_expires_at, ..
        } = hello
        else {
            panic!("connect {i}: expected hello, got {hello:?}")
        };
        if i % 2 == 1 {
            ws.send(WsMessage::Text(
                format!(r#"{{"type":"refresh","token":"{huge}"}}"#).into(),
            ))
            .await
            .unwrap();
            let answer = support::next_frame(&mut ws, shared::protocol::Encoding::Json).await;
            assert!(
                matches!(answer, ServerFrame::Refreshed { token_expires_at } if token_expires_at == u64::MAX),
                "connect {i}: refresh answered {answer:?}"
            );
        } else {
            assert_eq!(token_expires_at, u64::MAX);
        }
        // Several heartbeats later the socket still answers: its timer survived the expiry.
        tokio::time::sleep(heartbeat * 3).await;
        ws.send(WsMessage::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap_or_else(|e| panic!("connect {i}: socket gone: {e}"));
        let pong = support::next_frame(&mut ws, shared::protocol::Encoding::Json).await;
        assert!(matches!(pong, ServerFrame::Pong), "connect {i}: {pong:?}");
        ws.close(None).await.unwrap();
        // Bounded wait for the server to see the close before the next connect.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while ws.next().await.is_some() {}
        })
        .await;
    }
    // The user's real device: accepted with `hello`, not closed with 4204.
    let (_ws, hello) = node.connect("alice", "json").await;
    assert!(matches!(hello, ServerFrame::Hello { .. }), "{hello:?}");
    node.stop().await;
}

/// A TCP connection to the node from `source` (any 127/8 address is this host's loopback).
async fn connect_from(node: &Harness, source: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .unwrap_or_else(|e| panic!("binding {source}: {e}"));
    socket.connect(node.addr).await.unwrap()
}

/// Status of an upgrade attempt from `source`, with an optional `X-Forwarded-For`.
async fn attempt_from(node: &Harness, source: &str, forwarded_for: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = connect_from(node, source).await;
    let token = node.token("alice");
    let mut request = node.url(Some(&token)).into_client_request().unwrap();
    if let Some(xff) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("an answer to the upgrade in time");
    match attempt {
        Ok((mut ws, r)) => {
            let _ = ws.close(None).await;
            r.status().as_u16()
        }
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("upgrade from {source} failed without an HTTP answer: {e}"),
    }
}

/// 150 idle connections from one address (nothing sent) must not take every handshake place:
/// MAX_HANDSHAKES_PER_IP turns that address's surplus away at once, and another address's valid
/// upgrade goes through.
#[tokio::test]
async fn idle_connections_from_one_address_do_not_lock_out_others() {
    const IDLE: usize = 150;
    let node = Harness::start(Settings {
        max_concurrent_handshakes: 100,
        handshake_timeout: Duration::from_secs(30),
        ..settings()
    })
    .await;
    let per_ip = Settings::default().max_handshakes_per_ip;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect_from(&node, "127.0.0.2").await);
    }
    // Let the node accept them all before the other address comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut ws, r) = {
        let stream = connect_from(&node, "127.0.0.3").await;
        let token = node.token("bob");
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::client_async(
                node.url(Some(&token)),
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
            ),
        )
        .await
        .expect("an answer to the upgrade in time")
        .expect("the upgrade from another address is accepted")
    };
    assert_eq!(r.status().as_u16(), 101);
    let hello = support::next_frame(&mut ws, shared::protocol::Encoding::Json).await;
    assert!(matches!(hello, ServerFrame::Hello { .. }), "{hello:?}");
    // The idle address kept MAX_HANDSHAKES_PER_IP places; the rest were answered 429 and closed.
    let answers = futures_util::future::join_all(
        idle.iter_mut()
            .map(|s| read_until_closed(s, Duration::from_millis(500))),
    )
    .await;
    let refused = answers
        .iter()
        .filter(|(text, closed)| closed.is_some() && text.starts_with("HTTP/1.1 429"))
        .count();
    assert_eq!(refused, IDLE - per_ip, "{:?}", &answers[..3]);
    node.stop().await;
}

/// `X-Forwarded-For` is believed only from TRUSTED_PROXIES: from anyone else a spoofed header
/// does not buy a fresh budget, and through a trusted proxy each forwarded client has its own.
#[tokio::test]
async fn forwarded_client_addresses_only_through_trusted_proxies() {
    let node = Harness::start(Settings {
        connect_rate_per_ip: Some(Quota::per_minute(1, 2)),
        connect_rate_limited_hold: Duration::ZERO,
        max_handshakes_per_ip: 2,
        trusted_proxies: shared::client_ip::TrustedProxies::parse("127.0.0.1/32").unwrap(),
        ..settings()
    })
    .await;
    // An untrusted peer: a different forwarded address each time changes nothing.
    let spoofed: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(attempt_from(&node, "127.0.0.4", Some(&format!("198.51.100.{}", 50 + i))).await);
        }
        v
    };
    assert_eq!(
        spoofed,
        [101, 101, 429],
        "the header of an untrusted peer was believed"
    );
    // Idle connections from the trusted proxy are not capped as one address...
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_from(&node, "127.0.0.1").await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and the clients behind it have separate budgets, the right-most untrusted entry being
    // the client (whatever the client itself put to its left).
    for (client, xff) in [
        ("A", "203.0.113.1"),
        ("A", "6.6.6.6, 203.0.113.1"),
        ("B", "203.0.113.2"),
        ("B", "203.0.113.2, 127.0.0.1"),
    ] {
        assert_eq!(
            attempt_from(&node, "127.0.0.1", Some(xff)).await,
            101,
            "client {client}"
        );
    }
    assert_eq!(
        attempt_from(&node, "127.0.0.1", Some("203.0.113.1")).await,
        429
    );
    assert_eq!(
        attempt_from(&node, "127.0.0.1", Some("203.0.113.2")).await,
        429
    );
    assert_eq!(
        attempt_from(&node, "127.0.0.1", Some("203.0.113.3")).await,
        101
    );
    drop(idle);
    node.stop().await;
}

/// A connection that never sends a byte holds its handshake places only until HANDSHAKE_TIMEOUT.
#[tokio::test]
async fn silent_connections_are_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let node = Harness::start(Settings {
        handshake_timeout: timeout,
        ..settings()
    })
    .await;
    let mut s = connect_from(&node, "127.0.0.5").await;
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("the node drops a silent connection");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(closed < Duration::from_secs(3), "dropped after {closed:?}");
    node.stop().await;
}

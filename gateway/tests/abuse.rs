//! Abuse resistance of one gateway node over real sockets: the upgrade's authorization matrix,
//! connection attempts per IP (429 with Retry-After), concurrent handshakes (503), slow and
//! oversized request heads, and refresh frames with someone else's or a service's token.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use gateway::Settings;
use shared::auth::{Claims, Signer};
use shared::ids::now_unix_ms;
use shared::protocol::{decode_server, ErrorCode, ServerFrame};
use shared::ratelimit::Quota;
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

/// Reads what the server sends until it closes (or `limit` passes); returns it and when it ended.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), None),
        }
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

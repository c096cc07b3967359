//! Black-box tests of one gateway node over real sockets with a WebSocket client other than
//! fastwebsockets (tokio-tungstenite), using the in-process registry and bus.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use gateway::Settings;
use shared::auth::Signer;
use shared::close::CloseCode;
use shared::protocol::{
    decode_server, encode_client, ClientFrame, Encoding, ErrorCode, ServerFrame,
};
use support::{next_frame, parse_server_frame, Harness, Ws};

fn fast_settings() -> Settings {
    Settings {
        node_id: "test-node".into(),
        heartbeat_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(900),
        drain_window: Duration::from_millis(100),
        drain_deadline: Duration::from_secs(3),
        ..Settings::default()
    }
}

/// Reads until the server closes; returns the close code.
async fn close_code(ws: &mut Ws) -> u16 {
    frames_until_close(ws).await.1
}

/// Every server frame until the server's close frame, and its code (1005 when it has none).
async fn frames_until_close(ws: &mut Ws) -> (Vec<ServerFrame>, u16) {
    let mut frames = Vec::new();
    loop {
        let (encoding, data) = match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(WsMessage::Close(Some(frame)))) => return (frames, u16::from(frame.code)),
            Some(Ok(WsMessage::Close(None))) => return (frames, 1005),
            Some(Ok(WsMessage::Text(t))) => (Encoding::Json, t.as_bytes().to_vec()),
            Some(Ok(WsMessage::Binary(b))) => (Encoding::Msgpack, b.to_vec()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        };
        frames.push(decode_server(encoding, &data).expect("a server frame"));
    }
}

#[tokio::test]
async fn hello_then_deliveries_in_both_encodings() {
    let h = Harness::start(fast_settings()).await;
    let (mut json, hello) = h.connect("alice", "json").await;
    match hello {
        ServerFrame::Hello {
            user_id,
            v,
            heartbeat_interval_ms,
            ..
        } => {
            assert_eq!(
                (user_id.as_str(), v, heartbeat_interval_ms),
                ("alice", 1, 300)
            );
        }
        other => panic!("expected hello, got {other:?}"),
    }
    let (mut mp, _) = h.connect("alice", "msgpack").await;
    let (mut bob, _) = h.connect("bob", "json").await;
    let event = ServerFrame::Event {
        event: serde_json::json!({"kind": "invoice.paid", "amount": 12}),
    };
    h.publish(&["alice"], &event).await;
    assert_eq!(next_frame(&mut json, Encoding::Json).await, event);
    assert_eq!(next_frame(&mut mp, Encoding::Msgpack).await, event);
    // bob was not addressed: the next thing he sees is the event sent to him, not alice's.
    let to_bob = ServerFrame::Event {
        event: serde_json::json!({"for": "bob"}),
    };
    h.publish(&["bob"], &to_bob).await;
    assert_eq!(next_frame(&mut bob, Encoding::Json).await, to_bob);
    h.stop().await;
}

/// The stream read's linger at its largest, with reads of at most 4 envelopes: envelopes
/// published back to back (taken in fewer reads than envelopes, some of them full, which do not
/// linger) all arrive, in order.
#[tokio::test]
async fn a_lingering_stream_reader_delivers_everything_in_order() {
    let settings = Settings {
        stream_read_linger: gateway::config::STREAM_READ_LINGER_MAX,
        stream_batch: 4,
        ..fast_settings()
    };
    let h = Harness::start(settings).await;
    let (mut ws, _) = h.connect("alice", "json").await;
    let events: Vec<ServerFrame> = (0..20)
        .map(|i| ServerFrame::Event {
            event: serde_json::json!({ "n": i }),
        })
        .collect();
    for event in &events {
        h.publish(&["alice"], event).await;
    }
    for event in &events {
        assert_eq!(&next_frame(&mut ws, Encoding::Json).await, event);
    }
    h.stop().await;
}

#[tokio::test]
async fn token_in_header_is_accepted() {
    let h = Harness::start(fast_settings()).await;
    let mut req = format!("ws://{}/ws", h.addr).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", h.token("carol")).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(matches!(
        next_frame(&mut ws, Encoding::Json).await,
        ServerFrame::Hello { .. }
    ));
    h.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let h = Harness::start(fast_settings()).await;
    let expired = h.signer.sign(&shared::auth::Claims {
        sub: "a".into(),
        exp: shared::ids::now_unix_ms() / 1000 - 60,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
        scope: None,
    });
    let forged = Signer::hmac(
        jsonwebtoken::Algorithm::HS256,
        b"0123456789abcdef0123456789abcdef-other",
    )
    .token("a", Duration::from_secs(60), None);
    let service = h.signer.token("svc", Duration::from_secs(60), Some("push"));
    for (token, status) in [
        (None, 401),
        (Some("garbage".to_string()), 401),
        (Some(expired), 401),
        (Some(forged), 401),
        (Some(service), 403),
    ] {
        match tokio_tungstenite::connect_async(h.url(token.as_deref())).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status)
            }
            other => panic!("expected HTTP {status}, got {other:?}"),
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn silent_client_is_closed_with_idle_timeout() {
    let h = Harness::start(fast_settings()).await;
    let (mut ws, _) = h.connect("sleepy", "json").await;
    // Do not read (so no pongs go out) for longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(close_code(&mut ws).await, CloseCode::IdleTimeout.code());
    h.stop().await;
}

#[tokio::test]
async fn responsive_client_stays_open_past_idle_timeout() {
    let h = Harness::start(fast_settings()).await;
    let (mut ws, _) = h.connect("awake", "json").await;
    // Reading answers the server's pings; stay past twice the idle timeout.
    let until = tokio::time::Instant::now() + Duration::from_millis(2000);
    while tokio::time::Instant::now() < until {
        if let Ok(msg) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            assert!(
                matches!(msg, Some(Ok(WsMessage::Ping(_)))),
                "unexpected {msg:?}"
            );
        }
    }
    ws.send(WsMessage::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut ws, Encoding::Json).await, ServerFrame::Pong);
    h.stop().await;
}

/// The node's sweep pings each socket every heartbeat, the first one a heartbeat after its
/// `hello` (not at the node's next tick), and a client that answers them is never idle.
#[tokio::test]
async fn pings_come_every_heartbeat_from_one_heartbeat_after_hello() {
    let h = Harness::start(fast_settings()).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = h.connect(&format!("pinged{i}"), "json").await;
        let hello_at = Instant::now();
        // Each socket reads (and so answers pings) on its own task.
        readers.push(tokio::spawn(async move {
            let mut pings = Vec::new();
            while hello_at.elapsed() < Duration::from_millis(1400) {
                if let Ok(msg) = tokio::time::timeout(Duration::from_millis(50), ws.next()).await {
                    assert!(matches!(msg, Some(Ok(WsMessage::Ping(_)))), "{msg:?}");
                    pings.push(hello_at.elapsed());
                }
            }
            (ws, pings)
        }));
        // Sockets that go live at different moments of the sweep's cycle.
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    let mut sockets = Vec::new();
    for reader in readers {
        let (ws, pings) = reader.await.unwrap();
        // Heartbeat 300 ms: about four pings in 1.4 s (not one per 75 ms sweep tick), the first
        // not before most of a heartbeat has passed.
        assert!((3..=6).contains(&pings.len()), "{pings:?}");
        assert!(pings[0] >= Duration::from_millis(200), "{pings:?}");
        sockets.push(ws);
    }
    // Each answered every ping: still open, past the 900 ms idle timeout.
    for ws in &mut sockets {
        ws.send(WsMessage::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        assert_eq!(next_frame(ws, Encoding::Json).await, ServerFrame::Pong);
    }
    h.stop().await;
}

/// The first ping comes one heartbeat after `hello`, not earlier.
#[tokio::test]
async fn the_first_ping_waits_a_heartbeat() {
    let h = Harness::start(Settings {
        heartbeat_interval: Duration::from_millis(2000),
        idle_timeout: Duration::from_secs(10),
        ..fast_settings()
    })
    .await;
    let (mut ws, _) = h.connect("patient", "json").await;
    let hello_at = Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a ping in time");
    assert!(matches!(msg, Some(Ok(WsMessage::Ping(_)))), "{msg:?}");
    let waited = hello_at.elapsed();
    // Heartbeat 2 s, sweep tick 0.5 s.
    assert!(
        waited >= Duration::from_millis(1400) && waited <= Duration::from_millis(3000),
        "{waited:?}"
    );
    h.stop().await;
}

/// A `refresh` moves the expiry the sweep acts on: the socket outlives its first token.
#[tokio::test]
async fn a_refreshed_socket_outlives_its_first_token() {
    let h = Harness::start(Settings {
        heartbeat_interval: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        ..fast_settings()
    })
    .await;
    let short = h.signer.token("hana", Duration::from_secs(1), None);
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url(Some(&short)))
        .await
        .unwrap();
    assert!(matches!(
        next_frame(&mut ws, Encoding::Json).await,
        ServerFrame::Hello { .. }
    ));
    let refresh = ClientFrame::Refresh {
        token: h.token("hana"),
    };
    ws.send(WsMessage::Text(
        String::from_utf8(encode_client(Encoding::Json, &refresh))
            .unwrap()
            .into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_frame(&mut ws, Encoding::Json).await,
        ServerFrame::Refreshed { .. }
    ));
    // Past the first token's expiry and a few sweeps after it.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    ws.send(WsMessage::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut ws, Encoding::Json).await, ServerFrame::Pong);
    h.stop().await;
}

#[tokio::test]
async fn bad_frames_get_error_frames_not_disconnects() {
    let h = Harness::start(fast_settings()).await;
    let (mut ws, _) = h.connect("dave", "json").await;
    let cases: [(WsMessage, ErrorCode); 5] = [
        // No API_URL on this node: typing cannot be forwarded.
        (
            WsMessage::Text(r#"{"type":"typing","chat_id":"5"}"#.into()),
            ErrorCode::Unavailable,
        ),
        (WsMessage::Text("{not json".into()), ErrorCode::InvalidFrame),
        (
            WsMessage::Text(r#"{"type":"dance"}"#.into()),
            ErrorCode::UnknownType,
        ),
        (
            WsMessage::Text(r#"{"type":"refresh"}"#.into()),
            ErrorCode::InvalidFrame,
        ),
        (
            WsMessage::Binary(vec![0x81, 0xa1].into()),
            ErrorCode::WrongEncoding,
        ),
    ];
    for (msg, want) in cases {
        ws.send(msg).await.unwrap();
        match next_frame(&mut ws, Encoding::Json).await {
            ServerFrame::Error { code, .. } => assert_eq!(code, want),
            other => panic!("expected error, got {other:?}"),
        }
    }
    // Still open and working.
    ws.send(WsMessage::Text(r#"{"type":"ping","extra":true}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut ws, Encoding::Json).await, ServerFrame::Pong);

    let (mut mp, _) = h.connect("dave", "msgpack").await;
    mp.send(WsMessage::Binary(vec![0xc1].into())).await.unwrap();
    assert!(matches!(
        next_frame(&mut mp, Encoding::Msgpack).await,
        ServerFrame::Error {
            code: ErrorCode::InvalidFrame,
            ..
        }
    ));
    let ping = encode_client(Encoding::Msgpack, &ClientFrame::Ping);
    mp.send(WsMessage::Binary(ping.into())).await.unwrap();
    assert_eq!(
        next_frame(&mut mp, Encoding::Msgpack).await,
        ServerFrame::Pong
    );
    h.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_its_code() {
    let h = Harness::start(fast_settings()).await;
    let (mut ws, _) = h.connect("erin", "json").await;
    ws.send(WsMessage::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::FrameTooLarge.code());
    h.stop().await;
}

#[tokio::test]
async fn frame_flood_closes_with_rate_limit() {
    let h = Harness::start(Settings {
        max_frames_per_second: 5,
        ..fast_settings()
    })
    .await;
    let (mut ws, _) = h.connect("flood", "json").await;
    for _ in 0..20 {
        if ws
            .send(WsMessage::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, CloseCode::RateLimited.code());
    h.stop().await;
}

#[tokio::test]
async fn token_refresh_for_same_user_only() {
    let h = Harness::start(fast_settings()).await;
    let (mut ws, _) = h.connect("frank", "json").await;
    let newer = h.signer.token("frank", Duration::from_secs(7200), None);
    ws.send(WsMessage::Text(
        format!(r#"{{"type":"refresh","token":"{newer}"}}"#).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_frame(&mut ws, Encoding::Json).await,
        ServerFrame::Refreshed { .. }
    ));
    let other = h.token("mallory");
    ws.send(WsMessage::Text(
        format!(r#"{{"type":"refresh","token":"{other}"}}"#).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        next_frame(&mut ws, Encoding::Json).await,
        ServerFrame::Error {
            code: ErrorCode::InvalidToken,
            ..
        }
    ));
    h.stop().await;
}

#[tokio::test]
async fn expired_token_closes_the_socket() {
    let h = Harness::start(Settings {
        heartbeat_interval: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        ..fast_settings()
    })
    .await;
    let token = h.signer.token("gina", Duration::from_secs(1), None);
    let (mut ws, _) = tokio_tungstenite::connect_async(h.url(Some(&token)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::TokenExpired.code());
    h.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    let h = Harness::start(Settings {
        send_queue_frames: 64,
        send_queue_bytes: 256 * 1024,
        ..fast_settings()
    })
    .await;
    let (mut slow, _) = h.connect("slow", "json").await;
    let (mut fast, _) = h.connect("fast", "json").await;
    let big = ServerFrame::Event {
        event: serde_json::json!({"pad": "y".repeat(16 * 1024)}),
    };
    // Far more than the socket buffers plus the queue can hold; `fast` reads as it goes.
    let mut fast_got = 0;
    for _ in 0..400 {
        h.publish(&["slow", "fast"], &big).await;
        if let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(2), fast.next()).await {
            fast_got += 1;
        }
    }
    while fast_got < 400 {
        match next_frame(&mut fast, Encoding::Json).await {
            ServerFrame::Event { .. } => fast_got += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Drain what the slow client has buffered; it must end with the slow-consumer close.
    let mut code = None;
    while code.is_none() {
        match tokio::time::timeout(Duration::from_secs(5), slow.next())
            .await
            .expect("in time")
        {
            Some(Ok(WsMessage::Close(Some(f)))) => code = Some(u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(code, Some(CloseCode::SlowConsumer.code()));
    h.stop().await;
}

#[tokio::test]
async fn drain_closes_sockets_with_draining_code_and_removes_routes() {
    let h = Harness::start(fast_settings()).await;
    let (mut a, _) = h.connect("hank", "json").await;
    let (mut b, _) = h.connect("ivy", "msgpack").await;
    assert_eq!(
        h.registry
            .lookup(&["hank".into(), "ivy".into()])
            .await
            .unwrap()
            .len(),
        1
    );
    let registry = h.registry.clone();
    let stop = tokio::spawn(h.stop());
    assert_eq!(close_code(&mut a).await, CloseCode::Draining.code());
    assert_eq!(close_code(&mut b).await, CloseCode::Draining.code());
    stop.await.unwrap();
    assert!(registry
        .lookup(&["hank".into(), "ivy".into()])
        .await
        .unwrap()
        .is_empty());
    let _ = WsCloseCode::Normal;
}

/// More envelopes than the in-process bus holds for the node arrive while it does not read (one
/// publish, so the node cannot read in between): the dropped ones are a gap, and the socket gets
/// `resync` before anything delivered after it.
#[tokio::test]
async fn a_full_in_process_bus_is_a_gap_that_sends_resync_first() {
    use shared::routing::memory::MemoryBus;
    use shared::routing::Envelope;
    let h = Harness::start_with_bus(fast_settings(), std::sync::Arc::new(MemoryBus::new(4))).await;
    let (mut ws, _) = h.connect("alice", "json").await;
    let events: Vec<ServerFrame> = (0..20)
        .map(|i| ServerFrame::Event {
            event: serde_json::json!({ "i": i }),
        })
        .collect();
    h.bus
        .publish(
            events
                .iter()
                .map(|e| {
                    (
                        "test-node".to_string(),
                        Envelope::new(vec!["alice".into()], e),
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut ws, Encoding::Json).await,
        ServerFrame::Resync
    );
    for e in &events[..4] {
        assert_eq!(&next_frame(&mut ws, Encoding::Json).await, e);
    }
    h.stop().await;
}

/// A whole-node gap notice on the node's stream (an API replica could not deliver a message and
/// could not tell to whom) makes every socket of the node resync, once.
#[tokio::test]
async fn a_node_gap_notice_resyncs_every_socket() {
    use shared::routing::Envelope;
    let h = Harness::start(fast_settings()).await;
    let (mut alice, _) = h.connect("alice", "json").await;
    let (mut bob, _) = h.connect("bob", "msgpack").await;
    h.bus
        .publish(vec![("test-node".to_string(), Envelope::node_gap())])
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut alice, Encoding::Json).await,
        ServerFrame::Resync
    );
    assert_eq!(
        next_frame(&mut bob, Encoding::Msgpack).await,
        ServerFrame::Resync
    );
    let event = ServerFrame::Event {
        event: serde_json::json!({"after": "gap"}),
    };
    h.publish(&["alice"], &event).await;
    assert_eq!(next_frame(&mut alice, Encoding::Json).await, event);
    h.stop().await;
}

/// The client closes while a large frame is partly written to it (it stopped reading): the
/// server finishes that frame before its answering close frame, so that the bytes on the wire stay
/// a valid frame sequence, and drops what it had not begun.
#[tokio::test]
async fn a_client_close_during_a_partly_written_frame_keeps_the_frame_sequence_valid() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // No heartbeat or idle timeout while the client does not read.
    let h = Harness::start(Settings {
        node_id: "test-node".into(),
        send_queue_bytes: 64 << 20,
        heartbeat_interval: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(90),
        drain_window: Duration::from_millis(100),
        drain_deadline: Duration::from_secs(3),
        ..Settings::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let request = format!(
        "GET /ws?encoding=msgpack&access_token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        h.token("kim"),
        h.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    async fn read_more(
        stream: &mut tokio::net::TcpStream,
        buf: &mut Vec<u8>,
        chunk: &mut [u8],
    ) -> usize {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        n
    }
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(read_more(&mut stream, &mut buf, &mut chunk).await > 0);
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..head_end);
    let (hello, used) = loop {
        if let Some(f) = parse_server_frame(&buf) {
            break f;
        }
        assert!(read_more(&mut stream, &mut buf, &mut chunk).await > 0);
    };
    buf.drain(..used);
    assert!(matches!(
        shared::protocol::decode_server(Encoding::Msgpack, &hello.payload).unwrap(),
        ServerFrame::Hello { .. }
    ));

    // Far more than the kernel buffers on both sides hold while the client does not read.
    let big = ServerFrame::Event {
        event: serde_json::json!({ "pad": "z".repeat(12 << 20) }),
    };
    h.publish(&["kim"], &big).await;
    h.publish(&["kim"], &ServerFrame::Pong).await;
    // The first bytes of the big frame arrived: it is partly written, and stays so.
    while buf.len() < 16 {
        assert!(read_more(&mut stream, &mut buf, &mut chunk).await > 0);
    }
    // A masked close frame, code 1000, mask 0.
    stream
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .await
        .unwrap();
    while read_more(&mut stream, &mut buf, &mut chunk).await > 0 {}
    let mut frames = Vec::new();
    let mut rest = &buf[..];
    while let Some((frame, used)) = parse_server_frame(rest) {
        frames.push(frame);
        rest = &rest[used..];
    }
    assert!(
        rest.is_empty(),
        "{} bytes of a cut frame at the end",
        rest.len()
    );
    assert_eq!(frames.len(), 2, "the big frame, then the close frame");
    assert_eq!((frames[0].fin, frames[0].opcode), (true, 0x2));
    assert_eq!(
        shared::protocol::decode_server(Encoding::Msgpack, &frames[0].payload).unwrap(),
        big
    );
    assert_eq!(
        (frames[1].fin, frames[1].opcode, &frames[1].payload[..]),
        (true, 0x8, &[0x03, 0xe8][..])
    );
    h.stop().await;
}

/// A connect storm: 200 handshakes at once while each route write takes 50 ms (a loaded Redis).
/// Every socket gets `hello` only once its route is written, so a message sent right after its
/// `hello` reaches it; the routes go out in a few batched writes, not one per socket, and no
/// `hello` waits for the storm's writes to queue one behind the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_storm_is_routed_before_hello_in_batched_writes() {
    const SOCKETS: usize = 200;
    const WRITE: Duration = Duration::from_millis(50);
    let registry = Arc::new(support::slow_registry::SlowRegistry::new(WRITE));
    let settings = Settings {
        max_handshakes_per_ip: SOCKETS,
        connect_rate_per_ip: None,
        ..fast_settings()
    };
    let h = Arc::new(
        Harness::start_with(
            settings,
            registry.clone(),
            Arc::new(shared::routing::memory::MemoryBus::default()),
        )
        .await,
    );
    let started = Instant::now();
    let sockets = futures_util::future::join_all((0..SOCKETS).map(|i| {
        let h = h.clone();
        async move {
            let user = format!("storm-{i}");
            let t = Instant::now();
            let (mut ws, hello) = h.connect(&user, "json").await;
            let waited = t.elapsed();
            assert!(matches!(hello, ServerFrame::Hello { .. }), "{hello:?}");
            // Sent the moment `hello` arrived: the route must already be there.
            let event = ServerFrame::Event {
                event: serde_json::json!({ "to": user }),
            };
            h.publish(&[user.as_str()], &event).await;
            assert_eq!(next_frame(&mut ws, Encoding::Json).await, event);
            (ws, waited)
        }
    }))
    .await;
    let mut waits: Vec<Duration> = sockets.iter().map(|(_, w)| *w).collect();
    waits.sort();
    let writes = registry.writes();
    eprintln!(
        "{SOCKETS} sockets in {:?}: {writes} route writes, hello p50 {:?} p99 {:?}",
        started.elapsed(),
        waits[SOCKETS / 2],
        waits[SOCKETS * 99 / 100]
    );
    // One write in flight at a time, each taking every route marked while the last one ran.
    let elapsed = started.elapsed();
    assert!(
        writes * 2 < SOCKETS && writes as u128 <= elapsed.as_millis() / WRITE.as_millis() + 2,
        "{writes} route writes for {SOCKETS} sockets in {elapsed:?}: registrations are not batched"
    );
    drop(sockets);
    Arc::try_unwrap(h).ok().expect("one owner").stop().await;
}

/// Starts a node whose route writes land at once but are answered after `answer`, connects
/// `user` in the background (the upgrade waits for that answer), and returns once the route is
/// visible: the window in which deliveries reach a socket that has not had `hello` yet.
async fn connect_in_route_window(
    answer: Duration,
    user: &str,
) -> (Arc<Harness>, tokio::task::JoinHandle<Ws>) {
    let registry = Arc::new(support::slow_registry::SlowRegistry::answering_late(answer));
    let h = Arc::new(
        Harness::start_with(
            fast_settings(),
            registry,
            Arc::new(shared::routing::memory::MemoryBus::default()),
        )
        .await,
    );
    let url = format!("{}&encoding=json", h.url(Some(&h.token(user))));
    let connecting = tokio::spawn(async move {
        tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade")
            .0
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while h
        .registry
        .lookup(&[user.to_string()])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "route not written within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (h, connecting)
}

/// A delivery that reaches a socket while its route is being written (the route is visible,
/// the write not yet answered) comes after `hello`, never before it.
#[tokio::test]
async fn hello_comes_first_even_when_a_delivery_beats_the_route_answer() {
    let (h, connecting) = connect_in_route_window(Duration::from_millis(300), "early").await;
    let event = ServerFrame::Event {
        event: serde_json::json!({ "n": 1 }),
    };
    h.publish(&["early"], &event).await;
    let mut ws = connecting.await.unwrap();
    let first = next_frame(&mut ws, Encoding::Json).await;
    assert!(
        matches!(first, ServerFrame::Hello { .. }),
        "first frame {first:?}"
    );
    assert_eq!(next_frame(&mut ws, Encoding::Json).await, event);
    drop(ws);
    Arc::try_unwrap(h).ok().expect("one owner").stop().await;
}

/// A token revoked while its socket's route is being written gets only the close: neither
/// `hello` nor a delivery that reached the socket meanwhile.
#[tokio::test]
async fn a_token_revoked_during_the_route_write_gets_only_the_close() {
    let (h, connecting) = connect_in_route_window(Duration::from_millis(300), "revoked").await;
    let event = ServerFrame::Event {
        event: serde_json::json!({ "secret": true }),
    };
    h.publish(&["revoked"], &event).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    h.revocations
        .revoke("revoked", now_s + 1, Duration::from_secs(60))
        .await
        .unwrap();
    let mut ws = connecting.await.unwrap();
    let (frames, code) = frames_until_close(&mut ws).await;
    assert_eq!((frames, code), (Vec::new(), CloseCode::TokenRevoked.code()));
    drop(ws);
    Arc::try_unwrap(h).ok().expect("one owner").stop().await;
}

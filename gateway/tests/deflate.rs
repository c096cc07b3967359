//! permessage-deflate over raw sockets: what the upgrade answers to real offers, compressed frames
//! in both directions (one fragmented), a deflate bomb, and RSV1 where it is not allowed. Frames
//! are built and parsed by hand so that every bit on the wire is the one under test.

mod support;

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use gateway::Settings;
use shared::close::CloseCode;
use shared::protocol::{decode_server, encode_client, ClientFrame, Encoding, ServerFrame};
use support::{parse_server_frame, Harness};

const CHROME_OFFER: &str = "permessage-deflate; client_max_window_bits";

fn settings() -> Settings {
    Settings {
        node_id: "test-node".into(),
        heartbeat_interval: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(90),
        drain_window: Duration::from_millis(100),
        drain_deadline: Duration::from_secs(3),
        ..Settings::default()
    }
}

/// A server frame as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    /// The first byte: FIN, RSV bits, opcode.
    first: u8,
    /// The frame's bytes, header included.
    wire: Vec<u8>,
    payload: Vec<u8>,
}

impl Frame {
    fn rsv1(&self) -> bool {
        self.first & 0x40 != 0
    }
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
    /// The message's payload, inflated when RSV1 is set.
    fn message(&self) -> Vec<u8> {
        if !self.rsv1() {
            return self.payload.clone();
        }
        let mut input = self.payload.clone();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(d.total_in() as usize, input.len(), "all input inflated");
        out
    }
}

/// A client connected over a raw socket.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// `Sec-WebSocket-Extensions` of the 101 answer.
    extensions: Option<String>,
}

impl Raw {
    async fn connect(h: &Harness, user: &str, encoding: &str, offer: Option<&str>) -> Raw {
        let mut stream = TcpStream::connect(h.addr).await.unwrap();
        let offer = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /ws?encoding={encoding}&access_token={} HTTP/1.1\r\nHost: {}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {offer}\r\n",
            h.token(user),
            h.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
            extensions: None,
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.read_more().await;
        };
        let head = String::from_utf8(raw.buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_string())
        });
        raw
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 16 << 10];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = parse(&mut self.buf) {
                return f;
            }
            self.read_more().await;
        }
    }

    /// The next data frame (skipping pings).
    async fn data(&mut self) -> Frame {
        loop {
            let f = self.frame().await;
            if f.opcode() != 0x9 {
                return f;
            }
        }
    }

    /// Reads until the close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame().await;
            if f.opcode() == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }

    /// Sends one masked frame with the given first byte.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        self.stream
            .write_all(&client_frame(first, payload))
            .await
            .unwrap();
    }
}

fn parse(buf: &mut Vec<u8>) -> Option<Frame> {
    let (frame, used) = parse_server_frame(buf)?;
    let wire: Vec<u8> = buf.drain(..used).collect();
    Some(Frame {
        first: frame.first,
        payload: frame.payload,
        wire,
    })
}

/// A masked client frame (mask bytes chosen so that unmasking matters).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Raw deflate with a sync flush, the 4-byte tail removed (RFC 7692 §7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn assert_pong(frame: Frame) {
    assert_eq!(
        decode_server(Encoding::Json, &frame.message()).unwrap(),
        ServerFrame::Pong
    );
}

fn big_event() -> ServerFrame {
    ServerFrame::Event {
        event: serde_json::json!({
            "kind": "order.updated",
            "items": (0..20).map(|i| serde_json::json!({"sku": format!("sku-{i}"), "qty": i, "note": "the same words again and again"})).collect::<Vec<_>>(),
        }),
    }
}

#[tokio::test]
async fn browser_offer_gets_compressed_deliveries_shared_by_every_socket() {
    let h = Harness::start(settings()).await;
    let mut a = Raw::connect(&h, "ann", "json", Some(CHROME_OFFER)).await;
    let mut b = Raw::connect(&h, "bob", "json", Some(CHROME_OFFER)).await;
    let mut plain = Raw::connect(&h, "cat", "json", None).await;
    assert_eq!(
        a.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(plain.extensions, None);
    for raw in [&mut a, &mut b, &mut plain] {
        let hello = raw.data().await;
        assert!(matches!(
            decode_server(Encoding::Json, &hello.message()).unwrap(),
            ServerFrame::Hello { .. }
        ));
    }

    let event = big_event();
    h.publish(&["ann", "bob", "cat"], &event).await;
    let (fa, fb, fc) = (a.data().await, b.data().await, plain.data().await);
    assert!(fa.rsv1() && fa.first & 0x80 != 0, "compressed, one frame");
    assert_eq!(fa.opcode(), 0x1);
    assert_eq!(
        fa.wire, fb.wire,
        "the same compressed bytes to both sockets"
    );
    assert!(!fc.rsv1());
    assert!(
        fa.wire.len() * 2 < fc.wire.len(),
        "{} vs {}",
        fa.wire.len(),
        fc.wire.len()
    );
    assert_eq!(fa.message(), fc.payload);
    assert_eq!(decode_server(Encoding::Json, &fa.message()).unwrap(), event);

    // Below WS_COMPRESSION_MIN_BYTES a frame goes plain to every socket.
    h.publish(&["ann"], &ServerFrame::Pong).await;
    let small = a.data().await;
    assert!(!small.rsv1());
    assert_eq!(
        decode_server(Encoding::Json, &small.payload).unwrap(),
        ServerFrame::Pong
    );

    // msgpack sockets get binary frames compressed the same way.
    let mut m = Raw::connect(&h, "dan", "msgpack", Some(CHROME_OFFER)).await;
    m.data().await;
    h.publish(&["dan"], &event).await;
    let fm = m.data().await;
    assert!(fm.rsv1());
    assert_eq!(fm.opcode(), 0x2);
    assert_eq!(
        decode_server(Encoding::Msgpack, &fm.message()).unwrap(),
        event
    );
    h.stop().await;
}

#[tokio::test]
async fn compressed_client_messages_whole_and_fragmented_are_inflated() {
    let h = Harness::start(settings()).await;
    let mut a = Raw::connect(&h, "eve", "json", Some(CHROME_OFFER)).await;
    a.data().await;
    let ping = encode_client(Encoding::Json, &ClientFrame::Ping);
    // Whole: text, FIN and RSV1.
    a.send(0xc1, &deflate(&ping)).await;
    assert_pong(a.data().await);
    // Fragmented in three frames (RSV1 on the first only), with a ping between fragments (the
    // socket answers once the message is complete: its writes wait while a message arrives).
    let z = deflate(&ping);
    let (one, rest) = z.split_at(z.len() / 3);
    let (two, three) = rest.split_at(rest.len() / 2);
    a.send(0x41, one).await;
    a.send(0x00, two).await;
    a.send(0x89, b"between").await;
    a.send(0x80, three).await;
    let control = a.frame().await;
    assert_eq!(
        (control.opcode(), &control.payload[..]),
        (0xa, &b"between"[..])
    );
    assert_pong(a.data().await);
    // An uncompressed message still works on a socket that negotiated the extension.
    a.send(0x81, &ping).await;
    assert_pong(a.data().await);
    h.stop().await;
}

#[tokio::test]
async fn a_deflate_bomb_closes_with_message_too_big() {
    let h = Harness::start(settings()).await;
    let mut a = Raw::connect(&h, "fay", "json", Some(CHROME_OFFER)).await;
    a.data().await;
    // 1 MiB of spaces deflates to about 1 KiB: a small frame that inflates past MAX_FRAME_BYTES.
    let bomb = deflate(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < settings().max_frame_bytes);
    a.send(0xc1, &bomb).await;
    assert_eq!(a.close_code().await, CloseCode::FrameTooLarge.code());
    h.stop().await;
}

#[tokio::test]
async fn rsv1_where_it_is_not_allowed_is_a_protocol_violation() {
    let h = Harness::start(settings()).await;
    let ping = encode_client(Encoding::Json, &ClientFrame::Ping);
    // Not negotiated.
    let mut plain = Raw::connect(&h, "gus", "json", None).await;
    plain.data().await;
    plain.send(0xc1, &deflate(&ping)).await;
    assert_eq!(
        plain.close_code().await,
        CloseCode::ProtocolViolation.code()
    );
    // Negotiated, but on a control frame.
    let mut a = Raw::connect(&h, "hal", "json", Some(CHROME_OFFER)).await;
    a.data().await;
    a.send(0xc9, b"").await;
    assert_eq!(a.close_code().await, CloseCode::ProtocolViolation.code());
    // Negotiated, but on a continuation frame.
    let mut b = Raw::connect(&h, "ivy", "json", Some(CHROME_OFFER)).await;
    b.data().await;
    b.send(0x01, &ping[..3]).await;
    b.send(0xc0, &ping[3..]).await;
    assert_eq!(b.close_code().await, CloseCode::ProtocolViolation.code());
    // Compressed, but not deflate data.
    let mut c = Raw::connect(&h, "jon", "json", Some(CHROME_OFFER)).await;
    c.data().await;
    c.send(0xc1, &[0xff; 16]).await;
    assert_eq!(c.close_code().await, CloseCode::ProtocolViolation.code());
    h.stop().await;
}

#[tokio::test]
async fn small_server_windows_odd_offers_and_the_off_switch() {
    let h = Harness::start(settings()).await;
    // Python websockets' kind of offer: the server's window limited to 2^10 bytes.
    let mut py = Raw::connect(
        &h,
        "kit",
        "json",
        Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits"),
    )
    .await;
    assert_eq!(
        py.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
    );
    py.data().await;
    let event = big_event();
    let longer_than_window = serde_json::to_vec(&event).unwrap().len() > 1 << 10;
    assert!(longer_than_window);
    h.publish(&["kit"], &event).await;
    let f = py.data().await;
    assert!(!f.rsv1(), "longer than the offered window: sent plain");
    let medium = ServerFrame::Event {
        event: serde_json::json!({"text": "abc ".repeat(100)}),
    };
    h.publish(&["kit"], &medium).await;
    assert!(py.data().await.rsv1(), "within the window: compressed");

    // Offers the server cannot honour are declined, and the handshake still succeeds.
    for odd in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; mystery_param",
        "x-webkit-deflate-frame",
        ";;;, ,=,\"",
    ] {
        let mut r = Raw::connect(&h, "lou", "json", Some(odd)).await;
        assert_eq!(r.extensions, None, "{odd}");
        r.data().await;
    }
    h.stop().await;

    let off = Harness::start(Settings {
        ws_compression: false,
        ..settings()
    })
    .await;
    let mut r = Raw::connect(&off, "max", "json", Some(CHROME_OFFER)).await;
    assert_eq!(r.extensions, None);
    r.data().await;
    off.publish(&["max"], &event).await;
    assert!(!r.data().await.rsv1());
    // Not negotiated, so a compressed frame is a violation here too.
    let ping = encode_client(Encoding::Json, &ClientFrame::Ping);
    r.send(0xc1, &deflate(&ping)).await;
    assert_eq!(r.close_code().await, CloseCode::ProtocolViolation.code());
    off.stop().await;
}

/// Python `websockets` (installed by scripts/test.sh) with its default offer, and with an offer
/// that limits the server's window: it must receive compressed frames and have its own compressed
/// frames understood (`gateway/tests/python/deflate_client.py` checks the frames' RSV1 bits).
#[tokio::test]
async fn python_websockets_client_with_its_default_offer() {
    use tokio::io::AsyncBufReadExt;
    let h = Harness::start(settings()).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/deflate_client.py"
    );
    for (user, mode, answer) in [
        (
            "py1",
            "default",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            "py2",
            "window12",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
        ),
    ] {
        let url = format!(
            "ws://{}/ws?encoding=json&access_token={}",
            h.addr,
            h.token(user)
        );
        let mut child = tokio::process::Command::new("python3")
            .args([script, &url, mode])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let in_time = Duration::from_secs(20);
        let line = tokio::time::timeout(in_time, lines.next_line()).await;
        let Some(ready) = line.expect("python client in time").unwrap() else {
            let status = child.wait().await.unwrap();
            panic!(
                "python client ended before `ready` ({status}); exit status 3 means the \
                 websockets package is missing: pip install websockets (scripts/test.sh does)"
            );
        };
        assert_eq!(ready, format!("ready {answer}"));
        h.publish(&[user], &big_event()).await;
        let line = tokio::time::timeout(in_time, lines.next_line()).await;
        let ok = line.expect("python client in time").unwrap().unwrap_or_default();
        assert!(ok.starts_with("ok received_compressed="), "{ok:?}");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }
    h.stop().await;
}

//! Property tests for client frame decoding (JSON and MessagePack), the CI counterpart of the
//! cargo-fuzz targets in `fuzz/` (which need a nightly toolchain). Decoding any bytes must never
//! panic, must answer with `invalid_frame` or `unknown_type`, and valid frames must round-trip
//! with unknown fields ignored.

use chat_protocol::protocol::{decode_client, encode_client, ClientFrame, Encoding, ErrorCode};
use chat_protocol::Id;
use proptest::prelude::*;

fn encodings() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Json), Just(Encoding::Msgpack)]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        Just(ClientFrame::Ping),
        any::<u64>().prop_map(|n| ClientFrame::Typing {
            chat_id: Id(n >> 1)
        }),
        ".{0,300}".prop_map(|token| ClientFrame::Refresh { token }),
        (any::<u64>(), any::<u64>()).prop_map(|(c, m)| ClientFrame::Ack {
            chat_id: Id(c),
            message_id: Id(m)
        }),
    ]
}

/// JSON values of bounded depth and size.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check_outcome(result: Result<ClientFrame, chat_protocol::protocol::DecodeError>) {
    if let Err(e) = result {
        assert!(
            matches!(e.code(), ErrorCode::InvalidFrame | ErrorCode::UnknownType),
            "unexpected code for {e}"
        );
        // The error message goes back to the client; it must stay bounded.
        assert!(e.to_string().len() < 64 * 1024);
    }
}

/// `PROPTEST_CASES` overrides the per-test default (for longer runs).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2000)))]

    #[test]
    fn arbitrary_bytes_never_panic(enc in encodings(), bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_outcome(decode_client(enc, &bytes));
    }

    #[test]
    fn valid_frames_round_trip(enc in encodings(), frame in client_frame()) {
        let bytes = encode_client(enc, &frame);
        prop_assert_eq!(decode_client(enc, &bytes).unwrap(), frame);
    }

    #[test]
    fn mutated_frames_never_panic(
        enc in encodings(),
        frame in client_frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = encode_client(enc, &frame);
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
        }
        check_outcome(decode_client(enc, &bytes));
    }

    #[test]
    fn any_json_object_gets_a_clear_answer(
        kind in prop_oneof![
            Just("ping".to_string()),
            Just("typing".to_string()),
            Just("refresh".to_string()),
            "[a-z_]{0,12}"
        ],
        extra in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..6),
    ) {
        let mut obj: serde_json::Map<String, serde_json::Value> = extra.into_iter().collect();
        obj.insert("type".into(), kind.clone().into());
        let value = serde_json::Value::Object(obj);
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let bytes = match enc {
                Encoding::Json => serde_json::to_vec(&value).unwrap(),
                Encoding::Msgpack => rmp_serde::to_vec_named(&value).unwrap(),
            };
            let result = decode_client(enc, &bytes);
            if kind == "ping" {
                // Unknown fields are ignored.
                prop_assert_eq!(result.unwrap(), ClientFrame::Ping);
            } else if !["typing", "refresh"].contains(&kind.as_str()) {
                prop_assert_eq!(result.unwrap_err().code(), ErrorCode::UnknownType);
            } else {
                check_outcome(result);
            }
        }
    }
}

/// Deep nesting within the frame-size limit must not overflow the stack.
#[test]
fn deeply_nested_input_is_refused_without_overflow() {
    let limit = 16 * 1024;
    let json = format!(
        r#"{{"type":"ping","x":{}{}}}"#,
        "[".repeat(limit / 2),
        "]".repeat(limit / 2)
    );
    check_outcome(decode_client(Encoding::Json, json.as_bytes()));
    // MessagePack: fixmap {"type": "ping", "x": [[[[...]]]]} with 0x91 (array of one) nesting.
    let mut mp = vec![0x82, 0xa4];
    mp.extend_from_slice(b"type");
    mp.push(0xa4);
    mp.extend_from_slice(b"ping");
    mp.push(0xa1);
    mp.push(b'x');
    mp.extend(std::iter::repeat_n(0x91, limit));
    mp.push(0xc0);
    check_outcome(decode_client(Encoding::Msgpack, &mp));
    // Huge declared lengths with no data behind them.
    for bytes in [
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
    ] {
        check_outcome(decode_client(Encoding::Msgpack, &bytes));
    }
}

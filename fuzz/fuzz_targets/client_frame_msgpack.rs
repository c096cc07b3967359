//! Fuzzes decoding of client frames on a MessagePack socket: any bytes, no panic, a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use chat_protocol::protocol::{decode_client, encode_client, Encoding, ErrorCode};

fuzz_target!(|data: &[u8]| {
    match decode_client(Encoding::Msgpack, data) {
        Ok(frame) => {
            let again =
                decode_client(Encoding::Msgpack, &encode_client(Encoding::Msgpack, &frame));
            assert_eq!(again.ok(), Some(frame));
        }
        Err(e) => assert!(matches!(
            e.code(),
            ErrorCode::InvalidFrame | ErrorCode::UnknownType
        )),
    }
});

//! Fuzzes decoding of client frames on a JSON socket: any bytes, no panic, a clear error code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use chat_protocol::protocol::{decode_client, encode_client, Encoding, ErrorCode};

fuzz_target!(|data: &[u8]| {
    match decode_client(Encoding::Json, data) {
        // What decodes must encode and decode to the same frame.
        Ok(frame) => {
            let again = decode_client(Encoding::Json, &encode_client(Encoding::Json, &frame));
            assert_eq!(again.ok(), Some(frame));
        }
        Err(e) => assert!(matches!(
            e.code(),
            ErrorCode::InvalidFrame | ErrorCode::UnknownType
        )),
    }
});

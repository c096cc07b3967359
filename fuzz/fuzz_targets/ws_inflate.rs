//! Fuzzes the gateway's client-frame path under permessage-deflate: any bytes are parsed as
//! client frames, compressed ones inflated under a limit; no panic, no output past the limit, and
//! what the gateway compresses inflates back to itself.
#![no_main]

use bytes::BytesMut;
use gateway::deflate::{compress, inflate, InflateError};
use gateway::wsio::parse_frame;
use libfuzzer_sys::fuzz_target;

const MAX_BYTES: usize = 4 << 10;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = parse_frame(&mut buf, MAX_BYTES, true) {
        if frame.compressed {
            match inflate(&frame.payload, MAX_BYTES) {
                Ok(out) => assert!(out.len() <= MAX_BYTES),
                Err(InflateError::TooLarge(_) | InflateError::Corrupt) => {}
            }
        }
    }
    // Raw input as a compressed payload, too: the frame header must not shield the inflater.
    if let Ok(out) = inflate(data, MAX_BYTES) {
        assert!(out.len() <= MAX_BYTES);
    }
    if let Some(z) = compress(data) {
        assert!(z.len() < data.len());
        assert_eq!(inflate(&z, data.len()).unwrap(), data);
    }
});

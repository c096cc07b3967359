//! Property tests of the permessage-deflate path (the CI counterpart of `fuzz/` `ws_inflate`):
//! what the gateway compresses inflates back to itself, and no input, framed or not, makes the
//! inflater panic or produce more than its limit.

use bytes::BytesMut;
use proptest::prelude::*;

use gateway::deflate::{compress, inflate};
use gateway::wsio::parse_frame;

const MAX_BYTES: usize = 4 << 10;

proptest! {
    #[test]
    fn compressed_payloads_inflate_to_themselves(data in proptest::collection::vec(any::<u8>(), 0..8192)) {
        if let Some(z) = compress(&data) {
            prop_assert!(z.len() < data.len());
            prop_assert_eq!(inflate(&z, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn repetitive_payloads_compress(word in "[a-z ]{1,16}", n in 32usize..512) {
        let data = word.repeat(n).into_bytes();
        let z = compress(&data).expect("repetitive text compresses");
        prop_assert_eq!(inflate(&z, data.len()).unwrap(), data);
    }

    #[test]
    fn any_bytes_stay_within_the_limit(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(out) = inflate(&data, MAX_BYTES) {
            prop_assert!(out.len() <= MAX_BYTES);
        }
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(frame)) = parse_frame(&mut buf, MAX_BYTES, true) {
            prop_assert!(frame.payload.len() <= MAX_BYTES);
            if let Ok(out) = inflate(&frame.payload, MAX_BYTES) {
                prop_assert!(out.len() <= MAX_BYTES);
            }
        }
    }
}

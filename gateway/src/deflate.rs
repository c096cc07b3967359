//! permessage-deflate (RFC 7692): the offer the gateway accepts in the upgrade, and the two
//! transforms. Neither direction keeps deflate state per socket: server → client messages are
//! compressed without context takeover (one compressor per thread, reset for every message, its
//! output shared by every socket that negotiated the extension), and client → server messages are
//! inflated whole, once complete, by one decompressor per thread that is reset for every message.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The 4 bytes that end a sync-flushed deflate block: stripped by the sender, restored by the
/// receiver (RFC 7692 §7.2.1 and §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The level for payloads up to [`FAST_MAX_BYTES`]: zlib's level 1 writes fixed Huffman codes as it
/// goes, with no trees to build. Building the dynamic trees of a block costs about 5 µs whatever
/// the block's size, more than everything else in compressing a chat message (measured: 1.9 µs
/// for a 259-byte `message` at level 1, 194 bytes out; 6.8 µs at level 6, 174 bytes out).
const LEVEL_FAST: i32 = 1;

/// zlib's default level, for larger payloads, where dynamic trees pay for themselves (a 1 KiB push
/// event: 292 bytes out at level 6, 345 at level 1).
const LEVEL: i32 = 6;

/// The largest payload compressed at [`LEVEL_FAST`].
const FAST_MAX_BYTES: usize = 512;

/// Larger server payloads go uncompressed: compressing one costs the delivery task about 10 ns
/// per byte, which every other delivery would wait for.
pub const COMPRESS_MAX_BYTES: usize = 256 << 10;

/// The most offers (comma-separated elements) looked at in one upgrade; the rest are ignored, so
/// a hostile header costs a bounded parse.
const OFFERS_MAX: usize = 8;

/// What one socket agreed to. Copy and two bytes: this is all the extension keeps per socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// `server_max_window_bits` from the offer (15 when absent).
    server_window_bits: u8,
}

impl Negotiated {
    /// Whether a payload of `len` bytes may go compressed to this socket. The compressor's window
    /// is 32 KiB and cannot be made smaller, but every message is compressed from an empty
    /// window, so no back-reference reaches further than the message's own length: a message no
    /// longer than the offered window is valid for any window size.
    pub fn allows(self, len: usize) -> bool {
        self.server_window_bits >= 15 || len <= 1usize << self.server_window_bits
    }
}

/// The accepted offer and the `Sec-WebSocket-Extensions` value that answers it.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    pub negotiated: Negotiated,
    pub response: String,
}

/// Picks the first permessage-deflate offer this server can honour, from every
/// `Sec-WebSocket-Extensions` header of the request. An offer with an unknown, repeated or
/// malformed parameter is declined (RFC 7692 §5: the server declines offers it does not
/// understand) and the next one tried; nothing here fails the handshake.
pub fn negotiate<'a>(headers: impl Iterator<Item = &'a [u8]>) -> Option<Accepted> {
    headers
        .filter_map(|h| std::str::from_utf8(h).ok())
        .flat_map(|h| h.split(','))
        .take(OFFERS_MAX)
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Accepted> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_window_bits = 15u8;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_window_bits = window_bits(value?)?;
                2
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    // RFC 7692 §7.1.1.1: a server MAY include server_no_context_takeover in its response even if
    // the offer did not. §7.1.1.2: a server MAY include client_no_context_takeover in its response
    // (whether or not the client offered it), which obliges the client to compress every message
    // from an empty window, so that a message can be inflated alone. §7.1.2.1: an offer with
    // server_max_window_bits is accepted only by answering it with the same or a smaller value;
    // client_max_window_bits is left out of the answer (allowed, §7.1.2.2), so the client may use
    // any window: each message is inflated with a fresh 32 KiB window anyway.
    let mut response =
        format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
    if seen[2] {
        response.push_str(&format!("; server_max_window_bits={server_window_bits}"));
    }
    Some(Accepted {
        negotiated: Negotiated { server_window_bits },
        response,
    })
}

/// `8..=15`, as RFC 7692 §7.1.2 allows (digits only, no leading zero).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

/// A compressor and the level it is set to.
struct Compressor {
    deflate: Deflate,
    level: i32,
}

impl Compressor {
    fn new() -> Self {
        // Raw deflate (negative window bits), 32 KiB window, zlib's default memLevel: the reset
        // per message clears the 128 KiB hash head whatever the memLevel (zlib-rs's hash is 16
        // bits), and a smaller memLevel only splits a message into more blocks.
        let config = DeflateConfig {
            level: LEVEL,
            window_bits: -15,
            ..DeflateConfig::default()
        };
        Self {
            deflate: Deflate::new_with_config(config),
            level: LEVEL,
        }
    }
}

thread_local! {
    /// One compressor per worker thread (about 370 KiB in zlib-rs: window, chains, hash head,
    /// pending and symbol buffers), reset per message.
    static COMPRESSOR: RefCell<Compressor> = RefCell::new(Compressor::new());
    /// One decompressor per worker thread (about 43 KiB, the 32 KiB window included), reset per
    /// message.
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// `payload` compressed as one message with no context takeover, the sync-flush tail removed
/// (RFC 7692 §7.2.1); `None` when that would not be shorter.
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let c = &mut *c.borrow_mut();
        c.deflate.reset();
        let level = if payload.len() <= FAST_MAX_BYTES {
            LEVEL_FAST
        } else {
            LEVEL
        };
        if c.level != level {
            // Right after a reset nothing is pending, so changing the level emits nothing.
            c.deflate.set_level(level).ok()?;
            c.level = level;
        }
        // Deflate expands incompressible input by a few bytes per 16 KiB block at most; the loop
        // grows the buffer should that ever not suffice (zlib: a flush that filled the output is
        // called again with the same flush and more room).
        let mut out = vec![0u8; payload.len() + 64];
        loop {
            let (read, written) = (
                c.deflate.total_in() as usize,
                c.deflate.total_out() as usize,
            );
            c.deflate
                .compress(
                    &payload[read..],
                    &mut out[written..],
                    DeflateFlush::SyncFlush,
                )
                .ok()?;
            let (read_now, written_now) = (
                c.deflate.total_in() as usize,
                c.deflate.total_out() as usize,
            );
            if read_now == payload.len() && written_now < out.len() {
                out.truncate(written_now);
                break;
            }
            if (read_now, written_now) == (read, written) {
                return None;
            }
            if written_now == out.len() {
                out.resize(out.len() * 2, 0);
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then_some(out)
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("inflated message is larger than {0} bytes")]
    TooLarge(usize),
    #[error("compressed message is not valid deflate data")]
    Corrupt,
}

/// Inflates one message compressed with permessage-deflate, stopping as soon as the output would
/// pass `max_bytes` (a deflate bomb costs at most `max_bytes` of memory and the CPU to make it).
pub fn inflate(compressed: &[u8], max_bytes: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let limit = max_bytes.saturating_add(1);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).max(64).min(limit));
        for input in [compressed, &TAIL[..]] {
            let mut pos = 0;
            loop {
                let (before_in, before_out) = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                pos += (d.total_in() - before_in) as usize;
                if out.len() > max_bytes {
                    return Err(InflateError::TooLarge(max_bytes));
                }
                if status == Status::StreamEnd {
                    // A final block ends the message; anything after it (our tail) is ignored.
                    return Ok(out);
                }
                if pos == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() == out.capacity() {
                    let grow = out.capacity().min(limit - out.len());
                    out.reserve_exact(grow.max(1));
                } else if d.total_in() == before_in && d.total_out() == before_out {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(h: &str) -> Option<Accepted> {
        negotiate(std::iter::once(h.as_bytes()))
    }

    #[test]
    fn browser_and_python_offers_are_accepted() {
        let chrome = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(
            chrome.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(chrome.negotiated.allows(1 << 20));
        let python =
            offer("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
                .unwrap();
        assert!(python.response.ends_with("; server_max_window_bits=12"));
        assert!(python.negotiated.allows(4096));
        assert!(!python.negotiated.allows(4097));
        let firefox = offer("permessage-deflate").unwrap();
        assert_eq!(firefox.negotiated, chrome.negotiated);
    }

    #[test]
    fn odd_offers_are_declined_and_the_next_one_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        let second = negotiate(
            [
                &b"foo, permessage-deflate; bogus"[..],
                b"\xff\xfe",
                b"permessage-deflate; server_max_window_bits=\"10\"",
            ]
            .into_iter(),
        )
        .unwrap();
        assert!(second.response.ends_with("server_max_window_bits=10"));
    }

    #[test]
    fn round_trip_and_tail_stripped() {
        let text = br#"{"type":"message","chat_id":"c1","message":{"id":"m1","body":"hello hello hello hello"}}"#;
        let z = compress(text).unwrap();
        assert!(z.len() < text.len());
        assert!(!z.ends_with(&TAIL));
        assert_eq!(inflate(&z, 1 << 10).unwrap(), text);
        // Incompressible or tiny payloads are not worth a compressed frame.
        assert_eq!(compress(b"ab"), None);
    }

    /// Pseudo-random bytes (xorshift), which deflate cannot shrink.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn both_levels_round_trip_and_take_no_context_over() {
        let small = br#"{"type":"message","chat_id":"c_01HZX3K9","message":{"id":"m_01HZX3K9","chat_id":"c_01HZX3K9","body":"are we still on for lunch?"}}"#.to_vec();
        let large = small.repeat(8);
        assert!(small.len() <= FAST_MAX_BYTES && large.len() > FAST_MAX_BYTES);
        for payload in [&small, &large, &small] {
            let first = compress(payload).unwrap();
            // A second compression of the same message is byte for byte the first: nothing of
            // the previous message is referenced (server_no_context_takeover).
            assert_eq!(compress(payload).unwrap(), first);
            assert!(!first.ends_with(&TAIL));
            assert_eq!(inflate(&first, payload.len()).unwrap(), *payload);
        }
    }

    #[test]
    fn incompressible_payloads_grow_the_buffer_and_are_sent_plain() {
        // 1 MiB of noise deflates to stored blocks a few hundred bytes longer than the input,
        // past the first output buffer.
        for len in [100, FAST_MAX_BYTES, 1 << 20] {
            assert_eq!(compress(&noise(len)), None, "{len}");
        }
        let mut mixed = noise(300 << 10);
        mixed.extend(std::iter::repeat_n(b'a', 300 << 10));
        let z = compress(&mixed).unwrap();
        assert_eq!(inflate(&z, mixed.len()).unwrap(), mixed);
    }

    #[test]
    fn bombs_stop_at_the_limit_and_garbage_is_refused() {
        let bomb = compress(&vec![b'a'; 1 << 20]).unwrap();
        assert!(
            bomb.len() < 2 << 10,
            "1 MiB of one byte deflates to {}",
            bomb.len()
        );
        assert_eq!(
            inflate(&bomb, 16 << 10),
            Err(InflateError::TooLarge(16 << 10))
        );
        assert_eq!(inflate(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(inflate(&[0xff; 32], 1 << 10), Err(InflateError::Corrupt));
    }
}

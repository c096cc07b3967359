//! WebSocket framing for the gateway's sockets: server frames are encoded once into shared
//! `Bytes` (header + payload, plain or compressed with permessage-deflate for every socket that
//! negotiated it), and client frames are read by [`FrameReader`], which a socket owns only while
//! data is flowing and which reassembles fragmented messages and inflates compressed ones.
//! fastwebsockets' reader refuses any frame with RSV1 set, so client frames are parsed here.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fastwebsockets::OpCode;
use tokio::net::TcpStream;

use shared::close::CloseCode;
use shared::protocol::{encode_server, Encoding, ServerFrame};

use crate::deflate::{self, InflateError, Negotiated};

const FIN: u8 = 0x80;
/// RSV1: "this message is compressed" under permessage-deflate (RFC 7692 §6).
const RSV1: u8 = 0x40;
const RSV2_RSV3: u8 = 0x30;
const MASKED: u8 = 0x80;

/// A frame header: first byte (FIN, RSV1, opcode) and payload length, minimal encoding.
fn put_head(out: &mut BytesMut, first: u8, len: usize) {
    out.put_u8(first);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65_535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

fn framed(first: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + payload.len());
    put_head(&mut out, first, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A complete server → client WebSocket frame (unmasked header followed by the payload).
pub fn frame_bytes(opcode: OpCode, payload: &[u8]) -> Bytes {
    framed(FIN | opcode as u8, payload)
}

/// A protocol frame in the socket's encoding, ready to write (uncompressed).
pub fn server_frame(encoding: Encoding, frame: &ServerFrame) -> Bytes {
    let payload = encode_server(encoding, frame);
    frame_bytes(data_opcode(encoding), &payload)
}

pub fn data_opcode(encoding: Encoding) -> OpCode {
    match encoding {
        Encoding::Json => OpCode::Text,
        Encoding::Msgpack => OpCode::Binary,
    }
}

pub fn close_frame(code: CloseCode) -> Bytes {
    let mut payload = Vec::with_capacity(2 + code.reason().len());
    payload.extend_from_slice(&code.code().to_be_bytes());
    payload.extend_from_slice(code.reason().as_bytes());
    frame_bytes(OpCode::Close, &payload)
}

/// A server ping with an empty payload.
pub const PING_FRAME: &[u8] = &[0x89, 0x00];

/// One data frame for many sockets: framed plain once, and compressed at most once (on the first
/// socket that negotiated permessage-deflate), so that every socket gets shared bytes. The frame
/// bytes (header included) before and after compression of the frames handed out compressed are
/// counted when it drops.
pub struct Outgoing {
    opcode: OpCode,
    plain: Bytes,
    head_len: usize,
    /// Payloads shorter than this go uncompressed (`WS_COMPRESSION_MIN_BYTES`).
    min_bytes: usize,
    /// `None` until first asked for; `Some(None)` when compression did not pay.
    deflated: Option<Option<Bytes>>,
    sent: usize,
}

impl Outgoing {
    pub fn new(opcode: OpCode, payload: &[u8], min_bytes: usize) -> Self {
        let plain = frame_bytes(opcode, payload);
        Outgoing {
            opcode,
            head_len: plain.len() - payload.len(),
            plain,
            min_bytes,
            deflated: None,
            sent: 0,
        }
    }

    /// A protocol frame in `encoding`.
    pub fn frame(encoding: Encoding, frame: &ServerFrame, min_bytes: usize) -> Self {
        Self::new(
            data_opcode(encoding),
            &encode_server(encoding, frame),
            min_bytes,
        )
    }

    fn payload_len(&self) -> usize {
        self.plain.len() - self.head_len
    }

    /// The bytes for a socket: compressed (RSV1 set) when it negotiated permessage-deflate, the
    /// payload is at least `min_bytes` long, at most [`deflate::COMPRESS_MAX_BYTES`] and within
    /// the socket's window, and compressing made it shorter; the plain frame otherwise.
    pub fn for_socket(&mut self, deflate: Option<Negotiated>) -> Bytes {
        let len = self.payload_len();
        if !deflate.is_some_and(|d| d.allows(len))
            || len < self.min_bytes
            || len > deflate::COMPRESS_MAX_BYTES
        {
            return self.plain.clone();
        }
        let (opcode, plain, head_len) = (self.opcode, &self.plain, self.head_len);
        let compressed = self.deflated.get_or_insert_with(|| {
            deflate::compress(&plain[head_len..]).map(|z| framed(FIN | RSV1 | opcode as u8, &z))
        });
        match compressed {
            Some(z) => {
                self.sent += 1;
                z.clone()
            }
            None => self.plain.clone(),
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if let (n @ 1.., Some(Some(z))) = (self.sent, &self.deflated) {
            let n = n as u64;
            crate::telemetry::compressed(n, self.plain.len() as u64 * n, z.len() as u64 * n);
        }
    }
}

/// Size of each read into a [`FrameReader`]'s buffer.
const READ_CHUNK: usize = 4 << 10;

/// Why reading client frames stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection or it failed.
    Gone,
    /// A message (inflated, reassembled) or frame larger than `MAX_FRAME_BYTES`.
    TooLarge,
    /// Broken framing: what is wrong, for the log.
    Violation(&'static str),
}

impl ReadError {
    /// How the socket closes: `None` when the peer is already gone.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            ReadError::Gone => None,
            ReadError::TooLarge => Some(CloseCode::FrameTooLarge),
            ReadError::Violation(_) => Some(CloseCode::ProtocolViolation),
        }
    }
}

/// What one client frame completed.
#[derive(Debug)]
pub enum Incoming {
    /// A data message, reassembled and inflated; a text message is valid UTF-8.
    Data(OpCode, Bytes),
    /// A close, ping or pong frame with its (unmasked) payload.
    Control(OpCode, Bytes),
    /// A fragment of a message that is not complete yet.
    Fragment,
}

/// A data message whose first fragments have arrived.
struct Partial {
    opcode: OpCode,
    compressed: bool,
    payload: BytesMut,
}

/// Reads client frames from a borrowed `TcpStream` for one read burst. Holds a read buffer and,
/// while a fragmented message arrives, its fragments (both bounded by `MAX_FRAME_BYTES` plus one
/// read); inflation happens once the message is complete, with the thread's decompressor, so no
/// deflate state outlives a call to [`FrameReader::next`].
pub struct FrameReader<'a> {
    stream: &'a TcpStream,
    buf: BytesMut,
    max_bytes: usize,
    deflate: bool,
    partial: Option<Partial>,
}

impl<'a> FrameReader<'a> {
    /// A reader that first parses `prefix` (bytes already read from the stream).
    pub fn new(prefix: &[u8], stream: &'a TcpStream, max_bytes: usize, deflate: bool) -> Self {
        let mut buf = BytesMut::with_capacity(prefix.len().max(READ_CHUNK));
        buf.put_slice(prefix);
        FrameReader {
            stream,
            buf,
            max_bytes,
            deflate,
            partial: None,
        }
    }

    /// Whether nothing is buffered and no message is half read: the socket may drop the reader.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.partial.is_none()
    }

    /// Reads one frame (waiting for the stream as needed) and says what it completed.
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            if let Some(frame) = self.parse()? {
                return self.assemble(frame);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ReadError> {
        loop {
            self.stream.readable().await.map_err(|_| ReadError::Gone)?;
            self.buf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Err(ReadError::Gone),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(ReadError::Gone),
            }
        }
    }

    /// One complete frame from the buffer, or `None` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<ClientFrame>, ReadError> {
        parse_frame(&mut self.buf, self.max_bytes, self.deflate)
    }

    fn assemble(&mut self, frame: ClientFrame) -> Result<Incoming, ReadError> {
        let ClientFrame {
            fin,
            compressed,
            opcode,
            payload,
        } = frame;
        match opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                Ok(Incoming::Control(opcode, payload.freeze()))
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(ReadError::Violation("new message inside a fragmented one"));
                }
                if fin {
                    return self.finish(opcode, compressed, payload);
                }
                self.partial = Some(Partial {
                    opcode,
                    compressed,
                    payload,
                });
                Ok(Incoming::Fragment)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ReadError::Violation("continuation without a message"));
                };
                if partial.payload.len() + payload.len() > self.max_bytes {
                    return Err(ReadError::TooLarge);
                }
                partial.payload.put_slice(&payload);
                if !fin {
                    return Ok(Incoming::Fragment);
                }
                let Partial {
                    opcode,
                    compressed,
                    payload,
                } = self.partial.take().expect("checked above");
                self.finish(opcode, compressed, payload)
            }
        }
    }

    fn finish(
        &mut self,
        opcode: OpCode,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<Incoming, ReadError> {
        let payload = if compressed {
            let inflated = deflate::inflate(&payload, self.max_bytes).map_err(|e| match e {
                InflateError::TooLarge(_) => ReadError::TooLarge,
                InflateError::Corrupt => ReadError::Violation("invalid deflate data"),
            })?;
            crate::telemetry::inflated(payload.len() as u64, inflated.len() as u64);
            Bytes::from(inflated)
        } else {
            payload.freeze()
        };
        if opcode == OpCode::Text && std::str::from_utf8(&payload).is_err() {
            return Err(ReadError::Violation("text message is not UTF-8"));
        }
        Ok(Incoming::Data(opcode, payload))
    }
}

/// One client frame, unmasked.
#[derive(Debug)]
pub struct ClientFrame {
    pub fin: bool,
    /// RSV1: the first frame of a compressed message.
    pub compressed: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}

/// Takes one complete client frame off the front of `buf`, checking it as RFC 6455 §5 and
/// RFC 7692 §6 require of a server: masked, no RSV2/RSV3, RSV1 only on the first frame of a data
/// message and only when permessage-deflate was negotiated (`deflate`), control frames whole and
/// short, payload at most `max_bytes`. `None` when the frame is not complete yet.
pub fn parse_frame(
    buf: &mut BytesMut,
    max_bytes: usize,
    deflate: bool,
) -> Result<Option<ClientFrame>, ReadError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & RSV2_RSV3 != 0 {
        return Err(ReadError::Violation("RSV2 or RSV3 set"));
    }
    let opcode = OpCode::try_from(b0 & 0x0f).map_err(|_| ReadError::Violation("unknown opcode"))?;
    if b1 & MASKED == 0 {
        return Err(ReadError::Violation("client frames must be masked"));
    }
    let fin = b0 & FIN != 0;
    let compressed = b0 & RSV1 != 0;
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if compressed && (!deflate || control || opcode == OpCode::Continuation) {
        return Err(ReadError::Violation(
            "RSV1 set on a frame that cannot be compressed",
        ));
    }
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let head_len = 2 + ext + 4;
    if buf.len() < head_len {
        return Ok(None);
    }
    let len = match ext {
        0 => u64::from(b1 & 0x7f),
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
    };
    if control && (!fin || len > 125) {
        return Err(ReadError::Violation("control frame fragmented or too long"));
    }
    if len > max_bytes as u64 {
        return Err(ReadError::TooLarge);
    }
    let len = len as usize;
    if buf.len() < head_len + len {
        buf.reserve(head_len + len - buf.len());
        return Ok(None);
    }
    let mask: [u8; 4] = buf[head_len - 4..head_len].try_into().expect("4 bytes");
    buf.advance(head_len);
    let mut payload = buf.split_to(len);
    fastwebsockets::unmask(&mut payload, mask);
    Ok(Some(ClientFrame {
        fin,
        compressed,
        opcode,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_by_length() {
        assert_eq!(
            &frame_bytes(OpCode::Text, b"hi")[..],
            &[0x81, 2, b'h', b'i']
        );
        let mid = frame_bytes(OpCode::Binary, &[7u8; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = frame_bytes(OpCode::Binary, &vec![0u8; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(big.len(), 70_010);
        let close = close_frame(CloseCode::SlowConsumer);
        assert_eq!(
            &close[..4],
            &[0x88, (2 + "slow consumer".len()) as u8, 0x10, 0x05]
        );
    }

    fn masked(first: u8, payload: &[u8]) -> BytesMut {
        let mask = [1u8, 2, 3, 4];
        let mut out = BytesMut::new();
        out.put_u8(first);
        assert!(payload.len() < 126);
        out.put_u8(0x80 | payload.len() as u8);
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn client_frames_are_checked_and_unmasked() {
        let mut buf = masked(0x81, b"hello");
        let whole = buf.clone();
        // Byte by byte: incomplete until the last one.
        let mut partial = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            partial.put_u8(*b);
            let got = parse_frame(&mut partial, 64, false).unwrap();
            assert_eq!(got.is_some(), i + 1 == whole.len());
        }
        let f = parse_frame(&mut buf, 64, false).unwrap().unwrap();
        assert_eq!((f.fin, f.compressed, f.opcode), (true, false, OpCode::Text));
        assert_eq!(&f.payload[..], b"hello");
        assert!(buf.is_empty());

        let violation = |first: u8, deflate: bool| {
            matches!(
                parse_frame(&mut masked(first, b"x"), 64, deflate),
                Err(ReadError::Violation(_))
            )
        };
        assert!(violation(0xc1, false), "RSV1 not negotiated");
        assert!(!violation(0xc1, true), "RSV1 negotiated");
        assert!(violation(0xc9, true), "RSV1 on a ping");
        assert!(violation(0xc0, true), "RSV1 on a continuation");
        assert!(violation(0xa1, true), "RSV2");
        assert!(violation(0x83, true), "reserved opcode");
        assert!(violation(0x09, true), "fragmented ping");
        let mut unmasked = BytesMut::from(&[0x81u8, 0x01, b'x'][..]);
        assert!(matches!(
            parse_frame(&mut unmasked, 64, false),
            Err(ReadError::Violation(_))
        ));
        assert!(matches!(
            parse_frame(&mut masked(0x82, &[0; 65]), 64, false),
            Err(ReadError::TooLarge)
        ));
        // A length the header announces is refused before any payload arrives.
        let mut huge = BytesMut::from(&[0x82u8, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4][..]);
        assert!(matches!(
            parse_frame(&mut huge, 1 << 20, false),
            Err(ReadError::TooLarge)
        ));
    }

    #[test]
    fn one_compression_shared_by_every_socket() {
        let deflate = crate::deflate::negotiate(std::iter::once(&b"permessage-deflate"[..]))
            .unwrap()
            .negotiated;
        let payload = b"the same words again and again, the same words again and again".repeat(4);
        let mut out = Outgoing::new(OpCode::Text, &payload, 16);
        let first = out.for_socket(Some(deflate));
        let second = out.for_socket(Some(deflate));
        let plain = out.for_socket(None);
        assert_eq!(first[0], 0xc1, "FIN, RSV1, text");
        assert_eq!(first.as_ptr(), second.as_ptr(), "one buffer, not a copy");
        assert_eq!(plain[0], 0x81);
        assert!(first.len() < plain.len() / 2);
        // Below the threshold everything goes plain.
        let mut small = Outgoing::new(OpCode::Text, &payload, payload.len() + 1);
        assert_eq!(small.for_socket(Some(deflate))[0], 0x81);
    }
}

//! WebSocket framing helpers around fastwebsockets: server frames are encoded once into shared
//! `Bytes` (header + payload), and client frames are read through [`BurstReader`], which lets a
//! socket own a frame reader (with its 8 KiB buffer) only while data is flowing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use shared::close::CloseCode;
use shared::protocol::{encode_server, Encoding, ServerFrame};

/// A complete server → client WebSocket frame (unmasked header followed by the payload).
pub fn frame_bytes(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; 10];
    let head_len = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
    let mut out = BytesMut::with_capacity(head_len + payload.len());
    out.put_slice(&head[..head_len]);
    out.put_slice(payload);
    out.freeze()
}

/// A protocol frame in the socket's encoding, ready to write.
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

/// Bytes a client frame occupied on the wire, assuming the minimal length encoding that RFC 6455
/// requires. A client that uses a longer encoding makes this an underestimate, which only keeps
/// the frame reader alive a little longer: never a lost byte.
pub fn client_frame_wire_len(payload_len: usize) -> usize {
    let ext = match payload_len {
        0..=125 => 0,
        126..=65_535 => 2,
        _ => 8,
    };
    2 + ext + 4 + payload_len
}

/// Reads from a borrowed `TcpStream`, first serving bytes that were already read (the probe or
/// bytes hyper read ahead of the upgrade), and counts every byte handed to the frame reader so
/// that the caller can tell when the reader's internal buffer is empty.
pub struct BurstReader<'a> {
    prefix: Bytes,
    stream: &'a TcpStream,
    bytes_read: &'a AtomicUsize,
}

impl<'a> BurstReader<'a> {
    pub fn new(prefix: Bytes, stream: &'a TcpStream, bytes_read: &'a AtomicUsize) -> Self {
        BurstReader {
            prefix,
            stream,
            bytes_read,
        }
    }
}

impl AsyncRead for BurstReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            self.bytes_read.fetch_add(n, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.stream.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    self.bytes_read.fetch_add(n, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Writes are never issued through the reader (auto-pong and auto-close are off, the socket task
/// writes through its own queue), but fastwebsockets requires the bound.
impl AsyncWrite for BurstReader<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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

    #[test]
    fn client_wire_lengths() {
        assert_eq!(client_frame_wire_len(0), 6);
        assert_eq!(client_frame_wire_len(125), 131);
        assert_eq!(client_frame_wire_len(126), 134);
        assert_eq!(client_frame_wire_len(70_000), 70_014);
    }
}

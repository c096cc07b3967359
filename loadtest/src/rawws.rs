//! A minimal WebSocket client over a raw `TcpStream` that offers permessage-deflate (`connect
//! --deflate`): tungstenite has no permessage-deflate and refuses frames with RSV1 set, so the
//! handshake and the frame headers are handled here. It only holds a socket open: it reads
//! frames, answers pings, and never inflates (payloads are skipped).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What browsers send (Chrome, Firefox, Safari).
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A socket after the upgrade: the stream and the bytes read past the response head.
pub struct RawSocket {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Upgrades `stream` at `path_and_query` with the browser offer; fails unless the server accepted
/// permessage-deflate.
pub async fn connect(
    mut stream: TcpStream,
    host: &str,
    path_and_query: &str,
) -> Result<RawSocket, String> {
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {BROWSER_OFFER}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 << 10 {
            return Err("response head too long".into());
        }
        read_more(&mut stream, &mut buf)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap_or("?").to_string();
    if status != "101" {
        return Err(format!("http {status}"));
    }
    if !head
        .lines()
        .any(|l| l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate"))
    {
        return Err("permessage-deflate not negotiated".into());
    }
    buf.drain(..end);
    Ok(RawSocket { stream, buf })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 2048];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// One server frame: its first byte (FIN, RSV1, opcode) and payload.
pub struct Frame {
    pub first: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn compressed(&self) -> bool {
        self.first & 0x40 != 0
    }
}

impl RawSocket {
    /// The next frame from the server.
    pub async fn next(&mut self) -> io::Result<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (len, head) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if head > 0 && self.buf.len() >= head + len {
                    let first = self.buf[0];
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Ok(Frame { first, payload });
                }
            }
            read_more(&mut self.stream, &mut self.buf).await?;
        }
    }

    /// Reads until the server closes, answering pings (the gateway's heartbeat).
    pub async fn hold(mut self) {
        while let Ok(frame) = self.next().await {
            match frame.first & 0x0f {
                0x9 => {
                    // A masked pong with the same (short) payload; mask 0 keeps it as is.
                    let mut pong = vec![0x8a, 0x80 | frame.payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&frame.payload);
                    if self.stream.write_all(&pong).await.is_err() {
                        return;
                    }
                }
                0x8 => return,
                _ => {}
            }
        }
    }
}

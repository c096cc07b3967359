//! The minimum of the Socket.IO v5 / Engine.IO v4 client protocol over a plain WebSocket
//! (`?EIO=4&transport=websocket`), for measuring a Socket.IO cluster with the same scenarios:
//! Engine.IO packets are text frames whose first character is the type (`0` open, `2` ping,
//! `3` pong, `4` message); a Socket.IO packet rides in a message (`40` connect to the main
//! namespace, `42[...]` an event).

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

/// The WebSocket URL of a Socket.IO server for `base` (`ws://host:port`), with extra query pairs.
pub fn url(base: &str, query: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/socket.io").unwrap_or(base);
    format!("{base}/socket.io/?EIO=4&transport=websocket&{query}")
}

/// Waits for the Engine.IO open packet, connects to the main namespace and waits for its
/// acknowledgement (the Socket.IO equivalent of the gateway's `hello`).
pub async fn handshake<S>(ws: &mut WebSocketStream<S>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = next_text(ws).await?;
    if !first.starts_with("0{") {
        bail!("expected the Engine.IO open packet, got {first:?}");
    }
    ws.send(WsMessage::text("40")).await?;
    loop {
        let t = next_text(ws).await?;
        if t.starts_with("40") {
            return Ok(());
        }
        if t.starts_with("44") {
            bail!("Socket.IO refused the connection: {t}");
        }
    }
}

async fn next_text<S>(ws: &mut WebSocketStream<S>) -> anyhow::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .context("no Engine.IO packet within 20 s")?
            .context("socket closed")??;
        if let WsMessage::Text(t) = msg {
            if t.as_str() == "2" {
                ws.send(WsMessage::text("3")).await?;
                continue;
            }
            return Ok(t.to_string());
        }
    }
}

/// Whether a received text frame is an Engine.IO ping that must be answered with a pong.
pub fn is_ping(text: &str) -> bool {
    text == "2"
}

/// The JSON array of a Socket.IO event packet (`42[...]`), if `text` is one.
pub fn event(text: &str) -> Option<&str> {
    text.strip_prefix("42")
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_and_packets() {
        assert_eq!(
            super::url("ws://127.0.0.1:3000/", "a=1"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket&a=1"
        );
        assert_eq!(super::event("42[\"message\",{}]"), Some("[\"message\",{}]"));
        assert!(super::event("3").is_none());
        assert!(super::is_ping("2"));
    }
}

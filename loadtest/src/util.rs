//! Helpers every scenario shares: the loopback-only guard, tokens, opening an authenticated socket
//! and waiting for `hello`, and writing the JSON result.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use shared::auth::Signer;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Refuses any URL whose host is not a loopback address: load is only ever sent to this machine.
pub fn ensure_loopback<'a>(urls: impl IntoIterator<Item = &'a String>) -> anyhow::Result<()> {
    for u in urls {
        let host = u
            .split("//")
            .nth(1)
            .unwrap_or("")
            .split(['/', ':', '?'])
            .next()
            .unwrap_or("");
        if !(host == "localhost" || host.starts_with("127.")) {
            bail!("load is only sent to loopback addresses, not {u}");
        }
    }
    Ok(())
}

pub fn signer(secret: &str) -> Signer {
    Signer::hmac(jsonwebtoken::Algorithm::HS256, secret.as_bytes())
}

/// A user token valid for the whole run.
pub fn token(signer: &Signer, user: &str) -> String {
    signer.token(user, Duration::from_secs(6 * 3600), None)
}

/// Opens a socket for the holder of `token` and waits (bounded) for its `hello` frame.
pub async fn connect_user(ws_url: &str, token: &str) -> anyhow::Result<Ws> {
    let sep = if ws_url.contains('?') { '&' } else { '?' };
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(format!("{ws_url}{sep}access_token={token}")),
    )
    .await
    .context("WebSocket handshake timed out")??;
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        Ok(Some(Ok(WsMessage::Text(_)))) => Ok(ws),
        other => bail!("expected hello, got {other:?}"),
    }
}

/// Opens a Socket.IO connection for the holder of `token`, in the rooms of `chats`
/// (comma-separated), and waits for the namespace connect.
pub async fn connect_socketio(base: &str, token: &str, chats: &str) -> anyhow::Result<Ws> {
    let url = crate::eio::url(base, &format!("access_token={token}&chats={chats}"));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .context("WebSocket handshake timed out")??;
    crate::eio::handshake(&mut ws).await?;
    Ok(ws)
}

/// Creates a chat as `creator` with `members` and returns its id.
pub async fn create_chat(
    http: &reqwest::Client,
    api: &str,
    creator_token: &str,
    members: &[String],
    title: &str,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{api}/v1/chats"))
        .bearer_auth(creator_token)
        .json(&json!({"members": members, "title": title}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("creating a chat failed with {status}: {body}");
    }
    Ok(body["chat_id"]
        .as_str()
        .context("chat_id in the reply")?
        .to_string())
}

/// Writes `result` as pretty JSON to `path` when one is given.
pub fn write_json(path: Option<&std::path::Path>, result: &impl Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The 1-, 5- and 15-minute load averages, recorded beside every figure because this machine's
/// cores are shared.
pub fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback() {
        assert!(super::ensure_loopback(&["ws://127.0.0.1:1/ws".to_string()]).is_ok());
        assert!(super::ensure_loopback(&["http://localhost:80".to_string()]).is_ok());
        assert!(super::ensure_loopback(&["http://10.0.0.1:80".to_string()]).is_err());
        assert!(super::loadavg().is_some());
    }
}

//! `chat-api listen`: a minimal WebSocket client that prints each frame from a gateway as one JSON
//! line, so the walk-through and tests need no third-party WebSocket tool.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use shared::config::parse_nonzero_duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Gateway WebSocket URL (JSON encoding is asked for unless the URL says otherwise).
    #[arg(long, env = "LISTEN_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// A user token (`chat-api token --sub USER`), sent as `Authorization: Bearer`.
    #[arg(long, env = "LISTEN_TOKEN")]
    pub token: String,
    /// Exit after printing this many frames (`hello` included); unlimited when not given.
    #[arg(long, env = "LISTEN_COUNT")]
    pub count: Option<u64>,
    /// Stop after this long; an error if `--count` frames have not arrived by then.
    #[arg(long, env = "LISTEN_TIMEOUT", value_parser = parse_nonzero_duration)]
    pub timeout: Option<Duration>,
}

/// Connects and prints text frames to stdout, one per line, until the count, the timeout, or the
/// server closes the socket.
pub async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let mut url = args.url.clone();
    if !url.contains("encoding=") {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("encoding=json");
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("invalid --url {:?} (expected ws://HOST:PORT/ws)", args.url))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", args.token.trim()))
        .context("the token has characters a header cannot carry")?;
    request.headers_mut().insert("authorization", bearer);
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let run = async {
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let mut printed = 0u64;
        let mut out = std::io::stdout().lock();
        while args.count.is_none_or(|c| printed < c) {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    writeln!(out, "{}", text.as_str().trim_end())?;
                    out.flush()?;
                    printed += 1;
                }
                Some(Ok(Message::Binary(_))) => {
                    bail!("got a binary (MessagePack) frame: use encoding=json in --url")
                }
                Some(Ok(Message::Close(close))) => {
                    let why = close.map(|c| format!("{} {}", u16::from(c.code), c.reason));
                    if args.count.is_some() {
                        bail!(
                            "the server closed the socket after {printed} frames ({})",
                            why.unwrap_or_default()
                        );
                    }
                    eprintln!("closed by the server: {}", why.unwrap_or_default());
                    return Ok(printed);
                }
                Some(Ok(_)) => {} // pings are answered by the library
                Some(Err(e)) => return Err(e).context("WebSocket error"),
                None => bail!("the connection ended after {printed} frames"),
            }
        }
        Ok(printed)
    };
    match deadline {
        None => run.await.map(drop),
        Some(at) => match tokio::time::timeout_at(at, run).await {
            Ok(result) => result.map(drop),
            Err(_) if args.count.is_none() => Ok(()),
            Err(_) => bail!(
                "timed out after {:?} before {} frames arrived",
                args.timeout.unwrap_or_default(),
                args.count.unwrap_or_default()
            ),
        },
    }
}

//! A WebSocket client of one gateway (tokio-tungstenite, not the server's library) in either
//! encoding: connects, reads frames with a deadline, collects messages and events.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use shared::protocol::{decode_server, encode_client, ClientFrame, Encoding, Message, ServerFrame};
use shared::Id;

/// What a socket read produced.
#[derive(Debug)]
pub enum Recv {
    Frame(ServerFrame),
    Timeout,
    Closed(String),
}

/// A WebSocket client of one gateway (tokio-tungstenite, not the server's library).
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub encoding: Encoding,
    pub user: String,
    pub connection_id: String,
}

/// Frames a socket received while waiting for expected ones.
#[derive(Debug, Default)]
pub struct Received {
    pub messages: Vec<Message>,
    pub events: Vec<Value>,
}

impl WsClient {
    /// Connects and reads `hello`. JSON sockets send the token in `Authorization`, MessagePack
    /// sockets in `access_token` (the browser form), so both paths are exercised.
    pub async fn connect(url: &str, token: &str, encoding: Encoding) -> anyhow::Result<WsClient> {
        let request = match encoding {
            Encoding::Json => {
                let mut req = format!("{url}?encoding=json").into_client_request()?;
                req.headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                req
            }
            Encoding::Msgpack => {
                format!("{url}?encoding=msgpack&access_token={token}").into_client_request()?
            }
        };
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket handshake timed out"))??;
        WsClient::after_upgrade(ws, encoding).await
    }

    /// Connects over a TCP socket whose receive buffer is `rcvbuf` bytes, so that a client that
    /// stops reading makes the server's send queue fill quickly.
    pub async fn connect_small_buffer(
        url: &str,
        token: &str,
        encoding: Encoding,
        rcvbuf: u32,
    ) -> anyhow::Result<WsClient> {
        let enc = match encoding {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        };
        let request = format!("{url}?encoding={enc}&access_token={token}").into_client_request()?;
        let host = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let addr: SocketAddr = host.parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let stream = socket.connect(addr).await?;
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::client_async(
                request,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket handshake timed out"))??;
        WsClient::after_upgrade(ws, encoding).await
    }

    /// Wraps an upgraded socket and reads its `hello` (bounded).
    async fn after_upgrade(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        encoding: Encoding,
    ) -> anyhow::Result<WsClient> {
        let mut client = WsClient {
            ws,
            encoding,
            user: String::new(),
            connection_id: String::new(),
        };
        match client.recv(Instant::now() + Duration::from_secs(5)).await {
            Recv::Frame(ServerFrame::Hello {
                user_id,
                connection_id,
                ..
            }) => {
                client.user = user_id;
                client.connection_id = connection_id;
                Ok(client)
            }
            other => anyhow::bail!("expected hello, got {other:?}"),
        }
    }

    /// The next data frame before `deadline` (control frames are skipped).
    pub async fn recv(&mut self, deadline: Instant) -> Recv {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Recv::Timeout,
                Ok(None) => return Recv::Closed("stream ended".into()),
                Ok(Some(Err(e))) => return Recv::Closed(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            let (encoding, bytes) = match next {
                WsMessage::Text(t) => (Encoding::Json, t.as_bytes().to_vec()),
                WsMessage::Binary(b) => (Encoding::Msgpack, b.to_vec()),
                WsMessage::Close(c) => return Recv::Closed(format!("close frame {c:?}")),
                _ => continue,
            };
            assert_eq!(
                encoding, self.encoding,
                "{}: frame in the wrong encoding",
                self.user
            );
            return Recv::Frame(
                decode_server(encoding, &bytes)
                    .unwrap_or_else(|e| panic!("{}: undecodable frame: {e}", self.user)),
            );
        }
    }

    /// Reads until every message id in `messages` and `events` push events have arrived, within
    /// `limit`. Panics on a repeated message id, a message not expected, or an extra event.
    pub async fn expect(&mut self, messages: &[Id], events: usize, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        let want: HashSet<Id> = messages.iter().copied().collect();
        let mut got = Received::default();
        let mut seen = HashSet::new();
        while seen.len() < want.len() || got.events.len() < events {
            match self.recv(deadline).await {
                Recv::Frame(ServerFrame::Message { message }) => {
                    assert!(
                        want.contains(&message.message_id),
                        "{} ({}): unexpected message {message:?}",
                        self.user,
                        self.connection_id
                    );
                    assert!(
                        seen.insert(message.message_id),
                        "{} ({}): message {} delivered twice",
                        self.user,
                        self.connection_id,
                        message.message_id
                    );
                    got.messages.push(message);
                }
                Recv::Frame(ServerFrame::Event { event }) => {
                    assert!(
                        got.events.len() < events,
                        "{}: unexpected event {event}",
                        self.user
                    );
                    got.events.push(event);
                }
                Recv::Frame(_) => {}
                other => panic!(
                    "{} ({}): waiting for {} of {:?} and {} events, got {other:?} after {:?}",
                    self.user,
                    self.connection_id,
                    want.len() - seen.len(),
                    want,
                    events - got.events.len(),
                    got
                ),
            }
        }
        got
    }

    /// No `message` or `event` frame arrives within `grace` (and the socket stays open).
    pub async fn assert_quiet(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            match self.recv(deadline).await {
                Recv::Timeout => return,
                Recv::Frame(f @ (ServerFrame::Message { .. } | ServerFrame::Event { .. })) => {
                    panic!("{} ({}): extra frame {f:?}", self.user, self.connection_id)
                }
                Recv::Frame(_) => {}
                Recv::Closed(why) => panic!("{}: socket closed: {why}", self.user),
            }
        }
    }

    /// Sends one client frame in the socket's encoding.
    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        let bytes = encode_client(self.encoding, frame);
        let message = match self.encoding {
            Encoding::Json => WsMessage::Text(String::from_utf8(bytes).expect("JSON").into()),
            Encoding::Msgpack => WsMessage::Binary(bytes.into()),
        };
        self.ws
            .send(message)
            .await
            .unwrap_or_else(|e| panic!("{}: sending {frame:?}: {e}", self.user));
    }

    /// Reads until the server closes the socket (before `deadline`) and returns the close code;
    /// `None` if the socket ended without a close frame or the deadline passed first.
    pub async fn close_code(&mut self, deadline: Instant) -> Option<u16> {
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(WsMessage::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Sends an application ping and waits for `pong`, proving the socket is alive end to end.
    /// Returns the messages that arrived meanwhile.
    pub async fn ping(&mut self, limit: Duration) -> Vec<Message> {
        self.send_frame(&ClientFrame::Ping).await;
        let deadline = Instant::now() + limit;
        let mut messages = Vec::new();
        loop {
            match self.recv(deadline).await {
                Recv::Frame(ServerFrame::Pong) => return messages,
                Recv::Frame(ServerFrame::Message { message }) => messages.push(message),
                Recv::Frame(_) => {}
                other => panic!("{}: waiting for pong, got {other:?}", self.user),
            }
        }
    }
}

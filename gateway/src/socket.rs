//! One client socket after the upgrade. While idle the socket is a bare `TcpStream` awaiting
//! readiness (no frame reader, no buffers); a frame reader with its buffer exists only during a
//! read burst, and outgoing frames are shared `Bytes` written straight from the send queue with
//! vectored writes.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::OpCode;
use tokio::net::TcpStream;
use tokio::time::Instant;

use shared::auth::{expires_in, Identity};
use shared::close::CloseCode;
use shared::ids::now_unix_ms;
use shared::protocol::{
    decode_client, ClientFrame, Encoding, ErrorCode, ServerFrame, PROTOCOL_VERSION,
};
use shared::ratelimit::LocalBucket;
use shared::Id;

use crate::deflate::Negotiated;
use crate::hub::SocketHandle;
use crate::node::Node;
use crate::typing::TypingGate;
use crate::writer::{Enqueue, Flush, Writer};
use crate::wsio::{self, FrameReader, Incoming, Outgoing, ReadError};

/// A frame (or a fragmented message) that has begun to arrive must complete within this time.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// After our close frame, how long we wait for the client's before dropping the connection.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How a socket ended.
#[derive(Debug)]
enum End {
    /// We close with this code (`Normal` answering the client's close frame).
    Close(CloseCode),
    /// The client went away.
    Peer,
}

/// The HTTP connection task that read the upgrade request may have left its waker in the
/// stream's read-readiness slot (hyper polls the read side while the request is served). That
/// waker keeps the finished task's allocation (the whole HTTP connection future, about 1 KiB)
/// alive until the socket next becomes readable, which for an idle socket can be minutes. Polling
/// the slot once from this task puts this task's waker there instead (this task itself waits with
/// `readable()`, which does not use the slot).
async fn take_over_read_waker(stream: &TcpStream) {
    std::future::poll_fn(|cx| {
        let _ = stream.poll_read_ready(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

/// Runs the socket until it ends, then unregisters it.
pub async fn run(
    node: Arc<Node>,
    stream: TcpStream,
    read_ahead: Bytes,
    identity: Identity,
    token: Option<Arc<str>>,
    encoding: Encoding,
    deflate: Option<Negotiated>,
) {
    take_over_read_waker(&stream).await;
    if node.draining.load(Ordering::Acquire) {
        close_now(&stream, &Writer::new(0), CloseCode::Draining).await;
        return;
    }
    let user: Arc<str> = Arc::from(identity.subject.as_str());
    let handle = Arc::new(
        SocketHandle::new(
            node.hub.next_socket_id(),
            user.clone(),
            encoding,
            node.resync.epoch(),
        )
        .with_deflate(deflate),
    );
    match node
        .hub
        .add(handle.clone(), node.settings.max_sockets_per_user)
    {
        Ok(first) => {
            if first {
                // The route must exist before `hello`, or a message sent right after it would miss
                // this socket; bounded so that a registry outage does not stall connects.
                node.routes
                    .mark_and_wait(&user, Duration::from_secs(2))
                    .await;
            }
        }
        Err(_) => {
            metrics::counter!(crate::telemetry::REJECTED_TOTAL, "reason" => crate::telemetry::reason::TOO_MANY_SOCKETS)
                .increment(1);
            close_now(&stream, &Writer::new(0), CloseCode::TooManySockets).await;
            return;
        }
    }
    metrics::gauge!(crate::telemetry::SOCKETS_OPEN).increment(1.0);
    metrics::counter!(crate::telemetry::CONNECTS_TOTAL).increment(1);
    // Unregisters the socket however this task ends, a panic included: a leaked entry would
    // count against MAX_SOCKETS_PER_USER until the node restarts.
    let _registered = Registered {
        node: &node,
        handle: &handle,
        user: &user,
    };
    // Checked again now that the socket is in the hub: a revoke that came between the check
    // before the upgrade and here either is known here or found this socket in the hub
    // (`crate::admin::apply` records the revoke before it closes sockets).
    if node.deps.revocations.is_revoked(&identity).await {
        crate::telemetry::rejected(crate::telemetry::reason::REVOKED);
        close_now(&stream, &handle.writer, CloseCode::TokenRevoked).await;
        return;
    }

    // The identity and the hello frame are consumed here, not kept for the socket's life: an
    // idle socket holds none of their strings.
    let expires_at = identity.expires_at;
    let hello = ServerFrame::Hello {
        v: PROTOCOL_VERSION,
        connection_id: format!(
            "{}-{}-{}",
            node.info.node_id, node.info.incarnation, handle.id
        ),
        user_id: identity.subject,
        heartbeat_interval_ms: node.settings.heartbeat_interval.as_millis() as u64,
        idle_timeout_ms: node.settings.idle_timeout.as_millis() as u64,
        token_expires_at: expires_at,
    };
    let frame = Outgoing::frame(encoding, &hello, node.settings.ws_compression_min_bytes)
        .for_socket(deflate);
    handle.enqueue(frame, node.queue_limits());
    drop(hello);

    let mut socket = Socket {
        node: &node,
        handle: &handle,
        stream: &stream,
        last_rx: Instant::now(),
        expires_at,
        frames: LocalBucket::full(node.settings.max_frames_per_second),
        token,
        typing: TypingGate::default(),
    };
    let end = socket.run(read_ahead).await;
    let code = match end {
        End::Close(code) => {
            close_now(&stream, &handle.writer, code).await;
            code.code()
        }
        End::Peer => CloseCode::Normal.code(),
    };
    metrics::counter!(crate::telemetry::DISCONNECTS_TOTAL, "code" => code.to_string()).increment(1);
}

/// A socket's place in the hub, given back on drop.
struct Registered<'a> {
    node: &'a Node,
    handle: &'a Arc<SocketHandle>,
    user: &'a Arc<str>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::SOCKETS_OPEN).decrement(1.0);
        if self.node.hub.remove(self.handle) {
            self.node.routes.mark(self.user);
        }
    }
}

/// Finishes what is queued (a partly written frame above all), then the close frame (the
/// writer's, which may answer the client's), half-closes and lingers for the client's answer so
/// that the close frame is not lost to a reset. Bounded by [`CLOSE_LINGER`] in all: a client that
/// does not read is simply dropped.
async fn close_now(stream: &TcpStream, writer: &Writer, code: CloseCode) {
    let deadline = Instant::now() + CLOSE_LINGER;
    writer.close(code);
    loop {
        match writer.flush(stream) {
            Ok(Flush::Blocked) => {
                if !matches!(
                    tokio::time::timeout_at(deadline, stream.writable()).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            Ok(Flush::Closed(_) | Flush::Done) => break,
            Err(_) => return,
        }
    }
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout_at(deadline, async {
        let mut buf = [0u8; 256];
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    })
    .await;
}

struct Socket<'a> {
    node: &'a Node,
    handle: &'a Arc<SocketHandle>,
    stream: &'a TcpStream,
    last_rx: Instant,
    /// Token expiry, Unix seconds.
    expires_at: u64,
    /// The socket's current token, kept only when typing frames are forwarded with it.
    token: Option<Arc<str>>,
    typing: TypingGate,
    /// Frame-rate token bucket.
    frames: LocalBucket,
}

impl Socket<'_> {
    async fn run(&mut self, read_ahead: Bytes) -> End {
        if !read_ahead.is_empty() {
            if let Err(end) = self.read_burst(read_ahead).await {
                return end;
            }
        }
        let tick = tokio::time::sleep_until(self.next_tick());
        tokio::pin!(tick);
        let mut write_blocked = false;
        loop {
            tokio::select! {
                biased;
                _ = self.handle.writer.notified() => {
                    if write_blocked {
                        // Nothing can be written until the socket drains; what matters now is a
                        // close request (a slow consumer whose queue just overflowed), which must
                        // not wait for a client that may never read again.
                        if let Some(code) = self.handle.closing() {
                            return End::Close(code);
                        }
                        continue;
                    }
                    match self.handle.writer.flush(self.stream) {
                        Ok(Flush::Done) => {}
                        Ok(Flush::Blocked) => {
                            // A socket asked to close gets a bounded time to flush, not forever.
                            if let Some(code) = self.handle.closing() {
                                return End::Close(code);
                            }
                            write_blocked = true;
                        }
                        Ok(Flush::Closed(code)) => return End::Close(code),
                        Err(_) => return End::Peer,
                    }
                }
                ready = self.stream.writable(), if write_blocked => {
                    if ready.is_err() {
                        return End::Peer;
                    }
                    match self.handle.writer.flush(self.stream) {
                        Ok(Flush::Done) => write_blocked = false,
                        Ok(Flush::Blocked) => {
                            if let Some(code) = self.handle.closing() {
                                return End::Close(code);
                            }
                        }
                        Ok(Flush::Closed(code)) => return End::Close(code),
                        Err(_) => return End::Peer,
                    }
                }
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        return End::Peer;
                    }
                    if let Err(end) = self.read_burst(Bytes::new()).await {
                        return end;
                    }
                }
                _ = &mut tick => {
                    if let Err(code) = self.on_tick() {
                        return End::Close(code);
                    }
                    tick.as_mut().reset(self.next_tick());
                }
            }
        }
    }

    /// The next heartbeat, or the token expiry if sooner. `expires_at` comes from the client's
    /// token (any `u64`), so the arithmetic is clamped (`shared::auth::expires_in`).
    fn next_tick(&self) -> Instant {
        let expiry = expires_in(self.expires_at, now_unix_ms() / 1000) + Duration::from_millis(10);
        Instant::now() + self.node.settings.heartbeat_interval.min(expiry)
    }

    fn on_tick(&mut self) -> Result<(), CloseCode> {
        if now_unix_ms() / 1000 >= self.expires_at {
            return Err(CloseCode::TokenExpired);
        }
        if self.last_rx.elapsed() >= self.node.settings.idle_timeout {
            return Err(CloseCode::IdleTimeout);
        }
        self.send(Bytes::from_static(wsio::PING_FRAME));
        Ok(())
    }

    fn send(&self, frame: Bytes) {
        if self.handle.enqueue(frame, self.node.queue_limits()) == Enqueue::Overflow {
            metrics::counter!(crate::telemetry::SEND_QUEUE_DROPS_TOTAL).increment(1);
        }
    }

    fn send_frame(&self, frame: &ServerFrame) {
        let min_bytes = self.node.settings.ws_compression_min_bytes;
        self.send(
            Outgoing::frame(self.handle.encoding, frame, min_bytes).for_socket(self.handle.deflate),
        );
    }

    fn send_error(&self, code: ErrorCode, message: impl Into<String>) {
        self.send_frame(&ServerFrame::Error {
            code,
            message: message.into(),
        });
    }

    /// Reads the frames that are available. Returns without allocating when readiness was stale.
    async fn read_burst(&mut self, mut prefix: Bytes) -> Result<(), End> {
        if prefix.is_empty() {
            let mut probe = [0u8; 256];
            match self.stream.try_read(&mut probe) {
                Ok(0) => return Err(End::Peer),
                Ok(n) => prefix = Bytes::copy_from_slice(&probe[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(End::Peer),
            }
        }
        // Boxed so that the idle socket's future does not carry the reader's state.
        Box::pin(self.read_frames(prefix)).await
    }

    async fn read_frames(&mut self, prefix: Bytes) -> Result<(), End> {
        let mut reader = FrameReader::new(
            &prefix,
            self.stream,
            self.node.settings.max_frame_bytes,
            self.handle.deflate.is_some(),
        );
        drop(prefix);
        // Reset after each complete message: a fragmented one must complete within the limit too.
        let mut deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let incoming = match tokio::time::timeout_at(deadline, reader.next()).await {
                Err(_) => return Err(End::Close(CloseCode::ProtocolViolation)),
                Ok(Err(e)) => {
                    if let ReadError::Violation(what) = e {
                        tracing::debug!(what, "client broke the framing");
                    }
                    return Err(e.close_code().map_or(End::Peer, End::Close));
                }
                Ok(Ok(incoming)) => incoming,
            };
            self.last_rx = Instant::now();
            if !matches!(incoming, Incoming::Fragment) {
                deadline = self.last_rx + FRAME_TIMEOUT;
            }
            metrics::counter!(crate::telemetry::FRAMES_IN_TOTAL).increment(1);
            if !self.take_token() {
                return Err(End::Close(CloseCode::RateLimited));
            }
            match incoming {
                Incoming::Data(opcode, payload) => {
                    if opcode != wsio::data_opcode(self.handle.encoding) {
                        self.send_error(
                            ErrorCode::WrongEncoding,
                            "frame opcode does not match the connection's encoding",
                        );
                    } else {
                        self.on_client_frame(&payload).await;
                    }
                }
                Incoming::Control(OpCode::Close, payload) => {
                    // Answered through the writer, behind a partly written frame; counted as a
                    // normal close.
                    self.handle.writer.close_reply(&payload);
                    return Err(End::Close(CloseCode::Normal));
                }
                Incoming::Control(OpCode::Ping, payload) => {
                    self.send(wsio::frame_bytes(OpCode::Pong, &payload))
                }
                Incoming::Control(..) | Incoming::Fragment => {}
            }
            // A fragmented message keeps the reader (and the frame timeout) until it completes;
            // the socket's writes wait for it meanwhile, as they wait for a partly read frame.
            if reader.is_idle() {
                return Ok(());
            }
        }
    }

    fn take_token(&mut self) -> bool {
        let rate = self.node.settings.max_frames_per_second;
        self.frames.take(rate, rate)
    }

    async fn on_client_frame(&mut self, payload: &[u8]) {
        let frame = match decode_client(self.handle.encoding, payload) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!(crate::telemetry::REJECTED_TOTAL, "reason" => crate::telemetry::reason::BAD_FRAME).increment(1);
                return self.send_error(e.code(), e.to_string());
            }
        };
        match frame {
            ClientFrame::Ping => self.send_frame(&ServerFrame::Pong),
            ClientFrame::Typing { chat_id } => self.on_typing(chat_id),
            ClientFrame::Ack {
                chat_id,
                message_id,
            } => self.on_ack(chat_id, message_id),
            ClientFrame::Refresh { token } => match self.node.deps.verifier.verify(&token) {
                Ok(id) if *id.subject == *self.handle.user && !id.is_service() => {
                    if self.node.deps.revocations.is_revoked(&id).await {
                        return self.send_error(ErrorCode::InvalidToken, "token revoked");
                    }
                    self.expires_at = id.expires_at;
                    if self.token.is_some() {
                        self.token = Some(Arc::from(token));
                    }
                    self.send_frame(&ServerFrame::Refreshed {
                        token_expires_at: id.expires_at,
                    });
                }
                Ok(_) => self.send_error(ErrorCode::InvalidToken, "token is for another user"),
                Err(e) => self.send_error(ErrorCode::InvalidToken, e.to_string()),
            },
        }
    }

    /// Coalesces a delivered receipt into the node's ack table (`crate::acks`); answered only
    /// when it cannot be taken.
    fn on_ack(&mut self, chat_id: Id, message_id: Id) {
        let (Some(acks), Some(token)) = (&self.node.acks, &self.token) else {
            return self.send_error(
                ErrorCode::Unavailable,
                "delivered receipts are not enabled on this node (no API_URL)",
            );
        };
        if !acks.record(
            self.handle,
            self.node.queue_limits(),
            token.clone(),
            chat_id,
            message_id,
        ) {
            self.send_error(
                ErrorCode::Unavailable,
                "too many acks pending on this node; ack again later",
            );
        }
    }

    fn on_typing(&mut self, chat_id: Id) {
        let (Some(forwarder), Some(token)) = (&self.node.typing, &self.token) else {
            return self.send_error(
                ErrorCode::Unavailable,
                "typing indicators are not enabled on this node (no API_URL)",
            );
        };
        let interval = self.node.settings.typing_interval;
        if !self.typing.allow(chat_id, Instant::now(), interval) {
            metrics::counter!(crate::telemetry::TYPING_TOTAL, "result" => crate::telemetry::typing_result::RATE_LIMITED).increment(1);
            return self.send_error(
                ErrorCode::RateLimited,
                format!("at most one typing frame per chat every {interval:?}"),
            );
        }
        forwarder.forward(
            self.handle.clone(),
            self.node.queue_limits(),
            token.clone(),
            chat_id,
        );
    }
}

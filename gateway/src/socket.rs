//! One client socket after the upgrade. While idle the socket is a small hand-written future
//! over a bare `TcpStream` awaiting readiness (no frame reader, no buffers, no timer); a frame
//! reader with its buffer exists only during a read burst, and outgoing frames are shared `Bytes`
//! written straight from the send queue with vectored writes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::OpCode;
use tokio::net::TcpStream;
use tokio::time::Instant;

use shared::auth::Identity;
use shared::close::CloseCode;
use shared::protocol::{
    decode_client, ClientFrame, Encoding, ErrorCode, ServerFrame, PROTOCOL_VERSION,
};
use shared::ratelimit::LocalBucket;
use shared::Id;

use crate::deflate::Negotiated;
use crate::hub::SocketHandle;
use crate::node::Node;
use crate::sweep::Cadence;
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

/// Sets the socket up (registration, route, revocation check, `hello`), then hands it to its own
/// small task ([`SocketTask`]) and returns. The setup's state (the route wait, the revocation
/// check, the identity) lives in the upgrade's task and is freed with it; the socket's task holds
/// only what an idle socket needs.
pub async fn run(
    node: Arc<Node>,
    stream: TcpStream,
    read_ahead: Bytes,
    identity: Identity,
    token: Option<Arc<str>>,
    encoding: Encoding,
    deflate: Option<Negotiated>,
) {
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
    // `hello` is queued before the socket joins the hub, so it is the socket's first frame
    // whatever reaches the socket while its route is written. The hello frame is consumed here,
    // not kept for the socket's life: an idle socket holds none of its strings.
    let hello = ServerFrame::Hello {
        v: PROTOCOL_VERSION,
        connection_id: format!(
            "{}-{}-{}",
            node.info.node_id, node.info.incarnation, handle.id
        ),
        user_id: identity.subject.clone(),
        heartbeat_interval_ms: node.settings.heartbeat_interval.as_millis() as u64,
        idle_timeout_ms: node.settings.idle_timeout.as_millis() as u64,
        token_expires_at: identity.expires_at,
    };
    let frame = Outgoing::frame(encoding, &hello, node.settings.ws_compression_min_bytes)
        .for_socket(deflate);
    handle.enqueue(frame, node.queue_limits());
    drop(hello);
    let first = match node
        .hub
        .add(handle.clone(), node.settings.max_sockets_per_user)
    {
        Ok(first) => first,
        Err(_) => {
            metrics::counter!(crate::telemetry::REJECTED_TOTAL, "reason" => crate::telemetry::reason::TOO_MANY_SOCKETS)
                .increment(1);
            close_now(&stream, &Writer::new(0), CloseCode::TooManySockets).await;
            return;
        }
    };
    metrics::gauge!(crate::telemetry::SOCKETS_OPEN).increment(1.0);
    metrics::counter!(crate::telemetry::CONNECTS_TOTAL).increment(1);
    // From here the socket unregisters however it ends, a panic included (`Socket`'s drop).
    let live = Live {
        stream,
        socket: Socket {
            node: node.clone(),
            handle,
            token,
            typing: TypingGate::default(),
            frames: LocalBucket::full(node.settings.max_frames_per_second),
            write_blocked: false,
        },
    };
    let handle = &live.socket.handle;
    if first {
        // The route must exist before `hello` goes out (the socket's task, spawned below, writes
        // it), or a message sent right after it would miss this socket; bounded so that a
        // registry outage does not stall connects.
        node.routes
            .mark_and_wait(&user, Duration::from_secs(2))
            .await;
    }
    // Checked again now that the socket is in the hub: a revoke that came between the check
    // before the upgrade and here either is known here or found this socket in the hub
    // (`crate::admin::apply` records the revoke before it closes sockets).
    if node.deps.revocations.is_revoked(&identity).await {
        crate::telemetry::rejected(crate::telemetry::reason::REVOKED);
        // Nothing queued meanwhile (`hello`, deliveries) reaches a revoked token: only the close.
        handle.writer.drop_queued();
        close_now(&live.stream, &handle.writer, CloseCode::TokenRevoked).await;
        return;
    }
    // Heartbeats, the idle timeout and the token expiry are the node's sweep's from now on.
    let now_ms = node.hub.now_ms();
    let tick = Cadence::new(node.settings.heartbeat_interval).tick_at(now_ms);
    handle.go_live(now_ms, tick, identity.expires_at);
    tokio::spawn(SocketTask::new(live, read_ahead));
}

/// What an open socket owns: its stream and the rest ([`Socket`]), apart so that a frame reader
/// can borrow the stream while the frames it reads change the rest.
struct Live {
    stream: TcpStream,
    socket: Socket,
}

/// The socket's task: a hand-written future, so that an idle socket's task is this enum and its
/// [`Live`] (about 100 bytes) rather than an async state machine sized for its largest state.
/// Idle, it waits on three things at once: the writer's wake-up (frames queued, a close asked),
/// the stream's write readiness while a write is blocked, and the stream's read readiness (in
/// the stream's own readiness slots, so no waiter is stored here). A read burst and the close run
/// as boxed async code that owns the socket while it runs and exists only meanwhile.
/// Heartbeats, the idle timeout and the token expiry are the node's sweep's (`crate::sweep`).
/// Its first poll also replaces the waker that hyper's HTTP connection task left in the read
/// slot while it served the upgrade request, which would otherwise keep that finished task's
/// allocation (about 1 KiB) alive until the client next sent something.
pub(crate) struct SocketTask {
    state: State,
}

enum State {
    Idle(Live),
    /// A read burst or the close; the read burst gives the socket back (`Some`) when it ends
    /// with the socket still open.
    Busy(Pin<Box<dyn Future<Output = Option<Live>> + Send>>),
    Done,
}

/// Wake-ups an idle socket handles in one poll before it yields to other tasks (a socket whose
/// writer is woken as fast as it flushes must not hold its worker thread).
const IDLE_WAKES_PER_POLL: usize = 32;

impl SocketTask {
    fn new(live: Live, read_ahead: Bytes) -> SocketTask {
        let state = if read_ahead.is_empty() {
            State::Idle(live)
        } else {
            State::Busy(reading(live, read_ahead))
        };
        SocketTask { state }
    }
}

impl Future for SocketTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Busy(work) => match work.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(live)) => this.state = State::Idle(live),
                    Poll::Ready(None) => {
                        this.state = State::Done;
                        return Poll::Ready(());
                    }
                },
                State::Idle(live) => {
                    let next = match live.poll_idle(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(next) => next,
                    };
                    let State::Idle(live) = std::mem::replace(&mut this.state, State::Done) else {
                        unreachable!("matched above")
                    };
                    this.state = State::Busy(match next {
                        Next::Read(prefix) => reading(live, prefix),
                        Next::End(end) => Box::pin(async move {
                            live.finish(end).await;
                            None
                        }),
                    });
                }
                State::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A read burst over `live`, starting with `prefix` (bytes already read).
fn reading(mut live: Live, prefix: Bytes) -> Pin<Box<dyn Future<Output = Option<Live>> + Send>> {
    Box::pin(async move {
        let Live { stream, socket } = &mut live;
        match socket.read_frames(stream, prefix).await {
            Ok(()) => Some(live),
            Err(end) => {
                live.finish(end).await;
                None
            }
        }
    })
}

/// What woke an idle socket.
enum Next {
    /// The client sent these bytes (the start of a read burst).
    Read(Bytes),
    End(End),
}

impl Live {
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        let Live { stream, socket } = self;
        for _ in 0..IDLE_WAKES_PER_POLL {
            // In the order of priority: queued frames and close requests, then a blocked write,
            // then reads.
            if socket.handle.writer.poll_notified(cx).is_ready() {
                if let Some(end) = socket.on_notified(stream) {
                    return Poll::Ready(Next::End(end));
                }
                continue;
            }
            if socket.write_blocked {
                match stream.poll_write_ready(cx) {
                    Poll::Ready(Err(_)) => return Poll::Ready(Next::End(End::Peer)),
                    Poll::Ready(Ok(())) => {
                        if let Some(end) = socket.on_writable(stream) {
                            return Poll::Ready(Next::End(end));
                        }
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            match stream.poll_read_ready(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(Next::End(End::Peer)),
                Poll::Ready(Ok(())) => {
                    // Stale readiness costs no allocation: a small probe first, and a frame
                    // reader (boxed, with its buffer) only when bytes came.
                    let mut probe = [0u8; 256];
                    match stream.try_read(&mut probe) {
                        Ok(0) => return Poll::Ready(Next::End(End::Peer)),
                        Ok(n) => {
                            return Poll::Ready(Next::Read(Bytes::copy_from_slice(&probe[..n])))
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return Poll::Ready(Next::End(End::Peer)),
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Closes (when `end` asks to), records the disconnect and unregisters the socket.
    async fn finish(self, end: End) {
        let code = match end {
            End::Close(code) => {
                close_now(&self.stream, &self.socket.handle.writer, code).await;
                code.code()
            }
            End::Peer => CloseCode::Normal.code(),
        };
        metrics::counter!(crate::telemetry::DISCONNECTS_TOTAL, "code" => code.to_string())
            .increment(1);
    }
}

/// Gives the socket's place in the hub back however the socket ends, a panic included: a leaked
/// entry would count against MAX_SOCKETS_PER_USER until the node restarts.
impl Drop for Socket {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::SOCKETS_OPEN).decrement(1.0);
        if self.node.hub.remove(&self.handle) {
            self.node.routes.mark(&self.handle.user);
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

/// An open socket's state, apart from its stream.
struct Socket {
    node: Arc<Node>,
    handle: Arc<SocketHandle>,
    /// The socket's current token, kept only when typing frames are forwarded with it.
    token: Option<Arc<str>>,
    typing: TypingGate,
    /// Frame-rate token bucket.
    frames: LocalBucket,
    /// The last write did not finish: the socket waits for write readiness.
    write_blocked: bool,
}

impl Socket {
    /// The writer was woken (frames queued, a close asked): writes what the stream takes.
    fn on_notified(&mut self, stream: &TcpStream) -> Option<End> {
        if self.write_blocked {
            // Nothing can be written until the socket drains; what matters now is a close
            // request (a slow consumer whose queue just overflowed), which must not wait for a
            // client that may never read again.
            return self.handle.closing().map(End::Close);
        }
        match self.handle.writer.flush(stream) {
            Ok(Flush::Done) => None,
            Ok(Flush::Blocked) => {
                // A socket asked to close gets a bounded time to flush, not forever.
                if let Some(code) = self.handle.closing() {
                    return Some(End::Close(code));
                }
                self.write_blocked = true;
                None
            }
            Ok(Flush::Closed(code)) => Some(End::Close(code)),
            Err(_) => Some(End::Peer),
        }
    }

    /// The blocked stream is writable again.
    fn on_writable(&mut self, stream: &TcpStream) -> Option<End> {
        match self.handle.writer.flush(stream) {
            Ok(Flush::Done) => {
                self.write_blocked = false;
                None
            }
            Ok(Flush::Blocked) => self.handle.closing().map(End::Close),
            Ok(Flush::Closed(code)) => Some(End::Close(code)),
            Err(_) => Some(End::Peer),
        }
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

    /// Reads the frames that are available after `prefix`, until the stream has no more and no
    /// message is half read.
    async fn read_frames(&mut self, stream: &TcpStream, prefix: Bytes) -> Result<(), End> {
        let mut reader = FrameReader::new(
            &prefix,
            stream,
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
            self.handle.touch(self.node.hub.now_ms());
            if !matches!(incoming, Incoming::Fragment) {
                deadline = Instant::now() + FRAME_TIMEOUT;
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
                    self.handle.set_expires_at(id.expires_at);
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
            &self.handle,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle socket's task holds beside tokio's task header: the future itself.
    #[test]
    fn an_idle_socket_task_is_small() {
        let size = std::mem::size_of::<SocketTask>();
        println!(
            "SocketTask: {size} B, Live: {} B, SocketHandle: {} B",
            std::mem::size_of::<Live>(),
            std::mem::size_of::<SocketHandle>()
        );
        assert!(size <= 160, "{size} B");
    }
}

//! A socket's writer: the one owner of its send queue. Other tasks push frames and ask it to close;
//! the socket task flushes it to the TCP stream. Bounded in frames and bytes (full means close
//! 4101), a partly written frame is always finished before anything else goes out (the close
//! frame included), and frames are written straight from the queued `Bytes` with vectored writes.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use fastwebsockets::OpCode;
use parking_lot::{Mutex, MutexGuard};
use tokio::net::TcpStream;

use shared::close::CloseCode;

use crate::wsio;

/// Frames written per vectored write.
const WRITEV_MAX: usize = 64;

/// Queue limits.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Enqueue {
    Queued,
    /// The queue was full: the socket is now closing as a slow consumer.
    Overflow,
    /// The socket is already closing.
    Closed,
}

/// What a flush got to.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is written.
    Done,
    /// The socket takes no more for now; wait until it is writable.
    Blocked,
    /// Everything is written, the close frame last: the socket ends with this code.
    Closed(CloseCode),
}

/// A socket's send queue and wake-up. Kept small: an idle socket's queue holds no allocation,
/// and the wake-up is the socket task's waker kept beside the queue (no `Notify` and no waiter
/// node in the task's future).
pub struct Writer {
    queue: Mutex<Queue>,
}

struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes queued, counting only what is not yet written.
    bytes: usize,
    /// The front frame is partly written and must be finished before anything else is sent.
    front_started: bool,
    close: Close,
    /// The node's resync epoch this socket last got a `resync` for (or joined at). See
    /// [`Writer::push_delivery`].
    resync_epoch: u32,
    /// Frames were queued without waking the socket task; whoever queued them wakes it
    /// ([`Writer::push_delivery_deferred`]).
    wake_owed: bool,
    /// A wake-up is pending: set by every push and close request, taken by
    /// [`Writer::poll_notified`] (one wake-up is kept if nobody waits).
    notified: bool,
    /// The socket task waiting in [`Writer::poll_notified`].
    waker: Option<Waker>,
}

/// Where the socket is in its close; set once (the first request wins).
#[derive(Clone, Copy)]
enum Close {
    Open,
    /// Asked to close with this code; the close frame goes out once the queue is written. With
    /// `echo`, it answers the client's close frame and carries its status (at most 2 bytes).
    Asked {
        code: CloseCode,
        echo: Option<([u8; 2], u8)>,
    },
    /// The close frame is queued (last); nothing more is accepted.
    Queued(CloseCode),
}

impl Writer {
    /// A writer for a socket that joins at the node's resync `epoch`.
    pub fn new(resync_epoch: u32) -> Writer {
        Writer {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                front_started: false,
                close: Close::Open,
                resync_epoch,
                wake_owed: false,
                notified: false,
                waker: None,
            }),
        }
    }

    /// Queues a frame, or marks the socket as a slow consumer when a limit would be passed. The
    /// queued frames are dropped at once so that a stuck client holds no memory.
    pub fn push(&self, frame: Bytes, limits: QueueLimits) -> Enqueue {
        let mut q = self.queue.lock();
        let result = q.push(frame, limits);
        notify(q);
        result
    }

    /// Queues a delivery. When the node may have missed deliveries since this socket last heard
    /// of it (the node's resync `epoch` is newer than the socket's), `resync` goes first, in the
    /// same critical section: the client then sees `resync` before any message delivered after
    /// the gap, so its catch-up starts from what it held before the gap and fetches the missed
    /// messages even though newer ones arrive meanwhile (docs/PROTOCOL.md).
    pub fn push_delivery(
        &self,
        frame: Bytes,
        limits: QueueLimits,
        epoch: u32,
        resync: &Bytes,
    ) -> Enqueue {
        let (result, _) = self.push_delivery_deferred(frame, limits, epoch, resync);
        self.wake();
        result
    }

    /// [`Writer::push_delivery`] without waking the socket task, so that a batch of deliveries
    /// wakes each socket once and its frames leave in one vectored write. Returns, beside the
    /// outcome, whether the caller now owes this writer a [`Writer::wake`]: true for the first
    /// deferred push since the last wake, false after it (someone already owes it) and when the
    /// push did not queue (a slow consumer's close is woken at once, never deferred).
    pub fn push_delivery_deferred(
        &self,
        frame: Bytes,
        limits: QueueLimits,
        epoch: u32,
        resync: &Bytes,
    ) -> (Enqueue, bool) {
        let mut q = self.queue.lock();
        let result = q.push_delivery(frame, limits, epoch, resync);
        if result != Enqueue::Queued {
            notify(q);
            return (result, false);
        }
        let owed = !std::mem::replace(&mut q.wake_owed, true);
        (result, owed)
    }

    /// Wakes the socket task for frames queued by [`Writer::push_delivery_deferred`].
    pub fn wake(&self) {
        let mut q = self.queue.lock();
        q.wake_owed = false;
        notify(q);
    }

    /// Queues `resync` unless this socket already got one for `epoch` (from a delivery).
    /// Returns `None` when nothing was owed.
    pub fn push_resync(&self, epoch: u32, resync: Bytes, limits: QueueLimits) -> Option<Enqueue> {
        let mut q = self.queue.lock();
        if q.resync_epoch >= epoch {
            return None;
        }
        q.resync_epoch = epoch;
        let result = q.push(resync, limits);
        notify(q);
        Some(result)
    }

    /// Asks the socket to close with `code` (first request wins). What is queued is written
    /// first, then the close frame.
    pub fn close(&self, code: CloseCode) {
        let mut q = self.queue.lock();
        if matches!(q.close, Close::Open) {
            q.close = Close::Asked { code, echo: None };
        }
        notify(q);
    }

    /// The client sent a close frame with `payload`: the answer echoes its status. A partly
    /// written frame is finished first (or the answer would land inside it); frames not begun are
    /// dropped, since the client sends nothing more and wants the connection gone. A close this
    /// socket already asked for stands, its close frame being the answer.
    pub fn close_reply(&self, payload: &[u8]) {
        let mut q = self.queue.lock();
        if matches!(q.close, Close::Open) {
            q.drop_unstarted();
            let mut status = [0u8; 2];
            let len = payload.len().min(2);
            status[..len].copy_from_slice(&payload[..len]);
            q.close = Close::Asked {
                code: CloseCode::Normal,
                echo: Some((status, len as u8)),
            };
        }
        notify(q);
    }

    /// The close code, once the socket was asked to close.
    pub fn closing(&self) -> Option<CloseCode> {
        match self.queue.lock().close {
            Close::Open => None,
            Close::Asked { code, .. } | Close::Queued(code) => Some(code),
        }
    }

    /// Ready once a push or close request came since the last time it was ready (one wake-up is
    /// kept if nobody waits); otherwise keeps `cx`'s waker for the next one. One task waits.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut q = self.queue.lock();
        if std::mem::take(&mut q.notified) {
            return Poll::Ready(());
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// [`Writer::poll_notified`] as a future.
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_notified(cx))
    }

    /// Frames and bytes queued and not yet written.
    pub fn queued(&self) -> (usize, usize) {
        let q = self.queue.lock();
        (q.frames.len(), q.bytes)
    }

    /// Drops the frames not yet begun, as if they were written; benchmarks stand in for the
    /// socket task with it.
    pub fn drop_queued(&self) {
        self.queue.lock().drop_unstarted();
    }

    /// Writes as much of the queue as the socket takes without blocking; once the queue is empty
    /// on a socket asked to close, the close frame goes out last.
    pub fn flush(&self, stream: &TcpStream) -> io::Result<Flush> {
        let mut q = self.queue.lock();
        loop {
            if q.frames.is_empty() {
                match q.close {
                    Close::Open => return Ok(Flush::Done),
                    Close::Queued(code) => return Ok(Flush::Closed(code)),
                    Close::Asked { code, echo } => {
                        let frame = match echo {
                            Some((status, len)) => {
                                wsio::frame_bytes(OpCode::Close, &status[..len as usize])
                            }
                            None => wsio::close_frame(code),
                        };
                        q.bytes += frame.len();
                        q.frames.push_back(frame);
                        q.close = Close::Queued(code);
                    }
                }
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); WRITEV_MAX];
                let n = q.frames.len().min(WRITEV_MAX);
                for (slot, frame) in slices.iter_mut().zip(q.frames.iter()) {
                    *slot = IoSlice::new(frame);
                }
                match stream.try_write_vectored(&slices[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                    Err(e) => return Err(e),
                }
            };
            q.advance(written);
        }
    }

    #[cfg(test)]
    fn frames(&self) -> Vec<Bytes> {
        self.queue.lock().frames.iter().cloned().collect()
    }
}

/// Records a wake-up, lets the queue's lock go and then wakes the waiting socket task (waking
/// it under the lock would have it contend for the lock straight away).
fn notify(mut q: MutexGuard<'_, Queue>) {
    let waker = q.notify();
    drop(q);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Queue {
    /// Records a wake-up and takes the waiting task's waker, to be woken once the lock is let go.
    fn notify(&mut self) -> Option<Waker> {
        self.notified = true;
        self.waker.take()
    }

    /// Queues a delivery behind the `resync` it owes (see [`Writer::push_delivery`]).
    fn push_delivery(
        &mut self,
        frame: Bytes,
        limits: QueueLimits,
        epoch: u32,
        resync: &Bytes,
    ) -> Enqueue {
        let mut result = Enqueue::Queued;
        if self.resync_epoch < epoch && matches!(self.close, Close::Open) {
            self.resync_epoch = epoch;
            result = self.push(resync.clone(), limits);
        }
        if result == Enqueue::Queued {
            result = self.push(frame, limits);
        }
        result
    }

    /// Appends `frame`, or turns the queue into a slow consumer's close when a limit would be
    /// passed (dropping what it held, so that a stuck client holds no memory).
    fn push(&mut self, frame: Bytes, limits: QueueLimits) -> Enqueue {
        if !matches!(self.close, Close::Open) {
            return Enqueue::Closed;
        }
        if self.frames.len() >= limits.frames || self.bytes + frame.len() > limits.bytes {
            self.close = Close::Asked {
                code: CloseCode::SlowConsumer,
                echo: None,
            };
            self.drop_unstarted();
            return Enqueue::Overflow;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Enqueue::Queued
    }

    /// Drops every frame not begun; a partly written one stays, or whatever follows (the close
    /// frame above all) would land inside it.
    fn drop_unstarted(&mut self) {
        let keep = if self.front_started {
            self.frames.pop_front()
        } else {
            None
        };
        self.frames = VecDeque::new();
        self.bytes = keep.as_ref().map_or(0, Bytes::len);
        self.frames.extend(keep);
    }

    /// Takes `written` bytes off the front of the queue.
    fn advance(&mut self, written: usize) {
        self.bytes -= written;
        let mut left = written;
        let mut frames_done = 0u64;
        while left > 0 {
            let front = self
                .frames
                .front_mut()
                .expect("written bytes come from queued frames");
            if front.len() <= left {
                left -= front.len();
                self.frames.pop_front();
                self.front_started = false;
                frames_done += 1;
            } else {
                front.advance(left);
                self.front_started = true;
                left = 0;
            }
        }
        metrics::counter!(crate::telemetry::FRAMES_OUT_TOTAL).increment(frames_done);
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            // An idle socket holds no queue allocation (one `hello` would otherwise leave every
            // socket with one for its whole life); allocating it again per burst is cheap beside
            // the write itself.
            self.frames = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        frames: 3,
        bytes: 10,
    };

    #[test]
    fn queue_overflow_closes_and_frees() {
        let w = Writer::new(0);
        assert_eq!(w.push(Bytes::from_static(b"abcd"), LIMITS), Enqueue::Queued);
        assert_eq!(w.push(Bytes::from_static(b"abcd"), LIMITS), Enqueue::Queued);
        // 12 bytes > 10.
        assert_eq!(
            w.push(Bytes::from_static(b"abcd"), LIMITS),
            Enqueue::Overflow
        );
        assert_eq!(w.queued(), (0, 0));
        assert_eq!(w.closing(), Some(CloseCode::SlowConsumer));
        assert_eq!(w.push(Bytes::from_static(b"a"), LIMITS), Enqueue::Closed);
    }

    #[test]
    fn frame_count_limit() {
        let w = Writer::new(0);
        for _ in 0..3 {
            assert_eq!(w.push(Bytes::from_static(b"a"), LIMITS), Enqueue::Queued);
        }
        assert_eq!(w.push(Bytes::from_static(b"a"), LIMITS), Enqueue::Overflow);
    }

    #[test]
    fn resync_goes_before_the_first_delivery_after_a_gap_and_only_once() {
        let limits = QueueLimits {
            frames: 10,
            bytes: 100,
        };
        let resync = Bytes::from_static(b"R");
        let w = Writer::new(3);
        // Epoch 3 is the one it joined at: nothing owed.
        w.push_delivery(Bytes::from_static(b"m1"), limits, 3, &resync);
        assert_eq!(w.push_resync(3, resync.clone(), limits), None);
        // A gap (epoch 4): the resync precedes the next delivery, once.
        w.push_delivery(Bytes::from_static(b"m2"), limits, 4, &resync);
        w.push_delivery(Bytes::from_static(b"m3"), limits, 4, &resync);
        assert_eq!(w.push_resync(4, resync.clone(), limits), None);
        // A gap with no delivery: the broadcast sends it.
        assert_eq!(
            w.push_resync(5, resync.clone(), limits),
            Some(Enqueue::Queued)
        );
        w.push_delivery(Bytes::from_static(b"m4"), limits, 5, &resync);
        let frames: Vec<Bytes> = w.frames();
        let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(frames, [&b"m1"[..], b"R", b"m2", b"m3", b"R", b"m4"]);
        assert_eq!(w.queued(), (6, 10));
    }

    #[test]
    fn deferred_deliveries_wake_once_and_an_overflow_at_once() {
        use futures_util::FutureExt;
        let limits = QueueLimits {
            frames: 3,
            bytes: 100,
        };
        let resync = Bytes::from_static(b"R");
        let w = Writer::new(0);
        let m = Bytes::from_static(b"m");
        assert_eq!(
            w.push_delivery_deferred(m.clone(), limits, 0, &resync),
            (Enqueue::Queued, true),
            "the first deferred push owes a wake-up"
        );
        assert_eq!(
            w.push_delivery_deferred(m.clone(), limits, 0, &resync),
            (Enqueue::Queued, false),
            "one wake-up for the whole batch"
        );
        assert!(w.notified().now_or_never().is_none(), "not woken yet");
        w.wake();
        assert!(w.notified().now_or_never().is_some(), "woken once");
        assert_eq!(
            w.push_delivery_deferred(m.clone(), limits, 0, &resync),
            (Enqueue::Queued, true),
            "owed again after the wake-up"
        );
        // Past the limit: the slow consumer's close wakes the task at once, owing nothing.
        assert_eq!(
            w.push_delivery_deferred(m, limits, 0, &resync),
            (Enqueue::Overflow, false)
        );
        assert!(w.notified().now_or_never().is_some());
        assert_eq!(w.closing(), Some(CloseCode::SlowConsumer));
    }

    #[tokio::test]
    async fn an_idle_writer_gives_its_queue_back() {
        let (stream, mut reader) = small_buffered_pair().await;
        let w = Writer::new(0);
        w.push(Bytes::from_static(b"\x81\x01a"), BIG);
        assert_eq!(w.flush(&stream).unwrap(), Flush::Done);
        assert_eq!(
            w.queue.lock().frames.capacity(),
            0,
            "no allocation while idle"
        );
        assert_eq!(read_frames(&mut reader, 1), [(0x1, b"a".to_vec())]);
    }

    /// A real loopback connection whose sending side buffers little, so that a large frame is
    /// only partly written until the other side reads; the reading end is blocking.
    async fn small_buffered_pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(8 << 10).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (reader, _) = listener.accept().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (stream, reader)
    }

    /// Flushes until the close frame is out (the reader must be reading meanwhile).
    async fn flush_to_close(w: &Writer, stream: &TcpStream) -> CloseCode {
        loop {
            match w.flush(stream).unwrap() {
                Flush::Closed(code) => return code,
                Flush::Blocked => stream.writable().await.unwrap(),
                Flush::Done => panic!("a closing writer is never done"),
            }
        }
    }

    /// Reads `n` frames (server frames: unmasked, lengths up to 64 bits) as (opcode, payload).
    fn read_frames(reader: &mut std::net::TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut head = [0u8; 2];
            reader.read_exact(&mut head).unwrap();
            assert_eq!(head[0] & 0x80, 0x80, "FIN");
            let len = match head[1] {
                126 => {
                    let mut l = [0u8; 2];
                    reader.read_exact(&mut l).unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    reader.read_exact(&mut l).unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            reader.read_exact(&mut payload).unwrap();
            out.push((head[0] & 0x0f, payload));
        }
        out
    }

    const BIG: QueueLimits = QueueLimits {
        frames: 16,
        bytes: 64 << 20,
    };

    /// Starts a frame far larger than the socket buffers, so that it is left partly written.
    fn start_big_frame(w: &Writer, stream: &TcpStream) -> Vec<u8> {
        let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| i as u8).collect();
        w.push(wsio::frame_bytes(OpCode::Binary, &payload), BIG);
        w.push(wsio::frame_bytes(OpCode::Binary, b"after"), BIG);
        assert_eq!(w.flush(stream).unwrap(), Flush::Blocked);
        payload
    }

    #[tokio::test]
    async fn a_client_close_during_a_partly_written_frame_is_answered_after_it() {
        let (stream, mut reader) = small_buffered_pair().await;
        let w = Writer::new(0);
        let payload = start_big_frame(&w, &stream);
        w.close_reply(&[0x03, 0xe8, b'x']);
        assert_eq!(w.closing(), Some(CloseCode::Normal));
        assert_eq!(w.push(Bytes::from_static(b"late"), BIG), Enqueue::Closed);
        let read = std::thread::spawn(move || read_frames(&mut reader, 2));
        assert_eq!(flush_to_close(&w, &stream).await, CloseCode::Normal);
        let frames = read.join().unwrap();
        assert_eq!(frames[0], (0x2, payload), "the started frame, whole");
        // The frame not begun is dropped; the answer echoes the client's status.
        assert_eq!(frames[1], (0x8, vec![0x03, 0xe8]));
        assert_eq!(w.queued(), (0, 0));
    }

    #[tokio::test]
    async fn a_close_asked_during_a_partly_written_frame_comes_after_the_queue() {
        let (stream, mut reader) = small_buffered_pair().await;
        let w = Writer::new(0);
        let payload = start_big_frame(&w, &stream);
        w.close(CloseCode::Draining);
        // The first request wins, a client's close included.
        w.close_reply(&[0x03, 0xe8]);
        w.close(CloseCode::SlowConsumer);
        let read = std::thread::spawn(move || read_frames(&mut reader, 3));
        assert_eq!(flush_to_close(&w, &stream).await, CloseCode::Draining);
        let frames = read.join().unwrap();
        assert_eq!(frames[0], (0x2, payload));
        assert_eq!(frames[1], (0x2, b"after".to_vec()));
        assert_eq!(frames[2].0, 0x8);
        assert_eq!(frames[2].1[..2], CloseCode::Draining.code().to_be_bytes());
    }

    #[tokio::test]
    async fn an_overflow_during_a_partly_written_frame_keeps_it() {
        let (stream, mut reader) = small_buffered_pair().await;
        let w = Writer::new(0);
        let payload = start_big_frame(&w, &stream);
        let tight = QueueLimits {
            frames: 2,
            bytes: 64 << 20,
        };
        assert_eq!(w.push(Bytes::from_static(b"x"), tight), Enqueue::Overflow);
        assert_eq!(w.queued().0, 1, "only the started frame is kept");
        let read = std::thread::spawn(move || read_frames(&mut reader, 2));
        assert_eq!(flush_to_close(&w, &stream).await, CloseCode::SlowConsumer);
        let frames = read.join().unwrap();
        assert_eq!(frames[0], (0x2, payload));
        assert_eq!(
            frames[1].1[..2],
            CloseCode::SlowConsumer.code().to_be_bytes()
        );
    }
}

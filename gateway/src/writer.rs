//! A socket's send queue and the writes from it: bounded in frames and bytes, a partly written
//! frame always finished before anything else, vectored writes straight from the queued `Bytes`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

use shared::close::CloseCode;

use crate::hub::SocketHandle;

/// Frames written per vectored write.
const WRITEV_MAX: usize = 64;

#[derive(Default)]
pub struct SendQueue {
    pub frames: VecDeque<Bytes>,
    /// Bytes queued, counting only what is not yet written.
    pub bytes: usize,
    /// Set once: the socket task writes this close frame and exits.
    pub close: Option<CloseCode>,
    /// The front frame is partly written and must be finished before anything else is sent.
    pub front_started: bool,
    /// The node's resync epoch this socket last got a `resync` for (or joined at). See
    /// [`SocketHandle::enqueue_delivery`].
    pub resync_epoch: u32,
}

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

/// Appends `frame` to `q`, or turns `q` into a slow consumer's close when a limit would be passed
/// (dropping what it held, so that a stuck client holds no memory).
pub(crate) fn push(q: &mut SendQueue, frame: Bytes, limits: QueueLimits) -> Enqueue {
    if q.close.is_some() {
        return Enqueue::Closed;
    }
    if q.frames.len() >= limits.frames || q.bytes + frame.len() > limits.bytes {
        q.close = Some(CloseCode::SlowConsumer);
        // Keep a partly written frame, or the close frame would land inside it.
        let keep = if q.front_started {
            q.frames.pop_front()
        } else {
            None
        };
        q.frames = VecDeque::new();
        q.bytes = keep.as_ref().map_or(0, Bytes::len);
        q.frames.extend(keep);
        return Enqueue::Overflow;
    }
    q.bytes += frame.len();
    q.frames.push_back(frame);
    Enqueue::Queued
}

/// Writes as much of the queue as the socket takes without blocking.
pub(crate) fn flush(stream: &TcpStream, handle: &SocketHandle) -> io::Result<Flush> {
    let mut q = handle.lock_queue();
    loop {
        if q.frames.is_empty() {
            return Ok(match q.close {
                Some(code) => Flush::Close(code),
                None => Flush::Done,
            });
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
        q.bytes -= written;
        let mut left = written;
        let mut frames_done = 0u64;
        while left > 0 {
            let front = q
                .frames
                .front_mut()
                .expect("written bytes come from queued frames");
            if front.len() <= left {
                left -= front.len();
                q.frames.pop_front();
                q.front_started = false;
                frames_done += 1;
            } else {
                front.advance(left);
                q.front_started = true;
                left = 0;
            }
        }
        metrics::counter!("gateway_frames_out_total").increment(frames_done);
        if q.frames.is_empty() && q.frames.capacity() > 16 {
            // A burst grew the queue; give the memory back while idle.
            q.frames = Default::default();
        }
    }
}

pub(crate) enum Flush {
    Done,
    Blocked,
    Close(CloseCode),
}


//! The local registry: user → sockets on this node, and each socket's bounded send queue. Sharded
//! by dashmap so that connects, disconnects and deliveries on different users do not contend.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use shared::close::CloseCode;
use shared::protocol::Encoding;

/// The part of a socket that other tasks touch: its queue and a wake-up. Kept small: an idle
/// socket's queue holds no allocation.
pub struct SocketHandle {
    pub id: u64,
    pub user: Arc<str>,
    pub encoding: Encoding,
    queue: Mutex<SendQueue>,
    pub notify: Notify,
    /// Users whose `presence` frames this socket receives: the first `PRESENCE_WATCH_MAX`
    /// distinct ones. An empty set holds no allocation.
    watched: Mutex<HashSet<Box<str>>>,
}

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

impl SocketHandle {
    /// A socket that joins at the node's current resync `epoch`: it catches up on connect, so it
    /// owes no resync for gaps before it.
    pub fn new(id: u64, user: Arc<str>, encoding: Encoding, resync_epoch: u32) -> Self {
        SocketHandle {
            id,
            user,
            encoding,
            queue: Mutex::new(SendQueue {
                resync_epoch,
                ..SendQueue::default()
            }),
            notify: Notify::new(),
            watched: Mutex::new(HashSet::new()),
        }
    }

    /// Whether this socket receives `user`'s presence: true for a user it already watches or
    /// while it watches fewer than `cap`; frames about further users are not sent to it (its
    /// client reads them with `GET /v1/presence` if it needs them).
    pub fn watch(&self, user: &str, cap: usize) -> bool {
        let mut set = self.watched.lock();
        if set.contains(user) {
            return true;
        }
        if set.len() >= cap {
            return false;
        }
        set.insert(user.into());
        true
    }

    /// Queues a frame, or marks the socket as a slow consumer when a limit would be passed. The
    /// queued frames are dropped at once so that a stuck client holds no memory.
    pub fn enqueue(&self, frame: Bytes, limits: QueueLimits) -> Enqueue {
        let mut q = self.queue.lock();
        let result = push(&mut q, frame, limits);
        drop(q);
        self.notify.notify_one();
        result
    }

    /// Queues a delivery. When the node may have missed deliveries since this socket last heard
    /// of it (the node's resync `epoch` is newer than the socket's), `resync` goes first, in the
    /// same critical section: the client then sees `resync` before any message delivered after
    /// the gap, so its catch-up starts from what it held before the gap and fetches the missed
    /// messages even though newer ones arrive meanwhile (docs/PROTOCOL.md).
    pub fn enqueue_delivery(
        &self,
        frame: Bytes,
        limits: QueueLimits,
        epoch: u32,
        resync: &Bytes,
    ) -> Enqueue {
        let mut q = self.queue.lock();
        let mut result = Enqueue::Queued;
        if q.resync_epoch < epoch && q.close.is_none() {
            q.resync_epoch = epoch;
            result = push(&mut q, resync.clone(), limits);
        }
        if result == Enqueue::Queued {
            result = push(&mut q, frame, limits);
        }
        drop(q);
        self.notify.notify_one();
        result
    }

    /// Queues `resync` unless this socket already got one for `epoch` (from a delivery).
    /// Returns `None` when nothing was owed.
    pub fn enqueue_resync(
        &self,
        epoch: u32,
        resync: Bytes,
        limits: QueueLimits,
    ) -> Option<Enqueue> {
        let mut q = self.queue.lock();
        if q.resync_epoch >= epoch {
            return None;
        }
        q.resync_epoch = epoch;
        let result = push(&mut q, resync, limits);
        drop(q);
        self.notify.notify_one();
        Some(result)
    }

    /// Asks the socket to close with `code` (first request wins).
    pub fn close(&self, code: CloseCode) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.close = Some(code);
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The close code, once the socket was asked to close.
    pub fn closing(&self) -> Option<CloseCode> {
        self.queue.lock().close
    }

    pub fn lock_queue(&self) -> parking_lot::MutexGuard<'_, SendQueue> {
        self.queue.lock()
    }
}

/// Appends `frame` to `q`, or turns `q` into a slow consumer's close when a limit would be passed
/// (dropping what it held, so that a stuck client holds no memory).
fn push(q: &mut SendQueue, frame: Bytes, limits: QueueLimits) -> Enqueue {
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

/// Why a socket could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    TooManySockets,
}

/// All sockets of this node, by user.
#[derive(Default)]
pub struct Hub {
    users: DashMap<Arc<str>, Vec<Arc<SocketHandle>>>,
    sockets: AtomicUsize,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next_socket_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Adds a socket; returns true if it is the user's first on this node.
    pub fn add(&self, handle: Arc<SocketHandle>, max_per_user: usize) -> Result<bool, AddError> {
        let mut entry = self.users.entry(handle.user.clone()).or_default();
        if entry.len() >= max_per_user {
            return Err(AddError::TooManySockets);
        }
        entry.push(handle);
        self.sockets.fetch_add(1, Ordering::Relaxed);
        Ok(entry.len() == 1)
    }

    /// Removes a socket; returns true if it was the user's last on this node.
    pub fn remove(&self, handle: &SocketHandle) -> bool {
        let mut removed = false;
        let now_empty = self
            .users
            .remove_if_mut(&handle.user, |_, list| {
                if let Some(pos) = list.iter().position(|h| h.id == handle.id) {
                    list.swap_remove(pos);
                    removed = true;
                }
                list.is_empty()
            })
            .is_some();
        if removed {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
        }
        now_empty
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Calls `f` for each socket of `user` on this node.
    pub fn for_each_socket(&self, user: &str, mut f: impl FnMut(&Arc<SocketHandle>)) {
        if let Some(list) = self.users.get(user) {
            list.iter().for_each(&mut f);
        }
    }

    /// Every user with a socket here (for re-registering routes).
    pub fn users(&self) -> Vec<String> {
        self.users.iter().map(|e| e.key().to_string()).collect()
    }

    /// Every socket (for drain).
    pub fn all_sockets(&self) -> Vec<Arc<SocketHandle>> {
        self.users.iter().flat_map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        frames: 3,
        bytes: 10,
    };

    #[test]
    fn queue_overflow_closes_and_frees() {
        let h = SocketHandle::new(1, "u".into(), Encoding::Json, 0);
        assert_eq!(
            h.enqueue(Bytes::from_static(b"abcd"), LIMITS),
            Enqueue::Queued
        );
        assert_eq!(
            h.enqueue(Bytes::from_static(b"abcd"), LIMITS),
            Enqueue::Queued
        );
        // 12 bytes > 10.
        assert_eq!(
            h.enqueue(Bytes::from_static(b"abcd"), LIMITS),
            Enqueue::Overflow
        );
        let q = h.lock_queue();
        assert_eq!(
            (q.frames.len(), q.bytes, q.close),
            (0, 0, Some(CloseCode::SlowConsumer))
        );
        drop(q);
        assert_eq!(h.enqueue(Bytes::from_static(b"a"), LIMITS), Enqueue::Closed);
    }

    #[test]
    fn frame_count_limit() {
        let h = SocketHandle::new(1, "u".into(), Encoding::Json, 0);
        for _ in 0..3 {
            assert_eq!(h.enqueue(Bytes::from_static(b"a"), LIMITS), Enqueue::Queued);
        }
        assert_eq!(
            h.enqueue(Bytes::from_static(b"a"), LIMITS),
            Enqueue::Overflow
        );
    }

    #[test]
    fn resync_goes_before_the_first_delivery_after_a_gap_and_only_once() {
        let limits = QueueLimits {
            frames: 10,
            bytes: 100,
        };
        let resync = Bytes::from_static(b"R");
        let h = SocketHandle::new(1, "u".into(), Encoding::Json, 3);
        // Epoch 3 is the one it joined at: nothing owed.
        h.enqueue_delivery(Bytes::from_static(b"m1"), limits, 3, &resync);
        assert_eq!(h.enqueue_resync(3, resync.clone(), limits), None);
        // A gap (epoch 4): the resync precedes the next delivery, once.
        h.enqueue_delivery(Bytes::from_static(b"m2"), limits, 4, &resync);
        h.enqueue_delivery(Bytes::from_static(b"m3"), limits, 4, &resync);
        assert_eq!(h.enqueue_resync(4, resync.clone(), limits), None);
        // A gap with no delivery: the broadcast sends it.
        assert_eq!(
            h.enqueue_resync(5, resync.clone(), limits),
            Some(Enqueue::Queued)
        );
        h.enqueue_delivery(Bytes::from_static(b"m4"), limits, 5, &resync);
        let q = h.lock_queue();
        let frames: Vec<&[u8]> = q.frames.iter().map(|f| &f[..]).collect();
        assert_eq!(frames, [&b"m1"[..], b"R", b"m2", b"m3", b"R", b"m4"]);
        assert_eq!(q.bytes, 10);
    }

    #[test]
    fn a_socket_watches_a_bounded_number_of_users() {
        let h = SocketHandle::new(1, "u".into(), Encoding::Json, 0);
        assert!(h.watch("a", 2));
        assert!(h.watch("b", 2));
        assert!(!h.watch("c", 2), "past the cap");
        assert!(h.watch("a", 2), "a watched user stays watched");
    }

    #[test]
    fn first_and_last_socket_of_a_user() {
        let hub = Hub::new();
        let a = Arc::new(SocketHandle::new(1, "u".into(), Encoding::Json, 0));
        let b = Arc::new(SocketHandle::new(2, "u".into(), Encoding::Msgpack, 0));
        assert_eq!(hub.add(a.clone(), 2), Ok(true));
        assert_eq!(hub.add(b.clone(), 2), Ok(false));
        let c = Arc::new(SocketHandle::new(3, "u".into(), Encoding::Json, 0));
        assert_eq!(hub.add(c, 2), Err(AddError::TooManySockets));
        assert_eq!(hub.socket_count(), 2);
        assert!(!hub.remove(&a));
        assert!(hub.has_user("u"));
        assert!(hub.remove(&b));
        assert!(!hub.has_user("u"));
        assert_eq!(hub.socket_count(), 0);
    }
}

//! The local registry: user → sockets on this node, each with its writer (`writer.rs`). Sharded
//! by dashmap so that connects, disconnects and deliveries on different users do not contend.

use std::collections::HashSet;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::time::Instant;

use shared::close::CloseCode;
use shared::protocol::Encoding;

use crate::deflate::Negotiated;
use crate::writer::Writer;
pub use crate::writer::{Enqueue, QueueLimits};

/// The part of a socket that other tasks touch: who it is and its writer.
pub struct SocketHandle {
    pub id: u64,
    pub user: Arc<str>,
    pub encoding: Encoding,
    pub writer: Writer,
    /// permessage-deflate, when the upgrade negotiated it (two bytes, no deflate state).
    pub deflate: Option<Negotiated>,
    /// Users whose `presence` frames this socket receives: the first `PRESENCE_WATCH_MAX`
    /// distinct ones. Boxed and made on first use: a socket that watches nobody holds one word
    /// (an empty `HashSet` is six, its hasher's keys included).
    #[allow(clippy::box_collection)]
    watched: Mutex<Option<Box<HashSet<Box<str>>>>>,
    /// When the client last sent anything, in ms of [`Hub::now_ms`]; [`NOT_LIVE`] until the
    /// socket's `hello` is queued. Read by the node's sweep (`crate::sweep`).
    last_rx_ms: AtomicU64,
    /// Token expiry, Unix seconds (a `refresh` moves it).
    expires_at: AtomicU64,
    /// The sweep's tick the socket went live in: it is pinged every heartbeat after it.
    live_tick: AtomicU64,
}

/// `last_rx_ms` of a socket the sweep leaves alone (its `hello` is not queued yet).
const NOT_LIVE: u64 = u64::MAX;

impl SocketHandle {
    /// A socket that joins at the node's current resync `epoch`: it catches up on connect, so it
    /// owes no resync for gaps before it.
    pub fn new(id: u64, user: Arc<str>, encoding: Encoding, resync_epoch: u32) -> Self {
        SocketHandle {
            id,
            user,
            encoding,
            writer: Writer::new(resync_epoch),
            deflate: None,
            watched: Mutex::new(None),
            last_rx_ms: AtomicU64::new(NOT_LIVE),
            expires_at: AtomicU64::new(u64::MAX),
            live_tick: AtomicU64::new(0),
        }
    }

    /// Hands the socket to the sweep: from now on it is pinged every heartbeat after `live_tick`,
    /// closed when silent for the idle timeout since `now_ms` and closed at `expires_at`.
    pub fn go_live(&self, now_ms: u64, live_tick: u64, expires_at: u64) {
        self.live_tick.store(live_tick, Ordering::Relaxed);
        self.expires_at.store(expires_at, Ordering::Relaxed);
        self.last_rx_ms.store(now_ms, Ordering::Release);
    }

    /// The client sent something at `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the client last sent anything; `None` before the socket went live.
    pub fn last_rx_ms(&self) -> Option<u64> {
        Some(self.last_rx_ms.load(Ordering::Acquire)).filter(|&t| t != NOT_LIVE)
    }

    /// A `refresh` moved the token's expiry.
    pub fn set_expires_at(&self, expires_at: u64) {
        self.expires_at.store(expires_at, Ordering::Relaxed);
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    pub fn live_tick(&self) -> u64 {
        self.live_tick.load(Ordering::Relaxed)
    }

    /// The same socket with permessage-deflate as negotiated in its upgrade.
    pub fn with_deflate(mut self, deflate: Option<Negotiated>) -> Self {
        self.deflate = deflate;
        self
    }

    /// Whether this socket receives `user`'s presence: true for a user it already watches or
    /// while it watches fewer than `cap`; frames about further users are not sent to it (its
    /// client reads them with `GET /v1/presence` if it needs them).
    pub fn watch(&self, user: &str, cap: usize) -> bool {
        let mut watched = self.watched.lock();
        let known = watched.as_ref().map_or(0, |set| set.len());
        if watched.as_ref().is_some_and(|set| set.contains(user)) {
            return true;
        }
        if known >= cap {
            return false;
        }
        watched
            .get_or_insert_with(Default::default)
            .insert(user.into());
        true
    }

    /// Queues a frame ([`Writer::push`]).
    pub fn enqueue(&self, frame: Bytes, limits: QueueLimits) -> Enqueue {
        self.writer.push(frame, limits)
    }

    /// Queues `resync` unless one was sent for `epoch` ([`Writer::push_resync`]).
    pub fn enqueue_resync(
        &self,
        epoch: u32,
        resync: Bytes,
        limits: QueueLimits,
    ) -> Option<Enqueue> {
        self.writer.push_resync(epoch, resync, limits)
    }

    /// Asks the socket to close with `code` (first request wins).
    pub fn close(&self, code: CloseCode) {
        self.writer.close(code)
    }

    /// The close code, once the socket was asked to close.
    pub fn closing(&self) -> Option<CloseCode> {
        self.writer.closing()
    }
}

/// Why a socket could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    TooManySockets,
}

/// A user's sockets on this node: one, nearly always, kept inline (no allocation of its own).
type UserSockets = SmallVec<[Arc<SocketHandle>; 1]>;

/// All sockets of this node, by user.
pub struct Hub {
    users: DashMap<Arc<str>, UserSockets>,
    sockets: AtomicUsize,
    next_id: AtomicU64,
    /// The origin of the sockets' activity times ([`Hub::now_ms`]).
    started: Instant,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            users: DashMap::default(),
            sockets: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Milliseconds since the hub was made, on tokio's clock: the sockets' activity times.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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

    /// Calls `f` for every socket, one shard of the registry at a time (connects and disconnects
    /// on that shard wait meanwhile).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<SocketHandle>)) {
        for entry in self.users.iter() {
            entry.value().iter().for_each(&mut f);
        }
    }

    /// Every socket (for drain).
    pub fn all_sockets(&self) -> Vec<Arc<SocketHandle>> {
        self.users.iter().flat_map(|e| e.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The local registry: user → sockets on this node, each with its writer (`writer.rs`). Sharded
//! by dashmap so that connects, disconnects and deliveries on different users do not contend.

use std::collections::HashSet;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

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
    /// distinct ones. An empty set holds no allocation.
    watched: Mutex<HashSet<Box<str>>>,
}

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
            watched: Mutex::new(HashSet::new()),
        }
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

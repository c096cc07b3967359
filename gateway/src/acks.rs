//! Delivered receipts. A socket's `ack` frame says the client holds a chat up to a message id.
//! The gateway knows no chat members, so acks go to chat-api (`POST /v1/chats/{chat_id}/delivered`
//! with the socket's own token), which checks membership, stores the delivered marker and sends
//! the other members a `delivered` frame — but batched, not one request per frame: acks are
//! coalesced per (user, chat) into one table for the whole node, keeping the highest id, and the
//! table is flushed every [`ACK_FLUSH_INTERVAL`], one request per (user, chat) that acked since.
//!
//! Bounded: the table holds at most [`ACKS_PENDING_MAX`] (user, chat) pairs (an ack for a new pair
//! while it is full is answered with `error` `unavailable`: the client may ack again later, and
//! its next ack covers this one); at most [`INFLIGHT_MAX`] requests run at once (a flush waits
//! for a free slot while new acks keep coalescing in the table). Acks are not retried: the next
//! ack of the chat carries a higher or equal id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use shared::protocol::ErrorCode;
use shared::Id;

use crate::forward::{self, ApiClient, Outcome};
use crate::hub::{QueueLimits, SocketHandle};
use crate::telemetry;

/// How often the node forwards the acks it coalesced: at most one request per (user, chat) per
/// interval, whatever the number of `ack` frames.
pub const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// (user, chat) pairs waiting for the next flush, per node.
pub const ACKS_PENDING_MAX: usize = 100_000;
/// Forwards in flight at once per node.
pub const INFLIGHT_MAX: usize = 256;

/// The newest ack of one (user, chat), and where an error answer goes.
struct PendingAck {
    message_id: Id,
    /// The token of the socket that sent the newest ack (a refreshed one replaces it).
    token: Arc<str>,
    socket: Weak<SocketHandle>,
    limits: QueueLimits,
}

/// Acks waiting for the next flush: the highest message id per (user, chat), bounded.
#[derive(Default)]
pub struct AckTable {
    entries: HashMap<(Arc<str>, Id), PendingAck>,
}

impl AckTable {
    /// Records an ack; `false` when the table is full and the pair is not in it yet (shed).
    fn record(&mut self, user: Arc<str>, chat: Id, ack: PendingAck, max: usize) -> bool {
        if let Some(entry) = self.entries.get_mut(&(user.clone(), chat)) {
            let highest = entry.message_id.max(ack.message_id);
            *entry = PendingAck {
                message_id: highest,
                ..ack
            };
            return true;
        }
        if self.entries.len() >= max {
            return false;
        }
        self.entries.insert((user, chat), ack);
        true
    }

    fn take(&mut self) -> HashMap<(Arc<str>, Id), PendingAck> {
        std::mem::take(&mut self.entries)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct Shared {
    api: ApiClient,
    table: Mutex<AckTable>,
    inflight: Arc<Semaphore>,
    pending_max: usize,
}

/// The node's ack forwarder; its flush task starts with the first ack and ends when it is
/// dropped.
pub struct AckForwarder {
    shared: Arc<Shared>,
    started: AtomicBool,
}

impl AckForwarder {
    pub fn new(base: &str) -> Option<AckForwarder> {
        Some(AckForwarder {
            shared: Arc::new(Shared {
                api: ApiClient::new(base, "acks")?,
                table: Mutex::new(AckTable::default()),
                inflight: Arc::new(Semaphore::new(INFLIGHT_MAX)),
                pending_max: ACKS_PENDING_MAX,
            }),
            started: AtomicBool::new(false),
        })
    }

    /// Coalesces one ack into the table; `false` when it was shed (the table is full).
    pub fn record(
        &self,
        socket: &Arc<SocketHandle>,
        limits: QueueLimits,
        token: Arc<str>,
        chat_id: Id,
        message_id: Id,
    ) -> bool {
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(flush_loop(Arc::downgrade(&self.shared)));
        }
        let ack = PendingAck {
            message_id,
            token,
            socket: Arc::downgrade(socket),
            limits,
        };
        let recorded = self.shared.table.lock().record(
            socket.user.clone(),
            chat_id,
            ack,
            self.shared.pending_max,
        );
        if !recorded {
            metrics::counter!(telemetry::ACKS_TOTAL, "result" => telemetry::ack_result::SHED)
                .increment(1);
        }
        recorded
    }

    /// (user, chat) pairs waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.shared.table.lock().len()
    }
}

/// Every [`ACK_FLUSH_INTERVAL`]: takes the table and forwards each entry, at most
/// [`INFLIGHT_MAX`] at once. Ends when the forwarder is dropped.
async fn flush_loop(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(ACK_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let batch = shared.table.lock().take();
        for ((_, chat_id), ack) in batch {
            let Ok(permit) = shared.inflight.clone().acquire_owned().await else {
                return;
            };
            let request = shared
                .api
                .post(&format!("/v1/chats/{chat_id}/delivered"), &ack.token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                // An id is digits only: nothing to escape.
                .body(format!(r#"{{"message_id":"{}"}}"#, ack.message_id));
            tokio::spawn(async move {
                let _permit = permit;
                forward(request, ack).await;
            });
        }
    }
}

async fn forward(request: reqwest::RequestBuilder, ack: PendingAck) {
    let (result, error) = match forward::send(request, 204, "ack").await {
        Outcome::Done => (telemetry::ack_result::FORWARDED, None),
        Outcome::Forbidden => (
            telemetry::ack_result::FORBIDDEN,
            Some((
                ErrorCode::Forbidden,
                "ack refused: you are not a member of this chat",
            )),
        ),
        Outcome::Unauthorized => (
            telemetry::ack_result::UNAUTHORIZED,
            Some((ErrorCode::InvalidToken, forward::TOKEN_REFUSED)),
        ),
        // Acks have no rate limit of their own in chat-api; a 429 is a failure like any other.
        Outcome::RateLimited | Outcome::Failed => (
            telemetry::ack_result::FAILED,
            Some((ErrorCode::Unavailable, "ack not recorded; ack again later")),
        ),
    };
    metrics::counter!(telemetry::ACKS_TOTAL, "result" => result).increment(1);
    if let (Some((code, message)), Some(socket)) = (error, ack.socket.upgrade()) {
        forward::reply(&socket, ack.limits, code, message);
    }
}

#[cfg(test)]
mod tests {
    use shared::protocol::Encoding;

    use super::*;

    fn ack(id: u64, token: &str, socket: &Arc<SocketHandle>) -> PendingAck {
        PendingAck {
            message_id: Id(id),
            token: Arc::from(token),
            socket: Arc::downgrade(socket),
            limits: QueueLimits {
                frames: 8,
                bytes: 1024,
            },
        }
    }

    #[test]
    fn keeps_the_highest_id_and_the_newest_token_per_user_and_chat() {
        let socket = Arc::new(SocketHandle::new(1, Arc::from("alice"), Encoding::Json, 0));
        let mut table = AckTable::default();
        let alice: Arc<str> = Arc::from("alice");
        assert!(table.record(alice.clone(), Id(1), ack(10, "t1", &socket), 4));
        assert!(table.record(alice.clone(), Id(1), ack(30, "t2", &socket), 4));
        assert!(table.record(alice.clone(), Id(1), ack(20, "t3", &socket), 4));
        assert!(table.record(alice.clone(), Id(2), ack(5, "t1", &socket), 4));
        assert!(table.record(Arc::from("bob"), Id(1), ack(7, "b", &socket), 4));
        assert_eq!(table.len(), 3, "one entry per (user, chat)");
        let taken = table.take();
        assert!(table.is_empty(), "a flush empties the table");
        let a1 = &taken[&(alice.clone(), Id(1))];
        assert_eq!(
            a1.message_id,
            Id(30),
            "a lower id never replaces a higher one"
        );
        assert_eq!(&*a1.token, "t3", "the newest token is used");
        assert_eq!(taken[&(alice, Id(2))].message_id, Id(5));
    }

    #[test]
    fn a_full_table_sheds_new_pairs_but_coalesces_known_ones() {
        let socket = Arc::new(SocketHandle::new(1, Arc::from("u"), Encoding::Json, 0));
        let mut table = AckTable::default();
        let u: Arc<str> = Arc::from("u");
        for chat in 0..3 {
            assert!(table.record(u.clone(), Id(chat), ack(1, "t", &socket), 3));
        }
        assert!(
            !table.record(u.clone(), Id(99), ack(1, "t", &socket), 3),
            "full"
        );
        assert!(
            table.record(u.clone(), Id(2), ack(9, "t", &socket), 3),
            "known pair"
        );
        assert_eq!(table.len(), 3);
        assert_eq!(table.take()[&(u, Id(2))].message_id, Id(9));
    }
}

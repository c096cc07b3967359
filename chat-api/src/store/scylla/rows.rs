//! Row types read from and values written to the ScyllaDB tables, and the message-bucket
//! arithmetic. CQL has no unsigned integers: ids (63 significant bits) travel as `bigint`.

use scylla::DeserializeRow;
use shared::protocol::Message;
use shared::Id;

/// The span of one `messages` partition (see schema/README.md for why 10 days).
pub const BUCKET_SPAN_MS: u64 = 10 * 24 * 60 * 60 * 1000;

/// How far a replica's clock may lag the one that created a chat: the chat's first bucket starts
/// this much earlier, so a message stamped by a slightly slow clock is still inside the walk.
pub const CLOCK_SKEW_MS: u64 = 60 * 1000;

/// The bucket of a message id: whole spans since the id epoch.
pub fn bucket_of(id: Id) -> i32 {
    bucket_of_ms(id.unix_ms())
}

/// The bucket holding messages stamped at `unix_ms`.
pub fn bucket_of_ms(unix_ms: u64) -> i32 {
    let spans = unix_ms.saturating_sub(shared::ids::EPOCH_MS) / BUCKET_SPAN_MS;
    // 2^31 spans of 10 days is ~58 million years: the conversion cannot fail for real clocks.
    i32::try_from(spans).unwrap_or(i32::MAX)
}

/// The write timestamp (µs) for `last_message_id = id`: the id's own millisecond, so the cell's
/// last-write-wins resolves to the largest id (ties on the same millisecond go to the larger value).
pub fn last_message_timestamp_us(id: Id) -> i64 {
    i64::try_from(id.unix_ms().saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// An id as a CQL `bigint`. Snowflake ids use 63 bits, so this never fails for real ids; an
/// out-of-range id is bad input, not a crash.
pub fn id_to_cql(id: Id) -> Result<i64, String> {
    i64::try_from(id.0).map_err(|_| format!("id {id} does not fit a CQL bigint"))
}

/// A CQL `bigint` read back as an id; a negative one is corrupt data.
pub fn id_from_cql(v: i64) -> Result<Id, String> {
    u64::try_from(v)
        .map(Id)
        .map_err(|_| format!("negative id {v} in the store"))
}

/// `SELECT … FROM chats`.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct ChatRow {
    pub chat_id: i64,
    pub title: Option<String>,
    pub created_by: Option<String>,
    pub created_at_ms: Option<i64>,
    pub first_bucket: Option<i32>,
    pub last_message_id: Option<i64>,
}

/// `SELECT … FROM messages`.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct MessageRow {
    pub chat_id: i64,
    pub message_id: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
}

impl MessageRow {
    pub fn into_message(self) -> Result<Message, String> {
        let message_id = id_from_cql(self.message_id)?;
        Ok(Message::new(
            id_from_cql(self.chat_id)?,
            message_id,
            self.sender_id,
            self.client_msg_id,
            self.body,
        ))
    }
}

/// `SELECT … FROM message_edits`: every column but the key may be unset.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct EditRow {
    pub message_id: i64,
    pub body: Option<String>,
    pub edited_at_ms: Option<i64>,
    pub deleted: Option<i32>,
    pub change_id: Option<i64>,
}

impl EditRow {
    /// `m` as this edit state shows it: a tombstone once deleted (no body, no `edited_at`),
    /// else the edited body and its time.
    pub fn apply(self, mut m: Message) -> Result<Message, String> {
        m.change_id = self.change_id.map(id_from_cql).transpose()?;
        if self.deleted.unwrap_or(0) != 0 {
            m.deleted = true;
            m.body = String::new();
            m.edited_at = None;
            return Ok(m);
        }
        if let Some(body) = self.body {
            m.body = body;
            m.edited_at = self.edited_at_ms.map(|v| v.max(0) as u64);
        }
        Ok(m)
    }
}

/// `SELECT change_id, message_id FROM chat_changes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, DeserializeRow)]
pub struct ChangeRow {
    pub change_id: i64,
    pub message_id: i64,
}

/// `SELECT role FROM member_roles`.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct RoleRow {
    pub role: Option<String>,
}

/// `SELECT user_id, role FROM member_roles`.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct MemberRoleRow {
    pub user_id: String,
    pub role: Option<String>,
}

/// The timestamp (µs) of an edit's cells: its change id's millisecond.
pub fn change_timestamp_us(change_id: Id) -> i64 {
    last_message_timestamp_us(change_id)
}

/// The timestamp (µs) of a delete's cells: its change id's millisecond plus the catch-up
/// overlap. An edit that raced the delete drew its change id before it read the message, which
/// was before the delete committed, which was at most a request deadline plus clock skew after
/// the delete's change id: less than the overlap (`chat_api::config` enforces it). So the
/// delete's cells are newer than any such edit's, and a deleted body never comes back.
pub fn delete_timestamp_us(change_id: Id) -> i64 {
    let overlap_us = shared::protocol::CATCHUP_OVERLAP.as_micros() as i64;
    change_timestamp_us(change_id).saturating_add(overlap_us)
}

/// `SELECT user_id FROM members`.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct MemberRow {
    pub user_id: String,
}

/// `SELECT bucket FROM chat_buckets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, DeserializeRow)]
pub struct BucketRow {
    pub bucket: i32,
}

/// `SELECT chat_id FROM user_chats`.
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct UserChatRow {
    pub chat_id: i64,
}

/// `SELECT read_up_to, delivered_up_to FROM read_state` (one member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, DeserializeRow)]
pub struct MarkerRow {
    pub read_up_to: Option<i64>,
    pub delivered_up_to: Option<i64>,
}

/// `SELECT user_id, read_up_to, delivered_up_to FROM read_state` (a chat's partition).
#[derive(Debug, Clone, PartialEq, Eq, DeserializeRow)]
pub struct MarkersRow {
    pub user_id: String,
    pub read_up_to: Option<i64>,
    pub delivered_up_to: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fixed_spans_of_the_id_timestamp() {
        let start = shared::ids::EPOCH_MS;
        assert_eq!(bucket_of_ms(start), 0);
        assert_eq!(bucket_of_ms(start + BUCKET_SPAN_MS - 1), 0);
        assert_eq!(bucket_of_ms(start + BUCKET_SPAN_MS), 1);
        assert_eq!(bucket_of_ms(0), 0, "clocks before the epoch clamp to 0");
        let id = Id::first_at(start + 3 * BUCKET_SPAN_MS + 5);
        assert_eq!(bucket_of(id), 3);
        assert_eq!(
            bucket_of(Id(id.0 + 4095)),
            3,
            "sequence bits do not move buckets"
        );
    }

    #[test]
    fn last_message_timestamp_orders_like_ids_across_milliseconds() {
        let a = Id::first_at(shared::ids::EPOCH_MS + 1_000);
        let b = Id::first_at(shared::ids::EPOCH_MS + 1_001);
        assert!(last_message_timestamp_us(a) < last_message_timestamp_us(b));
        assert_eq!(
            last_message_timestamp_us(a),
            last_message_timestamp_us(Id(a.0 + 7)),
            "same millisecond: the larger value wins the tie in the store"
        );
    }

    #[test]
    fn ids_round_trip_through_bigint_and_reject_out_of_range() {
        let id = Id(u64::MAX >> 1);
        assert_eq!(id_from_cql(id_to_cql(id).unwrap()).unwrap(), id);
        assert!(id_to_cql(Id(u64::MAX)).is_err());
        assert!(id_from_cql(-1).is_err());
    }
}

//! The ScyllaDB message store: messages partitioned by `(chat_id, bucket)`, chats, members and each
//! user's chat list in tables of their own (schema in `schema/`, applied by `chat-api migrate`).
//! Statements are prepared once at construction, run under one execution profile (token-aware,
//! datacenter-local policy, quorum consistency, client timeout above the statements' server-side
//! `USING TIMEOUT`) and are bounded by an in-flight semaphore.
//!
//! Idempotent sends work across replicas without an in-process cache: an LWT
//! (`INSERT … IF NOT EXISTS`) on the `idempotency` table claims (chat, sender, client_msg_id) for a
//! message id; the winner writes the message, a loser returns the winner's message (waiting
//! briefly for it, and completing the write from the claim if the winner stalled or died), and
//! re-issues its idempotent write so that a batch that timed out half-way is repaired.
//!
//! History walks read the chat's bucket index (`chat_buckets`), then only buckets that hold
//! messages: a page costs one index read plus at most `limit + 2` partition reads, whatever the
//! gaps in the chat's life ([`walk`]).

mod config;
pub mod cql;
pub mod migrate;
pub mod rows;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError,
};
use scylla::response::query_result::QueryResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, MaybeUnset, Row};
use shared::protocol::Message;
use shared::Id;
use tokio::sync::{Semaphore, SemaphorePermit};

pub use config::{
    claim_serial_consistency, parse_consistency, validate_keyspace, ConfigError, ScyllaConfig,
};
use rows::{bucket_of, bucket_of_ms, id_from_cql, id_to_cql, ChatRow, EditRow, MessageRow};

use crate::store::{
    Change, Changed, ChangesPage, Chat, Cursor, Insert, Marker, Markers, MessageStore, Role,
    StoreError,
};
use migrate::MigrateError;

/// The most messages one history call returns, whatever the caller asks for.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Rows per page for whole-partition reads (member lists, a user's chats).
pub const PAGE_SIZE: i32 = 1000;
/// Members per logged membership batch: 2 statements each, well under batch-size warnings.
pub const MEMBERS_PER_BATCH: usize = 32;
/// `get_chat` calls in flight for one `user_chats` call (and marker reads for one
/// `read_markers` call).
const CHAT_LOOKUP_CONCURRENCY: usize = 16;
/// Waits for a claim winner's message before completing its write from the claim.
const LOST_CLAIM_WAITS_MS: [u64; 5] = [10, 20, 40, 80, 160];

/// Why a [`ScyllaStore`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to ScyllaDB at {nodes:?}: {source} (check STORE_URL and that the nodes accept CQL on that port)")]
    Connect {
        nodes: Vec<String>,
        #[source]
        source: NewSessionError,
    },
    #[error(transparent)]
    Schema(#[from] MigrateError),
    #[error("cannot use keyspace {keyspace}: {source}")]
    UseKeyspace {
        keyspace: String,
        #[source]
        source: scylla::errors::UseKeyspaceError,
    },
    #[error(
        "cannot prepare `{statement}`: {source} (is the schema migrated with `chat-api migrate`?)"
    )]
    Prepare {
        statement: String,
        #[source]
        source: PrepareError,
    },
}

/// All prepared statements, prepared once.
struct Statements {
    insert_chat: PreparedStatement,
    select_chat: PreparedStatement,
    update_chat_last_message: PreparedStatement,
    insert_member: PreparedStatement,
    insert_user_chat: PreparedStatement,
    delete_member: PreparedStatement,
    delete_user_chat: PreparedStatement,
    select_member: PreparedStatement,
    select_members: PreparedStatement,
    select_user_chats: PreparedStatement,
    claim_send: PreparedStatement,
    insert_message: PreparedStatement,
    select_message: PreparedStatement,
    select_messages_before: PreparedStatement,
    select_messages_after: PreparedStatement,
    insert_chat_bucket: PreparedStatement,
    select_buckets_down: PreparedStatement,
    select_buckets_up: PreparedStatement,
    select_marker: PreparedStatement,
    select_markers: PreparedStatement,
    advance_read: PreparedStatement,
    advance_delivered: PreparedStatement,
    update_message_edit: PreparedStatement,
    update_message_delete: PreparedStatement,
    update_message_body: PreparedStatement,
    insert_idempotency: PreparedStatement,
    insert_chat_change: PreparedStatement,
    delete_member_role: PreparedStatement,
    select_message_edit: PreparedStatement,
    select_message_edits: PreparedStatement,
    select_last_change: PreparedStatement,
    select_changes_after: PreparedStatement,
    insert_member_role: PreparedStatement,
    select_member_role: PreparedStatement,
    select_member_roles: PreparedStatement,
    ping: PreparedStatement,
}

impl Statements {
    /// Prepares the texts of [`cql::Texts`] for `config`; the claim runs with the serial
    /// consistency that keeps it unique across `datacenters`.
    async fn prepare(
        session: &Session,
        config: &ScyllaConfig,
        datacenters: usize,
    ) -> Result<Statements, ScyllaError> {
        let texts = cql::Texts::new(config.server_timeout);
        // Everything except the LWT claim is safe to retry or speculatively execute: plain upserts
        // and deletes by full key, reads, and the last-message update with an explicit timestamp.
        let p = |cql: String, idempotent: bool| async move {
            let mut st =
                session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|source| ScyllaError::Prepare {
                        statement: cql.clone(),
                        source,
                    })?;
            st.set_is_idempotent(idempotent);
            Ok::<_, ScyllaError>(st)
        };
        let mut select_members = p(texts.select_members, true).await?;
        select_members.set_page_size(PAGE_SIZE);
        let mut select_user_chats = p(texts.select_user_chats, true).await?;
        select_user_chats.set_page_size(PAGE_SIZE);
        let mut select_markers = p(texts.select_markers, true).await?;
        select_markers.set_page_size(PAGE_SIZE);
        // A driver-level retry of a claim that did apply would read as lost; the claim path
        // recognizes its own message id, but retries are still left to the caller.
        let mut select_member_roles = p(texts.select_member_roles, true).await?;
        select_member_roles.set_page_size(PAGE_SIZE);
        let mut claim_send = p(texts.claim_send, false).await?;
        claim_send.set_serial_consistency(Some(claim_serial_consistency(datacenters)));
        Ok(Statements {
            insert_chat: p(texts.insert_chat, true).await?,
            select_chat: p(texts.select_chat, true).await?,
            update_chat_last_message: p(cql::UPDATE_CHAT_LAST_MESSAGE.into(), true).await?,
            insert_member: p(cql::INSERT_MEMBER.into(), true).await?,
            insert_user_chat: p(cql::INSERT_USER_CHAT.into(), true).await?,
            delete_member: p(cql::DELETE_MEMBER.into(), true).await?,
            delete_user_chat: p(cql::DELETE_USER_CHAT.into(), true).await?,
            select_member: p(texts.select_member, true).await?,
            select_members,
            select_user_chats,
            claim_send,
            insert_message: p(cql::INSERT_MESSAGE.into(), true).await?,
            select_message: p(texts.select_message, true).await?,
            select_messages_before: p(texts.select_messages_before, true).await?,
            select_messages_after: p(texts.select_messages_after, true).await?,
            insert_chat_bucket: p(cql::INSERT_CHAT_BUCKET.into(), true).await?,
            select_buckets_down: p(texts.select_buckets_down, true).await?,
            select_buckets_up: p(texts.select_buckets_up, true).await?,
            select_marker: p(texts.select_marker, true).await?,
            select_markers,
            // Timestamped by the marker's id: a retry writes the same cell with the same
            // timestamp, so it is idempotent.
            advance_read: p(texts.advance_read, true).await?,
            advance_delivered: p(texts.advance_delivered, true).await?,
            update_message_edit: p(cql::UPDATE_MESSAGE_EDIT.into(), true).await?,
            update_message_delete: p(cql::UPDATE_MESSAGE_DELETE.into(), true).await?,
            update_message_body: p(cql::UPDATE_MESSAGE_BODY.into(), true).await?,
            insert_idempotency: p(cql::INSERT_IDEMPOTENCY.into(), true).await?,
            insert_chat_change: p(cql::INSERT_CHAT_CHANGE.into(), true).await?,
            delete_member_role: p(cql::DELETE_MEMBER_ROLE.into(), true).await?,
            select_message_edit: p(texts.select_message_edit, true).await?,
            select_message_edits: p(texts.select_message_edits, true).await?,
            select_last_change: p(texts.select_last_change, true).await?,
            select_changes_after: p(texts.select_changes_after, true).await?,
            // Its timestamp is fixed by the caller, so a retry writes the same cell.
            insert_member_role: p(texts.insert_member_role, true).await?,
            select_member_role: p(texts.select_member_role, true).await?,
            select_member_roles,
            ping: p(texts.ping.into(), true).await?,
        })
    }
}

/// A logged batch that writes (or deletes) `n` memberships: for each member one statement on
/// `members` and one on `user_chats`, both bound as (chat_id, user_id). Logged, so a member never
/// exists in one table and not the other once the batch is acknowledged.
pub fn membership_batch(
    members_stmt: &PreparedStatement,
    user_chats_stmt: &PreparedStatement,
    n: usize,
) -> Batch {
    let mut batch = Batch::new(BatchType::Logged);
    for _ in 0..n {
        batch.append_statement(members_stmt.clone());
        batch.append_statement(user_chats_stmt.clone());
    }
    batch.set_is_idempotent(true);
    batch
}

/// The values for [`membership_batch`]: (chat_id, user_id) twice per member.
pub fn membership_values(chat_id: i64, users: &[String]) -> Vec<(i64, &str)> {
    users
        .iter()
        .flat_map(|u| [(chat_id, u.as_str()), (chat_id, u.as_str())])
        .collect()
}

pub struct ScyllaStore {
    session: Arc<Session>,
    st: Statements,
    /// The message, its chat's `last_message_id` and its bucket in the index, together (see
    /// schema/README.md).
    write_message_batch: Batch,
    /// `last_message_id` and the bucket index of a message already readable: the repair a
    /// retried send issues. It never rewrites the message row, which an edit or delete may
    /// have changed since it was read.
    repair_batch: Batch,
    /// An edit's state and its change entry.
    edit_batch: Batch,
    /// A delete: the original body overwritten, the tombstone state, the change entry and the
    /// send claim without its body.
    delete_batch: Batch,
    /// A membership's removal from `members`, `user_chats` and `member_roles`.
    remove_member_batch: Batch,
    /// Whether the server refused a statement as unsupported in this keyspace.
    unsupported: Unsupported,
    in_flight: Semaphore,
    max_in_flight: usize,
    permit_wait: Duration,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects, refuses a keyspace whose schema is older than this build needs (naming
    /// `chat-api migrate`) or whose layout breaks the store's guarantees (tablets, several
    /// datacenters without `local_dc`), binds the session to the keyspace and prepares every
    /// statement.
    pub async fn connect(config: &ScyllaConfig) -> Result<ScyllaStore, ScyllaError> {
        let session =
            config
                .session_builder()
                .build()
                .await
                .map_err(|source| ScyllaError::Connect {
                    nodes: config.nodes.clone(),
                    source,
                })?;
        migrate::check_schema(&session, &config.keyspace).await?;
        let layout = migrate::keyspace_layout(&session, &config.keyspace)
            .await
            .map_err(MigrateError::from)?;
        migrate::check_layout(&config.keyspace, &layout, config.local_dc.as_deref())
            .map_err(MigrateError::from)?;
        session
            .use_keyspace(&config.keyspace, false)
            .await
            .map_err(|source| ScyllaError::UseKeyspace {
                keyspace: config.keyspace.clone(),
                source,
            })?;
        ScyllaStore::with_session(Arc::new(session), config, layout.datacenters.len()).await
    }

    /// Builds the store on a session already bound to the keyspace (tests build their own), for a
    /// keyspace replicated to `datacenters` datacenters.
    pub async fn with_session(
        session: Arc<Session>,
        config: &ScyllaConfig,
        datacenters: usize,
    ) -> Result<ScyllaStore, ScyllaError> {
        let st = Statements::prepare(&session, config, datacenters).await?;
        let mut write_message_batch = Batch::new(BatchType::Logged);
        write_message_batch.append_statement(st.insert_message.clone());
        write_message_batch.append_statement(st.update_chat_last_message.clone());
        write_message_batch.append_statement(st.insert_chat_bucket.clone());
        write_message_batch.set_is_idempotent(true);
        let logged = |statements: &[&PreparedStatement]| {
            let mut batch = Batch::new(BatchType::Logged);
            for st in statements {
                batch.append_statement((*st).clone());
            }
            batch.set_is_idempotent(true);
            batch
        };
        let repair_batch = logged(&[&st.update_chat_last_message, &st.insert_chat_bucket]);
        let edit_batch = logged(&[&st.update_message_edit, &st.insert_chat_change]);
        let delete_batch = logged(&[
            &st.update_message_body,
            &st.update_message_delete,
            &st.insert_chat_change,
            &st.insert_idempotency,
        ]);
        let remove_member_batch = logged(&[
            &st.delete_member,
            &st.delete_user_chat,
            &st.delete_member_role,
        ]);
        Ok(ScyllaStore {
            session,
            st,
            write_message_batch,
            repair_batch,
            edit_batch,
            delete_batch,
            remove_member_batch,
            unsupported: Unsupported::default(),
            in_flight: Semaphore::new(config.max_in_flight),
            max_in_flight: config.max_in_flight,
            permit_wait: config.request_timeout,
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    async fn permit(&self) -> Result<SemaphorePermit<'_>, StoreError> {
        match tokio::time::timeout(self.permit_wait, self.in_flight.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(StoreError::Unavailable("store is closed".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "all {} store request slots busy for {:?}",
                self.max_in_flight, self.permit_wait
            ))),
        }
    }

    async fn exec(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        let _permit = self.permit().await?;
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| self.failed(st.get_statement(), e))
    }

    /// [`execution_error`], and a server's "not supported" answer turned into a readiness failure
    /// (logged once), answered as unavailable: a deployment error, not a bug in a request.
    fn failed(&self, statement: &str, e: ExecutionError) -> StoreError {
        self.unsupported.map(statement, e)
    }

    async fn batch(&self, batch: &Batch, values: impl BatchValues) -> Result<(), StoreError> {
        let _permit = self.permit().await?;
        self.session
            .batch(batch, values)
            .await
            .map(|_| ())
            .map_err(|e| self.failed("BATCH", e))
    }

    async fn rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.exec(st, values).await?;
        decode_rows(st.get_statement(), result)
    }

    /// A whole partition, fetched page by page (the statement carries the page size).
    async fn all_rows<R>(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
    {
        let _permit = self.permit().await?;
        let pager = self
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(|e| match e {
                PagerExecutionError::PrepareError(_)
                | PagerExecutionError::SerializationError(_) => internal(st.get_statement(), e),
                _ => StoreError::Unavailable(format!("{}: {e}", st.get_statement())),
            })?;
        pager
            .rows_stream::<R>()
            .map_err(|e| internal(st.get_statement(), e))?
            .try_collect()
            .await
            .map_err(|e| match e {
                NextRowError::RowDeserializationError(_) => internal(st.get_statement(), e),
                _ => StoreError::Unavailable(format!("{}: {e}", st.get_statement())),
            })
    }

    async fn chat_row(&self, chat_id: Id) -> Result<Option<ChatRow>, StoreError> {
        // No stored id exceeds a bigint: a larger one names no chat (as in the SQLite store).
        let Some(key) = stored_key(chat_id) else {
            return Ok(None);
        };
        let rows: Vec<ChatRow> = self.rows(&self.st.select_chat, (key,)).await?;
        // An `UPDATE` of `last_message_id` alone can make a row without `created_by`; that is not
        // a chat (it never happens through the API, which checks membership first).
        Ok(rows.into_iter().next().filter(|r| r.created_by.is_some()))
    }

    async fn read_message(
        &self,
        chat_id: Id,
        message_id: Id,
    ) -> Result<Option<Message>, StoreError> {
        let (Some(chat), Some(id)) = (stored_key(chat_id), stored_key(message_id)) else {
            return Ok(None);
        };
        let key = (chat, bucket_of(message_id), id);
        let (rows, edits): (Vec<MessageRow>, Vec<EditRow>) = futures_util::try_join!(
            self.rows(&self.st.select_message, key),
            self.rows(&self.st.select_message_edit, key),
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let message = row.into_message().map_err(StoreError::Internal)?;
        match edits.into_iter().next() {
            Some(edit) => edit.apply(message).map(Some).map_err(StoreError::Internal),
            None => Ok(Some(message)),
        }
    }

    /// The chat's newest change id, `None` before its first change.
    async fn last_change(&self, chat_id: i64) -> Result<Option<Id>, StoreError> {
        let rows: Vec<rows::ChangeRow> = self.rows(&self.st.select_last_change, (chat_id,)).await?;
        rows.into_iter()
            .next()
            .map(|r| id_from_cql(r.change_id).map_err(StoreError::Internal))
            .transpose()
    }

    /// A history page with each message's edit state applied: one range read of `message_edits`
    /// per bucket the page spans (one, usually).
    async fn with_edits(&self, chat: i64, page: Vec<Message>) -> Result<Vec<Message>, StoreError> {
        let mut spans: Vec<(i32, i64, i64)> = Vec::new();
        for m in &page {
            let (bucket, id) = (bucket_of(m.message_id), cql_id(m.message_id)?);
            match spans.iter_mut().find(|s| s.0 == bucket) {
                Some(span) => {
                    span.1 = span.1.min(id);
                    span.2 = span.2.max(id);
                }
                None => spans.push((bucket, id, id)),
            }
        }
        let mut edits: std::collections::HashMap<i64, EditRow> = std::collections::HashMap::new();
        for (bucket, low, high) in spans {
            let rows: Vec<EditRow> = self
                .rows(&self.st.select_message_edits, (chat, bucket, low, high))
                .await?;
            edits.extend(rows.into_iter().map(|r| (r.message_id, r)));
        }
        if edits.is_empty() {
            return Ok(page);
        }
        page.into_iter()
            .map(|m| match edits.remove(&(m.message_id.0 as i64)) {
                Some(edit) => edit.apply(m).map_err(StoreError::Internal),
                None => Ok(m),
            })
            .collect()
    }

    /// The message, `last_message_id` (timestamped by the id, so it converges to the largest) and
    /// the bucket index in one logged batch: idempotent, so re-issuing it repairs a batch whose
    /// outcome was unknown.
    async fn write_message(&self, m: &Message) -> Result<(), StoreError> {
        let chat_id = cql_id(m.chat_id)?;
        let message_id = cql_id(m.message_id)?;
        let bucket = bucket_of(m.message_id);
        self.batch(
            &self.write_message_batch,
            (
                (
                    chat_id,
                    bucket,
                    message_id,
                    m.sender_id.as_str(),
                    m.client_msg_id.as_str(),
                    m.body.as_str(),
                ),
                (
                    rows::last_message_timestamp_us(m.message_id),
                    message_id,
                    chat_id,
                ),
                (chat_id, bucket),
            ),
        )
        .await
    }

    /// `user`'s read marker in one chat (`key` is its stored id), paired with the chat.
    async fn read_marker(
        &self,
        chat: Id,
        key: i64,
        user: &str,
    ) -> Result<Option<(Id, Id)>, StoreError> {
        let rows: Vec<rows::MarkerRow> = self.rows(&self.st.select_marker, (key, user)).await?;
        let marker = rows
            .first()
            .and_then(|r| r.read_up_to)
            .map(id_from_cql)
            .transpose()
            .map_err(StoreError::Internal)?;
        Ok(marker.map(|m| (chat, m)))
    }

    async fn write_memberships(
        &self,
        members_stmt: &PreparedStatement,
        user_chats_stmt: &PreparedStatement,
        chat_id: Id,
        users: &[String],
    ) -> Result<(), StoreError> {
        let chat_id = cql_id(chat_id)?;
        for chunk in users.chunks(MEMBERS_PER_BATCH) {
            let batch = membership_batch(members_stmt, user_chats_stmt, chunk.len());
            self.batch(&batch, membership_values(chat_id, chunk))
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for ScyllaStore {
    async fn create_chat(&self, chat: &Chat, members: &[String]) -> Result<(), StoreError> {
        // Members first: a chat row that exists is a chat whose members can already read it.
        self.write_memberships(
            &self.st.insert_member,
            &self.st.insert_user_chat,
            chat.chat_id,
            members,
        )
        .await?;
        let born_ms = chat.created_at_ms.min(chat.chat_id.unix_ms());
        self.exec(
            &self.st.insert_chat,
            (
                cql_id(chat.chat_id)?,
                title_value(chat.title.as_deref()),
                chat.created_by.as_str(),
                i64::try_from(chat.created_at_ms).unwrap_or(i64::MAX),
                bucket_of_ms(born_ms.saturating_sub(rows::CLOCK_SKEW_MS)),
            ),
        )
        .await?;
        Ok(())
    }

    async fn get_chat(&self, chat_id: Id) -> Result<Option<Chat>, StoreError> {
        let Some(key) = stored_key(chat_id) else {
            return Ok(None);
        };
        let (row, last_change) =
            futures_util::try_join!(self.chat_row(chat_id), self.last_change(key))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut chat = chat_from_row(row)?;
        chat.last_change_id = last_change;
        Ok(Some(chat))
    }

    async fn user_chats(
        &self,
        user: &str,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<Chat>, StoreError> {
        // One clustering range of the user's `user_chats` partition (at most `limit` rows), each
        // chat looked up as its row arrives, CHAT_LOOKUP_CONCURRENCY at a time: a page costs one
        // range read plus one point read per chat, however many chats the user has.
        let Some(after) = super::stored_chat_cursor(after) else {
            return Ok(Vec::new());
        };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let statement = self.st.select_user_chats.get_statement();
        let pager = self
            .session
            .execute_iter(self.st.select_user_chats.clone(), (user, after, limit))
            .await
            .map_err(|e| match e {
                PagerExecutionError::PrepareError(_)
                | PagerExecutionError::SerializationError(_) => internal(statement, e),
                _ => StoreError::Unavailable(format!("{statement}: {e}")),
            })?;
        let mut chats: Vec<Chat> = pager
            .rows_stream::<rows::UserChatRow>()
            .map_err(|e| internal(statement, e))?
            .map(|row| match row {
                Ok(r) => id_from_cql(r.chat_id).map_err(StoreError::Internal),
                Err(e @ NextRowError::RowDeserializationError(_)) => Err(internal(statement, e)),
                Err(e) => Err(StoreError::Unavailable(format!("{statement}: {e}"))),
            })
            .map_ok(|id| self.get_chat(id))
            .try_buffer_unordered(CHAT_LOOKUP_CONCURRENCY)
            .try_filter_map(|c| async move { Ok(c) })
            .try_collect()
            .await?;
        // Newest activity first: the last message, or the chat's creation for a chat without
        // messages (both are snowflake ids from the same clock).
        chats.sort_by(|a, b| {
            let key = |c: &Chat| (c.last_message_id.unwrap_or(c.chat_id), c.chat_id);
            key(b).cmp(&key(a))
        });
        Ok(chats)
    }

    async fn add_members(&self, chat_id: Id, users: &[String]) -> Result<(), StoreError> {
        self.write_memberships(
            &self.st.insert_member,
            &self.st.insert_user_chat,
            chat_id,
            users,
        )
        .await
    }

    async fn remove_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        // Read then delete: two concurrent removals of the same member may both answer `true`,
        // which is harmless and cheaper than an LWT on every removal.
        if !self.is_member(chat_id, user).await? {
            return Ok(false);
        }
        let key = cql_id(chat_id)?;
        self.batch(
            &self.remove_member_batch,
            ((key, user), (key, user), (key, user)),
        )
        .await?;
        Ok(true)
    }

    async fn is_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        let Some(key) = stored_key(chat_id) else {
            return Ok(false);
        };
        let rows: Vec<rows::MemberRow> = self.rows(&self.st.select_member, (key, user)).await?;
        Ok(!rows.is_empty())
    }

    async fn members(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        let Some(key) = stored_key(chat_id) else {
            return Ok(Vec::new());
        };
        let rows: Vec<rows::MemberRow> = self.all_rows(&self.st.select_members, (key,)).await?;
        let mut members: Vec<String> = rows.into_iter().map(|r| r.user_id).collect();
        // The clustering order is already byte order; sorting keeps the contract explicit.
        members.sort();
        Ok(members)
    }

    async fn insert_message(&self, m: &Message) -> Result<Insert, StoreError> {
        let chat_id = cql_id(m.chat_id)?;
        let message_id = cql_id(m.message_id)?;
        let result = self
            .exec(
                &self.st.claim_send,
                (
                    chat_id,
                    m.sender_id.as_str(),
                    m.client_msg_id.as_str(),
                    message_id,
                    m.body.as_str(),
                ),
            )
            .await?;
        let claim = Claim::from_result(result)?;
        if claim.applied || claim.message_id == Some(message_id) {
            self.write_message(m).await?;
            return Ok(Insert::Created(m.clone()));
        }
        let winner_id = claim
            .message_id
            .ok_or_else(|| StoreError::Internal("lost send claim carries no message_id".into()))
            .and_then(|v| id_from_cql(v).map_err(StoreError::Internal))?;
        for wait_ms in LOST_CLAIM_WAITS_MS.iter().copied().map(Some).chain([None]) {
            if let Some(original) = self.read_message(m.chat_id, winner_id).await? {
                // The original's batch may have timed out after its batchlog write: the message
                // is readable but `last_message_id` (which catch-up relies on) and the bucket
                // index may lag until the batchlog replays. Re-issuing the idempotent,
                // timestamped pointer and index writes repairs them now; the message row is
                // left alone (an edit or delete may have changed it since).
                self.batch(
                    &self.repair_batch,
                    (
                        (
                            rows::last_message_timestamp_us(original.message_id),
                            cql_id(original.message_id)?,
                            chat_id,
                        ),
                        (chat_id, bucket_of(original.message_id)),
                    ),
                )
                .await?;
                return Ok(Insert::Duplicate(original));
            }
            if let Some(ms) = wait_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        // The winner claimed but has not written for ~300 ms: it is stalled or gone. Its claim
        // holds the whole message, so complete the write (an idempotent upsert by full key) rather
        // than leave this client message wedged until the claim expires.
        let original = Message::new(
            m.chat_id,
            winner_id,
            m.sender_id.clone(),
            m.client_msg_id.clone(),
            claim.body.unwrap_or_else(|| m.body.clone()),
        );
        tracing::warn!(
            message_id = %winner_id,
            "completing a send whose claim winner did not write it"
        );
        self.write_message(&original).await?;
        Ok(Insert::Duplicate(original))
    }

    async fn history(
        &self,
        chat_id: Id,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = limit.min(MAX_HISTORY_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(chat) = self.chat_row(chat_id).await? else {
            return Ok(Vec::new());
        };
        // An acknowledged message was written in the same logged batch as `last_message_id` and
        // its bucket's index row, so the walk never needs to look past the former, and the
        // index names every bucket to read.
        let Some(last) = chat.last_message_id else {
            return Ok(Vec::new());
        };
        let last = id_from_cql(last).map_err(StoreError::Internal)?;
        let key = chat.chat_id;
        // Enough index rows to fill the page: every bucket after the first holds at least one
        // message inside the cursor's range.
        let index_limit = i32::try_from(limit + 1).unwrap_or(i32::MAX);
        let want = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        match cursor {
            Cursor::Latest | Cursor::Before(_) => {
                let upper = match cursor {
                    Cursor::Before(b) => i64::try_from(b.0).unwrap_or(i64::MAX),
                    _ => i64::MAX,
                };
                if upper == 0 {
                    return Ok(Vec::new());
                }
                let top = bucket_of(Id((upper as u64 - 1).min(last.0)));
                let index: Vec<rows::BucketRow> = self
                    .rows(&self.st.select_buckets_down, (key, top, index_limit))
                    .await?;
                let buckets = walk_order(index, bucket_of(last), top, Direction::Down);
                let mut out = walk(&buckets, limit, |bucket, n| {
                    self.rows::<MessageRow>(
                        &self.st.select_messages_before,
                        (key, bucket, upper, want(n)),
                    )
                })
                .await?;
                out.reverse();
                self.with_edits(key, finish(out)?).await
            }
            Cursor::After(a) => {
                let Ok(lower) = i64::try_from(a.0) else {
                    return Ok(Vec::new());
                };
                if a >= last {
                    return Ok(Vec::new());
                }
                let bottom = bucket_of(a);
                let index: Vec<rows::BucketRow> = self
                    .rows(&self.st.select_buckets_up, (key, bottom, index_limit))
                    .await?;
                let buckets = walk_order(index, bucket_of(last), bottom, Direction::Up);
                let out = walk(&buckets, limit, |bucket, n| {
                    self.rows::<MessageRow>(
                        &self.st.select_messages_after,
                        (key, bucket, lower, want(n)),
                    )
                })
                .await?;
                self.with_edits(key, finish(out)?).await
            }
        }
    }

    async fn advance_marker(
        &self,
        chat_id: Id,
        user: &str,
        marker: Marker,
        message_id: Id,
    ) -> Result<bool, StoreError> {
        let key = cql_id(chat_id)?;
        let id = cql_id(message_id)?;
        // The write converges to the highest id by its timestamp whatever races it; the read
        // before it only tells whether this call moved the marker (for the receipt frame). Two
        // replicas racing may both answer `true`: a receipt sent twice, never a marker moved back.
        let rows: Vec<rows::MarkerRow> = self.rows(&self.st.select_marker, (key, user)).await?;
        let current = rows.first().and_then(|r| match marker {
            Marker::Read => r.read_up_to,
            Marker::Delivered => r.delivered_up_to,
        });
        if current.is_some_and(|c| c >= id) {
            return Ok(false);
        }
        let st = match marker {
            Marker::Read => &self.st.advance_read,
            Marker::Delivered => &self.st.advance_delivered,
        };
        self.exec(
            st,
            (rows::last_message_timestamp_us(message_id), id, key, user),
        )
        .await?;
        Ok(true)
    }

    async fn get_message(
        &self,
        chat_id: Id,
        message_id: Id,
    ) -> Result<Option<Message>, StoreError> {
        self.read_message(chat_id, message_id).await
    }

    async fn change_message(
        &self,
        chat_id: Id,
        message_id: Id,
        change: &Change,
        change_id: Id,
        deadline: std::time::Instant,
    ) -> Result<Changed, StoreError> {
        // ScyllaDB cannot abandon a write at a deadline (as for sends, docs/RELIABILITY.md); the
        // statements' server timeout bounds it.
        let _ = deadline;
        let Some(current) = self.read_message(chat_id, message_id).await? else {
            return Ok(Changed::NotFound);
        };
        let chat = cql_id(chat_id)?;
        let id = cql_id(message_id)?;
        let bucket = bucket_of(message_id);
        let change_key = cql_id(change_id)?;
        let changed = match change {
            Change::Edit { body } => {
                if current.deleted {
                    return Ok(Changed::Deleted(current));
                }
                if current.body == *body {
                    return Ok(Changed::Unchanged(current));
                }
                let edited_at = change_id.unix_ms();
                self.batch(
                    &self.edit_batch,
                    (
                        (
                            rows::change_timestamp_us(change_id),
                            body.as_str(),
                            i64::try_from(edited_at).unwrap_or(i64::MAX),
                            change_key,
                            chat,
                            bucket,
                            id,
                        ),
                        (chat, change_key, id),
                    ),
                )
                .await?;
                Message {
                    body: body.clone(),
                    edited_at: Some(edited_at),
                    change_id: Some(change_id),
                    ..current
                }
            }
            Change::Delete => {
                if current.deleted {
                    return Ok(Changed::Unchanged(current));
                }
                self.batch(
                    &self.delete_batch,
                    (
                        ("", chat, bucket, id),
                        (
                            rows::delete_timestamp_us(change_id),
                            "",
                            1_i32,
                            change_key,
                            chat,
                            bucket,
                            id,
                        ),
                        (chat, change_key, id),
                        (
                            chat,
                            current.sender_id.as_str(),
                            current.client_msg_id.as_str(),
                            id,
                            "",
                        ),
                    ),
                )
                .await?;
                Message {
                    body: String::new(),
                    edited_at: None,
                    deleted: true,
                    change_id: Some(change_id),
                    ..current
                }
            }
        };
        Ok(Changed::Applied(changed))
    }

    async fn changes(
        &self,
        chat_id: Id,
        after: Id,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        let limit = limit.min(MAX_HISTORY_LIMIT);
        let (Some(chat), Some(after_key)) = (stored_key(chat_id), stored_key(after)) else {
            return Ok(ChangesPage::default());
        };
        if limit == 0 {
            return Ok(ChangesPage::default());
        }
        let entries: Vec<rows::ChangeRow> = self
            .rows(
                &self.st.select_changes_after,
                (chat, after_key, i32::try_from(limit).unwrap_or(i32::MAX)),
            )
            .await?;
        let last = entries
            .last()
            .map(|e| id_from_cql(e.change_id).map_err(StoreError::Internal))
            .transpose()?;
        let full = entries.len() >= limit;
        // Each message once, at its newest entry in the page (its state is read as it is now).
        let mut order: Vec<i64> = Vec::with_capacity(entries.len());
        for e in entries.iter().rev() {
            if !order.contains(&e.message_id) {
                order.push(e.message_id);
            }
        }
        order.reverse();
        let ids: Vec<Id> = order
            .into_iter()
            .map(|v| id_from_cql(v).map_err(StoreError::Internal))
            .collect::<Result<_, _>>()?;
        let messages: Vec<Option<Message>> = futures_util::stream::iter(ids)
            .map(|id| self.read_message(chat_id, id))
            .buffered(CHAT_LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(ChangesPage {
            messages: messages.into_iter().flatten().collect(),
            last,
            full,
        })
    }

    async fn role(&self, chat_id: Id, user: &str) -> Result<Option<Role>, StoreError> {
        let Some(key) = stored_key(chat_id) else {
            return Ok(None);
        };
        let (member, roles, chat): (bool, Vec<rows::RoleRow>, Option<ChatRow>) = futures_util::try_join!(
            self.is_member(chat_id, user),
            self.rows(&self.st.select_member_role, (key, user)),
            self.chat_row(chat_id),
        )?;
        if !member {
            return Ok(None);
        }
        if chat.and_then(|c| c.created_by).as_deref() == Some(user) {
            return Ok(Some(Role::Owner));
        }
        let stored = roles.into_iter().next().and_then(|r| r.role);
        Ok(Some(Role::from_stored(stored.as_deref())))
    }

    async fn set_role(&self, chat_id: Id, user: &str, role: Role) -> Result<bool, StoreError> {
        // The grant's timestamp is taken before the membership check: a removal that commits
        // after the check has a later timestamp and deletes the grant with the membership.
        let stamp =
            i64::try_from(shared::ids::now_unix_ms().saturating_mul(1000)).unwrap_or(i64::MAX);
        if !self.is_member(chat_id, user).await? {
            return Ok(false);
        }
        self.exec(
            &self.st.insert_member_role,
            (cql_id(chat_id)?, user, role.as_str(), stamp),
        )
        .await?;
        Ok(true)
    }

    async fn markers(&self, chat_id: Id) -> Result<Vec<Markers>, StoreError> {
        let Some(key) = stored_key(chat_id) else {
            return Ok(Vec::new());
        };
        let rows: Vec<rows::MarkersRow> = self.all_rows(&self.st.select_markers, (key,)).await?;
        let id = |v: Option<i64>| v.map(id_from_cql).transpose().map_err(StoreError::Internal);
        let mut out = rows
            .into_iter()
            .map(|r| {
                Ok(Markers {
                    user_id: r.user_id,
                    read_up_to: id(r.read_up_to)?,
                    delivered_up_to: id(r.delivered_up_to)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(out)
    }

    async fn read_markers(
        &self,
        user: &str,
        chat_ids: &[Id],
    ) -> Result<std::collections::HashMap<Id, Id>, StoreError> {
        // One point read per chat, CHAT_LOOKUP_CONCURRENCY at a time (like `user_chats`).
        let reads: Vec<_> = chat_ids
            .iter()
            .filter_map(|&c| stored_key(c).map(|k| self.read_marker(c, k, user)))
            .collect();
        let found: Vec<Option<(Id, Id)>> = futures_util::stream::iter(reads)
            .buffer_unordered(CHAT_LOOKUP_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn admins(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        let Some(key) = stored_key(chat_id) else {
            return Ok(Vec::new());
        };
        let rows: Vec<rows::MemberRoleRow> =
            self.all_rows(&self.st.select_member_roles, (key,)).await?;
        let mut admins: Vec<String> = rows
            .into_iter()
            .filter(|r| Role::from_stored(r.role.as_deref()) == Role::Admin)
            .map(|r| r.user_id)
            .collect();
        admins.sort();
        Ok(admins)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.unsupported.check()?;
        self.exec(&self.st.ping, ()).await.map(|_| ())
    }
}

/// The one state of a store that a server refused as unsupported (a keyspace with tablets running
/// an LWT, say): set by the first such answer, never cleared, read by readiness.
#[derive(Debug, Default)]
pub struct Unsupported(std::sync::OnceLock<String>);

impl Unsupported {
    /// Maps a driver error: an "unsupported" answer is recorded (one ERROR log) and answered as
    /// unavailable (503, never an internal error); anything else goes to [`execution_error`].
    pub fn map(&self, statement: &str, e: ExecutionError) -> StoreError {
        if !migrate::is_unsupported(&e) {
            return execution_error(statement, e);
        }
        let reason = format!(
            "ScyllaDB refused `{statement}` as unsupported in this keyspace ({e}); a keyspace \
             with tablets cannot run the send claim: see `chat-api migrate` and schema/README.md"
        );
        if self.0.set(reason.clone()).is_ok() {
            tracing::error!(%reason, "the store cannot serve: readiness fails until a restart on a fixed keyspace");
        }
        StoreError::Unavailable(reason)
    }

    /// Readiness: fails with the recorded reason once set.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.0.get() {
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }
}

/// The outcome of the LWT claim: `[applied]`, and on a lost claim the winner's columns.
#[derive(Debug, Default, PartialEq, Eq)]
struct Claim {
    applied: bool,
    message_id: Option<i64>,
    body: Option<String>,
}

impl Claim {
    fn from_result(result: QueryResult) -> Result<Claim, StoreError> {
        let rows = result
            .into_rows_result()
            .map_err(|e| internal(cql::CLAIM_SEND, e))?;
        let specs: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        let row: Row = rows
            .single_row()
            .map_err(|e| internal(cql::CLAIM_SEND, e))?;
        let mut claim = Claim::default();
        // The columns after `[applied]` depend on the server, so they are read by name.
        for (name, value) in specs.iter().zip(row.columns) {
            match (name.as_str(), value) {
                ("[applied]", Some(CqlValue::Boolean(b))) => claim.applied = b,
                ("message_id", Some(CqlValue::BigInt(v))) => claim.message_id = Some(v),
                ("body", Some(CqlValue::Text(v))) => claim.body = Some(v),
                _ => {}
            }
        }
        Ok(claim)
    }
}

fn chat_from_row(row: ChatRow) -> Result<Chat, StoreError> {
    Ok(Chat {
        chat_id: id_from_cql(row.chat_id).map_err(StoreError::Internal)?,
        title: row.title,
        created_by: row.created_by.unwrap_or_default(),
        created_at_ms: row.created_at_ms.map_or(0, |v| v.max(0) as u64),
        last_message_id: row
            .last_message_id
            .map(id_from_cql)
            .transpose()
            .map_err(StoreError::Internal)?,
        last_change_id: None,
    })
}

fn cql_id(id: Id) -> Result<i64, StoreError> {
    id_to_cql(id).map_err(StoreError::Internal)
}

/// The stored key of an id read from a request: `None` above `i64::MAX`, where no chat can exist.
fn stored_key(id: Id) -> Option<i64> {
    id_to_cql(id).ok()
}

/// A null title is left unset: binding `None` would write a tombstone.
pub fn title_value(title: Option<&str>) -> MaybeUnset<&str> {
    title.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

/// Which way a history walk goes through the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Newest first (`Latest`, `Before`): buckets at or below the start.
    Down,
    /// Oldest first (`After`): buckets at or above the start.
    Up,
}

/// The buckets a walk reads, in order: those the index named, plus the bucket of the chat's last
/// message when it is inside the range (a replica of an older version, during a rolling upgrade,
/// writes messages without index rows; the newest bucket is then still read).
pub fn walk_order(
    index: Vec<rows::BucketRow>,
    last_bucket: i32,
    start: i32,
    direction: Direction,
) -> Vec<i32> {
    let mut buckets: Vec<i32> = index.into_iter().map(|r| r.bucket).collect();
    let in_range = match direction {
        Direction::Down => last_bucket <= start,
        Direction::Up => last_bucket >= start,
    };
    if in_range {
        buckets.push(last_bucket);
    }
    buckets.sort_unstable();
    buckets.dedup();
    if direction == Direction::Down {
        buckets.reverse();
    }
    buckets
}

/// Reads `buckets` in order, asking each for the rows still missing, until `limit` rows are in
/// hand. One read per bucket at most: with the index, a page costs one index read plus at most
/// `buckets.len()` (≤ `limit + 2`) partition reads, and a page that the newest bucket fills, the
/// common case, costs one.
pub async fn walk<F, Fut>(
    buckets: &[i32],
    limit: usize,
    mut fetch: F,
) -> Result<Vec<MessageRow>, StoreError>
where
    F: FnMut(i32, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<MessageRow>, StoreError>>,
{
    let mut out: Vec<MessageRow> = Vec::with_capacity(limit.min(64));
    for &bucket in buckets {
        if out.len() >= limit {
            break;
        }
        let page = fetch(bucket, limit - out.len()).await?;
        out.extend(page);
    }
    out.truncate(limit);
    Ok(out)
}

fn finish(rows: Vec<MessageRow>) -> Result<Vec<Message>, StoreError> {
    rows.into_iter()
        .map(|r| r.into_message().map_err(StoreError::Internal))
        .collect()
}

fn decode_rows<R>(statement: &str, result: QueryResult) -> Result<Vec<R>, StoreError>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let rows = result
        .into_rows_result()
        .map_err(|e| internal(statement, e))?;
    let rows = rows
        .rows::<R>()
        .map_err(|e| internal(statement, e))?
        .collect::<Result<Vec<R>, _>>()
        .map_err(|e| internal(statement, e));
    rows
}

fn internal(statement: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{statement}: {e}"))
}

/// Maps a driver error to the store's two kinds: the cluster is unreachable, overloaded or timed
/// out (the API answers 503 and the client retries), or the request itself is wrong (a bug: 500).
pub fn execution_error(statement: &str, e: ExecutionError) -> StoreError {
    let is_bug = match &e {
        ExecutionError::BadQuery(_) | ExecutionError::PrepareError(_) => true,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::SerializationError(_)
            | RequestAttemptError::CqlRequestSerialization(_)
            | RequestAttemptError::CqlResultParseError(_) => true,
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                DbError::SyntaxError
                    | DbError::Invalid
                    | DbError::AlreadyExists { .. }
                    | DbError::ConfigError
                    | DbError::Unauthorized
                    | DbError::ProtocolError
            ),
            _ => false,
        },
        _ => false,
    };
    if is_bug {
        StoreError::Internal(format!("{statement}: {e}"))
    } else {
        StoreError::Unavailable(format!("{statement}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A model of one chat's `messages` partitions (in memory; no server runs in unit tests):
    /// bucket → message ids, ascending. `fetch` answers like SELECT_MESSAGES_BEFORE.
    struct Model {
        buckets: BTreeMap<i32, Vec<i64>>,
        reads: AtomicUsize,
    }

    impl Model {
        fn new(buckets: impl IntoIterator<Item = (i32, Vec<i64>)>) -> Model {
            Model {
                buckets: buckets.into_iter().collect(),
                reads: AtomicUsize::new(0),
            }
        }

        fn index(&self) -> Vec<rows::BucketRow> {
            self.buckets
                .keys()
                .rev()
                .map(|&bucket| rows::BucketRow { bucket })
                .collect()
        }

        async fn before(
            &self,
            bucket: i32,
            upper: i64,
            n: usize,
        ) -> Result<Vec<MessageRow>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(self
                .buckets
                .get(&bucket)
                .into_iter()
                .flatten()
                .rev()
                .filter(|id| **id < upper)
                .take(n)
                .map(|&message_id| MessageRow {
                    chat_id: 1,
                    message_id,
                    sender_id: "u".into(),
                    client_msg_id: message_id.to_string(),
                    body: String::new(),
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn a_year_of_silence_costs_no_reads() {
        // 3 messages now, 100 a year (37 buckets) earlier: the page reads exactly 2 buckets.
        let now = 1000;
        let model = Model::new([
            (now, vec![9001, 9002, 9003]),
            (now - 37, (1..=100).collect()),
        ]);
        let buckets = walk_order(model.index(), now, now, Direction::Down);
        assert_eq!(buckets, [now, now - 37]);
        let page = walk(&buckets, 50, |b, n| model.before(b, i64::MAX, n))
            .await
            .unwrap();
        assert_eq!(page.len(), 50);
        assert_eq!(model.reads.load(Ordering::Relaxed), 2);
        assert_eq!(page[3].message_id, 100, "newest first across the gap");
    }

    #[tokio::test]
    async fn the_worst_case_is_one_read_per_indexed_bucket() {
        // The sparsest chat possible: one message in each of many buckets. The index read is
        // limited to `limit + 1` rows, plus the last message's bucket: at most `limit + 2` reads.
        const LIMIT: usize = 20;
        let model = Model::new((0..500).map(|b| (b, vec![i64::from(b) * 10])));
        let index: Vec<_> = model.index().into_iter().take(LIMIT + 1).collect();
        let buckets = walk_order(index, 499, 499, Direction::Down);
        assert!(buckets.len() <= LIMIT + 2);
        let page = walk(&buckets, LIMIT, |b, n| model.before(b, i64::MAX, n))
            .await
            .unwrap();
        assert_eq!(page.len(), LIMIT);
        assert!(model.reads.load(Ordering::Relaxed) <= LIMIT + 2);
        // The first bucket can hold nothing below the cursor; the page is still full.
        let model = Model::new((0..500).map(|b| (b, vec![i64::from(b) * 10])));
        let page = walk(&buckets, LIMIT, |b, n| model.before(b, 4990, n))
            .await
            .unwrap();
        assert_eq!(
            page.len(),
            LIMIT,
            "limit + 1 index rows fill a page whose first bucket is spent"
        );
        assert_eq!(model.reads.load(Ordering::Relaxed), LIMIT + 1);
    }

    #[test]
    fn the_last_bucket_is_always_walked_when_in_range() {
        let idx = |b: &[i32]| b.iter().map(|&bucket| rows::BucketRow { bucket }).collect();
        // A replica of an older version wrote bucket 12 without an index row.
        assert_eq!(
            walk_order(idx(&[11, 9]), 12, 12, Direction::Down),
            [12, 11, 9]
        );
        assert_eq!(walk_order(idx(&[12, 9]), 12, 12, Direction::Down), [12, 9]);
        assert_eq!(
            walk_order(idx(&[9]), 12, 10, Direction::Down),
            [9],
            "out of range"
        );
        assert_eq!(walk_order(idx(&[9, 11]), 12, 9, Direction::Up), [9, 11, 12]);
        assert_eq!(
            walk_order(idx(&[]), 12, 13, Direction::Up),
            Vec::<i32>::new()
        );
    }

    #[test]
    fn an_unsupported_answer_fails_readiness_and_is_never_internal() {
        use scylla::errors::{DbError, RequestAttemptError};
        let db = |kind: DbError, msg: &str| {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(kind, msg.into()))
        };
        let state = Unsupported::default();
        assert!(state.check().is_ok());
        // An ordinary bug stays internal and does not touch readiness.
        let bug = state.map(
            "SELECT x",
            db(DbError::SyntaxError, "line 1: no viable alternative"),
        );
        assert!(matches!(bug, StoreError::Internal(_)), "{bug}");
        assert!(state.check().is_ok());
        let refused = state.map(
            cql::CLAIM_SEND,
            db(DbError::Invalid, "LWT is not yet supported with tablets"),
        );
        assert!(
            matches!(&refused, StoreError::Unavailable(m) if m.contains("tablets")),
            "{refused}"
        );
        let ready = state.check().unwrap_err();
        assert!(ready.to_string().contains("chat-api migrate"), "{ready}");
        // It stays failed: a later ordinary answer does not clear it.
        let _ = state.map("SELECT x", db(DbError::Overloaded, "busy"));
        assert!(state.check().is_err());
    }

    #[test]
    fn a_missing_title_is_unset_not_null() {
        assert!(matches!(title_value(None), MaybeUnset::Unset));
        assert!(matches!(title_value(Some("t")), MaybeUnset::Set("t")));
    }

    #[test]
    fn ids_beyond_a_bigint_name_no_stored_key() {
        assert_eq!(stored_key(Id(i64::MAX as u64)), Some(i64::MAX));
        assert_eq!(stored_key(Id(i64::MAX as u64 + 1)), None);
        assert_eq!(stored_key(Id(u64::MAX)), None);
    }
}

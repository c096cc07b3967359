//! The embedded message store: one SQLite file (bundled SQLite, WAL mode) that several chat-api
//! processes on one host may share. Blocking SQLite calls run on tokio's blocking pool through a
//! small pool of connections; a semaphore bounds the work in flight so that a slow disk sheds load
//! (503) instead of queueing without limit.
//!
//! Message inserts go through one writer thread that commits them in groups: it takes every insert
//! that queued while the previous commit was running and writes them in one transaction, so one
//! fsync covers many messages. Each insert is still answered only after its transaction commits
//! (durable before acknowledged); a queue with a capacity bounds the inserts waiting. An insert
//! with a deadline (a send's request deadline) is abandoned, never committed, when its deadline
//! is less than [`COMMIT_ALLOWANCE`] away at commit time: its request is answered 503, and a
//! later commit would let a retry acknowledge it with an id from before the 503.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use shared::protocol::Message;
use shared::Id;
use tokio::sync::{mpsc, oneshot, Semaphore};

mod busy;

use super::{
    Change, Changed, ChangesPage, Chat, Cursor, Insert, Marker, Markers, MessageStore, Role,
    StoreError, Unread,
};

/// Tuning for [`SqliteStore`]; every field has a sensible default.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// How long a statement waits for another connection's (or process's) write lock before it
    /// fails with `SQLITE_BUSY`, answered as 503 (polled in short steps, `sqlite/busy.rs`).
    /// Default 5 s.
    pub busy_timeout: Duration,
    /// Connections kept open, and so the most statements running at once. Default 4.
    pub connections: usize,
    /// How long a request waits for a free connection before it is shed as unavailable.
    /// Default 5 s.
    pub acquire_timeout: Duration,
    /// `synchronous=FULL` (default) fsyncs the WAL on every commit, so an acknowledged message
    /// survives a power loss; `false` uses NORMAL (survives process crashes only).
    pub fsync_each_commit: bool,
    /// Most message inserts committed in one transaction by the writer thread. Default 256.
    pub group_commit_max: usize,
    /// Message inserts that may wait for the writer thread; more are shed as unavailable after
    /// `acquire_timeout`. Default 4,096.
    pub write_queue: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            connections: 4,
            acquire_timeout: Duration::from_secs(5),
            fsync_each_commit: true,
            group_commit_max: 256,
            write_queue: 4_096,
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chats (
    chat_id          INTEGER PRIMARY KEY,
    title            TEXT,
    created_by       TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    last_message_id  INTEGER
);
CREATE TABLE IF NOT EXISTS members (
    chat_id       INTEGER NOT NULL,
    user_id       TEXT    NOT NULL,
    joined_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
-- The user's chat list is derived from members through this index.
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, chat_id);
CREATE TABLE IF NOT EXISTS messages (
    chat_id        INTEGER NOT NULL,
    message_id     INTEGER NOT NULL,
    sender_id      TEXT    NOT NULL,
    client_msg_id  TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    sent_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (chat_id, message_id),
    UNIQUE (chat_id, sender_id, client_msg_id)
) WITHOUT ROWID;
-- Each member's read and delivered markers (receipts); added after the first release, so
-- created here on open for databases that predate it.
CREATE TABLE IF NOT EXISTS read_state (
    chat_id          INTEGER NOT NULL,
    user_id          TEXT    NOT NULL,
    read_up_to       INTEGER,
    delivered_up_to  INTEGER,
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
";

/// Columns added after the first release, each added to an existing database only if missing
/// (checked with `pragma table_info`): (table, column, definition).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Edits and deletes: the newest change of the chat, for catch-up.
    ("chats", "last_change_id", "INTEGER"),
    // NULL or 'member': a plain member; 'admin'. The owner is `chats.created_by`.
    ("members", "role", "TEXT"),
    ("messages", "edited_at_ms", "INTEGER"),
    ("messages", "deleted", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "change_id", "INTEGER"),
];

/// Created after [`ADDED_COLUMNS`]: a chat's changed messages by change id (only changed ones
/// are indexed), so that a changes page is one index range.
const ADDED_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS messages_by_change ON messages (chat_id, change_id)
    WHERE change_id IS NOT NULL;
";

/// Creates the schema and brings an older database up to date, in one immediate transaction
/// (several processes may race to do it).
fn create_schema(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    for (table, column, definition) in ADDED_COLUMNS {
        let present = tx
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !present {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition};"
            ))?;
        }
    }
    tx.execute_batch(ADDED_INDEXES)?;
    tx.commit()
}

/// [`MessageStore`] on a SQLite file.
pub struct SqliteStore {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    /// Inserts for the group-commit writer thread; the thread ends when this is dropped.
    writes: mpsc::Sender<WriteJob>,
}

/// One message insert waiting for the writer thread, and where its answer goes.
struct WriteJob {
    message: Message,
    /// Commit only while this is more than [`COMMIT_ALLOWANCE`] away.
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Insert, StoreError>>,
}

/// How long before its deadline an insert must start committing; later, it is abandoned. The
/// commit itself (one fsync of the WAL) must take less for nothing to commit after the deadline.
pub const COMMIT_ALLOWANCE: Duration = Duration::from_millis(100);

impl WriteJob {
    fn too_late(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now + COMMIT_ALLOWANCE >= d)
    }
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    /// Idle connections; at most `options.connections` exist because the semaphore lets no more
    /// tasks in. A connection lost to a panic is reopened on demand.
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options and creates the
    /// schema.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let connections = options.connections.max(1);
        // The connections are opened (their pragmas run) and the schema is created on the
        // caller's thread; the pool's and the writer's threads set their own patience.
        busy::set_patience(options.busy_timeout);
        let mut first = open_connection(&path, &options)?;
        // Several processes may race to create the schema; IF NOT EXISTS and the column checks
        // inside an immediate transaction make that safe.
        create_schema(&mut first).map_err(|e| map_err(e, "creating the schema"))?;
        let acquire_timeout = options.acquire_timeout;
        let writer_conn = open_connection(&path, &options)?;
        let (writes, queue) = mpsc::channel(options.write_queue.max(1));
        let batch_max = options.group_commit_max.max(1);
        let busy_timeout = options.busy_timeout;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                busy::set_patience(busy_timeout);
                writer_thread(writer_conn, queue, batch_max)
            })
            .map_err(|e| StoreError::Internal(format!("starting the SQLite writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                idle: Mutex::new(vec![first]),
            }),
            permits: Arc::new(Semaphore::new(connections)),
            acquire_timeout,
            writes,
        })
    }

    /// Runs `f` with a connection on the blocking pool.
    async fn with_conn<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        // The permit moves into the blocking task: a cancelled request must not free its slot
        // while its statement is still running.
        let permit =
            tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "{what}: no SQLite connection free within {:?} (too much work in flight)",
                        self.acquire_timeout
                    ))
                })?
                .map_err(|_| StoreError::Internal("SQLite store closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            busy::set_patience(inner.options.busy_timeout);
            let pooled = inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path, &inner.options)?,
            };
            let out = f(&mut conn).map_err(|e| map_err(e, what));
            inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Internal(format!("{what}: SQLite task failed: {e}")))?
    }

    /// Queues one insert for the writer thread and waits for its group to commit.
    async fn insert(
        &self,
        message: &Message,
        deadline: Option<Instant>,
    ) -> Result<Insert, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            message: message.clone(),
            deadline,
            reply,
        };
        match tokio::time::timeout(self.acquire_timeout, self.writes.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Internal("SQLite writer thread ended".into())),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                "insert_message: the write queue stayed full for {:?} (disk too slow for the load)",
                self.acquire_timeout
            )))
            }
        }
        // The job is queued: its outcome arrives after its group commits, whatever happens to
        // this request, so waiting here is bounded by the writer's own busy timeout.
        answer
            .await
            .map_err(|_| StoreError::Internal("SQLite writer thread ended".into()))?
    }
}

/// The group-commit loop: waits for one insert, takes every other one already queued (up to
/// `batch_max`), writes them all in one IMMEDIATE transaction and answers each after the commit.
fn writer_thread(mut conn: Connection, mut queue: mpsc::Receiver<WriteJob>, batch_max: usize) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(batch_max);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!(crate::telemetry::SQLITE_GROUP_COMMIT_SIZE).record(batch.len() as f64);
        match write_group(&mut conn, &batch) {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                let e = map_err(e, "insert_message");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(match &e {
                        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                        StoreError::Internal(m) => StoreError::Internal(m.clone()),
                    }));
                }
            }
        }
    }
}

/// Writes a group in one transaction. A message that fails on its own (say, an id out of range)
/// is rolled back to its savepoint and answered with its error; the others still commit. An
/// insert whose deadline is too close when the group is about to commit is abandoned: the
/// transaction is rolled back and written again without it (each round abandons at least one
/// insert or commits, so this ends).
fn write_group(
    conn: &mut Connection,
    batch: &[WriteJob],
) -> rusqlite::Result<Vec<Result<Insert, StoreError>>> {
    let mut abandoned: Vec<bool> = batch.iter().map(|_| false).collect();
    loop {
        // IMMEDIATE takes the write lock up front: concurrent duplicates (from any process) are
        // serialized, and the loser sees the winner's row in its own transaction.
        let asked = Instant::now();
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = Instant::now();
        metrics::histogram!(crate::telemetry::SQLITE_WRITE_LOCK_WAIT_SECONDS)
            .record(now.duration_since(asked).as_secs_f64());
        let mut results = Vec::with_capacity(batch.len());
        for (job, abandoned) in batch.iter().zip(abandoned.iter_mut()) {
            *abandoned |= job.too_late(now);
            if *abandoned {
                results.push(Err(past_deadline()));
                continue;
            }
            let mut sp = tx.savepoint()?;
            match insert_one(&sp, &job.message) {
                Ok(insert) => {
                    sp.commit()?;
                    results.push(Ok(insert));
                }
                Err(e) => {
                    sp.rollback()?;
                    results.push(Err(map_err(e, "insert_message")));
                }
            }
        }
        // Tests delay the commit here (`FAILPOINTS=store::sqlite_before_commit=sleep(MS)`).
        fail::fail_point!("store::sqlite_before_commit");
        let now = Instant::now();
        let mut late = false;
        for (job, abandoned) in batch.iter().zip(abandoned.iter_mut()) {
            if !*abandoned && job.too_late(now) {
                *abandoned = true;
                late = true;
            }
        }
        if late {
            tx.rollback()?;
            continue;
        }
        tx.commit()?;
        return Ok(results);
    }
}

fn past_deadline() -> StoreError {
    StoreError::Unavailable(format!(
        "insert_message: abandoned before commit, the request's deadline was less than \
         {COMMIT_ALLOWANCE:?} away (store too slow for API_REQUEST_TIMEOUT)"
    ))
}

fn insert_one(tx: &Connection, m: &Message) -> rusqlite::Result<Insert> {
    let chat_id = stored_id(m.chat_id, "chat id")?;
    let message_id = stored_id(m.message_id, "message id")?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages (chat_id, message_id, sender_id, client_msg_id, body, sent_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (chat_id, sender_id, client_msg_id) DO NOTHING",
        )?
        .execute(params![
            chat_id,
            message_id,
            m.sender_id,
            m.client_msg_id,
            m.body,
            m.sent_at_ms as i64
        ])?;
    if inserted == 1 {
        // Replicas' clocks differ, so a later write may carry a lower id: keep the max.
        tx.prepare_cached(
            "UPDATE chats SET last_message_id = ?2
             WHERE chat_id = ?1 AND (last_message_id IS NULL OR last_message_id < ?2)",
        )?
        .execute(params![chat_id, message_id])?;
        Ok(Insert::Created(m.clone()))
    } else {
        let original = tx
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE chat_id = ?1 AND sender_id = ?2 AND client_msg_id = ?3"
            ))?
            .query_row(
                params![chat_id, m.sender_id, m.client_msg_id],
                message_from_row,
            )?;
        Ok(Insert::Duplicate(original))
    }
}

fn open_connection(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| map_err(e, "opening the database"))?;
    busy::install(&conn).map_err(|e| map_err(e, "setting the busy handler"))?;
    let synchronous = if options.fsync_each_commit {
        "FULL"
    } else {
        "NORMAL"
    };
    // journal_mode returns a row, so it is read rather than executed.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| map_err(e, "enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{}: SQLite refused WAL mode (got {mode}); is the file on a network file system?",
            path.display()
        )));
    }
    // secure_delete=FAST zeroes a deleted message's body where that costs no extra I/O, so that
    // the text does not linger in the database pages (docs/PROTOCOL.md, "Edit and delete").
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; PRAGMA foreign_keys=OFF; PRAGMA secure_delete=FAST;"
    ))
    .map_err(|e| map_err(e, "setting pragmas"))?;
    Ok(conn)
}

/// Busy, locked and I/O conditions are transient or operational (503); the rest are bugs.
fn map_err(e: rusqlite::Error, what: &str) -> StoreError {
    let transient = match &e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
        ),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(format!("{what}: {e}"))
    } else {
        StoreError::Internal(format!("{what}: {e}"))
    }
}

/// Ids are stored as SQLite's signed 64-bit integers. Generated ids stay below 2^63 for decades;
/// larger values can only come from clients (cursors, unknown chat ids) and match nothing.
fn sql_id(id: Id) -> Option<i64> {
    i64::try_from(id.0).ok()
}

fn stored_id(id: Id, what: &str) -> rusqlite::Result<i64> {
    sql_id(id).ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure(format!("{what} {id} exceeds 2^63-1").into())
    })
}

fn row_id(v: i64) -> Id {
    Id(v as u64)
}

fn chat_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Chat> {
    Ok(Chat {
        chat_id: row_id(r.get(0)?),
        title: r.get(1)?,
        created_by: r.get(2)?,
        created_at_ms: r.get::<_, i64>(3)? as u64,
        last_message_id: r.get::<_, Option<i64>>(4)?.map(row_id),
        last_change_id: r.get::<_, Option<i64>>(5)?.map(row_id),
    })
}

const CHAT_COLUMNS: &str =
    "chat_id, title, created_by, created_at_ms, last_message_id, last_change_id";

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        chat_id: row_id(r.get(0)?),
        message_id: row_id(r.get(1)?),
        sender_id: r.get(2)?,
        client_msg_id: r.get(3)?,
        body: r.get(4)?,
        sent_at_ms: r.get::<_, i64>(5)? as u64,
        edited_at: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        deleted: r.get::<_, i64>(7)? != 0,
        change_id: r.get::<_, Option<i64>>(8)?.map(row_id),
    })
}

const MESSAGE_COLUMNS: &str = "chat_id, message_id, sender_id, client_msg_id, body, sent_at_ms, \
     edited_at_ms, deleted, change_id";

/// One message by key, in a transaction or not.
fn message_by_key(conn: &Connection, chat: i64, message: i64) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND message_id = ?2"
    ))?
    .query_row(params![chat, message], message_from_row)
    .optional()
}

/// The edit or delete of [`MessageStore::change_message`], in one immediate transaction that
/// is rolled back instead of committed when `deadline` is less than [`COMMIT_ALLOWANCE`] away.
fn change_one(
    conn: &mut Connection,
    chat: i64,
    message: i64,
    change: &Change,
    change_id: Id,
    deadline: Instant,
) -> rusqlite::Result<Result<Changed, StoreError>> {
    let cid = stored_id(change_id, "change id")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(current) = message_by_key(&tx, chat, message)? else {
        return Ok(Ok(Changed::NotFound));
    };
    match change {
        Change::Edit { body } => {
            if current.deleted {
                return Ok(Ok(Changed::Deleted(current)));
            }
            if current.body == *body {
                return Ok(Ok(Changed::Unchanged(current)));
            }
            tx.prepare_cached(
                "UPDATE messages SET body = ?3, edited_at_ms = ?4, change_id = ?5
                 WHERE chat_id = ?1 AND message_id = ?2",
            )?
            .execute(params![
                chat,
                message,
                body,
                change_id.unix_ms() as i64,
                cid
            ])?;
        }
        Change::Delete => {
            if current.deleted {
                return Ok(Ok(Changed::Unchanged(current)));
            }
            tx.prepare_cached(
                "UPDATE messages SET body = '', deleted = 1, change_id = ?3
                 WHERE chat_id = ?1 AND message_id = ?2",
            )?
            .execute(params![chat, message, cid])?;
        }
    }
    // Concurrent changes may commit out of id order: keep the max, like last_message_id.
    tx.prepare_cached(
        "UPDATE chats SET last_change_id = ?2
         WHERE chat_id = ?1 AND (last_change_id IS NULL OR last_change_id < ?2)",
    )?
    .execute(params![chat, cid])?;
    let changed = message_by_key(&tx, chat, message)?;
    if Instant::now() + COMMIT_ALLOWANCE >= deadline {
        tx.rollback()?;
        return Ok(Err(StoreError::Unavailable(format!(
            "change_message: abandoned before commit, the request's deadline was less than \
             {COMMIT_ALLOWANCE:?} away"
        ))));
    }
    tx.commit()?;
    Ok(Ok(match changed {
        Some(m) => Changed::Applied(m),
        None => Changed::NotFound,
    }))
}

/// The upsert that moves one marker forward only: the `WHERE` of the conflict branch leaves a
/// higher or equal marker alone, and SQLite then reports no change.
fn advance_marker_sql(marker: Marker) -> &'static str {
    match marker {
        Marker::Read => {
            "INSERT INTO read_state (chat_id, user_id, read_up_to) VALUES (?1, ?2, ?3)
             ON CONFLICT (chat_id, user_id) DO UPDATE SET read_up_to = excluded.read_up_to
             WHERE read_up_to IS NULL OR read_up_to < excluded.read_up_to"
        }
        Marker::Delivered => {
            "INSERT INTO read_state (chat_id, user_id, delivered_up_to) VALUES (?1, ?2, ?3)
             ON CONFLICT (chat_id, user_id) DO UPDATE SET delivered_up_to = excluded.delivered_up_to
             WHERE delivered_up_to IS NULL OR delivered_up_to < excluded.delivered_up_to"
        }
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_chat(&self, chat: &Chat, members: &[String]) -> Result<(), StoreError> {
        let chat = chat.clone();
        let members = members.to_vec();
        self.with_conn("create_chat", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO chats (chat_id, title, created_by, created_at_ms, last_message_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    stored_id(chat.chat_id, "chat id")?,
                    chat.title,
                    chat.created_by,
                    chat.created_at_ms as i64,
                    chat.last_message_id
                        .map(|i| stored_id(i, "message id"))
                        .transpose()?,
                ],
            )?;
            {
                let mut add = tx.prepare_cached(
                    "INSERT OR IGNORE INTO members (chat_id, user_id, joined_at_ms)
                     VALUES (?1, ?2, ?3)",
                )?;
                for m in &members {
                    add.execute(params![chat.chat_id.0 as i64, m, chat.created_at_ms as i64])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn get_chat(&self, chat_id: Id) -> Result<Option<Chat>, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(None);
        };
        self.with_conn("get_chat", move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {CHAT_COLUMNS} FROM chats WHERE chat_id = ?1"
            ))?
            .query_row([id], chat_from_row)
            .optional()
        })
        .await
    }

    async fn user_chats(
        &self,
        user: &str,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<Chat>, StoreError> {
        let user = user.to_string();
        let Some(after) = super::stored_chat_cursor(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn("user_chats", move |conn| {
            // The page is a range of `members_by_user` (user_id, chat_id); chat ids are
            // time-ordered like message ids, so a chat without messages sorts by its creation.
            let mut stmt = conn.prepare_cached(
                "SELECT c.chat_id, c.title, c.created_by, c.created_at_ms, c.last_message_id,
                        c.last_change_id
                 FROM (SELECT chat_id FROM members WHERE user_id = ?1 AND chat_id > ?2
                       ORDER BY chat_id LIMIT ?3) m
                 JOIN chats c ON c.chat_id = m.chat_id
                 ORDER BY COALESCE(c.last_message_id, c.chat_id) DESC",
            )?;
            let rows = stmt.query_map(params![user, after, limit], chat_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn add_members(&self, chat_id: Id, users: &[String]) -> Result<(), StoreError> {
        let users = users.to_vec();
        let now = shared::ids::now_unix_ms() as i64;
        self.with_conn("add_members", move |conn| {
            let id = stored_id(chat_id, "chat id")?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut add = tx.prepare_cached(
                    "INSERT OR IGNORE INTO members (chat_id, user_id, joined_at_ms)
                     VALUES (?1, ?2, ?3)",
                )?;
                for u in &users {
                    add.execute(params![id, u, now])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn remove_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(false);
        };
        let user = user.to_string();
        self.with_conn("remove_member", move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2")?
                .execute(params![id, user])?;
            Ok(n > 0)
        })
        .await
    }

    async fn is_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(false);
        };
        let user = user.to_string();
        self.with_conn("is_member", move |conn| {
            conn.prepare_cached("SELECT 1 FROM members WHERE chat_id = ?1 AND user_id = ?2")?
                .exists(params![id, user])
        })
        .await
    }

    async fn members(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(Vec::new());
        };
        self.with_conn("members", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT user_id FROM members WHERE chat_id = ?1 ORDER BY user_id",
            )?;
            let rows = stmt.query_map([id], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn insert_message(&self, message: &Message) -> Result<Insert, StoreError> {
        self.insert(message, None).await
    }

    async fn insert_message_before(
        &self,
        message: &Message,
        deadline: Instant,
    ) -> Result<Insert, StoreError> {
        self.insert(message, Some(deadline)).await
    }

    async fn history(
        &self,
        chat_id: Id,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let Some(chat) = sql_id(chat_id) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // (bound, ascending): a bound above 2^63-1 means "no upper bound" for Before and
        // "nothing" for After.
        let (sql, bound, ascending) = match cursor {
            Cursor::Latest => ("message_id <= ?2", i64::MAX, false),
            Cursor::Before(id) => match sql_id(id) {
                Some(b) => ("message_id < ?2", b, false),
                None => ("message_id <= ?2", i64::MAX, false),
            },
            Cursor::After(id) => match sql_id(id) {
                Some(a) => ("message_id > ?2", a, true),
                None => return Ok(Vec::new()),
            },
        };
        let query = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND {sql}
             ORDER BY message_id {} LIMIT ?3",
            if ascending { "ASC" } else { "DESC" }
        );
        self.with_conn("history", move |conn| {
            let mut stmt = conn.prepare_cached(&query)?;
            let rows = stmt.query_map(params![chat, bound, limit], message_from_row)?;
            let mut out: Vec<Message> = rows.collect::<rusqlite::Result<_>>()?;
            if !ascending {
                out.reverse();
            }
            Ok(out)
        })
        .await
    }

    async fn advance_marker(
        &self,
        chat_id: Id,
        user: &str,
        marker: Marker,
        message_id: Id,
    ) -> Result<bool, StoreError> {
        let user = user.to_string();
        self.with_conn("advance_marker", move |conn| {
            let changed = conn
                .prepare_cached(advance_marker_sql(marker))?
                .execute(params![
                    stored_id(chat_id, "chat id")?,
                    user,
                    stored_id(message_id, "message id")?
                ])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn markers(&self, chat_id: Id) -> Result<Vec<Markers>, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(Vec::new());
        };
        self.with_conn("markers", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT user_id, read_up_to, delivered_up_to FROM read_state
                 WHERE chat_id = ?1 ORDER BY user_id",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(Markers {
                    user_id: r.get(0)?,
                    read_up_to: r.get::<_, Option<i64>>(1)?.map(row_id),
                    delivered_up_to: r.get::<_, Option<i64>>(2)?.map(row_id),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn get_message(
        &self,
        chat_id: Id,
        message_id: Id,
    ) -> Result<Option<Message>, StoreError> {
        let (Some(chat), Some(message)) = (sql_id(chat_id), sql_id(message_id)) else {
            return Ok(None);
        };
        self.with_conn("get_message", move |conn| {
            message_by_key(conn, chat, message)
        })
        .await
    }

    async fn read_markers(
        &self,
        user: &str,
        chat_ids: &[Id],
    ) -> Result<HashMap<Id, Id>, StoreError> {
        let user = user.to_string();
        let ids: Vec<(Id, i64)> = chat_ids
            .iter()
            .filter_map(|&c| sql_id(c).map(|s| (c, s)))
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.with_conn("read_markers", move |conn| {
            // Point reads by primary key on one connection: one statement per chat, no scan.
            let mut stmt = conn.prepare_cached(
                "SELECT read_up_to FROM read_state WHERE chat_id = ?1 AND user_id = ?2",
            )?;
            let mut out = HashMap::with_capacity(ids.len());
            for (chat, key) in ids {
                let marker: Option<Option<i64>> = stmt
                    .query_row(params![key, user], |r| r.get(0))
                    .optional()?;
                if let Some(Some(m)) = marker {
                    out.insert(chat, row_id(m));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn count_unread(
        &self,
        chat_id: Id,
        user: &str,
        after: Option<Id>,
        scan_max: usize,
    ) -> Result<Unread, StoreError> {
        let Some(chat) = sql_id(chat_id) else {
            return Ok(Unread {
                count: 0,
                complete: true,
            });
        };
        let Some(after) = sql_id(after.unwrap_or(Id(0))) else {
            return Ok(Unread {
                count: 0,
                complete: true,
            });
        };
        let user = user.to_string();
        let limit = i64::try_from(scan_max.saturating_add(1)).unwrap_or(i64::MAX);
        self.with_conn("count_unread", move |conn| {
            // A range of the primary key, at most `scan_max + 1` rows, reading only who sent each.
            let mut stmt = conn.prepare_cached(
                "SELECT sender_id = ?3 FROM messages WHERE chat_id = ?1 AND message_id > ?2
                 ORDER BY message_id ASC LIMIT ?4",
            )?;
            let own: Vec<bool> = stmt
                .query_map(params![chat, after, user, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Unread {
                count: own.iter().take(scan_max).filter(|own| !**own).count(),
                complete: own.len() <= scan_max,
            })
        })
        .await
    }

    async fn change_message(
        &self,
        chat_id: Id,
        message_id: Id,
        change: &Change,
        change_id: Id,
        deadline: Instant,
    ) -> Result<Changed, StoreError> {
        let (Some(chat), Some(message)) = (sql_id(chat_id), sql_id(message_id)) else {
            return Ok(Changed::NotFound);
        };
        let change = change.clone();
        self.with_conn("change_message", move |conn| {
            change_one(conn, chat, message, &change, change_id, deadline)
        })
        .await?
    }

    async fn changes(
        &self,
        chat_id: Id,
        after: Id,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        let (Some(chat), Some(after_key)) = (sql_id(chat_id), sql_id(after)) else {
            return Ok(ChangesPage::default());
        };
        let wanted = limit;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn("changes", move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND change_id > ?2
                 ORDER BY change_id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![chat, after_key, limit], message_from_row)?;
            let messages: Vec<Message> = rows.collect::<rusqlite::Result<_>>()?;
            // One row per changed message, at its newest change.
            Ok(ChangesPage {
                last: messages.last().and_then(|m| m.change_id),
                full: wanted > 0 && messages.len() >= wanted,
                messages,
            })
        })
        .await
    }

    async fn role(&self, chat_id: Id, user: &str) -> Result<Option<Role>, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(None);
        };
        let user = user.to_string();
        self.with_conn("role", move |conn| {
            let row: Option<(Option<String>, String)> = conn
                .prepare_cached(
                    "SELECT m.role, c.created_by FROM members m JOIN chats c ON c.chat_id = m.chat_id
                     WHERE m.chat_id = ?1 AND m.user_id = ?2",
                )?
                .query_row(params![id, user], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(row.map(|(role, creator)| {
                if creator == user {
                    Role::Owner
                } else {
                    Role::from_stored(role.as_deref())
                }
            }))
        })
        .await
    }

    async fn set_role(&self, chat_id: Id, user: &str, role: Role) -> Result<bool, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(false);
        };
        let user = user.to_string();
        self.with_conn("set_role", move |conn| {
            let n = conn
                .prepare_cached("UPDATE members SET role = ?3 WHERE chat_id = ?1 AND user_id = ?2")?
                .execute(params![id, user, role.as_str()])?;
            Ok(n > 0)
        })
        .await
    }

    async fn admins(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        let Some(id) = sql_id(chat_id) else {
            return Ok(Vec::new());
        };
        self.with_conn("admins", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT user_id FROM members WHERE chat_id = ?1 AND role = 'admin' ORDER BY user_id",
            )?;
            let rows = stmt.query_map([id], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn("ping", |conn| {
            conn.query_row("SELECT count(*) FROM chats WHERE chat_id = 0", [], |_| {
                Ok(())
            })
        })
        .await
    }
}

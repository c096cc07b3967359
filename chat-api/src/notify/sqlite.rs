//! The notification queue of embedded mode: two tables of the embedded SQLite file, on a
//! connection of their own. A claim is a lease (`claimed_until_ms`): entries whose lease ran out
//! (the process died) are claimed again, after a restart too. One process uses the queue; the
//! entry count is read at open and kept in memory, so the cap costs no query per send.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, Connection};
use shared::Id;

use super::{Claimed, Entry, NotifyQueue, Pushed, QueueError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notify_queue (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id           TEXT    NOT NULL,
    chat_id           INTEGER NOT NULL,
    message_id        INTEGER NOT NULL,
    preview           TEXT    NOT NULL,
    enqueued_ms       INTEGER NOT NULL,
    claimed_until_ms  INTEGER NOT NULL DEFAULT 0,
    -- A fan-out retried after a partial failure queues the same entry again: kept once.
    UNIQUE (user_id, message_id)
);
CREATE INDEX IF NOT EXISTS notify_queue_claimable ON notify_queue (claimed_until_ms, id);
CREATE TABLE IF NOT EXISTS notify_dead (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT    NOT NULL,
    chat_id      INTEGER NOT NULL,
    message_id   INTEGER NOT NULL,
    preview      TEXT    NOT NULL,
    enqueued_ms  INTEGER NOT NULL,
    failed_ms    INTEGER NOT NULL,
    reason       TEXT    NOT NULL
);
";

/// Ids per statement (SQLite's bound-parameter limit is far above).
const IDS_PER_STATEMENT: usize = 500;

pub struct SqliteQueue {
    state: Arc<Mutex<State>>,
    cap: usize,
    claim_idle: Duration,
}

struct State {
    conn: Connection,
    /// Rows of `notify_queue`.
    len: usize,
}

fn unavailable(e: rusqlite::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

impl SqliteQueue {
    /// Opens the queue tables in the SQLite file at `path` (created if missing).
    pub fn open(
        path: impl AsRef<Path>,
        cap: usize,
        claim_idle: Duration,
    ) -> Result<SqliteQueue, QueueError> {
        let conn = Connection::open(path).map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(unavailable)?;
        // WAL is the file's persistent mode (set by the store); FULL: a queued entry survives a
        // power loss like the message it announces.
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let len: i64 = conn
            .query_row("SELECT COUNT(*) FROM notify_queue", [], |r| r.get(0))
            .map_err(unavailable)?;
        Ok(SqliteQueue {
            state: Arc::new(Mutex::new(State {
                conn,
                len: len as usize,
            })),
            cap,
            claim_idle,
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, QueueError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || f(&mut state.lock()))
            .await
            .map_err(|e| QueueError::Unavailable(format!("queue task: {e}")))?
            .map_err(unavailable)
    }

    fn lease_until(&self) -> i64 {
        (shared::ids::now_unix_ms() + self.claim_idle.as_millis() as u64) as i64
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

#[async_trait]
impl NotifyQueue for SqliteQueue {
    async fn push(&self, entries: Vec<Entry>) -> Result<Pushed, QueueError> {
        let cap = self.cap;
        self.with(move |s| {
            let tx = s.conn.transaction()?;
            let mut pushed = Pushed::default();
            let mut added = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO notify_queue
                     (user_id, chat_id, message_id, preview, enqueued_ms) VALUES (?, ?, ?, ?, ?)",
                )?;
                for e in &entries {
                    if s.len + added >= cap {
                        pushed.full += 1;
                        continue;
                    }
                    added += insert.execute(params![
                        e.user_id,
                        e.chat_id.0 as i64,
                        e.message_id.0 as i64,
                        e.preview,
                        e.enqueued_ms as i64
                    ])?;
                    pushed.queued += 1;
                }
            }
            tx.commit()?;
            s.len += added;
            Ok(pushed)
        })
        .await
    }

    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, QueueError> {
        let until = self.lease_until();
        let now = shared::ids::now_unix_ms() as i64;
        let mut claimed = self
            .with(move |s| {
                let mut stmt = s.conn.prepare_cached(
                    "UPDATE notify_queue SET claimed_until_ms = ?1 WHERE id IN
                       (SELECT id FROM notify_queue WHERE claimed_until_ms <= ?2 ORDER BY id LIMIT ?3)
                     RETURNING id, user_id, chat_id, message_id, preview, enqueued_ms",
                )?;
                let rows = stmt.query_map(params![until, now, max as i64], |r| {
                    Ok(Claimed {
                        id: r.get::<_, i64>(0)?.to_string(),
                        entry: Entry {
                            user_id: r.get(1)?,
                            chat_id: Id(r.get::<_, i64>(2)? as u64),
                            message_id: Id(r.get::<_, i64>(3)? as u64),
                            preview: r.get(4)?,
                            enqueued_ms: r.get::<_, i64>(5)? as u64,
                        },
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        claimed.sort_by_key(|c| c.id.parse::<i64>().unwrap_or(i64::MAX));
        Ok(claimed)
    }

    async fn renew(&self, ids: &[String]) -> Result<(), QueueError> {
        let until = self.lease_until();
        let ids = ids.to_vec();
        self.with(move |s| {
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let sql = format!(
                    "UPDATE notify_queue SET claimed_until_ms = ? WHERE id IN ({})",
                    placeholders(chunk.len())
                );
                let mut values: Vec<rusqlite::types::Value> = vec![until.into()];
                values.extend(chunk.iter().map(|id| id_value(id)));
                s.conn.execute(&sql, params_from_iter(values))?;
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, ids: &[String]) -> Result<(), QueueError> {
        let ids = ids.to_vec();
        self.with(move |s| {
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let sql = format!(
                    "UPDATE notify_queue SET claimed_until_ms = 0 WHERE id IN ({})",
                    placeholders(chunk.len())
                );
                s.conn
                    .execute(&sql, params_from_iter(chunk.iter().map(|id| id_value(id))))?;
            }
            Ok(())
        })
        .await
    }

    async fn ack(&self, ids: &[String]) -> Result<(), QueueError> {
        let ids = ids.to_vec();
        self.with(move |s| {
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let sql = format!(
                    "DELETE FROM notify_queue WHERE id IN ({})",
                    placeholders(chunk.len())
                );
                let n = s
                    .conn
                    .execute(&sql, params_from_iter(chunk.iter().map(|id| id_value(id))))?;
                s.len = s.len.saturating_sub(n);
            }
            Ok(())
        })
        .await
    }

    async fn dead_letter(&self, entries: &[Claimed], reason: &str) -> Result<(), QueueError> {
        let (entries, reason, cap) = (entries.to_vec(), reason.to_string(), self.cap as i64);
        let now = shared::ids::now_unix_ms() as i64;
        self.with(move |s| {
            let tx = s.conn.transaction()?;
            let mut removed = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO notify_dead
                     (user_id, chat_id, message_id, preview, enqueued_ms, failed_ms, reason)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )?;
                let mut delete = tx.prepare_cached("DELETE FROM notify_queue WHERE id = ?")?;
                for c in &entries {
                    // Only entries still queued: one acknowledged meanwhile is not dead.
                    if delete.execute([id_value(&c.id)])? == 0 {
                        continue;
                    }
                    removed += 1;
                    let e = &c.entry;
                    insert.execute(params![
                        e.user_id,
                        e.chat_id.0 as i64,
                        e.message_id.0 as i64,
                        e.preview,
                        e.enqueued_ms as i64,
                        now,
                        reason
                    ])?;
                }
                // The dead letters are capped too: the oldest go first.
                tx.execute(
                    "DELETE FROM notify_dead WHERE id <= (SELECT MAX(id) FROM notify_dead) - ?",
                    [cap],
                )?;
            }
            tx.commit()?;
            s.len = s.len.saturating_sub(removed);
            Ok(())
        })
        .await
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        Ok(self.state.lock().len as u64)
    }

    async fn dead_letters(&self) -> Result<u64, QueueError> {
        self.with(|s| {
            s.conn
                .query_row("SELECT COUNT(*) FROM notify_dead", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
        })
        .await
    }
}

/// A queue id as SQLite's integer (a foreign id matches nothing).
fn id_value(id: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Integer(id.parse::<i64>().unwrap_or(-1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        super::super::conformance::run_all(|name, cap, idle| {
            // Handles with the same name share one file, as replicas share a backend.
            let path = base.join(format!("{name}.db"));
            async move {
                Arc::new(SqliteQueue::open(&path, cap, idle).unwrap()) as Arc<dyn NotifyQueue>
            }
        })
        .await;
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_and_an_expired_lease_is_claimed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let idle = Duration::from_millis(200);
        let q = SqliteQueue::open(&path, 10, idle).unwrap();
        let e = Entry {
            user_id: "bob".into(),
            chat_id: Id(1),
            message_id: Id(2),
            preview: "hi".into(),
            enqueued_ms: 3,
        };
        q.push(vec![e.clone(), e.clone()]).await.unwrap();
        assert_eq!(q.backlog().await.unwrap(), 1, "the same entry is kept once");
        assert_eq!(q.claim(10).await.unwrap().len(), 1);
        drop(q);
        // As after a crash: the reopened queue counts the entry and takes it once the lease ends.
        let q = SqliteQueue::open(&path, 10, idle).unwrap();
        assert_eq!(q.backlog().await.unwrap(), 1);
        assert!(q.claim(10).await.unwrap().is_empty(), "still leased");
        tokio::time::sleep(idle + Duration::from_millis(50)).await;
        let again = q.claim(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].entry, e);
    }
}

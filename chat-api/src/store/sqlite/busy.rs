//! Waiting for SQLite's write lock: short polls instead of SQLite's own back-off.
//!
//! SQLite's busy handler (the one `busy_timeout` installs) sleeps 1, 2, 5, 10, 15, 20, 25 … ms
//! between tries. Two chat-api processes sharing one file take turns at the write lock at every
//! group commit; a lock held for one commit (about a millisecond on the benchmark machine) cost
//! the other process's writer up to the next step of that ladder, and its whole group of sends
//! waited with it: that was the tail of the send latency (docs/BENCHMARKS.md, "SQLite's write
//! lock"). Here a waiter tries again every 50 µs for its first millisecond, then backs off to one
//! try per millisecond, and gives up after its patience (the store's `busy_timeout`) as SQLite's
//! handler would, with `SQLITE_BUSY` (answered as 503).
//!
//! The handler is a plain function (SQLite calls it with the number of tries so far), so the
//! patience and the start of the current wait are kept per thread: every thread that runs
//! statements sets its store's patience first ([`set_patience`]).

use std::cell::Cell;
use std::time::{Duration, Instant};

use rusqlite::Connection;

thread_local! {
    static PATIENCE: Cell<Duration> = const { Cell::new(Duration::from_secs(5)) };
    static WAIT_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Polls for the first millisecond of a wait, at this interval.
const POLL_FIRST: Duration = Duration::from_micros(50);
/// Tries at [`POLL_FIRST`] before backing off.
const POLL_FIRST_TRIES: i32 = 20;
/// The longest pause between tries.
const POLL_MAX: Duration = Duration::from_millis(1);

/// Installs the handler on `conn` (it replaces any `busy_timeout`).
pub(super) fn install(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(on_busy))
}

/// How long statements run on this thread wait for a lock before failing with `SQLITE_BUSY`.
pub(super) fn set_patience(patience: Duration) {
    PATIENCE.with(|p| p.set(patience));
}

/// SQLite's busy callback: `true` to try again, `false` to fail with `SQLITE_BUSY`.
fn on_busy(tries: i32) -> bool {
    let now = Instant::now();
    let started = if tries == 0 {
        WAIT_STARTED.with(|s| s.set(Some(now)));
        now
    } else {
        WAIT_STARTED.with(|s| s.get()).unwrap_or(now)
    };
    if now.duration_since(started) >= PATIENCE.with(|p| p.get()) {
        return false;
    }
    std::thread::sleep(pause(tries));
    true
}

/// The pause after `tries` failed tries: [`POLL_FIRST`] for the first [`POLL_FIRST_TRIES`], then
/// doubling up to [`POLL_MAX`].
fn pause(tries: i32) -> Duration {
    if tries < POLL_FIRST_TRIES {
        return POLL_FIRST;
    }
    let doublings = (tries - POLL_FIRST_TRIES + 1).min(8) as u32;
    (POLL_FIRST * 2u32.pow(doublings)).min(POLL_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_start_short_and_are_capped() {
        assert_eq!(pause(0), POLL_FIRST);
        assert_eq!(pause(POLL_FIRST_TRIES - 1), POLL_FIRST);
        assert_eq!(pause(POLL_FIRST_TRIES), POLL_FIRST * 2);
        assert_eq!(pause(POLL_FIRST_TRIES + 1), POLL_FIRST * 4);
        assert_eq!(pause(i32::MAX), POLL_MAX);
        let first_ms: Duration = (0..POLL_FIRST_TRIES).map(pause).sum();
        assert_eq!(first_ms, Duration::from_millis(1));
    }

    /// A lock held by another connection: the handler polls until it is free, and gives up after
    /// the thread's patience.
    #[test]
    fn waits_for_a_released_lock_and_gives_up_after_its_patience() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x);")
            .unwrap();
        let waiter = Connection::open(&path).unwrap();
        install(&waiter).unwrap();

        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        set_patience(Duration::from_millis(30));
        let started = Instant::now();
        let err = waiter.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        let waited = started.elapsed();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        assert!(
            waited >= Duration::from_millis(30),
            "gave up after {waited:?}"
        );

        // Released 5 ms into the wait: taken within about one poll, not SQLite's next step.
        set_patience(Duration::from_secs(5));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            holder.execute_batch("COMMIT").unwrap();
        });
        let started = Instant::now();
        waiter.execute_batch("BEGIN IMMEDIATE").unwrap();
        let waited = started.elapsed();
        release.join().unwrap();
        waiter.execute_batch("COMMIT").unwrap();
        assert!(
            waited < Duration::from_millis(500),
            "took the lock after {waited:?}"
        );
    }
}

//! The store conformance suite and multi-process properties against the SQLite store on a
//! temp-dir file.

use std::sync::Arc;
use std::time::Duration;

use chat_api::store::sqlite::{SqliteOptions, SqliteStore};
use chat_api::store::{conformance, Cursor, Insert, MessageStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn MessageStore> =
        Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    tokio::time::timeout(Duration::from_secs(60), conformance::run_all(store))
        .await
        .expect("conformance suite took over 60 s");
}

/// Two stores on one file stand for two chat-api processes: concurrent duplicates across them
/// still store exactly one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_share_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let one: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let two: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let user = conformance::unique_user("u");
    let chat = conformance::new_chat(&one, std::slice::from_ref(&user)).await;
    assert!(two.is_member(chat.chat_id, &user).await.unwrap());

    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        let m = conformance::message(chat.chat_id, &user, "shared", &format!("try {i}"));
        tasks.push(tokio::spawn(async move { store.insert_message(&m).await }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    let created = results
        .iter()
        .filter(|r| matches!(r, Insert::Created(_)))
        .count();
    assert_eq!(created, 1);
    let stored = two.history(chat.chat_id, Cursor::Latest, 50).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(results.iter().all(|r| r.message() == &stored[0]));
}

/// A write lock held elsewhere (another process in a long transaction) past the busy timeout is
/// reported as Unavailable, not Internal, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_write_lock_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        ..SqliteOptions::default()
    };
    let store: Arc<dyn MessageStore> = Arc::new(SqliteStore::open_with(&path, options).unwrap());
    let user = conformance::unique_user("u");
    let chat = conformance::new_chat(&store, std::slice::from_ref(&user)).await;

    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let m = conformance::message(chat.chat_id, &user, "c1", "hello");
    let err = store.insert_message(&m).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    blocker.execute_batch("ROLLBACK").unwrap();

    assert!(store
        .history(chat.chat_id, Cursor::Latest, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.insert_message(&m).await.unwrap(),
        Insert::Created(_)
    ));
}

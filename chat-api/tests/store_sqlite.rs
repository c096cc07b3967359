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

/// A database written by the release before roles and edits (its exact schema, rows inserted
/// with plain SQL) opens, gains the new columns once, and serves the new operations: the
/// creator is owner, old messages can be edited and deleted, and a second open changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_roles_and_edits_is_upgraded_in_place() {
    use chat_api::store::{Change, Changed, Role};
    use shared::Id;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chats (chat_id INTEGER PRIMARY KEY, title TEXT,
                 created_by TEXT NOT NULL, created_at_ms INTEGER NOT NULL, last_message_id INTEGER);
             CREATE TABLE members (chat_id INTEGER NOT NULL, user_id TEXT NOT NULL,
                 joined_at_ms INTEGER NOT NULL, PRIMARY KEY (chat_id, user_id)) WITHOUT ROWID;
             CREATE INDEX members_by_user ON members (user_id, chat_id);
             CREATE TABLE messages (chat_id INTEGER NOT NULL, message_id INTEGER NOT NULL,
                 sender_id TEXT NOT NULL, client_msg_id TEXT NOT NULL, body TEXT NOT NULL,
                 sent_at_ms INTEGER NOT NULL, PRIMARY KEY (chat_id, message_id),
                 UNIQUE (chat_id, sender_id, client_msg_id)) WITHOUT ROWID;
             INSERT INTO chats VALUES (7, 'old', 'olga', 1, 400000000000);
             INSERT INTO members VALUES (7, 'olga', 1), (7, 'pete', 1);
             INSERT INTO messages VALUES (7, 400000000000, 'pete', 'c1', 'old text', 1);",
        )
        .unwrap();
    }
    for _ in 0..2 {
        let store: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).unwrap());
        assert_eq!(store.role(Id(7), "olga").await.unwrap(), Some(Role::Owner));
        assert_eq!(store.role(Id(7), "pete").await.unwrap(), Some(Role::Member));
        let chat = store.get_chat(Id(7)).await.unwrap().unwrap();
        assert_eq!(chat.last_message_id, Some(Id(400000000000)));
        let page = store.history(Id(7), Cursor::Latest, 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert!(page[0].body == "old text" || page[0].deleted, "{page:?}");
    }
    let store: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let later = std::time::Instant::now() + Duration::from_secs(30);
    let change = Id::first_at(shared::ids::now_unix_ms());
    let edited = store
        .change_message(
            Id(7),
            Id(400000000000),
            &Change::Edit { body: "new".into() },
            change,
            later,
        )
        .await
        .unwrap();
    assert!(
        matches!(edited, Changed::Applied(ref m) if m.body == "new"),
        "{edited:?}"
    );
    assert!(store.set_role(Id(7), "pete", Role::Admin).await.unwrap());
    assert_eq!(store.admins(Id(7)).await.unwrap(), vec!["pete".to_string()]);
    let columns: Vec<String> = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut st = conn
            .prepare("SELECT name FROM pragma_table_info('messages')")
            .unwrap();
        let names = st.query_map([], |r| r.get(0)).unwrap();
        names.map(Result::unwrap).collect()
    };
    assert_eq!(
        columns.iter().filter(|c| *c == "change_id").count(),
        1,
        "{columns:?}"
    );
}

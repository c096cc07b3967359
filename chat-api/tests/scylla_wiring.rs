//! Wiring tests of the ScyllaDB store against an in-process CQL server (kassandra) over a real
//! socket with the real driver: connection, the migrations' DDL and bookkeeping, prepare/execute of
//! the store's full-key statements, row and value mapping of every column type the store uses,
//! logged batches, paging of a whole partition, and the harness's refusal of what kassandra would
//! get wrong. Semantics (ranges, LWT, timestamps, ordering) are covered by `scylla_conformance.rs`
//! against a real ScyllaDB.

mod scylla_support;

use std::sync::Arc;
use std::time::Duration;

use chat_api::store::scylla::migrate::{self, MigrateError, Replication, REQUIRED_SCHEMA_VERSION};
use chat_api::store::scylla::rows::{self, ChatRow, MemberRow, MessageRow, UserChatRow};
use chat_api::store::scylla::{
    cql, membership_batch, membership_values, ScyllaConfig, ScyllaStore,
};
use futures_util::TryStreamExt;
use scylla::client::session::Session;
use scylla::response::PagingState;
use scylla_support::{refusal, CqlServer, Tables, REFUSED};
use shared::protocol::Message;
use shared::Id;

const KS: &str = "chat";

/// Bounds every test: a hung driver or server fails instead of stalling CI.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test finished within 20 s");
}

/// A server with the schema migrated and a session bound to the keyspace.
async fn migrated() -> (CqlServer, Session) {
    let server = CqlServer::start().await;
    let session = server.session().await;
    migrate::migrate(&session, KS, &Replication::parse("1").unwrap())
        .await
        .expect("migrations apply");
    session.use_keyspace(KS, false).await.expect("use keyspace");
    (server, session)
}

#[tokio::test]
async fn driver_connects_and_pings() {
    bounded(async {
        let server = CqlServer::start().await;
        let session = server.session().await;
        let ping = session.prepare(cql::PING).await.expect("prepare ping");
        let rows = session
            .execute_unpaged(&ping, ())
            .await
            .expect("ping")
            .into_rows_result()
            .unwrap();
        let (version,): (String,) = rows.single_row().expect("system.local has one row");
        assert!(!version.is_empty());
    })
    .await;
}

#[tokio::test]
async fn migrations_apply_once_and_are_recorded_with_checksums() {
    bounded(async {
        let server = CqlServer::start().await;
        let session = server.session().await;
        let repl = Replication::parse("1").unwrap();
        assert!(migrate::applied(&session, KS).await.unwrap().is_empty());

        let first = migrate::migrate(&session, KS, &repl).await.unwrap();
        assert_eq!(
            first.applied,
            (1..=REQUIRED_SCHEMA_VERSION).collect::<Vec<_>>()
        );
        assert!(first.already.is_empty());

        let applied = migrate::applied(&session, KS).await.unwrap();
        assert_eq!(applied.len(), migrate::MIGRATIONS.len());
        for (a, m) in applied.iter().zip(migrate::MIGRATIONS) {
            assert_eq!(
                (a.version, a.name.as_str()),
                (m.version, m.name),
                "recorded in order"
            );
            assert_eq!(a.checksum, migrate::checksum(m.cql));
        }

        let again = migrate::migrate(&session, KS, &repl).await.unwrap();
        assert!(again.applied.is_empty(), "nothing is applied twice");
        assert_eq!(again.already, first.applied);
        migrate::check_schema(&session, KS)
            .await
            .expect("schema is current");
    })
    .await;
}

#[tokio::test]
async fn serve_check_refuses_a_missing_or_older_schema_naming_migrate() {
    bounded(async {
        let server = CqlServer::start().await;
        let session = server.session().await;
        let err = migrate::check_schema(&session, KS).await.unwrap_err();
        assert!(
            matches!(err, MigrateError::Outdated { found: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chat-api migrate"), "{err}");

        migrate::migrate_to(&session, KS, &Replication::parse("1").unwrap(), 1)
            .await
            .unwrap();
        let err = migrate::check_schema(&session, KS).await.unwrap_err();
        assert!(
            matches!(err, MigrateError::Outdated { found: 1, required, .. } if required == REQUIRED_SCHEMA_VERSION),
            "{err}"
        );

        // The real connect path runs the same check before anything else.
        let config = ScyllaConfig::from_url(&format!("scylla://{}/{KS}", server.addr)).unwrap();
        let err = ScyllaStore::connect(&config).await.unwrap_err();
        assert!(err.to_string().contains("chat-api migrate"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn an_edited_applied_file_is_refused() {
    bounded(async {
        let (_server, session) = migrated().await;
        session
            .query_unpaged(
                migrate::INSERT_APPLIED.replace("{keyspace}", KS),
                (
                    migrate::COMPONENT,
                    2,
                    "0002_tables.cql",
                    "0000000000000000",
                    0_i64,
                ),
            )
            .await
            .unwrap();
        let err = migrate::migrate(&session, KS, &Replication::parse("1").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err, MigrateError::Edited { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("append-only"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn chat_rows_map_bigint_int_and_nullable_text() {
    bounded(async {
        let (_server, session) = migrated().await;
        let insert = session.prepare(cql::INSERT_CHAT).await.unwrap();
        let select = session.prepare(cql::SELECT_CHAT).await.unwrap();
        let big = rows::id_to_cql(Id(u64::MAX >> 1)).unwrap();
        session
            .execute_unpaged(
                &insert,
                (
                    big,
                    Some("tïtle ✓ 'quoted'"),
                    "alice@example.org",
                    1_700_000_000_123_i64,
                    42_i32,
                ),
            )
            .await
            .unwrap();
        session
            .execute_unpaged(&insert, (7_i64, None::<&str>, "bob", 0_i64, 0_i32))
            .await
            .unwrap();

        let read = |id: i64| {
            let select = &select;
            let session = &session;
            async move {
                session
                    .execute_unpaged(select, (id,))
                    .await
                    .unwrap()
                    .into_rows_result()
                    .unwrap()
                    .single_row::<ChatRow>()
                    .unwrap()
            }
        };
        assert_eq!(
            read(big).await,
            ChatRow {
                chat_id: big,
                title: Some("tïtle ✓ 'quoted'".into()),
                created_by: Some("alice@example.org".into()),
                created_at_ms: Some(1_700_000_000_123),
                first_bucket: Some(42),
                last_message_id: None,
            }
        );
        let small = read(7).await;
        assert_eq!(small.title, None, "a null text maps to None");
        assert_eq!(small.first_bucket, Some(0));
    })
    .await;
}

/// Messages are inserted by full key with the store's statement. kassandra cannot read the
/// `messages` table back faithfully (it ignores the DESC clustering order and reads a full-key
/// restriction as a range), so row mapping is checked on an ascending twin of the table with the
/// same columns, read by whole partition.
#[tokio::test]
async fn message_rows_map_and_the_bucket_is_part_of_the_key() {
    bounded(async {
        let (_server, session) = migrated().await;
        let insert = session.prepare(cql::INSERT_MESSAGE).await.unwrap();
        session
            .query_unpaged(
                "CREATE TABLE IF NOT EXISTS chat.messages_asc (chat_id bigint, bucket int, \
                 message_id bigint, sender_id text, client_msg_id text, body text, \
                 PRIMARY KEY ((chat_id, bucket), message_id))",
                (),
            )
            .await
            .unwrap();
        let insert_asc = session
            .prepare(cql::INSERT_MESSAGE.replace("INTO messages ", "INTO messages_asc "))
            .await
            .unwrap();
        let select_asc = session
            .prepare(
                "SELECT chat_id, message_id, sender_id, client_msg_id, body FROM messages_asc \
                 WHERE chat_id = ? AND bucket = ?",
            )
            .await
            .unwrap();

        let base = Id::first_at(shared::ids::now_unix_ms());
        let message = |n: u64, body: &str| Message {
            chat_id: Id(99),
            message_id: Id(base.0 + n),
            sender_id: "user:1-a.b@c".into(),
            client_msg_id: format!("c-{n}"),
            body: body.into(),
            sent_at_ms: base.unix_ms(),
            edited_at: None,
            deleted: false,
            change_id: None,
        };
        let first = message(1, "hello\nwörld 👋 'quoted'");
        let second = message(2, "");
        let mut elsewhere = message(3, "next bucket");
        elsewhere.message_id = Id::first_at(base.unix_ms() + rows::BUCKET_SPAN_MS);
        elsewhere.sent_at_ms = elsewhere.message_id.unix_ms();
        for m in [&second, &first, &elsewhere] {
            let values = (
                rows::id_to_cql(m.chat_id).unwrap(),
                rows::bucket_of(m.message_id),
                rows::id_to_cql(m.message_id).unwrap(),
                m.sender_id.as_str(),
                m.client_msg_id.as_str(),
                m.body.as_str(),
            );
            session
                .execute_unpaged(&insert, values)
                .await
                .expect("insert by full key");
            session.execute_unpaged(&insert_asc, values).await.unwrap();
        }

        let read = |bucket: i32| {
            let (session, st) = (&session, &select_asc);
            async move {
                session
                    .execute_unpaged(st, (99_i64, bucket))
                    .await
                    .unwrap()
                    .into_rows_result()
                    .unwrap()
                    .rows::<MessageRow>()
                    .unwrap()
                    .map(|r| r.unwrap().into_message().unwrap())
                    .collect::<Vec<_>>()
            }
        };
        let bucket = rows::bucket_of(base);
        assert_eq!(
            read(bucket).await,
            [first, second],
            "one bucket, by message id"
        );
        assert_eq!(read(bucket + 1).await, [elsewhere]);

        // The bucket index row written with each message binds (chat id, bucket) by full key.
        // Any read of it (a DESC table) is refused here; reads run in the conformance suite.
        let index = session.prepare(cql::INSERT_CHAT_BUCKET).await.unwrap();
        session
            .execute_unpaged(&index, (99_i64, bucket))
            .await
            .expect("index row by full key");
    })
    .await;
}

#[tokio::test]
async fn membership_batches_write_and_delete_both_tables() {
    bounded(async {
        let (_server, session) = migrated().await;
        let insert_member = session.prepare(cql::INSERT_MEMBER).await.unwrap();
        let insert_user_chat = session.prepare(cql::INSERT_USER_CHAT).await.unwrap();
        let delete_member = session.prepare(cql::DELETE_MEMBER).await.unwrap();
        let delete_user_chat = session.prepare(cql::DELETE_USER_CHAT).await.unwrap();
        // The store pages `user_chats` by a clustering range, which the harness refuses: read
        // the whole partition instead (the paging runs in the conformance suite).
        let select_user_chats = session
            .prepare("SELECT chat_id FROM user_chats WHERE user_id = ?")
            .await
            .unwrap();

        let users = vec!["ann".to_owned(), "bo".to_owned(), "cy".to_owned()];
        for chat in [10_i64, 11] {
            let batch = membership_batch(&insert_member, &insert_user_chat, users.len());
            session
                .batch(&batch, membership_values(chat, &users))
                .await
                .expect("logged batch");
        }
        // Point reads (`SELECT_MEMBER`) are refused by the harness: read whole partitions.
        let select_members = session.prepare(cql::SELECT_MEMBERS).await.unwrap();
        let members_of = |chat: i64| {
            let (session, st) = (&session, &select_members);
            async move {
                session
                    .execute_unpaged(st, (chat,))
                    .await
                    .unwrap()
                    .into_rows_result()
                    .unwrap()
                    .rows::<MemberRow>()
                    .unwrap()
                    .map(|r| r.unwrap().user_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(members_of(10).await, users);
        assert_eq!(members_of(11).await, users);
        assert!(members_of(12).await.is_empty());
        let chats_of_bo = || {
            let (session, st) = (&session, &select_user_chats);
            async move {
                let mut ids: Vec<i64> = session
                    .execute_unpaged(st, ("bo",))
                    .await
                    .unwrap()
                    .into_rows_result()
                    .unwrap()
                    .rows::<UserChatRow>()
                    .unwrap()
                    .map(|r| r.unwrap().chat_id)
                    .collect();
                ids.sort();
                ids
            }
        };
        assert_eq!(chats_of_bo().await, [10, 11]);

        let batch = membership_batch(&delete_member, &delete_user_chat, 1);
        session
            .batch(&batch, membership_values(10, &["bo".to_owned()]))
            .await
            .unwrap();
        assert_eq!(
            members_of(10).await,
            ["ann", "cy"],
            "only that member is removed"
        );
        assert_eq!(members_of(11).await, users);
        assert_eq!(chats_of_bo().await, [11]);
    })
    .await;
}

#[tokio::test]
async fn member_list_pages_through_a_whole_partition() {
    bounded(async {
        let (_server, session) = migrated().await;
        let insert_member = session.prepare(cql::INSERT_MEMBER).await.unwrap();
        let insert_user_chat = session.prepare(cql::INSERT_USER_CHAT).await.unwrap();
        let mut users: Vec<String> = (0..50).map(|i| format!("user-{i:02}")).collect();
        for chunk in users.chunks(16) {
            let batch = membership_batch(&insert_member, &insert_user_chat, chunk.len());
            session
                .batch(&batch, membership_values(5, chunk))
                .await
                .unwrap();
        }
        // Another chat's members must not leak into the partition read.
        let batch = membership_batch(&insert_member, &insert_user_chat, 1);
        session
            .batch(&batch, membership_values(6, &["intruder".to_owned()]))
            .await
            .unwrap();

        let mut select = session.prepare(cql::SELECT_MEMBERS).await.unwrap();
        select.set_page_size(7);

        // Manual paging: more than one page must come back, and together they hold every row once.
        let mut state = PagingState::start();
        let mut pages = 0;
        let mut seen = Vec::new();
        loop {
            let (result, next) = session
                .execute_single_page(&select, (5_i64,), state)
                .await
                .unwrap();
            pages += 1;
            let rows = result.into_rows_result().unwrap();
            assert!(rows.rows_num() <= 7, "a page holds at most the page size");
            seen.extend(
                rows.rows::<MemberRow>()
                    .unwrap()
                    .map(|r| r.unwrap().user_id),
            );
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Continue(s) => state = s,
                std::ops::ControlFlow::Break(()) => break,
            }
            assert!(pages < 100, "paging terminates");
        }
        assert!(pages > 1, "50 rows at 7 per page took {pages} page(s)");
        seen.sort();
        users.sort();
        assert_eq!(seen, users);

        // The pager the store uses for member lists gives the same rows.
        let mut streamed: Vec<String> = session
            .execute_iter(select.clone(), (5_i64,))
            .await
            .unwrap()
            .rows_stream::<MemberRow>()
            .unwrap()
            .map_ok(|r| r.user_id)
            .try_collect()
            .await
            .unwrap();
        streamed.sort();
        assert_eq!(streamed, users);
    })
    .await;
}

#[tokio::test]
async fn harness_refuses_what_kassandra_would_get_wrong() {
    bounded(async {
        let (_server, session) = migrated().await;
        let refused = [
            cql::SELECT_MESSAGES_BEFORE,
            cql::SELECT_MESSAGES_AFTER,
            cql::CLAIM_SEND,
            cql::UPDATE_CHAT_LAST_MESSAGE,
            cql::SELECT_MEMBER,
            cql::SELECT_MESSAGE,
            cql::SELECT_BUCKETS_DOWN,
            cql::SELECT_BUCKETS_UP,
            "SELECT body FROM messages WHERE chat_id = ? AND bucket = ?",
            "ALTER TABLE messages ADD edited boolean",
            "SELECT user_id FROM members WHERE chat_id IN ?",
            "INSERT INTO members (chat_id, user_id) VALUES (?, ?) USING TTL 60",
            "SELECT user_id FROM members WHERE chat_id = ? and user_id = ?",
            "SELECT user_id FROM members WHERE chat_id = ? LIMIT ?",
            "SELECT user_id FROM members WHERE chat_id = ? ORDER BY user_id DESC",
        ];
        for statement in refused {
            let err = session
                .prepare(statement)
                .await
                .expect_err("the harness refuses it");
            assert!(err.to_string().contains(REFUSED), "{statement}: {err}");
            // Unprepared queries are checked the same way.
            let err = session
                .query_unpaged(
                    statement.replace("LIMIT ?", "LIMIT :n").replace('?', "1"),
                    (),
                )
                .await
                .expect_err("refused unprepared too");
            assert!(err.to_string().contains(REFUSED), "{statement}: {err}");
        }
        for ddl in [
            "CREATE TABLE IF NOT EXISTS chat.c (k bigint PRIMARY KEY, n counter)",
            "CREATE TABLE IF NOT EXISTS chat.t (k timeuuid PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS chat.s (k bigint PRIMARY KEY, v smallint)",
            "CREATE TABLE IF NOT EXISTS chat.f (k bigint PRIMARY KEY, v frozen<list<int>>)",
        ] {
            let err = session.query_unpaged(ddl, ()).await.expect_err(ddl);
            assert!(err.to_string().contains(REFUSED), "{ddl}: {err}");
        }
        // The whole store cannot be built here: it prepares statements the harness refuses, so
        // nothing in it can silently run on kassandra.
        let config = ScyllaConfig::from_url("scylla://127.0.0.1/chat").unwrap();
        let err = ScyllaStore::with_session(Arc::new(session), &config, 1)
            .await
            .expect_err("store construction is refused");
        assert!(err.to_string().contains(REFUSED), "{err}");
    })
    .await;
}

/// The tables as the harness learns them from the migrations.
fn schema_tables() -> Tables {
    let mut tables = Tables::default();
    let repl = Replication::parse("1").unwrap();
    for m in migrate::MIGRATIONS {
        for statement in migrate::statements(m, KS, &repl) {
            tables.learn(&statement);
        }
    }
    tables
}

#[test]
fn harness_learns_clustering_columns_and_order_from_the_ddl() {
    let tables = schema_tables();
    let info = |t: &str| {
        tables
            .get(t)
            .cloned()
            .unwrap_or_else(|| panic!("{t} learned"))
    };
    assert_eq!(info("messages").clustering, ["message_id"]);
    assert!(info("messages").descending);
    assert_eq!(info("members").clustering, ["user_id"]);
    assert_eq!(info("user_chats").clustering, ["chat_id"]);
    assert!(!info("user_chats").descending);
    assert!(info("chats").clustering.is_empty());
    assert!(info("idempotency").clustering.is_empty());
    assert_eq!(info("chat_buckets").clustering, ["bucket"]);
    assert!(info("chat_buckets").descending);
    assert_eq!(info("schema_migrations").clustering, ["version"]);
}

#[test]
fn refusal_accepts_exactly_the_faithful_statements() {
    let tables = schema_tables();
    for ok in [
        cql::INSERT_CHAT,
        cql::SELECT_CHAT,
        cql::INSERT_MEMBER,
        cql::INSERT_USER_CHAT,
        cql::DELETE_MEMBER,
        cql::DELETE_USER_CHAT,
        cql::SELECT_MEMBERS,
        cql::INSERT_MESSAGE,
        cql::INSERT_CHAT_BUCKET,
        cql::PING,
        "ALTER TABLE chat.messages WITH compaction = {'class': 'SizeTieredCompactionStrategy'}",
        "SELECT keyspace_name FROM system_schema.tables WHERE keyspace_name IN ?",
        "SELECT a FROM t WHERE b = 'x < y IF USING' LIMIT 10",
    ] {
        assert_eq!(refusal(ok, &tables), None, "{ok}");
    }
    for (bad, why) in [
        (cql::SELECT_MESSAGES_BEFORE, "range predicates"),
        (cql::SELECT_MESSAGES_AFTER, "range predicates"),
        (cql::SELECT_USER_CHATS, "range predicates"),
        (cql::CLAIM_SEND, "IF (lightweight transactions)"),
        (cql::UPDATE_CHAT_LAST_MESSAGE, "USING TTL/TIMESTAMP"),
        (cql::SELECT_MEMBER, "a clustering-column restriction"),
        (
            cql::SELECT_MESSAGE,
            "reads of a table with CLUSTERING ORDER",
        ),
        ("SELECT a FROM t WHERE k = ? LIMIT ?", "LIMIT ?"),
        ("SELECT a FROM t WHERE k = ? ORDER BY a ASC", "ORDER BY"),
        ("SELECT a FROM t WHERE k IN (1, 2)", "IN"),
        (cql::SELECT_BUCKETS_DOWN, "range predicates"),
        ("ALTER TABLE t ADD c int", "ALTER other than"),
        (
            "ALTER KEYSPACE chat WITH durable_writes = false",
            "ALTER other than",
        ),
        (
            "UPDATE t SET n = n + 1 WHERE k = 1",
            "counter or collection arithmetic",
        ),
    ] {
        let reason = refusal(bad, &tables).unwrap_or_else(|| panic!("{bad} is refused"));
        assert!(reason.starts_with(why), "{bad}: {reason}");
    }
}

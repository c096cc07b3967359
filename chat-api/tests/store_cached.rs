//! The cached store (`chat_api::store::cached`): the conformance suite through it, and what the
//! caches must never do — answer from before an acknowledged write of another replica, miss a
//! message committed out of id order, outgrow their budget, or survive lost version tokens.
//! Two `CachedStore`s on one SQLite file with their own Redis connections stand for two API
//! replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_api::store::cached::versions::{
    Kind, MemoryVersions, RedisVersions, VersionError, Versions,
};
use chat_api::store::cached::{CacheArgs, CachedStore};
use chat_api::store::sqlite::SqliteStore;
use chat_api::store::{
    conformance, Change, Changed, ChangesPage, Chat, Cursor, Insert, Marker, Markers, MessageStore,
    Role, StoreError,
};
use fred::interfaces::KeysInterface;
use shared::protocol::Message;
use shared::routing::redis::{connect, RedisOptions, RedisRouting};
use shared::testkit::RedisServer;
use shared::Id;
use std::collections::HashMap;
use std::time::Instant;

fn args() -> CacheArgs {
    CacheArgs::default()
}

async fn redis_versions(redis: &RedisServer) -> (Arc<dyn Versions>, RedisRouting) {
    let routing = connect(&redis.url(), RedisOptions::default())
        .await
        .expect("connecting to the private Redis");
    let versions = Arc::new(RedisVersions::new(
        routing.client().clone(),
        "",
        Duration::from_secs(1),
    ));
    (versions, routing)
}

/// Two replicas' stores on one file, each with its own token connection.
async fn two_replicas(
    dir: &tempfile::TempDir,
    redis: &RedisServer,
) -> (Arc<CachedStore>, Arc<CachedStore>, Vec<RedisRouting>) {
    let path = dir.path().join("chat.db");
    let (va, ra) = redis_versions(redis).await;
    let (vb, rb) = redis_versions(redis).await;
    let a = Arc::new(CachedStore::new(
        Arc::new(SqliteStore::open(&path).unwrap()),
        va,
        &args(),
    ));
    let b = Arc::new(CachedStore::new(
        Arc::new(SqliteStore::open(&path).unwrap()),
        vb,
        &args(),
    ));
    (a, b, vec![ra, rb])
}

fn ids(page: &[shared::protocol::Message]) -> Vec<Id> {
    page.iter().map(|m| m.message_id).collect()
}

/// The conformance suite through a cached store on a fresh SQLite file.
async fn conformance_through(versions: Arc<dyn Versions>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn MessageStore> = Arc::new(CachedStore::new(
        Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap()),
        versions,
        &args(),
    ));
    tokio::time::timeout(Duration::from_secs(90), conformance::run_all(store))
        .await
        .expect("conformance suite took over 90 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_store_passes_the_conformance_suite_in_process() {
    conformance_through(Arc::new(MemoryVersions::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_store_passes_the_conformance_suite_with_redis_tokens() {
    let redis = RedisServer::start().expect("redis-server");
    let (versions, _routing) = redis_versions(&redis).await;
    conformance_through(versions).await;
}

/// Membership cached on B, member removed through A: B refuses at once, and its member list
/// (what fan-outs read) no longer has them. Roles too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_through_one_replica_is_seen_at_once_by_the_other() {
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _conns) = two_replicas(&dir, &redis).await;
    let (a_dyn, b_dyn): (Arc<dyn MessageStore>, Arc<dyn MessageStore>) = (a.clone(), b.clone());
    let (alice, bob) = (
        conformance::unique_user("alice"),
        conformance::unique_user("bob"),
    );
    let chat = conformance::new_chat(&a_dyn, &[alice.clone(), bob.clone()]).await;
    for _ in 0..3 {
        assert!(b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
        assert!(b_dyn.members(chat.chat_id).await.unwrap().contains(&bob));
    }
    assert!(a_dyn.remove_member(chat.chat_id, &bob).await.unwrap());
    assert!(!b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
    assert!(!b_dyn.members(chat.chat_id).await.unwrap().contains(&bob));
    assert_eq!(b_dyn.role(chat.chat_id, &bob).await.unwrap(), None);

    a_dyn
        .add_members(chat.chat_id, std::slice::from_ref(&bob))
        .await
        .unwrap();
    assert!(b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
    assert_eq!(
        b_dyn.role(chat.chat_id, &bob).await.unwrap(),
        Some(Role::Member)
    );
    assert!(a_dyn
        .set_role(chat.chat_id, &bob, Role::Admin)
        .await
        .unwrap());
    assert_eq!(
        b_dyn.role(chat.chat_id, &bob).await.unwrap(),
        Some(Role::Admin)
    );
    assert_eq!(b_dyn.admins(chat.chat_id).await.unwrap(), vec![bob.clone()]);
    assert_eq!(
        b_dyn.role(chat.chat_id, &alice).await.unwrap(),
        Some(Role::Owner)
    );
}

/// The newest page cached on A; messages stored through B (their insert returned, as before a
/// 201) are in A's next page, its chat's last id, unread count and message lookup; an edit
/// through B is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_is_in_the_others_next_page() {
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _conns) = two_replicas(&dir, &redis).await;
    let (a_dyn, b_dyn): (Arc<dyn MessageStore>, Arc<dyn MessageStore>) = (a.clone(), b.clone());
    let (alice, bob) = (
        conformance::unique_user("alice"),
        conformance::unique_user("bob"),
    );
    let chat = conformance::new_chat(&a_dyn, &[alice.clone(), bob.clone()]).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        let m = conformance::message(chat.chat_id, &bob, &format!("c{i}"), "hi");
        // Warm A's entry, then write through B.
        assert_eq!(
            ids(&a_dyn
                .history(chat.chat_id, Cursor::Latest, 51)
                .await
                .unwrap()),
            sent
        );
        b_dyn.insert_message(&m).await.unwrap();
        sent.push(m.message_id);
        let page = a_dyn
            .history(chat.chat_id, Cursor::Latest, 51)
            .await
            .unwrap();
        assert_eq!(ids(&page), sent, "A's page after B stored message {i}");
        assert_eq!(
            a_dyn
                .get_chat(chat.chat_id)
                .await
                .unwrap()
                .unwrap()
                .last_message_id,
            Some(m.message_id)
        );
        let unread = a_dyn
            .count_unread(chat.chat_id, &alice, None, 100)
            .await
            .unwrap();
        assert_eq!(unread.count, i + 1);
        assert!(a_dyn
            .get_message(chat.chat_id, m.message_id)
            .await
            .unwrap()
            .is_some());
    }
    let target = sent[10];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    b_dyn
        .change_message(
            chat.chat_id,
            target,
            &Change::Edit {
                body: "edited".into(),
            },
            Id(sent[29].0 + 1),
            deadline,
        )
        .await
        .unwrap();
    let page = a_dyn
        .history(chat.chat_id, Cursor::After(sent[5]), 51)
        .await
        .unwrap();
    assert_eq!(
        page.iter().find(|m| m.message_id == target).unwrap().body,
        "edited"
    );
    assert_eq!(
        a_dyn
            .get_message(chat.chat_id, target)
            .await
            .unwrap()
            .unwrap()
            .body,
        "edited"
    );
    // Pages served from the entry match the store's own pages, whatever the cursor.
    let store: Arc<dyn MessageStore> =
        Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    for cursor in [
        Cursor::Latest,
        Cursor::After(Id(0)),
        Cursor::After(sent[3]),
        Cursor::Before(sent[20]),
        Cursor::Before(sent[2]),
        Cursor::Before(Id(u64::MAX >> 1)),
    ] {
        for limit in [1, 5, 29, 30, 31, 51] {
            assert_eq!(
                a_dyn.history(chat.chat_id, cursor, limit).await.unwrap(),
                store.history(chat.chat_id, cursor, limit).await.unwrap(),
                "{cursor:?} limit {limit}"
            );
        }
    }
}

/// A send's lookup rides with the token write (`insert_message_then`): it runs once the message
/// is stored (a retry's duplicate included), the other replica's next page has the message as
/// soon as the insert returns, and an insert that failed runs no lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_alongside_the_token_write_runs_only_after_the_store_write() {
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _conns) = two_replicas(&dir, &redis).await;
    let (a_dyn, b_dyn): (Arc<dyn MessageStore>, Arc<dyn MessageStore>) = (a.clone(), b.clone());
    let plain: Arc<dyn MessageStore> =
        Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let bob = conformance::unique_user("bob");
    let chat = conformance::new_chat(&a_dyn, std::slice::from_ref(&bob)).await;
    // B caches the (empty) newest page.
    let latest = |s: Arc<dyn MessageStore>| async move {
        ids(&s.history(chat.chat_id, Cursor::Latest, 51).await.unwrap())
    };
    assert!(latest(b_dyn.clone()).await.is_empty());

    let m = conformance::message(chat.chat_id, &bob, "c1", "hi");
    let deadline = Instant::now() + Duration::from_secs(5);
    for attempt in ["first", "retry"] {
        let seen = parking_lot::Mutex::new(None);
        let hook = async {
            *seen.lock() = Some(latest(plain.clone()).await);
        };
        let inserted = a_dyn
            .insert_message_then(&m, deadline, Box::pin(hook))
            .await
            .unwrap();
        assert_eq!(matches!(inserted, Insert::Duplicate(_)), attempt == "retry");
        assert_eq!(
            seen.lock().take(),
            Some(vec![m.message_id]),
            "{attempt}: the work ran after the store write"
        );
        assert_eq!(
            latest(b_dyn.clone()).await,
            vec![m.message_id],
            "{attempt}: the other replica's page has it"
        );
    }

    // Abandoned before commit (its deadline already passed): stored nowhere, and no work.
    let late = conformance::message(chat.chat_id, &bob, "c2", "late");
    let ran = AtomicBool::new(false);
    let hook = async {
        ran.store(true, Ordering::SeqCst);
    };
    let result = a_dyn
        .insert_message_then(&late, Instant::now(), Box::pin(hook))
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(!ran.load(Ordering::SeqCst), "no work after a failed insert");
    assert_eq!(latest(b_dyn).await, vec![m.message_id]);
}

/// A message whose id is below the newest cached one, stored after A cached its page (a send
/// held between its id and its write): A's next pages, forwards and backwards, have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_out_of_id_order_is_never_missing() {
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _conns) = two_replicas(&dir, &redis).await;
    let (a_dyn, b_dyn): (Arc<dyn MessageStore>, Arc<dyn MessageStore>) = (a.clone(), b.clone());
    let alice = conformance::unique_user("alice");
    let chat = conformance::new_chat(&a_dyn, std::slice::from_ref(&alice)).await;
    let held = conformance::message(chat.chat_id, &alice, "held", "drawn first");
    let mut later = conformance::message(chat.chat_id, &alice, "later", "drawn second");
    later.message_id = Id(held.message_id.0 + 10);
    b_dyn.insert_message(&later).await.unwrap();
    let before = a_dyn
        .history(chat.chat_id, Cursor::After(Id(0)), 51)
        .await
        .unwrap();
    assert_eq!(ids(&before), vec![later.message_id]);
    b_dyn.insert_message(&held).await.unwrap();
    for cursor in [
        Cursor::Latest,
        Cursor::After(Id(0)),
        Cursor::Before(later.message_id),
    ] {
        let page = a_dyn.history(chat.chat_id, cursor, 51).await.unwrap();
        assert!(
            ids(&page).contains(&held.message_id),
            "{cursor:?}: {:?}",
            ids(&page)
        );
    }
}

/// Many chats through a small budget: the tables stay under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caches_stay_within_their_byte_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 64 * 1024;
    let cached = Arc::new(CachedStore::new(
        Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap()),
        Arc::new(MemoryVersions::default()),
        &CacheArgs {
            members_cache_bytes: budget,
            recent_cache_bytes: budget,
            ..args()
        },
    ));
    let store: Arc<dyn MessageStore> = cached.clone();
    let alice = conformance::unique_user("alice");
    let mut largest = [0usize; 2];
    for i in 0..300 {
        let chat = conformance::new_chat(&store, std::slice::from_ref(&alice)).await;
        let m = conformance::message(chat.chat_id, &alice, &format!("m{i}"), &"x".repeat(2000));
        store.insert_message(&m).await.unwrap();
        assert!(store.is_member(chat.chat_id, &alice).await.unwrap());
        assert_eq!(
            store
                .history(chat.chat_id, Cursor::Latest, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        for (slot, (bytes, _)) in largest.iter_mut().zip(cached.sizes()) {
            assert!(bytes <= budget, "{bytes} bytes held, budget {budget}");
            *slot = (*slot).max(bytes);
        }
    }
    // The tables were used, not merely empty.
    assert!(largest.iter().all(|&b| b > budget / 4), "{largest:?}");
}

/// Tokens that cannot be read bypass the caches (answers from the store); a write whose token
/// cannot be replaced is refused (not acknowledged), and its retry, once tokens work again,
/// makes every replica see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_version_tokens_reads_go_to_the_store_and_writes_are_refused() {
    struct Flaky {
        inner: MemoryVersions,
        down: AtomicBool,
    }
    #[async_trait]
    impl Versions for Flaky {
        async fn current(&self, chat_id: Id, kind: Kind) -> Result<u64, VersionError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(VersionError("down".into()));
            }
            self.inner.current(chat_id, kind).await
        }
        async fn bump(&self, chat_id: Id, kind: Kind) -> Result<(), VersionError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(VersionError("down".into()));
            }
            self.inner.bump(chat_id, kind).await
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let versions = Arc::new(Flaky {
        inner: MemoryVersions::default(),
        down: AtomicBool::new(false),
    });
    let a: Arc<dyn MessageStore> = Arc::new(CachedStore::new(
        Arc::new(SqliteStore::open(&path).unwrap()),
        versions.clone(),
        &args(),
    ));
    let b: Arc<dyn MessageStore> = Arc::new(CachedStore::new(
        Arc::new(SqliteStore::open(&path).unwrap()),
        versions.clone(),
        &args(),
    ));
    let raw: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).unwrap());
    let alice = conformance::unique_user("alice");
    let chat = conformance::new_chat(&a, std::slice::from_ref(&alice)).await;
    assert!(b
        .history(chat.chat_id, Cursor::Latest, 10)
        .await
        .unwrap()
        .is_empty());

    versions.down.store(true, Ordering::SeqCst);
    // Written behind the caches' back: only a bypassing read can see it.
    let m1 = conformance::message(chat.chat_id, &alice, "one", "1");
    raw.insert_message(&m1).await.unwrap();
    assert_eq!(
        ids(&b.history(chat.chat_id, Cursor::Latest, 10).await.unwrap()),
        vec![m1.message_id]
    );
    let m2 = conformance::message(chat.chat_id, &alice, "two", "2");
    assert!(matches!(
        a.insert_message(&m2).await,
        Err(StoreError::Unavailable(_))
    ));
    versions.down.store(false, Ordering::SeqCst);
    // The retry finds the stored original and replaces the token.
    a.insert_message(&m2).await.unwrap();
    assert_eq!(
        ids(&b.history(chat.chat_id, Cursor::Latest, 10).await.unwrap()),
        vec![m1.message_id, m2.message_id]
    );
}

/// Redis restarts empty: every token is lost. A stale entry (a write that never replaced its
/// token, as when its replica died between the two) is not served after the restart, because
/// a lost token comes back as a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_makes_every_entry_stale() {
    let mut redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let (_a, b, conns) = two_replicas(&dir, &redis).await;
    let b_dyn: Arc<dyn MessageStore> = b.clone();
    let raw: Arc<dyn MessageStore> =
        Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let (alice, bob) = (
        conformance::unique_user("alice"),
        conformance::unique_user("bob"),
    );
    let chat = conformance::new_chat(&b_dyn, &[alice.clone(), bob.clone()]).await;
    assert!(b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
    assert!(raw.remove_member(chat.chat_id, &bob).await.unwrap());
    // No token was replaced: the entry is (knowingly) stale until its TTL.
    assert!(b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
    redis.restart().expect("restarting redis");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // While the client reconnects, tokens cannot be read and answers come from the store:
        // never the stale entry.
        assert!(!b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
        // Until B has written a fresh token (its client is back).
        let key = format!("cache:{{{}}}:m", chat.chat_id.0);
        let back: Result<i64, _> = conns[1].client().exists(key).await;
        if back.is_ok_and(|n| n > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no fresh token within 10 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b_dyn.is_member(chat.chat_id, &bob).await.unwrap());
}

/// Identical concurrent loads of one chat read the store once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_reads_are_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let counting = Arc::new(Counting {
        inner: Arc::new(SqliteStore::open(&path).unwrap()),
        histories: Default::default(),
        members: Default::default(),
    });
    let store: Arc<dyn MessageStore> = Arc::new(CachedStore::new(
        counting.clone(),
        Arc::new(MemoryVersions::default()),
        &args(),
    ));
    let alice = conformance::unique_user("alice");
    let chat = conformance::new_chat(&store, std::slice::from_ref(&alice)).await;
    for i in 0..5 {
        let m = conformance::message(chat.chat_id, &alice, &format!("m{i}"), "hi");
        store.insert_message(&m).await.unwrap();
    }
    let before = (
        counting.histories.load(Ordering::SeqCst),
        counting.members.load(Ordering::SeqCst),
    );
    let reads: Vec<_> = (0..200)
        .map(|_| {
            let (store, alice) = (store.clone(), alice.clone());
            tokio::spawn(async move {
                assert!(store.is_member(chat.chat_id, &alice).await.unwrap());
                store
                    .history(chat.chat_id, Cursor::After(Id(0)), 51)
                    .await
                    .unwrap()
                    .len()
            })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap(), 5);
    }
    let (h, m) = (
        counting.histories.load(Ordering::SeqCst) - before.0,
        counting.members.load(Ordering::SeqCst) - before.1,
    );
    assert_eq!(
        (h, m),
        (1, 1),
        "200 readers caused {h} history and {m} members reads"
    );
}

/// Counts the reads the caches are meant to spare.
struct Counting {
    inner: Arc<dyn MessageStore>,
    histories: std::sync::atomic::AtomicUsize,
    members: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl MessageStore for Counting {
    async fn create_chat(&self, chat: &Chat, members: &[String]) -> Result<(), StoreError> {
        self.inner.create_chat(chat, members).await
    }
    async fn get_chat(&self, chat_id: Id) -> Result<Option<Chat>, StoreError> {
        self.inner.get_chat(chat_id).await
    }
    async fn user_chats(
        &self,
        user: &str,
        after: Option<Id>,
        limit: usize,
    ) -> Result<Vec<Chat>, StoreError> {
        self.inner.user_chats(user, after, limit).await
    }
    async fn add_members(&self, chat_id: Id, users: &[String]) -> Result<(), StoreError> {
        self.inner.add_members(chat_id, users).await
    }
    async fn remove_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        self.inner.remove_member(chat_id, user).await
    }
    async fn is_member(&self, chat_id: Id, user: &str) -> Result<bool, StoreError> {
        self.members.fetch_add(1, Ordering::SeqCst);
        self.inner.is_member(chat_id, user).await
    }
    async fn members(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        self.members.fetch_add(1, Ordering::SeqCst);
        self.inner.members(chat_id).await
    }
    async fn insert_message(&self, message: &Message) -> Result<Insert, StoreError> {
        self.inner.insert_message(message).await
    }
    async fn history(
        &self,
        chat_id: Id,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.histories.fetch_add(1, Ordering::SeqCst);
        self.inner.history(chat_id, cursor, limit).await
    }
    async fn advance_marker(
        &self,
        chat_id: Id,
        user: &str,
        marker: Marker,
        message_id: Id,
    ) -> Result<bool, StoreError> {
        self.inner
            .advance_marker(chat_id, user, marker, message_id)
            .await
    }
    async fn markers(&self, chat_id: Id) -> Result<Vec<Markers>, StoreError> {
        self.inner.markers(chat_id).await
    }
    async fn read_markers(
        &self,
        user: &str,
        chat_ids: &[Id],
    ) -> Result<HashMap<Id, Id>, StoreError> {
        self.inner.read_markers(user, chat_ids).await
    }
    async fn get_message(
        &self,
        chat_id: Id,
        message_id: Id,
    ) -> Result<Option<Message>, StoreError> {
        self.inner.get_message(chat_id, message_id).await
    }
    async fn change_message(
        &self,
        chat_id: Id,
        message_id: Id,
        change: &Change,
        change_id: Id,
        deadline: Instant,
    ) -> Result<Changed, StoreError> {
        self.inner
            .change_message(chat_id, message_id, change, change_id, deadline)
            .await
    }
    async fn changes(
        &self,
        chat_id: Id,
        after: Id,
        limit: usize,
    ) -> Result<ChangesPage, StoreError> {
        self.inner.changes(chat_id, after, limit).await
    }
    async fn role(&self, chat_id: Id, user: &str) -> Result<Option<Role>, StoreError> {
        self.inner.role(chat_id, user).await
    }
    async fn set_role(&self, chat_id: Id, user: &str, role: Role) -> Result<bool, StoreError> {
        self.inner.set_role(chat_id, user, role).await
    }
    async fn admins(&self, chat_id: Id) -> Result<Vec<String>, StoreError> {
        self.inner.admins(chat_id).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

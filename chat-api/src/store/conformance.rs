//! The conformance suite every [`MessageStore`] implementation must pass. Public (not
//! `cfg(test)`) so that each store's own tests call it. Every property uses fresh chat ids and
//! user names, so one store instance (one database, one keyspace) can serve all of them, in any
//! order and more than once. A failed property panics with a message naming what broke.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use shared::ids::now_unix_ms;
use shared::protocol::Message;
use shared::{Id, IdGenerator};

use std::time::{Duration, Instant};

use super::{Change, Changed, Chat, Cursor, Insert, Marker, Markers, MessageStore, Role, Unread};

/// Runs every property, one after the other.
pub async fn run_all(store: Arc<dyn MessageStore>) {
    create_and_get_chat(&store).await;
    members_add_remove(&store).await;
    user_chats_with_last_message_id(&store).await;
    user_chats_pages_by_chat_id(&store).await;
    last_message_id_is_the_highest(&store).await;
    idempotent_insert_sequential(&store).await;
    idempotent_insert_concurrent(&store).await;
    history_pages_1000_messages(&store).await;
    history_limits_and_ends(&store).await;
    other_chats_never_leak(&store).await;
    ids_beyond_storage_name_no_chat(&store).await;
    markers_only_move_forward(&store).await;
    read_markers_of_a_chat_list(&store).await;
    unread_counts_are_bounded(&store).await;
    edits_replace_the_body_and_are_idempotent(&store).await;
    deletes_leave_a_tombstone_without_the_body(&store).await;
    changes_page_in_change_order(&store).await;
    roles_owner_admin_member(&store).await;
    ping(&store).await;
}

/// Ids for this suite: worker 1023, time-ordered, unique within the process and across runs.
fn ids() -> &'static IdGenerator {
    static IDS: OnceLock<IdGenerator> = OnceLock::new();
    IDS.get_or_init(|| IdGenerator::new(shared::ids::WORKER_ID_MAX))
}

/// A user name no other property or run has used.
pub fn unique_user(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "conf-{}-{}-{name}",
        now_unix_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh chat whose creator is `members[0]`.
pub async fn new_chat(store: &Arc<dyn MessageStore>, members: &[String]) -> Chat {
    let chat = Chat {
        chat_id: ids().next_id(),
        title: Some("conformance".into()),
        created_by: members[0].clone(),
        created_at_ms: now_unix_ms(),
        last_message_id: None,
        last_change_id: None,
    };
    store
        .create_chat(&chat, members)
        .await
        .expect("create_chat failed");
    chat
}

/// A message with a fresh id.
pub fn message(chat_id: Id, sender: &str, client_msg_id: &str, body: &str) -> Message {
    Message::new(
        chat_id,
        ids().next_id(),
        sender.to_string(),
        client_msg_id.to_string(),
        body.to_string(),
    )
}

async fn insert(store: &Arc<dyn MessageStore>, m: &Message) -> Insert {
    store
        .insert_message(m)
        .await
        .unwrap_or_else(|e| panic!("insert_message({}) failed: {e}", m.client_msg_id))
}

/// A created chat reads back field for field; an unknown chat is `None`.
pub async fn create_and_get_chat(store: &Arc<dyn MessageStore>) {
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let chat = new_chat(store, &[alice.clone(), bob.clone()]).await;
    let got = store.get_chat(chat.chat_id).await.unwrap();
    assert_eq!(
        got.as_ref(),
        Some(&chat),
        "get_chat must return what was created"
    );
    assert_eq!(got.unwrap().last_message_id, None);

    let untitled = Chat {
        chat_id: ids().next_id(),
        title: None,
        created_by: alice.clone(),
        created_at_ms: now_unix_ms(),
        last_message_id: None,
        last_change_id: None,
    };
    store
        .create_chat(&untitled, std::slice::from_ref(&alice))
        .await
        .unwrap();
    assert_eq!(
        store.get_chat(untitled.chat_id).await.unwrap(),
        Some(untitled.clone())
    );

    let mut expected = vec![alice.clone(), bob.clone()];
    expected.sort();
    assert_eq!(store.members(chat.chat_id).await.unwrap(), expected);
    assert_eq!(store.get_chat(ids().next_id()).await.unwrap(), None);
    assert_eq!(store.get_chat(Id(u64::MAX)).await.unwrap(), None);
    assert!(store.members(ids().next_id()).await.unwrap().is_empty());
}

/// Adding is idempotent, removing reports whether there was a member, `members` is sorted.
pub async fn members_add_remove(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let b = unique_user("b");
    let c = unique_user("c");
    let chat = new_chat(store, std::slice::from_ref(&a)).await;
    assert!(store.is_member(chat.chat_id, &a).await.unwrap());
    assert!(!store.is_member(chat.chat_id, &b).await.unwrap());

    store
        .add_members(chat.chat_id, &[c.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    store
        .add_members(chat.chat_id, std::slice::from_ref(&b))
        .await
        .unwrap();
    let mut all = vec![a.clone(), b.clone(), c.clone()];
    all.sort();
    assert_eq!(store.members(chat.chat_id).await.unwrap(), all);
    assert!(store.is_member(chat.chat_id, &c).await.unwrap());

    assert!(store.remove_member(chat.chat_id, &b).await.unwrap());
    assert!(
        !store.remove_member(chat.chat_id, &b).await.unwrap(),
        "removing a non-member must report false"
    );
    assert!(!store.is_member(chat.chat_id, &b).await.unwrap());
    assert!(!store.members(chat.chat_id).await.unwrap().contains(&b));
    assert!(
        !store.is_member(ids().next_id(), &a).await.unwrap(),
        "membership of an unknown chat"
    );
}

/// A page size above any test's chat count.
const ALL: usize = 1000;

/// A user's chat list holds exactly its chats, newest activity first, each with its latest
/// message id; leaving a chat removes it from the list.
pub async fn user_chats_with_last_message_id(store: &Arc<dyn MessageStore>) {
    let u = unique_user("u");
    let other = unique_user("other");
    let older = new_chat(store, &[u.clone(), other.clone()]).await;
    let newer = new_chat(store, std::slice::from_ref(&u)).await;
    let foreign = new_chat(store, std::slice::from_ref(&other)).await;

    let list = store.user_chats(&u, None, ALL).await.unwrap();
    let ids_of = |l: &[Chat]| l.iter().map(|c| c.chat_id).collect::<Vec<_>>();
    assert_eq!(
        ids_of(&list),
        vec![newer.chat_id, older.chat_id],
        "newest first"
    );
    assert!(list.iter().all(|c| c.last_message_id.is_none()));

    let m = message(older.chat_id, &other, "c1", "hi");
    insert(store, &m).await;
    let list = store.user_chats(&u, None, ALL).await.unwrap();
    assert_eq!(
        ids_of(&list),
        vec![older.chat_id, newer.chat_id],
        "a chat with a new message moves to the front"
    );
    assert_eq!(list[0].last_message_id, Some(m.message_id));
    assert_eq!(list[1].last_message_id, None);
    assert!(!ids_of(&list).contains(&foreign.chat_id));
    assert_eq!(
        ids_of(&store.user_chats(&other, None, ALL).await.unwrap()).len(),
        2
    );

    store.remove_member(older.chat_id, &u).await.unwrap();
    assert_eq!(
        ids_of(&store.user_chats(&u, None, ALL).await.unwrap()),
        vec![newer.chat_id]
    );
    assert!(store
        .user_chats(&unique_user("nobody"), None, ALL)
        .await
        .unwrap()
        .is_empty());
}

/// The chat list pages by chat id: each page holds the lowest chat ids above its cursor, pages
/// neither overlap nor skip, a cursor above every chat (or above every storable id) ends it.
pub async fn user_chats_pages_by_chat_id(store: &Arc<dyn MessageStore>) {
    let u = unique_user("pager");
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(new_chat(store, std::slice::from_ref(&u)).await.chat_id);
    }
    // Activity in the oldest chat must not move it to another page.
    insert(store, &message(created[0], &u, "p1", "hi")).await;
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store.user_chats(&u, after, 3).await.unwrap();
        assert!(page.len() <= 3, "a page holds at most its limit");
        if page.is_empty() {
            break;
        }
        let mut ids: Vec<Id> = page.iter().map(|c| c.chat_id).collect();
        ids.sort();
        after = ids.last().copied();
        seen.extend(ids);
    }
    assert_eq!(
        seen, created,
        "pages cover every chat once, in chat-id order"
    );
    let first = store.user_chats(&u, None, 3).await.unwrap();
    assert_eq!(
        first[0].chat_id, created[0],
        "inside a page, newest activity first"
    );
    assert!(store
        .user_chats(&u, Some(Id(u64::MAX)), 3)
        .await
        .unwrap()
        .is_empty());
}

/// `last_message_id` never moves back when a message with a lower id (another replica's clock)
/// lands later, and a duplicate does not change it.
pub async fn last_message_id_is_the_highest(store: &Arc<dyn MessageStore>) {
    let u = unique_user("u");
    let chat = new_chat(store, std::slice::from_ref(&u)).await;
    let early = message(chat.chat_id, &u, "early", "1");
    let late = message(chat.chat_id, &u, "late", "2");
    insert(store, &late).await;
    insert(store, &early).await;
    let mut dup = message(chat.chat_id, &u, "early", "again");
    dup.message_id = Id(late.message_id.0 + 1000);
    insert(store, &dup).await;
    let got = store.get_chat(chat.chat_id).await.unwrap().unwrap();
    assert_eq!(got.last_message_id, Some(late.message_id));
}

/// A retry with the same (chat, sender, client_msg_id) returns the original and stores nothing;
/// another sender or chat with the same client id is a different message.
pub async fn idempotent_insert_sequential(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let b = unique_user("b");
    let chat = new_chat(store, &[a.clone(), b.clone()]).await;
    let chat2 = new_chat(store, std::slice::from_ref(&a)).await;

    let first = message(chat.chat_id, &a, "same", "original");
    assert_eq!(insert(store, &first).await, Insert::Created(first.clone()));
    let retry = message(chat.chat_id, &a, "same", "changed body");
    assert_eq!(
        insert(store, &retry).await,
        Insert::Duplicate(first.clone()),
        "a retry must return the original message"
    );
    let by_b = message(chat.chat_id, &b, "same", "from b");
    assert_eq!(insert(store, &by_b).await, Insert::Created(by_b.clone()));
    let elsewhere = message(chat2.chat_id, &a, "same", "other chat");
    assert_eq!(
        insert(store, &elsewhere).await,
        Insert::Created(elsewhere.clone())
    );

    let stored = store
        .history(chat.chat_id, Cursor::Latest, 100)
        .await
        .unwrap();
    assert_eq!(stored, vec![first, by_b], "nothing new stored by the retry");
}

/// Concurrent duplicates store exactly one message and every caller gets it back.
pub async fn idempotent_insert_concurrent(store: &Arc<dyn MessageStore>) {
    const CALLERS: usize = 16;
    let a = unique_user("a");
    let chat = new_chat(store, std::slice::from_ref(&a)).await;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let store = store.clone();
            let m = message(chat.chat_id, &a, "race", &format!("attempt {i}"));
            tokio::spawn(async move { store.insert_message(&m).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(
            t.await
                .expect("insert task panicked")
                .expect("insert failed"),
        );
    }
    let created: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Insert::Created(_)))
        .collect();
    assert_eq!(created.len(), 1, "exactly one concurrent insert may win");
    let winner = created[0].message().clone();
    assert!(
        results.iter().all(|r| r.message() == &winner),
        "every caller must get the stored message"
    );
    let stored = store
        .history(chat.chat_id, Cursor::Latest, 100)
        .await
        .unwrap();
    assert_eq!(stored, vec![winner]);
}

fn assert_ascending(page: &[Message], what: &str) {
    assert!(
        page.windows(2).all(|w| w[0].message_id < w[1].message_id),
        "{what}: page not in ascending id order"
    );
}

/// 1,000 messages read back page by page in both directions: every message exactly once, pages
/// ascending and never longer than the limit, empty pages past both ends.
pub async fn history_pages_1000_messages(store: &Arc<dyn MessageStore>) {
    const N: usize = 1000;
    const PAGE: usize = 37;
    let a = unique_user("a");
    let chat = new_chat(store, std::slice::from_ref(&a)).await;
    let mut sent = Vec::with_capacity(N);
    for i in 0..N {
        let m = message(chat.chat_id, &a, &format!("m{i}"), &format!("body {i}"));
        insert(store, &m).await;
        sent.push(m);
    }

    // Backwards: Latest, then Before(oldest of the previous page).
    let mut pages = Vec::new();
    let mut cursor = Cursor::Latest;
    loop {
        let page = store.history(chat.chat_id, cursor, PAGE).await.unwrap();
        assert!(page.len() <= PAGE, "limit not honoured: {}", page.len());
        assert_ascending(&page, "backwards");
        let Some(first) = page.first() else { break };
        cursor = Cursor::Before(first.message_id);
        pages.push(page);
        assert!(pages.len() <= N / PAGE + 2, "backwards paging does not end");
    }
    let backwards: Vec<Message> = pages.into_iter().rev().flatten().collect();
    assert_eq!(backwards.len(), N, "backwards paging: gaps or duplicates");
    assert_eq!(
        backwards, sent,
        "backwards paging must return what was sent"
    );

    // Forwards: After(0), then After(newest of the previous page).
    let mut forwards = Vec::with_capacity(N);
    let mut cursor = Cursor::After(Id(0));
    let mut rounds = 0;
    loop {
        let page = store.history(chat.chat_id, cursor, PAGE).await.unwrap();
        assert!(page.len() <= PAGE);
        assert_ascending(&page, "forwards");
        let Some(last) = page.last() else { break };
        cursor = Cursor::After(last.message_id);
        forwards.extend(page);
        rounds += 1;
        assert!(rounds <= N / PAGE + 2, "forwards paging does not end");
    }
    assert_eq!(forwards, sent, "forwards paging must return what was sent");

    let all: HashSet<Id> = sent.iter().map(|m| m.message_id).collect();
    assert_eq!(all.len(), N);
}

/// Limits, bounds and the ends of a short history.
pub async fn history_limits_and_ends(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let chat = new_chat(store, std::slice::from_ref(&a)).await;
    let empty = new_chat(store, std::slice::from_ref(&a)).await;
    assert!(store
        .history(empty.chat_id, Cursor::Latest, 10)
        .await
        .unwrap()
        .is_empty());

    let mut sent = Vec::new();
    for i in 0..10 {
        // Skipping one id leaves room for a cursor strictly between two stored messages.
        ids().next_id();
        let m = message(chat.chat_id, &a, &format!("m{i}"), "x");
        insert(store, &m).await;
        sent.push(m);
    }
    let h = |cursor, limit| store.history(chat.chat_id, cursor, limit);
    assert_eq!(h(Cursor::Latest, 3).await.unwrap(), sent[7..].to_vec());
    assert_eq!(h(Cursor::Latest, 100).await.unwrap(), sent);
    assert_eq!(h(Cursor::Latest, 1).await.unwrap(), sent[9..].to_vec());
    assert!(h(Cursor::Latest, 0).await.unwrap().is_empty());
    assert_eq!(
        h(Cursor::Before(sent[5].message_id), 3).await.unwrap(),
        sent[2..5].to_vec()
    );
    assert_eq!(
        h(Cursor::After(sent[5].message_id), 3).await.unwrap(),
        sent[6..9].to_vec()
    );
    assert!(h(Cursor::Before(sent[0].message_id), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(h(Cursor::After(sent[9].message_id), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        h(Cursor::After(Id(0)), 2).await.unwrap(),
        sent[..2].to_vec()
    );
    assert_eq!(
        h(Cursor::Before(Id(u64::MAX)), 2).await.unwrap(),
        sent[8..].to_vec()
    );
    assert!(h(Cursor::After(Id(u64::MAX)), 2).await.unwrap().is_empty());
    // A cursor between two stored ids.
    let between = Id(sent[4].message_id.0 + 1);
    assert!(between < sent[5].message_id);
    assert_eq!(
        h(Cursor::After(between), 1).await.unwrap(),
        sent[5..6].to_vec()
    );
    assert_eq!(
        h(Cursor::Before(between), 1).await.unwrap(),
        sent[4..5].to_vec()
    );
    assert!(store
        .history(ids().next_id(), Cursor::Latest, 10)
        .await
        .unwrap()
        .is_empty());
}

/// Interleaved messages of two chats: each chat's history holds only its own.
pub async fn other_chats_never_leak(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let one = new_chat(store, std::slice::from_ref(&a)).await;
    let two = new_chat(store, std::slice::from_ref(&a)).await;
    let mut sent_one = Vec::new();
    let mut sent_two = Vec::new();
    for i in 0..20 {
        let m1 = message(one.chat_id, &a, &format!("m{i}"), "one");
        let m2 = message(two.chat_id, &a, &format!("m{i}"), "two");
        insert(store, &m1).await;
        insert(store, &m2).await;
        sent_one.push(m1);
        sent_two.push(m2);
    }
    for (chat, sent) in [(one.chat_id, &sent_one), (two.chat_id, &sent_two)] {
        for cursor in [
            Cursor::Latest,
            Cursor::After(Id(0)),
            Cursor::Before(Id(u64::MAX)),
        ] {
            let page = store.history(chat, cursor, 100).await.unwrap();
            assert_eq!(&page, sent, "{cursor:?}: another chat's messages leaked");
        }
        // Cursors taken from the other chat still select only this chat's messages.
        let other = if chat == one.chat_id {
            &sent_two
        } else {
            &sent_one
        };
        let bound = other[9].message_id;
        let page = store
            .history(chat, Cursor::After(bound), 100)
            .await
            .unwrap();
        let expected: Vec<Message> = sent
            .iter()
            .filter(|m| m.message_id > bound)
            .cloned()
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(page, expected);
    }
}

/// Ids above `i64::MAX` (any client can put one in a URL) name no chat on every store: reads
/// answer "nothing there", never an error, so the API answers 403 (not a member) and no request
/// counts as an internal error.
pub async fn ids_beyond_storage_name_no_chat(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let chat = new_chat(store, std::slice::from_ref(&a)).await;
    insert(store, &message(chat.chat_id, &a, "m", "x")).await;
    for big in [Id(i64::MAX as u64 + 1), Id(u64::MAX - 1), Id(u64::MAX)] {
        let what = |op: &str| format!("{op}({big}) on a chat id above i64::MAX");
        assert_eq!(
            store
                .get_chat(big)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", what("get_chat"))),
            None
        );
        assert!(!store
            .is_member(big, &a)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", what("is_member"))));
        assert!(store
            .members(big)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", what("members")))
            .is_empty());
        assert!(!store
            .remove_member(big, &a)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", what("remove_member"))));
        for cursor in [Cursor::Latest, Cursor::After(Id(0)), Cursor::Before(big)] {
            assert!(store
                .history(big, cursor, 10)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", what("history")))
                .is_empty());
        }
    }
    // Cursors beyond i64::MAX on a real chat are bounds, not errors.
    assert_eq!(
        store
            .history(chat.chat_id, Cursor::Before(Id(u64::MAX)), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .history(chat.chat_id, Cursor::After(Id(i64::MAX as u64 + 1)), 10)
        .await
        .unwrap()
        .is_empty());
}

/// The store answers its readiness check.
pub async fn ping(store: &Arc<dyn MessageStore>) {
    store.ping().await.expect("ping failed");
}

/// Read and delivered markers are per user and chat, move only forward (a lower or equal id
/// changes nothing and reports `false`), are independent of each other, and read back sorted by
/// user; another chat's markers never show.
pub async fn markers_only_move_forward(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let b = unique_user("b");
    let chat = new_chat(store, &[a.clone(), b.clone()]).await;
    let other = new_chat(store, &[a.clone(), b.clone()]).await;
    assert!(
        store.markers(chat.chat_id).await.unwrap().is_empty(),
        "a new chat has no markers"
    );
    let (m1, m2, m3) = (ids().next_id(), ids().next_id(), ids().next_id());
    let chat_id = chat.chat_id;
    let advance = |user: &str, marker: Marker, id: Id| {
        let (store, user) = (store.clone(), user.to_string());
        async move {
            store
                .advance_marker(chat_id, &user, marker, id)
                .await
                .unwrap_or_else(|e| panic!("advance_marker({marker:?}, {id}) failed: {e}"))
        }
    };
    assert!(
        advance(&a, Marker::Read, m2).await,
        "the first marker moves"
    );
    assert!(
        !advance(&a, Marker::Read, m2).await,
        "the same id again: no move"
    );
    assert!(!advance(&a, Marker::Read, m1).await, "a lower id: no move");
    assert!(
        advance(&a, Marker::Delivered, m1).await,
        "delivered is its own marker"
    );
    assert!(advance(&a, Marker::Delivered, m3).await);
    assert!(advance(&b, Marker::Delivered, m1).await);
    assert!(advance(&a, Marker::Read, m3).await, "a higher id moves");
    // The other chat's marker does not leak into this one.
    assert!(store
        .advance_marker(other.chat_id, &b, Marker::Read, m3)
        .await
        .unwrap());
    let mut expected = vec![
        Markers {
            user_id: a.clone(),
            read_up_to: Some(m3),
            delivered_up_to: Some(m3),
        },
        Markers {
            user_id: b.clone(),
            read_up_to: None,
            delivered_up_to: Some(m1),
        },
    ];
    expected.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(store.markers(chat.chat_id).await.unwrap(), expected);
    assert!(store.markers(ids().next_id()).await.unwrap().is_empty());
    assert!(store.markers(Id(u64::MAX)).await.unwrap().is_empty());

    // Concurrent advances (say, two devices through two replicas) end at the highest id.
    let top = ids().next_id();
    let mut racers = Vec::new();
    for i in 0..8u64 {
        let id = if i == 5 { top } else { Id(top.0 - 1 - i) };
        racers.push(tokio::spawn(advance(&b, Marker::Read, id)));
    }
    for r in racers {
        r.await.expect("advance task");
    }
    let got = store.markers(chat.chat_id).await.unwrap();
    let b_row = got.iter().find(|m| m.user_id == b).expect("b has markers");
    assert_eq!(b_row.read_up_to, Some(top), "the highest id wins any race");
}

/// `read_markers` answers the user's read marker for each listed chat that has one, and nothing
/// for chats without one, unknown chats or ids beyond storage.
pub async fn read_markers_of_a_chat_list(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let b = unique_user("b");
    let read = new_chat(store, &[a.clone(), b.clone()]).await;
    let unread = new_chat(store, &[a.clone(), b.clone()]).await;
    let only_b = new_chat(store, &[a.clone(), b.clone()]).await;
    let m = ids().next_id();
    store
        .advance_marker(read.chat_id, &a, Marker::Read, m)
        .await
        .unwrap();
    // A delivered marker is not a read marker.
    store
        .advance_marker(unread.chat_id, &a, Marker::Delivered, m)
        .await
        .unwrap();
    store
        .advance_marker(only_b.chat_id, &b, Marker::Read, m)
        .await
        .unwrap();
    let got = store
        .read_markers(
            &a,
            &[
                read.chat_id,
                unread.chat_id,
                only_b.chat_id,
                ids().next_id(),
                Id(u64::MAX),
            ],
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got.get(&read.chat_id), Some(&m));
    assert!(store.read_markers(&a, &[]).await.unwrap().is_empty());
}

/// An unread count counts others' messages above the marker, reads at most `scan_max` of them
/// (saying when it stopped early), and never counts another chat's messages.
pub async fn unread_counts_are_bounded(store: &Arc<dyn MessageStore>) {
    let a = unique_user("a");
    let b = unique_user("b");
    let chat = new_chat(store, &[a.clone(), b.clone()]).await;
    let noise = new_chat(store, &[a.clone(), b.clone()]).await;
    let chat_id = chat.chat_id;
    let count = |after: Option<Id>, scan_max: usize| {
        let (store, a) = (store.clone(), a.clone());
        async move {
            store
                .count_unread(chat_id, &a, after, scan_max)
                .await
                .unwrap_or_else(|e| panic!("count_unread failed: {e}"))
        }
    };
    assert_eq!(
        count(None, 10).await,
        Unread {
            count: 0,
            complete: true
        }
    );
    // b writes 6, a writes 2 (interleaved), b writes 4 more: 10 from b, 12 in all.
    let mut sent = Vec::new();
    for i in 0..12 {
        let sender = if i == 2 || i == 7 { &a } else { &b };
        let m = message(chat.chat_id, sender, &format!("u{i}"), "x");
        insert(store, &m).await;
        sent.push(m);
        let n = message(noise.chat_id, &b, &format!("n{i}"), "noise");
        insert(store, &n).await;
    }
    assert_eq!(
        count(None, 100).await,
        Unread {
            count: 10,
            complete: true
        },
        "a's own messages are not unread"
    );
    assert_eq!(
        count(Some(sent[5].message_id), 100).await,
        Unread {
            count: 5,
            complete: true
        },
        "only messages above the marker"
    );
    assert_eq!(
        count(Some(sent[11].message_id), 100).await,
        Unread {
            count: 0,
            complete: true
        }
    );
    assert_eq!(
        count(None, 4).await,
        Unread {
            count: 3,
            complete: false
        },
        "a bounded read: 4 messages read (one of them a's), more left"
    );
    assert_eq!(
        count(Some(sent[7].message_id), 4).await,
        Unread {
            count: 4,
            complete: true
        },
        "exactly scan_max messages left: complete"
    );
}

/// A deadline far enough away that no store abandons the change.
fn later() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

async fn change(store: &Arc<dyn MessageStore>, m: &Message, c: &Change) -> (Id, Changed) {
    let change_id = ids().next_id();
    let changed = store
        .change_message(m.chat_id, m.message_id, c, change_id, later())
        .await
        .unwrap_or_else(|e| panic!("change_message({c:?}) failed: {e}"));
    (change_id, changed)
}

/// An edit replaces the body everywhere it is read (history, get_message), stamps `edited_at`
/// and `change_id` from the change id, and moves the chat's `last_change_id`; editing to the
/// same body again changes nothing; a send retried after an edit still finds the message.
pub async fn edits_replace_the_body_and_are_idempotent(store: &Arc<dyn MessageStore>) {
    let alice = unique_user("alice");
    let chat = new_chat(store, std::slice::from_ref(&alice)).await;
    let first = message(chat.chat_id, &alice, "e1", "helo");
    let other = message(chat.chat_id, &alice, "e2", "untouched");
    insert(store, &first).await;
    insert(store, &other).await;
    assert_eq!(
        store
            .get_message(chat.chat_id, first.message_id)
            .await
            .unwrap(),
        Some(first.clone()),
        "an unchanged message reads back as sent"
    );
    let edit = Change::Edit {
        body: "hello".into(),
    };
    let (change_id, changed) = change(store, &first, &edit).await;
    let edited = Message {
        body: "hello".into(),
        edited_at: Some(change_id.unix_ms()),
        change_id: Some(change_id),
        ..first.clone()
    };
    assert_eq!(changed, Changed::Applied(edited.clone()));
    assert_eq!(
        store
            .get_message(chat.chat_id, first.message_id)
            .await
            .unwrap(),
        Some(edited.clone())
    );
    let page = store
        .history(chat.chat_id, Cursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(
        page,
        vec![edited.clone(), other.clone()],
        "history shows the edit"
    );
    let got = store.get_chat(chat.chat_id).await.unwrap().unwrap();
    assert_eq!(got.last_change_id, Some(change_id));
    assert_eq!(
        got.last_message_id,
        Some(other.message_id),
        "an edit is no new message"
    );

    // The same edit again (a retry): nothing new.
    let (_, again) = change(store, &first, &edit).await;
    assert_eq!(again, Changed::Unchanged(edited.clone()));
    // A second edit with a new body gets the new change id.
    let (second_id, second) = change(
        store,
        &first,
        &Change::Edit {
            body: "hello!".into(),
        },
    )
    .await;
    let Changed::Applied(second) = second else {
        panic!("a second edit must apply, got {second:?}");
    };
    assert_eq!(second.change_id, Some(second_id));
    assert_eq!(second.body, "hello!");

    // The send retried after the edit returns the message as it is now, and does not
    // restore the old body.
    let retried = insert(store, &first).await;
    assert_eq!(retried, Insert::Duplicate(second.clone()));
    assert_eq!(
        store
            .get_message(chat.chat_id, first.message_id)
            .await
            .unwrap(),
        Some(second)
    );

    // Unknown messages and chats.
    let ghost = message(chat.chat_id, &alice, "ghost", "x");
    let (_, none) = change(store, &ghost, &edit).await;
    assert_eq!(none, Changed::NotFound);
    assert_eq!(
        store
            .get_message(chat.chat_id, ghost.message_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_message(Id(u64::MAX), first.message_id)
            .await
            .unwrap(),
        None
    );
}

/// A delete leaves a tombstone (same id and sender, `deleted`, no body) in history and
/// get_message, everywhere the body was (a retried send returns the tombstone, not the text);
/// deleting again changes nothing; a deleted message cannot be edited.
pub async fn deletes_leave_a_tombstone_without_the_body(store: &Arc<dyn MessageStore>) {
    let alice = unique_user("alice");
    let chat = new_chat(store, std::slice::from_ref(&alice)).await;
    let secret = message(chat.chat_id, &alice, "d1", "my secret");
    let kept = message(chat.chat_id, &alice, "d2", "kept");
    insert(store, &secret).await;
    insert(store, &kept).await;
    let (_, edited) = change(
        store,
        &secret,
        &Change::Edit {
            body: "my secret, edited".into(),
        },
    )
    .await;
    assert!(matches!(edited, Changed::Applied(_)));
    let (delete_id, deleted) = change(store, &secret, &Change::Delete).await;
    let Changed::Applied(tombstone) = deleted else {
        panic!("delete must apply, got {deleted:?}");
    };
    assert!(tombstone.deleted);
    assert_eq!(tombstone.body, "", "a tombstone carries no body");
    assert_eq!(tombstone.change_id, Some(delete_id));
    assert_eq!(tombstone.message_id, secret.message_id);
    assert_eq!(tombstone.sender_id, alice);
    let page = store
        .history(chat.chat_id, Cursor::After(Id(0)), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 2, "the tombstone stays in history");
    assert!(page[0].deleted && page[0].body.is_empty(), "{page:?}");
    assert_eq!(page[1], kept);
    for m in &page {
        assert!(!m.body.contains("secret"), "the body is gone: {m:?}");
    }
    let retried = insert(store, &secret).await;
    assert!(
        retried.message().deleted && !retried.message().body.contains("secret"),
        "a retried send finds the tombstone: {retried:?}"
    );
    let (_, again) = change(store, &secret, &Change::Delete).await;
    assert!(
        matches!(again, Changed::Unchanged(ref m) if m.deleted),
        "{again:?}"
    );
    let (_, revive) = change(
        store,
        &secret,
        &Change::Edit {
            body: "back".into(),
        },
    )
    .await;
    assert!(matches!(revive, Changed::Deleted(_)), "{revive:?}");
    assert_eq!(
        store
            .get_chat(chat.chat_id)
            .await
            .unwrap()
            .unwrap()
            .last_change_id,
        Some(delete_id)
    );
}

/// `changes` pages the changed messages above a change id, in change order, in their current
/// state, each once; the pages chain through `last` without gaps.
pub async fn changes_page_in_change_order(store: &Arc<dyn MessageStore>) {
    let alice = unique_user("alice");
    let chat = new_chat(store, std::slice::from_ref(&alice)).await;
    let mut sent = Vec::new();
    for i in 0..6 {
        let m = message(chat.chat_id, &alice, &format!("c{i}"), &format!("v{i}"));
        insert(store, &m).await;
        sent.push(m);
    }
    let empty = store.changes(chat.chat_id, Id(0), 10).await.unwrap();
    assert!(empty.messages.is_empty() && !empty.full, "{empty:?}");
    // Change messages 4, 1, 3 (in this order), then 1 again, then delete 2.
    let mut order = Vec::new();
    for i in [4usize, 1, 3, 1] {
        let body = format!("edit of {i} at {}", order.len());
        let (id, c) = change(store, &sent[i], &Change::Edit { body }).await;
        assert!(matches!(c, Changed::Applied(_)), "{c:?}");
        order.push((id, sent[i].message_id));
    }
    let (delete_id, _) = change(store, &sent[2], &Change::Delete).await;
    order.push((delete_id, sent[2].message_id));
    let all = store.changes(chat.chat_id, Id(0), 100).await.unwrap();
    let ids: Vec<Id> = all.messages.iter().map(|m| m.message_id).collect();
    assert_eq!(
        ids,
        vec![
            sent[4].message_id,
            sent[3].message_id,
            sent[1].message_id,
            sent[2].message_id
        ],
        "change order, each message once at its newest change"
    );
    assert!(all.messages[3].deleted && all.messages[3].body.is_empty());
    assert_eq!(all.messages[2].body, "edit of 1 at 3");
    assert!(!all.full);
    // Chained pages of two reach every change exactly as one big page does.
    let mut after = Id(0);
    let mut seen: Vec<Id> = Vec::new();
    for _ in 0..10 {
        let page = store.changes(chat.chat_id, after, 2).await.unwrap();
        for m in &page.messages {
            assert!(m.change_id.is_some_and(|c| c > after) || page.last > Some(after));
            seen.retain(|id| *id != m.message_id);
            seen.push(m.message_id);
        }
        if !page.full {
            break;
        }
        after = page.last.expect("a full page names its last change");
    }
    assert_eq!(seen, ids, "paged changes end in the same state");
    // After the newest change: nothing.
    let none = store.changes(chat.chat_id, delete_id, 10).await.unwrap();
    assert!(none.messages.is_empty(), "{none:?}");
    // Another chat's changes never show.
    let other = new_chat(store, std::slice::from_ref(&alice)).await;
    assert!(store
        .changes(other.chat_id, Id(0), 10)
        .await
        .unwrap()
        .messages
        .is_empty());
    assert_eq!(
        store
            .get_chat(chat.chat_id)
            .await
            .unwrap()
            .unwrap()
            .last_change_id,
        Some(delete_id)
    );
}

/// The creator is owner; admins are granted and revoked; non-members have no role and cannot
/// be granted one; a removed admin who is added back is a plain member.
pub async fn roles_owner_admin_member(store: &Arc<dyn MessageStore>) {
    let owner = unique_user("owner");
    let bob = unique_user("bob");
    let carol = unique_user("carol");
    let chat = new_chat(store, &[owner.clone(), bob.clone(), carol.clone()]).await;
    let role = |u: String| {
        let store = store.clone();
        async move { store.role(chat.chat_id, &u).await.unwrap() }
    };
    assert_eq!(role(owner.clone()).await, Some(Role::Owner));
    assert_eq!(role(bob.clone()).await, Some(Role::Member));
    assert_eq!(role(unique_user("stranger")).await, None);
    assert!(store.admins(chat.chat_id).await.unwrap().is_empty());

    assert!(store
        .set_role(chat.chat_id, &bob, Role::Admin)
        .await
        .unwrap());
    assert!(store
        .set_role(chat.chat_id, &carol, Role::Admin)
        .await
        .unwrap());
    assert_eq!(role(bob.clone()).await, Some(Role::Admin));
    let mut both = vec![bob.clone(), carol.clone()];
    both.sort();
    assert_eq!(store.admins(chat.chat_id).await.unwrap(), both);
    assert!(store
        .set_role(chat.chat_id, &carol, Role::Member)
        .await
        .unwrap());
    assert_eq!(role(carol.clone()).await, Some(Role::Member));
    assert_eq!(store.admins(chat.chat_id).await.unwrap(), vec![bob.clone()]);

    let stranger = unique_user("stranger");
    assert!(!store
        .set_role(chat.chat_id, &stranger, Role::Admin)
        .await
        .unwrap());
    assert_eq!(
        role(stranger.clone()).await,
        None,
        "no role for a non-member"
    );
    assert!(!store.is_member(chat.chat_id, &stranger).await.unwrap());

    // Removal drops the role with the membership.
    assert!(store.remove_member(chat.chat_id, &bob).await.unwrap());
    assert_eq!(role(bob.clone()).await, None);
    store
        .add_members(chat.chat_id, std::slice::from_ref(&bob))
        .await
        .unwrap();
    assert_eq!(role(bob.clone()).await, Some(Role::Member));
    assert!(store.admins(chat.chat_id).await.unwrap().is_empty());
    // Re-adding an existing admin leaves the role as it is.
    assert!(store
        .set_role(chat.chat_id, &carol, Role::Admin)
        .await
        .unwrap());
    store
        .add_members(chat.chat_id, std::slice::from_ref(&carol))
        .await
        .unwrap();
    assert_eq!(role(carol).await, Some(Role::Admin));
    // An owner who left has no role; re-added, the creator is owner again.
    assert!(store.remove_member(chat.chat_id, &owner).await.unwrap());
    assert_eq!(role(owner.clone()).await, None);
}

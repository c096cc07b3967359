//! Edits, deletes and moderation across real processes: a private Redis, two `gateway` nodes and
//! two `chat-api serve` replicas sharing one SQLite file. Edits and deletes reach live sockets on
//! both nodes; a client that was away learns them through the catch-up of changes; a removed
//! member gets `chat_removed` and nothing of the chat after it.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use shared::protocol::{Encoding, ServerFrame};
use shared::Id;
use support::{CatchUpClient, Cluster, Options, Recv};

/// Upper bound of each test, processes included.
const TEST_LIMIT: Duration = Duration::from_secs(50);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    support::bounded_by(TEST_LIMIT, test).await
}

/// Pumps `client` until `done` holds for it, failing after `limit`.
async fn pump_until(
    client: &mut CatchUpClient,
    limit: Duration,
    what: &str,
    done: impl Fn(&CatchUpClient) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(client) {
        assert!(
            Instant::now() < deadline,
            "{}: {what} not reached within {limit:?}",
            client.user
        );
        let step = (Instant::now() + Duration::from_millis(100)).min(deadline);
        if let Some(why) = client.pump(step, None).await {
            panic!(
                "{}: socket closed while waiting for {what}: {why}",
                client.user
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_both_gateways_and_a_client_that_was_away() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let users = ["ed-alice", "ed-bob", "ed-carol"];
        let mut clients: Vec<CatchUpClient> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let enc = if i % 2 == 0 {
                    Encoding::Json
                } else {
                    Encoding::Msgpack
                };
                CatchUpClient::new(u, cluster.token(u), enc)
            })
            .collect();
        // alice on A, bob on B, carol on A.
        for (i, c) in clients.iter_mut().enumerate() {
            c.connect(
                &cluster.http,
                &cluster.gateways[i % 2].ws_url(),
                cluster.api(i % 2),
            )
            .await;
        }
        let chat = cluster
            .create_chat(0, "ed-alice", &["ed-bob".into(), "ed-carol".into()])
            .await;
        let m1 = cluster.send(0, "ed-alice", chat, "e-1", "helo").await;
        let m2 = cluster
            .send(1, "ed-alice", chat, "e-2", "secret text")
            .await;
        let m3 = cluster.send(1, "ed-bob", chat, "e-3", "from bob").await;
        let want: HashSet<Id> = [m1.message_id, m2.message_id, m3.message_id].into();
        for c in clients.iter_mut() {
            assert_eq!(
                c.pump(Instant::now() + Duration::from_secs(5), Some(&want))
                    .await,
                None
            );
            assert!(want.iter().all(|id| c.holds(*id)), "{}", c.user);
        }
        // carol goes away.
        clients[2].socket = None;

        let alice = cluster.token("ed-alice");
        let bob = cluster.token("ed-bob");
        let path = |m: Id| format!("/v1/chats/{chat}/messages/{m}");
        let r = cluster
            .http
            .patch(
                cluster.api(1),
                &alice,
                &path(m1.message_id),
                &json!({"body": "hello"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["body"], "hello");
        assert!(r.body["edited_at"].as_u64().is_some(), "{}", r.body);
        // The same edit again is harmless and changes nothing.
        let again = cluster
            .http
            .patch(
                cluster.api(0),
                &alice,
                &path(m1.message_id),
                &json!({"body": "hello"}),
            )
            .await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.body["change_id"], r.body["change_id"]);
        // bob may neither edit nor delete alice's message; alice (the owner) deletes hers.
        let r = cluster
            .http
            .patch(
                cluster.api(0),
                &bob,
                &path(m1.message_id),
                &json!({"body": "hijack"}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
        let r = cluster
            .http
            .delete(cluster.api(0), &bob, &path(m2.message_id))
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
        let r = cluster
            .http
            .delete(cluster.api(0), &alice, &path(m2.message_id))
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let r = cluster
            .http
            .patch(
                cluster.api(1),
                &alice,
                &path(m2.message_id),
                &json!({"body": "revive"}),
            )
            .await;
        assert_eq!(
            r.status, 409,
            "a deleted message cannot be edited: {}",
            r.body
        );

        // Live sockets on both nodes get one update and one delete.
        for c in clients.iter_mut().take(2) {
            pump_until(
                c,
                Duration::from_secs(5),
                "the update and the delete",
                |c| c.updates_received >= 1 && c.deletes_received >= 1,
            )
            .await;
            assert_eq!(c.message(chat, m1.message_id).unwrap().body, "hello");
            let gone = c.message(chat, m2.message_id).unwrap();
            assert!(gone.deleted && gone.body.is_empty(), "{}: {gone:?}", c.user);
            c.socket
                .as_mut()
                .unwrap()
                .assert_quiet(Duration::from_millis(300))
                .await;
        }

        // History shows the edit and the tombstone, without the body.
        let page = cluster
            .http
            .get(
                cluster.api(0),
                &bob,
                &format!("/v1/chats/{chat}/messages?after=0"),
            )
            .await;
        assert_eq!(page.status, 200);
        let messages = page.body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["body"], "hello");
        assert_eq!(messages[1]["deleted"], true);
        assert!(messages[1].get("body").is_none(), "{}", messages[1]);
        assert!(!page.body.to_string().contains("secret text"));

        // carol comes back through the other node and catches up the changes she missed.
        let carol = &mut clients[2];
        assert_eq!(carol.message(chat, m1.message_id).unwrap().body, "helo");
        carol
            .connect(&cluster.http, &cluster.gateways[1].ws_url(), cluster.api(1))
            .await;
        assert!(carol.fetched_changes >= 2, "{}", carol.fetched_changes);
        assert_eq!(carol.message(chat, m1.message_id).unwrap().body, "hello");
        assert!(carol.message(chat, m2.message_id).unwrap().deleted);
        assert_eq!(carol.message(chat, m3.message_id).unwrap().body, "from bob");
        cluster.assert_no_panics();
    })
    .await;
}

/// No frame of any kind about `chat` arrives within `grace`, and the socket stays open.
async fn assert_nothing_of(socket: &mut support::WsClient, chat: Id, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        match socket.recv(deadline).await {
            Recv::Timeout => return,
            Recv::Frame(f) => {
                let about = match &f {
                    ServerFrame::Message { message } | ServerFrame::MessageUpdated { message } => {
                        Some(message.chat_id)
                    }
                    ServerFrame::MessageDeleted { chat_id, .. }
                    | ServerFrame::Typing { chat_id, .. }
                    | ServerFrame::ChatRemoved { chat_id } => Some(*chat_id),
                    _ => None,
                };
                assert_ne!(
                    about,
                    Some(chat),
                    "{}: frame after removal: {f:?}",
                    socket.user
                );
            }
            Recv::Closed(why) => panic!("{}: socket closed: {why}", socket.user),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_gets_chat_removed_and_nothing_more() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let owner = cluster.token("rm-owner");
        let chat = cluster
            .create_chat(0, "rm-owner", &["rm-admin".into(), "rm-gone".into()])
            .await;
        let r = cluster
            .http
            .patch(
                cluster.api(1),
                &owner,
                &format!("/v1/chats/{chat}/members/rm-admin"),
                &json!({"role": "admin"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["role"], "admin");
        // The removed member holds a socket on each node; the admin watches from node B.
        let mut gone_a = cluster.connect(0, "rm-gone", Encoding::Json).await;
        let mut gone_b = cluster.connect(1, "rm-gone", Encoding::Msgpack).await;
        let mut admin = cluster.connect(1, "rm-admin", Encoding::Json).await;
        let before = cluster.send(0, "rm-owner", chat, "r-1", "before").await;
        for s in [&mut gone_a, &mut gone_b, &mut admin] {
            s.expect(&[before.message_id], 0, Duration::from_secs(5))
                .await;
        }
        let r = cluster
            .http
            .delete(
                cluster.api(0),
                &cluster.token("rm-admin"),
                &format!("/v1/chats/{chat}/members/rm-gone"),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        for s in [&mut gone_a, &mut gone_b] {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match s.recv(deadline).await {
                    Recv::Frame(ServerFrame::ChatRemoved { chat_id }) => {
                        assert_eq!(chat_id, chat);
                        break;
                    }
                    Recv::Frame(ServerFrame::Message { message }) => {
                        panic!("a message before chat_removed: {message:?}")
                    }
                    Recv::Frame(_) => {}
                    other => panic!("waiting for chat_removed: {other:?}"),
                }
            }
        }
        // Everything later in the chat reaches the admin and never the removed member.
        let after = cluster.send(1, "rm-owner", chat, "r-2", "after").await;
        let r = cluster
            .http
            .patch(
                cluster.api(0),
                &owner,
                &format!("/v1/chats/{chat}/messages/{}", after.message_id),
                &json!({"body": "after, edited"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        admin
            .expect(&[after.message_id], 0, Duration::from_secs(5))
            .await;
        for s in [&mut gone_a, &mut gone_b] {
            assert_nothing_of(s, chat, Duration::from_millis(600)).await;
        }
        // Nor can it read or write the chat.
        let gone = cluster.token("rm-gone");
        let r = cluster
            .http
            .get(cluster.api(1), &gone, &format!("/v1/chats/{chat}/changes"))
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
        cluster.assert_no_panics();
    })
    .await;
}

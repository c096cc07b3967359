//! Receipts across real processes: a private Redis, two `gateway` nodes and two `chat-api serve`
//! replicas sharing one SQLite file. A socket's `ack` frames are coalesced by its gateway and
//! forwarded to an API replica, which stores the delivered marker and sends the other members a
//! `delivered` frame on whatever node they are; a read marker set through the other replica
//! reaches the members and the reader's other device; the markers read back through either
//! replica; a non-member's ack comes back as an error frame.

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use shared::protocol::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use shared::Id;
use support::{Cluster, Options, Recv, WsClient};

/// Upper bound of each test, processes included.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// An ack reaches the other members within the gateway's flush interval (500 ms) plus a request
/// and a fan-out; generous for a loaded machine.
const RECEIPT_WITHIN: Duration = Duration::from_secs(5);

/// Reads until a frame `want` accepts arrives (others are skipped), within `limit`.
async fn wait_for(
    ws: &mut WsClient,
    limit: Duration,
    what: &str,
    want: impl Fn(&ServerFrame) -> bool,
) -> ServerFrame {
    let deadline = Instant::now() + limit;
    loop {
        match ws.recv(deadline).await {
            Recv::Frame(f) if want(&f) => return f,
            Recv::Frame(_) => {}
            other => panic!(
                "{} ({}): waiting for {what}, got {other:?}",
                ws.user, ws.connection_id
            ),
        }
    }
}

/// No frame `unwanted` accepts arrives within `grace`.
async fn none_of(
    ws: &mut WsClient,
    grace: Duration,
    what: &str,
    unwanted: impl Fn(&ServerFrame) -> bool,
) {
    let deadline = Instant::now() + grace;
    loop {
        match ws.recv(deadline).await {
            Recv::Timeout => return,
            Recv::Frame(f) if unwanted(&f) => {
                panic!(
                    "{} ({}): unexpected {what}: {f:?}",
                    ws.user, ws.connection_id
                )
            }
            Recv::Frame(_) => {}
            Recv::Closed(why) => panic!("{}: socket closed: {why}", ws.user),
        }
    }
}

fn is_delivered(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Delivered { .. })
}

fn is_read(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Read { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_read_markers_reach_members_across_gateways_and_replicas() {
    support::bounded_by(TEST_LIMIT, async {
        let cluster = Cluster::start(Options::default()).await;
        // alice has a phone on node A and a laptop on node B; bob is on B, carol on A.
        let mut alice_phone = cluster.connect(0, "alice", Encoding::Json).await;
        let mut alice_laptop = cluster.connect(1, "alice", Encoding::Msgpack).await;
        let mut bob = cluster.connect(1, "bob", Encoding::Json).await;
        let mut carol = cluster.connect(0, "carol", Encoding::Msgpack).await;
        let chat = cluster
            .create_chat(0, "alice", &["bob".into(), "carol".into()])
            .await;
        let m1 = cluster.send(1, "bob", chat, "m1", "hello").await.message_id;
        for ws in [&mut alice_phone, &mut alice_laptop, &mut bob, &mut carol] {
            ws.expect(&[m1], 0, RECEIPT_WITHIN).await;
        }

        // A burst of acks (repeats and a lower id among them) is one delivered receipt.
        for id in [m1, m1, Id(m1.0 - 1), m1] {
            alice_phone
                .send_frame(&ClientFrame::Ack {
                    chat_id: chat,
                    message_id: id,
                })
                .await;
        }
        let delivered = ServerFrame::Delivered {
            chat_id: chat,
            user_id: "alice".into(),
            message_id: m1,
        };
        for ws in [&mut bob, &mut carol] {
            let got = wait_for(ws, RECEIPT_WITHIN, "delivered", is_delivered).await;
            assert_eq!(got, delivered, "{}", ws.user);
        }
        // Nothing more: the acks were coalesced, and a repeat does not move the marker.
        none_of(
            &mut bob,
            Duration::from_millis(1500),
            "second delivered",
            is_delivered,
        )
        .await;
        none_of(
            &mut alice_laptop,
            Duration::from_millis(200),
            "own delivered",
            is_delivered,
        )
        .await;

        // alice reads on her laptop, through the other replica: everyone, her phone included.
        let r = cluster
            .http
            .post(
                cluster.api(1),
                &cluster.token("alice"),
                &format!("/v1/chats/{chat}/read"),
                &json!({ "message_id": m1.to_string() }),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
        let read = ServerFrame::Read {
            chat_id: chat,
            user_id: "alice".into(),
            message_id: m1,
        };
        for ws in [&mut bob, &mut carol, &mut alice_phone, &mut alice_laptop] {
            let got = wait_for(ws, RECEIPT_WITHIN, "read", is_read).await;
            assert_eq!(got, read, "{} ({})", ws.user, ws.connection_id);
        }

        // Readable through the replica the gateways do not use.
        let r = cluster
            .http
            .get(
                cluster.api(1),
                &cluster.token("carol"),
                &format!("/v1/chats/{chat}/receipts"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let alice = r.body["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["user_id"] == "alice")
            .cloned()
            .unwrap();
        assert_eq!(alice["read_up_to"], m1.to_string());
        assert_eq!(alice["delivered_up_to"], m1.to_string());
        for (user, unread) in [("alice", 0), ("carol", 1), ("bob", 0)] {
            let r = cluster
                .http
                .get(cluster.api(0), &cluster.token(user), "/v1/chats")
                .await;
            assert_eq!(r.status, 200);
            assert_eq!(
                r.body["chats"][0]["unread_count"], unread,
                "{user}: {}",
                r.body
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_members_ack_is_answered_forbidden_and_changes_nothing() {
    support::bounded_by(TEST_LIMIT, async {
        let cluster = Cluster::start(Options {
            gateways: vec!["gw-a"],
            apis: 1,
            ..Options::default()
        })
        .await;
        let mut bob = cluster.connect(0, "bob", Encoding::Json).await;
        let mut mallory = cluster.connect(0, "mallory", Encoding::Msgpack).await;
        let chat = cluster.create_chat(0, "alice", &["bob".into()]).await;
        let m1 = cluster.send(0, "alice", chat, "m1", "hi").await.message_id;
        bob.expect(&[m1], 0, RECEIPT_WITHIN).await;
        mallory
            .send_frame(&ClientFrame::Ack {
                chat_id: chat,
                message_id: m1,
            })
            .await;
        let got = wait_for(&mut mallory, RECEIPT_WITHIN, "error", |f| {
            matches!(f, ServerFrame::Error { .. })
        })
        .await;
        assert!(
            matches!(
                got,
                ServerFrame::Error {
                    code: ErrorCode::Forbidden,
                    ..
                }
            ),
            "{got:?}"
        );
        none_of(
            &mut bob,
            Duration::from_millis(300),
            "delivered",
            is_delivered,
        )
        .await;
        let r = cluster
            .http
            .get(
                cluster.api(0),
                &cluster.token("alice"),
                &format!("/v1/chats/{chat}/receipts"),
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(
            r.body["receipts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["delivered_up_to"].is_null()),
            "{}",
            r.body
        );
        // The socket stays usable.
        mallory.ping(RECEIPT_WITHIN).await;
    })
    .await;
}

//! Presence fan-out under load, in process: one user in many small chats goes online and offline
//! repeatedly while every co-member is online on one of four gateway nodes. Checks the coalescing
//! (one stream entry per node per change, one frame per co-member per change however many chats
//! they share) and prints the time chat-api spends per change (`docs/BENCHMARKS.md`).
//!
//! `FLAPS` (default 10) sets the number of online/offline cycles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_api::presence::{handle, Backends, PresenceLimits};
use chat_api::store::sqlite::SqliteStore;
use chat_api::store::{Chat, MessageStore};
use shared::protocol::{decode_server, Encoding, ServerFrame};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::{NodeBus, NodeInfo, RouteRegistry, Subscription};
use shared::Id;

const CHATS: usize = 500;
const NODES: usize = 4;

fn node(i: usize) -> NodeInfo {
    NodeInfo {
        node_id: format!("n{i}"),
        incarnation: 1,
    }
}

/// Drains what the nodes' streams hold now: (envelopes, frames per recipient).
async fn drain(subs: &mut [Box<dyn Subscription>]) -> (usize, HashMap<String, usize>) {
    let mut envelopes = 0;
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for sub in subs.iter_mut() {
        loop {
            let batch = tokio::time::timeout(Duration::from_millis(50), sub.next_batch(10_000))
                .await
                .unwrap_or(Ok(Vec::new()))
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for e in batch {
                assert!(matches!(
                    decode_server(Encoding::Msgpack, &e.frame).unwrap(),
                    ServerFrame::Presence { .. }
                ));
                envelopes += 1;
                for r in e.recipients {
                    *per_user.entry(r).or_default() += 1;
                }
            }
        }
    }
    (envelopes, per_user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_per_co_member_per_change_for_a_user_in_many_chats() {
    let flaps: usize = std::env::var("FLAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    // "hub" is in every chat with "friend" (in all of them) and one member of its own.
    for i in 0..CHATS {
        let chat = Chat {
            chat_id: Id(1_000 + i as u64),
            title: None,
            created_by: "hub".into(),
            created_at_ms: 1,
            last_message_id: None,
            last_change_id: None,
        };
        store
            .create_chat(&chat, &["hub".into(), "friend".into(), format!("m{i}")])
            .await
            .unwrap();
    }
    let registry = Arc::new(MemoryRegistry::new());
    let bus = Arc::new(MemoryBus::new(1 << 16));
    let mut subs = Vec::new();
    for n in 0..NODES {
        registry.heartbeat(&node(n)).await.unwrap();
        subs.push(bus.subscribe(&node(n)).await.unwrap());
    }
    let mut co: Vec<String> = (0..CHATS).map(|i| format!("m{i}")).collect();
    co.push("friend".into());
    for (i, u) in co.iter().enumerate() {
        registry
            .add_routes(&node(i % NODES), std::slice::from_ref(u))
            .await
            .unwrap();
    }
    let b = Backends {
        store: store.clone(),
        registry: registry.clone(),
        bus: bus.clone(),
        limits: PresenceLimits {
            max_chats: CHATS,
            ..PresenceLimits::default()
        },
        fanout_timeout: Duration::from_secs(5),
    };
    let hub = vec!["hub".to_string()];
    let mut took = Vec::new();
    for flap in 0..flaps {
        for online in [true, false] {
            if online {
                registry.add_routes(&node(0), &hub).await.unwrap();
            } else {
                registry.remove_routes(&node(0), &hub).await.unwrap();
            }
            let started = Instant::now();
            handle(&b, hub.clone()).await;
            took.push(started.elapsed());
            let (envelopes, per_user) = drain(&mut subs).await;
            assert_eq!(
                envelopes, NODES,
                "flap {flap}: one stream entry per node per change"
            );
            assert_eq!(per_user.len(), co.len(), "every co-member told");
            assert!(
                per_user.values().all(|n| *n == 1),
                "one frame per co-member per change (friend shares {CHATS} chats)"
            );
            // The same report again (another node, another replica): nothing more.
            handle(&b, hub.clone()).await;
            assert_eq!(
                drain(&mut subs).await.0,
                0,
                "an unchanged state is not announced again"
            );
        }
    }
    took.sort();
    let total: Duration = took.iter().sum();
    eprintln!(
        "presence fan-out: user in {CHATS} chats, {} co-members on {NODES} nodes, {} changes: \
         per change p50 {:?}, max {:?}, mean {:?}; {} stream entries and {} frames per change",
        co.len(),
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1],
        total / took.len() as u32,
        NODES,
        co.len(),
    );
}

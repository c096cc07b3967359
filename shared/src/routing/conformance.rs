//! The one conformance suite for [`RouteRegistry`] and [`NodeBus`] implementations. Each backend's
//! tests call these functions with a fresh instance; node and user names are made unique per call
//! so that backends shared between tests (one Redis) do not interfere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{fan_out, Envelope, NodeBus, NodeInfo, NodeLoad, NodeStatus, RouteRegistry};
use crate::protocol::{decode_server, Encoding, ServerFrame};

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn node(id: &str, incarnation: u64) -> NodeInfo {
    NodeInfo {
        node_id: id.to_string(),
        incarnation,
    }
}

fn sorted(mut groups: super::NodeGroups) -> super::NodeGroups {
    for (_, users) in &mut groups {
        users.sort();
    }
    groups.sort();
    groups
}

/// Routes are added and removed per node, grouped by node on lookup, and only live nodes count.
pub async fn registry_routes_and_liveness(reg: Arc<dyn RouteRegistry>) {
    let (a, b) = (node(&unique("node-a"), 1), node(&unique("node-b"), 7));
    let (u1, u2, u3) = (unique("u1"), unique("u2"), unique("u3"));
    assert!(
        !reg.heartbeat(&a).await.unwrap(),
        "a new node is not known yet"
    );
    assert!(
        reg.heartbeat(&a).await.unwrap(),
        "a refreshed node is known"
    );
    reg.heartbeat(&b).await.unwrap();
    reg.add_routes(&a, &[u1.clone(), u2.clone()]).await.unwrap();
    reg.add_routes(&b, std::slice::from_ref(&u2)).await.unwrap();

    let all = [u1.clone(), u2.clone(), u3.clone()];
    let mut expected = vec![
        (a.node_id.clone(), vec![u1.clone(), u2.clone()]),
        (b.node_id.clone(), vec![u2.clone()]),
    ];
    expected.iter_mut().for_each(|(_, u)| u.sort());
    expected.sort();
    assert_eq!(sorted(reg.lookup(&all).await.unwrap()), expected);

    reg.remove_routes(&a, std::slice::from_ref(&u2))
        .await
        .unwrap();
    let groups = sorted(reg.lookup(&all).await.unwrap());
    assert_eq!(groups.len(), 2);
    assert!(groups
        .iter()
        .any(|(n, u)| n == &a.node_id && u == &vec![u1.clone()]));

    // A node that leaves takes its routes with it.
    reg.leave(&a).await.unwrap();
    assert_eq!(
        reg.lookup(&all).await.unwrap(),
        vec![(b.node_id.clone(), vec![u2.clone()])]
    );
    assert!(reg
        .lookup(std::slice::from_ref(&u1))
        .await
        .unwrap()
        .is_empty());
    assert!(reg.lookup(&[]).await.unwrap().is_empty());
}

/// A route registered by an earlier incarnation of a node is never used by a later one.
pub async fn registry_ignores_stale_incarnations(reg: Arc<dyn RouteRegistry>) {
    let id = unique("node");
    let (old, new) = (node(&id, 1), node(&id, 2));
    let (u1, u2) = (unique("u1"), unique("u2"));
    reg.heartbeat(&old).await.unwrap();
    reg.add_routes(&old, std::slice::from_ref(&u1))
        .await
        .unwrap();
    // The node restarts: a new incarnation heartbeats and registers its own users only.
    assert!(
        !reg.heartbeat(&new).await.unwrap(),
        "a new incarnation is not known yet"
    );
    reg.add_routes(&new, std::slice::from_ref(&u2))
        .await
        .unwrap();
    assert_eq!(
        reg.lookup(&[u1.clone(), u2.clone()]).await.unwrap(),
        vec![(id.clone(), vec![u2.clone()])]
    );
    let p = reg.presence(&[u1.clone(), u2.clone()]).await.unwrap();
    assert!(!p[0].online && p[1].online);
}

/// Presence follows routes; last-seen is set when the last route goes.
pub async fn registry_presence(reg: Arc<dyn RouteRegistry>) {
    let n = node(&unique("node"), 3);
    let (u1, u2) = (unique("u1"), unique("u2"));
    reg.heartbeat(&n).await.unwrap();
    let p = reg.presence(std::slice::from_ref(&u1)).await.unwrap();
    assert_eq!((p[0].online, p[0].last_seen_ms), (false, None));
    reg.add_routes(&n, &[u1.clone(), u2.clone()]).await.unwrap();
    let p = reg.presence(&[u2.clone(), u1.clone()]).await.unwrap();
    assert_eq!(
        p.iter().map(|p| p.user_id.clone()).collect::<Vec<_>>(),
        vec![u2.clone(), u1.clone()]
    );
    assert!(p.iter().all(|p| p.online && p.last_seen_ms.is_none()));
    let before = crate::ids::now_unix_ms();
    reg.remove_routes(&n, std::slice::from_ref(&u1))
        .await
        .unwrap();
    let p = reg.presence(std::slice::from_ref(&u1)).await.unwrap();
    assert!(!p[0].online);
    let seen = p[0]
        .last_seen_ms
        .expect("last seen set when the last socket goes");
    assert!(seen >= before.saturating_sub(1000) && seen <= crate::ids::now_unix_ms() + 1000);
}

/// For backends whose node liveness expires (Redis): a node that stops heartbeating is no
/// longer routed to once `liveness_ttl` has passed, and its users show offline, while a node
/// that keeps heartbeating stays routable.
pub async fn registry_expired_node_not_routed(reg: Arc<dyn RouteRegistry>, liveness_ttl: Duration) {
    let (dead, live) = (node(&unique("node-dead"), 1), node(&unique("node-live"), 1));
    let (u1, u2) = (unique("u1"), unique("u2"));
    reg.heartbeat(&dead).await.unwrap();
    reg.heartbeat(&live).await.unwrap();
    reg.add_routes(&dead, std::slice::from_ref(&u1))
        .await
        .unwrap();
    reg.add_routes(&live, std::slice::from_ref(&u2))
        .await
        .unwrap();
    assert_eq!(
        reg.lookup(&[u1.clone(), u2.clone()]).await.unwrap().len(),
        2
    );
    let until = tokio::time::Instant::now() + liveness_ttl + Duration::from_millis(300);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(liveness_ttl / 4).await;
        reg.heartbeat(&live).await.unwrap();
    }
    assert_eq!(
        reg.lookup(&[u1.clone(), u2.clone()]).await.unwrap(),
        vec![(live.node_id.clone(), vec![u2.clone()])]
    );
    let p = reg.presence(&[u1.clone(), u2.clone()]).await.unwrap();
    assert!(!p[0].online && p[1].online);
}

/// Envelopes published to a node reach that node's subscription, and only that node's, in order.
pub async fn bus_delivers_per_node(bus: Arc<dyn NodeBus>) {
    let (a, b) = (node(&unique("node-a"), 1), node(&unique("node-b"), 1));
    let mut sub_a = bus.subscribe(&a).await.unwrap();
    let mut sub_b = bus.subscribe(&b).await.unwrap();
    let frames: Vec<ServerFrame> = (0..5)
        .map(|i| ServerFrame::Event {
            event: serde_json::json!({ "i": i }),
        })
        .collect();
    for f in &frames {
        bus.publish(vec![(
            a.node_id.clone(),
            Envelope::new(vec!["x".into()], f),
        )])
        .await
        .unwrap();
    }
    bus.publish(vec![
        (
            a.node_id.clone(),
            Envelope::new(vec!["y".into(), "z".into()], &ServerFrame::Pong),
        ),
        (
            b.node_id.clone(),
            Envelope::new(vec!["w".into()], &ServerFrame::Pong),
        ),
    ])
    .await
    .unwrap();

    let got_a = collect(&mut *sub_a, 6, 6).await;
    let decoded: Vec<ServerFrame> = got_a
        .iter()
        .map(|e| decode_server(Encoding::Msgpack, &e.frame).unwrap())
        .collect();
    assert_eq!(&decoded[..5], &frames[..]);
    assert_eq!(got_a[5].recipients, vec!["y".to_string(), "z".to_string()]);
    let got_b = collect(&mut *sub_b, 1, 1).await;
    assert_eq!(got_b[0].recipients, vec!["w".to_string()]);
    // Nothing else arrives at b.
    let extra = sub_b.next_batch(10).await.unwrap();
    assert!(extra.is_empty(), "unexpected {extra:?}");
}

/// `fan_out` reaches exactly the online recipients, one envelope per node.
pub async fn fan_out_groups_by_node(reg: Arc<dyn RouteRegistry>, bus: Arc<dyn NodeBus>) {
    let (a, b) = (node(&unique("node-a"), 1), node(&unique("node-b"), 1));
    let mut sub_a = bus.subscribe(&a).await.unwrap();
    let mut sub_b = bus.subscribe(&b).await.unwrap();
    reg.heartbeat(&a).await.unwrap();
    reg.heartbeat(&b).await.unwrap();
    let users: Vec<String> = (0..100).map(|i| unique(&format!("m{i}"))).collect();
    reg.add_routes(&a, &users[..40]).await.unwrap();
    reg.add_routes(&b, &users[40..90]).await.unwrap();
    // users[90..] are offline.
    let report = fan_out(&reg, &bus, &users, &ServerFrame::Pong)
        .await
        .unwrap();
    assert_eq!((report.nodes, report.recipients_online), (2, 90));
    let mut got_a = collect(&mut *sub_a, 1, 1).await.remove(0).recipients;
    let mut got_b = collect(&mut *sub_b, 1, 1).await.remove(0).recipients;
    got_a.sort();
    got_b.sort();
    let (mut want_a, mut want_b) = (users[..40].to_vec(), users[40..90].to_vec());
    want_a.sort();
    want_b.sort();
    assert_eq!((got_a, got_b), (want_a, want_b));
}

/// `live_nodes` and `node_statuses` list the nodes that heartbeat and not those that left;
/// a load report counts only for the incarnation that made it.
pub async fn registry_lists_live_nodes(reg: Arc<dyn RouteRegistry>) {
    let (a, b) = (node(&unique("node-a"), 1), node(&unique("node-b"), 2));
    reg.heartbeat(&a).await.unwrap();
    reg.heartbeat(&b).await.unwrap();
    let live = reg.live_nodes().await.unwrap();
    assert!(
        live.contains(&a.node_id) && live.contains(&b.node_id),
        "{live:?}"
    );
    let load = |sockets, users| NodeLoad { sockets, users };
    reg.report_load(&a, load(5, 3)).await.unwrap();
    let statuses = reg.node_statuses().await.unwrap();
    let find = |statuses: &[NodeStatus], n: &NodeInfo| {
        statuses.iter().find(|s| s.node_id == n.node_id).cloned()
    };
    let sa = find(&statuses, &a).expect("node a listed");
    assert_eq!(sa.incarnation, 1);
    assert_eq!(sa.load.map(|(l, _)| l), Some(load(5, 3)));
    let sb = find(&statuses, &b).expect("node b listed");
    assert_eq!((sb.incarnation, sb.load), (2, None));
    // A restarted node b: the old incarnation's report does not describe the new one.
    reg.report_load(&b, load(9, 9)).await.unwrap();
    let b2 = node(&b.node_id, 3);
    reg.heartbeat(&b2).await.unwrap();
    let sb = find(&reg.node_statuses().await.unwrap(), &b2).expect("node b listed");
    assert_eq!((sb.incarnation, sb.load), (3, None));
    reg.report_load(&b2, load(1, 1)).await.unwrap();
    reg.leave(&a).await.unwrap();
    let live = reg.live_nodes().await.unwrap();
    assert!(
        !live.contains(&a.node_id) && live.contains(&b.node_id),
        "{live:?}"
    );
    let statuses = reg.node_statuses().await.unwrap();
    assert!(find(&statuses, &a).is_none(), "{statuses:?}");
    assert_eq!(
        find(&statuses, &b2).and_then(|s| s.load).map(|(l, _)| l),
        Some(load(1, 1))
    );
}

/// A node that falls behind by more than its bus holds for it (`cap` envelopes: the stream cap,
/// the channel capacity) is told so with the next batch it reads, before delivering it: the
/// subscription reports a gap once. Reads that lost nothing, full ones included, report none.
pub async fn bus_reports_lost_envelopes(bus: Arc<dyn NodeBus>, cap: usize) {
    let n = node(&unique("node-gap"), 1);
    let mut sub = bus.subscribe(&n).await.unwrap();
    let batch = cap.min(100);
    let publish = |count: usize| {
        let entries = (0..count)
            .map(|i| {
                let frame = ServerFrame::Event {
                    event: serde_json::json!({ "i": i }),
                };
                (n.node_id.clone(), Envelope::new(vec!["x".into()], &frame))
            })
            .collect();
        let bus = bus.clone();
        async move { bus.publish(entries).await.unwrap() }
    };
    // Half the cap, read in full batches: nothing lost.
    publish(cap / 2).await;
    let got = collect(&mut *sub, cap / 2, batch).await;
    assert_eq!(got.len(), cap / 2);
    assert!(!sub.take_gap(), "a gap reported although nothing was lost");
    // Twice the cap while the node does not read: some are lost.
    publish(2 * cap + 100).await;
    let first = sub.next_batch(batch).await.unwrap();
    assert!(!first.is_empty());
    assert!(sub.take_gap(), "lost envelopes were not reported");
    assert!(!sub.take_gap(), "a gap is reported once");
    // What is left is read without another gap.
    let _ = sub.next_batch(batch).await.unwrap();
    assert!(
        !sub.take_gap(),
        "a gap reported although nothing more was lost"
    );
}

async fn collect(sub: &mut dyn super::Subscription, n: usize, batch: usize) -> Vec<Envelope> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} envelopes arrived",
            out.len()
        );
        out.extend(sub.next_batch(batch.min(n - out.len())).await.unwrap());
    }
    out
}

/// The announced presence state is swapped per user and the previous one returned, so that
/// only the first of several handlers of the same change announces it.
pub async fn registry_announced_presence(reg: Arc<dyn RouteRegistry>) {
    let n = node(&unique("node"), 5);
    let (u1, u2) = (unique("u1"), unique("u2"));
    reg.heartbeat(&n).await.unwrap();
    reg.add_routes(&n, &[u1.clone(), u2.clone()]).await.unwrap();
    assert_eq!(
        reg.swap_announced(&[(u1.clone(), true), (u2.clone(), false)])
            .await
            .unwrap(),
        vec![None, None],
        "never announced"
    );
    assert_eq!(
        reg.swap_announced(&[(u2.clone(), false), (u1.clone(), true)])
            .await
            .unwrap(),
        vec![Some(false), Some(true)],
        "the order asked, and the state recorded before"
    );
    assert_eq!(
        reg.swap_announced(std::slice::from_ref(&(u1.clone(), false)))
            .await
            .unwrap(),
        vec![Some(true)]
    );
    assert_eq!(
        reg.swap_announced(std::slice::from_ref(&(u1.clone(), false)))
            .await
            .unwrap(),
        vec![Some(false)]
    );
    assert!(reg.swap_announced(&[]).await.unwrap().is_empty());
}

/// Reads presence reports until `want` users came or `limit` passed.
async fn read_reports(
    reader: &mut Box<dyn super::PresenceReports>,
    want: usize,
    limit: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        if let Ok(batch) = reader.next_batch(100).await {
            got.extend(batch);
        }
    }
    got
}

/// Presence reports made after a reader started reach it, in batches, and with several readers
/// each report reaches exactly one of them.
pub async fn bus_presence_reports(bus: Arc<dyn NodeBus>) {
    let mut reader = bus.presence_reports().await.unwrap();
    let (u1, u2, u3) = (unique("u1"), unique("u2"), unique("u3"));
    bus.report_presence(vec![u1.clone(), u2.clone()])
        .await
        .unwrap();
    bus.report_presence(vec![u3.clone()]).await.unwrap();
    bus.report_presence(Vec::new()).await.unwrap();
    let got = read_reports(&mut reader, 3, Duration::from_secs(5)).await;
    assert_eq!(got, vec![u1.clone(), u2.clone(), u3.clone()]);

    // A second reader shares the work: no report is read twice, none is lost.
    let mut second = bus.presence_reports().await.unwrap();
    let users: Vec<String> = (0..20).map(|i| unique(&format!("r{i}"))).collect();
    for u in &users {
        bus.report_presence(vec![u.clone()]).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    while all.len() < users.len() && tokio::time::Instant::now() < deadline {
        let (a, b) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(300), reader.next_batch(100)),
            tokio::time::timeout(Duration::from_millis(300), second.next_batch(100)),
        );
        for batch in [a, b].into_iter().flatten().flatten() {
            all.extend(batch);
        }
    }
    let mut sorted_all = all.clone();
    sorted_all.sort();
    sorted_all.dedup();
    assert_eq!(
        sorted_all.len(),
        all.len(),
        "a report was read twice: {all:?}"
    );
    let mut expected = users.clone();
    expected.sort();
    assert_eq!(sorted_all, expected);
}

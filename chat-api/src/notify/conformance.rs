//! The one conformance suite of [`NotifyQueue`], run against the SQLite queue and the Redis
//! queue (a private redis-server). `make(name, cap, claim_idle)` opens a new handle, as a new
//! replica would; handles made with the same name share one backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shared::Id;

use super::{Entry, NotifyQueue, Pushed};

fn entry(user: &str, message: u64) -> Entry {
    Entry {
        user_id: user.into(),
        chat_id: Id(9),
        message_id: Id(message),
        preview: format!("body {message}"),
        enqueued_ms: 1_000 + message,
    }
}

/// Runs every case; panics on the first failure.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn(&'static str, usize, Duration) -> Fut,
    Fut: Future<Output = Arc<dyn NotifyQueue>>,
{
    claims_in_order_and_ack_deletes(make("order", 100, Duration::from_secs(30)).await).await;
    a_full_queue_drops_new_entries(make("full", 2, Duration::from_secs(30)).await).await;
    let idle = Duration::from_millis(400);
    another_replica_claims_what_a_dead_one_held(
        make("lease", 100, idle).await,
        make("lease", 100, idle).await,
        idle,
    )
    .await;
    dead_letters_leave_the_queue(make("dead", 100, Duration::from_secs(30)).await).await;
}

async fn claims_in_order_and_ack_deletes(q: Arc<dyn NotifyQueue>) {
    let pushed = q
        .push(vec![entry("a", 1), entry("b", 2), entry("c", 3)])
        .await
        .unwrap();
    assert_eq!(pushed, Pushed { queued: 3, full: 0 });
    assert_eq!(q.backlog().await.unwrap(), 3);
    let first = q.claim(2).await.unwrap();
    assert_eq!(
        first.iter().map(|c| c.entry.clone()).collect::<Vec<_>>(),
        vec![entry("a", 1), entry("b", 2)],
        "oldest first, fields kept"
    );
    let rest = q.claim(10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].entry, entry("c", 3));
    assert!(
        q.claim(10).await.unwrap().is_empty(),
        "claimed entries are not handed out twice"
    );
    let ids: Vec<String> = first.iter().map(|c| c.id.clone()).collect();
    q.ack(&ids).await.unwrap();
    assert_eq!(q.backlog().await.unwrap(), 1);
    // Acknowledging again (a retried ack) changes nothing.
    q.ack(&ids).await.unwrap();
    assert_eq!(q.backlog().await.unwrap(), 1);
    assert_eq!(q.dead_letters().await.unwrap(), 0);
}

async fn a_full_queue_drops_new_entries(q: Arc<dyn NotifyQueue>) {
    let pushed = q
        .push(vec![entry("a", 1), entry("b", 1), entry("c", 1)])
        .await
        .unwrap();
    assert_eq!(pushed, Pushed { queued: 2, full: 1 });
    assert_eq!(q.backlog().await.unwrap(), 2);
    assert_eq!(
        q.push(vec![entry("d", 1)]).await.unwrap(),
        Pushed { queued: 0, full: 1 }
    );
    // Claimed entries still count: they are not delivered yet.
    let claimed = q.claim(1).await.unwrap();
    assert_eq!(q.push(vec![entry("d", 1)]).await.unwrap().full, 1);
    q.ack(&[claimed[0].id.clone()]).await.unwrap();
    assert_eq!(
        q.push(vec![entry("d", 1)]).await.unwrap(),
        Pushed { queued: 1, full: 0 },
        "room again once an entry was delivered"
    );
}

async fn another_replica_claims_what_a_dead_one_held(
    one: Arc<dyn NotifyQueue>,
    two: Arc<dyn NotifyQueue>,
    idle: Duration,
) {
    one.push(vec![entry("a", 1), entry("b", 2)]).await.unwrap();
    let held = one.claim(10).await.unwrap();
    assert_eq!(held.len(), 2);
    let ids: Vec<String> = held.iter().map(|c| c.id.clone()).collect();
    assert!(two.claim(10).await.unwrap().is_empty());
    // Renewed within the idle time: nobody else takes them.
    tokio::time::sleep(idle / 2).await;
    one.renew(&ids).await.unwrap();
    tokio::time::sleep(idle / 2 + idle / 4).await;
    assert!(
        two.claim(10).await.unwrap().is_empty(),
        "renewed claims stay with their replica"
    );
    // Not renewed (the replica died): the other replica takes them, fields intact.
    tokio::time::sleep(idle).await;
    let taken = two.claim(10).await.unwrap();
    assert_eq!(
        taken.iter().map(|c| c.entry.clone()).collect::<Vec<_>>(),
        vec![entry("a", 1), entry("b", 2)]
    );
    // A replica that stops releases what it holds: the other takes it at once.
    two.release(&ids).await.unwrap();
    let again = one.claim(10).await.unwrap();
    assert_eq!(again.len(), 2, "released claims are taken at once");
    one.ack(&ids).await.unwrap();
    assert_eq!(one.backlog().await.unwrap(), 0);
}

async fn dead_letters_leave_the_queue(q: Arc<dyn NotifyQueue>) {
    q.push(vec![entry("a", 1), entry("b", 2)]).await.unwrap();
    let claimed = q.claim(10).await.unwrap();
    q.dead_letter(&claimed[..1], "status 500").await.unwrap();
    assert_eq!(q.backlog().await.unwrap(), 1);
    assert_eq!(q.dead_letters().await.unwrap(), 1);
    // An entry acknowledged meanwhile (by a replica that re-sent it) is not a dead letter.
    q.ack(&[claimed[1].id.clone()]).await.unwrap();
    q.dead_letter(&claimed[1..], "status 500").await.unwrap();
    assert_eq!(q.dead_letters().await.unwrap(), 1);
    assert_eq!(q.backlog().await.unwrap(), 0);
    assert!(q.claim(10).await.unwrap().is_empty());
}

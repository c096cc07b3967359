//! Presence reports. The gateway knows when a user's first socket on this node opened and when
//! the last one closed; it knows no chats. It reports such users to chat-api over the node bus
//! ([`shared::routing::NodeBus::report_presence`]); chat-api reads the user's state across all
//! nodes from the route registry and tells the co-members when it changed.
//!
//! A first socket is reported once its route is registered. A last socket is reported only after
//! `PRESENCE_GRACE`, and only if the user still has no socket here then, so that a reconnect
//! within the grace period reports nothing (and a reconnect to another node reads as online in
//! the registry when chat-api handles the report).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use shared::routing::NodeBus;

use crate::hub::Hub;

/// Users waiting out their grace period at once. Past it, a user whose last socket closed is
/// reported at once (without the grace period): a reconnect may then show as offline and online.
pub const PENDING_MAX: usize = 100_000;
/// Users per report (one bus append each).
const REPORT_BATCH: usize = 1000;
use crate::telemetry::{presence_report, PRESENCE_REPORTS_TOTAL as REPORTS_TOTAL};

/// Users whose last socket here closed, with the end of their grace period.
#[derive(Default)]
pub struct PresenceReporter {
    pending: Mutex<HashMap<Arc<str>, Instant>>,
    wake: Notify,
}

impl PresenceReporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Users waiting out their grace period.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Called after the route sync registered `added` (first socket here) and removed `removed`
/// (last socket here closed): reports the first now, the second after the grace period.
pub async fn routes_synced(
    reporter: &PresenceReporter,
    grace: Duration,
    bus: &dyn NodeBus,
    added: &[String],
    removed: &[String],
) {
    let mut now_due = Vec::new();
    if !added.is_empty() || !removed.is_empty() {
        let mut pending = reporter.pending.lock();
        for user in added {
            pending.remove(user.as_str());
        }
        let until = Instant::now() + grace;
        for user in removed {
            if pending.len() < PENDING_MAX || pending.contains_key(user.as_str()) {
                pending.insert(Arc::from(user.as_str()), until);
            } else {
                now_due.push(user.clone());
            }
        }
    }
    if !removed.is_empty() {
        reporter.wake.notify_one();
    }
    now_due.extend(added.iter().cloned());
    report(bus, now_due).await;
}

/// Reports `users` in batches; failures are counted and logged, not retried: a report is a
/// hint, and `GET /v1/presence` reads the registry itself.
async fn report(bus: &dyn NodeBus, users: Vec<String>) {
    for batch in users.chunks(REPORT_BATCH) {
        let result = match bus.report_presence(batch.to_vec()).await {
            Ok(()) => presence_report::OK,
            Err(e) => {
                tracing::warn!(error = %e, users = batch.len(), "presence report failed");
                presence_report::FAILED
            }
        };
        metrics::counter!(REPORTS_TOTAL, "result" => result).increment(batch.len() as u64);
    }
}

/// Takes the users whose grace period ended by `now` (or all when `all`) and who still have no
/// socket here.
fn take_due(
    reporter: &PresenceReporter,
    hub: &Hub,
    now: Instant,
    all: bool,
) -> (Vec<String>, Option<Instant>) {
    let mut pending = reporter.pending.lock();
    let mut due = Vec::new();
    let mut next: Option<Instant> = None;
    pending.retain(|user, until| {
        if all || *until <= now {
            if !hub.has_user(user) {
                due.push(user.to_string());
            }
            false
        } else {
            next = Some(next.map_or(*until, |n| n.min(*until)));
            true
        }
    });
    (due, next)
}

/// Reports users whose grace period ended, until `stop` is set; then reports every user still
/// waiting (a draining node will not be there to report them later).
pub async fn presence_task(
    reporter: &PresenceReporter,
    hub: &Hub,
    bus: &dyn NodeBus,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (due, next) = take_due(reporter, hub, Instant::now(), false);
        report(bus, due).await;
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = reporter.wake.notified() => {}
            _ = stop.changed() => break,
        }
    }
    let (due, _) = take_due(reporter, hub, Instant::now(), true);
    report(bus, due).await;
}

//! Real-time fan-out of a stored message to its chat's members, and what happens when it fails
//! after the message was acknowledged (201): a bounded background retry, and when that gives up
//! or has no room, a `resync` notice to the members it may have missed (docs/RELIABILITY.md).
//!
//! The retry sheds rather than amplifies under load: at most [`RETRY_CONCURRENCY`] retries run at
//! once, at most `API_FANOUT_RETRY_QUEUE` wait, and each gives up `API_FANOUT_RETRY_WINDOW` after
//! the first failure. A failed fan-out that finds the queue full goes straight to a notice.
//! Notices are coalesced: whatever piled up while the previous batch was being sent goes out as
//! one route lookup and one small stream entry per node (the members of that node, with the
//! `resync` frame), or, when the routes cannot be read or the members are unknown, one whole-node
//! notice per live node ([`Envelope::node_gap`]). A notice that cannot be appended either is kept
//! and tried again; if Redis is down for the gateways too, they notice on their own and resync.
//!
//! With the offline hook on (`crate::notify`), an attempt also queues a push notification for
//! each member without a live route, from the same route lookup, alongside the stream appends.
//! Each attempt remembers which of the two succeeded, so a retry redoes only the other; a
//! message whose notifications could not be queued by the end of the retry window is counted
//! (`api_notify_enqueue_failures_total`) and logged.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use shared::backoff::Backoff;
use shared::protocol::ServerFrame;
use shared::routing::{
    fan_out, publish, Envelope, FanOut, NodeBus, NodeGroups, RouteRegistry, RoutingError,
};
use shared::Id;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::notify::Notifier;
use crate::store::MessageStore;
use crate::telemetry::{
    fanout_error, notice_scope, retry_outcome, FANOUT_RESYNC_NOTICES_TOTAL, FANOUT_RETRIES_TOTAL,
    FANOUT_RETRY_QUEUE, NOTIFY_ENQUEUE_FAILURES_TOTAL,
};

/// Retries running at once per replica; the rest wait in the bounded queue.
pub const RETRY_CONCURRENCY: usize = 16;
/// First pause between retries of one fan-out (doubling, with jitter, up to the maximum).
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Members remembered for pending notices; past it, every live node gets a whole-node notice.
const NOTICE_USERS_MAX: usize = 100_000;
/// Pause after a notice batch could not be sent, doubling up to the maximum.
const NOTICE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const NOTICE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the routing side needs to fan out: the backends and the deadlines.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn MessageStore>,
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    /// Deadline of one fan-out attempt (`API_FANOUT_TIMEOUT`).
    pub attempt_timeout: Duration,
    /// The offline hook, when `NOTIFY_WEBHOOK_URL` is set.
    pub notify: Option<Notifier>,
}

/// Settings of the background retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// How long after the first failure retries go on before a notice is sent instead.
    pub window: Duration,
    /// Failed fan-outs waiting for a retry; zero: none, every failure becomes a notice.
    pub queue: usize,
}

/// The fan-out of one replica. Its background tasks start with the first failure and end when
/// it is dropped.
pub struct Fanout {
    backends: Backends,
    settings: RetrySettings,
    retry: OnceLock<mpsc::Sender<Job>>,
    notices: Arc<Notices>,
}

struct Job {
    chat_id: Id,
    /// The message the frame is about (for logs).
    message_id: Id,
    frame: ServerFrame,
    /// The chat's members, when the failed attempt got as far as reading them (or the one
    /// recipient of a frame meant for one user).
    members: Option<Vec<String>>,
    progress: Progress,
    give_up_at: Instant,
}

/// What the attempts of one fan-out have done so far, so that a retry redoes only the rest.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// The message was appended to its online members' node streams.
    delivered: bool,
    /// Its offline members were queued for push notifications (or the hook is off, or the frame
    /// is not a new message: edits, deletes and removals notify no one).
    notified: bool,
}

impl Progress {
    fn new(backends: &Backends, frame: &ServerFrame) -> Progress {
        Progress {
            delivered: false,
            notified: backends.notify.is_none() || !matches!(frame, ServerFrame::Message { .. }),
        }
    }

    /// Counts a message given up on before its offline members were queued.
    fn give_up(&self, job: &Job) {
        if !self.notified {
            metrics::counter!(NOTIFY_ENQUEUE_FAILURES_TOTAL).increment(1);
            tracing::warn!(chat_id = %job.chat_id, message_id = %job.message_id,
                "offline members of a stored message could not be queued for push notifications");
        }
    }
}

impl Fanout {
    pub fn new(backends: Backends, settings: RetrySettings) -> Fanout {
        Fanout {
            backends,
            settings,
            retry: OnceLock::new(),
            notices: Arc::new(Notices::default()),
        }
    }

    /// Delivers `frame` about `message_id` of `chat_id` to its members' sockets (the sender's
    /// other devices included): to the chat's members as they are now, or to `recipients` when
    /// given (a `chat_removed` for the removed member). The frame is already stored, so a failure is never returned: it is retried in
    /// the background and, failing that, the members are told to catch up.
    pub async fn deliver_frame(
        &self,
        chat_id: Id,
        message_id: Id,
        frame: ServerFrame,
        recipients: Option<Vec<String>>,
    ) {
        self.deliver_to(chat_id, message_id, &frame, recipients.as_deref())
            .await;
    }

    /// [`Fanout::deliver_frame`] on borrowed parts: `recipients` are the chat's members when the
    /// caller already read them (a send checks the sender's membership with the same read), or
    /// the one recipient of a frame meant for one user; `None` reads the members. Nothing is
    /// copied unless the attempt fails and is queued for a retry.
    pub async fn deliver_to(
        &self,
        chat_id: Id,
        message_id: Id,
        frame: &ServerFrame,
        recipients: Option<&[String]>,
    ) {
        self.deliver_routed(chat_id, message_id, frame, recipients, None)
            .await;
    }

    /// [`Fanout::deliver_to`] with the routes of `recipients` when the caller already read them
    /// (a send reads them alongside its cache token write, after the store write), with the time
    /// that read started: the first attempt uses them instead of a lookup of its own, and the
    /// fan-out's duration counts from that read.
    pub async fn deliver_routed(
        &self,
        chat_id: Id,
        message_id: Id,
        frame: &ServerFrame,
        recipients: Option<&[String]>,
        routes: Option<(NodeGroups, std::time::Instant)>,
    ) {
        let (routes, started) = match routes {
            Some((groups, read_at)) => (Some(groups), read_at),
            None => (None, std::time::Instant::now()),
        };
        let mut members = recipients.map(Cow::Borrowed);
        let mut progress = Progress::new(&self.backends, frame);
        let work = attempt(
            &self.backends,
            chat_id,
            frame,
            (&mut members, routes.filter(|_| recipients.is_some())),
            &mut progress,
            "fanout::first",
        );
        let error = match tokio::time::timeout(self.backends.attempt_timeout, work).await {
            Ok(Ok(report)) => {
                metrics::histogram!(crate::telemetry::FANOUT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::telemetry::FANOUT_RECIPIENTS_ONLINE_TOTAL)
                    .increment(report.recipients_online as u64);
                return;
            }
            Ok(Err(error)) => {
                metrics::counter!(crate::telemetry::FANOUT_ERRORS_TOTAL, "reason" => fanout_error::BACKEND)
                    .increment(1);
                error
            }
            Err(_) => {
                metrics::counter!(crate::telemetry::FANOUT_ERRORS_TOTAL, "reason" => fanout_error::TIMEOUT)
                    .increment(1);
                "timed out".to_string()
            }
        };
        tracing::warn!(%chat_id, %message_id, %error,
            "real-time fan-out failed after the message was stored; retrying in the background");
        self.retry_later(Job {
            chat_id,
            message_id,
            frame: frame.clone(),
            members: members.map(Cow::into_owned),
            progress,
            give_up_at: Instant::now() + self.settings.window,
        });
    }

    fn retry_later(&self, job: Job) {
        if self.settings.queue == 0 || self.settings.window.is_zero() {
            metrics::counter!(FANOUT_RETRIES_TOTAL, "outcome" => retry_outcome::SHED).increment(1);
            job.progress.give_up(&job);
            self.notify(job.members);
            return;
        }
        let tx = self.retry.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.settings.queue);
            tokio::spawn(retry_task(
                rx,
                self.backends.clone(),
                Arc::downgrade(&self.notices),
            ));
            tx
        });
        match tx.try_send(job) {
            Ok(()) => {
                metrics::gauge!(FANOUT_RETRY_QUEUE).increment(1.0);
            }
            Err(e) => {
                metrics::counter!(FANOUT_RETRIES_TOTAL, "outcome" => retry_outcome::SHED)
                    .increment(1);
                let job = match e {
                    mpsc::error::TrySendError::Full(job)
                    | mpsc::error::TrySendError::Closed(job) => job,
                };
                tracing::warn!(chat_id = %job.chat_id, message_id = %job.message_id,
                    "fan-out retry queue full (API_FANOUT_RETRY_QUEUE); telling the members to catch up");
                job.progress.give_up(&job);
                self.notify(job.members);
            }
        }
    }

    /// Queues a `resync` notice for `members` (`None`: unknown, every live node).
    fn notify(&self, members: Option<Vec<String>>) {
        self.notices.notify(members, &self.backends);
    }
}

/// One fan-out attempt: the members (read once and kept for the retries), then the routes
/// (unless given: the members' routes read by the caller) and the stream appends, and with the
/// offline hook on, the queueing of the members without a route. `failpoint` injects a failure
/// in tests built with failpoints.
async fn attempt(
    backends: &Backends,
    chat_id: Id,
    frame: &ServerFrame,
    (members, routes): (&mut Option<Cow<'_, [String]>>, Option<NodeGroups>),
    progress: &mut Progress,
    failpoint: &'static str,
) -> Result<FanOut, String> {
    if members.is_none() {
        *members = Some(Cow::Owned(
            backends
                .store
                .members(chat_id)
                .await
                .map_err(|e| e.to_string())?,
        ));
    }
    fail::fail_point!(failpoint, |_| Err(format!(
        "injected failure at {failpoint}"
    )));
    // Unused in builds without failpoints.
    let _ = failpoint;
    let users = members.as_deref().unwrap_or_default();
    let (notifier, message) = match (&backends.notify, frame) {
        (Some(n), ServerFrame::Message { message }) if !progress.notified => (n, message),
        _ => {
            let report = match routes {
                Some(groups) => publish(&backends.bus, groups, frame).await,
                None => fan_out(&backends.registry, &backends.bus, users, frame).await,
            }
            .map_err(|e| e.to_string())?;
            progress.delivered = true;
            return Ok(report);
        }
    };
    // The hook needs the routes itself: one lookup serves the delivery and the queueing.
    let groups = match routes {
        Some(groups) => groups,
        None => backends
            .registry
            .lookup(users)
            .await
            .map_err(|e| e.to_string())?,
    };
    // The sender wrote the message: no notification for it.
    let offline: Vec<String> = {
        let online: HashSet<&str> = groups
            .iter()
            .flat_map(|(_, users)| users.iter().map(String::as_str))
            .collect();
        users
            .iter()
            .filter(|u| **u != message.sender_id && !online.contains(u.as_str()))
            .cloned()
            .collect()
    };
    let delivered = progress.delivered;
    let deliver = async {
        if delivered {
            return Ok(FanOut::default());
        }
        publish(&backends.bus, groups, frame).await
    };
    let (delivery, queued) = tokio::join!(deliver, notifier.enqueue(message, &offline));
    progress.delivered |= delivery.is_ok();
    progress.notified |= queued.is_ok();
    queued.map_err(|e| e.to_string())?;
    delivery.map_err(|e| e.to_string())
}

/// Takes failed fan-outs off the queue, at most [`RETRY_CONCURRENCY`] at a time, until the queue
/// is dropped (with its [`Fanout`]).
async fn retry_task(mut rx: mpsc::Receiver<Job>, backends: Backends, notices: Weak<Notices>) {
    let running = Arc::new(Semaphore::new(RETRY_CONCURRENCY));
    loop {
        let Ok(permit) = running.clone().acquire_owned().await else {
            return;
        };
        let Some(job) = rx.recv().await else { return };
        let (backends, notices) = (backends.clone(), notices.clone());
        tokio::spawn(async move {
            let (delivered, progress) = retry(&backends, &job).await;
            metrics::gauge!(FANOUT_RETRY_QUEUE).decrement(1.0);
            drop(permit);
            if delivered {
                metrics::counter!(FANOUT_RETRIES_TOTAL, "outcome" => retry_outcome::DELIVERED)
                    .increment(1);
                tracing::info!(chat_id = %job.chat_id, message_id = %job.message_id,
                    "real-time fan-out delivered on retry");
                return;
            }
            metrics::counter!(FANOUT_RETRIES_TOTAL, "outcome" => retry_outcome::ABANDONED)
                .increment(1);
            progress.give_up(&job);
            tracing::warn!(chat_id = %job.chat_id, message_id = %job.message_id,
                "real-time fan-out still failing at the end of API_FANOUT_RETRY_WINDOW; telling the members to catch up");
            if let Some(notices) = notices.upgrade() {
                notices.notify(job.members, &backends);
            }
        });
    }
}

/// Retries one fan-out with jittered backoff until it succeeds (true) or its window ends.
/// Each attempt is cut at the attempt timeout or the window's end, whichever comes first, so no
/// work outlives the window. Returns what was done, too.
async fn retry(backends: &Backends, job: &Job) -> (bool, Progress) {
    let mut members = job.members.as_deref().map(Cow::Borrowed);
    let mut progress = job.progress;
    let mut backoff = Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX);
    loop {
        let left = job.give_up_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, progress);
        }
        tokio::time::sleep(backoff.next_delay().min(left)).await;
        let left = job.give_up_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, progress);
        }
        let work = attempt(
            backends,
            job.chat_id,
            &job.frame,
            (&mut members, None),
            &mut progress,
            "fanout::retry",
        );
        if let Ok(Ok(_)) = tokio::time::timeout(backends.attempt_timeout.min(left), work).await {
            return (true, progress);
        }
    }
}

/// Pending `resync` notices, sent in coalesced batches by one task at a time.
#[derive(Default)]
struct Notices {
    pending: Mutex<Pending>,
    /// Whether the sending task runs.
    running: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Pending {
    members: HashSet<String>,
    /// Notify every live node (members unknown, too many of them, or routes unreadable).
    all_nodes: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.all_nodes && self.members.is_empty()
    }
}

impl Notices {
    fn add(&self, members: Option<Vec<String>>) {
        let mut p = self.pending.lock();
        match members {
            Some(members) if !p.all_nodes => {
                p.members.extend(members);
                if p.members.len() > NOTICE_USERS_MAX {
                    p.members = HashSet::new();
                    p.all_nodes = true;
                }
            }
            Some(_) => {}
            None => {
                p.members = HashSet::new();
                p.all_nodes = true;
            }
        }
    }

    /// Queues a notice for `members` (`None`: every live node) and makes sure it gets sent.
    fn notify(self: &Arc<Self>, members: Option<Vec<String>>, backends: &Backends) {
        self.add(members);
        self.start(backends);
    }

    /// Starts the sending task unless it runs.
    fn start(self: &Arc<Self>, backends: &Backends) {
        use std::sync::atomic::Ordering;
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(notice_task(Arc::downgrade(self), backends.clone()));
    }

    /// Sends what is pending; on failure puts it back (merged with what came meanwhile).
    async fn flush(&self, backends: &Backends) -> Result<(), RoutingError> {
        let taken = std::mem::take(&mut *self.pending.lock());
        if taken.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(backends.attempt_timeout, send_notices(backends, &taken))
            .await
            .unwrap_or(Err(RoutingError::Timeout));
        if result.is_err() {
            self.add((!taken.all_nodes).then(|| taken.members.into_iter().collect()));
        }
        result
    }
}

/// One route lookup for the members and one stream entry per node holding some of them; every
/// live node gets a whole-node notice instead when the members are unknown or the routes cannot
/// be read.
async fn send_notices(backends: &Backends, pending: &Pending) -> Result<(), RoutingError> {
    if !pending.all_nodes {
        let members: Vec<String> = pending.members.iter().cloned().collect();
        let lookup = async {
            fail::fail_point!("fanout::notice_lookup", |_| Err(RoutingError::Unavailable(
                "injected failure at fanout::notice_lookup".into()
            )));
            backends.registry.lookup(&members).await
        };
        match lookup.await {
            Ok(groups) => {
                let entries: Vec<(String, Envelope)> = groups
                    .into_iter()
                    .map(|(node, users)| (node, Envelope::new(users, &ServerFrame::Resync)))
                    .collect();
                let n = entries.len() as u64;
                backends.bus.publish(entries).await?;
                metrics::counter!(FANOUT_RESYNC_NOTICES_TOTAL, "scope" => notice_scope::MEMBERS)
                    .increment(n);
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "routes unreadable; notifying every live node instead");
            }
        }
    }
    let nodes = backends.registry.live_nodes().await?;
    let n = nodes.len() as u64;
    backends
        .bus
        .publish(
            nodes
                .into_iter()
                .map(|n| (n, Envelope::node_gap()))
                .collect(),
        )
        .await?;
    metrics::counter!(FANOUT_RESYNC_NOTICES_TOTAL, "scope" => notice_scope::NODE).increment(n);
    Ok(())
}

/// Sends pending notices until none are left, then stops (the next notice starts it again).
async fn notice_task(notices: Weak<Notices>, backends: Backends) {
    use std::sync::atomic::Ordering;
    let mut backoff = Backoff::new(NOTICE_BACKOFF_MIN, NOTICE_BACKOFF_MAX);
    loop {
        let Some(n) = notices.upgrade() else { return };
        match n.flush(&backends).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, "resync notice could not be sent; retrying");
                drop(n);
                backoff.wait().await;
                continue;
            }
        }
        n.running.store(false, Ordering::Release);
        // A notice added between the flush and the store found the task still running.
        if n.pending.lock().is_empty() || n.running.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(prefix: &str, n: usize) -> Option<Vec<String>> {
        Some((0..n).map(|i| format!("{prefix}{i}")).collect())
    }

    #[test]
    fn notices_coalesce_members_and_fall_back_to_whole_nodes() {
        let n = Notices::default();
        n.add(users("a", 3));
        n.add(users("a", 2));
        n.add(users("b", 1));
        assert_eq!(n.pending.lock().members.len(), 4, "one entry per member");
        assert!(!n.pending.lock().all_nodes);
        // Unknown members: every node, and the member list is dropped.
        n.add(None);
        assert!(n.pending.lock().all_nodes && n.pending.lock().members.is_empty());
        n.add(users("c", 5));
        assert!(
            n.pending.lock().members.is_empty(),
            "whole nodes cover them"
        );
        // Too many members to remember: every node.
        let n = Notices::default();
        n.add(users("d", NOTICE_USERS_MAX + 1));
        let p = n.pending.lock();
        assert!(p.all_nodes && p.members.is_empty());
    }
}

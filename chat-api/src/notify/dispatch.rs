//! The dispatcher: one task per API replica that claims queued entries, groups them per user and
//! chat for `NOTIFY_BATCH_WINDOW`, drops users who came online meanwhile, and POSTs each batch to
//! the webhook, retrying with jittered exponential backoff, then dead-lettering.
//!
//! Bounded: at most [`HELD_MAX`] entries held (claimed and not yet delivered), at most
//! `NOTIFY_BATCH_MAX` messages per batch, `NOTIFY_IN_FLIGHT_MAX` batches being sent, each request
//! cut at `NOTIFY_REQUEST_TIMEOUT`. Held entries' claims are renewed every third of
//! `NOTIFY_CLAIM_IDLE`; an entry is deleted from the queue only after its batch was accepted
//! (2xx) or dead-lettered, so a replica that dies loses nothing: another claims its entries.
//! One that stops cleanly releases the entries still waiting for their window, so that another
//! replica takes them at once.

use shared::backoff::Backoff;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use shared::routing::RouteRegistry;
use shared::Id;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::{signature, Claimed, NotifyQueue, NotifySettings, WebhookBatch};
use super::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
use crate::telemetry::{
    NOTIFY_DEAD_LETTERED_TOTAL, NOTIFY_DROPPED_TOTAL, NOTIFY_HELD, NOTIFY_RETRIES_TOTAL,
    NOTIFY_SENT_TOTAL,
};

/// Most entries one replica holds at once (waiting for their window, or in flight).
pub const HELD_MAX: usize = 10_000;
/// Most entries taken per claim.
const CLAIM_MAX: usize = 500;
/// How often an idle dispatcher looks for new entries.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Longest pause between attempts of a batch, and after a failed claim.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long [`Running::stop`] waits for the dispatcher to release its waiting entries.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Drains the queue of one replica; [`Dispatcher::spawn`] runs it until [`Running::stop`].
pub struct Dispatcher {
    queue: Arc<dyn NotifyQueue>,
    registry: Arc<dyn RouteRegistry>,
    settings: Arc<NotifySettings>,
    http: reqwest::Client,
}

/// A running dispatcher.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops claiming and releases the entries waiting for their window (bounded by
    /// [`STOP_TIMEOUT`]).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Entries of one user and chat waiting to be sent together.
struct Batch {
    user_id: String,
    chat_id: Id,
    entries: Vec<Claimed>,
    /// When the oldest entry was queued (Unix ms): the window runs from it.
    first_ms: u64,
}

impl Dispatcher {
    pub fn new(
        queue: Arc<dyn NotifyQueue>,
        registry: Arc<dyn RouteRegistry>,
        settings: NotifySettings,
    ) -> Result<Dispatcher, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            // A redirect is a misconfigured URL, not a delivery: it counts as a failure.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(settings.in_flight_max)
            .build()?;
        Ok(Dispatcher {
            queue,
            registry,
            settings: Arc::new(settings),
            http,
        })
    }

    pub fn spawn(self) -> Running {
        let (stop, stopped) = watch::channel(false);
        Running {
            stop,
            task: tokio::spawn(self.run(stopped)),
        }
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let s = self.settings.clone();
        let window_ms = s.batch_window.as_millis() as u64;
        let permits = Arc::new(Semaphore::new(s.in_flight_max));
        // Each send task reports once, and at most `in_flight_max` run: bounded.
        let (done_tx, mut done_rx) = mpsc::channel::<Vec<String>>(s.in_flight_max);
        let mut held: HashSet<String> = HashSet::new();
        let mut open: HashMap<(String, Id), Batch> = HashMap::new();
        let mut ready: VecDeque<Batch> = VecDeque::new();
        let mut renewed_at = Instant::now();
        let mut claim_backoff = Backoff::new(POLL_INTERVAL, BACKOFF_MAX);
        let mut claim_after = Instant::now();
        tracing::info!(url = %s.url, "push notification dispatcher started");
        loop {
            // Stopped, or the handle dropped without a stop: the same.
            if *stopped.borrow() || stopped.has_changed().is_err() {
                // Batches being sent finish or are claimed again after NOTIFY_CLAIM_IDLE; the
                // waiting ones are handed over now.
                let waiting: Vec<String> = open
                    .values()
                    .chain(ready.iter())
                    .flat_map(|b| b.entries.iter().map(|c| c.id.clone()))
                    .collect();
                if let Err(e) = self.queue.release(&waiting).await {
                    tracing::warn!(error = %e, "releasing notification claims failed; they are claimed again after NOTIFY_CLAIM_IDLE");
                }
                tracing::info!(
                    released = waiting.len(),
                    "push notification dispatcher stopped"
                );
                return;
            }
            while let Ok(ids) = done_rx.try_recv() {
                for id in ids {
                    held.remove(&id);
                }
            }
            // Take more entries while there is room.
            let room = HELD_MAX.saturating_sub(held.len()).min(CLAIM_MAX);
            let mut more = false;
            if room > 0 && Instant::now() >= claim_after {
                match self.queue.claim(room).await {
                    Ok(claimed) => {
                        claim_backoff.reset();
                        more = claimed.len() == room;
                        for c in claimed {
                            if held.insert(c.id.clone()) {
                                add(&mut open, &mut ready, c, s.batch_max);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notification queue unreadable; retrying");
                        claim_after = Instant::now() + claim_backoff.next_delay();
                    }
                }
            }
            metrics::gauge!(NOTIFY_HELD).set(held.len() as f64);
            if renewed_at.elapsed() >= s.claim_idle / 3 && !held.is_empty() {
                let ids: Vec<String> = held.iter().cloned().collect();
                match self.queue.renew(&ids).await {
                    Ok(()) => renewed_at = Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "renewing notification claims failed"),
                }
            }
            // Batches whose window ended join the full ones.
            let now_ms = shared::ids::now_unix_ms();
            let due: Vec<(String, Id)> = open
                .iter()
                .filter(|(_, b)| b.first_ms.saturating_add(window_ms) <= now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            for k in due {
                if let Some(b) = open.remove(&k) {
                    ready.push_back(b);
                }
            }
            if !ready.is_empty() && permits.available_permits() > 0 {
                self.send_ready(&mut ready, &mut held, &permits, &done_tx)
                    .await;
            }
            if more {
                continue;
            }
            let next_due = open
                .values()
                .map(|b| b.first_ms.saturating_add(window_ms))
                .min()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms)));
            let wait = next_due.map_or(POLL_INTERVAL, |d| d.min(POLL_INTERVAL));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => {}
                Some(ids) = done_rx.recv() => {
                    for id in ids {
                        held.remove(&id);
                    }
                }
            }
        }
    }

    /// Starts sending ready batches while send slots are free. Users with a live route now are
    /// dropped from them (their entries acknowledged): they see the messages on their sockets.
    async fn send_ready(
        &self,
        ready: &mut VecDeque<Batch>,
        held: &mut HashSet<String>,
        permits: &Arc<Semaphore>,
        done: &mpsc::Sender<Vec<String>>,
    ) {
        let take = ready.len().min(permits.available_permits());
        let batches: Vec<Batch> = ready.drain(..take).collect();
        let users: Vec<String> = batches
            .iter()
            .map(|b| b.user_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let online: HashSet<String> = match self.registry.lookup(&users).await {
            Ok(groups) => groups.into_iter().flat_map(|(_, u)| u).collect(),
            Err(e) => {
                // Without routes nobody can be told apart: try again on the next round.
                tracing::warn!(error = %e, "routes unreadable; notification batches wait");
                ready.extend(batches);
                return;
            }
        };
        let mut came_online = Vec::new();
        for batch in batches {
            if online.contains(&batch.user_id) {
                came_online.extend(batch.entries.iter().map(|c| c.id.clone()));
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                ready.push_front(batch);
                continue;
            };
            let (queue, settings, http, done) = (
                self.queue.clone(),
                self.settings.clone(),
                self.http.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let ids = deliver(&*queue, &settings, &http, batch).await;
                drop(permit);
                let _ = done.send(ids).await;
            });
        }
        if !came_online.is_empty() {
            metrics::counter!(NOTIFY_DROPPED_TOTAL, "reason" => crate::telemetry::notify_drop::CAME_ONLINE)
                .increment(came_online.len() as u64);
            if let Err(e) = self.queue.ack(&came_online).await {
                // Claimed again after NOTIFY_CLAIM_IDLE, and checked again then.
                tracing::warn!(error = %e, "acknowledging notifications of users now online failed");
            }
            for id in came_online {
                held.remove(&id);
            }
        }
    }
}

/// Adds a claimed entry to its user's and chat's open batch; a batch that reached `batch_max`
/// is ready at once.
fn add(
    open: &mut HashMap<(String, Id), Batch>,
    ready: &mut VecDeque<Batch>,
    c: Claimed,
    batch_max: usize,
) {
    let key = (c.entry.user_id.clone(), c.entry.chat_id);
    let batch = open.entry(key.clone()).or_insert_with(|| Batch {
        user_id: c.entry.user_id.clone(),
        chat_id: c.entry.chat_id,
        entries: Vec::new(),
        first_ms: c.entry.enqueued_ms,
    });
    batch.first_ms = batch.first_ms.min(c.entry.enqueued_ms);
    batch.entries.push(c);
    if batch.entries.len() >= batch_max {
        if let Some(full) = open.remove(&key) {
            ready.push_back(full);
        }
    }
}

/// Sends one batch until the webhook accepts it or the attempts run out; then deletes its
/// entries from the queue (or moves them to the dead letters). Returns the entries' ids.
async fn deliver(
    queue: &dyn NotifyQueue,
    settings: &NotifySettings,
    http: &reqwest::Client,
    batch: Batch,
) -> Vec<String> {
    let ids: Vec<String> = batch.entries.iter().map(|c| c.id.clone()).collect();
    let Some(body) = WebhookBatch::from_entries(batch.entries.iter().map(|c| &c.entry)) else {
        return ids;
    };
    let key = body.idempotency_key();
    // Serializing a struct of strings and ids cannot fail.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let sig = signature(&settings.secret, &json);
    let mut backoff = Backoff::new(settings.retry_backoff, BACKOFF_MAX);
    let mut attempt = 1;
    loop {
        let result = http
            .post(&settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &sig)
            .header(IDEMPOTENCY_HEADER, &key)
            .body(json.clone())
            .send()
            .await;
        let failure = match result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("status {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Some("timed out".to_string()),
            Err(e) => Some(format!("request failed: {e}")),
        };
        let Some(failure) = failure else {
            metrics::counter!(NOTIFY_SENT_TOTAL).increment(1);
            tracing::debug!(user_id = %batch.user_id, chat_id = %batch.chat_id,
                messages = body.count, attempt, "notification batch delivered");
            if let Err(e) = queue.ack(&ids).await {
                // Sent again after NOTIFY_CLAIM_IDLE with the same idempotency key.
                tracing::warn!(error = %e, "acknowledging a delivered notification batch failed");
            }
            return ids;
        };
        if attempt >= settings.max_attempts {
            metrics::counter!(NOTIFY_DEAD_LETTERED_TOTAL).increment(1);
            tracing::warn!(user_id = %batch.user_id, chat_id = %batch.chat_id, attempts = attempt,
                error = %failure, "notification batch dead-lettered after NOTIFY_MAX_ATTEMPTS");
            let reason = format!("{failure} after {attempt} attempts");
            if let Err(e) = queue.dead_letter(&batch.entries, &reason).await {
                tracing::warn!(error = %e, "moving a notification batch to the dead letters failed");
            }
            return ids;
        }
        metrics::counter!(NOTIFY_RETRIES_TOTAL).increment(1);
        tracing::info!(user_id = %batch.user_id, chat_id = %batch.chat_id, attempt,
            error = %failure, "notification webhook failed; retrying");
        backoff.wait().await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Entry;

    fn claimed(id: usize, user: &str, chat: u64, at: u64) -> Claimed {
        Claimed {
            id: id.to_string(),
            entry: Entry {
                user_id: user.into(),
                chat_id: Id(chat),
                message_id: Id(id as u64),
                preview: String::new(),
                enqueued_ms: at,
            },
        }
    }

    #[test]
    fn entries_batch_per_user_and_chat_up_to_the_cap() {
        let (mut open, mut ready) = (HashMap::new(), VecDeque::new());
        add(&mut open, &mut ready, claimed(1, "bob", 1, 50), 3);
        add(&mut open, &mut ready, claimed(2, "bob", 1, 40), 3);
        add(&mut open, &mut ready, claimed(3, "bob", 2, 60), 3);
        add(&mut open, &mut ready, claimed(4, "eve", 1, 60), 3);
        assert_eq!(open.len(), 3);
        assert_eq!(
            open[&("bob".to_string(), Id(1))].first_ms,
            40,
            "window from the oldest"
        );
        add(&mut open, &mut ready, claimed(5, "bob", 1, 70), 3);
        assert_eq!(
            ready.len(),
            1,
            "a full batch is ready before its window ends"
        );
        assert_eq!(ready[0].entries.len(), 3);
        add(&mut open, &mut ready, claimed(6, "bob", 1, 80), 3);
        assert_eq!(
            open[&("bob".to_string(), Id(1))].entries.len(),
            1,
            "a new batch"
        );
    }
}

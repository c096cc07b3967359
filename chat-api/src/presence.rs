//! Pushed presence and who may see it.
//!
//! Presence is shared between co-members: users who are both members of a chat of at most
//! [`PresenceLimits::max_chat_members`] members. Gateways report users whose first socket on
//! a node opened, or whose last one closed a grace period ago (`shared::routing::NodeBus::
//! report_presence`); the worker here reads the reports (the replicas share them), reads each
//! user's state across all nodes from the route registry, records it as announced
//! ([`RouteRegistry::swap_announced`]) and, only when that changed it, computes the user's
//! co-members once and fans ONE `presence` frame out to all of them (one stream entry per
//! gateway node). A user in 500 chats costs one frame per co-member socket per change, not one
//! per chat.
//!
//! Bounded: the chats of a user examined ([`PresenceLimits::max_chats`]), the chat size that
//! still shares presence, and the co-members told of one change
//! ([`PresenceLimits::max_watchers`]). Reports are handled in batches, a few users at once.
//! Pushed presence is a hint: a lost report leaves co-members with an old state until the next
//! change; `GET /v1/presence` reads the registry, which is the truth.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shared::ids::now_unix_ms;
use shared::protocol::ServerFrame;
use shared::routing::{fan_out, NodeBus, RouteRegistry};
use shared::Id;

use crate::store::{MessageStore, StoreError};

/// Bounds of presence sharing (`API_PRESENCE_*` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Chats of one user examined for co-members (the first ones by chat id).
    pub max_chats: usize,
    /// Chats with more members than this share no presence (neither pushed nor read).
    pub max_chat_members: usize,
    /// Co-members told of one change, and co-members whose presence one user may read.
    pub max_watchers: usize,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        PresenceLimits {
            max_chats: 200,
            max_chat_members: 100,
            max_watchers: 2000,
        }
    }
}

/// Chats asked for per store page while collecting co-members.
const CHAT_PAGE: usize = 100;
/// Reported users taken per read of the reports.
const REPORT_BATCH: usize = 500;
/// Changes whose co-members are collected and told at once.
const CHANGES_IN_FLIGHT: usize = 8;

use crate::telemetry::{
    presence_result, PRESENCE_FANOUT_SIZE as WATCHERS, PRESENCE_REPORTS_TOTAL as REPORTS_TOTAL,
};

/// The users `user` shares a chat with (of at most `max_chat_members` members), without `user`,
/// at most `max_watchers` of them, from `user`'s first `max_chats` chats.
pub async fn co_members(
    store: &dyn MessageStore,
    user: &str,
    limits: PresenceLimits,
) -> Result<HashSet<String>, StoreError> {
    let mut out = HashSet::new();
    let mut after: Option<Id> = None;
    let mut examined = 0;
    'pages: while examined < limits.max_chats {
        let want = CHAT_PAGE.min(limits.max_chats - examined);
        let chats = store.user_chats(user, after, want).await?;
        let last_page = chats.len() < want;
        for chat in &chats {
            examined += 1;
            after = Some(after.map_or(chat.chat_id, |a| a.max(chat.chat_id)));
            let members = store.members(chat.chat_id).await?;
            if members.len() > limits.max_chat_members {
                continue;
            }
            for m in members {
                if out.len() >= limits.max_watchers {
                    break 'pages;
                }
                if m != user {
                    out.insert(m);
                }
            }
        }
        if last_page || chats.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// What the worker needs.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn MessageStore>,
    pub registry: Arc<dyn RouteRegistry>,
    pub bus: Arc<dyn NodeBus>,
    pub limits: PresenceLimits,
    /// Deadline of one change's fan-out.
    pub fanout_timeout: Duration,
}

/// Starts the worker on `state`'s backends (`chat-api serve` and `embedded`), reading reports
/// made from now on (when the bus answers now; else from when it does); abort the handle at
/// shutdown.
pub async fn start(state: &crate::AppState) -> tokio::task::JoinHandle<()> {
    let b = Backends {
        store: state.store.clone(),
        registry: state.registry.clone(),
        bus: state.bus.clone(),
        limits: state.limits.presence,
        fanout_timeout: state.limits.fanout_timeout,
    };
    let first = b.bus.presence_reports().await.ok();
    tokio::spawn(worker(b, first))
}

/// Reads presence reports (from `first`, then from fresh readers) and announces changes until
/// the task is aborted.
pub async fn worker(b: Backends, mut first: Option<Box<dyn shared::routing::PresenceReports>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let reader = match first.take() {
            Some(r) => Ok(r),
            None => b.bus.presence_reports().await,
        };
        let mut reports = match reader {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read presence reports; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        loop {
            match reports.next_batch(REPORT_BATCH).await {
                Ok(users) if users.is_empty() => {}
                Ok(users) => handle(&b, users).await,
                // The reader backs off itself and stays usable, except an in-process one that
                // was replaced; a fresh reader either way.
                Err(e) => {
                    tracing::debug!(error = %e, "presence report read failed");
                    break;
                }
            }
        }
    }
}

/// Handles one batch of reported users: one registry read and one swap for all, then the
/// fan-out of each change.
pub async fn handle(b: &Backends, mut users: Vec<String>) {
    users.sort();
    users.dedup();
    let fail = |n: usize| {
        metrics::counter!(REPORTS_TOTAL, "result" => presence_result::FAILED).increment(n as u64)
    };
    let states = match b.registry.presence(&users).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, users = users.len(), "presence reports: registry read failed");
            return fail(users.len());
        }
    };
    let wanted: Vec<(String, bool)> = states
        .iter()
        .map(|p| (p.user_id.clone(), p.online))
        .collect();
    let before = match b.registry.swap_announced(&wanted).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, users = users.len(), "presence reports: announce failed");
            return fail(users.len());
        }
    };
    let now = now_unix_ms();
    let changes: Vec<ServerFrame> = states
        .into_iter()
        .zip(before)
        .filter(|(p, was)| *was != Some(p.online))
        .map(|(p, _)| {
            let at = if p.online {
                now
            } else {
                p.last_seen_ms.unwrap_or(now)
            };
            ServerFrame::presence(p.user_id, p.online, at)
        })
        .collect();
    metrics::counter!(REPORTS_TOTAL, "result" => presence_result::UNCHANGED)
        .increment((users.len() - changes.len()) as u64);
    futures_util::stream::iter(changes)
        .for_each_concurrent(CHANGES_IN_FLIGHT, |frame| announce(b, frame))
        .await;
}

/// Tells `frame`'s user's co-members of the change.
async fn announce(b: &Backends, frame: ServerFrame) {
    let ServerFrame::Presence { user_id, .. } = &frame else {
        return;
    };
    let result = async {
        let watchers: Vec<String> = co_members(&*b.store, user_id, b.limits)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        metrics::histogram!(WATCHERS).record(watchers.len() as f64);
        tokio::time::timeout(
            b.fanout_timeout,
            fan_out(&b.registry, &b.bus, &watchers, &frame),
        )
        .await
        .map_err(|_| "fan-out timed out".to_string())?
        .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(_) => {
            metrics::counter!(REPORTS_TOTAL, "result" => presence_result::CHANGED).increment(1)
        }
        Err(e) => {
            tracing::warn!(error = %e, user = %user_id, "presence change not announced");
            metrics::counter!(REPORTS_TOTAL, "result" => presence_result::FAILED).increment(1);
        }
    }
}

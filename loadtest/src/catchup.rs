//! `catchup`: the client side of SPEC §6 ("no lost messages for a client that catches up"), run
//! against a live deployment. Members of one chat hold sockets spread over the gateways and drop
//! them at random (a client-side network cut); a sender posts at a steady rate, retrying failures
//! with the same `client_msg_id` on the next API. Every client runs the catch-up algorithm of
//! `docs/PROTOCOL.md`: at `hello` and at `resync` it takes a snapshot of the highest id it holds,
//! asks `GET /v1/chats` whether the chat's `last_message_id` is above that snapshot minus the
//! catch-up overlap, and if so pages `GET .../messages?after=<snapshot − overlap>`, keeping
//! messages by id. The sender also edits and deletes some of its messages; each member catches
//! up those changes too (`GET /v1/chats` → `last_change_id`, then `GET .../changes?after=<highest
//! change id held − overlap>`), and live `message_updated` / `message_deleted` frames count.
//! At the end every acknowledged message must be held by every member, in its final state. Break something meanwhile (restart a gateway, Redis, an API replica) to
//! test that failure on a real deployment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_client::{Api, Cursors, Held, Holder, MessagePage, Source};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::json;
use shared::protocol::{Message, ServerFrame};
use shared::Id;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::util;

/// Failed catch-up requests retried (a member riding out a restart), pausing 100 ms times the
/// attempt number before each.
const CATCHUP_RETRIES: u32 = 20;
const CATCHUP_RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(clap::Args, Clone, Debug)]
pub struct CatchUpArgs {
    /// chat-api base URLs; sends and catch-ups go round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    pub api: Vec<String>,
    /// Gateway WebSocket URLs; each reconnect goes to the next one.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: Vec<String>,
    /// Members of the chat, one socket each (the sender holds none).
    #[arg(long, default_value_t = 20)]
    pub members: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Socket drops per second, all members together (each drop picks a random member).
    #[arg(long, default_value_t = 2.0)]
    pub drops_per_s: f64,
    /// How long to send.
    #[arg(long, default_value = "20s", value_parser = shared::config::parse_duration)]
    pub duration: Duration,
    /// How long the members get, after the last acknowledgement, to hold everything.
    #[arg(long, default_value = "10s", value_parser = shared::config::parse_duration)]
    pub settle: Duration,
    /// The sender edits every Nth acknowledged message (0: never).
    #[arg(long, default_value_t = 10)]
    pub edit_every: u64,
    /// The sender deletes every Nth acknowledged message (0: never).
    #[arg(long, default_value_t = 25)]
    pub delete_every: u64,
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct CatchUpResult {
    pub scenario: &'static str,
    pub members: usize,
    pub rate_per_s: u32,
    pub duration_s: f64,
    pub acknowledged: u64,
    /// Failed attempts that were retried (the message was acknowledged later or never).
    pub send_retries: u64,
    /// Messages whose sender gave up (not acknowledged: not owed to anyone).
    pub sends_abandoned: u64,
    pub drops: u64,
    pub reconnects: u64,
    pub resyncs: u64,
    /// Messages that came from history rather than a frame.
    pub fetched_from_history: u64,
    /// Acknowledged messages some member did not hold at the end, summed over members: the
    /// guarantee says 0.
    pub missing: u64,
    /// Edits and deletes acknowledged to the sender.
    pub changes: u64,
    /// Changes that came from `GET .../changes` rather than a frame.
    pub fetched_changes: u64,
    /// Acknowledged changes some member did not hold at the end (a message in an older state),
    /// summed over members: 0 as well.
    pub changes_missing: u64,
    pub members_missing_any: usize,
    pub loadavg: Option<[f64; 3]>,
}

/// What one member holds and did.
#[derive(Default)]
struct Member {
    held: Held,
    connections: u64,
    resyncs: u64,
    fetched: u64,
    fetched_changes: u64,
}

/// A member's state as the reference client's catch-up sees it: the lock is taken for each
/// cursor read and page, never across a request.
struct Shared<'a>(&'a Mutex<Member>);

impl Holder for Shared<'_> {
    fn cursors(&self, chat: Id) -> Cursors {
        lock(self.0).held.cursors(chat)
    }

    fn take(&mut self, source: Source, messages: Vec<Message>) {
        let mut s = lock(self.0);
        for m in messages {
            let newer = s
                .held
                .message(m.chat_id, m.message_id)
                .is_none_or(|held| m.supersedes(held));
            let new = s.held.hold(m);
            match source {
                Source::History => s.fetched += u64::from(new),
                Source::Changes => s.fetched_changes += u64::from(newer),
            }
        }
    }
}

fn lock(member: &Mutex<Member>) -> std::sync::MutexGuard<'_, Member> {
    member
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One catch-up of the member's chat with the reference client, retrying failed requests.
async fn catch_up(http: &reqwest::Client, api: &str, token: &str, chat: Id, state: &Mutex<Member>) {
    let api = Api::new(http.clone(), api, token).with_retries(CATCHUP_RETRIES, CATCHUP_RETRY_PAUSE);
    if let Err(e) = chat_client::catch_up(&api, Some(chat), &mut Shared(state)).await {
        eprintln!("catch-up gave up: {e}");
    }
}

/// One member's connection loop: connect (to the next gateway each time), catch up, read frames
/// (catching up again at `resync`), until `stop`; a drop request closes the socket, and the
/// loop reconnects after a short pause.
#[allow(clippy::too_many_arguments)]
async fn member_loop(
    i: usize,
    token: String,
    chat: Id,
    args: Arc<CatchUpArgs>,
    http: reqwest::Client,
    state: Arc<Mutex<Member>>,
    drop_now: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
) {
    let mut attempt = 0usize;
    while !stop.load(Ordering::Acquire) {
        let ws_url = &args.ws[(i + attempt) % args.ws.len()];
        let api = &args.api[(i + attempt) % args.api.len()];
        attempt += 1;
        let Ok(mut ws) = util::connect_user(&format!("{ws_url}?encoding=json"), &token).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        lock(&state).connections += 1;
        // At hello, before anything newer is read: the cursors are taken before any fetch.
        catch_up(&http, api, &token, chat, &state).await;
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        match serde_json::from_str::<ServerFrame>(&text) {
                            Ok(ServerFrame::Message { message })
                            | Ok(ServerFrame::MessageUpdated { message }) => {
                                lock(&state).held.hold(message);
                            }
                            Ok(ServerFrame::MessageDeleted { chat_id, message_id, change_id }) => {
                                lock(&state).held.hold_deleted(chat_id, message_id, change_id);
                            }
                            Ok(ServerFrame::Resync) => {
                                lock(&state).resyncs += 1;
                                catch_up(&http, api, &token, chat, &state).await;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(WsMessage::Ping(p))) => { let _ = ws.send(WsMessage::Pong(p)).await; }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                _ = drop_now.notified() => {
                    let _ = ws.close(None).await;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sender's edit (`delete` false) or delete of `message_id`, retried on the next API; the
/// change id of the final state, or `None` when it gave up.
async fn change(
    http: &reqwest::Client,
    args: &CatchUpArgs,
    token: &str,
    chat: Id,
    message_id: Id,
    delete: bool,
    n: u64,
) -> Option<Id> {
    for attempt in 0..20usize {
        let api = &args.api[(n as usize + attempt) % args.api.len()];
        let url = format!("{api}/v1/chats/{chat}/messages/{message_id}");
        let sent = if delete {
            http.delete(&url)
        } else {
            http.patch(&url)
                .json(&json!({"body": format!("catch-up probe {n}, edited")}))
        }
        .bearer_auth(token)
        .timeout(Duration::from_secs(3))
        .send()
        .await;
        if let Ok(r) = sent {
            let status = r.status().as_u16();
            if status == 200 || status == 204 {
                // A delete answers no body: its change id comes from the history.
                let changed: Message = if delete {
                    let url = format!(
                        "{api}/v1/chats/{chat}/messages?after={}&limit=1",
                        message_id.0 - 1
                    );
                    let page: MessagePage = http
                        .get(url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    page.messages.into_iter().next()?
                } else {
                    r.json().await.ok()?
                };
                return changed.change_id;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Whether a member holds message `m` in a state older than its acknowledged change `c`.
fn stale_change(member: &Member, chat: Id, m: Id, c: Id) -> bool {
    member
        .held
        .message(chat, m)
        .and_then(|held| held.change_id)
        .is_none_or(|held| held < c)
}

pub async fn run(args: CatchUpArgs) -> anyhow::Result<CatchUpResult> {
    if args.api.is_empty() || args.ws.is_empty() {
        bail!("--api and --ws need at least one URL each");
    }
    if args.members == 0 || args.members > 5_000 || args.rate == 0 {
        bail!("--members must be 1 to 5,000 and --rate at least 1");
    }
    util::ensure_loopback(args.api.iter().chain(&args.ws))?;
    let args = Arc::new(args);
    let signer = util::signer(&args.secret);
    let run_id = shared::ids::now_unix_ms();
    let sender = format!("cu-{run_id}-sender");
    let members: Vec<String> = (0..args.members)
        .map(|m| format!("cu-{run_id}-{m}"))
        .collect();
    // Catch-up requests keep this deadline; sends and changes set shorter ones.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(5))
        .build()?;
    let sender_token = util::token(&signer, &sender);
    let chat: Id = util::create_chat(&http, &args.api[0], &sender_token, &members, "catchup")
        .await
        .context("creating the chat")?
        .parse()
        .context("the new chat's id")?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut states = Vec::new();
    let mut droppers = Vec::new();
    let mut tasks = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let state = Arc::new(Mutex::new(Member::default()));
        let drop_now = Arc::new(tokio::sync::Notify::new());
        tasks.push(tokio::spawn(member_loop(
            i,
            util::token(&signer, m),
            chat,
            args.clone(),
            http.clone(),
            state.clone(),
            drop_now.clone(),
            stop.clone(),
        )));
        states.push(state);
        droppers.push(drop_now);
    }
    // Every member connected once before the stream starts.
    let ready_by = Instant::now() + Duration::from_secs(30);
    for s in &states {
        while lock(s).connections == 0 {
            if Instant::now() > ready_by {
                bail!("members did not all connect within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "catchup: {} members connected; sending {} msg/s for {:?}, {} drops/s",
        args.members, args.rate, args.duration, args.drops_per_s
    );

    // Drops: a random member's socket closes.
    let drops = Arc::new(AtomicU64::new(0));
    let dropper = {
        let (stop, drops, droppers) = (stop.clone(), drops.clone(), droppers.clone());
        let every = Duration::from_secs_f64(1.0 / args.drops_per_s.max(0.001));
        let enabled = args.drops_per_s > 0.0;
        tokio::spawn(async move {
            while enabled && !stop.load(Ordering::Acquire) {
                tokio::time::sleep(every).await;
                droppers[rand::random::<u32>() as usize % droppers.len()].notify_one();
                drops.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The sender: open loop at `rate`, each message retried on the next API until acknowledged
    // (bounded), as a client would.
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut acked: Vec<Id> = Vec::new();
    // message id → the change id of its final state, as acknowledged to the sender.
    let mut changes: HashMap<Id, Id> = HashMap::new();
    let (mut retries, mut abandoned) = (0u64, 0u64);
    let mut n = 0u64;
    let mut last_report = Instant::now();
    while started.elapsed() < args.duration {
        let due = started + every.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let cid = format!("m{n}");
        let give_up = Instant::now() + Duration::from_secs(15);
        let mut attempt = 0usize;
        loop {
            let api = &args.api[(n as usize + attempt) % args.api.len()];
            let r = http
                .post(format!("{api}/v1/chats/{chat}/messages"))
                .bearer_auth(&sender_token)
                .timeout(Duration::from_secs(3))
                .json(&json!({"client_msg_id": cid, "body": format!("catch-up probe {n}")}))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().as_u16() == 201 {
                    if let Ok(Message { message_id: id, .. }) = r.json::<Message>().await {
                        acked.push(id);
                        let every = |k: u64| k > 0 && n % k == k - 1;
                        for delete in [false, true] {
                            let due = if delete {
                                every(args.delete_every)
                            } else {
                                every(args.edit_every)
                            };
                            if due {
                                if let Some(c) =
                                    change(&http, &args, &sender_token, chat, id, delete, n).await
                                {
                                    changes.insert(id, c);
                                }
                            }
                        }
                        break;
                    }
                }
            }
            retries += 1;
            attempt += 1;
            if Instant::now() > give_up {
                abandoned += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        n += 1;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "catchup: {:.0} s, {} acknowledged, {} retries, {} drops",
                started.elapsed().as_secs_f64(),
                acked.len(),
                retries,
                drops.load(Ordering::Relaxed)
            );
        }
    }
    let duration_s = started.elapsed().as_secs_f64();
    dropper.abort();

    // Settle: live frames and catch-ups finish; then count what each member lacks.
    let settle_by = Instant::now() + args.settle;
    loop {
        let mut all = true;
        for s in &states {
            let s = lock(s);
            let stale = changes.iter().any(|(m, c)| stale_change(&s, chat, *m, *c));
            if stale || acked.iter().any(|id| s.held.message(chat, *id).is_none()) {
                all = false;
                break;
            }
        }
        if all || Instant::now() >= settle_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Release);
    let (mut missing, mut members_missing_any) = (0u64, 0usize);
    let (mut reconnects, mut resyncs, mut fetched) = (0u64, 0u64, 0u64);
    let (mut changes_missing, mut fetched_changes) = (0u64, 0u64);
    for s in &states {
        let s = lock(s);
        let stale = changes
            .iter()
            .filter(|(m, c)| stale_change(&s, chat, **m, **c))
            .count() as u64;
        changes_missing += stale;
        fetched_changes += s.fetched_changes;
        let lacks = acked
            .iter()
            .filter(|id| s.held.message(chat, **id).is_none())
            .count() as u64
            + stale;
        missing += lacks;
        members_missing_any += usize::from(lacks > 0);
        reconnects += s.connections.saturating_sub(1);
        resyncs += s.resyncs;
        fetched += s.fetched;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let result = CatchUpResult {
        scenario: "catchup",
        members: args.members,
        rate_per_s: args.rate,
        duration_s,
        acknowledged: acked.len() as u64,
        send_retries: retries,
        sends_abandoned: abandoned,
        drops: drops.load(Ordering::Relaxed),
        reconnects,
        resyncs,
        fetched_from_history: fetched,
        missing: missing - changes_missing,
        changes: changes.len() as u64,
        fetched_changes,
        changes_missing,
        members_missing_any,
        loadavg: util::loadavg(),
    };
    println!(
        "catchup: {} members, {} acknowledged, {} drops, {} reconnects, {} resyncs, {} fetched \
         from history; {} changes ({} fetched); missing {} messages and {} changes (members \
         lacking any: {})",
        result.members,
        result.acknowledged,
        result.drops,
        result.reconnects,
        result.resyncs,
        result.fetched_from_history,
        result.changes,
        result.fetched_changes,
        result.missing,
        result.changes_missing,
        result.members_missing_any
    );
    util::write_json(args.out.as_deref(), &result)?;
    if missing > 0 {
        bail!(
            "{} acknowledged messages and {changes_missing} acknowledged changes missing after catch-up",
            missing - changes_missing
        );
    }
    Ok(result)
}

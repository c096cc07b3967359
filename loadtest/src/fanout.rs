//! `fanout`: chats of a given size whose members' sockets are spread over the gateways; messages
//! are sent at a fixed rate (open loop, round-robin over chats and APIs) and every member's socket
//! counts the `message` frames it receives. Reports deliveries per second, drops (frames expected
//! but never received) and frames per second per gateway core, from each gateway process's CPU
//! time over the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::util;

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// chat-api base URLs; sends go round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    pub api: Vec<String>,
    /// Gateway WebSocket URLs; members' sockets are spread round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: Vec<String>,
    /// PIDs of the gateway processes, in the order of `--ws`, for CPU time per frame.
    #[arg(long, value_delimiter = ',')]
    pub gateway_pids: Vec<u32>,
    /// Chats to create.
    #[arg(long, default_value_t = 10)]
    pub chats: usize,
    /// Members per chat (each with one socket; the chat-api's per-chat limit applies).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Messages per second, all chats together.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = shared::config::parse_duration)]
    pub duration: Duration,
    /// Sends in flight at most; a send due while this many are pending is skipped and counted.
    #[arg(long, default_value_t = 1_000)]
    pub max_in_flight: usize,
    /// How long to wait for the last frames after the last acknowledgement.
    #[arg(long, default_value = "5s", value_parser = shared::config::parse_duration)]
    pub drain: Duration,
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// Closed loop: a send waits for one of the `--max-in-flight` slots instead of being skipped,
    /// and sending stops after `--duration` (`--rate` is not used). With 16 slots, the scenario
    /// of the API's CPU-per-message figure (docs/BENCHMARKS.md).
    #[arg(long)]
    pub closed_loop: bool,
    /// Push instead of sending messages: each request is a `POST /v1/push` of an `event` to one
    /// member (round-robin over all members), with a service token; `event` frames are counted.
    /// Each request is one delivery.
    #[arg(long, conflicts_with = "socketio")]
    pub push: bool,
    /// Measure a Socket.IO cluster instead (`--ws` lists its `ws://host:port`s, `--api` its HTTP
    /// ends): chats are rooms joined at connect, sends go to its `POST /v1/chats/{id}/messages`.
    #[arg(long)]
    pub socketio: bool,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct GatewayFigures {
    pub ws: String,
    pub sockets: usize,
    pub frames_received: u64,
    pub cpu_seconds: Option<f64>,
    /// Frames received from this gateway per second of its CPU time.
    pub frames_per_cpu_second: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub chats: usize,
    pub members: usize,
    pub rate_per_s: u32,
    pub sent: u64,
    pub acknowledged: u64,
    pub send_errors: u64,
    pub skipped_backpressure: u64,
    pub frames_expected: u64,
    pub frames_received: u64,
    pub frames_dropped: u64,
    /// Frames received per second, from the first send to the last frame.
    pub deliveries_per_s: f64,
    pub elapsed_s: f64,
    pub gateways: Vec<GatewayFigures>,
    pub loadavg: Option<[f64; 3]>,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<FanoutResult> {
    if args.api.is_empty() || args.ws.is_empty() {
        bail!("--api and --ws need at least one URL each");
    }
    if args.chats == 0 || args.members < 2 {
        bail!("--chats must be at least 1 and --members at least 2");
    }
    let sockets_total = args.chats * args.members;
    if sockets_total > 19_000 {
        bail!("{sockets_total} sockets exceed one process's 19,000 descriptors: fewer chats or members");
    }
    if !args.gateway_pids.is_empty() && args.gateway_pids.len() != args.ws.len() {
        bail!("--gateway-pids must list one PID per --ws URL");
    }
    util::ensure_loopback(args.api.iter().chain(&args.ws))?;
    let signer = util::signer(&args.secret);
    let run_id = shared::ids::now_unix_ms();
    let user = |c: usize, m: usize| format!("fo-{run_id}-{c}-{m}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;

    // Chats first (member 0 creates and later sends), then sockets.
    let mut chat_ids = Vec::with_capacity(args.chats);
    let mut sender_tokens = Vec::with_capacity(args.chats);
    for c in 0..args.chats {
        let creator = util::token(&signer, &user(c, 0));
        let others: Vec<String> = (1..args.members).map(|m| user(c, m)).collect();
        chat_ids.push(if args.socketio {
            format!("fo-{run_id}-{c}")
        } else {
            util::create_chat(
                &http,
                &args.api[c % args.api.len()],
                &creator,
                &others,
                "fanout",
            )
            .await?
        });
        sender_tokens.push(creator);
    }

    let per_gateway: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.ws.len()).map(|_| AtomicU64::new(0)).collect());
    let mut sockets_per_gateway = vec![0usize; args.ws.len()];
    let last_frame = Arc::new(clock::LastInstant::default());
    let bar = indicatif::ProgressBar::new(sockets_total as u64).with_message("connecting");
    let slots: Vec<(usize, String, String)> = (0..sockets_total)
        .map(|i| {
            let c = i / args.members;
            (
                i % args.ws.len(),
                user(c, i % args.members),
                chat_ids[c].clone(),
            )
        })
        .collect();
    for (g, _, _) in &slots {
        sockets_per_gateway[*g] += 1;
    }
    let opened: Vec<anyhow::Result<(usize, util::Ws)>> = stream::iter(slots)
        .map(|(g, u, chat)| {
            let (url, tok, bar) = (args.ws[g].clone(), util::token(&signer, &u), bar.clone());
            let socketio = args.socketio;
            async move {
                let ws = if socketio {
                    util::connect_socketio(&url, &tok, &chat).await
                } else {
                    util::connect_user(&url, &tok).await
                };
                bar.inc(1);
                ws.map(|w| (g, w))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    bar.finish_and_clear();
    let mut readers = Vec::with_capacity(sockets_total);
    let counted = if args.push {
        "{\"type\":\"event\""
    } else {
        "{\"type\":\"message\""
    };
    for o in opened {
        let (g, mut ws) = o.context("opening a member's socket")?;
        let (counts, last) = (per_gateway.clone(), last_frame.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let is_message = match &msg {
                    WsMessage::Text(t) if crate::eio::is_ping(t.as_str()) => {
                        let _ = futures_util::SinkExt::send(&mut ws, WsMessage::text("3")).await;
                        false
                    }
                    WsMessage::Text(t) => {
                        let t = t.as_str();
                        t.starts_with(counted) || t.starts_with("42[\"message\"")
                    }
                    _ => false,
                };
                if is_message {
                    counts[g].fetch_add(1, Ordering::Relaxed);
                    last.mark();
                }
            }
        }));
    }

    let cpu = |pid: &u32| crate::proc::cpu_seconds(*pid).ok();
    let cpu_before: Vec<Option<f64>> = args.gateway_pids.iter().map(cpu).collect();
    let total = if args.closed_loop {
        u64::MAX
    } else {
        (f64::from(args.rate) * args.duration.as_secs_f64()) as u64
    };
    let pusher = util::signer(&args.secret).token(
        "loadtest-pusher",
        Duration::from_secs(6 * 3600),
        Some("push"),
    );
    let bar = if args.closed_loop {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total).with_message("sending")
    };
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1)));
    let mut skipped = 0u64;
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sends = Vec::with_capacity(total.min(1 << 20) as usize);
    for i in 0..total {
        let permit = if args.closed_loop {
            if started.elapsed() >= args.duration {
                break;
            }
            in_flight.clone().acquire_owned().await?
        } else {
            tick.tick().await;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                skipped += 1;
                bar.inc(1);
                continue;
            };
            permit
        };
        let c = i as usize % args.chats;
        let api = &args.api[i as usize % args.api.len()];
        let request = if args.push {
            let member = i as usize % sockets_total;
            http.post(format!("{api}/v1/push"))
                .bearer_auth(&pusher)
                .json(
                    &json!({"user_ids": [user(member / args.members, member % args.members)],
                    "event": {"kind": "loadtest"}}),
                )
        } else {
            http.post(format!("{api}/v1/chats/{}/messages", chat_ids[c]))
                .bearer_auth(&sender_tokens[c])
                .json(&json!({"client_msg_id": format!("fo-{i}"), "body": "fan-out"}))
        };
        let (acked, errors) = (acked.clone(), errors.clone());
        let ok = if args.push { 202 } else { 201 };
        sends.push(tokio::spawn(async move {
            let _permit = permit;
            let r = request.send().await;
            match r {
                Ok(r) if r.status().as_u16() == ok => acked.fetch_add(1, Ordering::Relaxed),
                _ => errors.fetch_add(1, Ordering::Relaxed),
            };
        }));
        bar.inc(1);
    }
    for s in sends {
        let _ = s.await;
    }
    bar.finish_and_clear();
    // A push reaches one member; a message every member.
    let members = if args.push { 1 } else { args.members as u64 };
    let expected = acked.load(Ordering::Relaxed) * members;
    let received = || {
        per_gateway
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let deadline = Instant::now() + args.drain;
    while received() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after: Vec<Option<f64>> = args.gateway_pids.iter().map(cpu).collect();
    for r in &readers {
        r.abort();
    }
    let got = received();
    let elapsed = last_frame
        .get()
        .map_or(started.elapsed(), |t| t.saturating_duration_since(started))
        .as_secs_f64()
        .max(1e-3);
    let gateways = args
        .ws
        .iter()
        .enumerate()
        .map(|(g, ws)| {
            let frames = per_gateway[g].load(Ordering::Relaxed);
            let cpu_seconds = match (cpu_before.get(g), cpu_after.get(g)) {
                (Some(Some(a)), Some(Some(b))) => Some(b - a),
                _ => None,
            };
            GatewayFigures {
                ws: ws.clone(),
                sockets: sockets_per_gateway[g],
                frames_received: frames,
                cpu_seconds,
                frames_per_cpu_second: cpu_seconds.filter(|s| *s > 0.0).map(|s| frames as f64 / s),
            }
        })
        .collect();
    let result = FanoutResult {
        scenario: "fanout",
        chats: args.chats,
        members: args.members,
        rate_per_s: args.rate,
        sent: acked.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed),
        acknowledged: acked.load(Ordering::Relaxed),
        send_errors: errors.load(Ordering::Relaxed),
        skipped_backpressure: skipped,
        frames_expected: expected,
        frames_received: got,
        frames_dropped: expected.saturating_sub(got),
        deliveries_per_s: got as f64 / elapsed,
        elapsed_s: elapsed,
        gateways,
        loadavg: util::loadavg(),
    };
    println!("{}", summary(&result));
    util::write_json(args.out.as_deref(), &result)?;
    Ok(result)
}

pub fn summary(r: &FanoutResult) -> String {
    let mut s = format!(
        "fanout: {} chats x {} members at {} msg/s: sent {} acked {} errors {} skipped {}\n\
         frames expected {} received {} dropped {}; {:.0} deliveries/s over {:.1} s",
        r.chats,
        r.members,
        r.rate_per_s,
        r.sent,
        r.acknowledged,
        r.send_errors,
        r.skipped_backpressure,
        r.frames_expected,
        r.frames_received,
        r.frames_dropped,
        r.deliveries_per_s,
        r.elapsed_s
    );
    for g in &r.gateways {
        s.push_str(&format!(
            "\n  {}: {} sockets, {} frames, cpu {} s, {} frames per cpu-second",
            g.ws,
            g.sockets,
            g.frames_received,
            g.cpu_seconds.map_or("-".into(), |c| format!("{c:.2}")),
            g.frames_per_cpu_second
                .map_or("-".into(), |f| format!("{f:.0}"))
        ));
    }
    s
}

/// When the last frame arrived, shared by every reader task without a lock.
mod clock {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Instant;

    #[derive(Default)]
    pub struct LastInstant {
        origin: OnceLock<Instant>,
        nanos: AtomicU64,
    }

    impl LastInstant {
        pub fn mark(&self) {
            let origin = *self.origin.get_or_init(Instant::now);
            let n = origin.elapsed().as_nanos() as u64;
            self.nanos.fetch_max(n, Ordering::Relaxed);
        }
        pub fn get(&self) -> Option<Instant> {
            let origin = *self.origin.get()?;
            Some(origin + std::time::Duration::from_nanos(self.nanos.load(Ordering::Relaxed)))
        }
    }
}

//! `flood`: does one misbehaving user or IP slow everyone else down? A victim user runs a fixed,
//! open-loop workload (history reads, message sends, and WebSocket connects from its own source
//! address) first alone, then while an attacker user floods the API with message sends and an
//! attacker IP floods the gateway with upgrade attempts, both closed loop and as fast as the
//! server answers. Reports the victim's latency in both phases and how the flood was answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpSocket;

use shared::auth::Signer;

#[derive(clap::Args, Clone, Debug)]
pub struct FloodArgs {
    /// chat-api base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub api: String,
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// Victim HTTP requests per second (every eighth is a message send, the rest history reads).
    /// The defaults stay inside the default per-user limits (50 requests/s, 10 messages/s).
    #[arg(long, default_value_t = 40)]
    pub victim_rate: u32,
    /// Victim WebSocket connects per second (from --victim-ip).
    #[arg(long, default_value_t = 20)]
    pub victim_connect_rate: u32,
    /// Source address of the victim's connects (the attacker's is --attacker-ip).
    #[arg(long, default_value = "127.0.0.2")]
    pub victim_ip: Ipv4Addr,
    #[arg(long, default_value = "127.0.0.3")]
    pub attacker_ip: Ipv4Addr,
    /// Concurrent attacker loops sending messages as one user.
    #[arg(long, default_value_t = 32)]
    pub flood_http: u32,
    /// Concurrent attacker loops opening WebSockets from one IP.
    #[arg(long, default_value_t = 16)]
    pub flood_ws: u32,
    /// Nice level of the attacker process (0: none). On one machine the attacker's client work
    /// shares the cores with the server and the victim; ranked below them it stands in for an
    /// attacker on machines of its own, and what the victim feels is the server's doing.
    #[arg(long, default_value_t = 19)]
    pub attacker_nice: u32,
    /// Length of each phase.
    #[arg(long, default_value = "20s", value_parser = shared::config::parse_duration)]
    pub duration: Duration,
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Percentiles {
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct PhaseResult {
    pub victim_http: Percentiles,
    pub victim_connect: Percentiles,
    /// How the attacker was answered (all zero when there was none).
    pub flood: FloodAnswers,
}

#[derive(Serialize, Debug)]
pub struct FloodResult {
    pub scenario: &'static str,
    pub baseline: PhaseResult,
    pub flood: PhaseResult,
    pub http_p99_ratio: f64,
    pub connect_p99_ratio: f64,
}

fn is_loopback_url(u: &str) -> bool {
    let host = u
        .split("//")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "localhost" || host.starts_with("127.")
}

#[derive(Default)]
struct Counters {
    http_ok: AtomicU64,
    http_429: AtomicU64,
    http_other: AtomicU64,
    ws_ok: AtomicU64,
    ws_429: AtomicU64,
    ws_other: AtomicU64,
}

struct Recorder {
    hist: Mutex<Histogram<u64>>,
    errors: AtomicU64,
}

impl Recorder {
    fn new() -> anyhow::Result<Arc<Recorder>> {
        Ok(Arc::new(Recorder {
            hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            errors: AtomicU64::new(0),
        }))
    }

    fn record(&self, since: Instant, ok: bool) {
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = since.elapsed().as_micros() as u64;
        if let Ok(mut h) = self.hist.lock() {
            let _ = h.record(us.max(1));
        }
    }

    fn summary(&self) -> Percentiles {
        let h = self.hist.lock().map(|h| h.clone()).ok();
        let ms = |q: f64| {
            h.as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
                .unwrap_or(0.0)
        };
        Percentiles {
            count: h.as_ref().map(|h| h.len()).unwrap_or(0),
            errors: self.errors.load(Ordering::Relaxed),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: h.as_ref().map(|h| h.max() as f64 / 1000.0).unwrap_or(0.0),
        }
    }
}

/// Opens a WebSocket from `source`, waits for `hello`; the answer's HTTP status (101 on success).
/// With `reset`, the socket ends with a reset rather than a FIN, as a flooder's would: no
/// TIME_WAIT is left behind, whose thousands would make each next `bind` of the same source
/// address scan for a free port in the kernel, on the cores the server shares here.
async fn ws_attempt(
    ws_url: &str,
    source: Ipv4Addr,
    token: &str,
    reset: bool,
) -> Result<u16, String> {
    let rest = ws_url.strip_prefix("ws://").ok_or("ws:// URLs only")?;
    let authority = rest.split('/').next().unwrap_or("");
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| format!("{authority} is not IP:PORT"))?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    if reset {
        socket.set_zero_linger().map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let sep = if ws_url.contains('?') { '&' } else { '?' };
    let url = format!("{ws_url}{sep}access_token={token}");
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((mut ws, _)) => {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(_))) => {}
                _ => return Err("no hello".into()),
            }
            let _ = ws.close(None).await;
            Ok(101)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Ok(r.status().as_u16()),
        Err(e) => Err(e.to_string()),
    }
}

async fn create_chat(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    member: &str,
) -> anyhow::Result<String> {
    let chat: Value = http
        .post(format!("{api}/v1/chats"))
        .bearer_auth(token)
        .json(&json!({"members": [member], "title": "flood"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(chat["chat_id"]
        .as_str()
        .context("chat_id in the reply")?
        .to_string())
}

struct Setup {
    http: reqwest::Client,
    victim_token: String,
    victim_chat: String,
    attacker_token: String,
    attacker_chat: String,
}

/// What the attacker process needs besides [`FloodArgs`].
#[derive(clap::Args, Clone, Debug)]
pub struct AttackerArgs {
    #[command(flatten)]
    pub flood: FloodArgs,
    /// The attacker user's chat (its token comes in `FLOOD_TOKEN`).
    #[arg(long)]
    pub chat: String,
    /// Tag for client message ids, unique per run.
    #[arg(long)]
    pub tag: String,
}

/// How the attacker's requests were answered.
#[derive(Serialize, serde::Deserialize, Debug, Clone, Default)]
pub struct FloodAnswers {
    /// Message sends answered 201 / 429 / otherwise.
    pub http_ok: u64,
    pub http_429: u64,
    pub http_other: u64,
    /// Upgrade attempts answered 101 / 429 / otherwise.
    pub ws_ok: u64,
    pub ws_429: u64,
    pub ws_other: u64,
}

/// The attacker, run as its own process (`loadtest flood-attacker`, started by [`run`]): closed
/// loops that send messages as one user and open WebSockets from one address until its stdin
/// closes (or a safety bound passes), then prints how it was answered as one JSON line.
///
/// A process of its own, so that the victim's measurements never wait behind the attacker's tasks
/// in one runtime, and so that its CPU use can be ranked below the server's and the victim's
/// (`--attacker-nice`): a real attacker's client work runs on its own machines.
pub async fn attacker(args: AttackerArgs) -> anyhow::Result<()> {
    let token = std::env::var("FLOOD_TOKEN").context("FLOOD_TOKEN")?;
    let a = &args.flood;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let mut loops = Vec::new();
    for w in 0..a.flood_http {
        let (http, counters, stop) = (http.clone(), counters.clone(), stop.clone());
        let url = format!("{}/v1/chats/{}/messages", a.api, args.chat);
        let (token, tag) = (token.clone(), args.tag.clone());
        loops.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"client_msg_id": format!("f-{tag}-{w}-{i}"), "body": "spam"}))
                    .send()
                    .await;
                let c = match r.map(|r| r.status().as_u16()) {
                    Ok(201) => &counters.http_ok,
                    Ok(429) => &counters.http_429,
                    _ => &counters.http_other,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..a.flood_ws {
        let (counters, stop) = (counters.clone(), stop.clone());
        let (ws, ip, token) = (a.ws.clone(), a.attacker_ip, token.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let c = match ws_attempt(&ws, ip, &token, true).await {
                    Ok(101) => &counters.ws_ok,
                    Ok(429) => &counters.ws_429,
                    _ => &counters.ws_other,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Until the parent closes our stdin (or, should it die, a bound well past any phase).
    let eof = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let _ = tokio::time::timeout(a.duration * 4 + Duration::from_secs(60), eof).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = tokio::time::timeout(Duration::from_secs(30), l).await;
    }
    let c = &counters;
    let answers = FloodAnswers {
        http_ok: c.http_ok.load(Ordering::Relaxed),
        http_429: c.http_429.load(Ordering::Relaxed),
        http_other: c.http_other.load(Ordering::Relaxed),
        ws_ok: c.ws_ok.load(Ordering::Relaxed),
        ws_429: c.ws_429.load(Ordering::Relaxed),
        ws_other: c.ws_other.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&answers)?);
    Ok(())
}

/// Starts the attacker process for one flood phase.
fn spawn_attacker(args: &FloodArgs, s: &Setup, tag: &str) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = if args.attacker_nice > 0 {
        let mut c = std::process::Command::new("nice");
        c.args(["-n", &args.attacker_nice.to_string()]).arg(exe);
        c
    } else {
        std::process::Command::new(exe)
    };
    cmd.arg("flood-attacker")
        .args(["--api", &args.api, "--ws", &args.ws])
        .args(["--attacker-ip", &args.attacker_ip.to_string()])
        .args(["--flood-http", &args.flood_http.to_string()])
        .args(["--flood-ws", &args.flood_ws.to_string()])
        .args(["--duration", &format!("{}ms", args.duration.as_millis())])
        .args(["--chat", &s.attacker_chat, "--tag", tag])
        .env("FLOOD_TOKEN", &s.attacker_token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the attacker process")
}

async fn phase(args: &FloodArgs, s: &Setup, flood: bool, tag: &str) -> anyhow::Result<PhaseResult> {
    let http_rec = Recorder::new()?;
    let connect_rec = Recorder::new()?;
    let attacker = if flood {
        let child = spawn_attacker(args, s, tag)?;
        // Let the flood reach its steady state before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(child)
    } else {
        None
    };

    let started = Instant::now();
    let mut victims = Vec::new();
    let http_every = Duration::from_secs_f64(1.0 / f64::from(args.victim_rate.max(1)));
    let connect_every = Duration::from_secs_f64(1.0 / f64::from(args.victim_connect_rate.max(1)));
    let (mut next_http, mut next_connect) = (started, started);
    let mut i = 0u64;
    while started.elapsed() < args.duration {
        let now = Instant::now();
        if now >= next_http {
            // Open loop: latency counts from the scheduled time.
            let scheduled = next_http;
            next_http += http_every;
            i += 1;
            let (http, rec) = (s.http.clone(), http_rec.clone());
            let token = s.victim_token.clone();
            let req = if i % 8 == 0 {
                http.post(format!("{}/v1/chats/{}/messages", args.api, s.victim_chat))
                    .json(&json!({"client_msg_id": format!("v-{tag}-{i}"), "body": "hello"}))
            } else {
                http.get(format!(
                    "{}/v1/chats/{}/messages?limit=20",
                    args.api, s.victim_chat
                ))
            };
            victims.push(tokio::spawn(async move {
                let r = req.bearer_auth(token).send().await;
                let ok = matches!(r.map(|r| r.status().is_success()), Ok(true));
                rec.record(scheduled, ok);
            }));
        }
        if now >= next_connect {
            let scheduled = next_connect;
            next_connect += connect_every;
            let (rec, ws, ip, token) = (
                connect_rec.clone(),
                args.ws.clone(),
                args.victim_ip,
                s.victim_token.clone(),
            );
            victims.push(tokio::spawn(async move {
                let ok = matches!(ws_attempt(&ws, ip, &token, false).await, Ok(101));
                rec.record(scheduled, ok);
            }));
        }
        let wake = next_http.min(next_connect);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
    for v in victims {
        let _ = tokio::time::timeout(Duration::from_secs(30), v).await;
    }
    let answers = match attacker {
        None => FloodAnswers::default(),
        Some(mut child) => {
            drop(child.stdin.take()); // the attacker stops at EOF
            let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
            let line = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(line.trim()).with_context(|| {
                format!("the attacker process ({}) printed no result", out.status)
            })?
        }
    };
    Ok(PhaseResult {
        victim_http: http_rec.summary(),
        victim_connect: connect_rec.summary(),
        flood: answers,
    })
}

pub async fn run(args: FloodArgs) -> anyhow::Result<FloodResult> {
    if !is_loopback_url(&args.api) || !is_loopback_url(&args.ws) {
        bail!("load is only sent to loopback addresses");
    }
    if !args.victim_ip.is_loopback() || !args.attacker_ip.is_loopback() {
        bail!("source addresses must be loopback addresses");
    }
    let signer = Signer::hmac(jsonwebtoken::Algorithm::HS256, args.secret.as_bytes());
    let run_id = shared::ids::now_unix_ms();
    let (victim, attacker) = (format!("victim-{run_id}"), format!("attacker-{run_id}"));
    let ttl = Duration::from_secs(3600);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let victim_token = signer.token(&victim, ttl, None);
    let attacker_token = signer.token(&attacker, ttl, None);
    let setup = Setup {
        victim_chat: create_chat(&http, &args.api, &victim_token, &format!("friend-{run_id}"))
            .await?,
        attacker_chat: create_chat(&http, &args.api, &attacker_token, &format!("prey-{run_id}"))
            .await?,
        http,
        victim_token,
        attacker_token,
    };
    println!("baseline: victim alone for {:?}", args.duration);
    let baseline = phase(&args, &setup, false, "b").await?;
    // Let the victim's own budgets refill between phases.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "flood: {} HTTP loops as one user, {} connect loops from {}",
        args.flood_http, args.flood_ws, args.attacker_ip
    );
    let flood = phase(&args, &setup, true, "f").await?;
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
    let result = FloodResult {
        scenario: "flood",
        http_p99_ratio: ratio(baseline.victim_http.p99_ms, flood.victim_http.p99_ms),
        connect_p99_ratio: ratio(baseline.victim_connect.p99_ms, flood.victim_connect.p99_ms),
        baseline,
        flood,
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback() {
        assert!(super::is_loopback_url("http://127.0.0.1:8081"));
        assert!(!super::is_loopback_url("http://10.0.0.1:8081"));
    }
}

//! `connect`: opens N authenticated WebSocket connections, ramped at a given rate, spread over
//! several worker processes (each process may hold at most ~19k descriptors here) and loopback
//! source addresses (127.0.0.2, 127.0.0.3, … so that N can exceed one address's ephemeral ports),
//! holds them idle and samples the gateway's RSS at checkpoints to get memory per socket.
//!
//! The parent process drives workers over stdin/stdout: each worker ramps to its share of a
//! checkpoint, prints one JSON line, and waits for `go` before the next one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use shared::auth::Signer;

/// Options shared by the parent and its workers.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Sockets to open in all.
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Socket counts at which to sample the gateway's RSS (comma-separated; the last is `sockets`).
    #[arg(long, value_delimiter = ',')]
    pub checkpoints: Vec<usize>,
    /// Connection attempts per second, all workers together.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Worker processes (each holds at most ~19k sockets).
    #[arg(long, default_value_t = 2)]
    pub processes: usize,
    /// Loopback source addresses to spread over: 127.0.0.2 … 127.0.0.(1+N).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// HMAC secret the gateway verifies with (the development key by default).
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// `json`, `msgpack`, or `socketio` (the URL is then a Socket.IO server's `ws://host:port`).
    #[arg(long, default_value = "json")]
    pub encoding: String,
    /// Prefix of the user ids (user = PREFIX-WORKER-INDEX).
    #[arg(long, default_value = "lt")]
    pub user_prefix: String,
    /// Handshakes in flight at most, all workers together (0: no cap beyond `--rate`). With a
    /// high rate this holds a connect storm at that many concurrent handshakes (upgrade to
    /// `hello`), the figure the p50/p99 handshake times are measured under.
    #[arg(long, default_value_t = 0)]
    pub in_flight: usize,
    /// Offer permessage-deflate as browsers do; a socket counts as open only if the gateway
    /// accepted it and its `hello` arrived compressed.
    #[arg(long)]
    pub deflate: bool,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ConnectRun {
    #[command(flatten)]
    pub common: ConnectArgs,
    /// PID of the gateway process whose RSS is sampled.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Wait after each checkpoint before sampling RSS.
    #[arg(long, default_value = "3s", value_parser = shared::config::parse_duration)]
    pub settle: Duration,
    /// Hold all sockets this long after the last checkpoint (then sample again).
    #[arg(long, default_value = "5s", value_parser = shared::config::parse_duration)]
    pub hold: Duration,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// One worker's report at a checkpoint.
#[derive(Serialize, Deserialize, Debug, Default)]
struct StepReport {
    open: usize,
    failed: BTreeMap<String, usize>,
    handshake_ms_sum: f64,
    handshakes: usize,
    /// Each handshake's time (connect to `hello`), for the percentiles.
    #[serde(default)]
    handshake_ms: Vec<f32>,
}

#[derive(Serialize, Debug)]
pub struct Sample {
    pub sockets_open: usize,
    pub gateway_rss_bytes: Option<u64>,
    /// (rss - baseline) / sockets.
    pub bytes_per_socket: Option<f64>,
    /// (rss - previous rss) / (sockets - previous sockets).
    pub marginal_bytes_per_socket: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct ConnectResult {
    pub scenario: &'static str,
    pub url: String,
    pub processes: usize,
    pub source_ips: u8,
    pub rate_per_s: u32,
    pub baseline_rss_bytes: Option<u64>,
    pub samples: Vec<Sample>,
    pub after_hold: Option<Sample>,
    pub failures: BTreeMap<String, usize>,
    pub handshakes_per_s: f64,
    pub mean_handshake_ms: f64,
    /// Handshakes in flight at most (0: not capped).
    pub in_flight: usize,
    pub handshake_p50_ms: f64,
    pub handshake_p99_ms: f64,
}

fn shares(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// Runs the scenario: spawns the workers, walks the checkpoints, prints and returns the result.
pub fn run(args: ConnectRun) -> anyhow::Result<ConnectResult> {
    let common = &args.common;
    let mut checkpoints = common.checkpoints.clone();
    if checkpoints.last() != Some(&common.sockets) {
        checkpoints.push(common.sockets);
    }
    checkpoints.retain(|&c| c <= common.sockets && c > 0);
    checkpoints.dedup();
    if common.processes == 0 || common.sockets / common.processes > 19_000 {
        bail!("each worker process may hold at most 19,000 sockets here: raise --processes");
    }
    let rss = |pid: Option<u32>| pid.and_then(|p| crate::proc::rss_bytes(p).ok());
    let baseline = rss(args.gateway_pid);
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for w in 0..common.processes {
        let per_step: Vec<String> = checkpoints
            .iter()
            .map(|c| shares(*c, common.processes)[w].to_string())
            .collect();
        let mut child = Command::new(&exe)
            .arg("connect-worker")
            .args(["--worker", &w.to_string(), "--targets", &per_step.join(",")])
            .args([
                "--url",
                &common.url,
                "--rate",
                &(common.rate / common.processes as u32).max(1).to_string(),
                "--in-flight",
                &shares(common.in_flight, common.processes)[w].to_string(),
            ])
            .args([
                "--source-ips",
                &common.source_ips.to_string(),
                "--encoding",
                &common.encoding,
            ])
            .args([
                "--user-prefix",
                &common.user_prefix,
                "--sockets",
                &common.sockets.to_string(),
            ])
            .args(common.deflate.then_some("--deflate"))
            .env("JWT_SECRET", &common.secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a worker")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let stdin = child.stdin.take().context("worker stdin")?;
        workers.push((child, stdout, stdin));
    }
    let bar = indicatif::ProgressBar::new(common.sockets as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} sockets {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut failures = BTreeMap::new();
    let (mut hs_sum, mut hs_n) = (0.0, 0usize);
    let mut hs_all: Vec<f32> = Vec::new();
    let mut ramp_time = Duration::ZERO;
    for (i, _) in checkpoints.iter().enumerate() {
        let step_start = Instant::now();
        let mut open = 0;
        for (_, out, _) in workers.iter_mut() {
            let mut line = String::new();
            out.read_line(&mut line)?;
            let report: StepReport = serde_json::from_str(line.trim())
                .with_context(|| format!("worker said {line:?}"))?;
            open += report.open;
            hs_sum += report.handshake_ms_sum;
            hs_n += report.handshakes;
            hs_all.extend(report.handshake_ms);
            for (k, v) in report.failed {
                *failures.entry(k).or_insert(0) += v;
            }
        }
        ramp_time += step_start.elapsed();
        bar.set_position(open as u64);
        bar.set_message(format!(
            "checkpoint {}/{}: settling",
            i + 1,
            checkpoints.len()
        ));
        std::thread::sleep(args.settle);
        samples.push(sample(
            open,
            rss(args.gateway_pid),
            baseline,
            samples.last(),
        ));
        if i + 1 < checkpoints.len() {
            for (_, _, input) in workers.iter_mut() {
                writeln!(input, "go")?;
            }
        }
    }
    bar.set_message("holding");
    std::thread::sleep(args.hold);
    let last_open = samples.last().map_or(0, |s| s.sockets_open);
    let after_hold = Some(sample(last_open, rss(args.gateway_pid), baseline, None));
    bar.finish_with_message(format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    for (mut child, _, input) in workers {
        drop(input);
        let _ = child.wait();
    }
    let result = ConnectResult {
        scenario: "connect",
        url: common.url.clone(),
        processes: common.processes,
        source_ips: common.source_ips,
        rate_per_s: common.rate,
        baseline_rss_bytes: baseline,
        samples,
        after_hold,
        failures,
        handshakes_per_s: hs_n as f64 / ramp_time.as_secs_f64().max(1e-9),
        mean_handshake_ms: hs_sum / hs_n.max(1) as f64,
        in_flight: common.in_flight,
        handshake_p50_ms: percentile(&mut hs_all, 0.50),
        handshake_p99_ms: percentile(&mut hs_all, 0.99),
    };
    print_summary(&result);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(result)
}

/// The `q` quantile (nearest rank) of `values`; 0 when there are none.
fn percentile(values: &mut [f32], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f32::total_cmp);
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    f64::from(values[rank - 1])
}

fn sample(open: usize, rss: Option<u64>, baseline: Option<u64>, prev: Option<&Sample>) -> Sample {
    let per = match (rss, baseline) {
        (Some(r), Some(b)) if open > 0 => Some((r as f64 - b as f64) / open as f64),
        _ => None,
    };
    let marginal = match (
        rss,
        prev.and_then(|p| p.gateway_rss_bytes.map(|r| (r, p.sockets_open))),
    ) {
        (Some(r), Some((pr, po))) if open > po => Some((r as f64 - pr as f64) / (open - po) as f64),
        _ => None,
    };
    Sample {
        sockets_open: open,
        gateway_rss_bytes: rss,
        bytes_per_socket: per,
        marginal_bytes_per_socket: marginal,
    }
}

fn print_summary(r: &ConnectResult) {
    println!(
        "connect: {} processes, {} source addresses, {} connects/s asked",
        r.processes, r.source_ips, r.rate_per_s
    );
    println!(
        "handshakes/s achieved: {:.0}, connect to hello: mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms{}",
        r.handshakes_per_s,
        r.mean_handshake_ms,
        r.handshake_p50_ms,
        r.handshake_p99_ms,
        if r.in_flight > 0 {
            format!(" ({} in flight at most)", r.in_flight)
        } else {
            String::new()
        }
    );
    if let Some(b) = r.baseline_rss_bytes {
        println!("gateway baseline RSS: {:.1} MiB", b as f64 / 1048576.0);
    }
    println!(
        "{:>10} {:>12} {:>14} {:>14}",
        "sockets", "RSS MiB", "B/socket", "marginal B/s"
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for s in r.samples.iter().chain(r.after_hold.iter()) {
        println!(
            "{:>10} {:>12} {:>14} {:>14}",
            s.sockets_open,
            s.gateway_rss_bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
            fmt(s.bytes_per_socket),
            fmt(s.marginal_bytes_per_socket)
        );
    }
    if r.failures.is_empty() {
        println!("failures: none");
    } else {
        println!("failures: {:?}", r.failures);
    }
}

/// Arguments of one worker process (spawned by [`run`]).
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    #[arg(long)]
    pub worker: usize,
    /// This worker's cumulative socket count per checkpoint.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<usize>,
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub rate: u32,
    #[arg(long)]
    pub source_ips: u8,
    #[arg(long)]
    pub encoding: String,
    #[arg(long)]
    pub user_prefix: String,
    #[arg(long)]
    pub sockets: usize,
    #[arg(long, env = "JWT_SECRET")]
    pub secret: String,
    /// This worker's share of `--in-flight` (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub in_flight: usize,
    #[arg(long)]
    pub deflate: bool,
}

/// The worker: ramps to each target, reports, waits for `go`; holds the sockets until stdin closes.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let signer = Signer::hmac(jsonwebtoken::Algorithm::HS256, args.secret.as_bytes());
    let url = url_parts(&args.url)?;
    let open = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<f64, String>>();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let mut next = 0usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let in_flight = (args.in_flight > 0).then(|| Arc::new(Semaphore::new(args.in_flight)));
    for (step, &target) in args.targets.iter().enumerate() {
        let mut report = StepReport::default();
        let mut pending = 0usize;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while next < target {
            tick.tick().await;
            let ip = Ipv4Addr::new(
                127,
                0,
                0,
                2 + (next % usize::from(args.source_ips.max(1))) as u8,
            );
            let user = format!("{}-{}-{}", args.user_prefix, args.worker, next);
            let token = signer.token(&user, Duration::from_secs(24 * 3600), None);
            let permit = match &in_flight {
                Some(s) => Some(s.clone().acquire_owned().await?),
                None => None,
            };
            let (url, encoding, open, tx) =
                (url.clone(), args.encoding.clone(), open.clone(), tx.clone());
            if args.deflate {
                tokio::spawn(async move {
                    let connect = connect_deflate(url, encoding, token, ip);
                    held(Instant::now(), permit, connect, |ws| ws.hold(), &open, &tx).await
                });
            } else {
                tokio::spawn(hold_socket(permit, url, encoding, token, ip, open, tx));
            }
            next += 1;
            pending += 1;
            while let Ok(r) = rx.try_recv() {
                pending -= 1;
                tally(&mut report, r);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while pending > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    pending -= 1;
                    tally(&mut report, r);
                }
                _ => {
                    *report.failed.entry("timeout".into()).or_insert(0) += pending;
                    break;
                }
            }
        }
        report.open = open.load(Ordering::Relaxed);
        println!("{}", serde_json::to_string(&report)?);
        if step + 1 < args.targets.len() {
            lines.next_line().await?;
        }
    }
    // Hold until the parent closes stdin.
    while let Ok(Some(_)) = lines.next_line().await {}
    Ok(())
}

fn tally(report: &mut StepReport, r: Result<f64, String>) {
    match r {
        Ok(ms) => {
            report.handshakes += 1;
            report.handshake_ms_sum += ms;
            report.handshake_ms.push(ms as f32);
        }
        Err(cause) => *report.failed.entry(cause).or_insert(0) += 1,
    }
}

#[derive(Clone, Debug)]
struct Url {
    addr: SocketAddr,
    full: String,
}

fn url_parts(url: &str) -> anyhow::Result<Url> {
    let rest = url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported")?;
    let host = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("{host} must be IP:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("load is only sent to loopback addresses, not {}", addr.ip());
    }
    Ok(Url {
        addr,
        full: url.to_string(),
    })
}

/// A socket from `source` to the gateway, connected over TCP.
async fn tcp_from(source: Ipv4Addr, to: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .map_err(|e| format!("bind: {}", e.kind()))?;
    socket
        .connect(to)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))
}

/// Connects offering permessage-deflate: succeeds only if the gateway accepted it and the `hello`
/// came compressed (so that every socket held has received a compressed frame).
async fn connect_deflate(
    url: Url,
    encoding: String,
    token: String,
    source: Ipv4Addr,
) -> Result<crate::rawws::RawSocket, String> {
    let stream = tcp_from(source, url.addr).await?;
    let path = url.full.splitn(4, '/').nth(3).unwrap_or("ws");
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("/{path}{sep}encoding={encoding}&access_token={token}");
    let mut ws = crate::rawws::connect(stream, &url.addr.to_string(), &path).await?;
    let hello = ws
        .next()
        .await
        .map_err(|_| "closed before hello".to_string())?;
    if !hello.compressed() {
        return Err("hello not compressed".to_string());
    }
    Ok(ws)
}

/// Reports how `connect` went (with the handshake time, bounded by 20 s) and, once connected,
/// counts the socket as open while `hold` runs.
async fn held<S, H: std::future::Future<Output = ()>>(
    started: Instant,
    in_flight: Option<OwnedSemaphorePermit>,
    connect: impl std::future::Future<Output = Result<S, String>>,
    hold: impl FnOnce(S) -> H,
    open: &AtomicUsize,
    report: &mpsc::UnboundedSender<Result<f64, String>>,
) {
    let connected = tokio::time::timeout(Duration::from_secs(20), connect).await;
    // The handshake is over (done, failed or timed out): its place goes to the next one.
    drop(in_flight);
    match connected {
        Ok(Ok(socket)) => {
            open.fetch_add(1, Ordering::Relaxed);
            let _ = report.send(Ok(started.elapsed().as_secs_f64() * 1000.0));
            hold(socket).await;
            open.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(Err(cause)) => {
            let _ = report.send(Err(cause));
        }
        Err(_) => {
            let _ = report.send(Err("timeout".into()));
        }
    }
}

async fn hold_socket(
    in_flight: Option<OwnedSemaphorePermit>,
    url: Url,
    encoding: String,
    token: String,
    source: Ipv4Addr,
    open: Arc<AtomicUsize>,
    report: mpsc::UnboundedSender<Result<f64, String>>,
) {
    let started = Instant::now();
    let connect = async {
        let stream = tcp_from(source, url.addr).await?;
        let socketio = encoding == "socketio";
        let sep = if url.full.contains('?') { '&' } else { '?' };
        let full = if socketio {
            crate::eio::url(&url.full, &format!("access_token={token}"))
        } else {
            format!("{}{sep}encoding={encoding}&access_token={token}", url.full)
        };
        let (mut ws, _) = tokio_tungstenite::client_async(full, stream)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    format!("http {}", r.status().as_u16())
                }
                other => format!("handshake: {other}"),
            })?;
        if socketio {
            return match tokio::time::timeout(
                Duration::from_secs(10),
                crate::eio::handshake(&mut ws),
            )
            .await
            {
                Ok(Ok(())) => Ok(ws),
                Ok(Err(e)) => Err(format!("socket.io: {e}")),
                Err(_) => Err("no socket.io connect".to_string()),
            };
        }
        // The hello frame proves authentication and registration.
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(_))) => Ok(ws),
            Ok(_) => Err("closed before hello".to_string()),
            Err(_) => Err("no hello".to_string()),
        }
    };
    // Reading answers the gateway's pings (and Engine.IO's, which are text frames); the socket
    // otherwise stays idle.
    let hold = |mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| async move {
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(&msg, WsMessage::Text(t) if crate::eio::is_ping(t.as_str())) {
                let _ = futures_util::SinkExt::send(&mut ws, WsMessage::text("3")).await;
            }
        }
    };
    held(started, in_flight, connect, hold, &open, &report).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(19_000, 2).iter().sum::<usize>(), 19_000);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f32> = (1..=100).rev().map(|i| i as f32).collect();
        assert_eq!(percentile(&mut v, 0.50), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(url_parts("ws://127.0.0.1:8080/ws").is_ok());
        assert!(url_parts("ws://10.0.0.1:8080/ws").is_err());
        assert!(url_parts("wss://127.0.0.1:8080/ws").is_err());
    }
}

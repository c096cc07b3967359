//! `soak`: holds a pool of authenticated sockets and churns them (close one, open a new one for the
//! same user) at a fixed rate for a bounded time, sampling each gateway's resident memory over
//! time, so that leaks show as a slope rather than hiding in a single figure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::util;

#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    /// Gateway WebSocket URLs; sockets are spread round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: Vec<String>,
    /// PIDs whose RSS is sampled (gateways, or the embedded process).
    #[arg(long, value_delimiter = ',')]
    pub gateway_pids: Vec<u32>,
    /// Sockets held open at once.
    #[arg(long, default_value_t = 1_000)]
    pub sockets: usize,
    /// Reconnections per second (close one socket, open a new one for the same user).
    #[arg(long, default_value_t = 100)]
    pub churn_rate: u32,
    /// How long to churn.
    #[arg(long, default_value = "60s", value_parser = shared::config::parse_duration)]
    pub duration: Duration,
    /// Time between RSS samples.
    #[arg(long, default_value = "1s", value_parser = shared::config::parse_duration)]
    pub sample_every: Duration,
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Write a PNG of RSS over time here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub struct RssSample {
    pub t_s: f64,
    pub sockets_open: u64,
    /// One per `--gateway-pids` entry, in order.
    pub rss_bytes: Vec<Option<u64>>,
}

#[derive(Serialize, Debug)]
pub struct SoakResult {
    pub scenario: &'static str,
    pub sockets: usize,
    pub churn_rate_per_s: u32,
    pub duration_s: f64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    pub samples: Vec<RssSample>,
    /// Per PID: RSS at the last sample minus RSS at the first sample after the pool was open.
    pub rss_growth_bytes: Vec<Option<i64>>,
    pub loadavg: Option<[f64; 3]>,
}

struct Counters {
    open: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One socket for `user`: connects, keeps reading (so pings are answered) until told to close.
fn spawn_slot(
    url: String,
    token: String,
    counters: Arc<Counters>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut ws = match util::connect_user(&url, &token).await {
            Ok(ws) => ws,
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        counters.ok.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = &mut rx => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    break;
                }
                msg = ws.next() => if !matches!(msg, Some(Ok(_))) { break },
            }
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
    });
    (tx, task)
}

pub async fn run(args: SoakArgs) -> anyhow::Result<SoakResult> {
    if args.ws.is_empty() || args.sockets == 0 {
        bail!("--ws needs a URL and --sockets at least 1");
    }
    if args.sockets > 19_000 {
        bail!("one process may hold at most 19,000 sockets here");
    }
    util::ensure_loopback(&args.ws)?;
    let signer = util::signer(&args.secret);
    let run_id = shared::ids::now_unix_ms();
    let counters = Arc::new(Counters {
        open: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let slot_url = |i: usize| args.ws[i % args.ws.len()].clone();
    let tokens: Vec<String> = (0..args.sockets)
        .map(|i| util::token(&signer, &format!("soak-{run_id}-{i}")))
        .collect();
    let rss = |pids: &[u32]| -> Vec<Option<u64>> {
        pids.iter()
            .map(|p| crate::proc::rss_bytes(*p).ok())
            .collect()
    };

    let bar = indicatif::ProgressBar::new(args.sockets as u64).with_message("opening the pool");
    let mut slots = Vec::with_capacity(args.sockets);
    for (i, tok) in tokens.iter().enumerate() {
        slots.push(spawn_slot(slot_url(i), tok.clone(), counters.clone()));
        // Ramp without a stampede: at most 256 handshakes outstanding.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (i as u64 + 1).saturating_sub(
            counters.ok.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed),
        ) > 256
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bar.inc(1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.ok.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
        < args.sockets as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bar.finish_and_clear();

    let started = Instant::now();
    let mut samples = vec![RssSample {
        t_s: 0.0,
        sockets_open: counters.open.load(Ordering::Relaxed),
        rss_bytes: rss(&args.gateway_pids),
    }];
    let bar = indicatif::ProgressBar::new(args.duration.as_secs().max(1)).with_message("churning");
    let mut churn = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(args.churn_rate.max(1)),
    ));
    churn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample = tokio::time::interval(args.sample_every.max(Duration::from_millis(100)));
    sample.tick().await;
    let mut next = 0usize;
    while started.elapsed() < args.duration {
        tokio::select! {
            _ = churn.tick() => {
                let i = next % args.sockets;
                next += 1;
                let (tx, old) = std::mem::replace(
                    &mut slots[i],
                    spawn_slot(slot_url(i), tokens[i].clone(), counters.clone()),
                );
                let _ = tx.send(());
                // The old socket closes in the background; its task is bounded by the close timeout.
                drop(old);
            }
            _ = sample.tick() => {
                samples.push(RssSample {
                    t_s: started.elapsed().as_secs_f64(),
                    sockets_open: counters.open.load(Ordering::Relaxed),
                    rss_bytes: rss(&args.gateway_pids),
                });
                bar.set_position(started.elapsed().as_secs());
            }
        }
    }
    bar.finish_and_clear();
    samples.push(RssSample {
        t_s: started.elapsed().as_secs_f64(),
        sockets_open: counters.open.load(Ordering::Relaxed),
        rss_bytes: rss(&args.gateway_pids),
    });
    for (tx, task) in slots {
        let _ = tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let growth = first
        .rss_bytes
        .iter()
        .zip(&last.rss_bytes)
        .map(|(a, b)| Some(*b.as_ref()? as i64 - *a.as_ref()? as i64))
        .collect();
    let result = SoakResult {
        scenario: "soak",
        sockets: args.sockets,
        churn_rate_per_s: args.churn_rate,
        duration_s: started.elapsed().as_secs_f64(),
        connects_ok: counters.ok.load(Ordering::Relaxed),
        connects_failed: counters.failed.load(Ordering::Relaxed),
        samples,
        rss_growth_bytes: growth,
        loadavg: util::loadavg(),
    };
    println!("{}", summary(&result));
    util::write_json(args.out.as_deref(), &result)?;
    if let Some(path) = &args.plot {
        let series: Vec<(String, Vec<(f64, f64)>)> = args
            .gateway_pids
            .iter()
            .enumerate()
            .map(|(k, pid)| {
                let points = result
                    .samples
                    .iter()
                    .filter_map(|s| {
                        Some((s.t_s, *s.rss_bytes.get(k)?.as_ref()? as f64 / 1048576.0))
                    })
                    .collect();
                (format!("pid {pid}"), points)
            })
            .collect();
        crate::plot::lines(
            path,
            "RSS over time (soak)",
            "seconds",
            "RSS (MiB)",
            &series,
        )?;
    }
    Ok(result)
}

pub fn summary(r: &SoakResult) -> String {
    let growth: Vec<String> = r
        .rss_growth_bytes
        .iter()
        .map(|g| g.map_or("-".into(), |b| format!("{:+.1} MiB", b as f64 / 1048576.0)))
        .collect();
    format!(
        "soak: {} sockets churned at {}/s for {:.1} s: {} connects ok, {} failed; RSS growth {}",
        r.sockets,
        r.churn_rate_per_s,
        r.duration_s,
        r.connects_ok,
        r.connects_failed,
        growth.join(", ")
    )
}

//! `latency`: end-to-end delivery latency, from the start of the HTTP send to the frame arriving
//! on a socket of another user, usually on another gateway node. Open loop: sends are scheduled
//! at a fixed rate and do not wait for earlier replies, so a slow server cannot hide latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use shared::auth::Signer;
use shared::protocol::{decode_server, Encoding, ServerFrame};

#[derive(clap::Args, Clone, Debug)]
pub struct LatencyArgs {
    /// chat-api base URLs; sends go round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    pub api: Vec<String>,
    /// Gateway URL of the receiving socket (another node than the sender's, for cross-node).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// Messages per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = shared::config::parse_duration)]
    pub duration: Duration,
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Measure a Socket.IO cluster instead (`--ws` is its `ws://host:port`, `--api` its HTTP
    /// ends); the receiver joins the chat's room at connect.
    #[arg(long)]
    pub socketio: bool,
    /// Write a PNG of the latency distribution here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct LatencyResult {
    pub scenario: &'static str,
    pub rate_per_s: u32,
    pub sent: u64,
    pub acknowledged: u64,
    pub send_errors: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub loadavg: Option<[f64; 3]>,
}

/// The `client_msg_id` of a `message` frame, from the gateway or from Socket.IO
/// (`42["message",{"message":{...}}]`).
fn client_msg_id(text: &str) -> Option<String> {
    if let Some(event) = crate::eio::event(text) {
        let v: Value = serde_json::from_str(event).ok()?;
        return v.get(1)?["message"]["client_msg_id"]
            .as_str()
            .map(str::to_string);
    }
    match decode_server(Encoding::Json, text.as_bytes()) {
        Ok(ServerFrame::Message { message }) => Some(message.client_msg_id),
        _ => None,
    }
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<LatencyResult> {
    if args.api.is_empty() {
        bail!("--api needs at least one URL");
    }
    crate::util::ensure_loopback(args.api.iter().chain(std::iter::once(&args.ws)))?;
    let signer = Signer::hmac(jsonwebtoken::Algorithm::HS256, args.secret.as_bytes());
    let run_id = shared::ids::now_unix_ms();
    let (sender, receiver) = (format!("lat-s-{run_id}"), format!("lat-r-{run_id}"));
    let (s_token, r_token) = (
        signer.token(&sender, Duration::from_secs(3600), None),
        signer.token(&receiver, Duration::from_secs(3600), None),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let (chat_id, mut ws) = if args.socketio {
        let chat_id = format!("lat-{run_id}");
        let ws = crate::util::connect_socketio(&args.ws, &r_token, &chat_id).await?;
        (chat_id, ws)
    } else {
        let chat_id = crate::util::create_chat(
            &http,
            &args.api[0],
            &s_token,
            std::slice::from_ref(&receiver),
            "latency",
        )
        .await?;
        (
            chat_id,
            crate::util::connect_user(&args.ws, &r_token).await?,
        )
    };

    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (started, hist, received) = (started.clone(), hist.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let WsMessage::Text(t) = msg else { continue };
                if crate::eio::is_ping(t.as_str()) {
                    let _ = futures_util::SinkExt::send(&mut ws, WsMessage::text("3")).await;
                    continue;
                }
                if let Some(cmid) = client_msg_id(t.as_str()) {
                    let t0 = started.lock().map(|mut m| m.remove(&cmid)).ok().flatten();
                    if let Some(t0) = t0 {
                        let us = t0.elapsed().as_micros() as u64;
                        if let Ok(mut h) = hist.lock() {
                            let _ = h.record(us.max(1));
                        }
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let total = (f64::from(args.rate) * args.duration.as_secs_f64()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let cmid = format!("lat-{i}");
        let url = format!(
            "{}/v1/chats/{chat_id}/messages",
            args.api[i as usize % args.api.len()]
        );
        if let Ok(mut m) = started.lock() {
            m.insert(cmid.clone(), Instant::now());
        }
        let (http, token, acked, errors) =
            (http.clone(), s_token.clone(), acked.clone(), errors.clone());
        sends.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"client_msg_id": cmid, "body": "x"}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                }
                _ => errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            };
        }));
        bar.inc(1);
    }
    for s in sends {
        let _ = s.await;
    }
    // Give the last frames time to arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.load(std::sync::atomic::Ordering::Relaxed)
        < acked.load(std::sync::atomic::Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish();
    reader.abort();
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let result = LatencyResult {
        scenario: "latency",
        rate_per_s: args.rate,
        sent: total,
        acknowledged: acked.load(std::sync::atomic::Ordering::Relaxed),
        send_errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        received: received.load(std::sync::atomic::Ordering::Relaxed),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        loadavg: crate::util::loadavg(),
    };
    println!(
        "latency at {} msg/s: sent {} acked {} errors {} received {}\np50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        result.rate_per_s, result.sent, result.acknowledged, result.send_errors, result.received,
        result.p50_ms, result.p90_ms, result.p99_ms, result.p999_ms, result.max_ms
    );
    crate::util::write_json(args.out.as_deref(), &result)?;
    if let Some(path) = &args.plot {
        crate::plot::latency_distribution(
            path,
            &format!("end-to-end latency at {} msg/s", args.rate),
            &h,
        )?;
    }
    Ok(result)
}

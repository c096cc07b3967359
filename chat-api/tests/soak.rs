//! Soak mode (ignored by default, minutes long): a gateway under connect/disconnect churn with a
//! steady message stream, its RSS sampled, to show that memory stays flat and every socket is
//! released. Run with
//! `SOAK_SECS=120 cargo test -p chat-api --release --test soak -- --ignored --nocapture`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use shared::protocol::Encoding;
use support::{Cluster, Options, Recv, WsClient};

/// Client tasks connecting and disconnecting at once.
const CHURNERS: usize = 200;
/// RSS samples taken over the run.
const SAMPLES: u64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes long; run with --ignored (SOAK_SECS, default 120)"]
async fn soak_connect_disconnect_churn() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
        .clamp(10, 3600);
    let run = Duration::from_secs(secs);
    tokio::task::spawn_blocking(support::gateway_binary)
        .await
        .expect("building the gateway binary");
    let cluster = Arc::new(
        Cluster::start(Options {
            gateways: vec!["gw-soak"],
            apis: 1,
            ..Options::default()
        })
        .await,
    );
    let users: Vec<String> = (0..CHURNERS).map(|i| format!("soak{i:03}")).collect();
    let chat = cluster.create_chat(0, "soak-sender", &users).await;
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));

    // Background traffic: one message every 50 ms to all the churners' chat.
    let sender = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        tokio::spawn(async move {
            let token = cluster.token("soak-sender");
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let r = cluster
                    .http
                    .try_send_message(
                        cluster.api(0),
                        &token,
                        chat,
                        &format!("s{n}"),
                        "soak",
                        Duration::from_secs(3),
                    )
                    .await;
                assert!(matches!(&r, Ok(r) if r.status == 201), "send {n}: {r:?}");
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };
    // Churn: each task connects, reads for 50-550 ms, drops the socket, again.
    let churn = join_all(users.iter().enumerate().map(|(i, user)| {
        let (cluster, stop, connects, frames) = (
            cluster.clone(),
            stop.clone(),
            connects.clone(),
            frames.clone(),
        );
        async move {
            let token = cluster.token(user);
            let url = cluster.gateways[0].ws_url();
            let enc = if i % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::Msgpack
            };
            let mut round = 0u64;
            while !stop.load(Ordering::Acquire) {
                let mut ws = WsClient::connect(&url, &token, enc)
                    .await
                    .unwrap_or_else(|e| panic!("{user} connect: {e}"));
                connects.fetch_add(1, Ordering::Relaxed);
                let hold = Duration::from_millis(50 + (i as u64 * 37 + round * 101) % 500);
                let until = Instant::now() + hold;
                loop {
                    match ws.recv(until).await {
                        Recv::Frame(_) => {
                            frames.fetch_add(1, Ordering::Relaxed);
                        }
                        Recv::Timeout => break,
                        Recv::Closed(why) => panic!("{user}: closed by the server: {why}"),
                    }
                }
                drop(ws);
                round += 1;
            }
        }
    }));
    let sampler = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        async move {
            let mut samples = Vec::new();
            let start = Instant::now();
            for k in 1..=SAMPLES {
                tokio::time::sleep_until(start + run.mul_f64(k as f64 / SAMPLES as f64)).await;
                let rss = cluster.gateways[0].proc.rss_kib().expect("gateway RSS");
                samples.push((start.elapsed().as_secs(), rss));
            }
            stop.store(true, Ordering::Release);
            samples
        }
    };
    let (_, samples) = tokio::join!(churn, sampler);
    let sent = sender.await.expect("sender");
    // Every socket released: the gauge returns to zero.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = loop {
        let open = cluster.gateway_metric(0, "gateway_sockets_open", "").await;
        if open == 0.0 || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rss_idle = cluster.gateways[0].proc.rss_kib().expect("gateway RSS");
    eprintln!(
        "soak {secs} s: {} connects, {} frames received, {sent} messages sent; gateway RSS \
         (s, KiB): {samples:?}; after the churn stopped: {rss_idle} KiB, {open} sockets open",
        connects.load(Ordering::Relaxed),
        frames.load(Ordering::Relaxed)
    );
    assert_eq!(open, 0.0, "sockets still open after every client left");
    // Flat: from the end of the first quarter (warm-up) to the end, RSS grows by at most 10 %
    // plus 4 MiB of allocator noise.
    let warm = samples[samples.len() / 4].1;
    let last = samples[samples.len() - 1].1;
    let peak = samples[samples.len() / 4..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(last);
    assert!(
        peak <= warm + warm / 10 + 4096,
        "gateway RSS grew under churn: {warm} KiB after warm-up, peak {peak} KiB, last {last} KiB"
    );
    cluster.assert_no_panics();
}

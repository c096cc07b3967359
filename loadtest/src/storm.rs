//! `storm`: a reconnect storm against a live deployment. Many clients of a few hot chats come back
//! at once (a gateway died) and catch up the way docs/PROTOCOL.md says: `GET /v1/chats`, then one
//! page `GET .../messages?after=<held>` of what they missed. Reports the store reads the storm
//! caused on the API replicas (their `api_store_op_seconds` counts, scraped before and after),
//! per op and per client, and the catch-up times. Run the API with `API_RATE_REQUESTS=off` (the
//! storm's users are fresh, but a storm is one burst).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::util;

#[derive(clap::Args, Clone, Debug)]
pub struct StormArgs {
    /// chat-api base URLs; clients go round-robin over them (their /metrics are scraped).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    pub api: Vec<String>,
    /// Clients that reconnect at once.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Hot chats the clients share (clients are spread evenly; at most 1000 members each).
    #[arg(long, default_value_t = 10)]
    pub chats: usize,
    /// Messages each client missed (sent before the storm, after what it held).
    #[arg(long, default_value_t = 10)]
    pub missed: usize,
    /// Catch-ups in flight at once (bounded by this machine's sockets, not by the server).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Prefix of user names, so that runs do not share users.
    #[arg(long, default_value = "storm")]
    pub prefix: String,
    #[arg(long, env = "JWT_SECRET", default_value = shared::auth::DEV_SECRET, hide_default_value = true)]
    pub secret: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct StormResult {
    pub scenario: &'static str,
    pub clients: usize,
    pub chats: usize,
    /// Store reads the storm caused, by op, all replicas together.
    pub store_reads: BTreeMap<String, f64>,
    pub store_reads_total: f64,
    /// Store reads of the per-chat ops (membership, chat, pages, unread counts) per client.
    pub per_chat_reads_per_client: f64,
    /// Store reads of the per-user ops (`user_chats`, `read_markers`) per client.
    pub per_user_reads_per_client: f64,
    pub catch_up_p50_ms: f64,
    pub catch_up_p99_ms: f64,
    pub wall_s: f64,
    pub loadavg: Option<[f64; 3]>,
}

/// The ops counted; the first two are read once per user whatever the caches.
const OPS: &[&str] = &[
    "user_chats",
    "read_markers",
    "count_unread",
    "is_member",
    "members",
    "admins",
    "get_chat",
    "history",
];

async fn store_reads(http: &reqwest::Client, apis: &[String]) -> anyhow::Result<Vec<f64>> {
    let mut totals = vec![0.0; OPS.len()];
    for api in apis {
        let text = http
            .get(format!("{api}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("api_store_op_seconds_count{") else {
                continue;
            };
            for (i, op) in OPS.iter().enumerate() {
                if rest.contains(&format!("op=\"{op}\"")) {
                    totals[i] += line
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0);
                }
            }
        }
    }
    Ok(totals)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(args: StormArgs) -> anyhow::Result<StormResult> {
    util::ensure_loopback(&args.api)?;
    if args.chats == 0 || args.clients < args.chats || args.clients / args.chats > 1000 {
        bail!("--clients must be 1 to 1000 per chat (--chats at least 1)");
    }
    let signer = util::signer(&args.secret);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let users: Vec<String> = (0..args.clients)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    let per_chat = args.clients / args.chats;
    let mut chats = Vec::new();
    for c in 0..args.chats {
        let end = if c + 1 == args.chats {
            args.clients
        } else {
            (c + 1) * per_chat
        };
        let members = &users[c * per_chat..end];
        let creator = util::token(&signer, &members[0]);
        let chat = util::create_chat(&http, &args.api[0], &creator, &members[1..], "storm").await?;
        // What the clients held when they dropped (the first message), then what they missed:
        // every message above it (ids from two replicas need not follow send order).
        let mut ids = Vec::new();
        for i in 0..=args.missed {
            let r = http
                .post(format!(
                    "{}/v1/chats/{chat}/messages",
                    args.api[i % args.api.len()]
                ))
                .bearer_auth(&creator)
                .json(&json!({"client_msg_id": format!("storm-{i}"), "body": "hello"}))
                .send()
                .await?;
            let body: Value = r.json().await?;
            let id: u64 = body["message_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("message_id in {body}"))?;
            ids.push(id);
        }
        let held = ids[0];
        let missed = ids.iter().filter(|&&id| id > held).count();
        chats.push((chat, held, missed, c * per_chat..end));
    }
    let before = store_reads(&http, &args.api).await?;
    let places = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for (chat, held, missed, range) in &chats {
        for i in range.clone() {
            let (http, places) = (http.clone(), places.clone());
            let api = args.api[i % args.api.len()].clone();
            let token = util::token(&signer, &users[i]);
            let (chat, held, missed) = (chat.clone(), *held, *missed);
            tasks.push(tokio::spawn(async move {
                let _place = places.acquire_owned().await?;
                let t0 = Instant::now();
                let list = http
                    .get(format!("{api}/v1/chats"))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                if !list.status().is_success() {
                    bail!("GET /v1/chats: {}", list.status());
                }
                let page: Value = http
                    .get(format!("{api}/v1/chats/{chat}/messages?after={held}"))
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .json()
                    .await?;
                let got = page["messages"].as_array().map_or(0, Vec::len);
                if got != missed {
                    bail!("caught up {got} messages, expected {missed}: {page}");
                }
                anyhow::Ok(t0.elapsed())
            }));
        }
    }
    let mut took = Vec::with_capacity(tasks.len());
    for t in tasks {
        took.push(t.await??);
    }
    let wall = started.elapsed();
    took.sort();
    let after = store_reads(&http, &args.api).await?;
    let mut store_reads = BTreeMap::new();
    let (mut per_user, mut per_chat_reads) = (0.0, 0.0);
    for (i, op) in OPS.iter().enumerate() {
        let n = after[i] - before[i];
        store_reads.insert(op.to_string(), n);
        if i < 2 {
            per_user += n;
        } else {
            per_chat_reads += n;
        }
    }
    let clients = args.clients as f64;
    let result = StormResult {
        scenario: "storm",
        clients: args.clients,
        chats: args.chats,
        store_reads_total: per_user + per_chat_reads,
        store_reads,
        per_chat_reads_per_client: per_chat_reads / clients,
        per_user_reads_per_client: per_user / clients,
        catch_up_p50_ms: percentile(&took, 0.50),
        catch_up_p99_ms: percentile(&took, 0.99),
        wall_s: wall.as_secs_f64(),
        loadavg: util::loadavg(),
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    util::write_json(args.out.as_deref(), &result)?;
    Ok(result)
}

//! `/metrics` of a real `gateway` and a real `chat-api serve` (private Redis, SQLite store), scraped
//! after real traffic: sockets, messages, a push, presence, a ping and some refused requests.
//! The list of metrics comes from `docs/OPERATIONS.md`, so the runbook and the exporters cannot
//! drift: every documented metric must be exported by its service with sane values, and nothing
//! the services export may be missing from the document.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use shared::protocol::Encoding;
use support::{Cluster, Options, WsClient};

/// Upper bound of the test, processes included.
const TEST_LIMIT: Duration = Duration::from_secs(90);
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);
const MESSAGES: usize = 5;

/// One documented metric: its name, which service exports it, and its type.
#[derive(Debug)]
struct Documented {
    name: String,
    service: String,
    kind: String,
}

/// The rows of the "## Metrics" table of docs/OPERATIONS.md.
fn documented() -> Vec<Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md");
    let doc = std::fs::read_to_string(&path).expect("docs/OPERATIONS.md");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("OPERATIONS.md has a '## Metrics' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<Documented> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Documented {
                name: cells[1].trim_matches('`').to_owned(),
                service: cells[2].to_owned(),
                kind: cells[3].to_owned(),
            }
        })
        .collect();
    assert!(rows.len() >= 20, "only {} metrics documented", rows.len());
    rows
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: family name → type (from `# TYPE`) and samples by series name.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<Sample>>,
}

fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            out.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("label k=v");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.samples
            .entry(name.to_owned())
            .or_default()
            .push(Sample { labels, value });
    }
    out
}

impl Scrape {
    /// Sum of the series `name` whose labels include every pair of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|s| {
                        with.iter()
                            .all(|(k, want)| s.labels.get(*k).map(String::as_str) == Some(*want))
                    })
                    .map(|s| s.value)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// Families this scrape exports, with histogram series folded into their family.
    fn families(&self) -> BTreeSet<String> {
        self.types.keys().cloned().collect()
    }

    /// Every value finite and non-negative (but for a clock offset, which has a sign); each
    /// histogram's buckets cumulative and ending in a `+Inf` bucket equal to its count.
    fn check_sane(&self, service: &str) {
        for (name, samples) in &self.samples {
            let signed = name == chat_api::telemetry::CLOCK_OFFSET_SECONDS;
            for s in samples {
                assert!(
                    s.value.is_finite() && (signed || s.value >= 0.0),
                    "{service}: {name}{:?} = {}",
                    s.labels,
                    s.value
                );
            }
        }
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let buckets = &self.samples[&format!("{family}_bucket")];
            let counts = &self.samples[&format!("{family}_count")];
            for count in counts {
                let mut series: Vec<(f64, f64)> = buckets
                    .iter()
                    .filter(|b| {
                        let mut l = b.labels.clone();
                        let le = l.remove("le");
                        le.is_some() && l == count.labels
                    })
                    .map(|b| {
                        let le = &b.labels["le"];
                        let bound = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap()
                        };
                        (bound, b.value)
                    })
                    .collect();
                series.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    !series.is_empty(),
                    "{service}: {family}{:?} has no buckets",
                    count.labels
                );
                assert!(
                    series.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{service}: {family}{:?} buckets not cumulative: {series:?}",
                    count.labels
                );
                let last = series.last().unwrap();
                assert!(
                    last.0.is_infinite() && last.1 == count.value,
                    "{service}: {family}{:?}: +Inf bucket {last:?} != count {}",
                    count.labels,
                    count.value
                );
            }
        }
    }
}

async fn scrape(base: &str) -> (Scrape, String) {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"))
        .text()
        .await
        .expect("metrics body");
    (parse(&text), text)
}

fn assert_at_least(s: &Scrape, service: &str, name: &str, with: &[(&str, &str)], min: f64) {
    let v = s.sum(name, with);
    assert!(
        v >= min,
        "{service}: {name}{with:?} = {v}, expected at least {min}"
    );
}

fn assert_eq_value(s: &Scrape, service: &str, name: &str, with: &[(&str, &str)], want: f64) {
    let v = s.sum(name, with);
    assert!(
        v == want,
        "{service}: {name}{with:?} = {v}, expected {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_export_every_documented_metric_after_traffic() {
    tokio::time::timeout(TEST_LIMIT, run())
        .await
        .expect("test ran past its time limit");
}

async fn run() {
    let docs = documented();
    let cluster = Cluster::start(Options {
        gateways: vec!["gw-metrics"],
        apis: 1,
        ..Options::default()
    })
    .await;
    let api = cluster.api(0).to_owned();
    let gateway = format!("http://{}", cluster.gateways[0].addr);

    // Traffic: three sockets stay open, one closes; a refused upgrade; a chat with messages,
    // a push, presence, a ping, and two refused API requests.
    let mut bob = cluster.connect(0, "bob", Encoding::Msgpack).await;
    let mut carol = cluster.connect(0, "carol", Encoding::Json).await;
    let mut alice = cluster.connect(0, "alice", Encoding::Json).await;
    drop(cluster.connect(0, "dave", Encoding::Json).await);
    let refused =
        WsClient::connect(&cluster.gateways[0].ws_url(), "not-a-token", Encoding::Json).await;
    assert!(refused.is_err(), "an invalid token was accepted");

    let members = vec!["bob".to_owned(), "carol".to_owned()];
    let chat = cluster.create_chat(0, "alice", &members).await;
    let mut ids = Vec::new();
    for i in 0..MESSAGES {
        ids.push(
            cluster
                .send(0, "alice", chat, &format!("m-{i}"), "hello")
                .await
                .message_id,
        );
    }
    bob.expect(&ids, 0, DELIVERY_LIMIT).await;
    carol.expect(&ids, 0, DELIVERY_LIMIT).await;
    alice.expect(&ids, 0, DELIVERY_LIMIT).await;
    let push = cluster
        .http
        .post(
            &api,
            &cluster.service_token("billing", "push"),
            "/v1/push",
            &json!({"user_ids": ["bob"], "event": {"kind": "invoice.paid"}}),
        )
        .await;
    assert_eq!(push.status, 202, "push: {}", push.body);
    bob.expect(&[], 1, DELIVERY_LIMIT).await;
    let presence = cluster
        .http
        .get(
            &api,
            &cluster.token("alice"),
            "/v1/presence?user_ids=bob,dave",
        )
        .await;
    assert_eq!(presence.status, 200, "presence: {}", presence.body);
    bob.ping(DELIVERY_LIMIT).await;
    let unauthorized = cluster.http.get(&api, "not-a-token", "/v1/chats").await;
    assert_eq!(unauthorized.status, 401);
    let too_long = cluster
        .http
        .send_message(
            &api,
            &cluster.token("alice"),
            chat,
            "m-long",
            &"x".repeat(5000),
        )
        .await;
    assert_eq!(too_long.status, 422, "{}", too_long.body);

    // The socket that closed is counted once its task has finished; wait for that (bounded).
    let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
    let (gw, gw_text) = loop {
        let (s, text) = scrape(&gateway).await;
        if s.sum("gateway_sockets_open", &[]) == 3.0 || tokio::time::Instant::now() > deadline {
            break (s, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (ap, ap_text) = scrape(&api).await;

    // Every documented metric is exported, with the documented type, by the documented service.
    for d in &docs {
        let targets: Vec<(&str, &Scrape, &str)> = match d.service.as_str() {
            "gateway" => vec![("gateway", &gw, &gw_text)],
            "chat-api" => vec![("chat-api", &ap, &ap_text)],
            "both" => vec![("gateway", &gw, &gw_text), ("chat-api", &ap, &ap_text)],
            // Only `chat-api embedded` exports these; neither distributed service may.
            "embedded" => {
                for (service, scrape) in [("gateway", &gw), ("chat-api", &ap)] {
                    assert!(
                        !scrape.types.contains_key(&d.name),
                        "{service} exports {}, documented as embedded only",
                        d.name
                    );
                }
                vec![]
            }
            other => panic!("{}: unknown service {other:?} in OPERATIONS.md", d.name),
        };
        for (service, scrape, text) in targets {
            let kind = scrape.types.get(&d.name).unwrap_or_else(|| {
                panic!(
                    "{service} does not export {} (documented in OPERATIONS.md):\n{text}",
                    d.name
                )
            });
            assert_eq!(kind, &d.kind, "{service}: type of {}", d.name);
        }
    }
    // And nothing is exported that the runbook does not explain.
    let documented: BTreeSet<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    for (service, scrape) in [("gateway", &gw), ("chat-api", &ap)] {
        for family in scrape.families() {
            assert!(
                documented.contains(family.as_str()),
                "{service} exports {family}, which docs/OPERATIONS.md does not list"
            );
        }
        scrape.check_sane(service);
    }

    // Values that follow from the traffic above.
    let g = "gateway";
    assert_eq_value(&gw, g, "gateway_sockets_open", &[], 3.0);
    assert_at_least(&gw, g, "gateway_connects_total", &[], 4.0);
    assert_at_least(
        &gw,
        g,
        "gateway_disconnects_total",
        &[("code", "1000")],
        1.0,
    );
    assert_at_least(&gw, g, "gateway_handshake_seconds_count", &[], 4.0);
    assert_at_least(&gw, g, "gateway_rejected_total", &[("reason", "auth")], 1.0);
    assert_at_least(&gw, g, "gateway_frames_in_total", &[], 1.0);
    // at least: 5 messages to 3 sockets, 1 event, 1 pong
    assert_at_least(
        &gw,
        g,
        "gateway_frames_out_total",
        &[],
        (3 * MESSAGES + 2) as f64,
    );
    assert_at_least(
        &gw,
        g,
        "gateway_deliveries_total",
        &[],
        (3 * MESSAGES + 1) as f64,
    );
    assert_at_least(&gw, g, "gateway_stream_batch_size_count", &[], 1.0);
    assert_at_least(&gw, g, "gateway_stream_lag_seconds_count", &[], 1.0);
    assert_eq_value(&gw, g, "gateway_send_queue_drops_total", &[], 0.0);
    assert_eq_value(&gw, g, "gateway_draining", &[], 0.0);
    assert_at_least(
        &gw,
        g,
        "redis_op_seconds_count",
        &[("op", "heartbeat")],
        1.0,
    );
    assert_at_least(
        &gw,
        g,
        "redis_op_seconds_count",
        &[("op", "add_routes")],
        1.0,
    );
    assert_eq_value(&gw, g, "redis_errors_total", &[], 0.0);

    let a = "chat-api";
    let sends = [("route", "/v1/chats/{chat_id}/messages"), ("status", "201")];
    assert_eq_value(&ap, a, "api_http_requests_total", &sends, MESSAGES as f64);
    assert_eq_value(
        &ap,
        a,
        "api_http_request_seconds_count",
        &sends,
        MESSAGES as f64,
    );
    assert_at_least(
        &ap,
        a,
        "api_http_requests_total",
        &[("route", "/v1/push"), ("status", "202")],
        1.0,
    );
    assert_at_least(&ap, a, "api_http_requests_total", &[("status", "401")], 1.0);
    assert_eq_value(&ap, a, "api_messages_created_total", &[], MESSAGES as f64);
    assert_eq_value(
        &ap,
        a,
        "api_store_op_seconds_count",
        &[("op", "insert_message")],
        MESSAGES as f64,
    );
    assert_at_least(
        &ap,
        a,
        "api_store_op_seconds_count",
        &[("op", "create_chat")],
        1.0,
    );
    assert_eq_value(&ap, a, "api_store_errors_total", &[], 0.0);
    assert_at_least(
        &ap,
        a,
        "api_rejected_total",
        &[("reason", "unauthorized")],
        1.0,
    );
    assert_at_least(
        &ap,
        a,
        "api_rejected_total",
        &[("reason", "validation-failed")],
        1.0,
    );
    assert_at_least(
        &ap,
        a,
        "api_fanout_duration_seconds_count",
        &[],
        MESSAGES as f64,
    );
    assert_at_least(
        &ap,
        a,
        "api_fanout_recipients_online_total",
        &[],
        (3 * MESSAGES) as f64,
    );
    assert_at_least(&ap, a, "api_push_events_total", &[], 1.0);
    assert_at_least(
        &ap,
        a,
        "redis_op_seconds_count",
        &[("op", "lookup")],
        MESSAGES as f64,
    );
    assert_at_least(
        &ap,
        a,
        "redis_op_seconds_count",
        &[("op", "publish")],
        MESSAGES as f64,
    );
    assert_at_least(&ap, a, "redis_op_seconds_count", &[("op", "presence")], 1.0);
    assert_eq_value(&ap, a, "redis_errors_total", &[], 0.0);
    assert_eq_value(&ap, a, "api_draining", &[], 0.0);
    // No label value looks like an id: user and chat ids must never become labels.
    for (service, scrape) in [("gateway", &gw), ("chat-api", &ap)] {
        for (name, samples) in &scrape.samples {
            for s in samples {
                for v in s.labels.values() {
                    for id in ["alice", "bob", "carol", "dave", &chat.to_string()] {
                        assert!(
                            !v.contains(id),
                            "{service}: {name} has a label carrying {id}: {:?}",
                            s.labels
                        );
                    }
                }
            }
        }
    }
}

/// Requests with made-up methods and paths, unauthenticated, to both services.
const MADE_UP_REQUESTS: usize = 300;
/// Series that may appear during the flood for other reasons (far fewer than the flood's 300).
const SERIES_SLACK: usize = 30;

/// Every metric label comes from a closed set: 300 requests with made-up methods (and made-up
/// paths) add no `method` value but `other`, no raw path as `route`, and only a bounded number of
/// series to either service's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_keep_the_label_sets_bounded() {
    tokio::time::timeout(TEST_LIMIT, made_up_methods())
        .await
        .expect("test ran past its time limit");
}

fn series_count(s: &Scrape) -> usize {
    s.samples.values().map(Vec::len).sum()
}

async fn made_up_methods() {
    let cluster = Cluster::start(Options {
        gateways: vec!["gw-labels"],
        apis: 1,
        // Hundreds of upgrade attempts from one address: not what this test is about.
        gateway_env: vec![("CONNECT_RATE_PER_IP", "off".to_owned())],
        ..Options::default()
    })
    .await;
    let api = cluster.api(0).to_owned();
    let gateway = format!("http://{}", cluster.gateways[0].addr);
    let client = reqwest::Client::new();
    // One of each kind first, so that "before" already holds every series the flood may touch.
    let warm = |i: usize| {
        let method = reqwest::Method::from_bytes(format!("XQ{i}ZZ").as_bytes()).unwrap();
        let paths = [
            "/v1/chats".to_owned(),
            format!("/v1/chats/{i}"),
            format!("/made-up-{i}"),
            "/ws".to_owned(),
            "/healthz".to_owned(),
        ];
        (method, paths)
    };
    let hit = |base: &str, i: usize| {
        let (method, paths) = warm(i);
        let requests: Vec<_> = paths
            .iter()
            .map(|p| client.request(method.clone(), format!("{base}{p}")).send())
            .collect();
        async move {
            for r in requests {
                let r = r.await.expect("an answer to a made-up method");
                assert!(r.status().as_u16() < 500, "{}", r.status());
            }
        }
    };
    hit(&api, 0).await;
    hit(&gateway, 0).await;
    let (api_before, _) = scrape(&api).await;
    let (gw_before, _) = scrape(&gateway).await;
    for i in 1..MADE_UP_REQUESTS {
        hit(&api, i).await;
        hit(&gateway, i).await;
    }
    let (api_after, api_text) = scrape(&api).await;
    let (gw_after, gw_text) = scrape(&gateway).await;

    let closed: BTreeSet<&str> = chat_api::telemetry::HTTP_METHODS
        .iter()
        .copied()
        .chain([chat_api::telemetry::OTHER_METHOD])
        .collect();
    let served = chat_api::routes();
    let routes: BTreeSet<&str> = served
        .iter()
        .map(|(_, p)| p.as_str())
        .chain([chat_api::telemetry::UNMATCHED_ROUTE])
        .collect();
    for (name, samples) in &api_after.samples {
        for s in samples {
            if let Some(m) = s.labels.get("method") {
                assert!(closed.contains(m.as_str()), "{name}: method {m:?}");
            }
            if let Some(r) = s.labels.get("route") {
                assert!(
                    routes.contains(r.as_str()) || (!r.contains("made-up") && !r.contains("/v1/")),
                    "{name}: route {r:?} is not a route template"
                );
            }
        }
    }
    // The flood repeated kinds of request already seen once: no new series from it (a little
    // slack for series that background work, such as a route sweep, registers meanwhile).
    for (service, before, after, text) in [
        ("chat-api", &api_before, &api_after, &api_text),
        ("gateway", &gw_before, &gw_after, &gw_text),
    ] {
        assert!(
            series_count(after) <= series_count(before) + SERIES_SLACK,
            "{service} went from {} to {} series:\n{text}",
            series_count(before),
            series_count(after)
        );
    }
}

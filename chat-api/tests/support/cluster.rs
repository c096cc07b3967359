//! The processes of a distributed deployment for one test: a private Redis (standalone or a
//! 3-master cluster), `gateway` nodes and `chat-api serve` replicas on free ports in one temp dir,
//! started until ready, restarted, killed and checked for crashes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use shared::auth::Signer;
use shared::protocol::{Encoding, Message};
use shared::testkit::{
    free_port, newest_stream_entry, Proc, RedisCluster, RedisServer, LOG_TAIL_LINES,
};
use shared::Id;

use super::*;

/// How long a process may take to answer `/readyz` after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Gateway {
    pub node_id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Gateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

pub struct Api {
    pub base: String,
    pub proc: Proc,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub gateways: Vec<&'static str>,
    pub apis: usize,
    pub node_ttl: Duration,
    pub route_sweep_interval: Duration,
    /// A 3-master Redis Cluster instead of one standalone server.
    pub redis_cluster: bool,
    /// Extra environment for every gateway (overrides the defaults below).
    pub gateway_env: Vec<(&'static str, String)>,
    /// Extra environment for every API replica (overrides the defaults below).
    pub api_env: Vec<(&'static str, String)>,
    /// Extra environment per API replica, by index (overrides `api_env` and the defaults).
    pub api_env_per_replica: Vec<Vec<(&'static str, String)>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateways: vec!["gw-a", "gw-b"],
            apis: 2,
            node_ttl: Duration::from_secs(3),
            route_sweep_interval: Duration::from_secs(30),
            redis_cluster: false,
            gateway_env: Vec::new(),
            api_env: Vec::new(),
            api_env_per_replica: Vec::new(),
        }
    }
}

/// The private Redis a deployment uses: one server, or a 3-master cluster.
pub enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn url(&self) -> String {
        match self {
            Redis::Standalone(r) => r.url(),
            Redis::Cluster(c) => c.url(),
        }
    }

    /// The standalone server, for tests that stop and restart it.
    pub fn standalone(&mut self) -> &mut RedisServer {
        match self {
            Redis::Standalone(r) => r,
            Redis::Cluster(_) => panic!("this test needs a standalone Redis"),
        }
    }

    /// The newest entry of stream `key`, asked of whichever master holds its slot.
    pub fn newest_stream_entry(&self, key: &str) -> std::io::Result<Option<(u64, u64)>> {
        let ports = match self {
            Redis::Standalone(r) => vec![r.port()],
            Redis::Cluster(c) => c.ports(),
        };
        let mut last = None;
        for port in ports {
            match newest_stream_entry(port, key) {
                Ok(found) => return Ok(found),
                // A master that does not own the slot answers -MOVED.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no Redis port")))
    }
}

/// One distributed deployment. Field order is drop order: the services die before Redis, and
/// the temp dir (SQLite file, logs) goes last.
pub struct Cluster {
    pub gateways: Vec<Gateway>,
    pub apis: Vec<Api>,
    pub redis: Redis,
    pub http: Http,
    signer: Signer,
    pub dir: tempfile::TempDir,
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[derive(Clone, Copy)]
enum Kind {
    Gateway(&'static str),
    Api(u16),
}

/// The environment of one `chat-api serve` replica; `extra` overrides the defaults.
fn api_env(
    redis_url: &str,
    addr: SocketAddr,
    db: &Path,
    worker: u16,
    opts: &Options,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REDIS_URL", redis_url.to_string()),
        ("JWT_SECRET", SECRET.into()),
        ("API_ADDR", addr.to_string()),
        ("STORE_URL", store_url(db)),
        ("WORKER_ID", worker.to_string()),
        ("REDIS_TIMEOUT", "500ms".into()),
        ("ROUTE_SWEEP_INTERVAL", millis(opts.route_sweep_interval)),
        ("API_SHUTDOWN_GRACE", "1s".into()),
        // The steady senders go faster than a person types; the limits stay on
        // (through Redis) but far above the tests' pace.
        ("API_RATE_MESSAGES", "500/1s:1000".into()),
        ("API_RATE_REQUESTS", "1000/1s:2000".into()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((*k, v.clone()));
    }
    env
}

/// Environment that runs a process with its wall clock `offset` off (libfaketime's `FAKETIME`
/// syntax, e.g. `-3s`), as on a host whose clock is wrong. Its monotonic clock stays real.
pub fn faketime_env(offset: &str) -> Vec<(&'static str, String)> {
    let lib = ["x86_64-linux-gnu", "aarch64-linux-gnu", "."]
        .iter()
        .map(|arch| {
            Path::new("/usr/lib")
                .join(arch)
                .join("faketime/libfaketime.so.1")
        })
        .find(|p| p.is_file())
        .expect("libfaketime is missing: install Debian's `faketime` (scripts/test.sh does)");
    vec![
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME", offset.to_string()),
        ("DONT_FAKE_MONOTONIC", "1".into()),
    ]
}

/// Spawns a service binary with text logs at `info` and only the settings in `envs` (settings
/// inherited from the test runner's environment must not leak in).
fn spawn_service(
    name: &str,
    exe: &Path,
    args: &[&str],
    envs: &[(&str, String)],
    dir: &Path,
) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "text");
    for var in [
        "WORKER_ID",
        "NODE_ID",
        "STORE_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_ALGORITHM",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "API_ADDR",
        "GATEWAY_ADDR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc::spawn(name, cmd, dir)
}

/// Spawns one process on a free port and waits until it answers `probe` (`readyz`, or
/// `healthz` for one that is not meant to be ready); a lost race for the port is retried on
/// another one.
#[allow(clippy::too_many_arguments)]
async fn start_process(
    kind: Kind,
    redis_url: &str,
    dir: &Path,
    db: &Path,
    http: &Http,
    gateway_bin: &Path,
    opts: &Options,
    api_url: Option<String>,
    probe: &str,
) -> (Kind, SocketAddr, Proc) {
    let mut last_log = String::new();
    for attempt in 0..3 {
        let port = free_port().expect("a free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut proc = match kind {
            Kind::Gateway(node) => {
                let mut env = vec![
                    ("REDIS_URL", redis_url.to_string()),
                    ("JWT_SECRET", SECRET.into()),
                    ("GATEWAY_ADDR", addr.to_string()),
                    ("NODE_ID", node.into()),
                    ("NODE_TTL", millis(opts.node_ttl)),
                    ("REDIS_TIMEOUT", "500ms".into()),
                    ("DRAIN_WINDOW", "100ms".into()),
                    ("DRAIN_DEADLINE", "2s".into()),
                    // Many test clients share 127.0.0.1 and connect at once.
                    ("CONNECT_RATE_PER_IP", "2000/1s:4000".into()),
                    ("MAX_HANDSHAKES_PER_IP", "1000".into()),
                ];
                env.extend(api_url.clone().map(|u| ("API_URL", u)));
                for (k, v) in &opts.gateway_env {
                    env.retain(|(key, _)| key != k);
                    env.push((*k, v.clone()));
                }
                spawn_service(&format!("{node}-{attempt}"), gateway_bin, &[], &env, dir)
            }
            Kind::Api(worker) => spawn_service(
                &format!("api{worker}-{attempt}"),
                Path::new(env!("CARGO_BIN_EXE_chat-api")),
                &["serve"],
                &api_env(
                    redis_url,
                    addr,
                    db,
                    worker,
                    opts,
                    &opts
                        .api_env
                        .iter()
                        .chain(
                            opts.api_env_per_replica
                                .get(usize::from(worker) - 1)
                                .into_iter()
                                .flatten(),
                        )
                        .cloned()
                        .collect::<Vec<_>>(),
                ),
                dir,
            ),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Ready only once this process says it listens on `addr`: a process that lost the
            // port to another test's process would otherwise pass the probe on its behalf.
            if http.ready(&format!("http://{addr}/{probe}")).await && listens_on(&proc, addr) {
                return (kind, addr, proc);
            }
            if let Some(status) = proc.exited() {
                last_log = proc.log_tail(LOG_TAIL_LINES);
                assert!(
                    last_log.contains("binding") || last_log.contains("in use"),
                    "{} exited with {status} before it was ready:\n{last_log}",
                    proc.name
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not answering /{probe} within {READY_TIMEOUT:?}:\n{}",
                proc.name,
                proc.log_tail(LOG_TAIL_LINES)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("could not bind a free port in 3 attempts:\n{last_log}");
}

/// Whether `proc`'s log has its "listening" line for `addr`.
fn listens_on(proc: &Proc, addr: SocketAddr) -> bool {
    let addr = addr.to_string();
    proc.log()
        .lines()
        .any(|line| line.contains("listening") && line.contains(&addr))
}

/// The API replicas' store: the shared SQLite file, or `CHAT_TEST_STORE_URL` when set (a migrated
/// ScyllaDB keyspace: `scripts/scylla-conformance.sh` runs the chaos scenarios that way).
fn store_url(db: &Path) -> String {
    match std::env::var("CHAT_TEST_STORE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => format!("sqlite:{}", db.display()),
    }
}

impl Cluster {
    /// Starts Redis, then every gateway and API process at once, and waits until each answers
    /// `/readyz` (a gateway is ready once its first heartbeat reached Redis).
    pub async fn start(opts: Options) -> Cluster {
        let gateway_bin = tokio::task::spawn_blocking(gateway_binary)
            .await
            .expect("gateway build task");
        let cluster = opts.redis_cluster;
        let redis = tokio::task::spawn_blocking(move || {
            if cluster {
                RedisCluster::start().map(Redis::Cluster)
            } else {
                RedisServer::start().map(Redis::Standalone)
            }
        })
        .await
        .expect("redis start task")
        .expect("starting a private redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("chat.db");
        // Two replicas opening a fresh file at the same instant can fail with "enabling WAL:
        // database is locked" (switching to WAL needs an exclusive lock, and SQLite does not
        // wait for it when both connections already hold a shared one). The WAL setting is
        // persistent, so creating the file first lets the replicas start in parallel.
        chat_api::store::sqlite::SqliteStore::open(&db).expect("creating the SQLite file");
        let http = Http::new();
        // The APIs first, so that the gateways can be given one as API_URL (typing frames).
        let spawn_all = |kinds: Vec<Kind>, api_url: Option<String>| {
            futures_util::future::join_all(kinds.into_iter().map(|kind| {
                let (redis_url, dir, db, http, gateway_bin, opts, api_url) = (
                    redis.url(),
                    dir.path().to_path_buf(),
                    db.clone(),
                    http.clone(),
                    gateway_bin.clone(),
                    opts.clone(),
                    api_url.clone(),
                );
                async move {
                    start_process(
                        kind,
                        &redis_url,
                        &dir,
                        &db,
                        &http,
                        &gateway_bin,
                        &opts,
                        api_url,
                        "readyz",
                    )
                    .await
                }
            }))
        };
        let mut started = spawn_all(
            (0..opts.apis).map(|i| Kind::Api(i as u16 + 1)).collect(),
            None,
        )
        .await;
        let api_url = started.first().map(|(_, addr, _)| format!("http://{addr}"));
        started.extend(
            spawn_all(
                opts.gateways.iter().map(|n| Kind::Gateway(n)).collect(),
                api_url,
            )
            .await,
        );
        let mut gateways = Vec::new();
        let mut apis = Vec::new();
        for (kind, addr, proc) in started {
            match kind {
                Kind::Gateway(node) => gateways.push(Gateway {
                    node_id: node.to_string(),
                    addr,
                    proc,
                }),
                Kind::Api(_) => apis.push(Api {
                    base: format!("http://{addr}"),
                    proc,
                }),
            }
        }
        Cluster {
            gateways,
            apis,
            redis,
            http,
            signer: Signer::hmac(jsonwebtoken::Algorithm::HS256, SECRET.as_bytes()),
            dir,
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.signer.token(user, Duration::from_secs(600), None)
    }

    /// Starts one more `chat-api serve` replica (worker id `worker`, `extra` environment on top
    /// of the usual) and waits until it answers `/healthz`, or `/readyz` when `ready`; returns
    /// its index in `apis`.
    pub async fn spawn_api(
        &mut self,
        worker: u16,
        extra: &[(&'static str, String)],
        ready: bool,
    ) -> usize {
        let opts = Options {
            api_env: extra.to_vec(),
            ..Options::default()
        };
        let (_, addr, proc) = start_process(
            Kind::Api(worker),
            &self.redis.url(),
            self.dir.path(),
            &self.dir.path().join("chat.db"),
            &self.http,
            Path::new("unused"),
            &opts,
            None,
            if ready { "readyz" } else { "healthz" },
        )
        .await;
        self.apis.push(Api {
            base: format!("http://{addr}"),
            proc,
        });
        self.apis.len() - 1
    }

    pub fn service_token(&self, service: &str, scope: &str) -> String {
        self.signer
            .token(service, Duration::from_secs(600), Some(scope))
    }

    pub fn api(&self, i: usize) -> &str {
        &self.apis[i % self.apis.len()].base
    }

    pub async fn connect(&self, gateway: usize, user: &str, encoding: Encoding) -> WsClient {
        WsClient::connect(
            &self.gateways[gateway].ws_url(),
            &self.token(user),
            encoding,
        )
        .await
        .unwrap_or_else(|e| panic!("{user} connecting to gateway {gateway}: {e}"))
    }

    /// Creates a chat through API `api` as `creator`; returns its id.
    pub async fn create_chat(&self, api: usize, creator: &str, members: &[String]) -> Id {
        let r = self
            .http
            .post(
                self.api(api),
                &self.token(creator),
                "/v1/chats",
                &serde_json::json!({ "members": members }),
            )
            .await;
        assert_eq!(r.status, 201, "create chat: {}", r.body);
        r.body["chat_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("chat_id in {}", r.body))
    }

    /// Sends a message and expects 201; returns the stored message.
    pub async fn send(
        &self,
        api: usize,
        sender: &str,
        chat: Id,
        client_msg_id: &str,
        body: &str,
    ) -> Message {
        let r = self
            .http
            .send_message(
                self.api(api),
                &self.token(sender),
                chat,
                client_msg_id,
                body,
            )
            .await;
        assert_eq!(r.status, 201, "send {client_msg_id}: {}", r.body);
        serde_json::from_value(r.body.clone())
            .unwrap_or_else(|e| panic!("message in {}: {e}", r.body))
    }

    /// `GET /v1/presence` as a service (which reads everyone): user → online, or the failed
    /// response.
    pub async fn presence(
        &self,
        api: usize,
        users: &[&str],
    ) -> Result<HashMap<String, bool>, Resp> {
        let r = self
            .http
            .get(
                self.api(api),
                // A service: presence of users who share no chat with a user reads `unknown`.
                &self.service_token("presence-probe", "presence"),
                &format!("/v1/presence?user_ids={}", users.join(",")),
            )
            .await;
        if r.status != 200 {
            return Err(r);
        }
        Ok(r.body["presence"]
            .as_array()
            .unwrap_or_else(|| panic!("presence list in {}", r.body))
            .iter()
            .map(|p| {
                (
                    p["user_id"].as_str().unwrap_or_default().to_string(),
                    p["online"].as_bool().unwrap_or(false),
                )
            })
            .collect())
    }

    /// Waits until every user in `users` has presence `online` (through API 0), at most `limit`.
    /// Returns how long it took.
    pub async fn await_presence(&self, users: &[&str], online: bool, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let last = self.presence(0, users).await;
            if let Ok(p) = &last {
                if users.iter().all(|u| p.get(*u) == Some(&online)) {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < limit,
                "presence of {users:?} not {online} within {limit:?}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics if any process of this deployment (running, exited or killed) logged a panic.
    pub fn assert_no_panics(&self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("reading the log dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        assert!(
            !logs.is_empty(),
            "no process logs in {}",
            self.dir.path().display()
        );
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
                panic!("{} logged a panic: {line}", log.display());
            }
        }
    }

    /// The value of a counter or gauge on a gateway's `/metrics` (summed over its label sets
    /// that contain `labels`), or 0 when absent.
    pub async fn gateway_metric(&self, gateway: usize, name: &str, labels: &str) -> f64 {
        let url = format!("http://{}/metrics", self.gateways[gateway].addr);
        self.metric(&url, name, labels).await
    }

    /// The same for an API replica's `/metrics`.
    pub async fn api_metric(&self, api: usize, name: &str, labels: &str) -> f64 {
        let url = format!("{}/metrics", self.apis[api].base);
        self.metric(&url, name, labels).await
    }

    async fn metric(&self, url: &str, name: &str, labels: &str) -> f64 {
        let text = self
            .http
            .client
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Panics unless every service process is still running.
    pub fn assert_all_running(&mut self) {
        for p in self
            .gateways
            .iter_mut()
            .map(|g| &mut g.proc)
            .chain(self.apis.iter_mut().map(|a| &mut a.proc))
        {
            if let Some(status) = p.exited() {
                panic!(
                    "{} exited ({status}):\n{}",
                    p.name,
                    p.log_tail(LOG_TAIL_LINES)
                );
            }
        }
    }
}

//! Multi-process test harness: a private Redis, `gateway` and `chat-api serve` processes on free
//! ports in one temp dir (killed on drop, their logs printed when a test panics), plus HTTP and
//! WebSocket clients that speak the public API and wire protocol.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use shared::auth::Signer;
use shared::protocol::{
    catch_up_after, decode_server, encode_client, ClientFrame, Encoding, Message, ServerFrame,
};
use shared::testkit::{RedisCluster, RedisServer};
use shared::Id;

pub const SECRET: &str = "distributed-test-secret-0123456789abcdef";
/// How long a process may take to answer `/readyz` after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of a process log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// The `gateway` binary, built once per test run. Cargo only builds the binaries of the package
/// under test, and `gateway` belongs to another package of the workspace: build it next to
/// `chat-api` (a no-op when it is fresh) so that the test never runs a stale gateway.
/// Runs `test` under `limit`, after making sure the gateway binary is built (a build can take a
/// while on a busy machine and is not part of what is tested).
pub async fn bounded_by<F: std::future::Future<Output = ()>>(limit: Duration, test: F) {
    tokio::task::spawn_blocking(gateway_binary)
        .await
        .expect("building the gateway binary");
    tokio::time::timeout(limit, test)
        .await
        .expect("test ran past its time limit");
}

pub fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let api = Path::new(env!("CARGO_BIN_EXE_chat-api"));
        let dir = api.parent().expect("binary directory");
        let bin = dir.join("gateway");
        let Some(cargo) = std::env::var_os("CARGO") else {
            assert!(
                bin.is_file(),
                "{} is missing and CARGO is not set: run `cargo build -p gateway` first",
                bin.display()
            );
            return bin;
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        // The same selection as `cargo test --workspace` (and scripts/test.sh): another one
        // would unify dependency features differently and rebuild much of the graph.
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"])
            .arg("--manifest-path")
            .arg(&manifest);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        let out = cmd.output().expect("running cargo to build the gateway");
        assert!(
            out.status.success(),
            "`cargo build --workspace --bins --tests` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A port that was free a moment ago. Another process may take it before ours binds it, so
/// callers retry on a bind failure.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a probe port")
            .port();
        if port != 6379 {
            return port;
        }
    }
}

/// A child process, SIGKILLed and reaped on drop; its log is printed if the test panics.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, exe: &Path, args: &[&str], envs: &[(&str, String)], dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating a process log");
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text");
        // Settings inherited from the test runner's environment must not leak in.
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
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({}): {e}", exe.display()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (the orchestrator's stop) and returns at once.
    pub fn sigterm(&self) {
        let pid = self.pid().expect("process already reaped");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits at most `limit` for the process to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        if self.child.is_none() {
            return self.exited();
        }
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size in KiB (from /proc), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has ended (or was killed by the test).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => Some(std::os::unix::process::ExitStatusExt::from_raw(9)),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

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
        let port = free_port();
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
                Proc::spawn(&format!("{node}-{attempt}"), gateway_bin, &[], &env, dir)
            }
            Kind::Api(worker) => Proc::spawn(
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
            if http.ready(&format!("http://{addr}/{probe}")).await {
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

/// One HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<String>,
    /// `Idempotent-Replayed: true` was set (a retried send returned the stored original).
    pub replayed: bool,
    pub body: Value,
}

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("HTTP client"),
        }
    }

    async fn ready(&self, url: &str) -> bool {
        matches!(
            self.client.get(url).timeout(Duration::from_secs(1)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    async fn finish(r: reqwest::Result<reqwest::Response>, what: &str) -> Resp {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        Self::read(r).await
    }

    async fn read(r: reqwest::Response) -> Resp {
        let replayed = r
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            retry_after,
            replayed,
            body,
        }
    }

    pub async fn post(&self, base: &str, token: &str, path: &str, body: &Value) -> Resp {
        let r = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        Self::finish(r, &format!("POST {base}{path}")).await
    }

    pub async fn get(&self, base: &str, token: &str, path: &str) -> Resp {
        let r = self
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await;
        Self::finish(r, &format!("GET {base}{path}")).await
    }

    /// A send whose transport failure (a replica killed mid-request, a refused connection) is an
    /// `Err` to retry, not a panic; each attempt bounded by `limit`.
    pub async fn try_send_message(
        &self,
        base: &str,
        token: &str,
        chat: Id,
        client_msg_id: &str,
        body: &str,
        limit: Duration,
    ) -> Result<Resp, String> {
        let r = self
            .client
            .post(format!("{base}/v1/chats/{chat}/messages"))
            .bearer_auth(token)
            .timeout(limit)
            .json(&serde_json::json!({ "client_msg_id": client_msg_id, "body": body }))
            .send()
            .await
            // Debug keeps the cause (refused, reset, incomplete message).
            .map_err(|e| format!("{e:?}"))?;
        Ok(Self::read(r).await)
    }

    pub async fn send_message(
        &self,
        base: &str,
        token: &str,
        chat: Id,
        client_msg_id: &str,
        body: &str,
    ) -> Resp {
        self.post(
            base,
            token,
            &format!("/v1/chats/{chat}/messages"),
            &serde_json::json!({ "client_msg_id": client_msg_id, "body": body }),
        )
        .await
    }
}

/// What a socket read produced.
#[derive(Debug)]
pub enum Recv {
    Frame(ServerFrame),
    Timeout,
    Closed(String),
}

/// A WebSocket client of one gateway (tokio-tungstenite, not the server's library).
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub encoding: Encoding,
    pub user: String,
    pub connection_id: String,
}

/// Frames a socket received while waiting for expected ones.
#[derive(Debug, Default)]
pub struct Received {
    pub messages: Vec<Message>,
    pub events: Vec<Value>,
}

impl WsClient {
    /// Connects and reads `hello`. JSON sockets send the token in `Authorization`, MessagePack
    /// sockets in `access_token` (the browser form), so both paths are exercised.
    pub async fn connect(url: &str, token: &str, encoding: Encoding) -> anyhow::Result<WsClient> {
        let request = match encoding {
            Encoding::Json => {
                let mut req = format!("{url}?encoding=json").into_client_request()?;
                req.headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
                req
            }
            Encoding::Msgpack => {
                format!("{url}?encoding=msgpack&access_token={token}").into_client_request()?
            }
        };
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket handshake timed out"))??;
        WsClient::after_upgrade(ws, encoding).await
    }

    /// Connects over a TCP socket whose receive buffer is `rcvbuf` bytes, so that a client that
    /// stops reading makes the server's send queue fill quickly.
    pub async fn connect_small_buffer(
        url: &str,
        token: &str,
        encoding: Encoding,
        rcvbuf: u32,
    ) -> anyhow::Result<WsClient> {
        let enc = match encoding {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
        };
        let request = format!("{url}?encoding={enc}&access_token={token}").into_client_request()?;
        let host = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let addr: SocketAddr = host.parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let stream = socket.connect(addr).await?;
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::client_async(
                request,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
            ),
        )
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket handshake timed out"))??;
        WsClient::after_upgrade(ws, encoding).await
    }

    /// Wraps an upgraded socket and reads its `hello` (bounded).
    async fn after_upgrade(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        encoding: Encoding,
    ) -> anyhow::Result<WsClient> {
        let mut client = WsClient {
            ws,
            encoding,
            user: String::new(),
            connection_id: String::new(),
        };
        match client.recv(Instant::now() + Duration::from_secs(5)).await {
            Recv::Frame(ServerFrame::Hello {
                user_id,
                connection_id,
                ..
            }) => {
                client.user = user_id;
                client.connection_id = connection_id;
                Ok(client)
            }
            other => anyhow::bail!("expected hello, got {other:?}"),
        }
    }

    /// The next data frame before `deadline` (control frames are skipped).
    pub async fn recv(&mut self, deadline: Instant) -> Recv {
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Recv::Timeout,
                Ok(None) => return Recv::Closed("stream ended".into()),
                Ok(Some(Err(e))) => return Recv::Closed(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            let (encoding, bytes) = match next {
                WsMessage::Text(t) => (Encoding::Json, t.as_bytes().to_vec()),
                WsMessage::Binary(b) => (Encoding::Msgpack, b.to_vec()),
                WsMessage::Close(c) => return Recv::Closed(format!("close frame {c:?}")),
                _ => continue,
            };
            assert_eq!(
                encoding, self.encoding,
                "{}: frame in the wrong encoding",
                self.user
            );
            return Recv::Frame(
                decode_server(encoding, &bytes)
                    .unwrap_or_else(|e| panic!("{}: undecodable frame: {e}", self.user)),
            );
        }
    }

    /// Reads until every message id in `messages` and `events` push events have arrived, within
    /// `limit`. Panics on a repeated message id, a message not expected, or an extra event.
    pub async fn expect(&mut self, messages: &[Id], events: usize, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        let want: HashSet<Id> = messages.iter().copied().collect();
        let mut got = Received::default();
        let mut seen = HashSet::new();
        while seen.len() < want.len() || got.events.len() < events {
            match self.recv(deadline).await {
                Recv::Frame(ServerFrame::Message { message }) => {
                    assert!(
                        want.contains(&message.message_id),
                        "{} ({}): unexpected message {message:?}",
                        self.user,
                        self.connection_id
                    );
                    assert!(
                        seen.insert(message.message_id),
                        "{} ({}): message {} delivered twice",
                        self.user,
                        self.connection_id,
                        message.message_id
                    );
                    got.messages.push(message);
                }
                Recv::Frame(ServerFrame::Event { event }) => {
                    assert!(
                        got.events.len() < events,
                        "{}: unexpected event {event}",
                        self.user
                    );
                    got.events.push(event);
                }
                Recv::Frame(_) => {}
                other => panic!(
                    "{} ({}): waiting for {} of {:?} and {} events, got {other:?} after {:?}",
                    self.user,
                    self.connection_id,
                    want.len() - seen.len(),
                    want,
                    events - got.events.len(),
                    got
                ),
            }
        }
        got
    }

    /// No `message` or `event` frame arrives within `grace` (and the socket stays open).
    pub async fn assert_quiet(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            match self.recv(deadline).await {
                Recv::Timeout => return,
                Recv::Frame(f @ (ServerFrame::Message { .. } | ServerFrame::Event { .. })) => {
                    panic!("{} ({}): extra frame {f:?}", self.user, self.connection_id)
                }
                Recv::Frame(_) => {}
                Recv::Closed(why) => panic!("{}: socket closed: {why}", self.user),
            }
        }
    }

    /// Sends an application ping and waits for `pong`, proving the socket is alive end to end.
    /// Returns the messages that arrived meanwhile.
    pub async fn ping(&mut self, limit: Duration) -> Vec<Message> {
        let bytes = encode_client(self.encoding, &ClientFrame::Ping);
        let frame = match self.encoding {
            Encoding::Json => WsMessage::Text(String::from_utf8(bytes).expect("JSON").into()),
            Encoding::Msgpack => WsMessage::Binary(bytes.into()),
        };
        self.ws.send(frame).await.expect("sending ping");
        let deadline = Instant::now() + limit;
        let mut messages = Vec::new();
        loop {
            match self.recv(deadline).await {
                Recv::Frame(ServerFrame::Pong) => return messages,
                Recv::Frame(ServerFrame::Message { message }) => messages.push(message),
                Recv::Frame(_) => {}
                other => panic!("{}: waiting for pong, got {other:?}", self.user),
            }
        }
    }
}

/// A client that follows the catch-up algorithm of `docs/PROTOCOL.md`: it keeps every message
/// it holds per chat (by id, so repeats between frames and history collapse), and after each
/// (re)connect pages `GET .../messages?after=<highest held − CATCHUP_OVERLAP>` for every chat
/// whose `last_message_id` is above that.
pub struct CatchUpClient {
    pub user: String,
    pub token: String,
    pub encoding: Encoding,
    pub socket: Option<WsClient>,
    /// chat → message id → message.
    pub held: HashMap<Id, BTreeMap<Id, Message>>,
    /// Message ids each connection has received as frames, to catch a socket that gets the
    /// same message twice (a delivery bug, unlike a frame repeating history).
    per_socket: HashSet<Id>,
    pub socket_repeats: Vec<Id>,
    pub connections: usize,
    pub fetched_from_history: usize,
    /// The server sent `resync`: the client owes a catch-up.
    pub resync_requested: bool,
    pub resyncs: usize,
    /// Why each socket closed, in order.
    pub closes: Vec<String>,
}

impl CatchUpClient {
    pub fn new(user: &str, token: String, encoding: Encoding) -> CatchUpClient {
        CatchUpClient {
            user: user.to_string(),
            token,
            encoding,
            socket: None,
            held: HashMap::new(),
            per_socket: HashSet::new(),
            socket_repeats: Vec::new(),
            connections: 0,
            fetched_from_history: 0,
            resync_requested: false,
            resyncs: 0,
            closes: Vec::new(),
        }
    }

    /// Connects to `ws_url`, then catches up through the API at `api`.
    pub async fn connect(&mut self, http: &Http, ws_url: &str, api: &str) {
        if let Err(e) = self.try_connect(http, ws_url, api).await {
            panic!("{} connecting to {ws_url}: {e}", self.user);
        }
    }

    /// Like [`CatchUpClient::connect`], but a refused connection is an `Err` to retry.
    pub async fn try_connect(
        &mut self,
        http: &Http,
        ws_url: &str,
        api: &str,
    ) -> anyhow::Result<()> {
        let socket = WsClient::connect(ws_url, &self.token, self.encoding).await?;
        self.attach(http, socket, api).await;
        Ok(())
    }

    /// Takes `socket` (already past `hello`) as this client's connection and catches up if it
    /// is a reconnect.
    pub async fn attach(&mut self, http: &Http, socket: WsClient, api: &str) {
        self.socket = Some(socket);
        self.per_socket.clear();
        self.connections += 1;
        if self.connections > 1 {
            self.catch_up(http, api).await;
        }
    }

    fn highest(&self, chat: Id) -> Option<Id> {
        self.held
            .get(&chat)
            .and_then(|m| m.keys().next_back().copied())
    }

    fn hold(&mut self, message: Message) {
        self.held
            .entry(message.chat_id)
            .or_default()
            .insert(message.message_id, message);
    }

    pub async fn catch_up(&mut self, http: &Http, api: &str) {
        self.resync_requested = false;
        let chats = http.get(api, &self.token, "/v1/chats").await;
        assert_eq!(
            chats.status, 200,
            "{}: GET /v1/chats: {}",
            self.user, chats.body
        );
        let list = chats.body["chats"].as_array().cloned().unwrap_or_default();
        for chat in list {
            let chat_id: Id = chat["chat_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("chat_id in {chat}"));
            let Some(last) = chat["last_message_id"]
                .as_str()
                .and_then(|s| s.parse::<Id>().ok())
            else {
                continue;
            };
            // From the highest id held minus the overlap (a message may land below ids already
            // held, by up to that much), or the whole chat when nothing is held.
            let mut after = self.highest(chat_id).map(catch_up_after).unwrap_or(Id(0));
            if last <= after {
                continue;
            }
            for _page in 0..10_000 {
                let path = format!("/v1/chats/{chat_id}/messages?after={after}&limit=200");
                let page = http.get(api, &self.token, &path).await;
                assert_eq!(page.status, 200, "{}: GET {path}: {}", self.user, page.body);
                let messages: Vec<Message> = serde_json::from_value(page.body["messages"].clone())
                    .unwrap_or_else(|e| panic!("messages in {}: {e}", page.body));
                let Some(newest) = messages.last().map(|m| m.message_id) else {
                    break;
                };
                self.fetched_from_history += messages.len();
                messages.into_iter().for_each(|m| self.hold(m));
                if page.body["has_more"] != Value::Bool(true) {
                    break;
                }
                after = newest;
            }
        }
    }

    /// Reads frames until `deadline`, or until it holds every id in `want` (when given).
    /// Returns `Some(reason)` if the socket closed.
    pub async fn pump(&mut self, deadline: Instant, want: Option<&HashSet<Id>>) -> Option<String> {
        loop {
            if let Some(want) = want {
                if want.iter().all(|id| self.holds(*id)) {
                    return None;
                }
            }
            let socket = self.socket.as_mut()?;
            match socket.recv(deadline).await {
                Recv::Frame(ServerFrame::Message { message }) => {
                    if !self.per_socket.insert(message.message_id) {
                        self.socket_repeats.push(message.message_id);
                    }
                    self.hold(message);
                }
                Recv::Frame(ServerFrame::Resync) => {
                    self.resync_requested = true;
                    self.resyncs += 1;
                    return None;
                }
                Recv::Frame(_) => {}
                Recv::Timeout => return None,
                Recv::Closed(why) => {
                    self.socket = None;
                    self.closes.push(why.clone());
                    return Some(why);
                }
            }
        }
    }

    pub fn holds(&self, id: Id) -> bool {
        self.held.values().any(|m| m.contains_key(&id))
    }

    /// Everything held in one chat, in id order.
    pub fn chat(&self, chat: Id) -> Vec<Message> {
        self.held
            .get(&chat)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The id of the newest entry of a Redis stream, as `(ms, seq)`, read with a raw RESP request so
/// the check does not depend on the client library under test.
pub fn newest_stream_entry(redis_port: u16, key: &str) -> std::io::Result<Option<(u64, u64)>> {
    let mut stream = TcpStream::connect(("127.0.0.1", redis_port))?;
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    let args = ["XREVRANGE", key, "+", "-", "COUNT", "1"];
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        }
        // `*0` is the whole answer for an empty or missing stream; otherwise the id is the
        // fourth line (`*1`, `*2`, `$LEN`, ID).
        if out.starts_with(b"*0\r\n")
            || (out.starts_with(b"-") && out.ends_with(b"\r\n"))
            || out.split(|b| *b == b'\n').count() > 4
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    if text.starts_with("*0") {
        return Ok(None);
    }
    if text.starts_with('-') {
        return Err(std::io::Error::other(format!(
            "XREVRANGE: {}",
            text.trim_end()
        )));
    }
    let id = text.split("\r\n").nth(3).unwrap_or_default();
    let parsed = id
        .split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
    match parsed {
        Some(p) => Ok(Some(p)),
        None => Err(std::io::Error::other(format!(
            "unexpected XREVRANGE reply {text:?}"
        ))),
    }
}

/// Sends one command to a Redis server as a raw RESP request (binary-safe arguments) and returns
/// the first line of the reply (`:50`, `+OK`, `-ERR …`), so that tests can write to Redis
/// without the client library under test.
pub fn redis_command(redis_port: u16, args: &[&[u8]]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", redis_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    stream.write_all(&req)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    Ok(text.split("\r\n").next().unwrap_or_default().to_string())
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    shared::ids::now_unix_ms()
}

/// What a [`Sender`] recorded.
#[derive(Default, Debug)]
pub struct SendLog {
    /// Every acknowledged (201) message, in send order.
    pub acked: Vec<Message>,
    /// Attempts that did not answer 201: (client_msg_id, the status or the transport error).
    pub failures: Vec<(String, String)>,
    /// Sends whose answer was a replay of the stored original (`Idempotent-Replayed`).
    pub replayed: Vec<String>,
    /// The slowest single attempt.
    pub slowest: Duration,
}

/// A steady sender, as a client app sends: one message every `every`, the first attempt of
/// message `n` to replica `n % apis`; a failed attempt (an error status, a refused or cut
/// connection) is retried with the same `client_msg_id` on the next replica.
pub struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<SendLog>,
    /// Sends in flight to each API replica (by index into `cluster.apis`), so that a test can
    /// stop a replica at a moment when a send is on its way to it.
    in_flight: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

impl Sender {
    pub fn start(
        cluster: &Cluster,
        user: &str,
        chat: Id,
        every: Duration,
        body_bytes: usize,
    ) -> Sender {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (http, token, stop2, prefix) = (
            cluster.http.clone(),
            cluster.token(user),
            stop.clone(),
            format!("{user}-"),
        );
        let apis: Vec<String> = cluster.apis.iter().map(|a| a.base.clone()).collect();
        let in_flight: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>> =
            std::sync::Arc::new(apis.iter().map(|_| Default::default()).collect());
        let counts = in_flight.clone();
        let task = tokio::spawn(async move {
            let mut log = SendLog::default();
            let mut n = 0usize;
            while !stop2.load(Ordering::Acquire) {
                let cid = format!("{prefix}{n:05}");
                let mut body = format!("body {n} ");
                while body.len() < body_bytes {
                    body.push('x');
                }
                let give_up = Instant::now() + Duration::from_secs(20);
                let mut attempt = 0;
                loop {
                    let k = (n + attempt) % apis.len();
                    let started = Instant::now();
                    counts[k].fetch_add(1, Ordering::SeqCst);
                    let r = http
                        .try_send_message(
                            &apis[k],
                            &token,
                            chat,
                            &cid,
                            &body,
                            Duration::from_secs(3),
                        )
                        .await;
                    counts[k].fetch_sub(1, Ordering::SeqCst);
                    log.slowest = log.slowest.max(started.elapsed());
                    match r {
                        Ok(r) if r.status == 201 => {
                            if r.replayed {
                                log.replayed.push(cid.clone());
                            }
                            log.acked
                                .push(serde_json::from_value(r.body).expect("message"));
                            break;
                        }
                        Ok(r) => log.failures.push((cid.clone(), format!("{}", r.status))),
                        Err(e) => log.failures.push((cid.clone(), e)),
                    }
                    attempt += 1;
                    assert!(
                        Instant::now() < give_up,
                        "{cid} never acknowledged: {:?}",
                        log.failures
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
                tokio::time::sleep(every).await;
            }
            log
        });
        Sender {
            stop,
            task,
            in_flight,
        }
    }

    /// Sends in flight now to API replica `api`.
    pub fn in_flight(&self, api: usize) -> usize {
        self.in_flight[api].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops after the message in flight and returns what was recorded.
    pub async fn finish(self) -> SendLog {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.task.await.expect("sender task")
    }
}

/// SPEC §6 for one chat, once the clients are done reading: every client holds every
/// acknowledged message of `log` exactly once, in id order (`log.acked` must be in id order:
/// one sequential sender's send order, or sorted), and no socket got a message twice unless its
/// send was replayed (a replay is delivered again).
pub fn assert_every_member_holds(clients: &[CatchUpClient], chat: Id, log: &SendLog) {
    let acked: Vec<Id> = log.acked.iter().map(|m| m.message_id).collect();
    let unique: HashSet<Id> = acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "two sends acknowledged with one id"
    );
    let cids: HashSet<&str> = log.acked.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(
        cids.len(),
        acked.len(),
        "one client_msg_id acknowledged twice"
    );
    let mut sorted = log.acked.clone();
    sorted.sort_by_key(|m| m.message_id);
    assert!(
        sorted
            .iter()
            .map(|m| m.message_id)
            .eq(acked.iter().copied()),
        "id order must be send order for one sequential sender"
    );
    let replayed: HashSet<Id> = log
        .acked
        .iter()
        .filter(|m| log.replayed.contains(&m.client_msg_id))
        .map(|m| m.message_id)
        .collect();
    for c in clients {
        let missing: Vec<Id> = acked.iter().copied().filter(|id| !c.holds(*id)).collect();
        assert!(
            missing.is_empty(),
            "{}: {} of {} acknowledged messages missing: {missing:?}",
            c.user,
            missing.len(),
            acked.len()
        );
        let held = c.chat(chat);
        assert!(
            held == sorted,
            "{}: not every acknowledged message exactly once in id order (held {}, acked {}); \
             held ids {:?}",
            c.user,
            held.len(),
            sorted.len(),
            held.iter().map(|m| m.message_id).collect::<Vec<_>>()
        );
        let repeats: Vec<&Id> = c
            .socket_repeats
            .iter()
            .filter(|id| !replayed.contains(id))
            .collect();
        assert!(
            repeats.is_empty(),
            "{}: a socket got messages twice that were never replayed: {repeats:?}",
            c.user
        );
    }
}

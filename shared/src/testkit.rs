//! Test support (cargo feature `testkit`): private `redis-server` processes on free ports in temp
//! dirs — one standalone server (optionally also on TLS, with a throwaway CA), or a 3-master Redis
//! Cluster — killed when dropped; and what other crates' harnesses share: free ports, child
//! processes with their output in a log ([`Proc`]), raw RESP requests that do not go through the
//! client library under test.
//!
//! Servers run with `--save "" --appendonly no`, so a [`RedisServer::restart`] loses all data,
//! like a crashed cache node. Port 6379 is never used. Blocking calls: start them before the
//! clients under test, not on a hot path.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to reach `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("`{0}` not found on PATH: install it (apt-get install redis-server)")]
    Missing(&'static str),
    #[error("could not start redis-server on port {port}: {reason} (log: {log})")]
    Start {
        port: u16,
        reason: String,
        log: String,
    },
    #[error("redis cluster did not form: {0}")]
    Cluster(String),
    #[error("could not make test TLS certificates: {0}")]
    Certs(String),
    #[error("test support I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn find_on_path(bin: &'static str) -> Result<PathBuf, TestkitError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
        .ok_or(TestkitError::Missing(bin))
}

/// A port that was free a moment ago (bound to port 0 and released). Never 6379. Another process
/// may take it before the caller binds it, so callers retry on a bind failure.
pub fn free_port() -> Result<u16, TestkitError> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
}

/// Sends one inline command and returns the raw reply text (enough for PING / INFO checks).
fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if reply_complete(&out) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `buf` holds one complete simple, error, integer or bulk-string reply.
fn reply_complete(buf: &[u8]) -> bool {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match buf.first() {
        Some(b'$') => {
            let len: i64 = std::str::from_utf8(&buf[1..line_end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            len < 0 || buf.len() >= line_end + 2 + len as usize + 2
        }
        _ => true,
    }
}

/// Per-command call counts and event-loop I/O counters of one server, from `INFO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// `cmdstat_<name>` → `calls`, names lower case.
    pub calls: std::collections::BTreeMap<String, u64>,
    /// `total_reads_processed`: socket read events (one per batch of commands read).
    pub reads: u64,
    /// `total_writes_processed`: socket write events (one per batch of replies written).
    pub writes: u64,
}

impl ServerStats {
    /// Counts that grew from `before` to `self`.
    pub fn since(&self, before: &ServerStats) -> ServerStats {
        let calls = self
            .calls
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.calls.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        ServerStats {
            calls,
            reads: self.reads.saturating_sub(before.reads),
            writes: self.writes.saturating_sub(before.writes),
        }
    }

    pub fn add(&mut self, other: &ServerStats) {
        for (k, v) in &other.calls {
            *self.calls.entry(k.clone()).or_default() += v;
        }
        self.reads += other.reads;
        self.writes += other.writes;
    }
}

/// Reads [`ServerStats`] from the server on `port`.
pub fn server_stats(port: u16) -> Result<ServerStats, TestkitError> {
    let text = raw_command(port, "INFO everything")?;
    let mut stats = ServerStats::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            // cmdstat_get:calls=3,usec=...
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            stats.calls.insert(name.to_lowercase(), calls);
        } else if let Some(v) = line.strip_prefix("total_reads_processed:") {
            stats.reads = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("total_writes_processed:") {
            stats.writes = v.trim().parse().unwrap_or(0);
        }
    }
    Ok(stats)
}

/// One private `redis-server` process.
struct Process {
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn spawn(port: u16, dir: &Path, extra: &[String]) -> Result<Process, TestkitError> {
        let server = find_on_path("redis-server")?;
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            dir.join(format!("redis-{port}.log")).display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let mut p = Process {
            port,
            args,
            dir: dir.to_path_buf(),
            child: None,
        };
        p.start(&server)?;
        Ok(p)
    }

    fn log_path(&self) -> String {
        self.dir
            .join(format!("redis-{}.log", self.port))
            .display()
            .to_string()
    }

    fn start(&mut self, server: &Path) -> Result<(), TestkitError> {
        let child = Command::new(server)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(reply) = raw_command(self.port, "PING") {
                if reply.starts_with("+PONG") {
                    return Ok(());
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(TestkitError::Start {
                    port: self.port,
                    reason: format!("exited with {status}"),
                    log: self.log_path(),
                });
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(TestkitError::Start {
                    port: self.port,
                    reason: "no PONG in time".into(),
                    log: self.log_path(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tries a few free ports: another process may grab a port between probing and binding.
fn spawn_on_free_port(
    dir: &Path,
    extra: impl Fn(u16) -> Result<Vec<String>, TestkitError>,
) -> Result<Process, TestkitError> {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port()?;
        match Process::spawn(port, dir, &extra(port)?) {
            Ok(p) => return Ok(p),
            Err(e @ TestkitError::Start { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(TestkitError::Cluster("no free port".into())))
}

/// PEM files of a throwaway CA and of a server certificate it signed for `127.0.0.1` and
/// `localhost`.
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCerts {
    /// Writes a fresh CA and server certificate into `dir`, with names starting `name`.
    pub fn generate(dir: &Path, name: &str) -> Result<TestCerts, TestkitError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let certs = |e: rcgen::Error| TestkitError::Certs(e.to_string());
        let ca_key = KeyPair::generate().map_err(certs)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(certs)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).map_err(certs)?;
        let key = KeyPair::generate().map_err(certs)?;
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(certs)?
            .signed_by(&key, &ca, &ca_key)
            .map_err(certs)?;
        let files = TestCerts {
            ca_file: dir.join(format!("{name}-ca.pem")),
            cert_file: dir.join(format!("{name}-server.pem")),
            key_file: dir.join(format!("{name}-server.key")),
        };
        std::fs::write(&files.ca_file, ca.pem())?;
        std::fs::write(&files.cert_file, server.pem())?;
        std::fs::write(&files.key_file, key.serialize_pem())?;
        Ok(files)
    }
}

/// A private standalone `redis-server`, killed on drop.
pub struct RedisServer {
    process: Process,
    tls: Option<(u16, TestCerts)>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Result<RedisServer, TestkitError> {
        find_on_path("redis-server")?;
        let dir = tempfile::tempdir()?;
        let process = spawn_on_free_port(dir.path(), |_| Ok(Vec::new()))?;
        Ok(RedisServer {
            process,
            tls: None,
            dir,
        })
    }

    /// A server that also listens with TLS (see [`RedisServer::tls_url`]), with a certificate
    /// signed by a throwaway CA ([`RedisServer::tls_ca_file`]). Clients need no certificate.
    pub fn start_tls() -> Result<RedisServer, TestkitError> {
        find_on_path("redis-server")?;
        let dir = tempfile::tempdir()?;
        let certs = TestCerts::generate(dir.path(), "redis")?;
        let tls_port = std::cell::Cell::new(0);
        let process = spawn_on_free_port(dir.path(), |_| {
            tls_port.set(free_port()?);
            Ok(vec![
                "--tls-port".into(),
                tls_port.get().to_string(),
                "--tls-cert-file".into(),
                certs.cert_file.display().to_string(),
                "--tls-key-file".into(),
                certs.key_file.display().to_string(),
                "--tls-ca-cert-file".into(),
                certs.ca_file.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ])
        })?;
        Ok(RedisServer {
            process,
            tls: Some((tls_port.get(), certs)),
            dir,
        })
    }

    /// `rediss://127.0.0.1:TLS_PORT` of a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("rediss://127.0.0.1:{port}"))
    }

    /// The PEM file of the CA that signed the TLS certificate of [`RedisServer::start_tls`].
    pub fn tls_ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|(_, c)| c.ca_file.clone())
    }

    /// The server's temp dir (removed on drop), for other test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// Stops the server (all data is lost) and leaves it down until [`RedisServer::start_again`].
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port, empty.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        self.process.kill();
        let server = find_on_path("redis-server")?;
        self.process.start(&server)
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.start_again()
    }

    pub fn stats(&self) -> Result<ServerStats, TestkitError> {
        server_stats(self.port())
    }
}

/// A private Redis Cluster of three masters (no replicas), killed on drop.
pub struct RedisCluster {
    nodes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Result<RedisCluster, TestkitError> {
        let cli = find_on_path("redis-cli")?;
        find_on_path("redis-server")?;
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(spawn_on_free_port(dir.path(), |port| {
                Ok(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{port}.conf"),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    // The default bus port (port + 10000) might be taken; pick a free one.
                    "--cluster-port".into(),
                    free_port()?.to_string(),
                ])
            })?);
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(TestkitError::Cluster(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn wait_ok(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let ok = self.nodes.iter().all(|n| {
                raw_command(n.port, "CLUSTER INFO").is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains("cluster_known_nodes:3")
                })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestkitError::Cluster(
                    "cluster_state:ok not reached on every node".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// Stats summed over all masters.
    pub fn stats(&self) -> Result<ServerStats, TestkitError> {
        let mut total = ServerStats::default();
        for port in self.ports() {
            total.add(&server_stats(port)?);
        }
        Ok(total)
    }
}

/// How a process that was expected to exit ended.
pub struct Exit {
    pub code: Option<i32>,
    pub stderr: String,
}

/// Applies `env` to `cmd` (an empty value removes the variable), runs it with stderr captured
/// and waits for it to exit; kills it and panics if it still runs after `limit`. For tests of
/// start-up failures, whose output is short.
pub fn run_to_exit(cmd: &mut Command, env: &[(&str, &str)], limit: Duration) -> Exit {
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the child") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} with {env:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    Exit {
        code: status.code(),
        stderr,
    }
}

/// A `redis://` URL whose port nothing listens on.
pub fn closed_redis_url() -> String {
    let port = free_port().expect("probe port");
    format!("redis://127.0.0.1:{port}")
}

/// A verifier for the built-in development key (HS256, no issuer or audience), as the servers
/// under test use when they run without a configured key.
pub fn dev_key_verifier(leeway: Duration) -> crate::auth::Verifier {
    crate::auth::Verifier::new(&crate::auth::JwtSettings {
        algorithm: jsonwebtoken::Algorithm::HS256,
        key: crate::auth::KeySource::Secret(crate::auth::DEV_SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: None,
        leeway,
    })
    .expect("the development key is a valid HS256 key")
}

/// Reads what the server sends on `stream` until it closes the connection or `limit` passes:
/// the text, and after how long it closed (`None`: still open at `limit`).
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), None),
        }
    }
}

/// Lines of a process log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;

/// A child process (a service under test) whose output goes to a log file; SIGKILLed and reaped on
/// drop, the log's last [`LOG_TAIL_LINES`] lines printed if the test panics.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `dir/NAME.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating a process log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
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
        let deadline = tokio::time::Instant::now() + limit;
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
            if tokio::time::Instant::now() >= deadline {
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

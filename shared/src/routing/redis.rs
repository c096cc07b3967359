//! Redis route registry and node bus for distributed mode, on standalone Redis or Redis Cluster.
//!
//! # Key layout
//!
//! Every key starts with [`RedisOptions::key_prefix`] (default empty). A `{…}` hash tag keeps all
//! keys of one user, or of one gateway node, in one cluster slot. No command touches keys of two
//! different tags, so every command is valid on Redis Cluster; a pipeline whose commands land on
//! different shards is written to all shards at once, so it still costs one round trip.
//!
//! | key                         | type   | content                                                    |
//! |-----------------------------|--------|------------------------------------------------------------|
//! | `route:{USER}`              | hash   | field node id → incarnation (decimal) of each node holding the user's sockets |
//! | `seen:{USER}`               | string | unix ms when the user's socket on some node last closed (TTL `last_seen_ttl`) |
//! | `gw:{NODE}:alive`           | string | live incarnation of the node (TTL `liveness_ttl`, refreshed by `heartbeat`) |
//! | `gw:{NODE}:incs`            | set    | incarnations of the node that may still own routes         |
//! | `gw:{NODE}:users:INC`       | set    | users routed to incarnation INC of the node (for `leave` and `sweep`) |
//! | `gw:{NODE}:stream`          | stream | deliveries to the node: fields `r` (recipients, MessagePack array of strings) and `p` (the frame, as published), capped with `MAXLEN ~` |
//! | `gw:{NODE}:load`            | hash   | the node's last load report: `inc` (incarnation), `sockets`, `users`, `at` (unix ms); TTL `liveness_ttl` |
//! | `presence:{USER}`           | string | `1`/`0`: the presence state last announced to the user's co-members (TTL `last_seen_ttl`) |
//! | `presence:reports`          | stream | users whose presence may have changed, field `u` (MessagePack array of strings), read by the consumer group `api` with `NOACK`, capped with `MAXLEN ~` 10,000 |
//! | `gw:nodes`                  | zset   | node id scored by its last heartbeat (unix ms), so `sweep` can find nodes |
//! | `worker:{ID}`               | string | owner of message-id worker id ID (see [`WorkerLease`]) |
//!
//! A route counts only while the node's `alive` key holds the route's incarnation. Stale routes
//! are removed by compare-and-delete scripts (`HDEL` only if the field still holds the stale
//! incarnation), so a cleanup never removes a route that a newer incarnation has just written.
//!
//! # URLs
//!
//! `redis://[[user:]password@]host[:port][/db]` for a standalone server;
//! `redis-cluster://[[user:]password@]host:port[,host:port…]` (or fred's own
//! `redis-cluster://host:port?node=host:port&node=…`) for a cluster: any reachable node is enough,
//! the others are discovered. `rediss://` and `rediss-cluster://` are the same over TLS (rustls):
//! the server certificate is checked against the system's CA certificates, or only against the
//! PEM CA certificates of [`RedisOptions::ca_file`] (`REDIS_CA_FILE`) when set. Cluster nodes are
//! reached at the addresses they announce, so their certificates must name those addresses.

mod bus;
mod lease;
mod presence;
mod registry;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, Pipeline, WithOptions};
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, SortedSetsInterface,
};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::{Builder, ClusterHash, CustomCommand, Expiration, Value};
use parking_lot::Mutex;
use tokio::sync::watch;

pub use bus::{RedisBus, RedisSubscription, STREAM_READ_MAX};
pub use lease::{LeaseError, LeaseOptions, WorkerLease};
pub use presence::{RedisPresenceReports, PRESENCE_STREAM_MAXLEN};
pub use registry::{RedisRegistry, SweepReport};

use super::RoutingError;

/// Deletes hash field ARGV[1] of KEYS[1] only if it still holds ARGV[2].
const HDEL_IF_EQ: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";
/// Deletes KEYS[1] only if it still holds ARGV[1].
const DEL_IF_EQ: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";

/// Users handled per pipeline by `leave` and `sweep`, so one call never builds a huge batch.
const CLEANUP_BATCH: usize = 1000;
/// Nodes examined per `sweep` call.
const SWEEP_NODES_MAX: i64 = 1000;

/// Settings of the Redis routing backend.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Deadline of every command or pipeline; past it callers get [`RoutingError::Timeout`].
    /// Default 1 s.
    pub command_timeout: Duration,
    /// TTL of a node's liveness key. Heartbeat well within it (a third of it is a good period).
    /// Default 10 s.
    pub liveness_ttl: Duration,
    /// How long a user's last-seen time is kept. Default 30 days.
    pub last_seen_ttl: Duration,
    /// Approximate cap (`MAXLEN ~`) of each node's stream. Default 10,000 entries; at least
    /// [`STREAM_READ_MAX`] (checked by [`connect`]), which is what lets a reader notice trimmed
    /// entries cheaply (see [`RedisSubscription`]).
    pub stream_maxlen: u64,
    /// How long one `XREAD` blocks before `next_batch` returns an empty batch. Default 1 s.
    pub block_timeout: Duration,
    /// Longest wait between reconnect attempts (the backoff doubles from 50 ms up to it).
    /// Default 2 s.
    pub reconnect_delay_max: Duration,
    /// Prepended to every key; lets tests or tenants share one Redis. Default empty.
    pub key_prefix: String,
    /// PEM file of the CA certificates that sign the servers' certificates, for `rediss://`
    /// URLs (instead of the system's). Default none.
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            command_timeout: Duration::from_secs(1),
            liveness_ttl: Duration::from_secs(10),
            last_seen_ttl: Duration::from_secs(30 * 24 * 3600),
            stream_maxlen: 10_000,
            block_timeout: Duration::from_secs(1),
            reconnect_delay_max: Duration::from_secs(2),
            key_prefix: String::new(),
            ca_file: None,
        }
    }
}

/// Key names; see the module docs for the layout.
#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn route(&self, user: &str) -> String {
        format!("{}route:{{{user}}}", self.prefix)
    }
    fn seen(&self, user: &str) -> String {
        format!("{}seen:{{{user}}}", self.prefix)
    }
    fn alive(&self, node: &str) -> String {
        format!("{}gw:{{{node}}}:alive", self.prefix)
    }
    fn incs(&self, node: &str) -> String {
        format!("{}gw:{{{node}}}:incs", self.prefix)
    }
    fn users(&self, node: &str, incarnation: &str) -> String {
        format!("{}gw:{{{node}}}:users:{incarnation}", self.prefix)
    }
    fn stream(&self, node: &str) -> String {
        format!("{}gw:{{{node}}}:stream", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}gw:nodes", self.prefix)
    }
    fn load(&self, node: &str) -> String {
        format!("{}gw:{{{node}}}:load", self.prefix)
    }
    fn announced(&self, user: &str) -> String {
        format!("{}presence:{{{user}}}", self.prefix)
    }
    fn presence_reports(&self) -> String {
        format!("{}presence:reports", self.prefix)
    }
    fn worker(&self, id: u16) -> String {
        format!("{}worker:{{{id}}}", self.prefix)
    }
}

/// State shared by the registry, the bus and leases: one multiplexed client (commands from
/// concurrent callers are pipelined onto its connections).
struct Shared {
    client: Client,
    opts: RedisOptions,
    keys: Keys,
    round_trips: AtomicU64,
    epoch: watch::Sender<u64>,
}

fn map_err(e: fred::error::Error) -> RoutingError {
    match e.kind() {
        fred::error::ErrorKind::Timeout => RoutingError::Timeout,
        _ => RoutingError::Unavailable(format!("redis: {e}")),
    }
}

impl Shared {
    /// Per-command options: fail at once while the client knows it is disconnected instead of
    /// queueing the command until the server is back (when its caller has long had an error).
    /// A command sent just before a connection broke can still run after the reconnect: like
    /// any timed-out request, an error means "may or may not have happened".
    fn options(&self) -> Options {
        Options {
            fail_fast: true,
            timeout: Some(self.opts.command_timeout),
            ..Options::default()
        }
    }

    fn cmd(&self) -> WithOptions<Client> {
        self.client.with_options(&self.options())
    }

    fn pipeline(&self) -> WithOptions<Pipeline<Client>> {
        self.client.pipeline().with_options(&self.options())
    }

    /// Runs one request (a command or a pipeline) under the command timeout.
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RoutingError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.opts.command_timeout, fut).await {
            Err(_) => Err(RoutingError::Timeout),
            Ok(r) => r.map_err(map_err),
        }
    }

    /// Sends a pipeline and returns one reply per command, failing if any command failed.
    async fn run(
        &self,
        pipeline: WithOptions<Pipeline<Client>>,
    ) -> Result<Vec<Value>, RoutingError> {
        let replies = self
            .timed(async { Ok(pipeline.try_all::<Value>().await) })
            .await?;
        replies.into_iter().map(|r| r.map_err(map_err)).collect()
    }

    /// [`Shared::run`] of `pipeline` followed by `last`, sent as a command of its own behind it,
    /// in one round trip; `last`'s reply comes last. fred writes each command of a lone pipeline
    /// with a socket write of its own (it flushes whenever its command channel is empty behind
    /// the command just written, which it is inside a pipeline); with `last` waiting in that
    /// channel, the pipeline is buffered and goes out with it (in writes of up to fred's
    /// `max_feed_count` commands): one `writev` instead of one per command (docs/BENCHMARKS.md,
    /// "One write per route lookup").
    async fn run_behind(
        &self,
        pipeline: WithOptions<Pipeline<Client>>,
        last: impl Future<Output = Result<Value, fred::error::Error>>,
    ) -> Result<Vec<Value>, RoutingError> {
        let (replies, last) = self
            .timed(futures_util::future::try_join(
                async { Ok(pipeline.try_all::<Value>().await) },
                last,
            ))
            .await?;
        let mut replies = replies
            .into_iter()
            .map(|r| r.map_err(map_err))
            .collect::<Result<Vec<Value>, RoutingError>>()?;
        replies.push(last);
        Ok(replies)
    }

    /// Each user's routes as (node id, incarnation) pairs and, in the same round trip, the live
    /// incarnation of each of `nodes` (absent = dead); in one socket write ([`Shared::run_behind`]:
    /// the last user's `HGETALL` goes behind the pipeline of the rest).
    async fn read_routes_and_liveness(
        &self,
        users: &[String],
        nodes: &[String],
    ) -> Result<(Vec<Vec<(String, String)>>, HashMap<String, String>), RoutingError> {
        let Some((last, rest)) = users.split_last() else {
            return Ok((Vec::new(), self.live_incarnations(nodes).await?));
        };
        let p = self.pipeline();
        for user in rest {
            queue(p.hgetall::<(), _>(self.keys.route(user)).await)?;
        }
        for node in nodes {
            queue(p.get::<(), _>(self.keys.alive(node)).await)?;
        }
        let trailing = self.cmd();
        let mut replies = self
            .run_behind(p, trailing.hgetall::<Value, _>(self.keys.route(last)))
            .await?;
        let last = replies.pop().unwrap_or(Value::Null);
        let alive = replies.split_off(rest.len().min(replies.len()));
        let live = nodes
            .iter()
            .zip(alive)
            .filter_map(|(n, v)| as_string(&v).map(|inc| (n.clone(), inc)))
            .collect();
        replies.push(last);
        Ok((replies.into_iter().map(pairs).collect(), live))
    }

    /// The nodes registered in `gw:nodes` (at most `SWEEP_NODES_MAX`), live or dead.
    async fn known_nodes(&self) -> Result<Vec<String>, RoutingError> {
        Ok(strings(
            self.timed(self.cmd().zrange::<Value, _, _, _>(
                self.keys.nodes(),
                0,
                SWEEP_NODES_MAX - 1,
                None,
                false,
                None,
                false,
            ))
            .await?,
        ))
    }

    /// The live incarnation of each named node (absent = dead): one round trip, one socket write
    /// ([`Shared::run_behind`]).
    async fn live_incarnations(
        &self,
        nodes: &[String],
    ) -> Result<HashMap<String, String>, RoutingError> {
        let Some((last, rest)) = nodes.split_last() else {
            return Ok(HashMap::new());
        };
        let p = self.pipeline();
        for node in rest {
            queue(p.get::<(), _>(self.keys.alive(node)).await)?;
        }
        let trailing = self.cmd();
        let replies = self
            .run_behind(p, trailing.get::<Value, _>(self.keys.alive(last)))
            .await?;
        Ok(nodes
            .iter()
            .zip(replies)
            .filter_map(|(n, v)| as_string(&v).map(|inc| (n.clone(), inc)))
            .collect())
    }

    /// Compare-and-delete of stale routes, (user, node, incarnation) each; one round trip.
    async fn delete_routes(
        &self,
        stale: &[(String, String, String)],
        seen_ms: Option<u64>,
    ) -> Result<(), RoutingError> {
        if stale.is_empty() {
            return Ok(());
        }
        let p = self.pipeline();
        for (user, node, inc) in stale {
            queue_eval(&p, HDEL_IF_EQ, self.keys.route(user), [node, inc]).await?;
            if let Some(ms) = seen_ms {
                queue(
                    p.set::<(), _, _>(
                        self.keys.seen(user),
                        ms.to_string(),
                        Some(Expiration::PX(ms_i64(self.opts.last_seen_ttl))),
                        None,
                        false,
                    )
                    .await,
                )?;
            }
        }
        self.run(p).await.map(|_| ())
    }
}

/// Queuing a command into a pipeline only fails on invalid arguments.
fn queue(r: Result<(), fred::error::Error>) -> Result<(), RoutingError> {
    r.map_err(map_err)
}

/// Queues `EVAL script 1 key args…` into a pipeline, routed by `key` on a cluster.
async fn queue_eval(
    p: &WithOptions<Pipeline<Client>>,
    script: &str,
    key: String,
    args: [&String; 2],
) -> Result<(), RoutingError> {
    let cmd = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
    let mut argv = vec![script.to_string(), "1".to_string(), key];
    argv.extend(args.into_iter().cloned());
    queue(p.custom::<(), _>(cmd, argv).await)
}

fn ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        other => other.as_str().map(|s| s.into_owned()),
    }
}

/// A hash reply (flat array in RESP2, map in RESP3) as (field, value) pairs.
fn pairs(v: Value) -> Vec<(String, String)> {
    match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((as_string(&kv[0])?, as_string(&kv[1])?)))
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), as_string(&v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(as_string).collect(),
        Value::Null => Vec::new(),
        other => as_string(&other).into_iter().collect(),
    }
}

/// Turns `redis-cluster://a:1,b:2` into fred's `redis-cluster://a:1?node=b:2`.
fn normalize_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return url.to_string();
    }
    let mut hosts = hosts.split(',').filter(|h| !h.is_empty());
    let first = hosts.next().unwrap_or_default();
    let extra: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut params: Vec<String> = query.into_iter().map(str::to_string).collect();
    params.extend(extra);
    format!("{scheme}://{userinfo}{first}{path}?{}", params.join("&"))
}

/// The Redis registry and bus, sharing one client.
pub struct RedisRouting {
    pub registry: Arc<RedisRegistry>,
    pub bus: Arc<RedisBus>,
    shared: Arc<Shared>,
}

impl RedisRouting {
    /// Changes whenever this process's registrations may have been lost: after every reconnect
    /// of the shared client (Redis restarted or the connection broke) and whenever a heartbeat
    /// finds the node's liveness key gone or taken. The gateway does not watch it: when
    /// [`RouteRegistry::heartbeat`](super::RouteRegistry::heartbeat) returns `false`, or succeeds
    /// after a failure, its liveness task marks every local user for the route reconciler (which
    /// writes their routes again) and has the node's sockets resync. For observers and tests of
    /// the reconnect handling.
    pub fn registration_epoch(&self) -> watch::Receiver<u64> {
        self.shared.epoch.subscribe()
    }

    /// Requests (single commands or whole pipelines) sent so far; a round-trip count.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// The shared client, for other Redis work of the process (rate limits, dedup).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Redis's clock (`TIME`), in Unix microseconds. On a cluster it always asks the master of
    /// hash slot 0, so that every replica measures against the same clock.
    pub async fn server_time_us(&self) -> Result<u64, RoutingError> {
        let cmd = CustomCommand::new_static("TIME", ClusterHash::Custom(0), false);
        let shared = &self.shared;
        let reply: Value = shared
            .timed(shared.cmd().custom::<Value, String>(cmd, Vec::new()))
            .await?;
        let parts = match &reply {
            Value::Array(items) if items.len() == 2 => items
                .iter()
                .map(|v| v.as_str().and_then(|s| s.parse::<u64>().ok()))
                .collect::<Option<Vec<u64>>>(),
            _ => None,
        };
        match parts.as_deref() {
            Some([secs, micros]) => Ok(secs.saturating_mul(1_000_000).saturating_add(*micros)),
            _ => Err(RoutingError::Unavailable(format!(
                "redis TIME: unexpected reply {reply:?}"
            ))),
        }
    }

    /// Closes the shared client.
    pub async fn quit(&self) {
        let _ = self.shared.client.quit().await;
    }
}

/// Connects to Redis (see the module docs for URL forms) and returns the registry and bus.
/// Fails with [`RoutingError::Unavailable`] when the URL is invalid or the server cannot be
/// reached within the command timeout (×5, to allow cluster discovery); after that the client
/// reconnects on its own with exponential backoff.
pub async fn connect(url: &str, opts: RedisOptions) -> Result<RedisRouting, RoutingError> {
    // The URL parser takes any scheme as standalone Redis; a typo such as http:// must fail here.
    const SCHEMES: &[&str] = &[
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ];
    if !SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(RoutingError::Unavailable(format!(
            "invalid REDIS_URL {url:?}: expected redis[s]://host:port[/db] or \
             redis[s]-cluster://host:port[,host:port…]"
        )));
    }
    if opts.stream_maxlen < bus::STREAM_READ_MAX as u64 {
        return Err(RoutingError::Unavailable(format!(
            "node stream cap {} is below the largest stream read ({}): a reader could not \
             notice entries trimmed before it read them",
            opts.stream_maxlen,
            bus::STREAM_READ_MAX
        )));
    }
    let tls = url.starts_with("rediss");
    let mut config = Config::from_url(&normalize_url(url)).map_err(|e| {
        RoutingError::Unavailable(format!(
            "invalid REDIS_URL (expected redis[s]://host:port[/db] or \
             redis[s]-cluster://host:port[,host:port…]): {e}"
        ))
    })?;
    match (&opts.ca_file, tls) {
        (Some(path), true) => config.tls = Some(tls_with_ca_file(path)?.into()),
        (Some(_), false) => return Err(RoutingError::Unavailable(
            "REDIS_CA_FILE is set but REDIS_URL is not a TLS URL (rediss:// or rediss-cluster://)"
                .into(),
        )),
        (None, _) => {}
    }
    let client = build_client(config, &opts)?;
    init_client(&client, &opts).await?;
    let (epoch, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        client,
        keys: Keys {
            prefix: opts.key_prefix.clone(),
        },
        opts,
        round_trips: AtomicU64::new(0),
        epoch,
    });
    let mut reconnects = shared.client.reconnect_rx();
    let weak = Arc::downgrade(&shared);
    tokio::spawn(async move {
        loop {
            let r = reconnects.recv().await;
            if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                return;
            }
            let Some(shared) = weak.upgrade() else { return };
            tracing::info!("redis connection re-established; routes must be re-registered");
            shared.epoch.send_modify(|e| *e += 1);
        }
    });
    Ok(RedisRouting {
        registry: Arc::new(RedisRegistry {
            shared: shared.clone(),
            heartbeated: Mutex::new(HashSet::new()),
            lookup_nodes: Mutex::new(Vec::new()),
        }),
        bus: Arc::new(RedisBus::new(shared.clone())),
        shared,
    })
}

/// A rustls client configuration that trusts only the CA certificates in the PEM file at `path`.
fn tls_with_ca_file(path: &Path) -> Result<fred::types::config::TlsConnector, RoutingError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad =
        |why: String| RoutingError::Unavailable(format!("REDIS_CA_FILE {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}

fn build_client(config: Config, opts: &RedisOptions) -> Result<Client, RoutingError> {
    let max_delay_ms = u32::try_from(opts.reconnect_delay_max.as_millis())
        .unwrap_or(u32::MAX)
        .max(50);
    let timeout = opts.command_timeout;
    Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
        })
        // Unlimited attempts, 50 ms doubling up to the maximum.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, max_delay_ms, 2))
        .build()
        .map_err(|e| RoutingError::Unavailable(format!("redis client config: {e}")))
}

async fn init_client(client: &Client, opts: &RedisOptions) -> Result<(), RoutingError> {
    let wait = opts.command_timeout * 5;
    match tokio::time::timeout(wait, client.init()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let _ = client.quit().await;
            let detail = e.to_string();
            if detail.contains("Certificate") {
                return Err(RoutingError::Unavailable(format!(
                    "the redis server's TLS certificate was refused (set REDIS_CA_FILE to the PEM \
                     file of the CA that signed it, or check that REDIS_URL's host is a name the \
                     certificate holds): {detail}"
                )));
            }
            Err(RoutingError::Unavailable(format!(
                "cannot connect to redis (check REDIS_URL and that the server is up): {detail}"
            )))
        }
        Err(_) => {
            let _ = client.quit().await;
            Err(RoutingError::Unavailable(format!(
                "no redis connection within {wait:?} (check REDIS_URL and that the server is up)"
            )))
        }
    }
}

/// The (id, fields) of each entry of an `XREAD` reply for one stream (RESP2 or RESP3 shape).
fn entries(reply: Value) -> Vec<(String, Vec<Value>)> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.inner().into_values().collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|list| match list {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .filter_map(|entry| match entry {
            Value::Array(mut parts) if parts.len() == 2 => {
                let fields = match parts.pop()? {
                    Value::Array(f) => f,
                    _ => return None,
                };
                Some((as_string(&parts[0])?, fields))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{connect, normalize_url, RedisOptions, STREAM_READ_MAX};

    #[tokio::test]
    async fn a_stream_cap_below_the_largest_read_is_refused() {
        let opts = RedisOptions {
            stream_maxlen: STREAM_READ_MAX as u64 - 1,
            ..RedisOptions::default()
        };
        let e = connect("redis://127.0.0.1:1", opts).await.err().unwrap();
        assert!(e.to_string().contains("stream cap"), "{e}");
    }

    #[test]
    fn cluster_url_lists_become_node_parameters() {
        assert_eq!(
            normalize_url("redis-cluster://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            normalize_url("redis-cluster://u:p@a:1,b:2"),
            "redis-cluster://u:p@a:1?node=b:2"
        );
        assert_eq!(normalize_url("redis://h:7000/2"), "redis://h:7000/2");
        assert_eq!(
            normalize_url("redis-cluster://a:1?node=b:2"),
            "redis-cluster://a:1?node=b:2"
        );
        assert_eq!(
            normalize_url("rediss-cluster://u:p@a:1,b:2"),
            "rediss-cluster://u:p@a:1?node=b:2"
        );
    }
}

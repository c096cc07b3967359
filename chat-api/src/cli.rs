//! The `chat-api` subcommands: `token`, `embedded`, `serve` and `migrate`. `main.rs` only parses
//! and calls these; each validates its configuration before binding a port.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::auth::{parse_algorithm, JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::config::{parse_nonzero_duration, JwtArgs, LogFormat};
use shared::ids::{IdClock, ReferenceClock};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::routing::metered::Metered;
use shared::IdGenerator;

use crate::app::AppState;
use crate::config::ApiArgs;
use crate::store::sqlite::SqliteStore;

mod listen;
pub use listen::{listen, ListenArgs};

#[derive(clap::Parser, Debug)]
#[command(
    name = "chat-api",
    version,
    about = "Chat HTTP API, embedded mode and tools"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up and matched once: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print a token signed with the configured key (the development key when none is set).
    Token(TokenArgs),
    /// Run both tiers in one process with an on-disk SQLite store (the quick start).
    Embedded(EmbeddedArgs),
    /// Run the distributed API (Redis routing, ScyllaDB or SQLite store).
    Serve(ServeArgs),
    /// Apply `schema/` to ScyllaDB.
    Migrate(MigrateArgs),
    /// Connect to a gateway with a token and print each frame as one JSON line.
    Listen(ListenArgs),
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The user (or service) id: the `sub` claim.
    #[arg(long, env = "TOKEN_SUB")]
    pub sub: String,
    /// Space-separated scopes; any scope makes it a service token (e.g. `push`).
    #[arg(long, env = "TOKEN_SCOPE")]
    pub scope: Option<String>,
    /// Lifetime of the token.
    #[arg(long, env = "TOKEN_TTL", default_value = "1h", value_parser = parse_nonzero_duration)]
    pub ttl: Duration,
    /// PEM private key, for RS*/EdDSA.
    #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<PathBuf>,
    /// Key id for the token header; with JWT_KEYS_FILE, an HMAC key of that kid signs it.
    #[arg(long, env = "TOKEN_KID")]
    pub kid: Option<String>,
    #[command(flatten)]
    pub jwt: JwtArgs,
}

#[derive(clap::Args, Debug)]
pub struct EmbeddedArgs {
    /// Directory for the embedded store (`chat.db`).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub gateway: gateway::GatewayArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Lifetime of the demo page's development tokens (`POST /dev/token`, only with the
    /// development key).
    #[arg(long, env = "DEV_TOKEN_TTL", default_value = "1h", value_parser = parse_nonzero_duration)]
    pub dev_token_ttl: Duration,
    #[command(flatten)]
    pub admin: crate::api::admin::AdminArgs,
    /// With no JWT key configured (the built-in development key, which is public), listen on
    /// API_ADDR and GATEWAY_ADDR even when they are not loopback addresses. Without it such a
    /// start is refused, and addresses left at their defaults become 127.0.0.1: anyone who can
    /// reach the port could mint tokens, `push` tokens included.
    #[arg(long, env = "INSECURE_DEV_KEY_PUBLIC")]
    pub insecure_dev_key_on_public_address: bool,
    /// Which listen addresses were left at their defaults (set by [`Cli::parse_from_env`]).
    #[arg(skip)]
    pub defaulted: DefaultedAddrs,
}

/// Which of `embedded`'s listen addresses were given neither as a flag nor in the environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultedAddrs {
    pub api: bool,
    pub gateway: bool,
}

impl Cli {
    /// Parses `args`, noting for `embedded` which listen addresses were left at their defaults
    /// (with the development key those become loopback addresses).
    pub fn try_parse_noting_defaults<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let (Command::Embedded(args), Some(sub)) =
            (&mut cli.command, matches.subcommand_matches("embedded"))
        {
            let defaulted =
                |id: &str| sub.value_source(id) == Some(clap::parser::ValueSource::DefaultValue);
            args.defaulted = DefaultedAddrs {
                api: defaulted("api_addr"),
                gateway: defaulted("gateway_addr"),
            };
        }
        Ok(cli)
    }

    /// [`Cli::try_parse_noting_defaults`] of the process's arguments; exits on a usage error.
    pub fn parse_from_env() -> Cli {
        Cli::try_parse_noting_defaults(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }
}

/// A start with the development key on an address others can reach.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "refusing to listen on {addr} ({setting}) with the built-in development key, which is public: \
     set JWT_SECRET (or JWT_PUBLIC_KEY_FILE / JWT_KEYS_FILE), use a loopback address, or pass \
     --insecure-dev-key-on-public-address (INSECURE_DEV_KEY_PUBLIC=true)"
)]
pub struct PublicDevKey {
    pub setting: &'static str,
    pub addr: std::net::SocketAddr,
}

/// The addresses `embedded` listens on. With a configured key, as given. With the development
/// key, defaulted addresses move to 127.0.0.1 and a non-loopback one is refused unless
/// `insecure` (the `--insecure-dev-key-on-public-address` flag).
pub fn listen_addrs(
    args: &EmbeddedArgs,
    dev_key: bool,
) -> Result<(std::net::SocketAddr, std::net::SocketAddr), PublicDevKey> {
    let pick = |setting: &'static str, mut addr: std::net::SocketAddr, defaulted: bool| {
        if !dev_key {
            return Ok(addr);
        }
        if defaulted {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if addr.ip().is_loopback() || args.insecure_dev_key_on_public_address {
            Ok(addr)
        } else {
            Err(PublicDevKey { setting, addr })
        }
    };
    Ok((
        pick("API_ADDR", args.api.api_addr, args.defaulted.api)?,
        pick(
            "GATEWAY_ADDR",
            args.gateway.gateway_addr,
            args.defaulted.gateway,
        )?,
    ))
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Route registry and node bus: `redis://HOST:PORT[/DB]` or `redis-cluster://HOST:PORT,HOST:PORT`;
    /// `rediss://` and `rediss-cluster://` for TLS.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    /// Deadline of every Redis command.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "1s", value_parser = parse_nonzero_duration)]
    pub redis_timeout: Duration,
    /// PEM file of the CA certificates to trust for a `rediss://` REDIS_URL, instead of the
    /// system's (e.g. a managed Redis's own CA).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// How often this replica sweeps routes of dead gateway nodes.
    #[arg(long, env = "ROUTE_SWEEP_INTERVAL", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub route_sweep_interval: Duration,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub clock: crate::clock::ClockArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub admin: crate::api::admin::AdminArgs,
    #[command(flatten)]
    pub revocation: shared::revocation::RevocationCacheArgs,
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// `scylla://HOST[:PORT][,HOST...]/KEYSPACE[?local_dc=DC]` (the options of `serve`'s STORE_URL are accepted).
    #[arg(long, env = "STORE_URL")]
    pub store_url: String,
    /// Keyspace replication: a replication factor per datacenter (`dc1:3,dc2:3`), or one number
    /// for every datacenter. Never more than the nodes of a datacenter: writes at LOCAL_QUORUM
    /// fail while fewer than a majority of the factor's replicas exist.
    #[arg(long, env = "SCYLLA_REPLICATION", default_value = "3")]
    pub replication: String,
    /// Client timeout of each migration statement and of the wait for schema agreement after DDL.
    #[arg(long, env = "SCYLLA_DDL_TIMEOUT", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub ddl_timeout: Duration,
}

/// Signs a token and prints it on stdout.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    shared::ids::validate_user_id(&args.sub).context("--sub")?;
    let from_file = match (&args.kid, &args.jwt.jwt_keys_file) {
        (Some(kid), Some(path)) => {
            let spec = shared::auth::load_keys_file(path)?
                .into_iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .with_context(|| format!("no key with kid {kid:?} in {}", path.display()))?;
            Some(match (&spec.key, &args.private_key_file) {
                (KeySource::Secret(secret), _) => Signer::hmac(spec.algorithm, secret),
                (KeySource::PublicKeyFile(_), Some(private)) => {
                    let pem = std::fs::read(private).with_context(|| {
                        format!("reading JWT_PRIVATE_KEY_FILE {}", private.display())
                    })?;
                    Signer::from_private_pem(spec.algorithm, &pem).map_err(|e| {
                        anyhow::anyhow!("JWT_PRIVATE_KEY_FILE {}: {e}", private.display())
                    })?
                }
                (KeySource::PublicKeyFile(_), None) => anyhow::bail!(
                    "key {kid:?} is a public key: give its private key in JWT_PRIVATE_KEY_FILE"
                ),
            })
        }
        _ => None,
    };
    let signer = if let Some(signer) = from_file {
        signer.with_issuer_audience(args.jwt.jwt_issuer.clone(), args.jwt.jwt_audience.clone())
    } else if args.jwt.is_unconfigured() && args.private_key_file.is_none() {
        eprintln!(
            "note: no JWT_SECRET or key configured; signing with the built-in development key, \
             accepted only by servers that also run without one (chat-api embedded)"
        );
        Signer::hmac(parse_algorithm("HS256")?, DEV_SECRET.as_bytes())
    } else {
        let algorithm = parse_algorithm(&args.jwt.jwt_algorithm)?;
        let signer = match (&args.jwt.jwt_secret, &args.private_key_file) {
            (Some(secret), None) if args.jwt.jwt_algorithm.starts_with("HS") => {
                // The servers' checks (e.g. the secret's length): never print a token that
                // every server would refuse.
                args.jwt.verifier().context("JWT configuration")?;
                Signer::hmac(algorithm, secret.as_bytes())
            }
            (None, Some(path)) if !args.jwt.jwt_algorithm.starts_with("HS") => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading JWT_PRIVATE_KEY_FILE {}", path.display()))?;
                Signer::from_private_pem(algorithm, &pem)
                    .map_err(|e| anyhow::anyhow!("JWT_PRIVATE_KEY_FILE {}: {e}", path.display()))?
            }
            _ => anyhow::bail!(
                "{} tokens need {}",
                args.jwt.jwt_algorithm,
                if args.jwt.jwt_algorithm.starts_with("HS") {
                    "JWT_SECRET (and no JWT_PRIVATE_KEY_FILE)"
                } else {
                    "JWT_PRIVATE_KEY_FILE (a PEM private key)"
                }
            ),
        };
        signer.with_issuer_audience(args.jwt.jwt_issuer.clone(), args.jwt.jwt_audience.clone())
    };
    let signer = signer.with_kid(args.kid.clone());
    println!(
        "{}",
        signer.token(&args.sub, args.ttl, args.scope.as_deref())
    );
    Ok(())
}

/// The configured verifier, or one for the development key when no key is configured (embedded
/// mode only). The flag says which.
/// The `token` command as the user can type it: through cargo when this process was started by
/// `cargo run` (which sets `CARGO`), else this binary's own path.
fn token_command(under_cargo: bool, exe: Option<PathBuf>) -> String {
    if under_cargo {
        let release = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        format!("cargo run -q{release} --bin chat-api -- token")
    } else {
        match exe {
            Some(path) => format!("{} token", path.display()),
            None => "chat-api token".to_string(),
        }
    }
}

pub fn verifier_or_dev_key(jwt: &JwtArgs) -> anyhow::Result<(Verifier, bool)> {
    if !jwt.is_unconfigured() {
        return Ok((jwt.verifier().context("JWT configuration")?, false));
    }
    let settings = JwtSettings {
        algorithm: parse_algorithm("HS256")?,
        key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
        issuer: jwt.jwt_issuer.clone(),
        audience: jwt.jwt_audience.clone(),
        leeway: jwt.jwt_leeway,
    };
    Ok((Verifier::new(&settings)?, true))
}

/// Opens the store named by a `sqlite:PATH` URL.
pub fn open_sqlite(url: &str, api: &ApiArgs) -> anyhow::Result<SqliteStore> {
    let path = sqlite_path(url)?;
    SqliteStore::open_with(&path, api.sqlite_options())
        .with_context(|| format!("opening SQLite store {}", path.display()))
}

/// The file of a `sqlite:PATH` URL.
fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    url.strip_prefix("sqlite:")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .with_context(|| format!("STORE_URL {url:?}: expected sqlite:PATH"))
}

/// Installs the global Prometheus recorder (buckets, upkeep) and registers this process's
/// metrics: the API's, plus the gateway's in embedded mode or Redis's in `serve`.
pub fn install_metrics(
    tiers: &[fn()],
) -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = shared::telemetry::install_prometheus()?;
    crate::telemetry::describe(crate::error::PROBLEM_TYPES.iter().map(|(slug, _, _)| *slug));
    for describe in tiers {
        describe();
    }
    Ok(handle)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// Resolves when `rx` flips to true (a shutdown shared by several servers).
async fn flipped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// `chat-api embedded`: both tiers in one process. The gateway (on GATEWAY_ADDR) and the API (on
/// API_ADDR) share an in-process route registry and node bus; messages live in SQLite at
/// `$DATA_DIR/chat.db` (or `STORE_URL=sqlite:PATH`).
pub async fn embedded(args: EmbeddedArgs) -> anyhow::Result<()> {
    let limits = args.api.limits()?;
    let cors = args.api.cors_origins()?;
    let notify = args.api.notify.settings()?;
    let mut gateway_settings = args.gateway.settings().context("gateway configuration")?;
    if args.gateway.node_id.is_none() {
        gateway_settings.node_id = "embedded".into();
    }
    let (verifier, dev_key) = verifier_or_dev_key(&args.jwt)?;
    let (api_addr, gateway_addr) = listen_addrs(&args, dev_key)?;
    if dev_key {
        tracing::warn!(
            %api_addr,
            %gateway_addr,
            "no JWT_SECRET or JWT_PUBLIC_KEY_FILE configured: accepting tokens signed with the \
             built-in development key; never expose this instance"
        );
    }
    gateway::raise_nofile_limit();
    let (store, db_path) = match &args.api.store_url {
        Some(url) => (open_sqlite(url, &args.api)?, sqlite_path(url)?),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating DATA_DIR {}", args.data_dir.display()))?;
            let path = args.data_dir.join("chat.db");
            let store = SqliteStore::open_with(&path, args.api.sqlite_options())
                .with_context(|| format!("opening {}", path.display()))?;
            (store, path)
        }
    };
    // The notification queue lives in the same file, so it is kept (and backed up) with the
    // messages it announces.
    let notify_queue = match &notify {
        Some(settings) => Some(Arc::new(
            crate::notify::sqlite::SqliteQueue::open(
                &db_path,
                settings.queue_max,
                settings.claim_idle,
            )
            .with_context(|| format!("opening the notification queue in {}", db_path.display()))?,
        )),
        None => None,
    };
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding API_ADDR {api_addr}"))?;
    let gateway_listener = tokio::net::TcpListener::bind(gateway_addr)
        .await
        .with_context(|| format!("binding GATEWAY_ADDR {gateway_addr}"))?;
    if gateway_settings.api_url.is_none() {
        // Typing frames from the embedded gateway go to the embedded API over loopback.
        let mut api = api_listener.local_addr()?;
        if api.ip().is_unspecified() {
            api.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        gateway_settings.api_url = Some(format!("http://{api}"));
    }
    let metrics = install_metrics(&[
        gateway::telemetry::describe,
        shared::routing::memory::describe,
    ])?;
    if dev_key {
        eprintln!(
            "chat is up: demo page and API http://{} , WebSocket ws://{}/ws\n\
             get a token with: {} --sub alice",
            api_listener.local_addr()?,
            gateway_listener.local_addr()?,
            token_command(
                std::env::var_os("CARGO").is_some(),
                std::env::current_exe().ok()
            )
        );
    }
    // Development tokens only with the development key: never mint tokens a real key accepts.
    let hs256 = parse_algorithm("HS256")?;
    let demo = crate::web::Demo {
        gateway_port: gateway_listener.local_addr()?.port(),
        dev_tokens: dev_key.then(|| crate::web::DevTokens {
            signer: Signer::hmac(hs256, DEV_SECRET.as_bytes())
                .with_issuer_audience(args.jwt.jwt_issuer.clone(), args.jwt.jwt_audience.clone()),
            ttl: args.dev_token_ttl,
        }),
    };
    let registry = Arc::new(MemoryRegistry::new());
    let bus = Arc::new(MemoryBus::default());
    // One in-process revocation list for both tiers: a revoke applies to both at once.
    let revocations = Arc::new(shared::revocation::RevocationCheck::memory());
    let mut state = AppState::new(
        Arc::new(store),
        registry.clone(),
        bus.clone(),
        verifier.clone(),
        Arc::new(IdGenerator::new(args.api.worker_id.unwrap_or(0))),
    )
    .with_revocations(revocations.clone(), args.admin.revocation_ttl)
    .with_cache(
        Arc::new(crate::store::cached::versions::MemoryVersions::default()),
        &args.api.cache,
    )
    .with_limits(limits)
    .with_metrics(metrics.clone())
    .with_demo(demo)
    .with_cors(cors);
    let mut dispatcher = None;
    if let (Some(settings), Some(queue)) = (notify, notify_queue) {
        state = state.with_notify(crate::notify::Notifier::new(queue.clone(), &settings));
        dispatcher = Some(
            crate::notify::dispatch::Dispatcher::new(queue, registry.clone(), settings)
                .context("building the notification webhook client")?
                .spawn(),
        );
    }
    let deps = gateway::Deps {
        registry,
        bus,
        verifier,
        metrics: Some(metrics),
        limiter: shared::ratelimit::memory(),
        revocations,
    };
    let result = run_both(
        api_listener,
        state,
        gateway_listener,
        gateway_settings,
        deps,
        shutdown_signal(),
    )
    .await;
    if let Some(d) = dispatcher {
        d.stop().await;
    }
    result
}

/// Runs the API and the gateway until `shutdown`, then stops both (each drains on its own).
pub async fn run_both(
    api_listener: tokio::net::TcpListener,
    state: AppState,
    gateway_listener: tokio::net::TcpListener,
    gateway_settings: gateway::Settings,
    deps: gateway::Deps,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Reading presence reports before the gateway can make any.
    let presence = crate::presence::start(&state).await;
    let gateway = tokio::spawn(gateway::serve(
        gateway_listener,
        gateway_settings,
        deps,
        flipped(stop_rx.clone()),
    ));
    let api = tokio::spawn(crate::app::run(api_listener, state, flipped(stop_rx)));
    shutdown.await;
    let _ = stop_tx.send(true);
    let (g, a) = tokio::join!(gateway, api);
    presence.abort();
    g.context("gateway task")??;
    a.context("API task")??;
    Ok(())
}

/// `chat-api serve`: the distributed API. Routes and node streams in Redis; messages in ScyllaDB
/// (`scylla://`) or a SQLite file shared by the replicas of one host (`sqlite:`). The worker id
/// comes from `WORKER_ID` or, by default, a lease in Redis.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use shared::routing::redis::{connect, LeaseOptions, RedisOptions, WorkerLease};
    let limits = args.api.limits()?;
    let notify = args.api.notify.settings()?;
    limits.check_send_horizon(args.clock.max_clock_skew)?;
    args.clock.check()?;
    let cors = args.api.cors_origins()?;
    let verifier = args.jwt.verifier().context("JWT configuration")?;
    let store_url =
        args.api.store_url.clone().context(
            "STORE_URL is required: sqlite:PATH or scylla://HOST[:PORT][,HOST...]/KEYSPACE",
        )?;
    if !store_url.starts_with("sqlite:") && !store_url.starts_with("scylla://") {
        anyhow::bail!("STORE_URL {store_url:?}: expected sqlite:PATH or scylla://HOST[:PORT][,HOST...]/KEYSPACE");
    }
    let scylla_config = match store_url.strip_prefix("scylla://") {
        Some(_) => {
            Some(crate::store::scylla::ScyllaConfig::from_url(&store_url).context("STORE_URL")?)
        }
        None => None,
    };
    let opts = RedisOptions {
        command_timeout: args.redis_timeout,
        ca_file: args.redis_ca_file.clone(),
        ..RedisOptions::default()
    };
    let routing = Arc::new(
        connect(&args.redis_url, opts)
            .await
            .with_context(|| format!("REDIS_URL {}", args.redis_url))?,
    );
    let store: Arc<dyn crate::store::MessageStore> = match &scylla_config {
        Some(config) => Arc::new(
            crate::store::scylla::ScyllaStore::connect(config)
                .await
                .context("connecting to ScyllaDB (STORE_URL)")?,
        ),
        None => Arc::new(open_sqlite(&store_url, &args.api)?),
    };
    let (worker_id, lease) = match args.api.worker_id {
        Some(id) => (id, None),
        None => {
            let lease = WorkerLease::acquire(&routing, LeaseOptions::default())
                .await
                .context("leasing a worker id in Redis (or set WORKER_ID)")?;
            (lease.id(), Some(lease))
        }
    };
    tracing::info!(worker_id, "message ids use this worker id");
    // Ids follow Redis time: measured once now, then every API_CLOCK_CHECK_INTERVAL.
    let clock = Arc::new(crate::clock::ClockGuard::new(
        Arc::new(ReferenceClock::new()),
        &args.clock,
    ));
    let sent = std::time::Instant::now();
    match routing.server_time_us().await {
        Ok(us) => {
            let sample = clock.observe(us, sent, std::time::Instant::now());
            tracing::info!(
                offset_ms = sample.offset_ms,
                round_trip_us = sample.round_trip.as_micros() as u64,
                "message ids follow Redis time"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot read Redis TIME yet; sends wait for it"),
    }
    let listener = tokio::net::TcpListener::bind(args.api.api_addr)
        .await
        .with_context(|| format!("binding API_ADDR {}", args.api.api_addr))?;
    let metrics = install_metrics(&[shared::routing::metered::describe])?;
    let registry = routing.registry.clone();
    let sweeper = {
        let registry = registry.clone();
        let every = args.route_sweep_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match registry.sweep(10_000).await {
                    Ok(report) => tracing::debug!(?report, "route sweep"),
                    Err(e) => tracing::warn!(error = %e, "route sweep failed"),
                }
            }
        })
    };
    let clock_sync = {
        let (clock, routing) = (clock.clone(), routing.clone());
        let every = args.clock.clock_check_interval;
        tokio::spawn(async move { clock.run(every, || routing.server_time_us()).await })
    };
    let registry: Arc<dyn shared::routing::RouteRegistry> = Arc::new(Metered::new(registry));
    let mut dispatcher = None;
    let mut notifier = None;
    if let Some(settings) = notify {
        // One consumer per boot: a restarted replica's old claims go to whoever claims first.
        let consumer = format!("api-{worker_id}-{:08x}", rand::random::<u32>());
        let queue = Arc::new(
            crate::notify::redis::RedisQueue::new(
                routing.client().clone(),
                "q",
                consumer,
                settings.queue_max,
                settings.claim_idle,
                args.redis_timeout,
            )
            .await
            .context("creating the notification queue in Redis")?,
        );
        notifier = Some(crate::notify::Notifier::new(queue.clone(), &settings));
        dispatcher = Some(
            crate::notify::dispatch::Dispatcher::new(queue, registry.clone(), settings)
                .context("building the notification webhook client")?
                .spawn(),
        );
    }
    let mut state = AppState::new(
        store,
        registry,
        Arc::new(Metered::new(routing.bus.clone())),
        verifier,
        Arc::new(IdGenerator::with_clock(
            worker_id,
            IdClock::Reference(clock.clock().clone()),
        )),
    )
    .with_cache(
        Arc::new(crate::store::cached::versions::RedisVersions::new(
            routing.client().clone(),
            "",
            args.redis_timeout,
        )),
        &args.api.cache,
    )
    .with_limits(limits)
    .with_clock(clock)
    .with_metrics(metrics)
    .with_cors(cors)
    .with_limiter(Arc::new(shared::ratelimit::RedisLimiter::new(
        routing.client().clone(),
        "",
        // A check is one tiny script; past this, fall back to local limits rather than stall.
        args.redis_timeout.min(Duration::from_millis(250)),
    )))
    .with_revocations(
        {
            // One GET per user and cache TTL on the request path: bounded like a rate-limit check.
            let timeout = args.redis_timeout.min(Duration::from_millis(250));
            Arc::new(shared::revocation::RevocationCheck::new(
                Arc::new(shared::revocation::RedisRevocations::new(
                    routing.client().clone(),
                    "",
                    timeout,
                )),
                args.revocation.revocation_cache_ttl,
                timeout,
            ))
        },
        args.admin.revocation_ttl,
    );
    // A lost lease means another replica may now issue ids with this worker id: stop serving
    // (the orchestrator restarts the replica with a fresh lease).
    let lost = {
        let mut rx = lease.as_ref().map(WorkerLease::watch_lost);
        async move {
            match rx.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|l| *l).await;
                    tracing::error!("worker id lease lost; stopping so that no id is issued twice");
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = lost => {}
        }
    };
    if let Some(notifier) = notifier {
        state = state.with_notify(notifier);
    }
    let presence = crate::presence::start(&state).await;
    let result = crate::app::run(listener, state, shutdown).await;
    presence.abort();
    if let Some(d) = dispatcher {
        d.stop().await;
    }
    sweeper.abort();
    clock_sync.abort();
    if let Some(lease) = lease {
        lease.release().await;
    }
    routing.quit().await;
    result
}

/// `chat-api migrate`: applies the pending `schema/` files to ScyllaDB.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    use crate::store::scylla::migrate::Replication;
    let config =
        crate::store::scylla::ScyllaConfig::from_url(&args.store_url).context("STORE_URL")?;
    let replication =
        Replication::parse(&args.replication).context("--replication / SCYLLA_REPLICATION")?;
    let session = config
        .migrate_session_builder(args.ddl_timeout)
        .build()
        .await
        .context("connecting to ScyllaDB (STORE_URL)")?;
    let report =
        crate::store::scylla::migrate::migrate(&session, &config.keyspace, &replication).await?;
    // A keyspace that existed before (created by hand, or by an older build on a server that
    // defaults to tablets) is checked as `serve` will check it.
    let layout = crate::store::scylla::migrate::keyspace_layout(&session, &config.keyspace).await?;
    crate::store::scylla::migrate::check_layout(
        &config.keyspace,
        &layout,
        config.local_dc.as_deref(),
    )?;
    println!("{report:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(args: &[&str]) -> EmbeddedArgs {
        let mut all = vec!["chat-api", "embedded"];
        all.extend_from_slice(args);
        match Cli::try_parse_noting_defaults(all).unwrap().command {
            Command::Embedded(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_development_key_moves_default_addresses_to_loopback() {
        let args = embedded(&[]);
        assert_eq!(
            args.defaulted,
            DefaultedAddrs {
                api: true,
                gateway: true
            }
        );
        let (api, gw) = listen_addrs(&args, true).unwrap();
        assert_eq!(
            (api.to_string(), gw.to_string()),
            ("127.0.0.1:8081".into(), "127.0.0.1:8080".into())
        );
        // A configured key keeps the documented defaults.
        let (api, gw) = listen_addrs(&args, false).unwrap();
        assert!(api.ip().is_unspecified() && gw.ip().is_unspecified());
    }

    #[test]
    fn the_development_key_refuses_a_public_address_unless_told_otherwise() {
        let args = embedded(&["--api-addr", "0.0.0.0:9000"]);
        let e = listen_addrs(&args, true).unwrap_err();
        assert_eq!(e.setting, "API_ADDR");
        assert!(e.to_string().contains("JWT_SECRET"), "{e}");
        assert!(listen_addrs(&args, false).is_ok());
        let args = embedded(&[
            "--gateway-addr",
            "[::]:9000",
            "--insecure-dev-key-on-public-address",
        ]);
        let (api, gw) = listen_addrs(&args, true).unwrap();
        assert!(api.ip().is_loopback());
        assert!(gw.ip().is_unspecified());
        let args = embedded(&[
            "--api-addr",
            "127.0.0.2:9000",
            "--gateway-addr",
            "[::1]:9001",
        ]);
        assert!(listen_addrs(&args, true).is_ok());
    }

    #[test]
    fn token_hint_is_a_command_that_runs_from_where_the_server_was_started() {
        let cargo = token_command(true, Some(PathBuf::from("/x/target/debug/chat-api")));
        assert!(cargo.starts_with("cargo run -q"), "{cargo}");
        assert!(cargo.ends_with("--bin chat-api -- token"), "{cargo}");
        assert_eq!(
            token_command(false, Some(PathBuf::from("/opt/chat/chat-api"))),
            "/opt/chat/chat-api token"
        );
        assert_eq!(token_command(false, None), "chat-api token");
    }
}

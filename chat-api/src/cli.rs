//! The `chat-api` subcommands: `token`, `embedded`, `serve` and `migrate`. `main.rs` only parses
//! and calls these; each validates its configuration before binding a port.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::auth::{parse_algorithm, JwtSettings, KeySource, Signer, Verifier, DEV_SECRET};
use shared::config::{parse_nonzero_duration, JwtArgs, LogFormat};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::IdGenerator;

use crate::app::AppState;
use crate::config::ApiArgs;
use crate::store::sqlite::SqliteStore;

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
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The user (or service) id: the `sub` claim.
    #[arg(long)]
    pub sub: String,
    /// Space-separated scopes; any scope makes it a service token (e.g. `push`).
    #[arg(long)]
    pub scope: Option<String>,
    /// Lifetime.
    #[arg(long, default_value = "1h", value_parser = parse_nonzero_duration)]
    pub ttl: Duration,
    /// PEM private key, for RS*/EdDSA.
    #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<PathBuf>,
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
    pub jwt: JwtArgs,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Route registry and node bus: `redis://HOST:PORT` or a cluster form.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// `scylla://HOST[:PORT][,HOST...]/KEYSPACE`.
    #[arg(long, env = "STORE_URL")]
    pub store_url: String,
}

/// Signs a token and prints it on stdout.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    shared::ids::validate_user_id(&args.sub).context("--sub")?;
    let signer = if args.jwt.is_unconfigured() && args.private_key_file.is_none() {
        eprintln!(
            "note: no JWT_SECRET or key configured; signing with the built-in development key, \
             accepted only by servers that also run without one (chat-api embedded)"
        );
        Signer::hmac(parse_algorithm("HS256")?, DEV_SECRET.as_bytes())
    } else {
        let algorithm = parse_algorithm(&args.jwt.jwt_algorithm)?;
        let signer = match (&args.jwt.jwt_secret, &args.private_key_file) {
            (Some(secret), None) if args.jwt.jwt_algorithm.starts_with("HS") => {
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
    println!(
        "{}",
        signer.token(&args.sub, args.ttl, args.scope.as_deref())
    );
    Ok(())
}

/// The configured verifier, or one for the development key when no key is configured (embedded
/// mode only). The flag says which.
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
    let path = url
        .strip_prefix("sqlite:")
        .filter(|p| !p.is_empty())
        .with_context(|| format!("STORE_URL {url:?}: expected sqlite:PATH"))?;
    SqliteStore::open_with(path, api.sqlite_options())
        .with_context(|| format!("opening SQLite store {path}"))
}

/// Installs the global Prometheus recorder and keeps its histograms trimmed.
pub fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
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

/// `chat-api embedded`: the API with an in-process route registry and node bus and SQLite at
/// `$DATA_DIR/chat.db` (or `STORE_URL=sqlite:PATH`).
// The gateway tier (`gateway::serve` on GATEWAY_ADDR, sharing `registry` and `bus`) is wired in
// by the integration of both crates.
pub async fn embedded(args: EmbeddedArgs) -> anyhow::Result<()> {
    let limits = args.api.limits()?;
    let (verifier, dev_key) = verifier_or_dev_key(&args.jwt)?;
    let store = match &args.api.store_url {
        Some(url) => open_sqlite(url, &args.api)?,
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating DATA_DIR {}", args.data_dir.display()))?;
            let path = args.data_dir.join("chat.db");
            SqliteStore::open_with(&path, args.api.sqlite_options())
                .with_context(|| format!("opening {}", path.display()))?
        }
    };
    let listener = tokio::net::TcpListener::bind(args.api.api_addr)
        .await
        .with_context(|| format!("binding API_ADDR {}", args.api.api_addr))?;
    let metrics = install_metrics()?;
    if dev_key {
        tracing::warn!(
            "no JWT_SECRET or JWT_PUBLIC_KEY_FILE configured: accepting tokens signed with the \
             built-in development key; never expose this instance"
        );
        eprintln!("get a token with: chat-api token --sub alice");
    }
    let state = AppState::new(
        Arc::new(store),
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::default()),
        verifier,
        Arc::new(IdGenerator::new(args.api.worker_id.unwrap_or(0))),
    )
    .with_limits(limits)
    .with_metrics(metrics);
    crate::app::run(listener, state, shutdown_signal()).await
}

/// `chat-api serve`: needs the Redis routing backend and the ScyllaDB store.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.api.limits()?;
    args.jwt.verifier().context("JWT configuration")?;
    anyhow::bail!(
        "`chat-api serve` is not available in this build yet (it needs the Redis routing backend); \
         use `chat-api embedded`"
    )
}

/// `chat-api migrate`: applies `schema/` to ScyllaDB.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`chat-api migrate` is not available in this build yet (STORE_URL {})",
        args.store_url
    )
}

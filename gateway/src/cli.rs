//! The `gateway` binary's command line: every setting a flag and an environment variable. Kept in
//! the library so that `docs/CONFIG.md` can be generated from (and checked against) it.

use std::time::Duration;

use shared::config::{parse_nonzero_duration, JwtArgs, LogFormat};

#[derive(clap::Parser, Debug)]
#[command(name = "gateway", version, about = "WebSocket gateway node")]
pub struct Cli {
    /// Log format (filter with RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
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
    #[command(flatten)]
    pub gateway: crate::GatewayArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub revocation: shared::revocation::RevocationCacheArgs,
}

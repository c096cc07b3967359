//! Configuration helpers shared by both services: JWT settings as flags/environment, duration
//! parsing and tracing set-up. Every setting is a flag and an environment variable; values are
//! validated before any port is bound.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{self, ClaimRules, JwtSettings, KeyError, KeySource, KeySpec, Verifier};

/// Parses `250ms`, `5s`, `2m` (humantime syntax) for clap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 2m)"))
}

/// Like [`parse_duration`] but refuses zero.
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// JWT verification settings (SPEC §2).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct JwtArgs {
    /// Pinned signature algorithm: HS256/384/512 (with JWT_SECRET), RS256/384/512 or EdDSA (with JWT_PUBLIC_KEY_FILE).
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,
    /// HMAC secret (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS*/EdDSA.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf` (at most 5m).
    #[arg(long, env = "JWT_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// JSON file of extra keys selected by the token's `kid` header, for key rotation:
    /// `{"keys":[{"kid":"k2","alg":"HS256","secret":"..."},{"kid":"r1","alg":"RS256","public_key_file":"r1.pem"}]}`.
    /// JWT_SECRET / JWT_PUBLIC_KEY_FILE, when also set, verify tokens without a `kid`.
    #[arg(long, env = "JWT_KEYS_FILE")]
    pub jwt_keys_file: Option<PathBuf>,
}

impl JwtArgs {
    /// True when neither a secret nor a public key was given.
    pub fn is_unconfigured(&self) -> bool {
        self.jwt_secret.is_none()
            && self.jwt_public_key_file.is_none()
            && self.jwt_keys_file.is_none()
    }

    pub fn settings(&self) -> Result<JwtSettings, KeyError> {
        let algorithm = auth::parse_algorithm(&self.jwt_algorithm)?;
        let name = self.jwt_algorithm.clone();
        let key = match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(s), None) => KeySource::Secret(s.as_bytes().to_vec()),
            (None, Some(p)) => KeySource::PublicKeyFile(p.clone()),
            (Some(_), Some(_)) | (None, None) if name.starts_with("HS") => {
                return Err(KeyError::MissingSecret { algorithm: name })
            }
            _ => return Err(KeyError::MissingPublicKey { algorithm: name }),
        };
        Ok(JwtSettings {
            algorithm,
            key,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
        })
    }

    /// The verifier for every configured key: the single key (no `kid`) from JWT_SECRET or
    /// JWT_PUBLIC_KEY_FILE when set, plus the keys of JWT_KEYS_FILE.
    pub fn verifier(&self) -> Result<Verifier, KeyError> {
        let mut specs = Vec::new();
        if self.jwt_secret.is_some()
            || self.jwt_public_key_file.is_some()
            || self.jwt_keys_file.is_none()
        {
            let single = self.settings()?;
            specs.push(KeySpec {
                kid: None,
                algorithm: single.algorithm,
                key: single.key,
            });
        }
        if let Some(path) = &self.jwt_keys_file {
            specs.extend(auth::load_keys_file(path)?);
        }
        Verifier::with_keys(
            &specs,
            &ClaimRules {
                issuer: self.jwt_issuer.clone(),
                audience: self.jwt_audience.clone(),
                leeway: self.jwt_leeway,
            },
        )
    }
}

/// Log format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber (RUST_LOG filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Ends a binary: a failure prints one line, `error: <what> : <cause>…`, and exits 1. A
/// configuration or start-up error is for an operator to read, so it never prints a backtrace
/// (anyhow's `Debug` would, under `RUST_BACKTRACE=1`).
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_nonzero_duration("0s").is_err());
    }

    #[test]
    fn jwt_args_name_what_is_missing() {
        let mut a = JwtArgs {
            jwt_algorithm: "HS256".into(),
            ..Default::default()
        };
        assert!(a.is_unconfigured());
        assert!(a.settings().unwrap_err().to_string().contains("JWT_SECRET"));
        a.jwt_algorithm = "RS256".into();
        assert!(a
            .settings()
            .unwrap_err()
            .to_string()
            .contains("JWT_PUBLIC_KEY_FILE"));
        a.jwt_algorithm = "none".into();
        assert!(a
            .settings()
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}

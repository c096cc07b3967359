//! ScyllaDB connection settings: parsing `STORE_URL=scylla://HOST[:PORT][,HOST…]/KEYSPACE[?…]` and
//! building the driver session (token-aware default policy, consistency and timeout in one
//! execution profile).

use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, SerialConsistency};

pub const DEFAULT_PORT: u16 = 9042;
pub const DEFAULT_CONSISTENCY: Consistency = Consistency::LocalQuorum;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "STORE_URL {0:?} is not a ScyllaDB URL: expected scylla://HOST[:PORT][,HOST…]/KEYSPACE"
    )]
    Scheme(String),
    #[error("STORE_URL names no host: expected scylla://HOST[:PORT][,HOST…]/KEYSPACE")]
    NoHost,
    #[error("STORE_URL names no keyspace: expected scylla://HOST[:PORT][,HOST…]/KEYSPACE")]
    NoKeyspace,
    #[error("STORE_URL host {0:?} is not HOST, HOST:PORT or [IPv6]:PORT with a port in 1-65535")]
    Host(String),
    #[error(
        "STORE_URL keyspace {0:?} is invalid: use 1-48 letters, digits or '_', starting with a letter"
    )]
    Keyspace(String),
    #[error(
        "unknown consistency {0:?}: use ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM or LOCAL_ONE"
    )]
    Consistency(String),
    #[error("STORE_URL option {0:?} is invalid: {1}")]
    Option(String, String),
}

/// Where and how to talk to ScyllaDB.
#[derive(Clone, Debug, PartialEq)]
pub struct ScyllaConfig {
    /// Contact points as `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Consistency of every statement (default LOCAL_QUORUM); LWTs use LOCAL_SERIAL for Paxos.
    pub consistency: Consistency,
    /// Client-side timeout of one request, retries included (default 2 s).
    pub request_timeout: Duration,
    /// Store requests in flight at once from this process (default 1024); more wait up to
    /// `request_timeout` for a slot, then fail as unavailable.
    pub max_in_flight: usize,
}

impl ScyllaConfig {
    /// Parses `scylla://h1[:port][,h2…]/keyspace[?consistency=LOCAL_ONE&request_timeout=500ms&max_in_flight=256]`.
    pub fn from_url(url: &str) -> Result<ScyllaConfig, ConfigError> {
        let rest = url
            .strip_prefix("scylla://")
            .ok_or_else(|| ConfigError::Scheme(url.to_owned()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (hosts, keyspace) = rest.split_once('/').ok_or(ConfigError::NoKeyspace)?;
        validate_keyspace(keyspace)?;
        let nodes = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(parse_host)
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ConfigError::NoHost);
        }
        let mut config = ScyllaConfig {
            nodes,
            keyspace: keyspace.to_owned(),
            consistency: DEFAULT_CONSISTENCY,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |why: String| ConfigError::Option(key.to_owned(), why);
            match key {
                "consistency" => config.consistency = parse_consistency(value)?,
                "request_timeout" => {
                    config.request_timeout =
                        shared::config::parse_nonzero_duration(value).map_err(bad)?
                }
                "max_in_flight" => {
                    config.max_in_flight = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("expected a positive integer".into()))?
                }
                _ => {
                    return Err(bad(
                        "known options are consistency, request_timeout and max_in_flight".into(),
                    ))
                }
            }
        }
        Ok(config)
    }

    /// The execution profile every statement runs under. Its load-balancing policy is the
    /// driver's default: token-aware (and shard-aware) with datacenter awareness.
    pub fn execution_profile(&self) -> ExecutionProfile {
        ExecutionProfile::builder()
            .consistency(self.consistency)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(self.request_timeout))
            .build()
    }

    /// A session builder for these nodes with the execution profile, not yet bound to the
    /// keyspace (the migrator needs to connect before the keyspace exists).
    pub fn session_builder(&self) -> SessionBuilder {
        SessionBuilder::new()
            .known_nodes(&self.nodes)
            .default_execution_profile_handle(self.execution_profile().into_handle())
            .connection_timeout(self.request_timeout.max(Duration::from_secs(5)))
    }
}

pub fn parse_consistency(s: &str) -> Result<Consistency, ConfigError> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => return Err(ConfigError::Consistency(s.to_owned())),
    })
}

/// Keyspace names go into DDL text, so they are checked strictly here.
pub fn validate_keyspace(keyspace: &str) -> Result<(), ConfigError> {
    let ok = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        && keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Keyspace(keyspace.to_owned()))
    }
}

fn parse_host(host: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::Host(host.to_owned());
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (format!("[{addr}]"), port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    if name.is_empty() || name == "[]" {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None => DEFAULT_PORT,
    };
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_keyspace() {
        let c = ScyllaConfig::from_url("scylla://a,b:9043,[::1]:19042/chat").unwrap();
        assert_eq!(c.nodes, ["a:9042", "b:9043", "[::1]:19042"]);
        assert_eq!(c.keyspace, "chat");
        assert_eq!(c.consistency, Consistency::LocalQuorum);
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn parses_options() {
        let c = ScyllaConfig::from_url(
            "scylla://h/ks?consistency=local_one&request_timeout=500ms&max_in_flight=8",
        )
        .unwrap();
        assert_eq!(c.consistency, Consistency::LocalOne);
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert_eq!(c.max_in_flight, 8);
    }

    #[test]
    fn rejects_bad_urls_with_what_to_fix() {
        use ConfigError::*;
        let err = |u: &str| ScyllaConfig::from_url(u).unwrap_err();
        assert!(matches!(err("sqlite:x"), Scheme(_)));
        assert!(matches!(err("scylla:///chat"), NoHost));
        assert!(matches!(err("scylla://h:0/chat"), Host(_)));
        assert!(matches!(err("scylla://h:x/chat"), Host(_)));
        assert!(matches!(err("scylla://h"), NoKeyspace));
        assert!(matches!(err("scylla://h/1chat"), Keyspace(_)));
        assert!(matches!(err("scylla://h/chat;drop"), Keyspace(_)));
        assert!(matches!(
            err("scylla://h/chat?consistency=most"),
            Consistency(_)
        ));
        assert!(matches!(err("scylla://h/chat?max_in_flight=0"), Option(..)));
        assert!(matches!(err("scylla://h/chat?colour=red"), Option(..)));
        assert!(err("scylla://h").to_string().contains("scylla://HOST"));
    }
}

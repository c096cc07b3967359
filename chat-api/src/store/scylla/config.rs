//! ScyllaDB connection settings: parsing `STORE_URL=scylla://HOST[:PORT][,HOST…]/KEYSPACE[?…]` and
//! building the driver session (token-aware, datacenter-aware policy; consistency and timeouts in
//! one execution profile).
//!
//! Only settings that keep the store's guarantees are accepted: quorum consistency levels (durable
//! before acknowledged, read-your-writes across replicas), a client timeout longer than the
//! server-side one (so the server's answer, not an ambiguous client timeout, decides a request),
//! and no failover to another datacenter (LOCAL_QUORUM there would not see this datacenter's
//! acknowledged writes).

use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::{Consistency, SerialConsistency};

pub const DEFAULT_PORT: u16 = 9042;
pub const DEFAULT_CONSISTENCY: Consistency = Consistency::LocalQuorum;
/// The server-side deadline of every standalone statement (`USING TIMEOUT`).
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(2);
/// The client-side deadline: above [`DEFAULT_SERVER_TIMEOUT`] and above ScyllaDB's default
/// `write_request_timeout_in_ms` (2 s), which bounds the logged batches (a protocol batch of
/// prepared statements carries no `USING TIMEOUT`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
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
        "STORE_URL option consistency={0:?} is refused: use LOCAL_QUORUM (the default) or QUORUM. \
         Weaker levels (ONE, TWO, THREE, LOCAL_ONE, ANY) break durable-before-acknowledged and \
         read-your-writes; ALL fails every request while one replica is down; EACH_QUORUM cannot read"
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
    /// Consistency of every statement: LOCAL_QUORUM (default) or QUORUM.
    pub consistency: Consistency,
    /// The datacenter this replica runs in (`?local_dc=`). Requests go only to its nodes
    /// (token-aware, no failover to other datacenters). Required when the keyspace replicates
    /// to more than one datacenter.
    pub local_dc: Option<String>,
    /// Client-side timeout of one request, retries included (default 3 s); must exceed
    /// `server_timeout`.
    pub request_timeout: Duration,
    /// Server-side timeout of each standalone statement, sent as `USING TIMEOUT` (default 2 s).
    pub server_timeout: Duration,
    /// Store requests in flight at once from this process (default 1024); more wait up to
    /// `request_timeout` for a slot, then fail as unavailable.
    pub max_in_flight: usize,
}

impl ScyllaConfig {
    /// Parses `scylla://h1[:port][,h2…]/keyspace[?consistency=QUORUM&local_dc=dc1&request_timeout=3s&server_timeout=2s&max_in_flight=256]`.
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
            local_dc: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            server_timeout: DEFAULT_SERVER_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |why: String| ConfigError::Option(key.to_owned(), why);
            match key {
                "consistency" => config.consistency = parse_consistency(value)?,
                "local_dc" => {
                    if !is_datacenter_name(value) {
                        return Err(bad(
                            "expected a datacenter name (letters, digits, '_', '-', '.')".into(),
                        ));
                    }
                    config.local_dc = Some(value.to_owned());
                }
                "request_timeout" => {
                    config.request_timeout =
                        shared::config::parse_nonzero_duration(value).map_err(bad)?
                }
                "server_timeout" => {
                    let t = shared::config::parse_nonzero_duration(value).map_err(bad)?;
                    if t < Duration::from_millis(1) {
                        return Err(bad("must be at least 1ms".into()));
                    }
                    config.server_timeout = t;
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
                        "known options are consistency, local_dc, request_timeout, \
                         server_timeout and max_in_flight"
                            .into(),
                    ))
                }
            }
        }
        if config.request_timeout <= config.server_timeout {
            return Err(ConfigError::Option(
                "request_timeout".into(),
                format!(
                    "{:?} must exceed server_timeout ({:?}): otherwise the client gives up before \
                     the server answers, and a write's outcome is unknown",
                    config.request_timeout, config.server_timeout
                ),
            ));
        }
        Ok(config)
    }

    /// The execution profile every statement runs under: the configured consistency, LOCAL_SERIAL
    /// for Paxos (the claim statement overrides it for keyspaces in several datacenters, see
    /// [`claim_serial_consistency`]), the client timeout, and the load-balancing policy.
    pub fn execution_profile(&self) -> ExecutionProfile {
        ExecutionProfile::builder()
            .consistency(self.consistency)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(self.request_timeout))
            .load_balancing_policy(self.load_balancing())
            .build()
    }

    /// Token-aware (a request goes to a replica of its partition, on the right shard); with
    /// `local_dc`, only that datacenter's nodes are used: no failover, because a LOCAL_QUORUM
    /// answered by another datacenter would not see this one's acknowledged writes.
    pub fn load_balancing(
        &self,
    ) -> std::sync::Arc<dyn scylla::policies::load_balancing::LoadBalancingPolicy> {
        let builder = DefaultPolicy::builder()
            .token_aware(true)
            .permit_dc_failover(false);
        match &self.local_dc {
            Some(dc) => builder.prefer_datacenter(dc.clone()).build(),
            None => builder.build(),
        }
    }

    /// A session builder for these nodes with the execution profile, not yet bound to the
    /// keyspace (the migrator needs to connect before the keyspace exists).
    pub fn session_builder(&self) -> SessionBuilder {
        SessionBuilder::new()
            .known_nodes(&self.nodes)
            .default_execution_profile_handle(self.execution_profile().into_handle())
            .connection_timeout(self.request_timeout.max(Duration::from_secs(5)))
    }

    /// The session builder of `chat-api migrate`: every request (DDL included) and the wait for
    /// schema agreement get `ddl_timeout`, not the data path's request timeout.
    pub fn migrate_session_builder(&self, ddl_timeout: Duration) -> SessionBuilder {
        let profile = self
            .execution_profile()
            .to_builder()
            .request_timeout(Some(ddl_timeout))
            .build();
        SessionBuilder::new()
            .known_nodes(&self.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .connection_timeout(self.request_timeout.max(Duration::from_secs(5)))
            .schema_agreement_timeout(ddl_timeout)
    }
}

/// The serial consistency of the idempotency claim. LOCAL_SERIAL runs Paxos among one
/// datacenter's replicas only: with a keyspace in two datacenters, a retried send reaching a
/// replica in each could win the claim twice (the message stored twice). SERIAL runs Paxos across
/// all datacenters (one cross-datacenter round trip more per send) and keeps the claim unique.
pub fn claim_serial_consistency(datacenters: usize) -> SerialConsistency {
    if datacenters > 1 {
        SerialConsistency::Serial
    } else {
        SerialConsistency::LocalSerial
    }
}

/// Accepts only the quorum levels: each acknowledged write is on a majority of replicas, so a
/// later quorum read (from any replica of this service) sees it.
pub fn parse_consistency(s: &str) -> Result<Consistency, ConfigError> {
    match s.to_ascii_uppercase().as_str() {
        "LOCAL_QUORUM" => Ok(Consistency::LocalQuorum),
        "QUORUM" => Ok(Consistency::Quorum),
        _ => Err(ConfigError::Consistency(s.to_owned())),
    }
}

/// Datacenter names go into the keyspace's replication map and the driver's policy.
pub fn is_datacenter_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
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
        assert_eq!(c.local_dc, None);
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(c.server_timeout, DEFAULT_SERVER_TIMEOUT);
        assert!(DEFAULT_REQUEST_TIMEOUT > DEFAULT_SERVER_TIMEOUT);
    }

    #[test]
    fn parses_options() {
        let c = ScyllaConfig::from_url(
            "scylla://h/ks?consistency=quorum&local_dc=eu-west_1&request_timeout=1500ms\
             &server_timeout=1s&max_in_flight=8",
        )
        .unwrap();
        assert_eq!(c.consistency, Consistency::Quorum);
        assert_eq!(c.local_dc.as_deref(), Some("eu-west_1"));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.server_timeout, Duration::from_secs(1));
        assert_eq!(c.max_in_flight, 8);
        let c = ScyllaConfig::from_url("scylla://h/ks?consistency=LOCAL_QUORUM").unwrap();
        assert_eq!(c.consistency, Consistency::LocalQuorum);
    }

    #[test]
    fn only_quorum_levels_are_accepted_and_the_refusal_names_consistency() {
        for weak in [
            "ONE",
            "one",
            "LOCAL_ONE",
            "TWO",
            "THREE",
            "ANY",
            "ALL",
            "EACH_QUORUM",
            "SERIAL",
            "",
        ] {
            let err =
                ScyllaConfig::from_url(&format!("scylla://h/chat?consistency={weak}")).unwrap_err();
            assert_eq!(err, ConfigError::Consistency(weak.to_owned()));
            let text = err.to_string();
            assert!(text.contains("consistency"), "{text}");
            assert!(text.contains("LOCAL_QUORUM"), "{text}");
        }
    }

    #[test]
    fn the_client_timeout_must_exceed_the_server_timeout() {
        let err = ScyllaConfig::from_url("scylla://h/chat?request_timeout=2s").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Option(k, _) if k == "request_timeout"),
            "{err}"
        );
        assert!(err.to_string().contains("server_timeout"), "{err}");
        assert!(ScyllaConfig::from_url("scylla://h/chat?server_timeout=5s").is_err());
        assert!(
            ScyllaConfig::from_url("scylla://h/chat?server_timeout=5s&request_timeout=6s").is_ok()
        );
    }

    #[test]
    fn profile_carries_consistency_serial_consistency_and_client_timeout() {
        for (url, consistency) in [
            ("scylla://h/chat", Consistency::LocalQuorum),
            ("scylla://h/chat?consistency=QUORUM", Consistency::Quorum),
        ] {
            let p = ScyllaConfig::from_url(url).unwrap().execution_profile();
            assert_eq!(p.get_consistency(), consistency, "{url}");
            assert_eq!(
                p.get_serial_consistency(),
                Some(SerialConsistency::LocalSerial)
            );
            assert_eq!(p.get_request_timeout(), Some(DEFAULT_REQUEST_TIMEOUT));
        }
    }

    #[test]
    fn the_claim_uses_serial_across_datacenters() {
        assert_eq!(claim_serial_consistency(1), SerialConsistency::LocalSerial);
        assert_eq!(claim_serial_consistency(2), SerialConsistency::Serial);
        assert_eq!(claim_serial_consistency(5), SerialConsistency::Serial);
    }

    #[test]
    fn policy_is_token_aware_dc_local_without_failover() {
        let policy = |url: &str| {
            format!(
                "{:?}",
                ScyllaConfig::from_url(url)
                    .unwrap()
                    .execution_profile()
                    .get_load_balancing_policy()
            )
        };
        let local = policy("scylla://h/chat?local_dc=dc2");
        assert!(local.contains("Datacenter(\"dc2\")"), "{local}");
        assert!(local.contains("is_token_aware: true"), "{local}");
        assert!(local.contains("permit_dc_failover: false"), "{local}");
        let any = policy("scylla://h/chat");
        assert!(!any.contains("Datacenter("), "{any}");
        assert!(any.contains("is_token_aware: true"), "{any}");
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
        assert!(matches!(err("scylla://h/chat?local_dc="), Option(..)));
        assert!(matches!(err("scylla://h/chat?local_dc=dc'1"), Option(..)));
        assert!(matches!(
            err("scylla://h/chat?server_timeout=0s"),
            Option(..)
        ));
        assert!(matches!(err("scylla://h/chat?colour=red"), Option(..)));
        assert!(err("scylla://h").to_string().contains("scylla://HOST"));
    }
}

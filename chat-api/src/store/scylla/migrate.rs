//! `chat-api migrate`: applies the numbered CQL files of `schema/` (embedded at build time) to
//! ScyllaDB in order, once each, recording version and checksum in `schema_migrations`; and the
//! start-up check that refuses to serve on a keyspace older than [`REQUIRED_SCHEMA_VERSION`].
//!
//! Every statement in the files is idempotent (`IF NOT EXISTS`, or an `ALTER … WITH` that sets
//! the same options again), so a run interrupted half-way through a file is finished by the next
//! run. Schema agreement after each DDL statement is awaited by the driver session (its default);
//! test sessions against a fake server may turn that off.
//!
//! The keyspace is created with tablets disabled ([`TABLETS_OFF`]): ScyllaDB does not run
//! lightweight transactions (the idempotency claim of every send) in keyspaces that use tablets,
//! and since 6.0 new keyspaces use them by default. [`check_layout`] refuses such a keyspace, for
//! `migrate` and for `serve`.

use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::cluster::metadata::Strategy;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

use super::rows::bucket_of;
use super::validate_keyspace;

/// The schema version this build needs: the newest file in `schema/`.
pub const REQUIRED_SCHEMA_VERSION: i32 = 5;

/// Appended to `CREATE KEYSPACE` by the migrator (not written in the file, because a server that
/// predates tablets rejects the option; there the keyspace uses vnodes anyway).
pub const TABLETS_OFF: &str = " AND tablets = {'enabled': false}";

/// The schema version whose application indexes the buckets of existing messages.
pub const BUCKET_INDEX_VERSION: i32 = 3;
/// Schema 3 backfill: every chat, paged (a full scan, once).
pub const SELECT_ALL_CHATS: &str =
    "SELECT chat_id, first_bucket, last_message_id FROM {keyspace}.chats";
/// Schema 3 backfill: whether a bucket holds any message.
pub const SELECT_ANY_MESSAGE: &str =
    "SELECT message_id FROM {keyspace}.messages WHERE chat_id = ? AND bucket = ? LIMIT 1";
/// Schema 3 backfill: index one bucket.
pub const INSERT_BUCKET: &str =
    "INSERT INTO {keyspace}.chat_buckets (chat_id, bucket) VALUES (?, ?)";
/// Chats indexed at once by the backfill.
const BACKFILL_CONCURRENCY: usize = 16;

/// The `component` partition of `schema_migrations` this crate owns.
pub const COMPONENT: &str = "chat-api";

/// One numbered schema file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// All schema files, in order. Files are append-only: an applied file is never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_keyspace.cql",
        cql: include_str!("../../../../schema/0001_keyspace.cql"),
    },
    Migration {
        version: 2,
        name: "0002_tables.cql",
        cql: include_str!("../../../../schema/0002_tables.cql"),
    },
    Migration {
        version: 3,
        name: "0003_bucket_index.cql",
        cql: include_str!("../../../../schema/0003_bucket_index.cql"),
    },
    Migration {
        version: 4,
        name: "0004_read_state.cql",
        cql: include_str!("../../../../schema/0004_read_state.cql"),
    },
    Migration {
        version: 5,
        name: "0005_edits_roles.cql",
        cql: include_str!("../../../../schema/0005_edits_roles.cql"),
    },
];

/// Reads what has been applied; `{keyspace}` is replaced by the (validated) keyspace name.
pub const SELECT_APPLIED: &str =
    "SELECT version, name, checksum FROM {keyspace}.schema_migrations WHERE component = ?";
pub const INSERT_APPLIED: &str = "INSERT INTO {keyspace}.schema_migrations (component, version, \
     name, checksum, applied_at_ms) VALUES (?, ?, ?, ?, ?)";
/// Whether `schema_migrations` exists yet (it does not before the first run).
pub const SELECT_MIGRATIONS_TABLE: &str = "SELECT table_name FROM system_schema.tables \
     WHERE keyspace_name = ? AND table_name = ?";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("keyspace {0:?} is invalid: use 1-48 letters, digits or '_', starting with a letter")]
    Keyspace(String),
    #[error(
        "replication {0:?} is invalid: use a replication factor (\"3\") or per-datacenter factors (\"dc1:3,dc2:3\")"
    )]
    Replication(String),
    #[error("{name} failed at `{statement}`: {source}")]
    Apply {
        name: &'static str,
        statement: String,
        #[source]
        source: Box<ExecutionError>,
    },
    #[error("cannot read schema_migrations in keyspace {keyspace}: {detail}")]
    Read { keyspace: String, detail: String },
    #[error(
        "schema/{name} (version {version}) was edited after it was applied (checksum {applied} in the \
         database, {current} in this build): schema files are append-only, add a new numbered file instead"
    )]
    Edited {
        version: i32,
        name: String,
        applied: String,
        current: String,
    },
    #[error(
        "keyspace {keyspace} is at schema version {found}, this build needs version {required}: \
         run `chat-api migrate` with the same STORE_URL before `chat-api serve`"
    )]
    Outdated {
        keyspace: String,
        found: i32,
        required: i32,
    },
    #[error("schema 3 could not index the buckets of existing messages in keyspace {keyspace}: {detail} (run `chat-api migrate` again: the step is idempotent)")]
    Backfill { keyspace: String, detail: String },
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// A keyspace this service cannot run on correctly, found before serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "keyspace {keyspace} uses tablets, and ScyllaDB does not run lightweight transactions (the \
         idempotency claim of every send) in such keyspaces: every send would fail. Tablets cannot \
         be turned off in an existing keyspace: create a new one with `chat-api migrate` (it sets \
         tablets = {{'enabled': false}}; on ScyllaDB 2025.x the server must not run with \
         tablets_mode_for_new_keyspaces: enforced) and point STORE_URL at it"
    )]
    Tablets { keyspace: String },
    #[error(
        "keyspace {keyspace} replicates to datacenters {datacenters:?}: set ?local_dc=<this \
         replica's datacenter> in STORE_URL, so that LOCAL_QUORUM means this datacenter"
    )]
    NoLocalDc {
        keyspace: String,
        datacenters: Vec<String>,
    },
    #[error(
        "STORE_URL local_dc={local_dc:?} is not among the datacenters of keyspace {keyspace} \
         ({datacenters:?}): requests would find no local replica"
    )]
    UnknownLocalDc {
        keyspace: String,
        local_dc: String,
        datacenters: Vec<String>,
    },
    #[error("keyspace {keyspace} is not in the cluster's metadata: {detail}")]
    Missing { keyspace: String, detail: String },
}

/// What the store needs to know about its keyspace before serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyspaceLayout {
    pub tablets: bool,
    /// The datacenters named in the replication map, sorted (empty for SimpleStrategy).
    pub datacenters: Vec<String>,
}

/// Reads the keyspace's replication and tablets setting from the driver's cluster metadata
/// (`system_schema.keyspaces` and `system_schema.scylla_keyspaces`), refreshed first.
pub async fn keyspace_layout(
    session: &Session,
    keyspace: &str,
) -> Result<KeyspaceLayout, LayoutError> {
    let missing = |detail: String| LayoutError::Missing {
        keyspace: keyspace.to_owned(),
        detail,
    };
    session
        .refresh_metadata()
        .await
        .map_err(|e| missing(e.to_string()))?;
    let state = session.get_cluster_state();
    let ks = state
        .get_keyspace(keyspace)
        .ok_or_else(|| missing("run `chat-api migrate` first".into()))?;
    let mut datacenters: Vec<String> = match &ks.strategy {
        Strategy::NetworkTopologyStrategy {
            datacenter_repfactors,
        } => datacenter_repfactors.keys().cloned().collect(),
        _ => Vec::new(),
    };
    datacenters.sort();
    Ok(KeyspaceLayout {
        tablets: ks.tablet_based,
        datacenters,
    })
}

/// Refuses a keyspace with tablets, a keyspace in several datacenters without `local_dc`, and a
/// `local_dc` the keyspace does not replicate to.
pub fn check_layout(
    keyspace: &str,
    layout: &KeyspaceLayout,
    local_dc: Option<&str>,
) -> Result<(), LayoutError> {
    if layout.tablets {
        return Err(LayoutError::Tablets {
            keyspace: keyspace.to_owned(),
        });
    }
    match local_dc {
        None if layout.datacenters.len() > 1 => Err(LayoutError::NoLocalDc {
            keyspace: keyspace.to_owned(),
            datacenters: layout.datacenters.clone(),
        }),
        Some(dc)
            if !layout.datacenters.is_empty() && !layout.datacenters.iter().any(|d| d == dc) =>
        {
            Err(LayoutError::UnknownLocalDc {
                keyspace: keyspace.to_owned(),
                local_dc: dc.to_owned(),
                datacenters: layout.datacenters.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// Whether a server refused a statement as unsupported in this keyspace (LWT with tablets, for
/// one): a deployment error that no retry fixes, so the service must stop being ready.
pub fn is_unsupported(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid | DbError::ConfigError | DbError::ServerError,
            message,
        )) => {
            let m = message.to_ascii_lowercase();
            m.contains("not supported") || m.contains("not yet supported")
        }
        _ => false,
    }
}

/// Keyspace replication, rendered into `{{replication}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication(String);

impl Replication {
    /// `"3"` (the same factor in every datacenter) or `"dc1:3,dc2:2"`; always
    /// NetworkTopologyStrategy, so adding a datacenter later needs no strategy change.
    pub fn parse(s: &str) -> Result<Replication, MigrateError> {
        let bad = || MigrateError::Replication(s.to_owned());
        let factor = |f: &str| {
            f.trim()
                .parse::<u8>()
                .ok()
                .filter(|f| *f > 0)
                .ok_or_else(bad)
        };
        let s = s.trim();
        if !s.contains(':') {
            let rf = factor(s)?;
            return Ok(Replication(format!(
                "{{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
            )));
        }
        let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
        for part in s.split(',') {
            let (dc, rf) = part.split_once(':').ok_or_else(bad)?;
            let dc = dc.trim();
            let dc_ok = !dc.is_empty()
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !dc_ok {
                return Err(bad());
            }
            out.push_str(&format!(", '{dc}': {}", factor(rf)?));
        }
        out.push('}');
        Ok(Replication(out))
    }

    pub fn as_cql(&self) -> &str {
        &self.0
    }
}

impl Default for Replication {
    fn default() -> Self {
        Replication::parse("3").expect("the default replication is valid")
    }
}

/// The statements of one file with the placeholders filled in. Files hold full-line `--`
/// comments and `;`-terminated statements without `;` inside literals.
pub fn statements(m: &Migration, keyspace: &str, replication: &Replication) -> Vec<String> {
    let text: String = m
        .cql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s
                .replace("{{keyspace}}", keyspace)
                .replace("{{replication}}", replication.as_cql());
            if s.starts_with("CREATE KEYSPACE") {
                s + TABLETS_OFF
            } else {
                s
            }
        })
        .collect()
}

/// A server that predates tablets rejects the option: the keyspace then uses vnodes anyway.
fn rejects_tablets_option(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::SyntaxError | DbError::ConfigError | DbError::Invalid,
            message,
        )) => message.to_ascii_lowercase().contains("tablets"),
        _ => false,
    }
}

/// FNV-1a (64-bit) of the file as embedded, in hex: detects edits, not tampering.
pub fn checksum(cql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cql.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A row of `schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i32,
    pub name: String,
    pub checksum: String,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// Versions that were already applied (checksums verified).
    pub already: Vec<i32>,
}

fn qualified(template: &str, keyspace: &str) -> String {
    template.replace("{keyspace}", keyspace)
}

/// The applied versions, oldest first; empty when the keyspace or the table does not exist yet.
pub async fn applied(session: &Session, keyspace: &str) -> Result<Vec<Applied>, MigrateError> {
    validate_keyspace(keyspace).map_err(|_| MigrateError::Keyspace(keyspace.to_owned()))?;
    let read_err = |detail: String| MigrateError::Read {
        keyspace: keyspace.to_owned(),
        detail,
    };
    let exists = session
        .query_unpaged(SELECT_MIGRATIONS_TABLE, (keyspace, "schema_migrations"))
        .await
        .map_err(|e| read_err(e.to_string()))?
        .into_rows_result()
        .map_err(|e| read_err(e.to_string()))?
        .rows_num()
        > 0;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = session
        .query_unpaged(qualified(SELECT_APPLIED, keyspace), (COMPONENT,))
        .await
        .map_err(|e| read_err(e.to_string()))?
        .into_rows_result()
        .map_err(|e| read_err(e.to_string()))?;
    let mut out = rows
        .rows::<(i32, String, String)>()
        .map_err(|e| read_err(e.to_string()))?
        .map(|r| {
            r.map(|(version, name, checksum)| Applied {
                version,
                name,
                checksum,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    out.sort_by_key(|a| a.version);
    Ok(out)
}

/// Applies every pending file (see [`migrate_to`]).
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<Report, MigrateError> {
    migrate_to(session, keyspace, replication, i32::MAX).await
}

/// Applies pending files up to `target` in order and records each; verifies the checksums of
/// files applied before. Safe to run again, and from several processes at once (the DDL is
/// `IF NOT EXISTS`, the record an upsert).
pub async fn migrate_to(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
    target: i32,
) -> Result<Report, MigrateError> {
    validate_keyspace(keyspace).map_err(|_| MigrateError::Keyspace(keyspace.to_owned()))?;
    let done = applied(session, keyspace).await?;
    let mut report = Report::default();
    for m in MIGRATIONS.iter().filter(|m| m.version <= target) {
        let current = checksum(m.cql);
        if let Some(a) = done.iter().find(|a| a.version == m.version) {
            if a.checksum != current {
                return Err(MigrateError::Edited {
                    version: m.version,
                    name: m.name.to_owned(),
                    applied: a.checksum.clone(),
                    current,
                });
            }
            report.already.push(m.version);
            continue;
        }
        for statement in statements(m, keyspace, replication) {
            let mut result = session.query_unpaged(statement.as_str(), ()).await;
            if let (Err(e), Some(without)) = (&result, statement.strip_suffix(TABLETS_OFF)) {
                if rejects_tablets_option(e) {
                    tracing::info!(
                        "the server has no tablets option: creating the keyspace on vnodes"
                    );
                    result = session.query_unpaged(without, ()).await;
                }
            }
            result.map_err(|source| MigrateError::Apply {
                name: m.name,
                statement: statement.clone(),
                source: Box::new(source),
            })?;
        }
        if m.version == BUCKET_INDEX_VERSION {
            let indexed = backfill_bucket_index(session, keyspace).await?;
            tracing::info!(
                buckets = indexed,
                "indexed the buckets of existing messages"
            );
        }
        let record = qualified(INSERT_APPLIED, keyspace);
        session
            .query_unpaged(
                record.as_str(),
                (
                    COMPONENT,
                    m.version,
                    m.name,
                    current.as_str(),
                    i64::try_from(shared::ids::now_unix_ms()).unwrap_or(i64::MAX),
                ),
            )
            .await
            .map_err(|source| MigrateError::Apply {
                name: m.name,
                statement: record.clone(),
                source: Box::new(source),
            })?;
        tracing::info!(version = m.version, name = m.name, "applied schema file");
        report.applied.push(m.version);
    }
    Ok(report)
}

/// Schema 3: writes a `chat_buckets` row for every bucket that holds messages written before the
/// index existed. For each chat with messages, reads one row of each bucket from one before its
/// `first_bucket` (a replica whose clock lagged the creator's could have stamped a message there)
/// to the bucket of its `last_message_id`. Idempotent; a full scan of `chats`, run once.
pub async fn backfill_bucket_index(session: &Session, keyspace: &str) -> Result<u64, MigrateError> {
    let fail = |detail: String| MigrateError::Backfill {
        keyspace: keyspace.to_owned(),
        detail,
    };
    let chats: Vec<(i64, Option<i32>, Option<i64>)> = session
        .query_iter(qualified(SELECT_ALL_CHATS, keyspace), ())
        .await
        .map_err(|e| fail(e.to_string()))?
        .rows_stream::<(i64, Option<i32>, Option<i64>)>()
        .map_err(|e| fail(e.to_string()))?
        .try_filter(|(_, _, last)| futures_util::future::ready(last.is_some()))
        .try_collect()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if chats.is_empty() {
        return Ok(0);
    }
    let probe = session
        .prepare(qualified(SELECT_ANY_MESSAGE, keyspace))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let insert = session
        .prepare(qualified(INSERT_BUCKET, keyspace))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let counts: Vec<u64> = futures_util::stream::iter(chats)
        .map(|(chat_id, first, last)| {
            let (probe, insert) = (&probe, &insert);
            async move {
                let last = shared::Id(u64::try_from(last.unwrap_or(0)).unwrap_or(0));
                let mut indexed = 0;
                for bucket in first.unwrap_or(0).saturating_sub(1).max(0)..=bucket_of(last) {
                    let rows = session
                        .execute_unpaged(probe, (chat_id, bucket))
                        .await?
                        .into_rows_result()
                        .map(|r| r.rows_num())
                        .unwrap_or(0);
                    if rows > 0 {
                        session.execute_unpaged(insert, (chat_id, bucket)).await?;
                        indexed += 1;
                    }
                }
                Ok::<u64, ExecutionError>(indexed)
            }
        })
        .buffer_unordered(BACKFILL_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(counts.into_iter().sum())
}

/// For `serve`: fails with [`MigrateError::Outdated`] (naming `chat-api migrate`) unless the
/// keyspace is at [`REQUIRED_SCHEMA_VERSION`] or newer.
pub async fn check_schema(session: &Session, keyspace: &str) -> Result<(), MigrateError> {
    let found = applied(session, keyspace)
        .await?
        .iter()
        .map(|a| a.version)
        .max()
        .unwrap_or(0);
    if found < REQUIRED_SCHEMA_VERSION {
        return Err(MigrateError::Outdated {
            keyspace: keyspace.to_owned(),
            found,
            required: REQUIRED_SCHEMA_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_numbered_in_order_and_required_is_the_newest() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
        // Every file of schema/ is listed (a file added but not listed would never be applied).
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../schema"))
            .expect("schema/")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "cql"))
            .count();
        assert_eq!(files, MIGRATIONS.len(), "schema/*.cql files vs MIGRATIONS");
        assert_eq!(REQUIRED_SCHEMA_VERSION, MIGRATIONS.last().unwrap().version);
    }

    #[test]
    fn statements_fill_placeholders_and_drop_comments() {
        let r = Replication::parse("dc1:3,dc2:2").unwrap();
        let all: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m, "chat", &r))
            .collect();
        assert_eq!(all.len(), 13, "{all:#?}");
        assert_eq!(
            all[0],
            "CREATE KEYSPACE IF NOT EXISTS chat WITH replication = {'class': \
             'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2} AND durable_writes = true \
             AND tablets = {'enabled': false}"
        );
        for s in &all {
            assert!(!s.contains("{{"), "{s}");
            assert!(!s.contains("--"), "{s}");
            assert!(
                s.contains("IF NOT EXISTS chat") || s.starts_with("ALTER TABLE chat."),
                "{s}"
            );
            assert_eq!(
                s.contains("tablets"),
                s.starts_with("CREATE KEYSPACE"),
                "only the keyspace sets tablets: {s}"
            );
        }
        assert_eq!(
            all[8],
            "ALTER TABLE chat.messages WITH compaction = {'class': 'SizeTieredCompactionStrategy'}"
        );
        assert!(
            all[7].contains("PRIMARY KEY (chat_id, bucket)"),
            "{}",
            all[7]
        );
        assert!(
            all[9].starts_with("CREATE TABLE IF NOT EXISTS chat.read_state")
                && all[9].contains("PRIMARY KEY (chat_id, user_id)"),
            "{}",
            all[9]
        );
    }

    #[test]
    fn an_older_server_without_tablets_gets_the_keyspace_without_the_option() {
        let refused = |kind: DbError, msg: &str| {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(kind, msg.into()))
        };
        assert!(rejects_tablets_option(&refused(
            DbError::SyntaxError,
            "Unknown property 'tablets'"
        )));
        assert!(!rejects_tablets_option(&refused(
            DbError::SyntaxError,
            "line 1:10 no viable alternative"
        )));
        assert!(!rejects_tablets_option(&refused(
            DbError::Unauthorized,
            "tablets"
        )));
    }

    #[test]
    fn layout_refuses_tablets_and_ambiguous_datacenters() {
        let layout = |tablets: bool, dcs: &[&str]| KeyspaceLayout {
            tablets,
            datacenters: dcs.iter().map(|d| d.to_string()).collect(),
        };
        assert_eq!(check_layout("chat", &layout(false, &["dc1"]), None), Ok(()));
        assert_eq!(
            check_layout("chat", &layout(false, &["dc1"]), Some("dc1")),
            Ok(())
        );
        assert_eq!(check_layout("chat", &layout(false, &[]), Some("x")), Ok(()));
        let err = check_layout("chat", &layout(true, &["dc1"]), Some("dc1")).unwrap_err();
        assert!(matches!(err, LayoutError::Tablets { .. }));
        let text = err.to_string();
        assert!(
            text.contains("tablets") && text.contains("chat-api migrate"),
            "{text}"
        );
        let err = check_layout("chat", &layout(false, &["dc1", "dc2"]), None).unwrap_err();
        assert!(err.to_string().contains("local_dc"), "{err}");
        assert_eq!(
            check_layout("chat", &layout(false, &["dc1", "dc2"]), Some("dc2")),
            Ok(())
        );
        let err = check_layout("chat", &layout(false, &["dc1", "dc2"]), Some("dc3")).unwrap_err();
        assert!(matches!(err, LayoutError::UnknownLocalDc { .. }), "{err}");
    }

    #[test]
    fn an_unsupported_answer_is_recognized() {
        let db = |kind: DbError, msg: &str| {
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(kind, msg.into()))
        };
        assert!(is_unsupported(&db(
            DbError::Invalid,
            "LWT is not yet supported with tablets"
        )));
        assert!(is_unsupported(&db(
            DbError::ConfigError,
            "Feature X is not supported in keyspaces with tablets"
        )));
        assert!(!is_unsupported(&db(
            DbError::Invalid,
            "Undefined column name x"
        )));
        assert!(!is_unsupported(&db(DbError::Overloaded, "not supported")));
    }

    #[test]
    fn backfill_statements() {
        assert_eq!(
            qualified(SELECT_ALL_CHATS, "chat"),
            "SELECT chat_id, first_bucket, last_message_id FROM chat.chats"
        );
        assert_eq!(
            qualified(SELECT_ANY_MESSAGE, "chat"),
            "SELECT message_id FROM chat.messages WHERE chat_id = ? AND bucket = ? LIMIT 1"
        );
        assert_eq!(
            qualified(INSERT_BUCKET, "chat"),
            "INSERT INTO chat.chat_buckets (chat_id, bucket) VALUES (?, ?)"
        );
    }

    #[test]
    fn replication_forms() {
        assert_eq!(
            Replication::parse("1").unwrap().as_cql(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            Replication::default().as_cql(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
        );
        for bad in ["", "0", "x", "dc1:", "dc'1:3", ":3", "dc1:3,"] {
            assert!(Replication::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checksum_is_stable_and_detects_edits() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_ne!(checksum(MIGRATIONS[1].cql), checksum(MIGRATIONS[0].cql));
        assert_ne!(checksum("a;"), checksum("a; "));
    }

    #[test]
    fn migration_table_statements() {
        assert_eq!(
            qualified(SELECT_APPLIED, "chat"),
            "SELECT version, name, checksum FROM chat.schema_migrations WHERE component = ?"
        );
        assert_eq!(
            qualified(INSERT_APPLIED, "chat"),
            "INSERT INTO chat.schema_migrations (component, version, name, checksum, \
             applied_at_ms) VALUES (?, ?, ?, ?, ?)"
        );
        assert_eq!(
            SELECT_MIGRATIONS_TABLE,
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?"
        );
    }
}

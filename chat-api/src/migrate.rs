//! `chat-api migrate`: applies the numbered CQL files of `schema/` (embedded at build time) to
//! ScyllaDB in order, once each, recording version and checksum in `schema_migrations`; and the
//! start-up check that refuses to serve on a keyspace older than [`REQUIRED_SCHEMA_VERSION`].
//!
//! Every statement in the files is `IF NOT EXISTS`, so a run interrupted half-way through a file
//! is finished by the next run. Schema agreement after each DDL statement is awaited by the
//! driver session (its default); test sessions against a fake server may turn that off.

use scylla::client::session::Session;
use scylla::errors::ExecutionError;

use crate::store::scylla::validate_keyspace;

/// The schema version this build needs: the newest file in `schema/`.
pub const REQUIRED_SCHEMA_VERSION: i32 = 2;

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
        cql: include_str!("../../schema/0001_keyspace.cql"),
    },
    Migration {
        version: 2,
        name: "0002_tables.cql",
        cql: include_str!("../../schema/0002_tables.cql"),
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
            s.replace("{{keyspace}}", keyspace)
                .replace("{{replication}}", replication.as_cql())
        })
        .collect()
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
            session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|source| MigrateError::Apply {
                    name: m.name,
                    statement: statement.clone(),
                    source: Box::new(source),
                })?;
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
        assert_eq!(REQUIRED_SCHEMA_VERSION, MIGRATIONS.last().unwrap().version);
    }

    #[test]
    fn statements_fill_placeholders_and_drop_comments() {
        let r = Replication::parse("dc1:3,dc2:2").unwrap();
        let all: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| statements(m, "chat", &r))
            .collect();
        assert_eq!(all.len(), 7, "{all:#?}");
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS chat WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"));
        for s in &all {
            assert!(!s.contains("{{"), "{s}");
            assert!(!s.contains("--"), "{s}");
            assert!(s.contains("IF NOT EXISTS chat"), "{s}");
        }
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

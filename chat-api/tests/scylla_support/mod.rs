//! Test support for the ScyllaDB store: an in-process CQL server built on the `kassandra` crate,
//! driven over a real socket by the real `scylla` driver, that REFUSES what kassandra would
//! silently get wrong, plus session and keyspace helpers.
//!
//! kassandra's parser reads a statement's prefix and drops the rest: `WHERE a = ? AND b < ?` runs
//! as `WHERE a = ?`, `INSERT … IF NOT EXISTS` as a plain insert, `USING TTL` is ignored, `LIMIT ?`
//! and `ORDER BY` are dropped. It reads `WHERE <clustering column> = x` as "from x to the end of
//! the partition", and ignores `CLUSTERING ORDER BY (… DESC)` (rows always come back ascending).
//! It also panics on counters, `timeuuid`, `smallint` and `frozen<…>`, and has no `ALTER`. The
//! harness learns each table's clustering columns and order from the DDL that passes through it,
//! and answers `ALTER TABLE … WITH <options>` itself: table options (compaction, caching, …)
//! change no query's result, so accepting them without effect is faithful.
//! So every user-keyspace statement is checked here first and refused with an `Invalid` error
//! naming the reason: a test can pass only on an answer kassandra computes faithfully. Queries on
//! `system`/`system_schema` (the driver's own metadata reads) are let through.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kassandra::error::DbError;
use kassandra::frame::request::batch::BatchStatement;
use kassandra::frame::request::Request;
use kassandra::frame::response::error::Error as CqlError;
use kassandra::frame::response::Response;
use kassandra::frame::{parse, request_stream, response_sink};
use kassandra::KassandraSession;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The prefix of every refusal message, for assertions.
pub const REFUSED: &str = "refused by the test harness";

/// A CQL server on 127.0.0.1 with a fresh in-memory kassandra; stops when dropped.
pub struct CqlServer {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for CqlServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CqlServer {
    pub async fn start() -> CqlServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
        let addr = listener.local_addr().expect("local addr");
        let db: Arc<Mutex<Db>> = Arc::new(Mutex::new(Db {
            kassandra: KassandraSession::new(),
            tables: Tables::default(),
        }));
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve_connection(stream, db.clone()));
            }
        });
        CqlServer { addr, accept }
    }

    /// A driver session as the store's tests use it: automatic schema agreement off (kassandra's
    /// answers make the driver's agreement step fail), bounded timeouts.
    pub async fn session(&self) -> Session {
        SessionBuilder::new()
            .known_node_addr(self.addr)
            .auto_await_schema_agreement(false)
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .expect("the driver connects to the in-process CQL server")
    }
}

/// kassandra plus what the harness learned from the DDL it saw.
struct Db {
    kassandra: KassandraSession,
    tables: Tables,
}

/// Clustering columns and order of each table, by (unqualified, lower-case) name.
#[derive(Debug, Default, Clone)]
pub struct Tables(HashMap<String, TableInfo>);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub clustering: Vec<String>,
    pub descending: bool,
}

impl Tables {
    /// Records the table of a `CREATE TABLE` statement; ignores anything else.
    pub fn learn(&mut self, cql: &str) {
        let tokens = tokenize(cql);
        let up: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
        if up.len() < 3 || up[0] != "CREATE" || up[1] != "TABLE" {
            return;
        }
        let Some(open) = up.iter().position(|t| t == "(") else {
            return;
        };
        let name = tokens[open - 1].to_ascii_lowercase();
        let mut info = TableInfo::default();
        if let Some(pk) = (0..up.len())
            .find(|&i| up[i] == "PRIMARY" && up.get(i + 1).map(String::as_str) == Some("KEY"))
        {
            let mut i = pk + 2;
            if up.get(i).map(String::as_str) == Some("(") {
                i += 1;
                if up.get(i).map(String::as_str) == Some("(") {
                    while i < up.len() && up[i] != ")" {
                        i += 1;
                    }
                }
                // Skip the partition key (one column, or the parenthesized list just skipped).
                i += 1;
                while i < up.len() && up[i] != ")" {
                    if up[i] != "," {
                        info.clustering.push(tokens[i].to_ascii_lowercase());
                    }
                    i += 1;
                }
            }
        }
        if let Some(order) = up.iter().position(|t| t == "ORDER") {
            info.descending = up[order..].iter().any(|t| t == "DESC");
        }
        self.0.insert(name, info);
    }

    pub fn get(&self, table: &str) -> Option<&TableInfo> {
        self.0.get(&table.to_ascii_lowercase())
    }
}

async fn serve_connection(mut stream: TcpStream, db: Arc<Mutex<Db>>) {
    let (mut read, mut write) = stream.split();
    let mut requests = request_stream(&mut read);
    let mut responses = response_sink(&mut write);
    while let Some(Ok((frame, opcode, body))) = requests.next().await {
        let response = if frame.version.is_unsupported() {
            Response::unsupported_version()
        } else {
            // kassandra panics on some types and request kinds; a panic must become an error
            // answer, not a hung test.
            catch_unwind(AssertUnwindSafe(|| handle(&db, opcode, &body, frame.flags)))
                .unwrap_or_else(|_| {
                    Response::Error(CqlError::new(
                        DbError::ServerError,
                        "kassandra panicked executing this request",
                    ))
                })
        };
        if responses.send((response, frame.stream)).await.is_err() {
            break;
        }
    }
}

fn handle(
    db: &Mutex<Db>,
    opcode: kassandra::frame::request::RequestOpcode,
    body: &[u8],
    flags: kassandra::frame::FrameFlags,
) -> Response {
    use kassandra::frame::request::RequestOpcode;
    let mut db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Db { kassandra, tables } = &mut *db;
    // QUERY and PREPARE bodies start with the statement text. It is checked before kassandra
    // parses it, because kassandra's parser accepts a prefix and drops the rest.
    if matches!(opcode, RequestOpcode::Prepare | RequestOpcode::Query) {
        if let Ok((_, text)) = parse::long_string(body) {
            if let Some(reason) = refusal(text, tables) {
                return refuse(reason, text);
            }
            if opcode == RequestOpcode::Query && is_table_options_change(text) {
                return Response::Result(kassandra::frame::response::result::QueryResult::Void);
            }
            tables.learn(text);
        }
    }
    let request = match Request::deserialize(opcode, body, flags) {
        Ok(r) => r,
        Err(e) => return Response::Error(e),
    };
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::Query(q) => kassandra.process(q),
        Request::Prepare(q) => kassandra.prepare(q),
        Request::Execute(e) => kassandra.execute(e),
        Request::Batch(b) => {
            // Prepared statements in a batch were checked when prepared.
            for s in &b.statements {
                if let BatchStatement::Query { raw_query, .. } = s {
                    if let Some(reason) = refusal(raw_query, tables) {
                        return refuse(reason, raw_query);
                    }
                }
            }
            kassandra.process_batch(b)
        }
        Request::AuthResponse => {
            return Response::Error(CqlError::new(
                DbError::ProtocolError,
                "authentication is not supported",
            ))
        }
    };
    match result {
        Ok(r) => Response::Result(r),
        Err(e) => Response::Error(e),
    }
}

fn refuse(reason: &str, cql: &str) -> Response {
    Response::Error(CqlError::new(
        DbError::Invalid,
        format!("{REFUSED}: kassandra cannot execute {reason} faithfully: {cql}"),
    ))
}

/// Why kassandra cannot be trusted with `cql`, or `None` when it executes it faithfully.
pub fn refusal(cql: &str, tables: &Tables) -> Option<&'static str> {
    let tokens = tokenize(cql);
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let first = upper.first().map(String::as_str).unwrap_or("");
    let is = |i: usize, s: &str| upper.get(i).map(String::as_str) == Some(s);
    match first {
        "ALTER" if !is_table_options_change(cql) => {
            Some("ALTER other than a table's options (kassandra has no ALTER)")
        }
        "CREATE" => {
            for t in &upper {
                match t.as_str() {
                    "COUNTER" => return Some("the counter type (it panics)"),
                    "TIMEUUID" => return Some("the timeuuid type (it panics)"),
                    "SMALLINT" => return Some("the smallint type (it panics)"),
                    "FROZEN" => return Some("frozen<…> types (it panics)"),
                    _ => {}
                }
            }
            None
        }
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" => {
            // The driver's metadata reads of system tables are not ours to police.
            let system = (0..upper.len())
                .any(|i| (is(i, "SYSTEM") || is(i, "SYSTEM_SCHEMA")) && is(i + 1, "."));
            if system {
                return None;
            }
            for (i, t) in upper.iter().enumerate() {
                let reason = match t.as_str() {
                    "<" | ">" | "<=" | ">=" | "!=" => Some("range predicates"),
                    "IN" => Some("IN"),
                    "IF" => Some("IF (lightweight transactions)"),
                    "USING" => Some("USING TTL/TIMESTAMP"),
                    "ORDER" => Some("ORDER BY"),
                    "TOKEN" => Some("token()"),
                    "ALLOW" => Some("ALLOW FILTERING"),
                    "DISTINCT" | "GROUP" | "PER" | "COUNT" | "CONTAINS" => {
                        Some("aggregates, DISTINCT, GROUP BY, PER PARTITION or CONTAINS")
                    }
                    "+" | "-" => Some("counter or collection arithmetic"),
                    "LIMIT" if is(i + 1, "?") || is(i + 1, ":") => Some("LIMIT ?"),
                    // Its WHERE parser knows only an upper-case AND and drops what follows.
                    "AND" if tokens[i] != "AND" => Some("a lower-case AND"),
                    _ => None,
                };
                if reason.is_some() {
                    return reason;
                }
            }
            if first == "SELECT" {
                return select_refusal(&tokens, &upper, tables);
            }
            None
        }
        _ => None,
    }
}

/// `ALTER TABLE name WITH …`: options only, no column changes.
pub fn is_table_options_change(cql: &str) -> bool {
    let upper: Vec<String> = tokenize(cql)
        .iter()
        .map(|t| t.to_ascii_uppercase())
        .collect();
    let Some(with) = upper.iter().position(|t| t == "WITH") else {
        return false;
    };
    upper.first().map(String::as_str) == Some("ALTER")
        && upper.get(1).map(String::as_str) == Some("TABLE")
        && with >= 3
        && !upper[2..with]
            .iter()
            .any(|t| matches!(t.as_str(), "ADD" | "DROP" | "RENAME" | "ALTER" | "TYPE"))
}

/// What kassandra reads wrongly in a SELECT on a known table.
fn select_refusal(tokens: &[String], upper: &[String], tables: &Tables) -> Option<&'static str> {
    let from = upper.iter().position(|t| t == "FROM")?;
    let mut name = tokens.get(from + 1)?;
    if upper.get(from + 2).map(String::as_str) == Some(".") {
        name = tokens.get(from + 3)?;
    }
    let info = tables.get(name)?;
    if info.descending {
        return Some("reads of a table with CLUSTERING ORDER … DESC (it returns ascending order)");
    }
    let filters_clustering = upper.iter().position(|t| t == "WHERE").is_some_and(|w| {
        (w + 1..tokens.len()).any(|i| {
            upper.get(i + 1).map(String::as_str) == Some("=")
                && info.clustering.contains(&tokens[i].to_ascii_lowercase())
        })
    });
    if filters_clustering {
        return Some(
            "a clustering-column restriction (it reads from that key to the partition's end)",
        );
    }
    None
}

/// Words, numbers, quoted strings (as one token) and operators.
fn tokenize(cql: &str) -> Vec<String> {
    let chars: Vec<char> = cql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() {
                if chars[i] == c {
                    if chars.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if (c == '<' || c == '>' || c == '!') && chars.get(i + 1) == Some(&'=') {
            out.push(chars[i..i + 2].iter().collect());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

#[test]
fn tokenizer_keeps_literals_whole() {
    assert_eq!(
        tokenize("SELECT a FROM t WHERE b = 'x < y' AND c>=?"),
        ["SELECT", "a", "FROM", "t", "WHERE", "b", "=", "'x < y'", "AND", "c", ">=", "?"]
    );
}

//! Metric names and label values are spelled out in the telemetry modules only
//! (`shared/src/telemetry.rs`, `gateway/src/telemetry.rs`, `chat-api/src/telemetry.rs`), and
//! `docs/OPERATIONS.md` lists exactly the names those modules define. A string literal as a metric
//! name or label value anywhere else is how names drift from the docs (a metric emitted but never
//! registered or documented), so this test reads the sources and fails on one.
//!
//! `metrics_scrape.rs` checks the same table against what running services export; this one
//! needs no processes and also covers metrics that only appear on rare events.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crates whose code records metrics.
const CRATES: &[&str] = &["protocol", "shared", "gateway", "chat-api"];
/// The metric macros of the `metrics` crate.
const MACROS: &[&str] = &[
    "counter!",
    "gauge!",
    "histogram!",
    "describe_counter!",
    "describe_gauge!",
    "describe_histogram!",
];
/// Helpers that take a metric name or label value, and which of their arguments is one.
const HELPERS: &[(&str, usize)] = &[
    // gateway::telemetry::rejected(reason), rate_limited(limit)
    ("rejected(", 0),
    ("rate_limited(", 0),
    // gateway::server::reject(status, reason, body)
    ("reject(", 1),
    // the metered store and routing wrappers: observe(op, future)
    ("observe(", 0),
    // shared::ratelimit::check_fail_open(limiter, bucket, key, quota)
    ("check_fail_open(", 1),
    // shared::ratelimit::retry_after_held(places, retry_after, max, unheld_metric)
    ("retry_after_held(", 3),
];
/// Top-level `&str` constants of the telemetry modules that are label values, not metric names.
const LABEL_CONSTANTS: &[&str] = &["OTHER_METHOD", "UNMATCHED_ROUTE"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with `//` comments blanked (line and column positions kept). Strings that contain
/// `//` (URLs) are left alone: a comment starts only outside a string literal.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut escaped = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for i in 0..bytes.len() {
            let b = bytes[i];
            if in_str {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_str = false;
                }
            } else if b == b'"' {
                in_str = true;
            } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The arguments of the call whose `(` is at `open`, split at top-level commas (and `=>`), or
/// `None` when the parentheses do not close.
fn call_args(text: &str, open: usize) -> Option<Vec<String>> {
    let bytes = text.as_bytes();
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    let mut args = vec![String::new()];
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        let c = b as char;
        if in_str {
            args.last_mut()?.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(args.into_iter().map(|a| a.trim().to_owned()).collect());
                }
            }
            '"' => in_str = true,
            ',' if depth == 1 => {
                args.push(String::new());
                continue;
            }
            '=' if depth == 1 && bytes.get(i + 1) == Some(&b'>') => {
                args.push(String::new());
                continue;
            }
            '>' if depth == 1 && i > 0 && bytes[i - 1] == b'=' => continue,
            _ => {}
        }
        args.last_mut()?.push(c);
    }
    None
}

/// Every metric call or helper call in `text` that spells a name or label value as a string
/// literal, as `line: call`.
fn literal_metric_calls(text: &str) -> Vec<String> {
    let text = without_comments(text);
    let mut found = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for m in MACROS {
        for (at, _) in text.match_indices(m) {
            // `describe_counter!` also contains `counter!`: match whole names only.
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let open = at + m.len();
            if !text[open..].starts_with('(') {
                continue;
            }
            let Some(args) = call_args(&text, open) else {
                continue;
            };
            // Name first, then label key => value pairs; describe_* take a help text (and a
            // unit) after the name, which may well be a literal.
            let checked: Vec<&String> = if m.starts_with("describe_") {
                args.iter().take(1).collect()
            } else {
                args.iter()
                    .enumerate()
                    .filter(|(i, _)| *i == 0 || i % 2 == 0)
                    .map(|(_, a)| a)
                    .collect()
            };
            if checked.iter().any(|a| a.starts_with('"')) {
                found.push(format!("{}: {m}({})", line_of(at), args.join(", ")));
            }
        }
    }
    for (helper, index) in HELPERS {
        for (at, _) in text.match_indices(helper) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(is_ident) || text[..at].trim_end().ends_with("fn") {
                continue;
            }
            let open = at + helper.len() - 1;
            let Some(args) = call_args(&text, open) else {
                continue;
            };
            if args.get(*index).is_some_and(|a| a.starts_with('"')) {
                found.push(format!("{}: {helper}{})", line_of(at), args.join(", ")));
            }
        }
    }
    found
}

#[test]
fn the_scanner_finds_literal_names_and_label_values() {
    let code = r#"
        metrics::counter!("gateway_made_up_total").increment(1);
        metrics::counter!(NAME, "reason" => "made_up").increment(1);
        metrics::histogram!(NAME, "op" => op).record(1.0);
        metrics::describe_counter!(NAME, "help text is fine");
        metrics::describe_gauge!("made_up_gauge", "help");
        // metrics::counter!("in_a_comment").increment(1);
        let url = "http://example.com/metrics"; metrics::gauge!(NAME).set(1.0);
        crate::telemetry::rejected("made_up");
        return reject(StatusCode::FORBIDDEN, "auth", "body\n");
        return reject(StatusCode::FORBIDDEN, reason::AUTH, "body\n");
        observe(store_op::PING, self.inner.ping()).await
        check_fail_open(&*limiter, "req", key, quota).await
        fn rejected(reason: &'static str) {}
    "#;
    let found = literal_metric_calls(code);
    let lines: Vec<usize> = found
        .iter()
        .map(|f| f.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 6, 9, 10, 13], "{found:#?}");
}

#[test]
fn metric_names_and_label_values_are_spelled_only_in_the_telemetry_modules() {
    let mut files = Vec::new();
    for krate in CRATES {
        rust_files(&root().join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut offenders = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == "telemetry.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for hit in literal_metric_calls(&text) {
            offenders.push(format!("{}:{hit}", file.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "metric names and label values belong in a telemetry module (a constant there, \
         registered and documented in docs/OPERATIONS.md); found literals at:\n{}",
        offenders.join("\n")
    );
}

/// The top-level `pub const NAME: &str = "value";` of a telemetry module that name metrics.
fn defined_metrics(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).expect("reading a telemetry module");
    text.lines()
        .filter_map(|l| l.strip_prefix("pub const "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(": &str = \"")?;
            let value = rest.strip_suffix("\";")?;
            (!LABEL_CONSTANTS.contains(&name)).then(|| value.to_owned())
        })
        .collect()
}

/// The metric names in the first column of the "## Metrics" table of docs/OPERATIONS.md.
fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("OPERATIONS.md has a '## Metrics' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.split('|')
                .nth(1)
                .unwrap()
                .trim()
                .trim_matches('`')
                .to_owned()
        })
        .collect()
}

#[test]
fn operations_md_lists_exactly_the_metrics_the_telemetry_modules_define() {
    let mut defined = BTreeSet::new();
    for module in [
        "shared/src/telemetry.rs",
        "gateway/src/telemetry.rs",
        "chat-api/src/telemetry.rs",
    ] {
        let names = defined_metrics(&root().join(module));
        assert!(names.len() >= 4, "{module} defines only {names:?}");
        defined.extend(names);
    }
    // The constants are what the code uses: a spot check that the parsing above sees them.
    for name in [
        gateway::telemetry::SOCKETS_OPEN,
        chat_api::telemetry::HTTP_REQUESTS_TOTAL,
        shared::telemetry::REDIS_OP_SECONDS,
        shared::telemetry::BUS_DROPPED_TOTAL,
    ] {
        assert!(defined.contains(name), "{name} not found among {defined:?}");
    }
    let documented = documented_metrics();
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    let unregistered: Vec<_> = documented.difference(&defined).collect();
    assert!(
        undocumented.is_empty(),
        "defined in a telemetry module but missing from docs/OPERATIONS.md: {undocumented:?}"
    );
    assert!(
        unregistered.is_empty(),
        "documented in docs/OPERATIONS.md but defined in no telemetry module: {unregistered:?}"
    );
}

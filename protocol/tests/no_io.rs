//! The wire types build without I/O: nothing in this crate's dependency tree is an async runtime,
//! a Redis client, a metrics recorder or an HTTP stack, so that the fuzz targets and any client
//! link the codecs alone. Asks cargo for the resolved tree (normal dependencies only).

use std::process::Command;

/// Crates that mean I/O or services; none may be reachable from `chat-protocol`.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "mio",
    "fred",
    "metrics",
    "metrics-exporter-prometheus",
    "hyper",
    "reqwest",
    "socket2",
    "shared",
];

#[test]
fn the_protocol_crate_pulls_in_no_runtime_redis_or_metrics() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .args(["--manifest-path", manifest, "-p", "chat-protocol"])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"serde_json"), "unexpected tree:\n{tree}");
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| crates.contains(f)).collect();
    assert!(
        found.is_empty(),
        "chat-protocol depends on {found:?}:\n{tree}"
    );
}

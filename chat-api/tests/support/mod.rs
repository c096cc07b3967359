//! Multi-process test harness, one idea per file: the processes of a distributed deployment
//! (`cluster`: a private Redis, `gateway` and `chat-api serve` on free ports in one temp dir,
//! killed on drop, their logs printed when a test panics), an HTTP client of the public API
//! (`http`), a WebSocket client of the wire protocol (`ws`), a client that holds what it received
//! and catches up over HTTP (`catchup`), and senders that log what was acknowledged (`senders`).
//! Free ports, child processes and raw RESP requests come from `shared::testkit`.

// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

mod catchup;
mod cluster;
mod http;
mod senders;
mod ws;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub use catchup::*;
pub use cluster::*;
pub use http::*;
pub use senders::*;
pub use shared::testkit::{free_port, newest_stream_entry, redis_command, Proc, LOG_TAIL_LINES};
pub use ws::*;

/// The HS256 secret every process of a [`Cluster`] verifies tokens with.
pub const SECRET: &str = "distributed-test-secret-0123456789abcdef";

/// Runs `test` under `limit`, after making sure the gateway binary is built (a build can take a
/// while on a busy machine and is not part of what is tested).
pub async fn bounded_by<F: std::future::Future<Output = ()>>(limit: Duration, test: F) {
    tokio::task::spawn_blocking(gateway_binary)
        .await
        .expect("building the gateway binary");
    tokio::time::timeout(limit, test)
        .await
        .expect("test ran past its time limit");
}

/// The `gateway` binary, built once per test run. Cargo only builds the binaries of the package
/// under test, and `gateway` belongs to another package of the workspace: build it next to
/// `chat-api` (a no-op when it is fresh) so that the test never runs a stale gateway.
pub fn gateway_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let api = Path::new(env!("CARGO_BIN_EXE_chat-api"));
        let dir = api.parent().expect("binary directory");
        let bin = dir.join("gateway");
        let Some(cargo) = std::env::var_os("CARGO") else {
            assert!(
                bin.is_file(),
                "{} is missing and CARGO is not set: run `cargo build -p gateway` first",
                bin.display()
            );
            return bin;
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        // The same selection as `cargo test --workspace` (and scripts/test.sh): another one
        // would unify dependency features differently and rebuild much of the graph.
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"])
            .arg("--manifest-path")
            .arg(&manifest);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        let out = cmd.output().expect("running cargo to build the gateway");
        assert!(
            out.status.success(),
            "`cargo build --workspace --bins --tests` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    shared::ids::now_unix_ms()
}

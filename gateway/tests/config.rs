//! Invalid configuration makes the real `gateway` binary exit non-zero before it binds its port,
//! with a message naming the setting. Each run holds `GATEWAY_ADDR` open itself: had the binary
//! reached its bind, it would report "binding GATEWAY_ADDR" (checked by the control case, which
//! has a valid configuration and a real Redis).

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "config-test-secret-0123456789abcdef0123";
/// A run that has not exited by then hangs on something (a bug, or a reachable dependency).
const EXIT_LIMIT: Duration = Duration::from_secs(30);

use shared::testkit::{closed_redis_url as closed_redis, run_to_exit, Exit as Outcome};

/// Runs the gateway with `env` on top of a valid base configuration, with its port held.
fn run(redis_url: &str, env: &[(&str, &str)]) -> Outcome {
    let held = TcpListener::bind("127.0.0.1:0").expect("binding a port to hold");
    let addr = held.local_addr().expect("held addr").to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("GATEWAY_ADDR", &addr)
        .env("REDIS_URL", redis_url)
        .env("JWT_SECRET", SECRET)
        .env("NODE_ID", "config-test");
    let out = run_to_exit(&mut cmd, env, EXIT_LIMIT);
    drop(held);
    out
}

fn assert_rejected(env: &[(&str, &str)], setting: &str) {
    let out = run(&closed_redis(), env);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "{env:?}: expected a non-zero exit, got {:?}\n{}",
        out.code,
        out.stderr
    );
    assert!(
        out.stderr.contains(setting),
        "{env:?}: the message does not name {setting}:\n{}",
        out.stderr
    );
    for sign in ["binding GATEWAY_ADDR", "gateway listening"] {
        assert!(
            !out.stderr.contains(sign),
            "{env:?}: got as far as binding ({sign}):\n{}",
            out.stderr
        );
    }
}

#[test]
fn bad_urls_are_rejected_before_binding() {
    assert_rejected(&[("REDIS_URL", "http://127.0.0.1:6379")], "REDIS_URL");
    assert_rejected(&[("REDIS_URL", "")], "REDIS_URL");
    let tls_url = closed_redis().replacen("redis://", "rediss://", 1);
    assert_rejected(
        &[
            ("REDIS_URL", tls_url.as_str()),
            ("REDIS_CA_FILE", "/nonexistent/redis-ca.pem"),
        ],
        "REDIS_CA_FILE",
    );
    // A CA file with a plain URL is a mistake, not ignored.
    assert_rejected(&[("REDIS_CA_FILE", "/etc/hostname")], "REDIS_CA_FILE");
}

#[test]
fn bad_keys_are_rejected_before_binding() {
    assert_rejected(
        &[
            ("JWT_SECRET", ""),
            ("JWT_ALGORITHM", "RS256"),
            ("JWT_PUBLIC_KEY_FILE", "/nonexistent/jwt-public.pem"),
        ],
        "JWT_PUBLIC_KEY_FILE",
    );
    assert_rejected(&[("JWT_SECRET", "short")], "JWT_SECRET");
    assert_rejected(&[("JWT_ALGORITHM", "none")], "JWT_ALGORITHM");
}

#[test]
fn zero_sizes_and_durations_are_rejected_before_binding() {
    for setting in [
        "SEND_QUEUE_FRAMES",
        "SEND_QUEUE_BYTES",
        "MAX_CONNECTIONS",
        "MAX_SOCKETS_PER_USER",
        "MAX_FRAMES_PER_SECOND",
        "STREAM_BATCH",
        "MAX_FRAME_BYTES",
        "MAX_HANDSHAKES_PER_IP",
    ] {
        assert_rejected(&[(setting, "0")], setting);
    }
    for setting in [
        "HEARTBEAT_INTERVAL",
        "IDLE_TIMEOUT",
        "DRAIN_DEADLINE",
        "NODE_TTL",
        "REDIS_TIMEOUT",
    ] {
        assert_rejected(&[(setting, "0s")], setting);
    }
    // A read larger than the smallest node-stream cap could not notice trimmed entries.
    assert_rejected(&[("STREAM_BATCH", "1001")], "STREAM_BATCH");
    assert_rejected(&[("DRAIN_WINDOW", "30s")], "DRAIN_WINDOW");
    // A read that waits for company longer than this would eat the delivery latency budget.
    assert_rejected(&[("STREAM_READ_LINGER", "51ms")], "STREAM_READ_LINGER");
    assert_rejected(&[("STREAM_READ_LINGER", "soon")], "STREAM_READ_LINGER");
    assert_rejected(&[("IDLE_TIMEOUT", "10s")], "IDLE_TIMEOUT");
    assert_rejected(
        &[("CONNECT_RATE_LIMITED_HOLD", "10s")],
        "CONNECT_RATE_LIMITED_HOLD",
    );
    assert_rejected(&[("NODE_ID", "bad node id")], "NODE_ID");
    assert_rejected(&[("WS_COMPRESSION", "yes")], "WS_COMPRESSION");
    assert_rejected(&[("GATEWAY_ADDR", "localhost")], "GATEWAY_ADDR");
    assert_rejected(
        &[("TRUSTED_PROXIES", "10.0.0.0/8,ingress")],
        "TRUSTED_PROXIES",
    );
    assert_rejected(&[("TRUSTED_PROXIES", "10.0.0.0/33")], "TRUSTED_PROXIES");
}

/// The control: with a valid configuration and a reachable Redis the binary does go on to bind,
/// and reports the held port under the setting's name, so the cases above would notice a bind.
#[test]
fn a_valid_configuration_reaches_the_bind() {
    let redis = shared::testkit::RedisServer::start().expect("starting a private redis-server");
    let out = run(&redis.url(), &[]);
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.stderr);
    assert!(
        out.stderr.contains("binding GATEWAY_ADDR"),
        "expected a bind failure on the held port:\n{}",
        out.stderr
    );
}

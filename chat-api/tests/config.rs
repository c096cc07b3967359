//! Invalid configuration makes the real `chat-api` binary (`serve` and `embedded`) exit non-zero
//! before it binds a port, with a message naming the setting. Each run holds its ports open
//! itself: had the binary reached a bind it would report "binding API_ADDR" or "binding
//! GATEWAY_ADDR", which the control case (a valid configuration) shows it does.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "config-test-secret-0123456789abcdef0123";
/// A run that has not exited by then hangs on something (a bug, or a reachable dependency).
const EXIT_LIMIT: Duration = Duration::from_secs(30);

use shared::testkit::{closed_redis_url as closed_redis, run_to_exit, Exit as Outcome};

fn hold() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a port to hold");
    let addr = l.local_addr().expect("held addr").to_string();
    (l, addr)
}

/// Runs `chat-api <sub>` with `env` on top of a valid base configuration (an empty value removes
/// the variable), with API_ADDR and GATEWAY_ADDR held.
fn run(sub: &str, env: &[(&str, &str)]) -> Outcome {
    let (api_port, api_addr) = hold();
    let (gw_port, gw_addr) = hold();
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-api"));
    cmd.arg(sub)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        // Configuration errors print one line whatever this says (no backtrace).
        .env("RUST_BACKTRACE", "1")
        .env("API_ADDR", &api_addr)
        .env("GATEWAY_ADDR", &gw_addr)
        .env("JWT_SECRET", SECRET)
        .env("DATA_DIR", data.path());
    if sub == "serve" {
        cmd.env("REDIS_URL", closed_redis()).env(
            "STORE_URL",
            format!("sqlite:{}", data.path().join("chat.db").display()),
        );
    }
    let out = run_to_exit(&mut cmd, env, EXIT_LIMIT);
    drop((api_port, gw_port));
    out
}

fn assert_rejected(sub: &str, env: &[(&str, &str)], setting: &str) {
    let out = run(sub, env);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "{sub} {env:?}: expected a non-zero exit, got {:?}\n{}",
        out.code,
        out.stderr
    );
    assert!(
        out.stderr.contains(setting),
        "{sub} {env:?}: the message does not name {setting}:\n{}",
        out.stderr
    );
    assert_one_line_error(&out.stderr, setting);
    for sign in ["binding API_ADDR", "binding GATEWAY_ADDR", "listening"] {
        assert!(
            !out.stderr.contains(sign),
            "{sub} {env:?}: got as far as binding ({sign}):\n{}",
            out.stderr
        );
    }
}

/// The failure is one `error: …` (ours: one line; clap's usage errors add their usage lines
/// after it) naming `setting`, with no backtrace.
fn assert_one_line_error(stderr: &str, setting: &str) {
    let errors = stderr.lines().filter(|l| l.starts_with("error: ")).count();
    let from_error = stderr.find("error: ").map_or("", |i| &stderr[i..]);
    assert!(
        errors == 1 && from_error.contains(setting),
        "expected one `error:` naming {setting}:\n{stderr}"
    );
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Backtrace"),
        "a configuration error printed a backtrace:\n{stderr}"
    );
}

#[test]
fn token_refuses_a_secret_the_servers_refuse() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-api"));
    cmd.args(["token", "--sub", "alice"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1");
    let short = run_to_exit(&mut cmd, &[("JWT_SECRET", "short")], EXIT_LIMIT);
    assert!(
        short.code.is_some_and(|c| c != 0),
        "a short JWT_SECRET printed a token:\n{}",
        short.stderr
    );
    assert_one_line_error(&short.stderr, "JWT_SECRET");
    let ok = run_to_exit(&mut cmd, &[("JWT_SECRET", SECRET)], EXIT_LIMIT);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}

#[test]
fn bad_urls_are_rejected_before_binding() {
    assert_rejected("serve", &[("STORE_URL", "mysql://db/chat")], "STORE_URL");
    assert_rejected("serve", &[("STORE_URL", "scylla://")], "STORE_URL");
    assert_rejected("serve", &[("STORE_URL", "")], "STORE_URL");
    assert_rejected(
        "serve",
        &[("REDIS_URL", "http://127.0.0.1:6379")],
        "REDIS_URL",
    );
    assert_rejected("serve", &[("REDIS_URL", "")], "REDIS_URL");
    assert_rejected(
        "serve",
        &[
            ("REDIS_URL", "rediss://127.0.0.1:1"),
            ("REDIS_CA_FILE", "/nonexistent/redis-ca.pem"),
        ],
        "REDIS_CA_FILE",
    );
    assert_rejected("embedded", &[("STORE_URL", "sqlite:")], "STORE_URL");
    assert_rejected("serve", &[("API_ADDR", "not-an-address")], "API_ADDR");
    assert_rejected(
        "serve",
        &[("API_RATE_LIMITED_HOLD", "10s")],
        "API_RATE_LIMITED_HOLD",
    );
}

/// Settings that would break the ScyllaDB store's guarantees exit before any connection: a
/// listener stands where the ScyllaDB node would be, and nothing connects to it.
#[test]
fn scylla_settings_that_break_guarantees_are_refused_before_connecting() {
    let scylla = TcpListener::bind("127.0.0.1:0").expect("a port standing in for ScyllaDB");
    scylla.set_nonblocking(true).expect("non-blocking");
    let node = scylla.local_addr().expect("addr");
    for (option, setting) in [
        ("consistency=ONE", "consistency"),
        ("consistency=LOCAL_ONE", "consistency"),
        ("consistency=ALL", "consistency"),
        ("request_timeout=1s&server_timeout=2s", "request_timeout"),
        ("local_dc=", "local_dc"),
    ] {
        let url = format!("scylla://{node}/chat?{option}");
        assert_rejected("serve", &[("STORE_URL", &url)], setting);
        let out = run_to_exit(
            Command::new(env!("CARGO_BIN_EXE_chat-api"))
                .arg("migrate")
                .env_clear()
                .env("STORE_URL", &url),
            &[],
            EXIT_LIMIT,
        );
        assert!(
            out.code.is_some_and(|c| c != 0),
            "migrate {url}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(setting),
            "migrate {url}:\n{}",
            out.stderr
        );
        assert!(
            matches!(scylla.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{url}: the process connected to ScyllaDB before refusing its configuration"
        );
    }
    let out = run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_chat-api"))
            .arg("migrate")
            .env_clear()
            .env("STORE_URL", format!("scylla://{node}/chat"))
            .env("SCYLLA_DDL_TIMEOUT", "0s"),
        &[],
        EXIT_LIMIT,
    );
    assert!(
        out.stderr.contains("ddl-timeout") || out.stderr.contains("SCYLLA_DDL_TIMEOUT"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_keys_are_rejected_before_binding() {
    for sub in ["serve", "embedded"] {
        assert_rejected(
            sub,
            &[
                ("JWT_SECRET", ""),
                ("JWT_ALGORITHM", "EdDSA"),
                ("JWT_PUBLIC_KEY_FILE", "/nonexistent/jwt-public.pem"),
            ],
            "JWT_PUBLIC_KEY_FILE",
        );
        assert_rejected(sub, &[("JWT_SECRET", "too-short")], "JWT_SECRET");
    }
    assert_rejected("serve", &[("JWT_SECRET", "")], "JWT_SECRET");
}

#[test]
fn zero_sizes_are_rejected_before_binding() {
    for setting in [
        "API_MAX_REQUEST_BODY_BYTES",
        "API_MAX_MESSAGE_BYTES",
        "API_MAX_CLIENT_MSG_ID_CHARS",
        "API_MAX_MEMBERS_PER_CHAT",
        "API_PAGE_SIZE_DEFAULT",
        "API_MAX_PRESENCE_USERS",
        "API_MAX_PUSH_USERS",
        "SQLITE_CONNECTIONS",
    ] {
        assert_rejected("serve", &[(setting, "0")], setting);
    }
    assert_rejected("serve", &[("API_PAGE_SIZE_MAX", "0")], "API_PAGE_SIZE_MAX");
    for setting in [
        "API_REQUEST_TIMEOUT",
        "API_FANOUT_TIMEOUT",
        "REDIS_TIMEOUT",
        "ROUTE_SWEEP_INTERVAL",
        "API_HEADER_READ_TIMEOUT",
        "API_KEEP_ALIVE_TIMEOUT",
    ] {
        assert_rejected("serve", &[(setting, "0s")], setting);
    }
    assert_rejected("serve", &[("WORKER_ID", "1024")], "WORKER_ID");
    // embedded validates the gateway's settings too
    assert_rejected(
        "embedded",
        &[("SEND_QUEUE_FRAMES", "0")],
        "SEND_QUEUE_FRAMES",
    );
    assert_rejected("embedded", &[("DRAIN_WINDOW", "1m")], "DRAIN_WINDOW");
    assert_rejected(
        "embedded",
        &[("API_MAX_MESSAGE_BYTES", "0")],
        "API_MAX_MESSAGE_BYTES",
    );
}

#[test]
fn bad_notification_settings_are_rejected_before_binding() {
    let url = ("NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hook");
    let secret = ("NOTIFY_WEBHOOK_SECRET", "0123456789abcdef");
    assert_rejected("embedded", &[url], "NOTIFY_WEBHOOK_SECRET");
    assert_rejected(
        "embedded",
        &[url, ("NOTIFY_WEBHOOK_SECRET", "short")],
        "NOTIFY_WEBHOOK_SECRET",
    );
    // serve checks them before it connects to Redis (unreachable here).
    assert_rejected(
        "serve",
        &[("NOTIFY_WEBHOOK_URL", "https://push.example/hook"), secret],
        "NOTIFY_WEBHOOK_URL",
    );
    assert_rejected(
        "serve",
        &[url, secret, ("NOTIFY_MAX_ATTEMPTS", "0")],
        "NOTIFY_MAX_ATTEMPTS",
    );
    assert_rejected(
        "serve",
        &[url, secret, ("NOTIFY_CLAIM_IDLE", "1s")],
        "NOTIFY_CLAIM_IDLE",
    );
}

/// The control: a valid configuration goes on to bind, and reports the held port under the
/// setting's name, so the cases above would notice a bind.
#[test]
fn a_valid_configuration_reaches_the_bind() {
    let out = run("embedded", &[]);
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.stderr);
    assert!(
        out.stderr.contains("binding API_ADDR"),
        "expected a bind failure on the held port:\n{}",
        out.stderr
    );
}

/// With no JWT key configured, `embedded` runs on the built-in development key, which is public:
/// a non-loopback address is refused before any bind, in one line that names JWT_SECRET and the
/// flag that overrides it.
#[test]
fn the_development_key_is_refused_on_a_public_address() {
    for setting in ["API_ADDR", "GATEWAY_ADDR"] {
        let env = [("JWT_SECRET", ""), (setting, "0.0.0.0:1")];
        assert_rejected("embedded", &env, "JWT_SECRET");
        let out = run("embedded", &env);
        let refusal: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("refusing"))
            .collect();
        assert_eq!(refusal.len(), 1, "{}", out.stderr);
        assert!(
            refusal[0].contains(setting)
                && refusal[0].contains("--insecure-dev-key-on-public-address"),
            "{}",
            refusal[0]
        );
    }
}

/// The flag whose name says it is insecure lifts the refusal: the run goes on to bind.
#[test]
fn the_insecure_flag_allows_the_development_key_on_a_public_address() {
    let held = TcpListener::bind("0.0.0.0:0").expect("holding a port on all addresses");
    let addr = format!("0.0.0.0:{}", held.local_addr().unwrap().port());
    let out = run(
        "embedded",
        &[
            ("JWT_SECRET", ""),
            ("API_ADDR", &addr),
            ("INSECURE_DEV_KEY_PUBLIC", "true"),
        ],
    );
    assert!(
        out.stderr.contains("binding API_ADDR") && !out.stderr.contains("refusing"),
        "{}",
        out.stderr
    );
}

/// With the development key and no address given, `embedded` listens on loopback only. The run
/// stops at a bad STORE_URL, after the addresses are chosen (and logged) and before any bind.
#[test]
fn the_development_key_listens_on_loopback_by_default() {
    let out = run(
        "embedded",
        &[
            ("JWT_SECRET", ""),
            ("API_ADDR", ""),
            ("GATEWAY_ADDR", ""),
            ("STORE_URL", "sqlite:"),
        ],
    );
    assert!(out.code.is_some_and(|c| c != 0), "{}", out.stderr);
    // The log names both addresses (field names may be coloured, so only the values are matched).
    assert!(
        out.stderr.contains("127.0.0.1:8081")
            && out.stderr.contains("127.0.0.1:8080")
            && !out.stderr.contains("0.0.0.0"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("binding"), "{}", out.stderr);
}

/// A GET on loopback `port` with HTTP/1.1 over a plain socket; the body of a 200, else `None`.
fn get_body(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The document a running `chat-api` serves states the limits it was started with, not the
/// defaults: `API_MAX_MESSAGE_BYTES=8192` documents 8192.
#[test]
fn the_served_openapi_document_states_the_configured_limits() {
    let api_port = shared::testkit::free_port().expect("a free port");
    let gw_port = shared::testkit::free_port().expect("a free port");
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-api"));
    cmd.arg("embedded")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("API_ADDR", format!("127.0.0.1:{api_port}"))
        .env("GATEWAY_ADDR", format!("127.0.0.1:{gw_port}"))
        .env("JWT_SECRET", SECRET)
        .env("DATA_DIR", data.path())
        .env("API_MAX_MESSAGE_BYTES", "8192");
    let _api = shared::testkit::Proc::spawn("chat-api", cmd, data.path());
    let deadline = std::time::Instant::now() + EXIT_LIMIT;
    let doc = loop {
        if let Some(doc) = get_body(api_port, "/v1/openapi.json") {
            break doc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chat-api served no document"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("a JSON document");
    let body = &doc["components"]["schemas"]["SendMessage"]["properties"]["body"];
    assert_eq!(body["x-max-bytes"], 8192, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap_or_default()
            .contains("8192"),
        "{body}"
    );
}

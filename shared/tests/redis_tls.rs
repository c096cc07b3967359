//! The Redis route registry and node bus over TLS (`rediss://`) against a private `redis-server`
//! listening with a certificate from a throwaway CA, and the refusals a misconfigured client
//! meets: a server certificate from another CA, and a CA file that is not one.

use std::sync::Arc;
use std::time::Duration;

use shared::routing::conformance as suite;
use shared::routing::redis::{connect, RedisOptions};
use shared::routing::{NodeBus, RouteRegistry, RoutingError};
use shared::testkit::{RedisServer, TestCerts};

fn opts(ca_file: Option<std::path::PathBuf>) -> RedisOptions {
    RedisOptions {
        key_prefix: "tls:".into(),
        ca_file,
        // A refused handshake must fail fast, not wait out retries.
        command_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    }
}

fn refusal(result: Result<impl Sized, RoutingError>) -> String {
    match result {
        Ok(_) => panic!("connected, but the client should have refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn registry_and_bus_work_over_tls() {
    let server = RedisServer::start_tls().expect("redis-server with TLS");
    let url = server.tls_url().unwrap();
    let r = connect(&url, opts(server.tls_ca_file()))
        .await
        .expect("connect over TLS with the test CA");
    let (reg, bus): (Arc<dyn RouteRegistry>, Arc<dyn NodeBus>) =
        (r.registry.clone(), r.bus.clone());
    suite::registry_routes_and_liveness(reg.clone()).await;
    suite::registry_presence(reg.clone()).await;
    suite::bus_delivers_per_node(bus.clone()).await;
    suite::fan_out_groups_by_node(reg, bus).await;
    r.quit().await;
    // The TLS port speaks only TLS: a plain client there gets nowhere.
    let plain_on_tls_port = server
        .tls_url()
        .unwrap()
        .replacen("rediss://", "redis://", 1);
    refusal(connect(&plain_on_tls_port, opts(None)).await);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let server = RedisServer::start_tls().expect("redis-server with TLS");
    let other = TestCerts::generate(server.dir(), "other").unwrap();
    let err = refusal(connect(&server.tls_url().unwrap(), opts(Some(other.ca_file))).await);
    assert!(
        err.contains("REDIS_CA_FILE") && err.to_lowercase().contains("certificate"),
        "the error should name the certificate problem and the setting: {err}"
    );
}

#[tokio::test]
async fn bad_ca_settings_are_refused_before_connecting() {
    let server = RedisServer::start_tls().expect("redis-server with TLS");
    let tls_url = server.tls_url().unwrap();
    let missing = server.dir().join("missing.pem");
    let err = refusal(connect(&tls_url, opts(Some(missing))).await);
    assert!(
        err.contains("REDIS_CA_FILE") && err.contains("cannot read"),
        "{err}"
    );

    let not_pem = server.dir().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = refusal(connect(&tls_url, opts(Some(not_pem))).await);
    assert!(err.contains("no PEM certificate"), "{err}");

    // A CA file with a plain redis:// URL is a mistake, not something to ignore.
    let err = refusal(connect(&server.url(), opts(server.tls_ca_file())).await);
    assert!(err.contains("not a TLS URL"), "{err}");
}

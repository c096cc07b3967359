//! The message-store conformance suite run against `ScyllaStore` on a real ScyllaDB. Needs
//! `SCYLLA_URI=host:9042` and `--ignored` (`scripts/scylla-conformance.sh` starts ScyllaDB in
//! Docker and does both). Without them these tests show as "ignored, SKIPPED: …", never as passed:
//! the kassandra-based `scylla_wiring` tests check wiring only, not ranges, LWT, ordering or TTL.
//! Each run migrates a fresh keyspace (RF 1, tablets off) and drops nothing: keyspaces are named
//! `conformance_<unix ms>` so runs never collide.

use std::sync::Arc;
use std::time::Duration;

use chat_api::store::scylla::migrate::{self, Replication};
use chat_api::store::scylla::{ScyllaConfig, ScyllaStore};
use chat_api::store::MessageStore;

const SKIPPED: &str = "SKIPPED: the ScyllaDB conformance suite needs a real ScyllaDB; \
     set SCYLLA_URI=host:9042 and run with --ignored (scripts/scylla-conformance.sh)";

fn uri() -> String {
    std::env::var("SCYLLA_URI").unwrap_or_else(|_| panic!("{SKIPPED}"))
}

/// A fresh keyspace, migrated as `chat-api migrate` does it, and the store `serve` would build.
async fn store() -> (Arc<dyn MessageStore>, ScyllaConfig) {
    let keyspace = format!("conformance_{}", shared::ids::now_unix_ms());
    let config = ScyllaConfig::from_url(&format!("scylla://{}/{keyspace}", uri()))
        .expect("SCYLLA_URI is host:port");
    let session = config
        .migrate_session_builder(Duration::from_secs(60))
        .build()
        .await
        .expect("connect to SCYLLA_URI");
    migrate::migrate(&session, &keyspace, &Replication::parse("1").unwrap())
        .await
        .expect("migrate a fresh keyspace");
    let layout = migrate::keyspace_layout(&session, &keyspace)
        .await
        .expect("the keyspace is in the cluster metadata");
    assert!(
        !layout.tablets,
        "migrate must create the keyspace with tablets disabled (LWT needs vnodes)"
    );
    drop(session);
    let store = ScyllaStore::connect(&config)
        .await
        .expect("ScyllaStore connects to a migrated keyspace");
    (Arc::new(store), config)
}

#[tokio::test]
#[ignore = "SKIPPED: needs a real ScyllaDB (SCYLLA_URI=host:9042, --ignored; scripts/scylla-conformance.sh)"]
async fn scylla_store_passes_the_conformance_suite() {
    eprintln!("running the ScyllaDB conformance suite against {}", uri());
    let (store, _) = store().await;
    tokio::time::timeout(
        Duration::from_secs(180),
        chat_api::store::conformance::run_all(store),
    )
    .await
    .expect("the conformance suite finished within 180 s");
}

/// A keyspace created with tablets (the server default since 6.0) is refused by `serve` before
/// any request, with what to do, instead of failing every send with a 500.
#[tokio::test]
#[ignore = "SKIPPED: needs a real ScyllaDB (SCYLLA_URI=host:9042, --ignored; scripts/scylla-conformance.sh)"]
async fn serve_refuses_a_keyspace_with_tablets() {
    let keyspace = format!("tablets_{}", shared::ids::now_unix_ms());
    let config = ScyllaConfig::from_url(&format!("scylla://{}/{keyspace}", uri())).unwrap();
    let session = config
        .migrate_session_builder(Duration::from_secs(60))
        .build()
        .await
        .expect("connect to SCYLLA_URI");
    let created = session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = {{'class': \
                 'NetworkTopologyStrategy', 'replication_factor': 1}} AND tablets = {{'enabled': true}}"
            ),
            (),
        )
        .await;
    if let Err(e) = created {
        eprintln!("this server cannot create a keyspace with tablets ({e}); nothing to refuse");
        return;
    }
    migrate::migrate(&session, &keyspace, &Replication::parse("1").unwrap())
        .await
        .expect("the tables apply");
    let err = ScyllaStore::connect(&config)
        .await
        .expect_err("a keyspace with tablets is refused");
    assert!(err.to_string().contains("tablets"), "{err}");
}

//! The message-store conformance suite run against `ScyllaStore` on a real ScyllaDB. Needs
//! `SCYLLA_URI=host:9042` and `--ignored`: without a server these tests show as ignored, never as
//! passed. Each run migrates a fresh keyspace (RF 1) and drops nothing: keyspaces are named
//! `conformance_<unix ms>` so runs never collide.

use std::sync::Arc;

use chat_api::migrate::{self, Replication};
use chat_api::store::scylla::{ScyllaConfig, ScyllaStore};
use chat_api::store::MessageStore;

async fn store() -> Arc<dyn MessageStore> {
    let uri = std::env::var("SCYLLA_URI")
        .expect("SCYLLA_URI=host:9042 must be set to run the ScyllaDB conformance suite");
    let keyspace = format!("conformance_{}", shared::ids::now_unix_ms());
    let config = ScyllaConfig::from_url(&format!("scylla://{uri}/{keyspace}"))
        .expect("SCYLLA_URI is host:port");
    let session = config
        .session_builder()
        .build()
        .await
        .expect("connect to SCYLLA_URI");
    migrate::migrate(&session, &keyspace, &Replication::parse("1").unwrap())
        .await
        .expect("migrate a fresh keyspace");
    drop(session);
    Arc::new(
        ScyllaStore::connect(&config)
            .await
            .expect("ScyllaStore connects to a migrated keyspace"),
    )
}

#[tokio::test]
#[ignore = "needs a real ScyllaDB: set SCYLLA_URI=host:9042 and run with --ignored"]
async fn scylla_store_passes_the_conformance_suite() {
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        chat_api::store::conformance::run_all(store().await),
    )
    .await
    .expect("the conformance suite finished within 120 s");
}

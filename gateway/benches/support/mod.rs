//! What the gateway's micro-benchmarks share: a typical chat `message` frame and a node with
//! in-process dependencies to deliver through.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use gateway::node::Node;
use gateway::{Deps, Settings};
use shared::auth::{JwtSettings, KeySource, Verifier, DEV_SECRET};
use shared::protocol::{Message, ServerFrame};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::Id;

/// A typical `message` (55-byte body, ~230 bytes as JSON).
pub fn message_frame() -> ServerFrame {
    ServerFrame::Message {
        message: Message {
            chat_id: Id(7_123_456_789_012_345),
            message_id: Id(7_123_456_789_012_999),
            sender_id: "user-0042".into(),
            client_msg_id: "c-0001-abcdef".into(),
            body: "hello there, this is a chat message of a typical length".into(),
            sent_at_ms: 1_790_000_000_000,
            edited_at: None,
            deleted: false,
            change_id: None,
        },
    }
}

/// A node with default settings and in-process registry, bus and rate limiter.
pub fn node() -> Node {
    let verifier = Verifier::new(&JwtSettings {
        algorithm: jsonwebtoken::Algorithm::HS256,
        key: KeySource::Secret(DEV_SECRET.as_bytes().to_vec()),
        issuer: None,
        audience: None,
        leeway: Duration::ZERO,
    })
    .unwrap();
    Node::new(
        Settings::default(),
        Deps {
            registry: Arc::new(MemoryRegistry::new()),
            bus: Arc::new(MemoryBus::default()),
            verifier,
            metrics: None,
            limiter: shared::ratelimit::memory(),
            revocations: Arc::new(shared::revocation::RevocationCheck::memory()),
        },
    )
}

/// Short runs: 0.5 s warm-up, 2 s and 20 samples per benchmark.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

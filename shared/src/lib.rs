//! Types and helpers shared by the gateway and chat-api: the wire protocol, ids, auth, close codes,
//! configuration helpers and the routing traits (route registry and node bus) with their
//! in-process implementations.

pub mod auth;
pub mod backoff;
pub mod client_ip;
pub mod config;
pub mod ratelimit;
pub mod revocation;
pub mod routing;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

// The wire types live in `chat-protocol` (no I/O); re-exported so `shared::protocol::…` paths stay.
pub use chat_protocol::{close, ids, protocol};
pub use chat_protocol::{Id, IdGenerator};

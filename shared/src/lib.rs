//! Types and helpers shared by the gateway and chat-api: the wire protocol, ids, auth, close codes,
//! configuration helpers and the routing traits (route registry and node bus) with their
//! in-process implementations.

pub mod auth;
pub mod client_ip;
pub mod close;
pub mod config;
pub mod ids;
pub mod protocol;
pub mod ratelimit;
pub mod revocation;
pub mod routing;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use ids::{Id, IdGenerator};

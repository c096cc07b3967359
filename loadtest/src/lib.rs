//! The load generator: scenarios that drive a running system over real sockets and report what
//! they saw. `connect` opens many idle authenticated sockets from several worker processes and
//! loopback source addresses and measures the gateway's resident memory per socket; `fanout`
//! measures deliveries and frames per gateway core; `latency` end-to-end latency, open loop;
//! `soak` churns sockets and samples memory over time; `catchup` drops sockets at random under a
//! steady stream and checks that the catch-up algorithm leaves every member holding everything;
//! `storm` has many clients of a few hot chats catch up at once and counts the store reads.

pub mod catchup;
pub mod connect;
pub mod eio;
pub mod fanout;
pub mod flood;
pub mod latency;
pub mod plot;
pub mod proc;
pub mod rawws;
pub mod report;
pub mod soak;
pub mod storm;
pub mod util;

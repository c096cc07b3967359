//! The load generator: scenarios that drive a running system over real sockets and report what
//! they saw. `connect` opens many idle authenticated sockets from several worker processes and
//! loopback source addresses and measures the gateway's resident memory per socket.

pub mod connect;
pub mod latency;
pub mod proc;

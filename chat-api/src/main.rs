//! The `chat-api` binary.
fn main() {}

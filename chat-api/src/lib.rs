//! chat-api: the stateless HTTP API (chats, members, messages, history, push, presence) and the
//! message store behind it.

pub mod migrate;
pub mod store;

//! chat-api: the stateless HTTP API (chats, members, messages, history, push, presence) and the
//! message store behind it.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod error;
pub mod extract;
pub mod fanout;
pub mod notify;
pub mod presence;
pub mod store;
pub mod telemetry;
pub mod web;

pub use app::{app, routes, run, AppState};
pub use config::{ApiArgs, Limits};
pub use error::ApiError;

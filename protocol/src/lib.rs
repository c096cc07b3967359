//! The wire contract between clients and the services, without I/O: versioned frames and their
//! JSON and MessagePack codecs, snowflake ids, and the close codes. `shared` re-exports these
//! modules (`shared::protocol`, `shared::ids`, `shared::close`), so both services and their tests
//! keep one path; the fuzz targets depend on this crate alone.

pub mod close;
pub mod ids;
pub mod protocol;

pub use ids::{Id, IdGenerator};

//! Snowflake-style 64-bit ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker id and
//! 12 bits of sequence. Ids from one generator are strictly increasing, so ordering by id is
//! ordering by creation time; worker ids keep replicas apart.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const WORKER_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const WORKER_ID_MAX: u16 = (1 << WORKER_BITS) - 1;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;

/// A chat or message id. Serialized as a decimal string so that JavaScript clients keep all 64
/// bits; deserialized from a string or a non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

impl Id {
    /// The smallest id whose timestamp is `unix_ms` (useful as a range bound).
    pub fn first_at(unix_ms: u64) -> Id {
        Id(unix_ms.saturating_sub(EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS))
    }

    /// Milliseconds since the Unix epoch at which this id was made.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
    }

    pub fn worker(self) -> u16 {
        ((self.0 >> SEQUENCE_BITS) & u64::from(WORKER_ID_MAX)) as u16
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Id {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Id)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-bit id as a decimal string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                v.parse()
                    .map_err(|_| E::custom("id must be a decimal 64-bit integer"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom("id must not be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Makes ids for one worker. Lock-free: the last (timestamp, sequence) pair lives in one atomic.
#[derive(Debug)]
pub struct IdGenerator {
    worker: u16,
    /// `(ms since EPOCH) << SEQUENCE_BITS | sequence` of the last id handed out.
    last: AtomicU64,
}

impl IdGenerator {
    /// # Panics
    /// If `worker` exceeds [`WORKER_ID_MAX`]: worker ids are validated where they are configured.
    pub fn new(worker: u16) -> Self {
        assert!(
            worker <= WORKER_ID_MAX,
            "worker id {worker} exceeds {WORKER_ID_MAX}"
        );
        IdGenerator {
            worker,
            last: AtomicU64::new(0),
        }
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    pub fn next_id(&self) -> Id {
        let now = now_unix_ms().saturating_sub(EPOCH_MS) << SEQUENCE_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            // A clock that steps back, or more than 4096 ids in one millisecond, borrows from the
            // next millisecond rather than repeating an id.
            let next = if now > last { now } else { last + 1 };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ms = next >> SEQUENCE_BITS;
                    let seq = next & SEQUENCE_MASK;
                    return Id((ms << (WORKER_BITS + SEQUENCE_BITS))
                        | (u64::from(self.worker) << SEQUENCE_BITS)
                        | seq);
                }
                Err(actual) => last = actual,
            }
        }
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a user id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserIdError {
    #[error("user id must be 1 to 128 bytes long")]
    Length,
    #[error("user id may contain only A-Z, a-z, 0-9 and _ . : @ -")]
    Character,
}

/// Checks a user id (a JWT `sub`): 1–128 bytes from `[A-Za-z0-9_.:@-]`.
pub fn validate_user_id(id: &str) -> Result<(), UserIdError> {
    if id.is_empty() || id.len() > 128 {
        return Err(UserIdError::Length);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
    {
        return Err(UserIdError::Character);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_worker_and_time() {
        let g = IdGenerator::new(517);
        let before = now_unix_ms();
        let mut prev = Id(0);
        for _ in 0..20_000 {
            let id = g.next_id();
            assert!(id > prev, "{id} after {prev}");
            assert_eq!(id.worker(), 517);
            prev = id;
        }
        // 20k ids may borrow a few milliseconds from the future, never many.
        assert!(prev.unix_ms() >= before && prev.unix_ms() < now_unix_ms() + 10);
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let g = std::sync::Arc::new(IdGenerator::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..5000).map(|_| g.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<Id> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn id_serializes_as_string_and_reads_both_forms() {
        let id = Id(u64::MAX - 3);
        let s = serde_json::to_string(&id).unwrap();
        assert_eq!(s, format!("\"{}\"", u64::MAX - 3));
        assert_eq!(serde_json::from_str::<Id>(&s).unwrap(), id);
        assert_eq!(serde_json::from_str::<Id>("42").unwrap(), Id(42));
        assert!(serde_json::from_str::<Id>("-1").is_err());
        assert!(serde_json::from_str::<Id>("\"x1\"").is_err());
    }

    #[test]
    fn first_at_bounds_ids_of_that_millisecond() {
        let g = IdGenerator::new(3);
        let id = g.next_id();
        assert!(Id::first_at(id.unix_ms()) <= id);
        assert!(Id::first_at(id.unix_ms() + 1) > id);
    }

    #[test]
    fn user_ids() {
        assert!(validate_user_id("alice@example.com").is_ok());
        assert!(validate_user_id("svc:billing-1_x").is_ok());
        assert_eq!(validate_user_id(""), Err(UserIdError::Length));
        assert_eq!(validate_user_id(&"a".repeat(129)), Err(UserIdError::Length));
        assert_eq!(validate_user_id("a b"), Err(UserIdError::Character));
        assert_eq!(validate_user_id("ü"), Err(UserIdError::Character));
    }
}

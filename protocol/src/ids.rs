//! Snowflake-style 64-bit ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of worker id and
//! 12 bits of sequence. Ids from one generator are strictly increasing, so ordering by id is
//! ordering by creation time; worker ids keep replicas apart. The time comes from an [`IdClock`]:
//! the local wall clock (one process), or a [`ReferenceClock`] that API replicas set from one
//! shared source (Redis `TIME`) so that their ids agree on time whatever their hosts' clocks say.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const WORKER_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const WORKER_ID_MAX: u16 = (1 << WORKER_BITS) - 1;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;
/// Bits below an id's millisecond timestamp.
const TIME_SHIFT: u32 = WORKER_BITS + SEQUENCE_BITS;

/// A chat or message id. Serialized as a decimal string so that JavaScript clients keep all 64
/// bits; deserialized from a string or a non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub u64);

/// The OpenAPI schema of an id: what clients see on the wire, a decimal string.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9]{1,20}$"))
            .description(Some("64-bit id as a decimal string"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Id {}

impl Id {
    /// The smallest id whose timestamp is `unix_ms` (useful as a range bound).
    pub fn first_at(unix_ms: u64) -> Id {
        Id(unix_ms.saturating_sub(EPOCH_MS) << TIME_SHIFT)
    }

    /// Milliseconds since the Unix epoch at which this id was made.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> TIME_SHIFT) + EPOCH_MS
    }

    pub fn worker(self) -> u16 {
        ((self.0 >> SEQUENCE_BITS) & u64::from(WORKER_ID_MAX)) as u16
    }

    /// This id moved `span` back in time, in id space (`id − ms << 22`), saturating at 0: every id
    /// made at least `span` before this one is at or below it.
    pub fn earlier_by(self, span: Duration) -> Id {
        let ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        Id(self.0.saturating_sub(ms.saturating_mul(1 << TIME_SHIFT)))
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

/// Where an [`IdGenerator`] reads the time.
#[derive(Clone, Debug, Default)]
pub enum IdClock {
    /// The local wall clock: one process (embedded mode) has nothing to agree with.
    #[default]
    Local,
    /// A clock set from a source shared by every replica (distributed mode: Redis `TIME`).
    Reference(Arc<ReferenceClock>),
}

impl IdClock {
    /// Unix milliseconds now, by this clock.
    pub fn now_unix_ms(&self) -> u64 {
        match self {
            IdClock::Local => now_unix_ms(),
            IdClock::Reference(clock) => clock.now_unix_ms(),
        }
    }
}

/// A clock that runs on the local monotonic clock from a reading of a reference clock, so that a
/// stepped or skewed local wall clock does not move it. It starts at the local wall clock's
/// reading; [`ReferenceClock::set`] sets it from a measurement. Lock-free.
#[derive(Debug)]
pub struct ReferenceClock {
    anchor: Instant,
    /// Reference time at `anchor`, in Unix microseconds, from the last measurement.
    at_anchor_us: AtomicU64,
}

impl Default for ReferenceClock {
    fn default() -> Self {
        ReferenceClock::new()
    }
}

/// One measurement of the local clock against the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    /// Reference minus local wall clock, in milliseconds (positive: the local clock is behind).
    pub offset_ms: i64,
    /// The round trip of the measurement; the reading is placed at its midpoint, so the clock is
    /// right within half of it.
    pub round_trip: Duration,
}

impl ReferenceClock {
    pub fn new() -> ReferenceClock {
        ReferenceClock {
            anchor: Instant::now(),
            at_anchor_us: AtomicU64::new(now_unix_ms().saturating_mul(1000)),
        }
    }

    /// Unix milliseconds now, by the reference as last measured.
    pub fn now_unix_ms(&self) -> u64 {
        let elapsed_us = u64::try_from(self.anchor.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.at_anchor_us
            .load(Ordering::Acquire)
            .saturating_add(elapsed_us)
            / 1000
    }

    /// Sets the clock from `reference_unix_us`, a reading of the reference asked for at `sent`
    /// and answered at `received` (local instants); the reading is taken to be from the midpoint.
    pub fn set(&self, reference_unix_us: u64, sent: Instant, received: Instant) -> ClockSample {
        let round_trip = received.saturating_duration_since(sent);
        let midpoint = sent + round_trip / 2;
        let since_anchor_us =
            u64::try_from(midpoint.saturating_duration_since(self.anchor).as_micros())
                .unwrap_or(u64::MAX);
        self.at_anchor_us.store(
            reference_unix_us.saturating_sub(since_anchor_us),
            Ordering::Release,
        );
        ClockSample {
            offset_ms: self.offset_ms(),
            round_trip,
        }
    }

    /// Reference minus the local wall clock now, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        let reference = i64::try_from(self.now_unix_ms()).unwrap_or(i64::MAX);
        let local = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
        reference.saturating_sub(local)
    }
}

/// Makes ids for one worker. Lock-free: the last (timestamp, sequence) pair lives in one atomic.
#[derive(Debug)]
pub struct IdGenerator {
    worker: u16,
    clock: IdClock,
    /// `(ms since EPOCH) << SEQUENCE_BITS | sequence` of the last id handed out.
    last: AtomicU64,
}

impl IdGenerator {
    /// # Panics
    /// If `worker` exceeds [`WORKER_ID_MAX`]: worker ids are validated where they are configured.
    pub fn new(worker: u16) -> Self {
        Self::with_clock(worker, IdClock::Local)
    }

    /// A generator that reads the time from `clock`.
    ///
    /// # Panics
    /// If `worker` exceeds [`WORKER_ID_MAX`].
    pub fn with_clock(worker: u16, clock: IdClock) -> Self {
        assert!(
            worker <= WORKER_ID_MAX,
            "worker id {worker} exceeds {WORKER_ID_MAX}"
        );
        IdGenerator {
            worker,
            clock,
            last: AtomicU64::new(0),
        }
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    pub fn next_id(&self) -> Id {
        let now = self.clock.now_unix_ms().saturating_sub(EPOCH_MS) << SEQUENCE_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            // A clock that steps back (or is set back by a new measurement), or more than 4096
            // ids in one millisecond, borrows from the next millisecond rather than repeating or
            // lowering an id.
            let next = if now > last { now } else { last + 1 };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ms = next >> SEQUENCE_BITS;
                    let seq = next & SEQUENCE_MASK;
                    return Id((ms << TIME_SHIFT)
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
    fn earlier_by_moves_back_in_id_space_and_saturates() {
        let id = Id::first_at(EPOCH_MS + 100_000);
        let back = id.earlier_by(Duration::from_secs(30));
        assert_eq!(back, Id::first_at(EPOCH_MS + 70_000));
        assert_eq!(back.worker(), 0);
        let g = IdGenerator::new(9);
        let made = g.next_id();
        let floor = made.earlier_by(Duration::from_millis(1));
        assert_eq!(floor.unix_ms(), made.unix_ms() - 1);
        assert_eq!(
            (floor.worker(), floor.0 & SEQUENCE_MASK),
            (made.worker(), made.0 & SEQUENCE_MASK)
        );
        assert_eq!(Id(5).earlier_by(Duration::from_secs(30)), Id(0));
        assert_eq!(Id(u64::MAX).earlier_by(Duration::MAX), Id(0));
        assert_eq!(Id(u64::MAX).earlier_by(Duration::ZERO), Id(u64::MAX));
    }

    #[test]
    fn reference_clock_follows_the_reference_not_the_local_clock() {
        let clock = ReferenceClock::new();
        let local = now_unix_ms();
        // The reference is 3 s ahead of this host (its clock is 3 s behind).
        let sent = Instant::now();
        let received = sent + Duration::from_millis(4);
        let sample = clock.set((local + 3_000) * 1000, sent, received);
        assert_eq!(sample.round_trip, Duration::from_millis(4));
        assert!((2_990..=3_010).contains(&sample.offset_ms), "{sample:?}");
        let g = IdGenerator::with_clock(7, IdClock::Reference(Arc::new(clock)));
        let id = g.next_id();
        assert!(
            id.unix_ms() >= local + 2_990 && id.unix_ms() <= now_unix_ms() + 3_010,
            "{} vs local {local}",
            id.unix_ms()
        );
    }

    #[test]
    fn ids_never_go_back_when_the_reference_clock_is_set_back() {
        let clock = Arc::new(ReferenceClock::new());
        let g = IdGenerator::with_clock(3, IdClock::Reference(clock.clone()));
        let now = Instant::now();
        clock.set((now_unix_ms() + 10_000) * 1000, now, now);
        let ahead = g.next_id();
        // A new measurement puts the reference 10 s back (the old one was wrong).
        clock.set(now_unix_ms() * 1000, Instant::now(), Instant::now());
        let mut prev = ahead;
        for _ in 0..10_000 {
            let id = g.next_id();
            assert!(id > prev, "{id} after {prev}");
            prev = id;
        }
        // It borrowed from the future instead of going back: a few ms past `ahead`, no more.
        assert!(
            prev.unix_ms() <= ahead.unix_ms() + 3,
            "{} vs {}",
            prev.unix_ms(),
            ahead.unix_ms()
        );
        // Set forward again: ids jump with it.
        clock.set(
            (now_unix_ms() + 60_000) * 1000,
            Instant::now(),
            Instant::now(),
        );
        assert!(g.next_id().unix_ms() >= ahead.unix_ms() + 49_000);
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

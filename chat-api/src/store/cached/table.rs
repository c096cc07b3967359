//! The bounded per-chat tables of the cached store, and the single flight that coalesces
//! identical concurrent loads. A table keeps two generations capped in bytes (an approximate
//! LRU without a sweep, like the revocation cache): an entry is served while it is younger than
//! the TTL and stamped with the chat's current version token; the current generation becomes the
//! previous one when it would pass half the budget, and the previous one is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use shared::Id;

use crate::store::StoreError;

struct Slot<V> {
    token: u64,
    at: Instant,
    bytes: usize,
    value: Arc<V>,
}

struct Generations<V> {
    current: HashMap<Id, Slot<V>>,
    previous: HashMap<Id, Slot<V>>,
    current_bytes: usize,
    previous_bytes: usize,
}

/// Entries per chat, at most `budget` bytes in all (as the entries estimate themselves).
pub struct Table<V> {
    inner: Mutex<Generations<V>>,
    budget: usize,
    ttl: Duration,
    /// The `cache` label of the size gauges.
    name: &'static str,
}

impl<V> Table<V> {
    pub fn new(name: &'static str, budget: usize, ttl: Duration) -> Table<V> {
        Table {
            inner: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                current_bytes: 0,
                previous_bytes: 0,
            }),
            budget,
            ttl,
            name,
        }
    }

    /// The chat's entry if it was loaded under `token` less than the TTL ago. An entry found in
    /// the previous generation moves to the current one.
    pub fn get(&self, chat_id: Id, token: u64) -> Option<Arc<V>> {
        let mut g = self.inner.lock();
        let fresh = |s: &Slot<V>| s.token == token && s.at.elapsed() < self.ttl;
        if let Some(slot) = g.current.get(&chat_id) {
            return fresh(slot).then(|| slot.value.clone());
        }
        let slot = g.previous.remove(&chat_id)?;
        g.previous_bytes -= slot.bytes;
        if !fresh(&slot) {
            self.gauges(&g);
            return None;
        }
        let value = slot.value.clone();
        self.insert(&mut g, chat_id, slot);
        Some(value)
    }

    /// Keeps `value` (about `bytes` large) as the chat's entry under `token`; one larger than half
    /// the budget is not kept.
    pub fn put(&self, chat_id: Id, token: u64, value: Arc<V>, bytes: usize) {
        if bytes > self.budget / 2 {
            return;
        }
        let slot = Slot {
            token,
            at: Instant::now(),
            bytes,
            value,
        };
        let mut g = self.inner.lock();
        self.insert(&mut g, chat_id, slot);
    }

    /// Forgets the chat (its token changed: the entry can never be served again).
    pub fn remove(&self, chat_id: Id) {
        let mut g = self.inner.lock();
        if let Some(s) = g.current.remove(&chat_id) {
            g.current_bytes -= s.bytes;
        }
        if let Some(s) = g.previous.remove(&chat_id) {
            g.previous_bytes -= s.bytes;
        }
        self.gauges(&g);
    }

    fn insert(&self, g: &mut Generations<V>, chat_id: Id, slot: Slot<V>) {
        if let Some(old) = g.current.remove(&chat_id) {
            g.current_bytes -= old.bytes;
        }
        if let Some(old) = g.previous.remove(&chat_id) {
            g.previous_bytes -= old.bytes;
        }
        if g.current_bytes + slot.bytes > self.budget / 2 {
            g.previous = std::mem::take(&mut g.current);
            g.previous_bytes = std::mem::take(&mut g.current_bytes);
        }
        g.current_bytes += slot.bytes;
        g.current.insert(chat_id, slot);
        self.gauges(g);
    }

    fn gauges(&self, g: &Generations<V>) {
        use crate::telemetry::{CACHE_BYTES, CACHE_ENTRIES};
        metrics::gauge!(CACHE_BYTES, "cache" => self.name)
            .set((g.current_bytes + g.previous_bytes) as f64);
        metrics::gauge!(CACHE_ENTRIES, "cache" => self.name)
            .set((g.current.len() + g.previous.len()) as f64);
    }

    /// Bytes and entries held now.
    pub fn size(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (
            g.current_bytes + g.previous_bytes,
            g.current.len() + g.previous.len(),
        )
    }
}

/// A store failure that several waiters can share.
#[derive(Clone, Debug)]
pub struct Failed {
    unavailable: bool,
    message: String,
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        match e {
            StoreError::Unavailable(message) => Failed {
                unavailable: true,
                message,
            },
            StoreError::Internal(message) => Failed {
                unavailable: false,
                message,
            },
        }
    }
}

impl From<Failed> for StoreError {
    fn from(f: Failed) -> StoreError {
        if f.unavailable {
            StoreError::Unavailable(f.message)
        } else {
            StoreError::Internal(f.message)
        }
    }
}

/// Removes a finished load's key.
struct Landed<V>(Loads<V>, (Id, u64));

impl<V> Drop for Landed<V> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// The loads in flight, shared with their tasks.
type Loads<V> = Arc<Mutex<HashMap<(Id, u64), Flight<V>>>>;

type Flight<V> = Shared<BoxFuture<'static, Result<Arc<V>, Failed>>>;

/// Where [`Flights::run`]'s answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This call read the store.
    Loaded,
    /// It waited for an identical load in flight.
    Joined,
    /// A load had just put the entry.
    Landed,
}

/// Loads in flight, keyed by chat and version token: a request that read the same token as a
/// load in flight waits for that load instead of reading the store again. The key holds the
/// token because only a load that read the token the waiter read is current enough for it (see
/// ARCHITECTURE.md, "Caches"). Each load runs in its own task, so a cancelled request cancels
/// nothing and leaves no entry behind; the map holds at most one entry per load in flight.
pub struct Flights<V> {
    loads: Loads<V>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            loads: Arc::default(),
        }
    }
}

impl<V: Send + Sync + 'static> Flights<V> {
    /// The result of `load` for (`chat_id`, `token`), or of the identical load already in
    /// flight, or what `landed` finds when no load is in flight (checked under the lock, so a
    /// load that put its entry and left the map just before is not repeated: a load puts its
    /// entry before it leaves).
    pub async fn run<F>(
        &self,
        chat_id: Id,
        token: u64,
        landed: impl FnOnce() -> Option<Arc<V>>,
        load: F,
    ) -> (Result<Arc<V>, StoreError>, Source)
    where
        F: Future<Output = Result<Arc<V>, StoreError>> + Send + 'static,
    {
        let key = (chat_id, token);
        let (flight, source) = {
            let mut loads = self.loads.lock();
            match loads.get(&key) {
                Some(f) => (f.clone(), Source::Joined),
                None => {
                    if let Some(v) = landed() {
                        return (Ok(v), Source::Landed);
                    }
                    let loads_ref = self.loads.clone();
                    let task = tokio::spawn(async move {
                        // Leaves the map when the load ends, however it ends.
                        let _landed = Landed(loads_ref, key);
                        load.await.map_err(Failed::from)
                    });
                    let flight = async move {
                        match task.await {
                            Ok(r) => r,
                            Err(e) => Err(Failed {
                                unavailable: false,
                                message: format!("cache load task: {e}"),
                            }),
                        }
                    }
                    .boxed()
                    .shared();
                    loads.insert(key, flight.clone());
                    (flight, Source::Loaded)
                }
            }
        };
        (flight.await.map_err(StoreError::from), source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A reader that missed the table just before a load put its entry and left the map takes
    /// that entry instead of reading the store again (the interleaving that made 200 concurrent
    /// readers cause two loads).
    #[tokio::test]
    async fn a_load_that_just_landed_is_not_repeated() {
        let table = Arc::new(Table::new("test", 1 << 20, Duration::from_secs(30)));
        let flights = Flights::default();
        let loads = Arc::new(AtomicUsize::new(0));
        let load = |table: Arc<Table<u32>>, loads: Arc<AtomicUsize>| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            let v = Arc::new(7);
            table.put(Id(1), 5, v.clone(), 8);
            Ok(v)
        };
        // The reader's table lookup misses: nothing is loaded yet.
        assert!(table.get(Id(1), 5).is_none());
        // Meanwhile another reader's load runs to its end: entry put, flight gone.
        let first = flights
            .run(Id(1), 5, || None, load(table.clone(), loads.clone()))
            .await;
        assert_eq!((*first.0.unwrap(), first.1), (7, Source::Loaded));
        assert!(flights.loads.lock().is_empty());
        // The first reader now reaches the flights.
        let (v, source) = flights
            .run(
                Id(1),
                5,
                || table.get(Id(1), 5),
                load(table.clone(), loads.clone()),
            )
            .await;
        assert_eq!((*v.unwrap(), source), (7, Source::Landed));
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the store was read again");
        // A different token is a different load.
        let (_, source) = flights
            .run(
                Id(1),
                6,
                || table.get(Id(1), 6),
                load(table.clone(), loads.clone()),
            )
            .await;
        assert_eq!(source, Source::Loaded);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }
}

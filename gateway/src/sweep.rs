//! Heartbeats, idle timeouts and token expiry for every socket of the node, from one task instead
//! of a timer per socket: an idle socket holds no timer, only three numbers in its handle.
//!
//! The sweep ticks every [`Cadence::tick`] (a quarter of the heartbeat interval, at most one
//! second). Each tick closes the sockets whose token has expired (4201) and those silent for the
//! idle timeout (4001), and pings the sockets whose heartbeat falls in it: a socket is pinged
//! every `heartbeat / tick` ticks after the tick it went live in, so its first ping comes one
//! heartbeat after its `hello` (give or take a tick) and the pings of a node are spread over the
//! whole interval instead of coming at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use shared::close::CloseCode;
use shared::ids::now_unix_ms;

use crate::hub::{Enqueue, Hub, QueueLimits};
use crate::node::Node;
use crate::wsio;

/// The longest tick: how late a token expiry or idle timeout may be acted on.
const TICK_MAX: Duration = Duration::from_secs(1);
/// Ticks per heartbeat at least, so that a socket's first ping comes one heartbeat after its
/// `hello` give or take a quarter of it.
const SLICES_MIN: u64 = 4;

/// The sweep's tick and how many ticks make a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    tick_ms: u64,
    /// Ticks per heartbeat: a socket is pinged every `slices` ticks.
    slices: u64,
}

impl Cadence {
    pub fn new(heartbeat: Duration) -> Cadence {
        let heartbeat_ms = (heartbeat.as_millis() as u64).max(1);
        let tick_ms = (heartbeat_ms / SLICES_MIN).clamp(1, TICK_MAX.as_millis() as u64);
        Cadence {
            tick_ms,
            // Rounded down: a socket is pinged at least once per heartbeat interval.
            slices: (heartbeat_ms / tick_ms).max(1),
        }
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The tick that `now_ms` (hub time) falls in.
    pub fn tick_at(&self, now_ms: u64) -> u64 {
        now_ms / self.tick_ms
    }

    /// Whether a socket that went live in tick `live` is pinged in one of `ticks`: in every
    /// `slices`-th tick after `live` (never in `live` itself, which may end after its `hello`).
    pub fn ping_due(&self, live: u64, ticks: &std::ops::RangeInclusive<u64>) -> bool {
        let first = (*ticks.start()).max(live + 1);
        if first > *ticks.end() {
            return false;
        }
        let k = self.slices;
        let next = first + (live % k + k - first % k) % k;
        next <= *ticks.end()
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub pinged: usize,
    pub idle: usize,
    pub expired: usize,
}

/// Runs the sweep until `stop`.
pub async fn sweep_task(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let cadence = Cadence::new(node.settings.heartbeat_interval);
    let mut ticks = tokio::time::interval(cadence.tick());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_tick = cadence.tick_at(node.hub.now_ms());
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let now_ms = node.hub.now_ms();
        let tick = cadence.tick_at(now_ms);
        if tick == last_tick {
            continue;
        }
        // Every tick since the last sweep (a late sweep must not skip anyone's heartbeat).
        let first = last_tick + 1;
        last_tick = tick;
        sweep(
            &node.hub,
            cadence,
            first..=tick,
            now_ms,
            now_unix_ms() / 1000,
            node.settings.idle_timeout,
            node.queue_limits(),
        );
    }
}

/// One sweep at `now_ms` (hub time) and `now_s` (Unix seconds): closes the expired and the
/// silent sockets, pings the live ones with a heartbeat due in `ticks` ([`Cadence::ping_due`]).
pub fn sweep(
    hub: &Hub,
    cadence: Cadence,
    ticks: std::ops::RangeInclusive<u64>,
    now_ms: u64,
    now_s: u64,
    idle_timeout: Duration,
    limits: QueueLimits,
) -> Swept {
    let idle_ms = idle_timeout.as_millis() as u64;
    let mut swept = Swept::default();
    let ping = Bytes::from_static(wsio::PING_FRAME);
    hub.for_each(|socket| {
        let Some(last_rx) = socket.last_rx_ms() else {
            return;
        };
        if now_s >= socket.expires_at() {
            swept.expired += 1;
            return socket.close(CloseCode::TokenExpired);
        }
        if now_ms.saturating_sub(last_rx) >= idle_ms {
            swept.idle += 1;
            return socket.close(CloseCode::IdleTimeout);
        }
        if cadence.ping_due(socket.live_tick(), &ticks) {
            swept.pinged += 1;
            if socket.enqueue(ping.clone(), limits) == Enqueue::Overflow {
                metrics::counter!(crate::telemetry::SEND_QUEUE_DROPS_TOTAL).increment(1);
            }
        }
    });
    swept
}

#[cfg(test)]
mod tests {
    use shared::protocol::Encoding;

    use super::*;
    use crate::hub::SocketHandle;

    const LIMITS: QueueLimits = QueueLimits {
        frames: 8,
        bytes: 1024,
    };

    #[test]
    fn cadence_spreads_a_heartbeat_over_ticks_of_at_most_a_second() {
        let c = Cadence::new(Duration::from_secs(25));
        assert_eq!((c.tick(), c.slices), (Duration::from_secs(1), 25));
        let c = Cadence::new(Duration::from_millis(300));
        assert_eq!((c.tick(), c.slices), (Duration::from_millis(75), 4));
        // Rounded down: never less often than the heartbeat.
        let c = Cadence::new(Duration::from_millis(5500));
        assert_eq!((c.tick(), c.slices), (Duration::from_secs(1), 5));
        assert_eq!((c.tick_at(4_999), c.tick_at(5_000)), (4, 5));
        assert_eq!(Cadence::new(Duration::from_millis(2)).tick_ms, 1);
    }

    fn socket(
        hub: &Hub,
        id: u64,
        live_at: Option<(u64, u64)>,
        expires_at: u64,
    ) -> Arc<SocketHandle> {
        let h = Arc::new(SocketHandle::new(
            id,
            format!("u{id}").into(),
            Encoding::Json,
            0,
        ));
        if let Some((now_ms, tick)) = live_at {
            h.go_live(now_ms, tick, expires_at);
        }
        hub.add(h.clone(), 1).unwrap();
        h
    }

    #[test]
    fn a_socket_is_pinged_every_heartbeat_after_the_tick_it_went_live_in() {
        let c = Cadence::new(Duration::from_secs(4)); // ticks of 1 s, 4 per heartbeat
        let due = |ticks: std::ops::RangeInclusive<u64>| c.ping_due(5, &ticks);
        assert!(
            !due(5..=5),
            "not in its own tick, which may end after its hello"
        );
        assert!(!due(0..=4));
        assert!(!due(6..=8));
        assert!(due(9..=9));
        assert!(due(6..=9));
        assert!(!due(10..=12));
        assert!(due(13..=13));
        assert!(
            due(10..=30),
            "a late sweep pings once, however many ticks it covers"
        );
    }

    #[test]
    fn pings_each_socket_once_per_heartbeat_and_closes_the_silent_and_the_expired() {
        let hub = Hub::new();
        let cadence = Cadence::new(Duration::from_secs(4)); // ticks of 1 s, 4 per heartbeat
        let idle = Duration::from_secs(10);
        let a = socket(&hub, 1, Some((1_000, 1)), u64::MAX);
        let b = socket(&hub, 2, Some((2_000, 2)), u64::MAX);
        let expiring = socket(&hub, 3, Some((3_000, 3)), 100);
        let not_live = socket(&hub, 4, None, 0);
        let pinged = |h: &SocketHandle| h.writer.queued().0;

        // Nobody is pinged before a heartbeat has passed since it went live.
        let s = sweep(&hub, cadence, 1..=4, 4_000, 50, idle, LIMITS);
        assert_eq!(s, Swept::default());
        // Tick 5: `a` (live in tick 1).
        let s = sweep(&hub, cadence, 5..=5, 5_000, 50, idle, LIMITS);
        assert_eq!(s.pinged, 1);
        assert_eq!((pinged(&a), pinged(&b)), (1, 0));
        // Ticks 6 and 7 in one late sweep: `b` and the expiring socket.
        let s = sweep(&hub, cadence, 6..=7, 7_000, 60, idle, LIMITS);
        assert_eq!(s.pinged, 2);
        assert_eq!((pinged(&b), pinged(&expiring)), (1, 1));
        // A socket that has not sent its `hello` is left alone, whatever its times say.
        assert_eq!(pinged(&not_live), 0);
        assert_eq!(not_live.closing(), None);

        // At its expiry the socket is closed with 4201.
        let s = sweep(&hub, cadence, 8..=8, 8_000, 100, idle, LIMITS);
        assert_eq!(s.expired, 1);
        assert_eq!(expiring.closing(), Some(CloseCode::TokenExpired));
        assert_eq!(a.closing(), None);

        // `a` speaks at 5 s; at 12 s `b` (silent since 2 s) is closed with 4001, `a` is not.
        a.touch(5_000);
        let s = sweep(&hub, cadence, 9..=12, 12_000, 110, idle, LIMITS);
        assert_eq!((s.idle, s.expired), (1, 1));
        assert_eq!(b.closing(), Some(CloseCode::IdleTimeout));
        assert_eq!(a.closing(), None);
        let s = sweep(&hub, cadence, 13..=15, 15_000, 115, idle, LIMITS);
        assert_eq!(s.idle, 2, "a, and b which is still closing");
        assert_eq!(a.closing(), Some(CloseCode::IdleTimeout));
    }

    #[test]
    fn a_late_sweep_covering_a_whole_heartbeat_pings_everyone_once() {
        let hub = Hub::new();
        let cadence = Cadence::new(Duration::from_secs(3));
        let sockets: Vec<_> = (0..6)
            .map(|i| socket(&hub, i + 1, Some((0, i % 3)), u64::MAX))
            .collect();
        let s = sweep(
            &hub,
            cadence,
            7..=20,
            20_000,
            0,
            Duration::from_secs(60),
            LIMITS,
        );
        assert_eq!(s.pinged, 6);
        assert!(sockets.iter().all(|s| s.writer.queued().0 == 1));
    }
}

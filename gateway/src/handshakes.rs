//! Handshakes in progress per client address (`MAX_HANDSHAKES_PER_IP`), so that one address
//! cannot take every place of `MAX_CONCURRENT_HANDSHAKES` (idle connections that never send a
//! request would otherwise lock every other client out until they time out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// The per-address key of the connection limits: the IPv4 address, or the /64 prefix of an IPv6
/// one (one subscriber usually holds a whole /64, so per-address keys would be free to multiply).
pub fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Counts of handshakes in progress by address key. An entry exists only while one of its slots
/// is held, so the table never holds more entries than there are handshakes in progress.
pub struct HandshakesPerIp {
    per_ip_max: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One handshake's place in its address's count, given back on drop.
pub struct HandshakeSlot {
    table: Arc<HandshakesPerIp>,
    key: String,
}

impl HandshakesPerIp {
    pub fn new(per_ip_max: usize) -> Arc<HandshakesPerIp> {
        Arc::new(HandshakesPerIp {
            per_ip_max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more handshake from `ip`, or `None` when it already has the maximum.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let key = ip_key(ip);
        let mut counts = self.counts.lock();
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.per_ip_max {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            table: self.clone(),
            key,
        })
    }

    /// Addresses with a handshake in progress (for tests).
    pub fn addresses(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        assert_eq!(ip_key("10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(ip_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            ip_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            ip_key("2001:db8:1:2::1".parse().unwrap()),
            ip_key("2001:db8:1:3::1".parse().unwrap())
        );
    }

    #[test]
    fn each_address_gets_its_own_places_and_entries_go_with_their_last_slot() {
        let table = HandshakesPerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = table.try_acquire(a).unwrap();
        let a2 = table.try_acquire(a).unwrap();
        assert!(table.try_acquire(a).is_none());
        let b1 = table.try_acquire(b).unwrap();
        assert_eq!(table.addresses(), 2);
        drop(a1);
        let a3 = table.try_acquire(a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(table.addresses(), 0);
    }
}

//! Which name each learned address was learned for, so that a log event about a connection to
//! it can carry `destination.domain`. The committer fills it; the logger reads it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Learned addresses and the query name whose answer taught each, until the address's TTL runs
/// out. Holds at most `capacity` addresses (the cache's own bound).
#[derive(Debug)]
pub struct Names {
    capacity: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_addr: HashMap<IpAddr, (Arc<str>, Instant)>,
    /// When a full map was last swept for expired entries: while it stays full of live ones,
    /// new addresses are turned away without a sweep each (one per answer would make every
    /// answer cost a pass over `capacity` entries).
    swept: Option<Instant>,
}

/// How often a full map is swept at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Names {
    pub fn new(capacity: usize) -> Names {
        Names {
            capacity: AtomicUsize::new(capacity),
            inner: Mutex::default(),
        }
    }

    /// A new bound (a reload changed `dns.capacity`); entries over it leave as they expire.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Relaxed);
    }

    /// The name `addr` was last learned for, while it is allowed.
    pub fn lookup(&self, addr: IpAddr) -> Option<String> {
        let inner = self.inner.lock().ok()?;
        let (name, until) = inner.by_addr.get(&addr)?;
        (*until > Instant::now()).then(|| name.to_string())
    }

    /// Records what one committed batch taught: (address, query name, TTL).
    pub(crate) fn record<'a>(
        &self,
        learned: impl IntoIterator<Item = (IpAddr, &'a str, Duration)>,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let Inner {
            by_addr: map,
            swept,
        } = &mut *inner;
        let now = Instant::now();
        let capacity = self.capacity.load(Relaxed);
        for (addr, name, ttl) in learned {
            let name = name.trim_end_matches('.');
            if map.len() >= capacity && !map.contains_key(&addr) {
                if swept.is_some_and(|at| now.duration_since(at) < SWEEP_EVERY) {
                    continue;
                }
                *swept = Some(now);
                map.retain(|_, (_, until)| *until > now);
                if map.len() >= capacity {
                    continue;
                }
            }
            let name: Arc<str> = match map.get(&addr) {
                Some((n, _)) if n.eq_ignore_ascii_case(name) => n.clone(),
                _ => name.to_ascii_lowercase().into(),
            };
            map.insert(addr, (name, now + ttl));
        }
    }

    /// Forgets every address whose TTL has run out.
    pub(crate) fn expire(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            let now = Instant::now();
            inner.by_addr.retain(|_, (_, until)| *until > now);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.by_addr.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn names_are_kept_until_their_ttl_and_within_capacity() {
        let n = Names::new(2);
        n.record([
            (ip("192.0.2.1"), "A.Example.com.", Duration::from_secs(60)),
            (ip("192.0.2.2"), "b.example.com", Duration::ZERO),
        ]);
        assert_eq!(n.lookup(ip("192.0.2.1")).as_deref(), Some("a.example.com"));
        assert_eq!(n.lookup(ip("192.0.2.2")), None, "expired");
        assert_eq!(n.lookup(ip("192.0.2.9")), None, "never learned");
        // Full, but the expired entry makes room.
        n.record([(ip("192.0.2.3"), "c.example.com", Duration::from_secs(60))]);
        assert_eq!(n.lookup(ip("192.0.2.3")).as_deref(), Some("c.example.com"));
        // Full of live entries: a new address is not recorded, a known one is updated.
        n.record([
            (ip("192.0.2.4"), "d.example.com", Duration::from_secs(60)),
            (ip("192.0.2.1"), "e.example.com", Duration::from_secs(60)),
        ]);
        assert_eq!(n.lookup(ip("192.0.2.4")), None);
        assert_eq!(n.lookup(ip("192.0.2.1")).as_deref(), Some("e.example.com"));
        assert_eq!(n.len(), 2);
        n.expire();
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn a_full_map_is_swept_at_most_once_a_second() {
        let n = Names::new(2);
        n.record([
            (ip("192.0.2.1"), "a.example.com", Duration::from_secs(60)),
            (ip("192.0.2.2"), "b.example.com", Duration::from_millis(200)),
        ]);
        // Full of live entries: swept, nothing freed, the newcomer turned away.
        n.record([(ip("192.0.2.3"), "c.example.com", Duration::from_secs(60))]);
        assert_eq!(n.lookup(ip("192.0.2.3")), None);
        std::thread::sleep(Duration::from_millis(300));
        // b has expired, but the last sweep was under a second ago: no sweep per answer.
        n.record([(ip("192.0.2.4"), "d.example.com", Duration::from_secs(60))]);
        assert_eq!(n.lookup(ip("192.0.2.4")), None);
        // The committer's periodic expiry makes the room.
        n.expire();
        n.record([(ip("192.0.2.4"), "d.example.com", Duration::from_secs(60))]);
        assert_eq!(n.lookup(ip("192.0.2.4")).as_deref(), Some("d.example.com"));
    }
}

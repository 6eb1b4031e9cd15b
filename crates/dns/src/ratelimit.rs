//! `dns_qps_per_client`: a token bucket per client address, in bounded memory, deciding
//! whether a query is forwarded or refused with SERVFAIL.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;

/// Clients tracked at once unless told otherwise (about 2.5 MB of buckets).
pub const DEFAULT_MAX_CLIENTS: usize = 65_536;

/// A token is this many units, so that refill is exact integer arithmetic: at `qps` tokens a
/// second, a bucket gains `qps` units a millisecond.
const UNITS_PER_TOKEN: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: u64,
    /// Last time the client was seen (and the bucket refilled), caller's milliseconds.
    seen_ms: u64,
}

/// Per-client token buckets: `qps` queries a second sustained, bursts of up to `qps`.
///
/// `qps` 0 refuses every query. The policy validator only accepts positive values, so 0 can
/// only come from a hand-built policy, and "more than 0 a second is too many" is its literal
/// meaning; it is deliberately not read as "unlimited".
#[derive(Clone, Debug)]
pub struct RateLimiter {
    qps: u64,
    max_clients: usize,
    /// Keyed SipHash: client addresses are chosen by the clients (spoofable over UDP), and must
    /// not be able to collide on purpose.
    clients: HashMap<IpAddr, Bucket, RandomState>,
}

impl RateLimiter {
    pub fn new(qps_per_client: u32) -> RateLimiter {
        RateLimiter::with_max_clients(qps_per_client, DEFAULT_MAX_CLIENTS)
    }

    /// Tracks at most `max_clients` (at least 1) clients at once.
    pub fn with_max_clients(qps_per_client: u32, max_clients: usize) -> RateLimiter {
        RateLimiter {
            qps: u64::from(qps_per_client),
            max_clients: max_clients.max(1),
            clients: HashMap::default(),
        }
    }

    /// Whether a query from `client` at `now_ms` (the caller's monotonic milliseconds) may be
    /// forwarded; if so, it is counted.
    pub fn allow(&mut self, client: IpAddr, now_ms: u64) -> bool {
        let burst = self.burst();
        if !self.clients.contains_key(&client) && self.clients.len() >= self.max_clients {
            self.make_room(now_ms);
        }
        let bucket = self.clients.entry(client).or_insert(Bucket {
            units: burst,
            seen_ms: now_ms,
        });
        refill(bucket, now_ms, self.qps, burst);
        if bucket.units >= UNITS_PER_TOKEN {
            bucket.units -= UNITS_PER_TOKEN;
            true
        } else {
            false
        }
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }

    fn burst(&self) -> u64 {
        self.qps.saturating_mul(UNITS_PER_TOKEN)
    }

    /// Frees slots for new clients. First those whose bucket has refilled: forgetting them
    /// changes nothing, as they would start full anyway. If every client is active (a flood
    /// from many sources), the least recently seen eighth goes, so that the O(n) pass is paid
    /// once per n/8 newcomers rather than once per query; those clients start over full.
    fn make_room(&mut self, now_ms: u64) {
        let (qps, burst) = (self.qps, self.burst());
        self.clients.retain(|_, b| {
            let mut b = *b;
            refill(&mut b, now_ms, qps, burst);
            b.units < burst
        });
        if self.clients.len() < self.max_clients {
            return;
        }
        let mut by_age: Vec<(u64, IpAddr)> = self
            .clients
            .iter()
            .map(|(ip, b)| (b.seen_ms, *ip))
            .collect();
        let drop = (by_age.len() / 8).max(1);
        by_age.select_nth_unstable(drop - 1);
        for (_, ip) in &by_age[..drop] {
            self.clients.remove(ip);
        }
    }
}

/// Adds what accrued since the bucket was last seen, up to `burst`. A clock that went
/// backwards accrues nothing (and does not move `seen_ms` back).
fn refill(bucket: &mut Bucket, now_ms: u64, qps: u64, burst: u64) {
    let elapsed = now_ms.saturating_sub(bucket.seen_ms);
    bucket.units = bucket
        .units
        .saturating_add(elapsed.saturating_mul(qps))
        .min(burst);
    bucket.seen_ms = bucket.seen_ms.max(now_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn client(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | n))
    }

    fn allowed(rl: &mut RateLimiter, c: IpAddr, now_ms: u64, tries: usize) -> usize {
        (0..tries).filter(|_| rl.allow(c, now_ms)).count()
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut rl = RateLimiter::new(10);
        let c = client(1);
        assert_eq!(allowed(&mut rl, c, 0, 15), 10);
        // One token every 100 ms.
        assert!(!rl.allow(c, 99));
        assert!(rl.allow(c, 100));
        assert!(!rl.allow(c, 100));
        assert_eq!(allowed(&mut rl, c, 350, 5), 2);
        // A long pause refills to the burst, no further.
        assert_eq!(allowed(&mut rl, c, 60_000, 50), 10);
    }

    #[test]
    fn clients_are_independent() {
        let mut rl = RateLimiter::new(2);
        assert_eq!(allowed(&mut rl, client(1), 0, 5), 2);
        assert_eq!(allowed(&mut rl, client(2), 0, 5), 2);
        let v6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(allowed(&mut rl, v6, 0, 5), 2);
        assert_eq!(rl.tracked(), 3);
    }

    #[test]
    fn zero_qps_refuses_everything() {
        let mut rl = RateLimiter::new(0);
        assert_eq!(allowed(&mut rl, client(1), 0, 3), 0);
        assert_eq!(allowed(&mut rl, client(1), 1_000_000, 3), 0);
    }

    #[test]
    fn clock_going_backwards_mints_nothing() {
        let mut rl = RateLimiter::new(1);
        let c = client(1);
        assert!(rl.allow(c, 10_000));
        assert!(!rl.allow(c, 0));
        assert!(!rl.allow(c, 10_999));
        assert!(rl.allow(c, 11_000));
    }

    #[test]
    fn huge_qps_does_not_overflow() {
        let mut rl = RateLimiter::new(u32::MAX);
        assert_eq!(allowed(&mut rl, client(1), u64::MAX, 1000), 1000);
    }

    #[test]
    fn idle_clients_are_forgotten_first() {
        let mut rl = RateLimiter::with_max_clients(10, 4);
        // Clients 1 and 2 are mid-burst; 3 and 4 asked once, long ago, and have refilled.
        assert!(rl.allow(client(3), 0));
        assert!(rl.allow(client(4), 0));
        assert_eq!(allowed(&mut rl, client(1), 5_000, 10), 10);
        assert_eq!(allowed(&mut rl, client(2), 5_000, 10), 10);
        assert!(rl.allow(client(5), 5_000));
        assert_eq!(rl.tracked(), 3);
        // The busy clients kept their (empty) buckets.
        assert!(!rl.allow(client(1), 5_000));
        assert!(!rl.allow(client(2), 5_000));
    }

    #[test]
    fn when_all_are_busy_the_least_recently_seen_go() {
        let mut rl = RateLimiter::with_max_clients(10, 16);
        for n in 0..16 {
            assert_eq!(allowed(&mut rl, client(n), u64::from(n), 10), 10);
        }
        assert!(rl.allow(client(100), 20));
        // 16 / 8 = 2 evicted: clients 0 and 1, seen first.
        assert_eq!(rl.tracked(), 15);
        assert_eq!(allowed(&mut rl, client(0), 20, 20), 10);
        assert!(!rl.allow(client(2), 20));
        assert!(!rl.allow(client(15), 20));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_sources() {
        let mut rl = RateLimiter::with_max_clients(5, 1000);
        for n in 0..50_000u32 {
            assert!(rl.allow(client(n), u64::from(n / 100)));
            assert!(rl.tracked() <= 1000);
        }
    }
}

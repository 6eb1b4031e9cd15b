//! What the proxy counts: one outcome per query, the drops and failures an operator needs to
//! see, and how long lookups take. Plain atomics, read by whoever exports them (logs, metrics).

use crate::cache::Evictions;
use hickory_proto::op::ResponseCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters since the proxy started. Every answered query has exactly one outcome among
/// `success`, `nxdomain`, `servfail`, `rate_limited`, `blocked` and `other_rcode`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Answered NOERROR (with or without records).
    pub success: AtomicU64,
    /// NXDOMAIN from upstream.
    pub nxdomain: AtomicU64,
    /// SERVFAIL: from upstream, no upstream answered, or a commit failed.
    pub servfail: AtomicU64,
    /// Refused locally with SERVFAIL: over `dns_qps_per_client`.
    pub rate_limited: AtomicU64,
    /// NXDOMAIN given locally: `dns.unlisted: nxdomain` and no rule lists the name.
    pub blocked: AtomicU64,
    /// Any other rcode (REFUSED, FORMERR, NOTIMP, ...), upstream's or ward's own.
    pub other_rcode: AtomicU64,
    /// UDP answers with TC=1 asked again over TCP upstream (also counted by final outcome).
    pub truncated_upgraded_to_tcp: AtomicU64,
    /// Client messages dropped without a reply: undecodable, or not a query.
    pub malformed_queries: AtomicU64,
    /// Upstream messages ignored: undecodable, wrong id, wrong question.
    pub malformed_replies: AtomicU64,
    /// Exchanges with one upstream that failed (timeout, refused, reset); the next is tried.
    pub upstream_failures: AtomicU64,
    /// Batches the data plane refused to commit (their queries got SERVFAIL).
    pub commit_failures: AtomicU64,
    /// Queries dropped because too many were already in flight.
    pub overload_drops: AtomicU64,
    /// (rule, address) pairs held by the cache after the last batch.
    pub learned: AtomicU64,
    /// Cache entries let go because their TTL ran out, since the proxy started.
    pub evicted_ttl_expired: AtomicU64,
    /// Cache entries pushed out by newer ones (`capacity`, `max_ips_per_name`).
    pub evicted_capacity_pressure: AtomicU64,
    /// From a client's query arriving to its answer leaving, for every answered query.
    pub lookup: Histogram,
}

/// Upper bounds of the lookup-duration buckets, in seconds: from a cached-path relay on a fast
/// machine (100 µs) to an upstream timeout and a retry (2.5 s).
pub const LOOKUP_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram of atomics, cheap enough for every query: one bucket increment and two
/// additions. (prometheus-client's own would tie this crate to the exporter.)
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, then one for everything above the last.
    buckets: [AtomicU64; LOOKUP_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LOOKUP_BUCKETS.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The sum in seconds, the count, and the count of each bucket (not cumulative), by its
    /// upper bound; the last bucket's bound is infinity.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let bounds = LOOKUP_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts one answered query by the rcode it got.
    pub fn outcome(&self, rcode: ResponseCode) {
        Stats::add(match rcode {
            ResponseCode::NoError => &self.success,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::ServFail => &self.servfail,
            _ => &self.other_rcode,
        });
    }

    /// Records the cache's size and evictions after it changed.
    pub fn cache(&self, len: usize, evictions: Evictions) {
        self.learned.store(len as u64, Relaxed);
        self.evicted_ttl_expired
            .store(evictions.ttl_expired, Relaxed);
        self.evicted_capacity_pressure
            .store(evictions.capacity_pressure, Relaxed);
    }

    /// `(name, value)` for every counter, in declaration order: for logs and tests.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("success", &self.success),
            ("nxdomain", &self.nxdomain),
            ("servfail", &self.servfail),
            ("rate_limited", &self.rate_limited),
            ("blocked", &self.blocked),
            ("other_rcode", &self.other_rcode),
            ("truncated_upgraded_to_tcp", &self.truncated_upgraded_to_tcp),
            ("malformed_queries", &self.malformed_queries),
            ("malformed_replies", &self.malformed_replies),
            ("upstream_failures", &self.upstream_failures),
            ("commit_failures", &self.commit_failures),
            ("overload_drops", &self.overload_drops),
            ("learned", &self.learned),
            ("evicted_ttl_expired", &self.evicted_ttl_expired),
            ("evicted_capacity_pressure", &self.evicted_capacity_pressure),
        ]
        .into_iter()
        .map(|(n, c)| (n, c.load(Relaxed)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bounds_are_inclusive_and_the_last_bucket_takes_the_rest() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100)); // on the first bound: in its bucket
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10)); // above every bound
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 10.00315).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.len(), LOOKUP_BUCKETS.len() + 1);
        let at = |bound: f64| buckets.iter().find(|b| b.0 == bound).expect("bound").1;
        assert_eq!(at(0.0001), 2);
        assert_eq!(at(0.0025), 0);
        assert_eq!(at(0.005), 1);
        assert_eq!(at(f64::INFINITY), 1);
    }
}

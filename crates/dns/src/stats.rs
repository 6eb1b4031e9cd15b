//! What the proxy counts: one outcome per query, plus the drops and failures an operator needs
//! to see. Plain atomics, read by whoever exports them (logs now, metrics later).

use hickory_proto::op::ResponseCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
        ]
        .into_iter()
        .map(|(n, c)| (n, c.load(Relaxed)))
        .collect()
    }
}

//! ward's DNS side: which `destination_fqdn` rules a queried name matches, the cache of
//! addresses learned from answers, and the `Learner` that hands them to a data plane.
//!
//! - [`Matcher`]: the name rules of a policy, answering "which rules match this name" in a few
//!   hash lookups per label.
//! - [`Cache`]: turns one parsed [`Answer`] into the [`Update`]s a data plane must commit
//!   (CNAME chains, TTL clamps, `capacity` and `max_ips_per_name` eviction, expiry).
//! - [`Learner`]: the data plane seam; [`RecordingLearner`] stands in for one in tests.
//! - [`RateLimiter`]: `dns_qps_per_client`, per client address.
//! - [`Names`]: the name each learned address was learned for, for log events.
//!
//! - [`wire`]: DNS messages without sockets (query checks, ECS stripping, reply checks).
//! - [`Committer`]: the task that owns the cache and the learner, batching answers into one
//!   commit each, and [`Proxy`]: the UDP / TCP sockets that forward and wait for it. Both run
//!   on one single-threaded event loop (as dnsmasq does): see `committer` for why.
//!
//! Not here: anything touching the kernel (the caller's `Learner` does), the policy's defaults
//! that depend on the host (listen and upstream addresses are given).

mod cache;
mod committer;
mod learner;
mod matcher;
mod names;
mod proxy;
mod ratelimit;
mod stats;
pub mod wire;

pub use cache::{Answer, Cache, Evictions, Record, Update, MAX_CNAME_HOPS};
pub use committer::{CommitFailed, Committer};
pub use learner::{Learner, RecordingError, RecordingLearner};
pub use matcher::{Matcher, PolicyKey, RuleIdx};
pub use names::Names;
pub use proxy::{Config, Proxy, DEFAULT_UPSTREAM_TIMEOUT};
pub use ratelimit::{RateLimiter, DEFAULT_MAX_CLIENTS};
pub use stats::{Histogram, Stats, LOOKUP_BUCKETS};

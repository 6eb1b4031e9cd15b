//! ward's DNS side: which `destination_fqdn` rules a queried name matches, the cache of
//! addresses learned from answers, and the `Learner` that hands them to a data plane.
//!
//! - [`Matcher`]: the name rules of a policy, answering "which rules match this name" in a few
//!   hash lookups per label.
//! - [`Cache`]: turns one parsed [`Answer`] into the [`Update`]s a data plane must commit
//!   (CNAME chains, TTL clamps, `capacity` and `max_ips_per_name` eviction, expiry).
//! - [`Learner`]: the data plane seam; [`RecordingLearner`] stands in for one in tests.
//! - [`RateLimiter`]: `dns_qps_per_client`, per client address.
//!
//! Not here (yet): sockets, the proxy loop, DNS wire parsing, anything touching the kernel.
//! Everything in this crate is pure logic with time passed in as milliseconds on the
//! caller's monotonic clock, so tests never sleep.

mod cache;
mod learner;
mod matcher;
mod ratelimit;

pub use cache::{Answer, Cache, Record, Update, MAX_CNAME_HOPS};
pub use learner::{Learner, RecordingError, RecordingLearner};
pub use matcher::{Matcher, RuleIdx};
pub use ratelimit::{RateLimiter, DEFAULT_MAX_CLIENTS};

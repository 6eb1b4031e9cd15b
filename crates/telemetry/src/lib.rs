//! ward's observability: the Prometheus metrics `ward run` and `ward engine` serve on
//! `--metrics` (from either data plane and the DNS proxy) and the ECS events `ward run` writes.

pub mod ecs;
pub mod eventlog;
pub mod metrics;
mod queue;

pub use ecs::DomainLookup;
pub use eventlog::{Counters, EventLog};

//! ward's observability: the Prometheus metrics `ward run` serves on `--metrics` and the ECS
//! events it writes to `--log`, both fed by the kernel data plane and the DNS proxy.

pub mod ecs;
pub mod eventlog;
pub mod metrics;
mod queue;

pub use ecs::DomainLookup;
pub use eventlog::{Counters, EventLog};

//! `testlab`: a LAN / firewall / WAN topology in network namespaces, with real traffic from Rust.
//! Used by ward's integration tests and by `ward lab up|down|demo`.
//!
//! ```no_run
//! use std::time::Duration;
//! use testlab::{addr, Lab, LabSpec};
//!
//! let lab = Lab::up(LabSpec::unique("ward-test"))?;
//! let _srv = lab.wan().tcp_server((addr::WAN_HOST, 8080).into())?;
//! let probe = lab.lan().tcp_probe((addr::WAN_HOST, 8080).into(), Duration::from_secs(2))?;
//! assert!(probe.ok());
//! lab.down()?;
//! # Ok::<(), testlab::LabError>(())
//! ```
//!
//! Everything happens inside namespaces the lab creates; the host's interfaces, ruleset and
//! sysctls are never touched. Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2.
//! [`Netns::dns_server`] adds a real authoritative DNS server for the DNS proxy ([`dns_server`]),
//! and [`Netns::dns`] / [`dns_exchange`] query it or the proxy.

mod dns_client;
pub mod dns_server;
mod error;
mod netns;
mod topology;
mod traffic;

pub use dns_client::{answer_addrs, dns_exchange, dns_query, edns, Transport};
pub use dns_server::{DnsServer, Zone, DNS_PORT};
pub use error::LabError;
pub use netns::{Netns, NETNS_DIR};
pub use topology::{addr, ifname, reap_stale, teardown, Firewall, Lab, LabSpec};
pub use traffic::{
    Probe, ProbeStats, Server, LOOP_PAUSE, LOOP_TIMEOUT, MAX_RECORDED_FAILURES, UDP_PROBE_PAYLOAD,
};

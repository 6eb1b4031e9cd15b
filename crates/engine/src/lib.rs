//! ward's userspace data plane: frames in, verdicts out, for the `ward engine` appliance form.
//! [`core`] is `no_std` + `alloc` and does no I/O, so it can run under a unikernel later.
//!
//! Here: parsing one Ethernet frame ([`core::packet`]), the policy compiled into a classifier
//! whose cost does not grow with the rule count ([`core::filter`]), a bounded connection
//! table ([`core::conntrack`]), the engine's own addresses with the ARP replies for them and a
//! bounded neighbour table ([`core::arp`]), the in-place rewrite of a forwarded frame
//! ([`core::forward`]), incremental checksum updates ([`core::checksum`]), and source /
//! destination NAT with in-place header rewriting ([`core::nat`]), and [`core::engine`], which
//! takes a frame through all of them in SPEC §8's order and counts what became of it. Not yet
//! here: IPv6 forwarding (no neighbour discovery) and ICMP errors (time exceeded, and NAT of
//! their quoted headers).
//!
//! The `std` feature (on by default) adds only what needs the standard library: compiling a
//! `policy::Policy` into a [`core::filter::Filter`] and a [`core::nat::NatPlan`], reading its
//! conntrack timeouts, and (on Linux) `io`, the AF_PACKET loop that drives the engine (with
//! the TUN device of the host stack behind it, where the DNS proxy runs), and `learn`, which
//! hands the addresses the DNS proxy learns (another thread) to that loop.

#![no_std]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod core;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod io;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod learn;
/// Fixtures for tests and benchmarks (here and in ward), not for the data plane.
#[cfg(all(feature = "std", target_os = "linux"))]
#[doc(hidden)]
pub mod testing;

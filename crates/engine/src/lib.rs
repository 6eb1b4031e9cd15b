//! ward's userspace data plane: frames in, verdicts out, for the `ward engine` appliance form.
//! [`core`] is `no_std` + `alloc` and does no I/O, so it can run under a unikernel later.
//!
//! Here: parsing one Ethernet frame ([`core::packet`]), the policy compiled into a classifier
//! whose cost does not grow with the rule count ([`core::filter`]), and a bounded connection
//! table ([`core::conntrack`]). Not yet here: NAT, the ARP responder and neighbour table,
//! forwarding (MAC rewrite, TTL, checksums) and the AF_PACKET loop that drives it all.
//!
//! The `std` feature (on by default) adds only what needs the standard library: compiling a
//! `policy::Policy` into a [`core::filter::Filter`], and reading its conntrack timeouts.

#![no_std]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod core;

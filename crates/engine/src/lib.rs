//! ward's userspace data plane: frames in, verdicts out, for the `ward engine` appliance form.
//! [`core`] is `no_std` + `alloc` and does no I/O, so it can run under a unikernel later.
//!
//! Here: parsing one Ethernet frame ([`core::packet`]). Not yet here: the rule classifier,
//! connection tracking, NAT, the ARP responder and neighbour table, forwarding (MAC rewrite,
//! TTL, checksums) and the AF_PACKET loop that drives it all.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod core;

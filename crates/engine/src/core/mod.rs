//! The engine's core: pure functions and tables over byte slices and caller-given time.
//! No I/O, no clock, no allocation per packet; `alloc` only when tables are built.
//! [`engine::Engine`] puts the pieces together: one frame in, one action out.

pub mod arp;
pub mod checksum;
pub mod conntrack;
pub mod engine;
pub mod filter;
pub mod forward;
pub mod log;
pub mod nat;
pub mod packet;

use ::core::fmt;

/// Why a packet was dropped: the `drop_reason` label values of SPEC §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    NoMatchingAllowRule,
    ExplicitDeny,
    MalformedPacket,
    FragmentedIpv4,
    Ipv6Unsupported,
    RateLimitDns,
    ConntrackFull,
    NatPortPoolExhausted,
    DnatNoBackend,
    NonIp,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::NoMatchingAllowRule,
        DropReason::ExplicitDeny,
        DropReason::MalformedPacket,
        DropReason::FragmentedIpv4,
        DropReason::Ipv6Unsupported,
        DropReason::RateLimitDns,
        DropReason::ConntrackFull,
        DropReason::NatPortPoolExhausted,
        DropReason::DnatNoBackend,
        DropReason::NonIp,
    ];

    /// The metric label, as the kernel data plane reports it too.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoMatchingAllowRule => "no_matching_allow_rule",
            DropReason::ExplicitDeny => "explicit_deny",
            DropReason::MalformedPacket => "malformed_packet",
            DropReason::FragmentedIpv4 => "fragmented_ipv4",
            DropReason::Ipv6Unsupported => "ipv6_unsupported",
            DropReason::RateLimitDns => "rate_limit_dns",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::NatPortPoolExhausted => "nat_port_pool_exhausted",
            DropReason::DnatNoBackend => "dnat_no_backend",
            DropReason::NonIp => "non_ip",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn drop_reasons_are_the_spec_labels() {
        // SPEC §7, in its order.
        let spec = "no_matching_allow_rule, explicit_deny, malformed_packet, fragmented_ipv4, \
                    ipv6_unsupported, rate_limit_dns, conntrack_full, nat_port_pool_exhausted, \
                    dnat_no_backend, non_ip";
        let ours: alloc::vec::Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(ours.join(", "), spec);
    }

    #[test]
    fn a_reason_as_usize_is_its_place_in_all() {
        // The engine counts drops in an array indexed so.
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
    }
}

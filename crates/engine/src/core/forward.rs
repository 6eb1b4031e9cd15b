//! Forwarding one parsed IPv4 / IPv6 frame in place: the next hop's MAC as destination, the
//! egress side's own MAC as source, TTL / hop limit down by one, the IPv4 checksum updated.
//! [`address`] does only the MACs, for a packet the host stack behind the engine originated.
//!
//! A packet that arrives with a TTL (hop limit) of 0 or 1 is not forwarded (RFC 1812 §5.3.1,
//! RFC 8200 §3): [`NotForwarded::TtlExceeded`]. The ICMP time-exceeded message RFC 1812 asks
//! for is not generated here yet: the packet is dropped silently. Neither field is covered by
//! an L4 checksum (the pseudo-header holds addresses, protocol and length only), so only the
//! IPv4 header checksum changes, by one incremental update ([`super::checksum`]).
//!
//! [`record_route`] fills in a record-route option as Linux does for a packet it forwards
//! (`ip_forward_options`). Timestamp options are left as they came: the core has no wall
//! clock to stamp them with (Linux writes its time of day, and counts a full option's
//! overflow), and neither changes whether a packet is forwarded.

use super::checksum;
use super::packet::Ip;
use ::core::net::{IpAddr, Ipv4Addr};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, Ipv4Packet, Ipv6Packet, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
};

/// Why [`forward`] left a frame as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotForwarded {
    /// It arrived with a TTL or hop limit of 0 or 1.
    TtlExceeded,
    /// The frame is shorter than `ip`'s offsets: `ip` was not parsed from it.
    Mismatch,
}

/// Rewrites `frame`, whose parse gave `ip`, for sending to `next_hop` from the egress
/// interface `own`. On an error nothing has been written, so the frame is still what arrived.
pub fn forward(
    frame: &mut [u8],
    ip: &Ip,
    next_hop: EthernetAddress,
    own: EthernetAddress,
) -> Result<(), NotForwarded> {
    let l3 = ip.offsets.l3;
    if l3 < ETHERNET_HEADER_LEN {
        return Err(NotForwarded::Mismatch);
    }
    let (eth, rest) = frame
        .split_at_mut_checked(l3)
        .ok_or(NotForwarded::Mismatch)?;
    match ip.src {
        IpAddr::V4(_) => {
            let header = rest
                .get_mut(..IPV4_HEADER_LEN)
                .ok_or(NotForwarded::Mismatch)?;
            let mut packet = Ipv4Packet::new_unchecked(header);
            let ttl = packet.hop_limit();
            if ttl <= 1 {
                return Err(NotForwarded::TtlExceeded);
            }
            // TTL is the high byte of the word it shares with the protocol.
            let proto = u8::from(packet.next_header());
            let old = u16::from_be_bytes([ttl, proto]);
            let new = u16::from_be_bytes([ttl - 1, proto]);
            packet.set_hop_limit(ttl - 1);
            packet.set_checksum(checksum::update(packet.checksum(), old, new));
        }
        IpAddr::V6(_) => {
            let header = rest
                .get_mut(..IPV6_HEADER_LEN)
                .ok_or(NotForwarded::Mismatch)?;
            let mut packet = Ipv6Packet::new_unchecked(header);
            let hops = packet.hop_limit();
            if hops <= 1 {
                return Err(NotForwarded::TtlExceeded);
            }
            packet.set_hop_limit(hops - 1);
        }
    }
    // `eth` is at least the Ethernet header: checked against `l3` above.
    let mut eth = EthernetFrame::new_unchecked(eth);
    eth.set_dst_addr(next_hop);
    eth.set_src_addr(own);
    Ok(())
}

/// Writes `addr`, the address the packet leaves from, into the record-route option that `ip`
/// says has room ([`Options::record_route`](super::packet::Options::record_route)), moves
/// the option's pointer past it and recomputes the IPv4 header checksum (the slot may sit at
/// any byte offset). Nothing to do without such an option; on an error nothing was written.
pub fn record_route(frame: &mut [u8], ip: &Ip, addr: Ipv4Addr) -> Result<(), NotForwarded> {
    let Some(at) = ip.options.record_route else {
        return Ok(());
    };
    let header = frame
        .get_mut(ip.offsets.l3..ip.offsets.l4)
        .ok_or(NotForwarded::Mismatch)?;
    let at = usize::from(at);
    let ptr = *header.get(at + 2).ok_or(NotForwarded::Mismatch)?;
    // The pointer counts from 1 at the option's first byte.
    let slot = (at + usize::from(ptr))
        .checked_sub(1)
        .and_then(|from| header.get_mut(from..from + 4))
        .ok_or(NotForwarded::Mismatch)?;
    slot.copy_from_slice(&addr.octets());
    if let Some(p) = header.get_mut(at + 2) {
        *p = ptr.saturating_add(4);
    }
    Ipv4Packet::new_unchecked(header).fill_checksum();
    Ok(())
}

/// Addresses `frame`, whose parse gave `ip`, to `next_hop` from the egress interface `own`,
/// leaving its IP header alone: for a packet the engine originates for the host stack behind
/// it, which is not forwarded, so its TTL is the host's to set.
pub fn address(
    frame: &mut [u8],
    ip: &Ip,
    next_hop: EthernetAddress,
    own: EthernetAddress,
) -> Result<(), NotForwarded> {
    let l3 = ip.offsets.l3;
    if l3 < ETHERNET_HEADER_LEN || frame.len() < ip.offsets.end {
        return Err(NotForwarded::Mismatch);
    }
    let eth = frame.get_mut(..l3).ok_or(NotForwarded::Mismatch)?;
    let mut eth = EthernetFrame::new_unchecked(eth);
    eth.set_dst_addr(next_hop);
    eth.set_src_addr(own);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::packet::{parse, Payload};
    use alloc::vec;
    use alloc::vec::Vec;
    use smoltcp::wire::{Ipv4Address, Ipv6Address};

    const FROM: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const TO_US: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const NEXT_HOP: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
    const EGRESS: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);

    fn eth(ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&TO_US);
        f.extend_from_slice(&FROM);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// An IPv4 packet with `options` (a multiple of 4 bytes) and `payload`; smoltcp fills the
    /// header checksum.
    fn ipv4(id: u16, ttl: u8, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + options.len() / 4;
        let total = ihl * 4 + payload.len();
        let mut p = vec![0x40 | ihl as u8, 0x10];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&0x4000u16.to_be_bytes());
        p.extend_from_slice(&[ttl, proto, 0, 0]);
        p.extend_from_slice(&[192, 168, 1, 10, 198, 51, 100, 7]);
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    fn ipv6(hops: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[59, hops]);
        p.extend_from_slice(&Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        p.extend_from_slice(&Ipv6Address::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
        p.extend_from_slice(payload);
        p
    }

    fn parsed_ip(frame: &[u8]) -> Ip {
        match parse(frame) {
            Ok(p) => match p.payload {
                Payload::Ip(ip) => ip,
                Payload::Arp(_) => panic!("ARP"),
            },
            Err(e) => panic!("{e}"),
        }
    }

    /// What forwarding must give, computed the long way: the TTL written, the whole header
    /// checksum recomputed by smoltcp, the MACs set.
    fn expected_v4(frame: &[u8]) -> Vec<u8> {
        let mut want = frame.to_vec();
        let mut eth = EthernetFrame::new_unchecked(&mut want[..]);
        eth.set_dst_addr(NEXT_HOP);
        eth.set_src_addr(EGRESS);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.set_hop_limit(ip.hop_limit() - 1);
        ip.fill_checksum();
        want
    }

    #[test]
    fn ipv4_macs_ttl_and_checksum() {
        let mut frame = eth(0x0800, &ipv4(0x1234, 64, 47, &[], &[0xab; 12]));
        let ip = parsed_ip(&frame);
        let want = expected_v4(&frame);
        assert_eq!(forward(&mut frame, &ip, NEXT_HOP, EGRESS), Ok(()));
        assert_eq!(frame, want);
        let again = parse(&frame).expect("still a valid frame");
        assert_eq!((again.dst_mac, again.src_mac), (NEXT_HOP, EGRESS));
        assert!(matches!(again.payload, Payload::Ip(Ip { ttl: 63, .. })));
    }

    #[test]
    fn ipv6_hop_limit_and_macs() {
        let mut frame = eth(0x86dd, &ipv6(2, &[1, 2, 3]));
        let ip = parsed_ip(&frame);
        let mut want = frame.clone();
        want[..6].copy_from_slice(&NEXT_HOP.0);
        want[6..12].copy_from_slice(&EGRESS.0);
        want[14 + 7] = 1;
        assert_eq!(forward(&mut frame, &ip, NEXT_HOP, EGRESS), Ok(()));
        assert_eq!(frame, want);
    }

    #[test]
    fn ttl_of_one_or_zero_is_not_forwarded_and_the_frame_is_untouched() {
        for ttl in [0, 1] {
            for mut frame in [
                eth(0x0800, &ipv4(1, ttl, 47, &[], &[])),
                eth(0x86dd, &ipv6(ttl, &[])),
            ] {
                let ip = parsed_ip(&frame);
                let before = frame.clone();
                assert_eq!(
                    forward(&mut frame, &ip, NEXT_HOP, EGRESS),
                    Err(NotForwarded::TtlExceeded)
                );
                assert_eq!(frame, before);
            }
        }
        // Two is the lowest that leaves, with one.
        let mut frame = eth(0x0800, &ipv4(1, 2, 47, &[], &[]));
        let ip = parsed_ip(&frame);
        assert_eq!(forward(&mut frame, &ip, NEXT_HOP, EGRESS), Ok(()));
        assert!(
            matches!(parse(&frame), Ok(p) if matches!(p.payload, Payload::Ip(Ip { ttl: 1, .. })))
        );
    }

    #[test]
    fn record_route_writes_the_address_at_the_pointer_wherever_it_falls() {
        let addr = Ipv4Addr::new(198, 51, 100, 1);
        // After one NOP, so the slot starts at an odd offset of the header.
        let options = [1, 7, 11, 8, 10, 0, 0, 1, 0, 0, 0, 0];
        let mut frame = eth(0x0800, &ipv4(7, 64, 47, &options, &[0; 8]));
        let ip = parsed_ip(&frame);
        assert_eq!(ip.options.record_route, Some(21));
        assert_eq!(record_route(&mut frame, &ip, addr), Ok(()));
        assert_eq!(frame[34..46], [1, 7, 11, 12, 10, 0, 0, 1, 198, 51, 100, 1]);
        assert!(Ipv4Packet::new_unchecked(&frame[14..46]).verify_checksum());
        // And forwarding after it keeps the checksum right.
        let ip = parsed_ip(&frame);
        assert_eq!(ip.options.record_route, None, "full now");
        assert_eq!(forward(&mut frame, &ip, NEXT_HOP, EGRESS), Ok(()));
        assert!(Ipv4Packet::new_unchecked(&frame[14..46]).verify_checksum());
        // Nothing to do without the option; a frame cut short is refused untouched.
        let mut plain = eth(0x0800, &ipv4(7, 64, 47, &[], &[0; 8]));
        let before = plain.clone();
        assert_eq!(record_route(&mut plain, &parsed_ip(&before), addr), Ok(()));
        assert_eq!(plain, before);
        let frame = eth(0x0800, &ipv4(7, 64, 47, &options, &[0; 8]));
        let ip = parsed_ip(&frame);
        let mut short = frame[..40].to_vec();
        assert_eq!(
            record_route(&mut short, &ip, addr),
            Err(NotForwarded::Mismatch)
        );
        assert_eq!(short, frame[..40]);
    }

    #[test]
    fn a_frame_that_is_not_the_parsed_one_is_refused_untouched() {
        let frame = eth(0x0800, &ipv4(1, 64, 47, &[], &[0; 8]));
        let ip = parsed_ip(&frame);
        for len in 0..14 + IPV4_HEADER_LEN {
            let mut short = frame[..len].to_vec();
            assert_eq!(
                forward(&mut short, &ip, NEXT_HOP, EGRESS),
                Err(NotForwarded::Mismatch),
                "{len}"
            );
            assert_eq!(short, frame[..len]);
        }
        let v6 = eth(0x86dd, &ipv6(64, &[]));
        let ip6 = parsed_ip(&v6);
        let mut short = v6[..v6.len() - 1].to_vec();
        assert_eq!(
            forward(&mut short, &ip6, NEXT_HOP, EGRESS),
            Err(NotForwarded::Mismatch)
        );
        // An IP header claimed to start inside the Ethernet header.
        let mut bad = ip;
        bad.offsets.l3 = 4;
        let mut f = frame.clone();
        assert_eq!(
            forward(&mut f, &bad, NEXT_HOP, EGRESS),
            Err(NotForwarded::Mismatch)
        );
        assert_eq!(f, frame);
    }

    /// One's-complement addition, only to steer test inputs onto the checksum's edge values.
    fn ones_add(a: u16, b: u16) -> u16 {
        let s = u32::from(a) + u32::from(b);
        ((s & 0xffff) + (s >> 16)) as u16
    }

    /// The identification that makes the full checksum of `header` (TTL as it is) 0x0000:
    /// adding the checksum C to any covered word makes the sum 0xFFFF.
    fn id_for_zero_checksum(header: &[u8]) -> u16 {
        let p = Ipv4Packet::new_unchecked(header);
        ones_add(p.ident(), p.checksum())
    }

    #[test]
    fn checksums_that_start_or_end_at_zero() {
        // Zero before: after the update it is 0x0100, since the sum dropped by 0x0100.
        let mut p = ipv4(0, 64, 47, &[], &[]);
        let id = id_for_zero_checksum(&p);
        p = ipv4(id, 64, 47, &[], &[]);
        assert_eq!(Ipv4Packet::new_unchecked(&p[..]).checksum(), 0);
        let mut frame = eth(0x0800, &p);
        let ip = parsed_ip(&frame);
        let want = expected_v4(&frame);
        forward(&mut frame, &ip, NEXT_HOP, EGRESS).expect("forwarded");
        assert_eq!(frame, want);
        // Zero after: 0x0000, not 0xFFFF (the case RFC 1624 corrects).
        let mut after = ipv4(0, 63, 47, &[], &[]);
        let id = id_for_zero_checksum(&after);
        after = ipv4(id, 64, 47, &[], &[]);
        let mut frame = eth(0x0800, &after);
        let ip = parsed_ip(&frame);
        forward(&mut frame, &ip, NEXT_HOP, EGRESS).expect("forwarded");
        assert_eq!(frame, expected_v4(&eth(0x0800, &after)));
        assert_eq!(frame[24..26], [0, 0]);
    }

    proptest::proptest! {
        /// Random IPv4 headers (options, any TTL, any protocol the parser does not look into,
        /// identifications steered so the checksum is 0x0000 before or after): forwarding gives
        /// byte for byte what a full recomputation gives, or refuses an expiring TTL untouched.
        #[test]
        fn ipv4_forwarding_matches_a_full_recomputation(
            ttl in proptest::num::u8::ANY,
            proto in proptest::sample::select(vec![0u8, 2, 4, 41, 46, 50, 51, 103, 132, 255]),
            option_words in 0usize..=10,
            option_byte in proptest::num::u8::ANY,
            id in proptest::num::u16::ANY,
            edge in 0u8..3,
            src in proptest::num::u32::ANY,
            dst in proptest::num::u32::ANY,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let options = vec![option_byte; option_words * 4];
            let build = |id, ttl| {
                let mut p = ipv4(id, ttl, proto, &options, &payload);
                let mut h = Ipv4Packet::new_unchecked(&mut p[..]);
                h.set_src_addr(Ipv4Address::from(src));
                h.set_dst_addr(Ipv4Address::from(dst));
                h.fill_checksum();
                p
            };
            let id = match edge {
                1 => id_for_zero_checksum(&build(id, ttl)),
                2 => id_for_zero_checksum(&build(id, ttl.wrapping_sub(1))),
                _ => id,
            };
            let mut frame = eth(0x0800, &build(id, ttl));
            let ip = parsed_ip(&frame);
            if ttl <= 1 {
                let before = frame.clone();
                proptest::prop_assert_eq!(
                    forward(&mut frame, &ip, NEXT_HOP, EGRESS),
                    Err(NotForwarded::TtlExceeded)
                );
                proptest::prop_assert_eq!(frame, before);
            } else {
                let want = expected_v4(&frame);
                proptest::prop_assert_eq!(forward(&mut frame, &ip, NEXT_HOP, EGRESS), Ok(()));
                proptest::prop_assert_eq!(&frame, &want);
                proptest::prop_assert!(Ipv4Packet::new_unchecked(&frame[14..]).verify_checksum());
            }
        }
    }
}

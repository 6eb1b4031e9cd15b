//! Internet checksums (RFC 1071) updated incrementally after a header field changes, by
//! RFC 1624's `HC' = ~(~HC + ~m + m')`, so forwarding and NAT never re-read a payload.
//!
//! Eqn. 3 of RFC 1624 rather than the older eqn. 2 of RFC 1141: it gives what a full
//! recomputation gives, 0x0000 included, whenever the old checksum was itself a full
//! computation's result and the data it covers is not all zeros. The remaining cases (a
//! sender's 0xFFFF standing for 0x0000, an all-zero ICMP message) give the other spelling of
//! the same one's-complement value, which verifies just the same.
//!
//! The frame helpers ([`l4_word_changed`], [`addr_changed`]) are for NAT: it writes the new
//! port, identifier or address itself, before or after, since they read only checksum fields.
//! UDP keeps its "0 means no checksum" rule: an absent checksum stays absent, and a computed
//! 0x0000 is sent as 0xFFFF (RFC 768). That holds for UDP over IPv6 too, where a zero checksum
//! is allowed for tunnels (RFC 6935) and Linux's NAT leaves it alone likewise.
//! They assume complete checksums: a frame whose checksum was left partial for offload
//! (AF_PACKET's `TP_STATUS_CSUMNOTREADY`) holds only the pseudo-header sum, and is completed
//! first with [`complete_partial`].
//!
//! [`l4_valid`] verifies an L4 checksum from scratch, as the kernel's conntrack does for every
//! TCP, UDP and ICMP packet that arrives without the NIC having verified it (see
//! [`Engine::handle_rx`](super::engine::Engine::handle_rx)). It and [`complete_partial`] are
//! the only readers of a payload here; they share one summing loop, which adds 32-bit words so that a
//! 1500-byte packet costs a few hundred additions. smoltcp's own summing is private to it, and
//! its public `UdpPacket::verify_checksum` covers the UDP length where the kernel covers the
//! whole IP payload.

use super::packet::{proto, Ip, L4};
use ::core::net::IpAddr;

/// The checksum after one 16-bit word it covers changed from `old` to `new`.
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!checksum) + u64::from(!old) + u64::from(new);
    !fold(sum)
}

/// [`update`] for a run of 16-bit words that changed together, such as an address (4 or 16
/// bytes). Addresses sit at even offsets in every header, as the word pairing here assumes.
pub fn update_words<const N: usize>(checksum: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = u64::from(!checksum);
    // At most 2 * 0xFFFF per pair of words: a u64 cannot overflow for any N that fits memory.
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u64::from(!word(o)) + u64::from(word(n));
    }
    !fold(sum)
}

/// A big-endian word; a lone last byte is the high byte, as RFC 1071 pads it.
fn word(pair: &[u8]) -> u16 {
    match *pair {
        [hi, lo] => u16::from_be_bytes([hi, lo]),
        [hi] => u16::from_be_bytes([hi, 0]),
        _ => 0,
    }
}

/// Why a frame helper changed nothing: the frame is shorter than `ip`'s offsets (it is not
/// the frame `ip` was parsed from), or an address is not of the packet's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch;

/// Where a packet's L4 checksum is, and what it covers beyond the L4 bytes.
#[derive(Clone, Copy)]
struct L4Sum {
    /// Offset of the checksum field in the frame.
    at: usize,
    /// Covers the IP addresses (the pseudo-header): TCP, UDP, ICMPv6, not ICMP.
    pseudo: bool,
    udp: bool,
}

fn l4_sum(ip: &Ip) -> Result<Option<L4Sum>, Mismatch> {
    let (field, pseudo, udp) = match ip.l4 {
        L4::Tcp { .. } => (16, true, false),
        L4::Udp { .. } => (6, true, true),
        L4::Icmp { .. } => (2, ip.proto == proto::ICMPV6, false),
        L4::Gre { .. } | L4::Other => return Ok(None),
    };
    let at = ip.offsets.l4.checked_add(field).ok_or(Mismatch)?;
    Ok(Some(L4Sum { at, pseudo, udp }))
}

/// The checksum field at `at`, if the frame holds it.
fn field(frame: &mut [u8], at: usize) -> Result<&mut [u8; 2], Mismatch> {
    frame
        .get_mut(at..)
        .and_then(|rest| rest.first_chunk_mut::<2>())
        .ok_or(Mismatch)
}

/// Applies `change` to an L4 checksum field, with UDP's zero rule.
fn apply(sum: &mut [u8; 2], udp: bool, change: impl FnOnce(u16) -> u16) {
    let old = u16::from_be_bytes(*sum);
    if udp && old == 0 {
        return;
    }
    let new = change(old);
    *sum = if udp && new == 0 { 0xffff } else { new }.to_be_bytes();
}

/// Updates the L4 checksum of the packet in `frame` (parsed as `ip`) for one 16-bit word of
/// its L4 header that changed from `old` to `new`: a TCP or UDP port, an ICMP or ICMPv6 echo
/// identifier. (Not UDP's length: that word is counted twice, in the pseudo-header too.)
/// Protocols without an L4 checksum the engine knows have nothing to update.
pub fn l4_word_changed(frame: &mut [u8], ip: &Ip, old: u16, new: u16) -> Result<(), Mismatch> {
    let Some(sum) = l4_sum(ip)? else {
        return Ok(());
    };
    apply(field(frame, sum.at)?, sum.udp, |c| update(c, old, new));
    Ok(())
}

/// Updates the checksums of the packet in `frame` (parsed as `ip`) for its source or
/// destination address changing from `old` to `new`: the IPv4 header checksum, and the L4
/// checksum where the pseudo-header covers addresses (TCP, UDP, ICMPv6; ICMP's does not). Both
/// addresses must be of the packet's family. Nothing is written unless everything can be.
pub fn addr_changed(frame: &mut [u8], ip: &Ip, old: IpAddr, new: IpAddr) -> Result<(), Mismatch> {
    let l4 = match l4_sum(ip)? {
        Some(sum) if sum.pseudo => {
            field(frame, sum.at)?;
            Some(sum)
        }
        _ => None,
    };
    let update_for = |c: u16| match (old, new) {
        (IpAddr::V4(o), IpAddr::V4(n)) => update_words(c, &o.octets(), &n.octets()),
        (IpAddr::V6(o), IpAddr::V6(n)) => update_words(c, &o.octets(), &n.octets()),
        // Ruled out below, before anything is written.
        _ => c,
    };
    match (ip.src, old, new) {
        (IpAddr::V4(_), IpAddr::V4(_), IpAddr::V4(_)) => {
            // The IPv4 header checksum, at byte 10 of the header.
            let at = ip.offsets.l3.checked_add(10).ok_or(Mismatch)?;
            let header = field(frame, at)?;
            *header = update_for(u16::from_be_bytes(*header)).to_be_bytes();
        }
        (IpAddr::V6(_), IpAddr::V6(_), IpAddr::V6(_)) => {}
        _ => return Err(Mismatch),
    }
    if let Some(sum) = l4 {
        apply(field(frame, sum.at)?, sum.udp, update_for);
    }
    Ok(())
}

/// Completes the L4 checksum of a packet whose sender left it for offload (Linux's
/// `CHECKSUM_PARTIAL`, which AF_PACKET reports as `TP_STATUS_CSUMNOTREADY` on a frame from a
/// local sender or a veth peer): the field holds the folded sum of the pseudo-header only, and
/// the NIC was to add the sum of the L4 header and payload, the field included, and complement
/// it. That is done here, so the incremental updates of forwarding and NAT start from a full
/// checksum. TCP, UDP, ICMP and ICMPv6, where the sum starts at the L4 header; other
/// protocols have no checksum the engine knows and are left as they are. Reads the payload,
/// unlike the updates: only for the frames that need it.
pub fn complete_partial(frame: &mut [u8], ip: &Ip) -> Result<(), Mismatch> {
    let Some(l4) = l4_sum(ip)? else {
        return Ok(());
    };
    let body = frame.get(ip.offsets.l4..ip.offsets.end).ok_or(Mismatch)?;
    let mut complete = !fold(sum(body));
    if l4.udp && complete == 0 {
        complete = 0xffff;
    }
    *field(frame, l4.at)? = complete.to_be_bytes();
    Ok(())
}

/// Whether the L4 checksum of the packet in `frame` (parsed as `ip`) verifies, as the kernel's
/// conntrack checks it (`nf_ip_checksum`, `nf_ip6_checksum`): over the whole IP payload (for UDP
/// too, whatever its length field says), with the pseudo-header for TCP, UDP and ICMPv6 whose
/// length is the IP payload's. A UDP checksum of 0 means none was sent, over IPv4 and, as
/// conntrack reads it, over IPv6 too. Protocols without a checksum known here (GRE and the
/// rest) verify; a frame that `ip` does not describe does not.
pub fn l4_valid(frame: &[u8], ip: &Ip) -> bool {
    let Ok(l4) = l4_sum(ip) else {
        return false;
    };
    let Some(l4) = l4 else {
        return true;
    };
    let (Some(body), Some(field)) = (
        frame.get(ip.offsets.l4..ip.offsets.end),
        frame.get(l4.at..l4.at + 2),
    ) else {
        return false;
    };
    if l4.udp && field == [0, 0] {
        return true;
    }
    let mut total = sum(body);
    if l4.pseudo {
        total += match (ip.src, ip.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => sum(&s.octets()) + sum(&d.octets()),
            (IpAddr::V6(s), IpAddr::V6(d)) => sum(&s.octets()) + sum(&d.octets()),
            _ => return false,
        };
        // The pseudo-header's protocol and length words (IPv6's 32-bit length has a zero
        // upper word for every packet that fits a frame).
        total += u64::from(ip.proto) + body.len() as u64;
    }
    fold(total) == 0xffff
}

/// The one's-complement sum of `bytes` read as big-endian 16-bit words (a lone last byte is the
/// high byte of its word), not yet folded. Read 64 bits at a time as two 32-bit words: 2^16 is
/// 1 modulo 0xFFFF, so a 32-bit word adds what its two halves add. At most 2^33 per 8 bytes:
/// no IP packet can overflow the u64.
pub(crate) fn sum(bytes: &[u8]) -> u64 {
    let mut total: u64 = 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        if let Ok(eight) = <[u8; 8]>::try_from(chunk) {
            let v = u64::from_be_bytes(eight);
            total += (v >> 32) + (v & 0xffff_ffff);
        }
    }
    // The remainder starts at a multiple of 8, so its pairs are words of the whole.
    for pair in chunks.remainder().chunks(2) {
        total += u64::from(word(pair));
    }
    total
}

/// Adds the carries back in (end-around carry) until the sum fits 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::packet::{parse, Payload};
    use ::core::net::{Ipv4Addr, Ipv6Addr};
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::strategy::{Just, Strategy};
    use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpAddress, Ipv4Packet, TcpPacket, UdpPacket};

    /// RFC 1071 over 16-bit words, written out so the tests do not lean on the code they test.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = words.iter().map(|&w| u32::from(w)).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc_1624_worked_example() {
        // RFC 1624 §4: the other header words sum to 0xCD7A, and a word changes from 0x5555
        // to 0x3285. The checksum 0xDD2F must become 0x0000, where eqn. 2 gives 0xFFFF.
        let hc = full(&[0xcd7a, 0x5555]);
        assert_eq!(hc, 0xdd2f);
        assert_eq!(full(&[0xcd7a, 0x3285]), 0x0000);
        assert_eq!(update(hc, 0x5555, 0x3285), 0x0000);
    }

    proptest::proptest! {
        #[test]
        fn one_word_matches_a_full_recomputation(
            mut words in proptest::collection::vec(proptest::num::u16::ANY, 1..30),
            at in proptest::num::usize::ANY,
            new in proptest::prop_oneof![
                proptest::num::u16::ANY,
                proptest::strategy::Just(0u16),
                proptest::strategy::Just(0xffffu16),
            ],
        ) {
            let at = at % words.len();
            let before = full(&words);
            let old = words[at];
            words[at] = new;
            let after = full(&words);
            // Exact unless the new data is all zeros (its full checksum is 0xFFFF, "-0",
            // where the update gives the equivalent 0x0000).
            if words.iter().any(|&w| w != 0) {
                proptest::prop_assert_eq!(update(before, old, new), after);
            } else {
                proptest::prop_assert!(update(before, old, new) == 0 && after == 0xffff);
            }
        }
    }

    /// An Ethernet frame carrying `l4` (its checksum field as given) over IPv4 or IPv6.
    fn frame(v6: bool, proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) if !v6 => {
                f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) if v6 => {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[proto, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("addresses of the wrong family"),
        }
        f.extend_from_slice(l4);
        if !v6 {
            Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
        }
        f
    }

    /// What smoltcp computes from scratch for the packet as it now stands: the IPv4 header
    /// checksum and the L4 one (UDP with its zero rule: an absent checksum left absent).
    fn recompute(f: &mut [u8], ip: &Ip) {
        let (l3, l4, end) = (ip.offsets.l3, ip.offsets.l4, ip.offsets.end);
        let (src, dst) = match f[l3] >> 4 {
            4 => {
                let mut h = Ipv4Packet::new_unchecked(&mut f[l3..l4]);
                h.fill_checksum();
                (IpAddress::from(h.src_addr()), IpAddress::from(h.dst_addr()))
            }
            _ => {
                let h = smoltcp::wire::Ipv6Packet::new_unchecked(&f[l3..l4]);
                (IpAddress::from(h.src_addr()), IpAddress::from(h.dst_addr()))
            }
        };
        let body = &mut f[l4..end];
        match (ip.proto, src, dst) {
            (proto::TCP, _, _) => TcpPacket::new_unchecked(body).fill_checksum(&src, &dst),
            (proto::UDP, _, _) => {
                let mut u = UdpPacket::new_unchecked(body);
                if u.checksum() != 0 {
                    u.fill_checksum(&src, &dst);
                }
            }
            (proto::ICMP, IpAddress::Ipv4(_), _) => {
                Icmpv4Packet::new_unchecked(body).fill_checksum()
            }
            (proto::ICMPV6, IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                Icmpv6Packet::new_unchecked(body).fill_checksum(&s, &d)
            }
            _ => {}
        }
    }

    /// Whether smoltcp accepts the L4 checksum (and the IPv4 header one).
    fn verifies(f: &[u8], ip: &Ip) -> bool {
        let (l3, l4, end) = (ip.offsets.l3, ip.offsets.l4, ip.offsets.end);
        let (src, dst, header_ok) = match f[l3] >> 4 {
            4 => {
                let h = Ipv4Packet::new_unchecked(&f[l3..l4]);
                (
                    IpAddress::from(h.src_addr()),
                    IpAddress::from(h.dst_addr()),
                    h.verify_checksum(),
                )
            }
            _ => {
                let h = smoltcp::wire::Ipv6Packet::new_unchecked(&f[l3..l4]);
                (
                    IpAddress::from(h.src_addr()),
                    IpAddress::from(h.dst_addr()),
                    true,
                )
            }
        };
        let body = &f[l4..end];
        header_ok
            && match (ip.proto, src, dst) {
                (proto::TCP, _, _) => TcpPacket::new_unchecked(body).verify_checksum(&src, &dst),
                (proto::UDP, _, _) => UdpPacket::new_unchecked(body).verify_checksum(&src, &dst),
                (proto::ICMP, _, _) => Icmpv4Packet::new_unchecked(body).verify_checksum(),
                (proto::ICMPV6, IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                    Icmpv6Packet::new_unchecked(body).verify_checksum(&s, &d)
                }
                _ => true,
            }
    }

    fn parsed(f: &[u8]) -> Ip {
        match parse(f).map(|p| p.payload) {
            Ok(Payload::Ip(ip)) => ip,
            other => panic!("{other:?}"),
        }
    }

    /// An L4 message of `proto` with ports / echo identifier `a`, `b` and a payload.
    fn l4_bytes(proto: u8, a: u16, b: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        match proto {
            proto::TCP => {
                m.extend_from_slice(&a.to_be_bytes());
                m.extend_from_slice(&b.to_be_bytes());
                m.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 9, 0x50, 0x18, 0xfa, 0xf0, 0, 0, 0, 0]);
            }
            proto::UDP => {
                m.extend_from_slice(&a.to_be_bytes());
                m.extend_from_slice(&b.to_be_bytes());
                m.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                m.extend_from_slice(&[0, 0]);
            }
            // ICMP / ICMPv6 echo request: the identifier and sequence number as a and b.
            proto::ICMP | proto::ICMPV6 => {
                let ty = if proto == proto::ICMP { 8 } else { 128 };
                m.extend_from_slice(&[ty, 0, 0, 0]);
                m.extend_from_slice(&a.to_be_bytes());
                m.extend_from_slice(&b.to_be_bytes());
            }
            _ => {}
        }
        m.extend_from_slice(payload);
        m
    }

    /// A word or an address that is often one of the edge values.
    fn edgy_u16() -> impl Strategy<Value = u16> {
        proptest::prop_oneof![proptest::num::u16::ANY, Just(0u16), Just(0xffffu16)]
    }

    fn edgy_addr(v6: bool) -> impl Strategy<Value = IpAddr> {
        let any = if v6 {
            proptest::num::u128::ANY
                .prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
                .boxed()
        } else {
            proptest::num::u32::ANY
                .prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)))
                .boxed()
        };
        let (zero, ones) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::from(u128::MAX)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::BROADCAST),
            )
        };
        proptest::prop_oneof![4 => any, 1 => Just(zero), 1 => Just(ones)]
    }

    /// A random packet (an echo request for ICMP, so the data an ICMP checksum covers is never
    /// all zeros, the one case a full recomputation spells differently): (v6, proto, src, dst, first word, second word, payload, UDP checksum
    /// absent). ICMP only over IPv4, ICMPv6 only over IPv6.
    #[allow(clippy::type_complexity)]
    fn packet() -> impl Strategy<Value = (bool, u8, IpAddr, IpAddr, u16, u16, Vec<u8>, bool)> {
        proptest::bool::ANY.prop_flat_map(|v6| {
            let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
            (
                Just(v6),
                proptest::sample::select(vec![proto::TCP, proto::UDP, icmp]),
                edgy_addr(v6),
                edgy_addr(v6),
                edgy_u16(),
                edgy_u16(),
                proptest::collection::vec(proptest::num::u8::ANY, 0..24),
                proptest::bool::weighted(0.1),
            )
        })
    }

    /// Builds the packet with full checksums, then the UDP checksum cleared if asked.
    #[allow(clippy::too_many_arguments)]
    fn build(
        v6: bool,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        a: u16,
        b: u16,
        payload: &[u8],
        no_udp_sum: bool,
    ) -> (Vec<u8>, Ip) {
        let mut f = frame(v6, proto, src, dst, &l4_bytes(proto, a, b, payload));
        let ip = parsed(&f);
        // A UDP checksum field of 0 is "absent" to `recompute`: seed it so it fills one in.
        if proto == proto::UDP {
            f[ip.offsets.l4 + 6] = 1;
        }
        recompute(&mut f, &ip);
        if proto == proto::UDP && no_udp_sum {
            f[ip.offsets.l4 + 6..ip.offsets.l4 + 8].copy_from_slice(&[0, 0]);
        }
        (f, ip)
    }

    /// The L4 checksum of a frame.
    fn l4_checksum(f: &[u8], ip: &Ip) -> u16 {
        let at = ip.offsets.l4
            + match ip.proto {
                proto::TCP => 16,
                proto::UDP => 6,
                _ => 2,
            };
        u16::from_be_bytes([f[at], f[at + 1]])
    }

    proptest::proptest! {
        /// A port or echo identifier changed (to an edge value, to a random one, or to the
        /// value that makes the full checksum 0x0000): the incremental update gives the bytes
        /// smoltcp's full recomputation gives, UDP's zero rule included.
        #[test]
        fn l4_word_change_matches_a_full_recomputation(
            (v6, proto, src, dst, a, b, payload, no_udp_sum) in packet(),
            second in proptest::bool::ANY,
            new in edgy_u16(),
            to_zero in proptest::bool::weighted(0.2),
        ) {
            let (mut f, ip) = build(v6, proto, src, dst, a, b, &payload, no_udp_sum);
            // The word: a port (TCP, UDP) or the identifier / sequence number (ICMP echo).
            let at = ip.offsets.l4 + match (proto, second) {
                (proto::TCP | proto::UDP, false) => 0,
                (proto::TCP | proto::UDP, true) => 2,
                (_, false) => 4,
                (_, true) => 6,
            };
            let old = u16::from_be_bytes([f[at], f[at + 1]]);
            // Adding the checksum C to a covered word makes the sum 0xFFFF, the checksum 0.
            let new = if to_zero {
                let s = u32::from(old) + u32::from(l4_checksum(&f, &ip));
                ((s & 0xffff) + (s >> 16)) as u16
            } else {
                new
            };
            let mut want = f.clone();
            want[at..at + 2].copy_from_slice(&new.to_be_bytes());
            recompute(&mut want, &ip);

            f[at..at + 2].copy_from_slice(&new.to_be_bytes());
            proptest::prop_assert_eq!(l4_word_changed(&mut f, &ip, old, new), Ok(()));
            proptest::prop_assert_eq!(&f, &want);
            proptest::prop_assert!(verifies(&f, &ip));
            if proto == proto::UDP {
                // Absent stays absent; present is never written as 0.
                proptest::prop_assert_eq!(l4_checksum(&f, &ip) == 0, no_udp_sum);
            }
        }

        /// A source or destination address changed: the IPv4 header and L4 checksums are
        /// what a full recomputation gives (ICMP's, which has no pseudo-header, unchanged).
        #[test]
        fn address_change_matches_a_full_recomputation(
            (v6, proto, src, dst, a, b, payload, no_udp_sum) in packet(),
            change_dst in proptest::bool::ANY,
            new4 in edgy_addr(false),
            new6 in edgy_addr(true),
        ) {
            let (mut f, ip) = build(v6, proto, src, dst, a, b, &payload, no_udp_sum);
            let new = if v6 { new6 } else { new4 };
            let (old, at) = match (change_dst, v6) {
                (false, false) => (src, ip.offsets.l3 + 12),
                (true, false) => (dst, ip.offsets.l3 + 16),
                (false, true) => (src, ip.offsets.l3 + 8),
                (true, true) => (dst, ip.offsets.l3 + 24),
            };
            let octets: Vec<u8> = match new {
                IpAddr::V4(n) => n.octets().to_vec(),
                IpAddr::V6(n) => n.octets().to_vec(),
            };
            let mut want = f.clone();
            want[at..at + octets.len()].copy_from_slice(&octets);
            recompute(&mut want, &ip);

            f[at..at + octets.len()].copy_from_slice(&octets);
            proptest::prop_assert_eq!(addr_changed(&mut f, &ip, old, new), Ok(()));
            proptest::prop_assert_eq!(&f, &want);
            proptest::prop_assert!(verifies(&f, &ip));
            if proto == proto::UDP {
                proptest::prop_assert_eq!(l4_checksum(&f, &ip) == 0, no_udp_sum);
            }
        }
    }

    /// The 16-bit words of the pseudo-header of the packet in `f` (none for ICMP over IPv4).
    fn pseudo_words(f: &[u8], ip: &Ip) -> Vec<u16> {
        let len = ip.offsets.end - ip.offsets.l4;
        let mut words = Vec::new();
        let mut addrs = |bytes: &[u8]| {
            for pair in bytes.chunks(2) {
                words.push(u16::from_be_bytes([pair[0], pair[1]]));
            }
        };
        match (ip.src, ip.proto) {
            (IpAddr::V4(_), proto::ICMP) => return Vec::new(),
            (IpAddr::V4(_), _) => addrs(&f[ip.offsets.l3 + 12..ip.offsets.l3 + 20]),
            (IpAddr::V6(_), _) => addrs(&f[ip.offsets.l3 + 8..ip.offsets.l3 + 40]),
        }
        words.extend_from_slice(&[(len >> 16) as u16, len as u16, u16::from(ip.proto)]);
        words
    }

    proptest::proptest! {
        /// A checksum left partial for offload (the field seeded with the pseudo-header's
        /// folded sum, as Linux leaves it) is completed to what a full computation gives.
        #[test]
        fn partial_checksums_are_completed(
            (v6, proto, src, dst, a, b, payload, _) in packet(),
        ) {
            let (mut f, ip) = build(v6, proto, src, dst, a, b, &payload, false);
            let want = f.clone();
            let at = ip.offsets.l4 + match proto {
                proto::TCP => 16,
                proto::UDP => 6,
                _ => 2,
            };
            // `full` complements the folded sum; the seed is the folded sum itself.
            let pseudo = pseudo_words(&f, &ip);
            let seed = if pseudo.is_empty() { 0 } else { !full(&pseudo) };
            f[at..at + 2].copy_from_slice(&seed.to_be_bytes());
            proptest::prop_assert_eq!(complete_partial(&mut f, &ip), Ok(()));
            proptest::prop_assert_eq!(&f, &want);
            proptest::prop_assert!(verifies(&f, &ip));
        }
    }

    #[test]
    fn completing_needs_the_whole_packet_and_leaves_other_protocols_alone() {
        let (f, ip) = build(
            false,
            proto::TCP,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            1,
            2,
            b"data",
            false,
        );
        let mut short = f[..f.len() - 1].to_vec();
        assert_eq!(complete_partial(&mut short, &ip), Err(Mismatch));
        assert_eq!(short, f[..f.len() - 1]);
        let mut gre = frame(
            false,
            47,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            &[1, 2, 3, 4],
        );
        let ip = parsed(&gre);
        let before = gre.clone();
        assert_eq!(complete_partial(&mut gre, &ip), Ok(()));
        assert_eq!(gre, before);
    }

    #[test]
    fn udp_checksums_that_come_out_zero_are_sent_as_ffff() {
        let src = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
        let dst = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let (f, ip) = build(false, proto::UDP, src, dst, 40000, 53, b"q", false);
        // Every source port that gives a computed checksum of 0x0000 (there is one).
        let mut seen = 0;
        for port in 0..=u16::MAX {
            let mut g = f.clone();
            g[ip.offsets.l4..ip.offsets.l4 + 2].copy_from_slice(&port.to_be_bytes());
            assert_eq!(l4_word_changed(&mut g, &ip, 40000, port), Ok(()));
            assert!(verifies(&g, &ip), "{port}");
            let mut want = g.clone();
            recompute(&mut want, &ip);
            assert_eq!(g, want, "{port}");
            if l4_checksum(&g, &ip) == 0xffff {
                seen += 1;
                // And from 0xFFFF on, back to the original port: the original checksum.
                assert_eq!(l4_word_changed(&mut g, &ip, port, 40000), Ok(()));
                g[ip.offsets.l4..ip.offsets.l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
                assert_eq!(g, f);
            }
            assert_ne!(l4_checksum(&g, &ip), 0);
        }
        assert_eq!(seen, 1);
    }

    #[test]
    fn a_tcp_checksum_sent_as_ffff_still_verifies_after_an_update() {
        let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        // Find a source port whose full checksum is 0x0000, then spell it 0xFFFF as some
        // senders do; every change from there must still verify.
        let (mut f, ip) = (0..=u16::MAX)
            .map(|p| build(false, proto::TCP, src, dst, p, 80, b"", false))
            .find(|(f, ip)| l4_checksum(f, ip) == 0)
            .expect("some port sums to 0xFFFF");
        let at = ip.offsets.l4 + 16;
        f[at..at + 2].copy_from_slice(&[0xff, 0xff]);
        assert!(verifies(&f, &ip));
        let old = u16::from_be_bytes([f[ip.offsets.l4], f[ip.offsets.l4 + 1]]);
        for new in [0, 1, 0x7fff, 0xfffe, 0xffff, old] {
            let mut g = f.clone();
            g[ip.offsets.l4..ip.offsets.l4 + 2].copy_from_slice(&new.to_be_bytes());
            assert_eq!(l4_word_changed(&mut g, &ip, old, new), Ok(()));
            assert!(verifies(&g, &ip), "{new:#x}");
        }
    }

    #[test]
    fn mismatches_change_nothing() {
        let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let (f, ip) = build(
            false,
            proto::TCP,
            v4([10, 0, 0, 1]),
            v4([10, 0, 0, 2]),
            1,
            2,
            b"",
            false,
        );
        let new = v4([10, 0, 0, 3]);
        for (old, new) in [(v6, new), (v4([10, 0, 0, 1]), v6), (v6, v6)] {
            let mut g = f.clone();
            assert_eq!(addr_changed(&mut g, &ip, old, new), Err(Mismatch));
            assert_eq!(g, f);
        }
        // Frames too short for the L4 checksum field: nothing written, not even the header.
        let field_end = ip.offsets.l4 + 18;
        for len in [0, ip.offsets.l3 + 11, ip.offsets.l4 + 17] {
            let mut g = f[..len.min(field_end)].to_vec();
            let before = g.clone();
            assert_eq!(l4_word_changed(&mut g, &ip, 1, 5), Err(Mismatch), "{len}");
            assert_eq!(
                addr_changed(&mut g, &ip, v4([10, 0, 0, 1]), new),
                Err(Mismatch)
            );
            assert_eq!(g, before);
        }
        // ICMP over IPv4: an address change touches only the IP header.
        let (f, ip) = build(
            false,
            proto::ICMP,
            v4([10, 0, 0, 1]),
            v4([10, 0, 0, 2]),
            7,
            1,
            b"",
            false,
        );
        let mut g = f.clone();
        assert_eq!(addr_changed(&mut g, &ip, v4([10, 0, 0, 1]), new), Ok(()));
        assert_eq!(g[ip.offsets.l4..], f[ip.offsets.l4..]);
        assert_ne!(g[..ip.offsets.l4], f[..ip.offsets.l4]);
        // Protocols with no checksum known here: nothing to do, and nothing done.
        let mut other = frame(
            false,
            47,
            v4([10, 0, 0, 1]),
            v4([10, 0, 0, 2]),
            &[1, 2, 3, 4],
        );
        let ip = parsed(&other);
        let before = other.clone();
        assert_eq!(l4_word_changed(&mut other, &ip, 1, 2), Ok(()));
        assert_eq!(other, before);
    }

    proptest::proptest! {
        /// Summing 64 bits at a time gives the RFC 1071 sum word by word, for any length.
        #[test]
        fn sum_is_the_word_by_word_sum(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let words: Vec<u16> = bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], p.get(1).copied().unwrap_or(0)]))
                .collect();
            proptest::prop_assert_eq!(!fold(sum(&bytes)), full(&words));
        }

        /// A packet with a full checksum verifies, as smoltcp says it does; one bit flipped
        /// anywhere in the segment (or in an address the pseudo-header covers) does not, unless
        /// it leaves a UDP checksum of 0, which means none.
        #[test]
        fn l4_valid_accepts_full_checksums_and_no_flipped_bit(
            (v6, proto, src, dst, a, b, payload, no_udp_sum) in packet(),
            at in proptest::num::usize::ANY,
            bit in 0..8u8,
            in_address in proptest::bool::weighted(0.2),
        ) {
            let (f, ip) = build(v6, proto, src, dst, a, b, &payload, no_udp_sum);
            proptest::prop_assert!(l4_valid(&f, &ip));
            proptest::prop_assert!(verifies(&f, &ip));
            let mut g = f.clone();
            let (from, to) = match (in_address, v6) {
                (true, false) => (ip.offsets.l3 + 12, ip.offsets.l3 + 20),
                (true, true) => (ip.offsets.l3 + 8, ip.offsets.l3 + 40),
                (false, _) => (ip.offsets.l4, ip.offsets.end),
            };
            let at = from + at % (to - from);
            g[at] ^= 1 << bit;
            if in_address && !v6 {
                // Keep the IPv4 header valid: only the L4 checksum is under test.
                Ipv4Packet::new_unchecked(&mut g[ip.offsets.l3..ip.offsets.l4]).fill_checksum();
            }
            let Ok(Payload::Ip(flipped)) = parse(&g).map(|p| p.payload) else {
                // The flip broke the header (a length, a data offset): not for this test.
                return Ok(());
            };
            let covered = !(proto == proto::ICMP && in_address);
            let absent = proto == proto::UDP && l4_checksum(&g, &flipped) == 0;
            proptest::prop_assert_eq!(l4_valid(&g, &flipped), !covered || absent);
        }
    }

    #[test]
    fn udp_is_verified_over_the_ip_payload_as_the_kernel_does() {
        let src = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));
        let dst = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        // A datagram whose UDP length leaves two bytes of the IP payload out, checksummed
        // over the UDP length as RFC 768 has it: smoltcp accepts it, the kernel's conntrack
        // (which sums the IP payload, pseudo-header length included) does not.
        let (f, _) = build(false, proto::UDP, src, dst, 40000, 53, b"query\0\0", false);
        let mut g = f.clone();
        let ip = parsed(&g);
        let l4 = ip.offsets.l4;
        g[l4 + 4..l4 + 6].copy_from_slice(&13u16.to_be_bytes());
        g[l4 + 6..l4 + 8].copy_from_slice(&[0, 1]);
        let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
        UdpPacket::new_unchecked(&mut g[l4..]).fill_checksum(&s, &d);
        let ip = parsed(&g);
        assert!(UdpPacket::new_unchecked(&g[l4..]).verify_checksum(&s, &d));
        assert!(!l4_valid(&g, &ip));
        // The same with the UDP length covering the whole payload verifies.
        assert!(l4_valid(&f, &parsed(&f)));
    }

    #[test]
    fn zero_udp_checksums_are_none_and_zero_icmp_is_wrong() {
        for v6 in [false, true] {
            let (src, dst) = if v6 {
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                )
            };
            let (f, ip) = build(v6, proto::UDP, src, dst, 1, 2, b"x", true);
            assert_eq!(l4_checksum(&f, &ip), 0);
            assert!(l4_valid(&f, &ip), "v6: {v6}");
        }
        // An all-zero ICMP message with a zero checksum sums to 0, not 0xFFFF.
        let zero = frame(
            false,
            proto::ICMP,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            &[0; 8],
        );
        assert!(!l4_valid(&zero, &parsed(&zero)));
        // Other protocols carry nothing verified here; a frame shorter than its packet fails.
        let gre = frame(
            false,
            47,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            &[0xde, 0xad, 0xbe, 0xef],
        );
        assert!(l4_valid(&gre, &parsed(&gre)));
        let (f, ip) = build(
            false,
            proto::TCP,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            1,
            2,
            b"data",
            false,
        );
        assert!(l4_valid(&f, &ip));
        assert!(!l4_valid(&f[..f.len() - 1], &ip));
    }

    #[test]
    fn update_words_is_update_word_by_word() {
        let (old, new) = ([0x12, 0x34, 0xff, 0xff], [0x00, 0x00, 0xab, 0xcd]);
        let stepwise = update(update(0x5a5a, 0x1234, 0x0000), 0xffff, 0xabcd);
        assert_eq!(update_words(0x5a5a, &old, &new), stepwise);
    }
}

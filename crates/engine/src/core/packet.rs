//! One Ethernet frame → a small [`Parsed`] value (ARP, or IP with ports, TCP flags, ICMP fields
//! and the offsets a header rewrite needs), or the [`DropReason`] that says why not.
//!
//! The views are `smoltcp::wire`'s; every length is checked by their `new_checked` or here
//! before a getter reads it, so no input can make this panic. Decisions worth knowing:
//! - only plain Ethernet II: VLAN-tagged and other ethertypes are `non_ip`;
//! - IPv4 fragments (MF set or a non-zero offset) are `fragmented_ipv4`, checked after the
//!   header checksum, so a damaged header is `malformed_packet` whatever its flags say. The
//!   engine drops every fragment as it arrives (SPEC §8). The kernel plane differs there by
//!   design: its `nf_defrag_ipv4` holds fragments until their datagram is whole (up to
//!   `ipfrag_time`, 30 s), its conntrack and rules see the datagram, and it forwards an
//!   accepted one fragmented again; a train that never completes it frees silently. Both
//!   forward nothing of a lone or incomplete train, the kernel plane all of a complete one;
//! - IPv4 options are read as Linux reads them on arrival (`ip_options_compile`, then
//!   `ip_rcv_options`), into [`Options`]: malformed options, and source routes (which Linux
//!   refuses unless `accept_source_route` is on for `all` and the interface; `all` is off by
//!   default), mean the packet is not to be routed; a record-route option with room says where
//!   the address goes. Parsing does not refuse them: the kernel drops such packets after its
//!   conntrack has seen them, and so does the engine (see `engine`);
//! - IPv6 whose first next-header is an extension header (hop-by-hop, routing, fragment,
//!   destination options, AH, mobility, HIP, shim6, experimental) is `ipv6_unsupported`:
//!   walking the chain would put unbounded work before the ports, and nothing ward forwards
//!   needs it. ESP and "no next header" end the chain, so they are upper-layer protocols here;
//! - GRE is read as the kernel's GRE tracker reads it (`gre_pkt_to_tuple`): version 1 (PPTP)
//!   with at least 8 bytes has a call id, which is part of its flow's tuple, and is
//!   `malformed_packet` unless it carries PPP (conntrack makes no tuple of it and calls it
//!   invalid); any other GRE, of any length, is tracked by its addresses alone;
//! - L4 checksums are not verified here: frames read from AF_PACKET may carry partial
//!   checksums left for offload, or ones the NIC verified already, which only the I/O layer
//!   can tell. The engine verifies them after parsing unless told otherwise
//!   ([`Engine::handle_rx`](super::engine::Engine::handle_rx), [`super::checksum::l4_valid`]).

use super::DropReason;
use ::core::net::{IpAddr, Ipv4Addr};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, IPV4_HEADER_LEN,
};

/// IP protocol numbers the engine looks into.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
}

/// ICMP types that carry an echo identifier.
pub mod icmp_type {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

/// What one frame carries, with the Ethernet addresses it came with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: EthernetAddress,
    pub src_mac: EthernetAddress,
    pub payload: Payload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    Arp(Arp),
    Ip(Ip),
}

/// An Ethernet / IPv4 ARP packet (the only kind there is on the networks ward serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: ArpOperation,
    pub sender_mac: EthernetAddress,
    pub sender_ip: Ipv4Addr,
    pub target_mac: EthernetAddress,
    pub target_ip: Ipv4Addr,
}

/// An IPv4 or IPv6 packet, as far as forwarding and filtering need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (IPv6: the next header, which is never an extension header here).
    pub proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub l4: L4,
    pub offsets: Offsets,
    /// What the IPv4 options ask of a router (the default for IPv6 and for no options).
    pub options: Options,
}

/// A router's reading of a packet's IPv4 options: `ip_options_compile`'s, with the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Why the packet must not be routed, if it must not.
    pub refused: Option<Refusal>,
    /// Where, from the start of the IP header, a record-route option with room for another
    /// address begins: a router writes the address it sends the packet from at the option's
    /// pointer and moves the pointer on.
    pub record_route: Option<u8>,
}

/// Why Linux drops a packet for its IPv4 options before routing it (`ip_rcv_options`), and so
/// before any rule of the kernel plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An option whose length runs past the options or under its minimum, a pointer out of
    /// place, a second source route, record route or timestamp, a full timestamp whose
    /// overflow count is full too, a CIPSO label (no CIPSO domain is configured, so
    /// `cipso_v4_validate` refuses every one): what `ip_options_compile` rejects with a
    /// parameter problem, counted as `InHdrErrors`.
    Malformed,
    /// Loose or strict source routing: Linux honours it only with `accept_source_route`, which
    /// is off for `all` by default (and logs it as a martian).
    SourceRoute,
}

/// IPv4 option types the kernel checks (RFC 791, RFC 1108, RFC 2113).
mod option {
    pub const END: u8 = 0;
    pub const NOOP: u8 = 1;
    pub const RR: u8 = 7;
    pub const TIMESTAMP: u8 = 68;
    pub const LSRR: u8 = 131;
    pub const CIPSO: u8 = 134;
    pub const SSRR: u8 = 137;
    pub const RA: u8 = 148;
    /// Timestamp flags (the low nibble of the fourth byte) that need room for an address too.
    pub const TS_AND_ADDR: u8 = 1;
    pub const TS_PRESPEC: u8 = 3;
}

/// Reads IPv4 options as `ip_options_compile` does for a received packet (with the packet, so
/// option kinds it only refuses from local senders are accepted). `opts` is what follows the
/// fixed header, up to the IHL.
fn ipv4_options(opts: &[u8]) -> Options {
    let malformed = Options {
        refused: Some(Refusal::Malformed),
        record_route: None,
    };
    let mut out = Options::default();
    let (mut srr, mut rr, mut ts) = (false, false, false);
    let mut at = 0;
    while let Some(&kind) = opts.get(at) {
        match kind {
            option::END => break,
            option::NOOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        // A last byte with no room for a length is refused whatever follows it: the kernel
        // reads on past the options, and no length is both at least 2 and at most 1.
        let left = opts.len() - at;
        let len = match opts.get(at + 1) {
            Some(&len) if usize::from(len) >= 2 && usize::from(len) <= left => usize::from(len),
            _ => return malformed,
        };
        let Some(o) = opts.get(at..at + len) else {
            return malformed;
        };
        // The pointer, for the options that have one: 1-based, from the option's start.
        let ptr = o.get(2).map_or(0, |p| usize::from(*p));
        match kind {
            option::LSRR | option::SSRR => {
                if len < 3 || ptr < 4 || srr {
                    return malformed;
                }
                srr = true;
            }
            option::RR => {
                if rr || len < 3 || ptr < 4 {
                    return malformed;
                }
                if ptr <= len {
                    if ptr + 3 > len {
                        return malformed;
                    }
                    // Options start 20 bytes into the header, which is at most 60 long.
                    out.record_route = u8::try_from(20 + at).ok();
                }
                rr = true;
            }
            option::TIMESTAMP => {
                if ts || len < 4 || ptr < 5 {
                    return malformed;
                }
                let flags = o.get(3).copied().unwrap_or(0);
                let kind = flags & 0x0f;
                if ptr <= len {
                    if ptr + 3 > len {
                        return malformed;
                    }
                    let with_address = matches!(kind, option::TS_AND_ADDR | option::TS_PRESPEC);
                    if with_address && ptr + 7 > len {
                        return malformed;
                    }
                    // Other flags are accepted from the wire, and stamped with nothing.
                } else if kind != option::TS_PRESPEC && flags >> 4 == 15 {
                    // Full: the overflow count goes up, unless it cannot (prespecified
                    // addresses are not counted).
                    return malformed;
                }
                ts = true;
            }
            option::RA if len < 4 => return malformed,
            // Refused by `cipso_v4_validate` for want of a configured domain of interpretation
            // (and a second one outright).
            option::CIPSO => return malformed,
            _ => {}
        }
        at += len;
    }
    if srr {
        out.refused = Some(Refusal::SourceRoute);
    }
    out
}

/// Byte offsets into the frame, for rewriting headers in place later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// Start of the IP header.
    pub l3: usize,
    /// Start of the L4 header (the IP payload).
    pub l4: usize,
    /// End of the IP packet; Ethernet padding after it is not part of the packet.
    pub end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: TcpFlags,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP over IPv4 or ICMPv6 over IPv6 ([`Ip::proto`] says which).
    Icmp {
        ty: u8,
        code: u8,
        /// The identifier of an echo request or reply.
        echo_id: Option<u16>,
    },
    /// GRE, with the key its flow is tracked by: the call id of a PPTP (version 1) packet,
    /// 0 for any other GRE (see the module doc).
    Gre {
        key: u16,
    },
    /// Any other upper-layer protocol: filtered and tracked by address and protocol only.
    Other,
}

impl L4 {
    pub fn dport(&self) -> Option<u16> {
        match *self {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => Some(dport),
            L4::Icmp { .. } | L4::Gre { .. } | L4::Other => None,
        }
    }
}

/// The TCP flags byte; the constants are its bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
    pub fn any(self, bits: u8) -> bool {
        self.0 & bits != 0
    }

    /// Whether some TCP state allows this combination. PSH aside (and ECE and CWR, which are
    /// not kept here), it must be one of SYN, SYN+URG, SYN+ACK, RST, RST+ACK, FIN+ACK,
    /// FIN+ACK+URG, ACK or ACK+URG: the kernel's conntrack calls any other segment invalid
    /// whatever its flow's state (`tcp_valid_flags`), so no flag, a lone FIN, SYN+FIN,
    /// SYN+RST or everything set is never forwarded by the kernel data plane.
    pub fn valid(self) -> bool {
        const VALID: [u8; 9] = {
            let (fin, syn, rst, ack, urg) = (
                TcpFlags::FIN,
                TcpFlags::SYN,
                TcpFlags::RST,
                TcpFlags::ACK,
                TcpFlags::URG,
            );
            [
                syn,
                syn | urg,
                syn | ack,
                rst,
                rst | ack,
                fin | ack,
                fin | ack | urg,
                ack,
                ack | urg,
            ]
        };
        VALID.contains(&(self.0 & !TcpFlags::PSH))
    }
}

const MALFORMED: DropReason = DropReason::MalformedPacket;

/// Parses one Ethernet frame. Trailing bytes after the IP packet (Ethernet padding) are ignored.
pub fn parse(frame: &[u8]) -> Result<Parsed, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| MALFORMED)?;
    let l3 = EthernetFrame::<&[u8]>::header_len();
    let body = eth.payload();
    let payload = match eth.ethertype() {
        EthernetProtocol::Ipv4 => Payload::Ip(ipv4(body, l3)?),
        EthernetProtocol::Ipv6 => Payload::Ip(ipv6(body, l3)?),
        EthernetProtocol::Arp => Payload::Arp(arp(body)?),
        EthernetProtocol::Unknown(_) => return Err(DropReason::NonIp),
    };
    Ok(Parsed {
        dst_mac: eth.dst_addr(),
        src_mac: eth.src_addr(),
        payload,
    })
}

fn arp(body: &[u8]) -> Result<Arp, DropReason> {
    let packet = ArpPacket::new_checked(body).map_err(|_| MALFORMED)?;
    // The only representation smoltcp has is Ethernet + IPv4 with 6- and 4-byte addresses;
    // anything else is not an ARP packet for this network.
    match ArpRepr::parse(&packet).map_err(|_| MALFORMED)? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        } => Ok(Arp {
            op: operation,
            sender_mac: source_hardware_addr,
            sender_ip: source_protocol_addr,
            target_mac: target_hardware_addr,
            target_ip: target_protocol_addr,
        }),
        // `ArpRepr` is non-exhaustive: a kind added later is not one this network uses.
        _ => Err(MALFORMED),
    }
}

fn ipv4(body: &[u8], l3: usize) -> Result<Ip, DropReason> {
    // Checks the buffer against 20 bytes, the IHL and the total length, but not IHL >= 5: a
    // header "shorter" than its fixed fields would put the L4 header on top of the addresses
    // and the checksum only over what the IHL covers, so that is refused here.
    let packet = Ipv4Packet::new_checked(body).map_err(|_| MALFORMED)?;
    if packet.version() != 4
        || usize::from(packet.header_len()) < IPV4_HEADER_LEN
        || !packet.verify_checksum()
    {
        return Err(MALFORMED);
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Err(DropReason::FragmentedIpv4);
    }
    let proto = u8::from(packet.next_header());
    let l4 = upper_layer(proto, packet.payload(), false)?;
    let header_len = usize::from(packet.header_len());
    let options = match body.get(IPV4_HEADER_LEN..header_len) {
        Some(opts) if !opts.is_empty() => ipv4_options(opts),
        _ => Options::default(),
    };
    Ok(Ip {
        src: IpAddr::V4(packet.src_addr()),
        dst: IpAddr::V4(packet.dst_addr()),
        proto,
        ttl: packet.hop_limit(),
        l4,
        offsets: Offsets {
            l3,
            l4: l3 + header_len,
            end: l3 + usize::from(packet.total_len()),
        },
        options,
    })
}

/// Next-header values that are IPv6 extension headers (RFC 7045 and the IANA registry),
/// ESP excepted: nothing after it can be read, so it is the upper layer.
fn is_ipv6_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

fn ipv6(body: &[u8], l3: usize) -> Result<Ip, DropReason> {
    // Checks the fixed header and the payload length against the buffer.
    let packet = Ipv6Packet::new_checked(body).map_err(|_| MALFORMED)?;
    if packet.version() != 6 {
        return Err(MALFORMED);
    }
    let proto = u8::from(packet.next_header());
    if is_ipv6_extension(proto) {
        return Err(DropReason::Ipv6Unsupported);
    }
    let l4 = upper_layer(proto, packet.payload(), true)?;
    Ok(Ip {
        src: IpAddr::V6(packet.src_addr()),
        dst: IpAddr::V6(packet.dst_addr()),
        proto,
        ttl: packet.hop_limit(),
        l4,
        offsets: Offsets {
            l3,
            l4: l3 + packet.header_len(),
            end: l3 + packet.total_len(),
        },
        options: Options::default(),
    })
}

/// ICMP and ICMPv6 share this much: type, code, checksum, then four bytes that hold the echo
/// identifier and sequence number in echo messages.
const ICMP_HEADER_LEN: usize = 8;

fn upper_layer(proto: u8, payload: &[u8], v6: bool) -> Result<L4, DropReason> {
    match proto {
        proto::TCP => {
            // Checks the data offset: at least 20 bytes and within the payload.
            let tcp = TcpPacket::new_checked(payload).map_err(|_| MALFORMED)?;
            let mut flags = 0;
            for (set, bit) in [
                (tcp.fin(), TcpFlags::FIN),
                (tcp.syn(), TcpFlags::SYN),
                (tcp.rst(), TcpFlags::RST),
                (tcp.psh(), TcpFlags::PSH),
                (tcp.ack(), TcpFlags::ACK),
                (tcp.urg(), TcpFlags::URG),
            ] {
                if set {
                    flags |= bit;
                }
            }
            Ok(L4::Tcp {
                sport: tcp.src_port(),
                dport: tcp.dst_port(),
                flags: TcpFlags(flags),
            })
        }
        proto::UDP => {
            // Checks 8 <= length field <= payload.
            let udp = UdpPacket::new_checked(payload).map_err(|_| MALFORMED)?;
            Ok(L4::Udp {
                sport: udp.src_port(),
                dport: udp.dst_port(),
            })
        }
        proto::ICMP if !v6 => {
            let icmp = Icmpv4Packet::new_checked(payload).map_err(|_| MALFORMED)?;
            let ty = u8::from(icmp.msg_type());
            let echo = matches!(ty, icmp_type::V4_ECHO_REQUEST | icmp_type::V4_ECHO_REPLY);
            Ok(L4::Icmp {
                ty,
                code: icmp.msg_code(),
                echo_id: echo.then(|| icmp.echo_ident()),
            })
        }
        proto::ICMPV6 if v6 => {
            // Not `new_checked`: it rejects every type smoltcp does not know (node information,
            // MLDv2 reports, private ones...), which are well-formed and for the rules to judge.
            if payload.len() < ICMP_HEADER_LEN {
                return Err(MALFORMED);
            }
            let icmp = Icmpv6Packet::new_unchecked(payload);
            let ty = u8::from(icmp.msg_type());
            let echo = matches!(ty, icmp_type::V6_ECHO_REQUEST | icmp_type::V6_ECHO_REPLY);
            Ok(L4::Icmp {
                ty,
                code: icmp.msg_code(),
                echo_id: echo.then(|| icmp.echo_ident()),
            })
        }
        proto::GRE => gre(payload),
        _ => Ok(L4::Other),
    }
}

/// GRE's version 1 (RFC 2637's enhanced GRE) and the protocol it must carry.
const GRE_VERSION_PPTP: u8 = 1;
const GRE_PROTO_PPP: [u8; 2] = [0x88, 0x0b];

/// A GRE header as `nf_conntrack_proto_gre` reads it: the version is the low 3 bits of the
/// second byte; a version-1 header's call id is its bytes 6 and 7.
fn gre(payload: &[u8]) -> Result<L4, DropReason> {
    match payload {
        [_, flags, p0, p1, _, _, c0, c1, ..] if flags & 0x07 == GRE_VERSION_PPTP => {
            if [*p0, *p1] != GRE_PROTO_PPP {
                return Err(MALFORMED);
            }
            Ok(L4::Gre {
                key: u16::from_be_bytes([*c0, *c1]),
            })
        }
        _ => Ok(L4::Gre { key: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::core::net::Ipv6Addr;
    use alloc::vec;
    use alloc::vec::Vec;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

    fn eth(ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// RFC 1071 sum, written out so the tests do not lean on the library they check.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    struct V4 {
        ihl: u8,
        flags_frag: u16,
        ttl: u8,
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
    }

    impl Default for V4 {
        fn default() -> V4 {
            V4 {
                ihl: 5,
                flags_frag: 0x4000, // DF: set on most real traffic, and not a fragment
                ttl: 64,
                proto: proto::TCP,
                src: [192, 168, 1, 10],
                dst: [203, 0, 113, 5],
            }
        }
    }

    fn ipv4_packet(h: &V4, payload: &[u8]) -> Vec<u8> {
        let hlen = usize::from(h.ihl) * 4;
        let total = (hlen + payload.len()) as u16;
        let mut p = vec![0x40 | h.ihl, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34]);
        p.extend_from_slice(&h.flags_frag.to_be_bytes());
        p.extend_from_slice(&[h.ttl, h.proto, 0, 0]);
        p.extend_from_slice(&h.src);
        p.extend_from_slice(&h.dst);
        p.resize(hlen, 1); // options: NOPs
        let sum = checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];

    fn ipv6_packet(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 63]);
        p.extend_from_slice(&V6_SRC);
        p.extend_from_slice(&V6_DST);
        p.extend_from_slice(payload);
        p
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
        t.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        u
    }

    fn icmp(ty: u8, code: u8, id: u16) -> Vec<u8> {
        let mut i = vec![ty, code, 0, 0];
        i.extend_from_slice(&id.to_be_bytes());
        i.extend_from_slice(&[0, 7]);
        i
    }

    fn ip(frame: &[u8]) -> Result<Ip, DropReason> {
        match parse(frame)?.payload {
            Payload::Ip(ip) => Ok(ip),
            Payload::Arp(a) => panic!("expected IP, got {a:?}"),
        }
    }

    #[test]
    fn tcp_over_ipv4_with_ethernet_padding() {
        let mut frame = eth(0x0800, &ipv4_packet(&V4::default(), &tcp(40000, 443, 0x02)));
        let end = frame.len();
        frame.resize(end + 6, 0); // padding a NIC may leave on a short frame
        let parsed = parse(&frame).unwrap();
        assert_eq!(parsed.dst_mac, EthernetAddress(MAC_B));
        assert_eq!(parsed.src_mac, EthernetAddress(MAC_A));
        let Payload::Ip(ip) = parsed.payload else {
            panic!("not IP: {parsed:?}")
        };
        assert_eq!(ip.src, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(ip.dst, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)));
        assert_eq!((ip.proto, ip.ttl), (proto::TCP, 64));
        assert_eq!(
            ip.l4,
            L4::Tcp {
                sport: 40000,
                dport: 443,
                flags: TcpFlags(TcpFlags::SYN)
            }
        );
        assert_eq!(ip.l4.dport(), Some(443));
        assert_eq!(
            ip.offsets,
            Offsets {
                l3: 14,
                l4: 34,
                end
            }
        );
    }

    #[test]
    fn tcp_flags_are_read_bit_by_bit() {
        let all = TcpFlags::FIN
            | TcpFlags::SYN
            | TcpFlags::RST
            | TcpFlags::PSH
            | TcpFlags::ACK
            | TcpFlags::URG;
        for flags in [
            TcpFlags::SYN | TcpFlags::ACK,
            TcpFlags::FIN | TcpFlags::PSH,
            all,
        ] {
            let frame = eth(0x0800, &ipv4_packet(&V4::default(), &tcp(1, 2, flags)));
            let Ok(Ip {
                l4: L4::Tcp { flags: got, .. },
                ..
            }) = ip(&frame)
            else {
                panic!("not TCP")
            };
            assert_eq!(got, TcpFlags(flags));
        }
        let f = TcpFlags(TcpFlags::SYN | TcpFlags::ACK);
        assert!(f.has(TcpFlags::SYN) && f.has(TcpFlags::SYN | TcpFlags::ACK));
        assert!(!f.has(TcpFlags::SYN | TcpFlags::FIN) && f.any(TcpFlags::SYN | TcpFlags::FIN));
    }

    #[test]
    fn valid_tcp_flags_are_the_kernels_nine_combinations_with_or_without_psh() {
        let (fin, syn, rst, psh, ack, urg) = (
            TcpFlags::FIN,
            TcpFlags::SYN,
            TcpFlags::RST,
            TcpFlags::PSH,
            TcpFlags::ACK,
            TcpFlags::URG,
        );
        let valid = [
            syn,
            syn | urg,
            syn | ack,
            rst,
            rst | ack,
            fin | ack,
            fin | ack | urg,
            ack,
            ack | urg,
        ];
        // Every combination of the six flags the parser keeps.
        for flags in 0..0x40u8 {
            let expected = valid.contains(&(flags & !psh));
            assert_eq!(TcpFlags(flags).valid(), expected, "{flags:#04x}");
        }
        for bad in [
            0,
            fin,
            psh,
            urg,
            syn | fin,
            syn | rst,
            rst | fin,
            fin | psh | urg,
            0x3f,
        ] {
            assert!(!TcpFlags(bad).valid(), "{bad:#04x}");
        }
        assert!(TcpFlags(syn | psh).valid() && TcpFlags(psh | ack).valid());
    }

    #[test]
    fn ipv4_options_move_the_l4_offset() {
        let h = V4 {
            ihl: 6,
            proto: proto::UDP,
            ..V4::default()
        };
        let frame = eth(0x0800, &ipv4_packet(&h, &udp(5353, 53, b"query")));
        let ip = ip(&frame).unwrap();
        assert_eq!(
            ip.l4,
            L4::Udp {
                sport: 5353,
                dport: 53
            }
        );
        assert_eq!((ip.offsets.l4, ip.offsets.end), (14 + 24, frame.len()));
    }

    /// The options of an IPv4 packet carrying `opts` (padded with end-of-list to a whole word).
    fn options_of(opts: &[u8]) -> Options {
        let mut padded = opts.to_vec();
        while !padded.len().is_multiple_of(4) {
            padded.push(0);
        }
        let h = V4 {
            ihl: 5 + (padded.len() / 4) as u8,
            proto: proto::UDP,
            ..V4::default()
        };
        let mut p = ipv4_packet(&h, &udp(1, 2, b"x"));
        p[20..20 + padded.len()].copy_from_slice(&padded);
        p[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&p[..20 + padded.len()]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        match ip(&eth(0x0800, &p)) {
            Ok(ip) => ip.options,
            Err(r) => panic!("{opts:?}: {r}"),
        }
    }

    #[test]
    fn ipv4_options_are_read_as_the_kernel_reads_them() {
        let fine = Options::default();
        let bad = Options {
            refused: Some(Refusal::Malformed),
            record_route: None,
        };
        let srr = Options {
            refused: Some(Refusal::SourceRoute),
            record_route: None,
        };
        let rr_at = |at| Options {
            refused: None,
            record_route: Some(at),
        };
        let ts = |len: u8, ptr: u8, flags: u8| {
            let mut o = vec![68, len, ptr, flags];
            o.resize(usize::from(len), 0);
            o
        };
        let cases: Vec<(&str, Vec<u8>, Options)> = vec![
            ("none but padding", vec![1, 1, 1, 0], fine),
            ("end of list, then anything", vec![0, 7, 3, 0xff], fine),
            (
                "record route with room",
                vec![7, 7, 4, 0, 0, 0, 0],
                rr_at(20),
            ),
            (
                "after a NOP",
                vec![1, 7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0],
                rr_at(21),
            ),
            ("record route full", vec![7, 7, 8, 1, 2, 3, 4], fine),
            ("record route pointer past it", vec![7, 3, 200], fine),
            (
                "record route pointer under 4",
                vec![7, 7, 3, 0, 0, 0, 0],
                bad,
            ),
            (
                "record route slot cut short",
                vec![7, 8, 6, 0, 0, 0, 0, 0],
                bad,
            ),
            ("record route shorter than 3", vec![7, 2], bad),
            (
                "two record routes",
                vec![7, 7, 8, 1, 2, 3, 4, 7, 7, 8, 1, 2, 3, 4],
                bad,
            ),
            ("timestamp", ts(12, 5, 0), fine),
            ("timestamp and address", ts(12, 5, 1), fine),
            ("prespecified", ts(12, 5, 3), fine),
            ("timestamp and address cut short", ts(8, 5, 1), bad),
            ("timestamp full", ts(8, 9, 0x10), fine),
            ("timestamp full, overflow full", ts(8, 9, 0xf0), bad),
            (
                "timestamp and address full, overflow full",
                ts(12, 13, 0xf1),
                bad,
            ),
            ("prespecified full, overflow full", ts(12, 13, 0xf3), fine),
            ("timestamp pointer under 5", ts(8, 4, 0), bad),
            ("timestamp slot cut short", ts(8, 6, 0), bad),
            ("timestamp shorter than 4", vec![68, 3, 5], bad),
            ("two timestamps", [ts(8, 5, 0), ts(8, 5, 0)].concat(), bad),
            ("unknown flag", ts(8, 5, 2), fine),
            (
                "unknown flag, then another",
                [ts(8, 5, 2), ts(8, 5, 0)].concat(),
                bad,
            ),
            ("loose source route", vec![131, 7, 4, 10, 0, 0, 1], srr),
            ("strict source route", vec![137, 7, 4, 10, 0, 0, 1], srr),
            ("source route used up", vec![131, 7, 8, 10, 0, 0, 1], srr),
            (
                "source route pointer under 4",
                vec![131, 7, 3, 10, 0, 0, 1],
                bad,
            ),
            ("source route shorter than 3", vec![131, 2], bad),
            (
                "two source routes",
                vec![131, 7, 4, 10, 0, 0, 1, 137, 7, 4, 10, 0, 0, 1],
                bad,
            ),
            ("router alert", vec![148, 4, 0, 0], fine),
            ("router alert shorter than 4", vec![148, 3, 0], bad),
            ("CIPSO", vec![134, 8, 0, 0, 0, 1, 0, 0], bad),
            (
                "security, stream id, unknown kinds",
                vec![130, 3, 0, 136, 4, 0, 1, 25, 2],
                fine,
            ),
            ("length 0", vec![130, 0], bad),
            ("length 1", vec![130, 1], bad),
            ("length past the options", vec![7, 9, 4, 0, 0, 0, 0], bad),
            ("a last byte with no length", vec![1, 1, 1, 7], bad),
        ];
        for (what, opts, want) in cases {
            assert_eq!(options_of(&opts), want, "{what}");
        }
        // No options at all, and IPv6.
        let plain = ip(&eth(0x0800, &ipv4_packet(&V4::default(), &tcp(1, 2, 0x02)))).unwrap();
        assert_eq!(plain.options, fine);
        let six = ip(&eth(0x86dd, &ipv6_packet(proto::UDP, &udp(1, 2, b"")))).unwrap();
        assert_eq!(six.options, fine);
    }

    #[test]
    fn icmp_echo_has_an_identifier_and_errors_do_not() {
        let h = V4 {
            proto: proto::ICMP,
            ttl: 1,
            ..V4::default()
        };
        let echo = ip(&eth(0x0800, &ipv4_packet(&h, &icmp(8, 0, 0xbeef)))).unwrap();
        assert_eq!(
            echo.l4,
            L4::Icmp {
                ty: 8,
                code: 0,
                echo_id: Some(0xbeef)
            }
        );
        assert_eq!((echo.ttl, echo.l4.dport()), (1, None));
        let reply = ip(&eth(0x0800, &ipv4_packet(&h, &icmp(0, 0, 7)))).unwrap();
        assert!(matches!(
            reply.l4,
            L4::Icmp {
                echo_id: Some(7),
                ..
            }
        ));
        let unreachable = ip(&eth(0x0800, &ipv4_packet(&h, &icmp(3, 4, 1400)))).unwrap();
        assert_eq!(
            unreachable.l4,
            L4::Icmp {
                ty: 3,
                code: 4,
                echo_id: None
            }
        );
    }

    #[test]
    fn gre_is_read_as_the_kernels_gre_tracker_reads_it() {
        let h = V4 {
            proto: proto::GRE,
            ..V4::default()
        };
        let l4 = |payload: &[u8]| ip(&eth(0x0800, &ipv4_packet(&h, payload))).map(|ip| ip.l4);
        // Version 0 (and 2 to 7, and anything too short to say), of any length: no key.
        let v0 = [0x00, 0x00, 0x08, 0x00, 0xaa, 0xbb, 0xcc, 0xdd];
        for payload in [
            &v0[..],
            &v0[..4],
            &v0[..2],
            &[],
            &[0x30, 0x02, 0x88, 0x0b, 0, 4, 0, 9],
        ] {
            assert_eq!(l4(payload), Ok(L4::Gre { key: 0 }), "{payload:?}");
        }
        // PPTP: version 1 carrying PPP has its call id, whatever the flags before it.
        let pptp = [0x30, 0x81, 0x88, 0x0b, 0x00, 0x10, 0x12, 0x34, 0, 0, 0, 1];
        assert_eq!(l4(&pptp), Ok(L4::Gre { key: 0x1234 }));
        assert_eq!(l4(&pptp[..8]), Ok(L4::Gre { key: 0x1234 }));
        // Shorter than the call id: tracked without a key, as the kernel does.
        assert_eq!(l4(&pptp[..7]), Ok(L4::Gre { key: 0 }));
        // Version 1 carrying anything but PPP: conntrack has no tuple for it.
        let mut not_ppp = pptp;
        not_ppp[2..4].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(l4(&not_ppp), Err(DropReason::MalformedPacket));
    }

    #[test]
    fn other_protocols_are_parsed_without_l4() {
        for proto in [50, 51, 132] {
            let h = V4 {
                proto,
                ..V4::default()
            };
            let ip = ip(&eth(0x0800, &ipv4_packet(&h, &[0; 12]))).unwrap();
            assert_eq!((ip.proto, ip.l4), (proto, L4::Other));
        }
        // ICMP's number under IPv6 is not ICMPv6: no header is read into it.
        let ip = ip(&eth(0x86dd, &ipv6_packet(proto::ICMP, &[8]))).unwrap();
        assert_eq!((ip.proto, ip.l4), (proto::ICMP, L4::Other));
    }

    #[test]
    fn ipv6_tcp_udp_and_icmpv6() {
        let ip6 = ip(&eth(0x86dd, &ipv6_packet(proto::TCP, &tcp(1234, 22, 0x10)))).unwrap();
        assert_eq!(ip6.src, IpAddr::V6(Ipv6Addr::from(V6_SRC)));
        assert_eq!(ip6.dst, IpAddr::V6(Ipv6Addr::from(V6_DST)));
        assert_eq!((ip6.proto, ip6.ttl), (proto::TCP, 63));
        assert_eq!(
            ip6.l4,
            L4::Tcp {
                sport: 1234,
                dport: 22,
                flags: TcpFlags(TcpFlags::ACK)
            }
        );
        assert_eq!(
            ip6.offsets,
            Offsets {
                l3: 14,
                l4: 54,
                end: 74
            }
        );

        let u = ip(&eth(0x86dd, &ipv6_packet(proto::UDP, &udp(1, 53, &[])))).unwrap();
        assert_eq!(
            u.l4,
            L4::Udp {
                sport: 1,
                dport: 53
            }
        );

        let echo = ip(&eth(0x86dd, &ipv6_packet(proto::ICMPV6, &icmp(128, 0, 42)))).unwrap();
        assert_eq!(
            echo.l4,
            L4::Icmp {
                ty: 128,
                code: 0,
                echo_id: Some(42)
            }
        );
        // Neighbour solicitation, and a type smoltcp does not know: both for the rules to judge.
        for ty in [135, 200] {
            let m = ip(&eth(0x86dd, &ipv6_packet(proto::ICMPV6, &icmp(ty, 0, 0)))).unwrap();
            assert_eq!(
                m.l4,
                L4::Icmp {
                    ty,
                    code: 0,
                    echo_id: None
                }
            );
        }
    }

    #[test]
    fn arp_request_and_reply() {
        for (op, want) in [(1u16, ArpOperation::Request), (2, ArpOperation::Reply)] {
            let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
            a.extend_from_slice(&op.to_be_bytes());
            a.extend_from_slice(&MAC_A);
            a.extend_from_slice(&[192, 168, 1, 10]);
            a.extend_from_slice(&[0; 6]);
            a.extend_from_slice(&[192, 168, 1, 1]);
            let parsed = parse(&eth(0x0806, &a)).unwrap();
            assert_eq!(
                parsed.payload,
                Payload::Arp(Arp {
                    op: want,
                    sender_mac: EthernetAddress(MAC_A),
                    sender_ip: Ipv4Addr::new(192, 168, 1, 10),
                    target_mac: EthernetAddress([0; 6]),
                    target_ip: Ipv4Addr::new(192, 168, 1, 1),
                })
            );
        }
    }

    #[test]
    fn arp_that_is_not_ethernet_ipv4_or_is_short_is_malformed() {
        let mut good = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        good.extend_from_slice(&[0; 20]);
        assert!(parse(&eth(0x0806, &good)).is_ok());
        let mut token_ring = good.clone();
        token_ring[1] = 6;
        assert_eq!(
            parse(&eth(0x0806, &token_ring)),
            Err(DropReason::MalformedPacket)
        );
        assert_eq!(
            parse(&eth(0x0806, &good[..27])),
            Err(DropReason::MalformedPacket)
        );
    }

    #[test]
    fn non_ip_ethertypes() {
        let tcp4 = ipv4_packet(&V4::default(), &tcp(1, 2, 0x02));
        // LLDP, a VLAN tag in front of IPv4, and a legacy 802.3 length field.
        for ethertype in [0x88cc, 0x8100, 0x0040] {
            assert_eq!(parse(&eth(ethertype, &tcp4)), Err(DropReason::NonIp));
        }
    }

    #[test]
    fn runt_frames_are_malformed() {
        for len in 0..14 {
            assert_eq!(parse(&[0u8; 14][..len]), Err(DropReason::MalformedPacket));
        }
        // A bare header saying IPv4 with nothing after it.
        assert_eq!(parse(&eth(0x0800, &[])), Err(DropReason::MalformedPacket));
    }

    #[test]
    fn ipv4_fragments() {
        for flags_frag in [0x2000, 0x0001, 0x2010, 0x1fff] {
            let h = V4 {
                flags_frag,
                ..V4::default()
            };
            let frame = eth(0x0800, &ipv4_packet(&h, &tcp(1, 2, 0x02)));
            assert_eq!(
                parse(&frame),
                Err(DropReason::FragmentedIpv4),
                "{flags_frag:#x}"
            );
        }
        // A non-first fragment has no L4 header: still a fragment, not malformed.
        let h = V4 {
            flags_frag: 0x0010,
            ..V4::default()
        };
        let frame = eth(0x0800, &ipv4_packet(&h, &[0xaa; 3]));
        assert_eq!(parse(&frame), Err(DropReason::FragmentedIpv4));
    }

    #[test]
    fn ipv4_header_damage_is_malformed() {
        let good = ipv4_packet(&V4::default(), &tcp(1, 2, 0x02));
        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage); 6] = [
            ("bad checksum", |p| p[8] = 63),
            ("version 6", |p| p[0] = 0x65),
            ("IHL 4", |p| p[0] = 0x44),
            ("total length past the buffer", |p| {
                p[2..4].copy_from_slice(&61u16.to_be_bytes())
            }),
            ("total length inside the header", |p| {
                p[2..4].copy_from_slice(&19u16.to_be_bytes())
            }),
            ("IHL past the buffer", |p| {
                p.truncate(20);
                p[0] = 0x46;
            }),
        ];
        for (what, damage) in cases {
            let mut p = good.clone();
            damage(&mut p);
            if what != "bad checksum" {
                // Keep the checksum right, so the damage itself is what is caught.
                let hlen = (usize::from(p[0] & 0x0f) * 4).clamp(20, p.len());
                p[10..12].copy_from_slice(&[0, 0]);
                let sum = checksum(&p[..hlen]);
                p[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            assert_eq!(
                parse(&eth(0x0800, &p)),
                Err(DropReason::MalformedPacket),
                "{what}"
            );
        }
        // A fragment with a damaged header is malformed first.
        let h = V4 {
            flags_frag: 0x2000,
            ..V4::default()
        };
        let mut p = ipv4_packet(&h, &tcp(1, 2, 0x02));
        p[8] ^= 1;
        assert_eq!(parse(&eth(0x0800, &p)), Err(DropReason::MalformedPacket));
    }

    #[test]
    fn ipv4_ihl_under_5_is_malformed_even_with_a_checksum_over_it() {
        // IHL 2 to 4: the identification word lies inside, so it can make the sum over the
        // IHL's bytes verify. GRE, so that no L4 header check refuses it for another reason.
        let gre = V4 {
            proto: 47,
            ..V4::default()
        };
        for ihl in 2..5u8 {
            let mut p = ipv4_packet(&gre, &[0; 12]);
            p[0] = 0x40 | ihl;
            let hlen = usize::from(ihl) * 4;
            p[4..6].copy_from_slice(&[0, 0]);
            if hlen > 10 {
                p[10..12].copy_from_slice(&[0, 0]);
            }
            let fix = checksum(&p[..hlen]);
            p[4..6].copy_from_slice(&fix.to_be_bytes());
            assert!(Ipv4Packet::new_checked(&p[..]).is_ok_and(|h| h.verify_checksum()));
            assert_eq!(
                parse(&eth(0x0800, &p)),
                Err(DropReason::MalformedPacket),
                "IHL {ihl}"
            );
        }
    }

    #[test]
    fn l4_headers_that_do_not_fit_are_malformed() {
        let v4 = |proto, payload: &[u8]| {
            let h = V4 {
                proto,
                ..V4::default()
            };
            eth(0x0800, &ipv4_packet(&h, payload))
        };
        let mut short_offset = tcp(1, 2, 0x02);
        short_offset[12] = 4 << 4;
        let mut long_offset = tcp(1, 2, 0x02);
        long_offset[12] = 6 << 4;
        let mut udp_long = udp(1, 2, b"abc");
        udp_long[4..6].copy_from_slice(&12u16.to_be_bytes());
        let mut udp_short = udp(1, 2, b"abc");
        udp_short[4..6].copy_from_slice(&7u16.to_be_bytes());
        let cases = [
            ("tcp truncated", v4(proto::TCP, &tcp(1, 2, 0x02)[..19])),
            ("tcp data offset 4", v4(proto::TCP, &short_offset)),
            (
                "tcp data offset past the packet",
                v4(proto::TCP, &long_offset),
            ),
            ("udp truncated", v4(proto::UDP, &[0; 7])),
            ("udp length past the packet", v4(proto::UDP, &udp_long)),
            ("udp length under 8", v4(proto::UDP, &udp_short)),
            ("icmp truncated", v4(proto::ICMP, &icmp(8, 0, 1)[..7])),
            (
                "icmpv6 truncated",
                eth(0x86dd, &ipv6_packet(proto::ICMPV6, &icmp(135, 0, 0)[..4])),
            ),
            (
                "icmpv6 echo truncated",
                eth(0x86dd, &ipv6_packet(proto::ICMPV6, &icmp(128, 0, 1)[..6])),
            ),
            (
                "tcp over ipv6 truncated",
                eth(0x86dd, &ipv6_packet(proto::TCP, &[0; 12])),
            ),
        ];
        for (what, frame) in cases {
            assert_eq!(parse(&frame), Err(DropReason::MalformedPacket), "{what}");
        }
    }

    #[test]
    fn ipv6_damage_is_malformed() {
        let good = ipv6_packet(proto::UDP, &udp(1, 2, b"x"));
        let mut long = good.clone();
        long[4..6].copy_from_slice(&100u16.to_be_bytes());
        let mut version = good.clone();
        version[0] = 0x40;
        for (what, p) in [
            ("payload length past the buffer", long),
            ("version 4", version),
            ("truncated fixed header", good[..39].to_vec()),
        ] {
            assert_eq!(
                parse(&eth(0x86dd, &p)),
                Err(DropReason::MalformedPacket),
                "{what}"
            );
        }
    }

    #[test]
    fn ipv6_extension_headers_are_unsupported() {
        // Hop-by-hop, routing, fragment, destination options, AH.
        for next in [0, 43, 44, 60, 51] {
            let mut ext = vec![proto::TCP, 0, 0, 0, 0, 0, 0, 0];
            ext.extend_from_slice(&tcp(1, 443, 0x02));
            let frame = eth(0x86dd, &ipv6_packet(next, &ext));
            assert_eq!(parse(&frame), Err(DropReason::Ipv6Unsupported), "{next}");
        }
        // ESP and "no next header" end the chain.
        for next in [50, 59] {
            let ip = ip(&eth(0x86dd, &ipv6_packet(next, &[0; 8]))).unwrap();
            assert_eq!((ip.proto, ip.l4), (next, L4::Other));
        }
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_refused() {
        let frames = [
            eth(0x0800, &ipv4_packet(&V4::default(), &tcp(1, 2, 0x12))),
            eth(0x86dd, &ipv6_packet(proto::ICMPV6, &icmp(128, 0, 9))),
            eth(
                0x0800,
                &ipv4_packet(
                    &V4 {
                        proto: proto::UDP,
                        ..V4::default()
                    },
                    &udp(1, 2, b"hello"),
                ),
            ),
        ];
        for frame in frames {
            assert!(parse(&frame).is_ok());
            for len in 0..frame.len() {
                assert!(parse(&frame[..len]).is_err(), "{len} of {}", frame.len());
            }
        }
    }

    proptest::proptest! {
        /// Hostile bytes never panic, whatever the ethertype claims.
        #[test]
        fn arbitrary_frames_never_panic(
            ethertype in proptest::sample::select(vec![0x0800u16, 0x86dd, 0x0806, 0x1234]),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
        ) {
            let _ = parse(&eth(ethertype, &body));
        }

        /// Valid headers with random fields and lengths: parsed or refused, never a panic,
        /// and offsets that always lie inside the frame.
        #[test]
        fn random_ip_headers_parse_within_bounds(
            proto in proptest::sample::select(vec![proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 0, 44, 47]),
            flags_frag in proptest::num::u16::ANY,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            v6 in proptest::bool::ANY,
        ) {
            let frame = if v6 {
                eth(0x86dd, &ipv6_packet(proto, &payload))
            } else {
                eth(0x0800, &ipv4_packet(&V4 { proto, flags_frag, ..V4::default() }, &payload))
            };
            if let Ok(Parsed { payload: Payload::Ip(ip), .. }) = parse(&frame) {
                proptest::prop_assert!(ip.offsets.l3 <= ip.offsets.l4);
                proptest::prop_assert!(ip.offsets.l4 <= ip.offsets.end);
                proptest::prop_assert!(ip.offsets.end <= frame.len());
            }
        }
    }
}

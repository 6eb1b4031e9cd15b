//! Differential test of the two data planes: one generated stream of IPv4 frames goes through
//! the kernel data plane (`ward apply` in a lab, frames injected on the LAN and WAN hosts' veths
//! with AF_PACKET, what comes out caught on the far host's veth) and through the userspace
//! engine (`Engine::handle`, in this process), with the same policy. Every packet's verdict
//! (forwarded or not, out of which side, with which addresses and ports) must agree.
//!
//! How it stays exact:
//! - every frame carries its own tag in the IP ID, which neither plane rewrites (NAT keeps it);
//!   a frame caught on a host counts as that packet's only when its protocol and L4 contents
//!   (TCP sequence numbers and flags, UDP and ICMP payloads) match what was sent too, so the
//!   firewall's own packets (ICMP errors, RSTs, ARP) are never taken for forwarded ones;
//! - frames are sent in rounds, at most one packet per flow in each, and a round ends when the
//!   firewall has answered an ARP request sent after the round's last frame on each side: the
//!   thread is pinned to one CPU, so the veths deliver in order and everything forwarded before
//!   that answer has been caught by then. Replies are built for each plane from what that plane
//!   forwarded (masquerade's port is each plane's own choice);
//! - the hosts' own stacks never see the frames (a netdev ingress table in their namespaces
//!   drops them after the capture), so no RST or port-unreachable of theirs changes the
//!   firewall's connection table; the firewall knows every neighbour (permanent entries, and
//!   ARP taught to the engine), so no verdict waits on ARP;
//! - the firewall's kernel owns exactly the engine's addresses (the lab's second WAN address
//!   is removed) and routes off-link destinations to the WAN host, the engine's gateway.
//!
//! The generator (seeded, `WARD_DIFF_SEED` to change the seed, `WARD_DIFF_PACKETS` the count)
//! draws tuples from the policy's own address and port space (every CIDR's edges and inside,
//! every port range's edges and neighbours, the NAT addresses) and from special addresses; it
//! writes TCP conversations as real endpoints do (handshake, data both ways, FIN or RST close,
//! refused and unanswered SYNs, mid-stream pick-ups), UDP exchanges, pings, unsolicited replies
//! and ICMP errors, exchanges in other protocols (GRE plain, PPTP with and without matching
//! call ids, of unknown versions, too short to translate; ESP, AH...) and non-IP frames, and
//! mangles packets: copies that both planes drop before their connection tables go before the
//! real packet (IPv4 fragments, bad IHL, bad total length, bad header checksum, wrong version,
//! truncated L4 headers, bad TCP data offset and UDP length, invalid TCP flag combinations,
//! TCP, UDP and ICMP checksums that do not verify (the field, or a byte it covers: both planes
//! verify them as nothing else did), frames for another MAC, VLAN tags, other ethertypes);
//! valid oddities stand for the real packet (IP options of NOPs, record-route, timestamp,
//! router alert and others a router passes, Ethernet padding, the reserved flag, UDP without a
//! checksum); source routes and malformed options ([`IP_OPTIONS`]), TTL 0 and 1 and the
//! broadcast MAC, which the kernel drops only after conntrack has seen the packet, are used on
//! first packets only (see [`When`]).
//! Flows never share a tuple, nor the inside tuple of a port-forward, and WAN flows to the
//! firewall's own address use ephemeral source ports, so that neither plane's choice of
//! masquerade port can make a later flow a reply in one plane and not in the other.
//!
//! Left out, each because the planes differ by design, not by accident (see
//! [`EXCLUDED`], which the test prints):
//! - IPv6: the engine is IPv4-only for now (SPEC §3) and drops it;
//! - complete fragment trains. The kernel plane's `nf_defrag_ipv4` (prerouting, before
//!   conntrack) holds every fragment until its datagram is whole (`ipfrag_time`, 30 s), so
//!   conntrack, NAT and ward's rules see only whole datagrams, and forwards an accepted one
//!   fragmented again to the largest fragment size that came in; a train never completed is
//!   freed silently (no ICMP for a forwarded one), and counted by no ward counter. The engine
//!   drops every fragment as it arrives, as `fragmented_ipv4` (SPEC §8), and holds nothing.
//!   So a lone or incomplete train is forwarded by neither plane, and is generated (first
//!   fragments and later ones, each alone with its own IP ID: copies that both drop); a
//!   complete train is forwarded by the kernel and not by the engine, by design, and is not;
//! - ICMP errors related to a flow: the engine drops ICMP errors (module doc of
//!   `engine::core::engine`); unrelated ones are generated;
//! - ICMP timestamp, information and address-mask requests: the kernel tracks them like echo,
//!   the engine tracks ICMP echo only (SPEC §8);
//! - sources inside the other side's subnet: the engine drops them as martians, the lab's
//!   kernel has reverse-path filtering off;
//! - replies to LAN-side sources outside the LAN subnet: the engine routes to its two links and
//!   the WAN gateway only, so they would go back out of the WAN (the kernel forwards that
//!   hairpin, the engine does not); such flows get no replies;
//! - SCTP and UDP-Lite: the kernel tracks them by ports (and verifies their checksums, SCTP's
//!   state machine too), the engine by addresses alone, like every protocol it does not parse.
//!   Other protocols are generated (GRE, ESP, AH, experimental) and compared whole, both ways
//!   and translated. Without ports both planes masquerade them by address alone, so a second
//!   LAN host's packets of the same protocol to the same destination find no free tuple and are
//!   dropped in both: flows of that kind (`other-proto-clash`) are made on purpose; any other
//!   flow gets a destination and protocol of its own, so that the rest stay independent;
//! - TCP segments that only the kernel's window tracking or its finer state machine would call
//!   invalid (out of window, an ACK before the SYN-ACK): the engine keeps SPEC §8's three
//!   states and no windows; conversations are written in order and in window;
//! - what the kernel writes into timestamp options (its time of day) and after an end-of-list
//!   option (zeros): the engine has no wall clock and leaves both as they came. Whether such a
//!   packet is forwarded is compared, as for every option generated ([`IP_OPTIONS`]); the
//!   option bytes of the other forwarded packets are compared too (record-route, which both
//!   fill in with the address the packet leaves from, router alert, security...);
//! - masquerade's port: the kernel keeps the source port when it is free, the engine picks one
//!   from its pool; that port is not compared (everything else of the packet is), nor the new
//!   source port both give a flow that meets its own masqueraded reverse.

mod common;

use common::*;
use engine::core::arp::{Own, Side, FRAME_LEN};
use engine::core::engine::{Action, Config, Engine, Interface, Rules};
use engine::io::{RxBatch, Socket, TxStore};
use smoltcp::wire::EthernetAddress;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use testlab::Netns;

/// What is left out, printed with the results (the module doc says why).
const EXCLUDED: &str = "IPv6; complete fragment trains (the kernel reassembles and forwards \
    them, the engine drops every fragment: SPEC §8); ICMP errors related to a flow; ICMP \
    timestamp/info/address-mask requests; what the kernel writes into timestamp options and after \
    an end-of-list option; sources in the other side's \
    subnet; replies to off-subnet LAN sources; SCTP and UDP-Lite; out-of-window or \
    out-of-order TCP; masquerade's ports";

const DEFAULT_SEED: u64 = 0x0d1f_f00d_5eed_0001;
const DEFAULT_PACKETS: usize = 12_000;

/// Several rules of each kind: accepts and denies, single ports, ranges and lists, CIDRs on
/// either end, rules for one direction and for both, an input rule, masquerade and three
/// port-forwards (one limited by `from`), a rule on the WAN address that port-forwarded
/// traffic must never match.
const POLICY: &str = "
defaults: {default_action: deny, input_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: no-telnet, action: deny, direction: egress, protocol: tcp, destination_port: 23}
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: [80, 443, '8000-8100']}
  - {id: dns, action: accept, direction: egress, protocol: udp, destination_port: 53}
  - {id: branch, action: accept, direction: egress, source: 10.20.0.0/16, protocol: udp, destination_port: '4000-4010'}
  - {id: lab-net, action: accept, direction: egress, source: 192.168.50.0/28, destination: 203.0.113.0/25}
  - {id: no-dark, action: deny, direction: egress, destination: 203.0.113.128/25}
  - {id: ping-out, action: accept, direction: egress, protocol: icmp, source: 192.168.50.0/25}
  - {id: any-proto-ports, action: accept, direction: egress, destination_port: '5000-5010'}
  - {id: no-smb, action: deny, protocol: tcp, destination_port: 445}
  - {id: both-ways, action: accept, destination: 192.168.50.30, protocol: udp}
  - {id: wan-addr, action: deny, direction: ingress, destination: 198.51.100.1, protocol: tcp, destination_port: 8080}
  - {id: forwarded-web, action: accept, direction: ingress, destination: 192.168.50.10, protocol: tcp, destination_port: 80}
  - {id: deny-block, action: deny, direction: ingress, source: 198.51.100.64/26}
  - {id: tunnel-in, action: accept, direction: ingress, source: 203.0.113.0/26, destination: 192.168.50.40/29}
  - {id: ssh-in, action: accept, direction: ingress, source: [198.51.100.0/24, 203.0.113.0/24], destination: 192.168.50.20, protocol: tcp, destination_port: 22}
  - {id: vpn-in, action: accept, direction: ingress, protocol: udp, destination_port: [1194, '6000-6010']}
  - {id: ping-in, action: accept, direction: ingress, protocol: icmp, destination: 192.168.50.0/28}
  - {id: ssh-fw, action: accept, direction: input, protocol: tcp, destination_port: 22}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.50.0/24, masquerade: true}
  dnat:
    - {wan_ip: 198.51.100.1, wan_port: 8080, to: '192.168.50.10:80', proto: tcp}
    - {wan_ip: 198.51.100.1, wan_port: 2222, to: '192.168.50.20:22', proto: tcp, from: 203.0.113.0/24}
    - {wan_ip: 198.51.100.1, wan_port: 1194, to: '192.168.50.30:1194', proto: udp}
";

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const GRE: u8 = 47;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

const LAN_NET: (Ipv4Addr, u8) = (addr::LAN_NET, addr::PREFIX_LEN);
const WAN_NET: (Ipv4Addr, u8) = (addr::WAN_NET, addr::PREFIX_LEN);

fn in_net(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn other(side: Side) -> Side {
    match side {
        Side::Lan => Side::Wan,
        Side::Wan => Side::Lan,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Lan => "lan",
        Side::Wan => "wan",
    }
}

// ---------------------------------------------------------------------------------------------
// A small seeded generator (SplitMix64): the same seed gives the same stream on every machine.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Inclusive.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi - lo) + 1) as u32
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
}

// ---------------------------------------------------------------------------------------------
// The address and port space the packets are drawn from.

struct Space {
    /// LAN hosts: inside the LAN subnet, not its network, broadcast or the firewall's address.
    lan: Vec<Ipv4Addr>,
    /// WAN neighbours: the same for the WAN subnet.
    wan_link: Vec<Ipv4Addr>,
    /// Off both links: behind the WAN gateway (and, as sources, off-subnet LAN hosts).
    remote: Vec<Ipv4Addr>,
    /// Addresses no host may have: network and broadcast addresses, loopback, multicast...
    special: Vec<Ipv4Addr>,
    /// The firewall's own.
    own: Vec<Ipv4Addr>,
    /// Destination ports: every range's edges and their neighbours, NAT ports, a few others.
    ports: Vec<u16>,
    /// Port ranges of accept rules.
    open_ports: Vec<(u16, u16)>,
    /// Port-forwards: WAN address, port, protocol, inside address and port.
    dnat: Vec<(Ipv4Addr, u16, u8, (Ipv4Addr, u16))>,
    /// What accept rules for any protocol and port allow, by the side a flow starts from:
    /// sources and destinations of this space inside the rule's prefixes. Flows of protocols
    /// without ports are drawn from here half the time, or hardly any would be forwarded.
    open_any: Vec<(Side, Vec<Ipv4Addr>, Vec<Ipv4Addr>)>,
}

fn space(policy: &policy::Policy, rng: &mut Rng) -> Space {
    let mut candidates: Vec<Ipv4Addr> = Vec::new();
    let mut nets: Vec<(IpAddr, IpAddr)> = Vec::new();
    for rule in &policy.rules {
        for net in rule.source.iter().chain(&rule.destination) {
            nets.push((net.network(), net.broadcast()));
        }
    }
    for s in &policy.nat.snat {
        nets.push((s.source.network(), s.source.broadcast()));
    }
    for d in &policy.nat.dnat {
        if let Some(from) = &d.from {
            nets.push((from.network(), from.broadcast()));
        }
        nets.push((d.wan_ip, d.wan_ip));
        nets.push((d.to.ip(), d.to.ip()));
    }
    for (lo, hi) in nets {
        let (IpAddr::V4(lo), IpAddr::V4(hi)) = (lo, hi) else {
            continue;
        };
        let (lo, hi) = (u32::from(lo), u32::from(hi));
        for a in [
            lo,
            hi,
            lo.wrapping_add(1),
            hi.wrapping_sub(1),
            lo.wrapping_sub(1),
            hi.wrapping_add(1),
        ] {
            candidates.push(a.into());
        }
        for _ in 0..4 {
            candidates.push((lo + rng.below(u64::from(hi - lo) + 1) as u32).into());
        }
    }
    // The lab's hosts, the gateway, a few well-known remote addresses and class E, which
    // both planes route like any unicast address.
    candidates.extend([
        addr::LAN_HOST,
        addr::WAN_HOST,
        Ipv4Addr::new(8, 8, 8, 8),
        Ipv4Addr::new(1, 1, 1, 1),
        Ipv4Addr::new(93, 184, 216, 34),
        Ipv4Addr::new(10, 1, 2, 3),
        Ipv4Addr::new(240, 0, 0, 1),
    ]);
    for _ in 0..16 {
        candidates.push(Ipv4Addr::new(192, 168, 50, rng.range(2, 254) as u8));
        candidates.push(Ipv4Addr::new(198, 51, 100, rng.range(2, 254) as u8));
    }
    let own = vec![addr::FW_LAN, addr::FW_WAN];
    let mut s = Space {
        lan: Vec::new(),
        wan_link: Vec::new(),
        remote: Vec::new(),
        special: vec![
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(0, 1, 2, 3),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::new(239, 255, 255, 250),
            Ipv4Addr::BROADCAST,
        ],
        own: own.clone(),
        ports: Vec::new(),
        open_ports: Vec::new(),
        dnat: Vec::new(),
        open_any: Vec::new(),
    };
    for a in candidates {
        let last = a.octets()[3];
        let special = a.is_unspecified()
            || a.octets()[0] == 0
            || a.is_loopback()
            || a.is_multicast()
            || a.is_broadcast();
        if own.contains(&a) {
            continue;
        } else if special {
            s.special.push(a);
        } else if in_net(a, LAN_NET) || in_net(a, WAN_NET) {
            if last == 0 || last == 255 {
                s.special.push(a);
            } else if in_net(a, LAN_NET) {
                s.lan.push(a);
            } else {
                s.wan_link.push(a);
            }
        } else {
            s.remote.push(a);
        }
    }
    for v in [&mut s.lan, &mut s.wan_link, &mut s.remote, &mut s.special] {
        v.sort();
        v.dedup();
    }
    for rule in &policy.rules {
        let any = rule.action == policy::Action::Accept
            && rule.protocol.is_none()
            && rule.destination_port.is_empty()
            && rule.destination_fqdn.is_empty();
        if !any {
            continue;
        }
        // Each prefix as its first and last address (none: anything).
        let bounds = |nets: Vec<(IpAddr, IpAddr)>, from: Vec<&Vec<Ipv4Addr>>| -> Vec<Ipv4Addr> {
            from.into_iter()
                .flatten()
                .copied()
                .filter(|a| {
                    let a = IpAddr::V4(*a);
                    nets.is_empty() || nets.iter().any(|(lo, hi)| *lo <= a && a <= *hi)
                })
                .collect()
        };
        let sides: &[Side] = match rule.direction {
            Some(policy::Direction::Egress) => &[Side::Lan],
            Some(policy::Direction::Ingress) => &[Side::Wan],
            None => &[Side::Lan, Side::Wan],
            _ => &[],
        };
        for &side in sides {
            let (srcs, dsts) = match side {
                Side::Lan => (vec![&s.lan], vec![&s.remote, &s.wan_link]),
                Side::Wan => (vec![&s.remote, &s.wan_link], vec![&s.lan]),
            };
            let entry = (
                side,
                bounds(
                    rule.source
                        .iter()
                        .map(|n| (n.network(), n.broadcast()))
                        .collect(),
                    srcs,
                ),
                bounds(
                    rule.destination
                        .iter()
                        .map(|n| (n.network(), n.broadcast()))
                        .collect(),
                    dsts,
                ),
            );
            if !entry.1.is_empty() && !entry.2.is_empty() {
                s.open_any.push(entry);
            }
        }
    }
    let mut ports: Vec<u16> = Vec::new();
    for rule in &policy.rules {
        for r in &rule.destination_port {
            if rule.action == policy::Action::Accept {
                s.open_ports.push((r.lo, r.hi));
            }
            ports.extend([r.lo, r.hi, r.lo.saturating_sub(1), r.hi.saturating_add(1)]);
            if r.hi > r.lo {
                ports.push(rng.range(u32::from(r.lo), u32::from(r.hi)) as u16);
            }
        }
    }
    for d in &policy.nat.dnat {
        let proto = match d.proto {
            policy::NatProto::Tcp => TCP,
            policy::NatProto::Udp => UDP,
        };
        if let (IpAddr::V4(ip), IpAddr::V4(to)) = (d.wan_ip, d.to.ip()) {
            s.dnat.push((ip, d.wan_port, proto, (to, d.to.port())));
        }
        ports.extend([d.wan_port, d.to.port()]);
    }
    for _ in 0..8 {
        ports.push(rng.range(1, 16_383) as u16);
    }
    // Service ports stay below the ephemeral ranges (the kernel keeps a masqueraded source
    // port from 32768 up, the engine's pool starts at 16384), so that a packet opened from the
    // WAN never lands on a masquerade mapping of one plane and not the other's.
    ports.retain(|&p| p > 0 && p < 16_384);
    ports.sort();
    ports.dedup();
    s.ports = ports;
    s
}

// ---------------------------------------------------------------------------------------------
// Flows and packets.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Orig,
    Reply,
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        len: u16,
    },
    Udp {
        len: u16,
    },
    /// ICMP echo; the identifier is the flow's port.
    Echo {
        reply: bool,
        seq: u16,
    },
    /// Any other ICMP message, sent on its own.
    Icmp {
        ty: u8,
        code: u8,
    },
    /// Another IP protocol: no ports.
    Raw {
        proto: u8,
        len: u16,
    },
    /// GRE of `version` (0 plain, 1 PPTP carrying PPP unless `ppp` is false, with `call` as
    /// its call id, or any other), `len` bytes in all: shorter than its header too.
    Gre {
        version: u8,
        ppp: bool,
        call: u16,
        len: u16,
    },
}

impl L4 {
    fn proto(&self) -> u8 {
        match *self {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Echo { .. } | L4::Icmp { .. } => ICMP,
            L4::Raw { proto, .. } => proto,
            L4::Gre { .. } => GRE,
        }
    }
}

/// What is done to a packet's frame once it is built. The first few are valid packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Mangle {
    None,
    /// IP options: this many 4-byte words of NOPs (the last byte an end-of-list).
    Options(u8),
    /// Bytes after the IP packet (Ethernet padding).
    Padding(u8),
    Ttl(u8),
    /// IHL below 5, header checksum over the first 20 bytes.
    IhlLow(u8),
    /// IHL past the end of the packet.
    IhlHigh,
    /// Total length longer than the frame by this much.
    TotalLong(u8),
    /// Total length shorter than the header.
    TotalShort,
    /// Total length (and frame) cut this many bytes into the L4 header.
    CutL4(u8),
    BadIpChecksum,
    Version(u8),
    /// TCP data offset (in words) that is too small or past the end.
    TcpDoff(u8),
    /// UDP length field.
    UdpLen(u16),
    /// Invalid TCP flag combination.
    TcpFlags(u8),
    FirstFragment,
    /// Fragment offset in 8-byte units, more-fragments flag.
    LaterFragment(u16, bool),
    /// Sent to a MAC that is not the firewall's.
    OtherMac,
    BroadcastMac,
    /// An 802.1Q tag in front of the IPv4 ethertype.
    Vlan,
    /// Another ethertype (local experimental 0x88b5).
    NonIp,
    /// The reserved ("evil") bit of the IPv4 flags.
    ReservedFlag,
    /// A TCP, UDP or ICMP checksum that does not verify: the field itself damaged, or (with
    /// `true`) a byte of what it covers.
    BadL4Checksum(bool),
    /// A UDP checksum of 0: none sent.
    UdpNoChecksum,
    /// The IPv4 options of [`IP_OPTIONS`] at this index.
    IpOption(u8),
}

/// IPv4 options a packet may carry: a name, the bytes (whole words), whether a router passes
/// them (Linux's `ip_options_compile` and `accept_source_route`, off by default), and whether
/// both planes leave them byte for byte alike on a forwarded packet.
#[allow(clippy::type_complexity)]
const IP_OPTIONS: [(&str, &[u8], bool, bool); 28] = [
    ("opt-rr", &[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0], true, true),
    (
        "opt-rr-last-slot",
        &[7, 11, 8, 10, 9, 9, 9, 0, 0, 0, 0, 0],
        true,
        true,
    ),
    ("opt-rr-full", &[7, 7, 8, 10, 9, 9, 9, 0], true, true),
    (
        "opt-ts",
        &[68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        true,
        false,
    ),
    (
        "opt-ts-addr",
        &[68, 12, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        true,
        false,
    ),
    (
        "opt-ts-prespec-own",
        &[68, 12, 5, 3, 198, 51, 100, 1, 0, 0, 0, 0],
        true,
        false,
    ),
    (
        "opt-ts-prespec-other",
        &[68, 12, 5, 3, 203, 0, 113, 5, 0, 0, 0, 0],
        true,
        false,
    ),
    ("opt-ts-full", &[68, 8, 9, 0x10, 0, 0, 0, 1], true, false),
    (
        "opt-ts-overflow",
        &[68, 8, 9, 0xf0, 0, 0, 0, 1],
        false,
        false,
    ),
    ("opt-ts-pointer", &[68, 8, 4, 0, 0, 0, 0, 0], false, false),
    (
        "opt-ts-addr-short",
        &[68, 8, 5, 1, 0, 0, 0, 0],
        false,
        false,
    ),
    (
        "opt-ts-odd-flag-twice",
        &[68, 8, 5, 2, 0, 0, 0, 0, 68, 8, 5, 0, 0, 0, 0, 0],
        false,
        false,
    ),
    ("opt-ts-odd-flag", &[68, 8, 5, 2, 0, 0, 0, 0], true, false),
    (
        "opt-ts-prespec-full",
        &[68, 12, 13, 0xf3, 198, 51, 100, 1, 0, 0, 0, 1],
        true,
        false,
    ),
    (
        "opt-ts-addr-full",
        &[68, 12, 13, 0xf1, 198, 51, 100, 1, 0, 0, 0, 1],
        false,
        false,
    ),
    ("opt-lsrr", &[131, 7, 4, 203, 0, 113, 5, 0], false, false),
    (
        "opt-ssrr",
        &[137, 11, 4, 203, 0, 113, 5, 198, 51, 100, 1, 0],
        false,
        false,
    ),
    ("opt-cipso", &[134, 8, 0, 0, 0, 1, 0, 0], false, false),
    ("opt-ra", &[148, 4, 0, 0], true, true),
    ("opt-ra-short", &[148, 3, 0, 0], false, false),
    (
        "opt-sec-sid-exp",
        &[130, 3, 0, 136, 4, 0, 1, 0x5e, 4, 0xaa, 0xbb, 0],
        true,
        true,
    ),
    ("opt-len-0", &[7, 0, 0, 0], false, false),
    ("opt-len-1", &[130, 1, 0, 0], false, false),
    ("opt-len-long", &[7, 9, 4, 0, 0, 0, 0, 0], false, false),
    ("opt-rr-pointer", &[7, 7, 3, 0, 0, 0, 0, 0], false, false),
    (
        "opt-rr-twice",
        &[7, 7, 8, 1, 2, 3, 4, 7, 7, 8, 1, 2, 3, 4, 0, 0],
        false,
        false,
    ),
    ("opt-eol-junk", &[1, 0, 7, 0xff], true, false),
    ("opt-no-room-for-length", &[1, 1, 1, 7], false, false),
];

/// Where a mangled packet stops, which says where it may go in a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// A valid packet in an unusual shape: it stands for the real one.
    Valid,
    /// Dropped by both planes before their connection tables (parsing, fragment reassembly,
    /// a frame for another host, conntrack's header checks): a copy of any packet.
    Early,
    /// Dropped by the kernel after conntrack has seen it (an expiring TTL, a frame to the
    /// broadcast MAC): it moves an existing flow's state there, which a copy of a later packet
    /// would turn into a retransmission for the kernel alone. Only first packets, whose
    /// kernel connection is then never confirmed.
    Late,
}

impl Mangle {
    fn when(&self) -> When {
        match self {
            Mangle::None
            | Mangle::Options(_)
            | Mangle::Padding(_)
            | Mangle::ReservedFlag
            | Mangle::UdpNoChecksum => When::Valid,
            // Refused after conntrack saw them (`ip_rcv_options`), like an expiring TTL.
            Mangle::IpOption(i) if !IP_OPTIONS[usize::from(*i)].2 => When::Late,
            Mangle::IpOption(_) => When::Valid,
            Mangle::Ttl(_) | Mangle::BroadcastMac => When::Late,
            _ => When::Early,
        }
    }

    fn label(&self) -> String {
        match self {
            Mangle::None => "plain".into(),
            Mangle::Options(_) => "ip-options".into(),
            Mangle::Padding(_) => "padding".into(),
            Mangle::Ttl(t) => format!("ttl-{t}"),
            Mangle::IhlLow(_) => "ihl<5".into(),
            Mangle::IhlHigh => "ihl>len".into(),
            Mangle::TotalLong(_) => "total-len>frame".into(),
            Mangle::TotalShort => "total-len<header".into(),
            Mangle::CutL4(_) => "truncated-l4".into(),
            Mangle::BadIpChecksum => "bad-ip-checksum".into(),
            Mangle::Version(_) => "bad-version".into(),
            Mangle::TcpDoff(_) => "bad-tcp-doff".into(),
            Mangle::UdpLen(_) => "bad-udp-len".into(),
            Mangle::TcpFlags(_) => "bad-tcp-flags".into(),
            Mangle::FirstFragment => "first-fragment".into(),
            Mangle::LaterFragment(..) => "later-fragment".into(),
            Mangle::OtherMac => "other-mac".into(),
            Mangle::BroadcastMac => "broadcast-mac".into(),
            Mangle::Vlan => "vlan".into(),
            Mangle::NonIp => "non-ip".into(),
            Mangle::ReservedFlag => "reserved-flag".into(),
            Mangle::BadL4Checksum(false) => "bad-l4-checksum".into(),
            Mangle::BadL4Checksum(true) => "bad-l4-data".into(),
            Mangle::UdpNoChecksum => "udp-no-checksum".into(),
            Mangle::IpOption(i) => IP_OPTIONS[usize::from(*i)].0.into(),
        }
    }
}

#[derive(Clone, Debug)]
struct Step {
    dir: Dir,
    l4: L4,
    ttl: u8,
    mangle: Mangle,
    /// The packet's number; its tag (IP ID) is this plus one.
    id: usize,
}

#[derive(Clone, Debug)]
struct Flow {
    kind: &'static str,
    /// The side the first packet comes from.
    from: Side,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// For ICMP echo, the identifier.
    sport: u16,
    dport: u16,
    /// The round of its first packet.
    start: usize,
    steps: Vec<Step>,
}

/// One packet of the stream, as it was sent to one plane.
#[derive(Clone)]
struct Sent {
    side: Side,
    frame: Vec<u8>,
    /// The frame before the mangle, to recognise a forwarded packet the kernel trimmed.
    plain: Vec<u8>,
}

/// The part of a forwarded packet both planes must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Out {
    side: Side,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    /// Ports, or the echo identifier in both.
    sport: u16,
    dport: u16,
    ttl: u8,
}

#[derive(Clone)]
enum Verdict {
    Forwarded(Out, Vec<u8>),
    /// Not forwarded: why, when the plane says.
    Dropped(String),
}

impl Verdict {
    fn forwarded(&self) -> bool {
        matches!(self, Verdict::Forwarded(..))
    }
}

// ---------------------------------------------------------------------------------------------
// The generator.

struct Gen<'a> {
    rng: &'a mut Rng,
    space: &'a Space,
    flows: Vec<Flow>,
    packets: usize,
    /// Original tuples in use (either way round), so that no two flows share one.
    tuples: HashSet<(Ipv4Addr, u16, Ipv4Addr, u16, u8)>,
    /// LAN hosts' flows of protocols without ports, masqueraded: source, destination, protocol.
    masqueraded_other: Vec<(Ipv4Addr, Ipv4Addr, u8)>,
}

/// Rounds over which flows start.
const START_SPREAD: u64 = 6;

impl Gen<'_> {
    fn ephemeral(&mut self) -> u16 {
        self.rng.range(32_768, 60_999) as u16
    }

    /// A destination port: an edge or neighbour of a range of the policy, or (as often) one
    /// inside a range an accept rule opens, so that plenty of flows are allowed.
    fn port(&mut self) -> u16 {
        if self.rng.chance(50) {
            let (lo, hi) = self.rng.pick(&self.space.open_ports);
            self.rng.range(u32::from(lo), u32::from(hi)) as u16
        } else {
            self.rng.pick(&self.space.ports)
        }
    }

    fn lan_host(&mut self) -> Ipv4Addr {
        self.rng.pick(&self.space.lan)
    }

    /// A source on the LAN side, and whether replies to it may be sent.
    fn lan_source(&mut self) -> (Ipv4Addr, bool) {
        match self.rng.below(100) {
            0..=89 => (self.lan_host(), true),
            // A host behind a LAN router: its replies would be routed out of the WAN.
            90..=94 => (self.rng.pick(&self.space.remote), false),
            95..=97 => (self.rng.pick(&self.space.special), false),
            _ => (self.rng.pick(&self.space.own), false),
        }
    }

    /// A destination for LAN-side traffic, and whether a reply may come from it.
    fn lan_destination(&mut self) -> (Ipv4Addr, bool) {
        match self.rng.below(100) {
            0..=54 => (self.rng.pick(&self.space.remote), true),
            55..=84 => (self.rng.pick(&self.space.wan_link), true),
            85..=89 => (self.rng.pick(&self.space.own), false),
            90..=94 => (self.lan_host(), false),
            _ => (self.rng.pick(&self.space.special), false),
        }
    }

    fn wan_source(&mut self) -> (Ipv4Addr, bool) {
        match self.rng.below(100) {
            0..=59 => (self.rng.pick(&self.space.remote), true),
            60..=94 => (self.rng.pick(&self.space.wan_link), true),
            95..=97 => (self.rng.pick(&self.space.special), false),
            _ => (self.rng.pick(&self.space.own), false),
        }
    }

    /// A destination for WAN-side traffic of protocol `proto`: the address, the port if the
    /// destination decides it (a port-forward), and whether a reply may come back.
    fn wan_destination(&mut self, proto: u8) -> (Ipv4Addr, Option<u16>, bool) {
        let forwards: Vec<(Ipv4Addr, u16)> = self
            .space
            .dnat
            .iter()
            .filter(|d| d.2 == proto)
            .map(|d| (d.0, d.1))
            .collect();
        match self.rng.below(100) {
            0..=59 => (self.lan_host(), None, true),
            60..=84 if !forwards.is_empty() => {
                let (ip, port) = self.rng.pick(&forwards);
                (ip, Some(port), true)
            }
            60..=89 => (self.rng.pick(&self.space.own), None, false),
            90..=94 => (self.rng.pick(&self.space.remote), None, false),
            _ => (self.rng.pick(&self.space.special), None, false),
        }
    }

    /// Endpoints for a flow of `proto` from `from`: (src, dst, sport, dport, replies allowed);
    /// `None` when every draw hit a tuple in use (protocols without ports run out first).
    fn endpoints(&mut self, from: Side, proto: u8) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16, bool)> {
        let open: Vec<&(Side, Vec<Ipv4Addr>, Vec<Ipv4Addr>)> =
            self.space.open_any.iter().filter(|o| o.0 == from).collect();
        for _ in 0..100 {
            let allowed = !matches!(proto, TCP | UDP | ICMP) && !open.is_empty();
            let (src, dst, dport, replies) = match from {
                _ if allowed && self.rng.chance(50) => {
                    let (_, srcs, dsts) = open[self.rng.below(open.len() as u64) as usize];
                    (self.rng.pick(srcs), self.rng.pick(dsts), None, true)
                }
                Side::Lan => {
                    let (src, a) = self.lan_source();
                    let (dst, b) = self.lan_destination();
                    (src, dst, None, a && b)
                }
                Side::Wan => {
                    let (src, a) = self.wan_source();
                    let (dst, port, b) = self.wan_destination(proto);
                    (src, dst, port, a && b)
                }
            };
            // Sources of the other side's subnet are left out (see the module doc); the
            // firewall's own addresses are not, both planes refuse them.
            let spoofed = match from {
                Side::Lan => in_net(src, WAN_NET),
                Side::Wan => in_net(src, LAN_NET),
            };
            if spoofed && !self.space.own.contains(&src) {
                continue;
            }
            // A source port of the service range from the WAN to the firewall itself could be
            // a reply to what the kernel masqueraded keeping the port, and not the engine.
            let to_us = from == Side::Wan && self.space.own.contains(&dst);
            let sport = if proto == ICMP || to_us || self.rng.chance(90) {
                self.ephemeral()
            } else {
                // A low source port now and then, never one a port-forward listens on.
                let p = self.port();
                if self.space.dnat.iter().any(|d| d.1 == p) {
                    self.ephemeral()
                } else {
                    p
                }
            };
            let dport = match (proto, dport) {
                (ICMP, _) => sport,
                (_, Some(p)) => p,
                _ => self.port(),
            };
            // Protocols without ports are masqueraded by address alone in the kernel (see the
            // module doc): one flow per remote address and protocol through the masquerade
            // address, whichever side it starts from.
            let remote = match from {
                Side::Lan => Some(dst),
                Side::Wan => self.space.own.contains(&dst).then_some(src),
            };
            let (key, back) = match remote {
                Some(remote) if !matches!(proto, TCP | UDP | ICMP) => {
                    let key = (Ipv4Addr::UNSPECIFIED, 0, remote, 0, proto);
                    (key, key)
                }
                _ => (
                    (src, sport, dst, dport, proto),
                    (dst, dport, src, sport, proto),
                ),
            };
            // A port-forwarded flow also takes its inside tuple, which a LAN host's own flow
            // could otherwise meet.
            let inside = self
                .space
                .dnat
                .iter()
                .find(|d| (d.0, d.1, d.2) == (dst, dport, proto))
                .map(|d| (src, sport, d.3 .0, d.3 .1, proto));
            let taken = |t: &(Ipv4Addr, u16, Ipv4Addr, u16, u8)| {
                self.tuples.contains(t) || self.tuples.contains(&(t.2, t.3, t.0, t.1, t.4))
            };
            if taken(&key) || taken(&back) || inside.as_ref().is_some_and(taken) {
                continue;
            }
            self.tuples.insert(key);
            self.tuples.extend(inside);
            return Some((src, dst, sport, dport, replies));
        }
        None
    }

    fn ttl(&mut self) -> u8 {
        if self.rng.chance(80) {
            64
        } else {
            self.rng.range(2, 255) as u8
        }
    }

    /// A mangle that turns a packet into one no plane may forward (or, for the first few, a
    /// valid packet in an unusual shape).
    fn mangle(&mut self, l4: &L4) -> Mangle {
        let proto = l4.proto();
        loop {
            let m = match self.rng.below(28) {
                0 => Mangle::Options(self.rng.range(1, 10) as u8),
                1 => Mangle::Padding(self.rng.range(1, 40) as u8),
                2 => Mangle::Ttl(self.rng.range(0, 1) as u8),
                3 => Mangle::IhlLow(self.rng.range(0, 4) as u8),
                4 => Mangle::IhlHigh,
                5 => Mangle::TotalLong(self.rng.range(1, 60) as u8),
                6 => Mangle::TotalShort,
                7 | 8 => {
                    let header = match proto {
                        TCP => 20,
                        UDP | ICMP => 8,
                        _ => continue,
                    };
                    Mangle::CutL4(self.rng.range(0, header - 1) as u8)
                }
                9 => Mangle::BadIpChecksum,
                10 => Mangle::Version(self.rng.pick(&[0, 5, 6, 15])),
                11 if proto == TCP => Mangle::TcpDoff(self.rng.pick(&[0, 1, 2, 3, 4, 6, 10, 15])),
                12 if proto == UDP => Mangle::UdpLen(self.rng.pick(&[0u16, 1, 7, 9_000])),
                13 | 14 if proto == TCP => {
                    // Each is invalid in every state for the kernel (tcp_valid_flags).
                    let bad = [
                        0,
                        FIN,
                        PSH,
                        URG,
                        SYN | FIN,
                        SYN | RST,
                        SYN | FIN | ACK,
                        RST | FIN,
                        FIN | PSH | URG,
                        FIN | SYN | RST | PSH | ACK | URG,
                        SYN | ACK | URG,
                        RST | ACK | FIN,
                    ];
                    Mangle::TcpFlags(self.rng.pick(&bad))
                }
                15 => Mangle::FirstFragment,
                16 => Mangle::LaterFragment(self.rng.range(1, 185) as u16, self.rng.chance(50)),
                17 => Mangle::OtherMac,
                18 => Mangle::BroadcastMac,
                19 => Mangle::Vlan,
                20 => Mangle::NonIp,
                21 => Mangle::ReservedFlag,
                22 | 23 if matches!(proto, TCP | UDP | ICMP) => {
                    Mangle::BadL4Checksum(self.rng.chance(50))
                }
                24 if proto == UDP => Mangle::UdpNoChecksum,
                25..=27 => Mangle::IpOption(self.rng.below(IP_OPTIONS.len() as u64) as u8),
                _ => continue,
            };
            return m;
        }
    }

    /// Adds a flow of these packets, with mangled copies inserted before some of them, and a
    /// mangled first packet instead of the real one now and then (`replace_first`).
    fn push(
        &mut self,
        kind: &'static str,
        from: Side,
        proto: u8,
        make: impl FnOnce(&mut Self) -> Vec<(Dir, L4)>,
        mangle_percent: u64,
        replace_first: bool,
    ) {
        let Some(endpoints) = self.endpoints(from, proto) else {
            return;
        };
        let (src, dst) = (endpoints.0, endpoints.1);
        if from == Side::Lan && !matches!(proto, TCP | UDP | ICMP) && in_net(src, LAN_NET) {
            self.masqueraded_other.push((src, dst, proto));
        }
        self.push_flow(kind, from, endpoints, make, mangle_percent, replace_first);
    }

    /// [`Gen::push`] with the endpoints given: (src, dst, sport, dport, replies allowed).
    fn push_flow(
        &mut self,
        kind: &'static str,
        from: Side,
        (src, dst, sport, dport, replies): (Ipv4Addr, Ipv4Addr, u16, u16, bool),
        make: impl FnOnce(&mut Self) -> Vec<(Dir, L4)>,
        mangle_percent: u64,
        replace_first: bool,
    ) {
        let mut packets = make(self);
        if !replies {
            // Only what the first side sends before an answer (see the module doc): what it
            // sends after one it never got would be out of order for the kernel.
            if let Some(first) = packets.iter().position(|(d, _)| *d == Dir::Reply) {
                packets.truncate(first);
            }
        }
        let mut steps = Vec::new();
        for (i, (dir, l4)) in packets.into_iter().enumerate() {
            let ttl = if dir == Dir::Orig { self.ttl() } else { 64 };
            let step = |mangle| Step {
                dir,
                l4,
                ttl,
                mangle,
                id: 0,
            };
            if !self.rng.chance(mangle_percent) {
                steps.push(step(Mangle::None));
                continue;
            }
            let mangle = loop {
                let m = self.mangle(&l4);
                // Only a flow's first packet: a flow's state would move in the kernel and not
                // in the engine (see `Mangle::Late`).
                if i == 0 || m.when() != When::Late {
                    break m;
                }
            };
            steps.push(step(mangle));
            // A copy that both planes drop before their connection tables goes before the real
            // packet (unless the flow is to start without it); a packet in an unusual but
            // valid shape is the real packet, not a retransmission of it.
            let replaced = mangle.when() == When::Valid || (i == 0 && replace_first);
            if !replaced {
                steps.push(step(Mangle::None));
            }
        }
        for s in &mut steps {
            s.id = self.packets;
            self.packets += 1;
        }
        let start = self.rng.below(START_SPREAD) as usize;
        self.flows.push(Flow {
            kind,
            from,
            src,
            dst,
            sport,
            dport,
            start,
            steps,
        });
    }
}

fn tcp(flags: u8, seq: u32, ack: u32, len: u16) -> L4 {
    L4::Tcp {
        flags,
        seq,
        ack,
        len,
    }
}

/// A TCP conversation as two real endpoints would have it: the SYN (maybe sent twice), then a
/// refusal, silence, or the handshake, data both ways, and a FIN or RST close or none.
fn tcp_conversation(rng: &mut Rng) -> Vec<(Dir, L4)> {
    let (mut c, mut s) = (rng.u32(), rng.u32());
    let mut p = Vec::new();
    let syn = match rng.below(10) {
        0 => SYN | ECE | CWR,
        1 => SYN | PSH,
        _ => SYN,
    };
    p.push((Dir::Orig, tcp(syn, c, 0, 0)));
    if rng.chance(10) {
        p.push((Dir::Orig, tcp(syn, c, 0, 0)));
    }
    c = c.wrapping_add(1);
    match rng.below(10) {
        0 => {
            p.push((Dir::Reply, tcp(RST | ACK, 0, c, 0)));
            return p;
        }
        1 => return p,
        _ => {}
    }
    p.push((Dir::Reply, tcp(SYN | ACK, s, c, 0)));
    s = s.wrapping_add(1);
    p.push((Dir::Orig, tcp(ACK, c, s, 0)));
    for _ in 0..rng.below(4) {
        let len = rng.range(1, 200) as u16;
        if rng.chance(60) {
            p.push((Dir::Orig, tcp(PSH | ACK, c, s, len)));
            c = c.wrapping_add(u32::from(len));
            if rng.chance(70) {
                p.push((Dir::Reply, tcp(ACK, s, c, 0)));
            }
        } else {
            p.push((Dir::Reply, tcp(PSH | ACK, s, c, len)));
            s = s.wrapping_add(u32::from(len));
            if rng.chance(70) {
                p.push((Dir::Orig, tcp(ACK, c, s, 0)));
            }
        }
    }
    match rng.below(5) {
        0 | 1 => {
            p.push((Dir::Orig, tcp(FIN | ACK, c, s, 0)));
            c = c.wrapping_add(1);
            p.push((Dir::Reply, tcp(ACK, s, c, 0)));
            p.push((Dir::Reply, tcp(FIN | ACK, s, c, 0)));
            s = s.wrapping_add(1);
            p.push((Dir::Orig, tcp(ACK, c, s, 0)));
        }
        2 => p.push((Dir::Orig, tcp(RST | ACK, c, s, 0))),
        3 => p.push((Dir::Reply, tcp(RST | ACK, s, c, 0))),
        _ => {}
    }
    p
}

/// Packets of a connection the firewall did not see open (`nf_conntrack_tcp_loose`).
fn tcp_midstream(rng: &mut Rng) -> Vec<(Dir, L4)> {
    let (mut c, mut s) = (rng.u32(), rng.u32());
    let mut p = Vec::new();
    let len = rng.range(0, 100) as u16;
    let flags = if len > 0 { PSH | ACK } else { ACK };
    p.push((Dir::Orig, tcp(flags, c, s, len)));
    c = c.wrapping_add(u32::from(len));
    for _ in 0..rng.range(1, 3) {
        let len = rng.range(1, 100) as u16;
        p.push((Dir::Reply, tcp(PSH | ACK, s, c, len)));
        s = s.wrapping_add(u32::from(len));
        p.push((Dir::Orig, tcp(ACK, c, s, 0)));
    }
    p
}

/// One TCP packet with any flags at all, as the first of its flow.
fn tcp_any_flags(rng: &mut Rng) -> Vec<(Dir, L4)> {
    let flags = rng.below(256) as u8;
    vec![(Dir::Orig, tcp(flags, rng.u32(), rng.u32(), 0))]
}

fn udp_exchange(rng: &mut Rng) -> Vec<(Dir, L4)> {
    let mut p = vec![(
        Dir::Orig,
        L4::Udp {
            len: rng.range(2, 120) as u16,
        },
    )];
    for _ in 0..rng.below(5) {
        let dir = if rng.chance(60) {
            Dir::Reply
        } else {
            Dir::Orig
        };
        p.push((
            dir,
            L4::Udp {
                len: rng.range(2, 120) as u16,
            },
        ));
    }
    p
}

fn ping(rng: &mut Rng) -> Vec<(Dir, L4)> {
    let mut p = Vec::new();
    for seq in 1..=rng.range(1, 3) as u16 {
        p.push((Dir::Orig, L4::Echo { reply: false, seq }));
        if rng.chance(85) {
            p.push((Dir::Reply, L4::Echo { reply: true, seq }));
        }
    }
    p
}

/// An ICMP message nobody asked for: an echo reply, an error about nothing the firewall
/// tracks, or another type that cannot open a flow. Not timestamp (13), information (15) or
/// address-mask (17) requests, which the kernel tracks and the engine does not.
fn icmp_unsolicited(rng: &mut Rng) -> Vec<(Dir, L4)> {
    let l4 = match rng.below(4) {
        0 => L4::Echo {
            reply: true,
            seq: rng.range(1, 100) as u16,
        },
        1 => L4::Icmp {
            ty: rng.pick(&[3, 4, 5, 11, 12]),
            code: rng.range(0, 5) as u8,
        },
        _ => L4::Icmp {
            ty: rng.pick(&[6, 9, 10, 14, 16, 18, 19, 30, 40, 42, 200, 255]),
            code: 0,
        },
    };
    vec![(Dir::Orig, l4)]
}

/// Protocols without ports, which both planes track by address alone (ESP, AH,
/// experimental), and GRE, whose PPTP call id is part of its tuple.
const OTHER_PROTOCOLS: [u8; 5] = [GRE, 50, 51, 253, 254];

/// Packets of another protocol both ways, as a tunnel's endpoints send them. GRE is mostly
/// plain, sometimes PPTP (its call id 0, which a reply with call id 0 matches, or one of its
/// own, which no reply matches without a PPTP helper), sometimes PPTP not carrying PPP (no
/// tuple, invalid) or of a version no NAT translates back, and now and then shorter than the
/// 8 bytes the kernel's NAT needs to translate it.
fn other_exchange(rng: &mut Rng, proto: u8) -> Vec<(Dir, L4)> {
    let (version, ppp, call, reply_call) = match rng.below(100) {
        0..=59 => (0, true, 0, 0),
        60..=69 => (1, true, 0, 0),
        70..=79 => {
            let (a, b) = (rng.range(1, 65_535) as u16, rng.range(1, 65_535) as u16);
            (1, true, a, b)
        }
        80..=84 => (1, false, rng.range(0, 65_535) as u16, 0),
        _ => (rng.range(2, 7) as u8, true, 0, 0),
    };
    let l4 = |rng: &mut Rng, dir: Dir| {
        let len = if rng.chance(10) {
            rng.range(0, 7)
        } else {
            rng.range(8, 60)
        } as u16;
        match proto {
            GRE => L4::Gre {
                version,
                ppp,
                call: if dir == Dir::Orig { call } else { reply_call },
                len,
            },
            _ => L4::Raw {
                proto,
                len: len.max(4),
            },
        }
    };
    let mut p = vec![(Dir::Orig, l4(rng, Dir::Orig))];
    for _ in 0..rng.below(5) {
        let dir = if rng.chance(60) {
            Dir::Reply
        } else {
            Dir::Orig
        };
        p.push((dir, l4(rng, dir)));
    }
    p
}

fn generate(rng: &mut Rng, space: &Space, target: usize) -> Vec<Flow> {
    let mut g = Gen {
        rng,
        space,
        flows: Vec::new(),
        packets: 0,
        tuples: HashSet::new(),
        masqueraded_other: Vec::new(),
    };
    while g.packets < target {
        let from = if g.rng.chance(55) {
            Side::Lan
        } else {
            Side::Wan
        };
        match g.rng.below(100) {
            0..=39 => g.push(
                "tcp-conversation",
                from,
                TCP,
                |g| tcp_conversation(g.rng),
                10,
                true,
            ),
            40..=47 => g.push(
                "tcp-midstream",
                from,
                TCP,
                |g| tcp_midstream(g.rng),
                10,
                false,
            ),
            48..=52 => g.push(
                "tcp-any-flags",
                from,
                TCP,
                |g| tcp_any_flags(g.rng),
                5,
                false,
            ),
            53..=72 => g.push("udp", from, UDP, |g| udp_exchange(g.rng), 12, true),
            73..=84 => g.push("icmp-echo", from, ICMP, |g| ping(g.rng), 12, true),
            85..=91 => g.push(
                "icmp-other",
                from,
                ICMP,
                |g| icmp_unsolicited(g.rng),
                10,
                false,
            ),
            _ if g.rng.chance(15) && !g.masqueraded_other.is_empty() => {
                // Another LAN host to where one is masqueraded already, in the same protocol
                // without ports: the same reply tuple, so both planes refuse it while the
                // first one's flow lives (and forward it if it comes first).
                let (first, dst, proto) = g.rng.pick(&g.masqueraded_other);
                let src = g.lan_host();
                if src != first {
                    let kind = "other-proto-clash";
                    let make = |g: &mut Gen| other_exchange(g.rng, proto);
                    g.push_flow(kind, Side::Lan, (src, dst, 0, 0, true), make, 10, true);
                }
            }
            _ => {
                // GRE half the time: its versions and call ids make the most cases.
                let proto = if g.rng.chance(50) {
                    GRE
                } else {
                    g.rng.pick(&OTHER_PROTOCOLS)
                };
                let kind = if proto == GRE { "gre" } else { "other-proto" };
                g.push(
                    kind,
                    from,
                    proto,
                    |g| other_exchange(g.rng, proto),
                    10,
                    true,
                )
            }
        }
    }
    g.flows
}

// ---------------------------------------------------------------------------------------------
// Frames.

#[derive(Clone, Copy)]
struct Macs {
    fw_lan: [u8; 6],
    fw_wan: [u8; 6],
    lan_host: [u8; 6],
    wan_host: [u8; 6],
}

impl Macs {
    /// (to, from) of a frame arriving at the firewall on `side`.
    fn arriving(&self, side: Side) -> ([u8; 6], [u8; 6]) {
        match side {
            Side::Lan => (self.fw_lan, self.lan_host),
            Side::Wan => (self.fw_wan, self.wan_host),
        }
    }
}

fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(pair[0]) << 8 | pair.get(1).map_or(0, |b| u32::from(*b));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    fold(sum16(segment, sum16(&pseudo, 0)))
}

/// Payload bytes of packet `tag`: its tag, then a pattern.
fn payload(tag: u16, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| match i {
            0 => (tag >> 8) as u8,
            1 => tag as u8,
            _ => (tag as usize).wrapping_mul(7).wrapping_add(i) as u8,
        })
        .collect()
}

/// An IPv4 packet's L4 bytes with a valid checksum.
fn l4_bytes(
    l4: &L4,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    (sport, dport): (u16, u16),
    tag: u16,
) -> Vec<u8> {
    let mut b = Vec::new();
    match *l4 {
        L4::Tcp {
            flags,
            seq,
            ack,
            len,
        } => {
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
            b.extend_from_slice(&ack.to_be_bytes());
            b.extend_from_slice(&[5 << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
            b.extend_from_slice(&payload(tag, usize::from(len)));
            let sum = l4_checksum(src, dst, TCP, &b);
            b[16..18].copy_from_slice(&sum.to_be_bytes());
        }
        L4::Udp { len } => {
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&(8 + len).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&payload(tag, usize::from(len)));
            let sum = match l4_checksum(src, dst, UDP, &b) {
                0 => 0xffff,
                s => s,
            };
            b[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        L4::Echo { reply, seq } => {
            b.extend_from_slice(&[if reply { 0 } else { 8 }, 0, 0, 0]);
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
            b.extend_from_slice(&payload(tag, 16));
        }
        L4::Icmp { ty, code } => {
            b.extend_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
            if matches!(ty, 3 | 4 | 5 | 11 | 12) {
                // About a datagram the victim never had a flow for: UDP port 1 to port 1 of an
                // address nothing talks to.
                let mut inner = vec![0x45, 0, 0, 36, 0, 1, 0, 0, 64, UDP, 0, 0];
                inner.extend_from_slice(&dst.octets());
                inner.extend_from_slice(&[192, 0, 2, 99]);
                let sum = fold(sum16(&inner, 0));
                inner[10..12].copy_from_slice(&sum.to_be_bytes());
                inner.extend_from_slice(&[0, 1, 0, 1, 0, 16, 0, 0]);
                b.extend_from_slice(&inner);
            } else {
                b.extend_from_slice(&payload(tag, 8));
            }
        }
        L4::Raw { len, .. } => b.extend_from_slice(&payload(tag, usize::from(len))),
        L4::Gre {
            version,
            ppp,
            call,
            len,
        } => {
            // Flags (PPTP's key and sequence bits), version, protocol; PPTP's payload length
            // and call id, or four bytes of a plain GRE payload; then the tag.
            let protocol: u16 = if ppp { 0x880b } else { 0x0800 };
            b.extend_from_slice(&[if version == 1 { 0x30 } else { 0 }, version]);
            b.extend_from_slice(&protocol.to_be_bytes());
            b.extend_from_slice(&len.saturating_sub(8).to_be_bytes());
            b.extend_from_slice(&call.to_be_bytes());
            b.extend_from_slice(&payload(tag, 60));
            b.truncate(usize::from(len));
        }
    }
    if matches!(l4, L4::Echo { .. } | L4::Icmp { .. }) {
        let sum = fold(sum16(&b, 0));
        b[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    b
}

fn ip_checksum(frame: &mut [u8], header_len: usize) {
    let end = (14 + header_len).min(frame.len());
    if end < 14 + 12 {
        return;
    }
    frame[24] = 0;
    frame[25] = 0;
    let sum = fold(sum16(&frame[14..end], 0));
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// The frame of one packet, valid in every respect.
#[allow(clippy::too_many_arguments)]
fn frame(
    macs: &Macs,
    side: Side,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    ports: (u16, u16),
    l4: &L4,
    ttl: u8,
    tag: u16,
) -> Vec<u8> {
    let (to, from) = macs.arriving(side);
    let body = l4_bytes(l4, (src, dst), ports, tag);
    let mut f = Vec::with_capacity(34 + body.len());
    f.extend_from_slice(&to);
    f.extend_from_slice(&from);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&(20 + body.len() as u16).to_be_bytes());
    f.extend_from_slice(&tag.to_be_bytes());
    f.extend_from_slice(&[0x40, 0, ttl, l4.proto(), 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&body);
    ip_checksum(&mut f, 20);
    f
}

fn set_total_len(f: &mut [u8], len: usize) {
    f[16..18].copy_from_slice(&(len as u16).to_be_bytes());
}

fn addrs(f: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let a = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    (a(26), a(30))
}

/// Recomputes the L4 checksum of a frame built by [`frame`] (IHL 5) after a change.
fn refill_l4(f: &mut [u8], proto: u8) {
    let (src, dst) = addrs(f);
    let at = match proto {
        TCP => 34 + 16,
        UDP => 34 + 6,
        _ => return,
    };
    f[at] = 0;
    f[at + 1] = 0;
    let sum = l4_checksum(src, dst, proto, &f[34..]);
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Applies `m` to a frame built by [`frame`].
fn mangle(mut f: Vec<u8>, m: Mangle, proto: u8) -> Vec<u8> {
    let total = f.len() - 14;
    match m {
        Mangle::None => {}
        Mangle::Options(words) => {
            let n = usize::from(words) * 4;
            let mut opts = vec![1u8; n];
            opts[n - 1] = 0;
            f.splice(34..34, opts);
            f[14] = 0x40 | (5 + words);
            set_total_len(&mut f, total + n);
            ip_checksum(&mut f, 20 + n);
        }
        Mangle::Padding(n) => f.extend(std::iter::repeat_n(0u8, usize::from(n))),
        Mangle::Ttl(t) => {
            f[22] = t;
            ip_checksum(&mut f, 20);
        }
        Mangle::IhlLow(ihl) => {
            f[14] = 0x40 | ihl;
            ip_checksum(&mut f, 20);
        }
        Mangle::IhlHigh => {
            // A header longer than the packet: cut the packet below 60 bytes first, or the
            // IHL would make its L4 bytes IP options.
            let total = total.min(56);
            f.truncate(14 + total);
            set_total_len(&mut f, total);
            let words = (total / 4 + 1).clamp(6, 15) as u8;
            f[14] = 0x40 | words;
            ip_checksum(&mut f, usize::from(words) * 4);
        }
        Mangle::TotalLong(n) => {
            set_total_len(&mut f, total + usize::from(n));
            ip_checksum(&mut f, 20);
        }
        Mangle::TotalShort => {
            set_total_len(&mut f, 19);
            ip_checksum(&mut f, 20);
        }
        Mangle::CutL4(keep) => {
            f.truncate(34 + usize::from(keep));
            set_total_len(&mut f, 20 + usize::from(keep));
            ip_checksum(&mut f, 20);
        }
        Mangle::BadIpChecksum => f[24] ^= 0x5a,
        Mangle::Version(v) => {
            f[14] = v << 4 | 5;
            ip_checksum(&mut f, 20);
        }
        Mangle::TcpDoff(words) => {
            f[34 + 12] = words << 4;
            refill_l4(&mut f, proto);
        }
        Mangle::UdpLen(len) => {
            f[34 + 4..34 + 6].copy_from_slice(&len.to_be_bytes());
            refill_l4(&mut f, proto);
        }
        Mangle::TcpFlags(flags) => {
            f[34 + 13] = flags;
            refill_l4(&mut f, proto);
        }
        Mangle::FirstFragment => {
            f[20] = 0x20;
            f[21] = 0;
            ip_checksum(&mut f, 20);
        }
        Mangle::LaterFragment(offset, more) => {
            let v = offset | if more { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&v.to_be_bytes());
            ip_checksum(&mut f, 20);
        }
        Mangle::OtherMac => f[0..6].copy_from_slice(&[0x02, 0x77, 0x77, 0x77, 0x77, 0x77]),
        Mangle::BroadcastMac => f[0..6].copy_from_slice(&[0xff; 6]),
        Mangle::Vlan => {
            f.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        }
        Mangle::NonIp => f[12..14].copy_from_slice(&[0x88, 0xb5]),
        Mangle::ReservedFlag => {
            f[20] |= 0x80;
            ip_checksum(&mut f, 20);
        }
        Mangle::BadL4Checksum(in_data) => {
            let sum_at = 34
                + match proto {
                    TCP => 16,
                    UDP => 6,
                    _ => 2,
                };
            // A byte the checksum covers and no plane reads for anything else: the sequence
            // number's, the first of UDP's payload, the echo sequence number's.
            let at = match (in_data, proto) {
                (false, _) => sum_at + 1,
                (true, TCP) => 34 + 4,
                (true, UDP) => 34 + 8,
                (true, _) => 34 + 6,
            };
            f[at] ^= 0x01;
            if proto == UDP && f[sum_at..sum_at + 2] == [0, 0] {
                // A UDP checksum of 0 would mean none: damage it otherwise.
                f[sum_at] ^= 0x80;
            }
        }
        Mangle::UdpNoChecksum => f[34 + 6..34 + 8].copy_from_slice(&[0, 0]),
        Mangle::IpOption(i) => {
            let opts = IP_OPTIONS[usize::from(i)].1;
            f.splice(34..34, opts.iter().copied());
            f[14] = 0x40 | (5 + opts.len() / 4) as u8;
            set_total_len(&mut f, total + opts.len());
            ip_checksum(&mut f, 20 + opts.len());
        }
    }
    f
}

/// An ARP request from (`mac`, `ip`) for `target`, broadcast.
fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// Whether `f` is an ARP reply from `from` to `to`.
fn is_arp_reply(f: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == [0, 2]
        && f[28..32] == from.octets()
        && f[38..42] == to.octets()
}

/// The IPv4 packet in an Ethernet frame, trimmed to its total length, if it is one.
fn ipv4(f: &[u8]) -> Option<&[u8]> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    if ihl < 20 || total < ihl || 14 + total > f.len() {
        return None;
    }
    Some(&f[14..14 + total])
}

/// The tag of the packet in `f` and what must be equal in a forwarded copy of it: protocol and
/// L4 contents past the ports / echo identifier (which NAT may change).
fn fingerprint(f: &[u8]) -> Option<(u16, Vec<u8>)> {
    let ip = ipv4(f)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tag = u16::from_be_bytes([ip[4], ip[5]]);
    let proto = ip[9];
    let l4 = &ip[ihl..];
    let mut key = vec![proto];
    match proto {
        TCP => key.extend_from_slice(l4.get(4..14)?),
        UDP => {
            key.extend_from_slice(l4.get(4..6)?);
            key.extend_from_slice(l4.get(8..)?);
        }
        ICMP => {
            key.extend_from_slice(l4.get(..2)?);
            key.extend_from_slice(l4.get(6..)?);
        }
        _ => key.extend_from_slice(l4),
    }
    if matches!(proto, TCP) {
        let doff = usize::from(l4[12] >> 4) * 4;
        key.extend_from_slice(l4.get(doff..)?);
    }
    Some((tag, key))
}

/// A forwarded frame's addresses, ports (the echo identifier for echo) and TTL.
fn out_of(side: Side, f: &[u8]) -> Option<Out> {
    let ip = ipv4(f)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = &ip[ihl..];
    let proto = ip[9];
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (sport, dport) = match proto {
        TCP | UDP => (word(0)?, word(2)?),
        ICMP if matches!(l4.first(), Some(0 | 8)) => (word(4)?, word(4)?),
        _ => (0, 0),
    };
    let (src, dst) = addrs(f);
    Some(Out {
        side,
        src,
        dst,
        proto,
        sport,
        dport,
        ttl: ip[8],
    })
}

/// One line about a frame: what it carries as far as it can be read.
fn describe(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("{} bytes, not even an Ethernet header", f.len());
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype != 0x0800 || f.len() < 34 {
        return format!("ethertype {ethertype:#06x}, {} bytes", f.len());
    }
    let (src, dst) = addrs(f);
    let ihl = usize::from(f[14] & 0x0f);
    let total = u16::from_be_bytes([f[16], f[17]]);
    let frag = u16::from_be_bytes([f[20], f[21]]);
    let proto = f[23];
    let sum_ok = fold(sum16(&f[14..(14 + ihl * 4).clamp(34, f.len())], 0)) == 0;
    let mut s = format!(
        "v{} ihl={ihl} len={total}/{} id={} frag={frag:#06x} ttl={} proto={proto}{} {src} > {dst}",
        f[14] >> 4,
        f.len() - 14,
        u16::from_be_bytes([f[18], f[19]]),
        f[22],
        if sum_ok { "" } else { " BAD-IP-SUM" },
    );
    let at = 14 + (ihl * 4).max(20);
    let l4 = f.get(at..).unwrap_or(&[]);
    let word = |i: usize| l4.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match (proto, word(0), word(2)) {
        (TCP, Some(sp), Some(dp)) if l4.len() >= 14 => {
            let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            let ack = u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]);
            let flags = l4[13];
            let names: String = [
                (FIN, 'F'),
                (SYN, 'S'),
                (RST, 'R'),
                (PSH, 'P'),
                (ACK, '.'),
                (URG, 'U'),
                (ECE, 'E'),
                (CWR, 'C'),
            ]
            .iter()
            .filter(|(b, _)| flags & b != 0)
            .map(|(_, c)| *c)
            .collect();
            let _ = write!(
                s,
                " tcp {sp} > {dp} [{names}] seq={seq} ack={ack} doff={}",
                l4[12] >> 4
            );
        }
        (UDP, Some(sp), Some(dp)) => {
            let _ = write!(s, " udp {sp} > {dp} ulen={:?}", word(4));
        }
        (ICMP, Some(_), _) => {
            let _ = write!(
                s,
                " icmp type={} code={} id={:?} seq={:?}",
                l4[0],
                l4[1],
                word(4),
                word(6)
            );
        }
        _ => {
            let _ = write!(s, " ({} L4 bytes)", l4.len());
        }
    }
    s
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The two planes.

trait Plane {
    /// Takes the frames in order; says what became of each.
    fn round(&mut self, sends: &[Sent]) -> Vec<Verdict>;
}

struct EnginePlane {
    engine: Engine,
    now: u64,
}

impl Plane for EnginePlane {
    fn round(&mut self, sends: &[Sent]) -> Vec<Verdict> {
        self.now += 10;
        let mut out = [0u8; FRAME_LEN];
        sends
            .iter()
            .map(|s| {
                let mut f = s.frame.clone();
                match self.engine.handle(s.side, &mut f, self.now, &mut out) {
                    Action::Forward { out: side, .. } => match out_of(side, &f) {
                        Some(o) => Verdict::Forwarded(o, f),
                        None => panic!("the engine forwarded an unreadable frame: {}", hex(&f)),
                    },
                    other => Verdict::Dropped(format!("{other:?}")),
                }
            })
            .collect()
    }
}

struct KernelPlane {
    lan: Socket,
    wan: Socket,
    tx: TxStore,
    rx: RxBatch,
    macs: Macs,
    /// Frames caught that were not a sent packet (the firewall's own), for the report.
    foreign: usize,
}

impl KernelPlane {
    fn send(&mut self, side: Side, frame: &[u8]) {
        let socket = match side {
            Side::Lan => &self.lan,
            Side::Wan => &self.wan,
        };
        let mut batch = self.tx.batch();
        assert!(batch.push(frame));
        let sent = socket.send(&mut batch);
        assert_eq!(
            (sent.frames, sent.failed),
            (1, 0),
            "cannot inject on the {} host: {}",
            side_name(side),
            describe(frame)
        );
    }

    /// Frames the hosts received since the last call, with the side they came out of.
    fn drain(&mut self, caught: &mut Vec<(Side, Vec<u8>)>) {
        for side in [Side::Lan, Side::Wan] {
            loop {
                let socket = match side {
                    Side::Lan => &self.lan,
                    Side::Wan => &self.wan,
                };
                let n = match socket.recv(&mut self.rx) {
                    Ok(n) => n,
                    Err(e) => panic!("reading the {} host's veth: {e}", side_name(side)),
                };
                if n == 0 {
                    break;
                }
                for (f, meta) in self.rx.frames() {
                    assert!(!meta.truncated, "a caught frame was cut short");
                    if !meta.outgoing {
                        caught.push((side, f.to_vec()));
                    }
                }
            }
        }
    }
}

/// The host on each side: its address, and the firewall's there (for the ARP barrier).
fn host(side: Side) -> (Ipv4Addr, Ipv4Addr) {
    match side {
        Side::Lan => (addr::LAN_HOST, addr::FW_LAN),
        Side::Wan => (addr::WAN_HOST, addr::FW_WAN),
    }
}

impl Plane for KernelPlane {
    fn round(&mut self, sends: &[Sent]) -> Vec<Verdict> {
        for s in sends {
            self.send(s.side, &s.frame);
        }
        // The barrier: the firewall answers ARP after it has handled everything sent before.
        for side in [Side::Lan, Side::Wan] {
            let (me, fw) = host(side);
            let mac = match side {
                Side::Lan => self.macs.lan_host,
                Side::Wan => self.macs.wan_host,
            };
            self.send(side, &arp_request(mac, me, fw));
        }
        let mut caught = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut answered = [false; 2];
        while answered != [true, true] {
            assert!(
                Instant::now() < deadline,
                "the firewall did not answer the barrier ARP requests ({answered:?})"
            );
            let before = caught.len();
            self.drain(&mut caught);
            for (side, f) in &caught[before..] {
                let (me, fw) = host(*side);
                if is_arp_reply(f, fw, me) {
                    answered[usize::from(*side == Side::Wan)] = true;
                }
            }
            if caught.len() == before {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.drain(&mut caught);

        let mut by_tag: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, s) in sends.iter().enumerate() {
            if let Some((tag, _)) = fingerprint(&s.frame).or_else(|| fingerprint(&s.plain)) {
                by_tag.entry(tag).or_default().push(i);
            }
        }
        let mut verdicts = vec![Verdict::Dropped("not seen on either host".into()); sends.len()];
        for (side, f) in caught {
            let Some((tag, key)) = fingerprint(&f) else {
                self.foreign += 1;
                continue;
            };
            let hit = by_tag.get(&tag).and_then(|ids| {
                ids.iter().copied().find(|&i| {
                    [&sends[i].frame, &sends[i].plain]
                        .iter()
                        .any(|sent| fingerprint(sent).is_some_and(|(_, k)| k == key))
                })
            });
            let Some(i) = hit else {
                self.foreign += 1;
                continue;
            };
            let out = out_of(side, &f).expect("a fingerprinted frame is IPv4");
            if verdicts[i].forwarded() {
                verdicts[i] =
                    Verdict::Dropped(format!("came out twice, the second time: {}", describe(&f)));
            } else {
                verdicts[i] = Verdict::Forwarded(out, f);
            }
        }
        verdicts
    }
}

// ---------------------------------------------------------------------------------------------
// Driving a plane through the stream.

/// Every packet of `flows` through `plane`, in rounds; replies are addressed to what this
/// plane forwarded. Returns, by packet number, what was sent and what became of it.
fn drive(plane: &mut dyn Plane, flows: &[Flow], macs: &Macs) -> Vec<(Sent, Verdict)> {
    let total: usize = flows.iter().map(|f| f.steps.len()).sum();
    let rounds = flows
        .iter()
        .map(|f| f.start + f.steps.len())
        .max()
        .unwrap_or(0);
    let mut results: Vec<Option<(Sent, Verdict)>> = vec![None; total];
    // By flow: the side and tuple its first forwarded original packet came out with.
    let mut seen: Vec<Option<Out>> = vec![None; flows.len()];
    for round in 0..rounds {
        let mut sends = Vec::new();
        let mut which = Vec::new();
        for (fi, flow) in flows.iter().enumerate() {
            let Some(step) = round
                .checked_sub(flow.start)
                .and_then(|k| flow.steps.get(k))
            else {
                continue;
            };
            let (side, addrs, ports) = match (step.dir, seen[fi]) {
                (Dir::Orig, _) => (flow.from, (flow.src, flow.dst), (flow.sport, flow.dport)),
                (Dir::Reply, Some(o)) => (o.side, (o.dst, o.src), (o.dport, o.sport)),
                (Dir::Reply, None) => (
                    other(flow.from),
                    (flow.dst, flow.src),
                    (flow.dport, flow.sport),
                ),
            };
            let tag = u16::try_from(step.id + 1).expect("at most 65535 packets");
            let plain = frame(macs, side, addrs, ports, &step.l4, step.ttl, tag);
            let sent = mangle(plain.clone(), step.mangle, step.l4.proto());
            sends.push(Sent {
                side,
                frame: sent,
                plain,
            });
            which.push((fi, step));
        }
        let verdicts = plane.round(&sends);
        for ((sent, verdict), (fi, step)) in sends.into_iter().zip(verdicts).zip(which) {
            if let (Dir::Orig, Verdict::Forwarded(o, _), None) = (step.dir, &verdict, seen[fi]) {
                seen[fi] = Some(*o);
            }
            results[step.id] = Some((sent, verdict));
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every packet was sent"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Setting the planes up.

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns
        .ip(&["-o", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("{e}"));
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let mut mac = [0u8; 6];
    for (i, b) in text.split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).expect("hex MAC");
    }
    mac
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The lab's firewall owns the engine's addresses only, knows every neighbour, routes off-link
/// destinations to the WAN host; the hosts' stacks never see a frame.
fn prepare_kernel_lab(lab: &Lab, macs: &Macs) {
    let fw = lab.fw();
    fw.ip(&[
        "addr",
        "del",
        &format!("{}/{}", addr::FW_WAN2, addr::PREFIX_LEN),
        "dev",
        testlab::ifname::FW_WAN,
    ])
    .expect("remove the firewall's second WAN address");
    fw.ip(&[
        "route",
        "add",
        "default",
        "via",
        &addr::WAN_HOST.to_string(),
    ])
    .expect("default route via the WAN host");
    let mut batch = String::new();
    for last in 2..=254u8 {
        for (net, dev, mac) in [
            ([192, 168, 50], "lan0", macs.lan_host),
            ([198, 51, 100], "wan0", macs.wan_host),
        ] {
            let ip = Ipv4Addr::new(net[0], net[1], net[2], last);
            if ip == addr::FW_LAN || ip == addr::FW_WAN {
                continue;
            }
            let _ = writeln!(
                batch,
                "neigh replace {ip} lladdr {} dev {dev} nud permanent",
                mac_text(mac)
            );
        }
    }
    let file = std::env::temp_dir().join(format!("ward-diff-neigh-{}", std::process::id()));
    std::fs::write(&file, batch).expect("write the neighbour batch");
    let r = fw.ip(&["-batch", file.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&file);
    r.expect("permanent neighbours in the firewall");
    for ns in [lab.lan(), lab.wan()] {
        let o = ns
            .exec(
                "nft",
                &["add table netdev ward-diff-sink; add chain netdev ward-diff-sink in { type filter hook ingress device eth0 priority 0; policy drop; }"],
            )
            .expect("nft in a host namespace");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

fn open(ns: &Netns, dev: &'static str) -> Socket {
    match ns.run(move || Socket::open(dev)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("cannot open a packet socket on {dev}: {e}"),
        Err(e) => panic!("{e}"),
    }
}

fn engine_plane(checked: &policy::Checked, macs: &Macs, rng: &mut Rng) -> EnginePlane {
    let own = |mac: [u8; 6], ip| Own {
        mac: EthernetAddress(mac),
        ip,
        prefix_len: addr::PREFIX_LEN,
    };
    let config = Config {
        lan: Interface {
            name: testlab::ifname::FW_LAN.into(),
            own: own(macs.fw_lan, addr::FW_LAN),
        },
        wan: Interface {
            name: testlab::ifname::FW_WAN.into(),
            own: own(macs.fw_wan, addr::FW_WAN),
        },
        gateway: Some(addr::WAN_HOST),
        conntrack_capacity: engine::core::conntrack::DEFAULT_CAPACITY,
        neighbour_capacity: 4096,
        conntrack_key: [rng.next(), rng.next()],
        neighbour_key: [rng.next(), rng.next()],
    };
    let rules = Rules::compile(&checked.policy, [rng.next(), rng.next()]);
    let mut engine = Engine::new(rules, config).expect("engine configuration");
    // Every neighbour asks for the engine's address once, which is how the engine learns it.
    let mut out = [0u8; FRAME_LEN];
    for last in 2..=254u8 {
        for (side, net, mac, fw) in [
            (Side::Lan, [192, 168, 50], macs.lan_host, addr::FW_LAN),
            (Side::Wan, [198, 51, 100], macs.wan_host, addr::FW_WAN),
        ] {
            let ip = Ipv4Addr::new(net[0], net[1], net[2], last);
            if ip == fw {
                continue;
            }
            let mut f = arp_request(mac, ip, fw);
            let action = engine.handle(side, &mut f, 0, &mut out);
            assert_eq!(action, Action::Reply(side), "ARP from {ip}");
        }
    }
    EnginePlane { engine, now: 0 }
}

/// Pins the calling thread to one CPU it may run on, so that the veths deliver frames in the
/// order they were sent (one backlog queue).
fn pin_to_one_cpu() {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let me = Pid::from_raw(0);
    let allowed = sched_getaffinity(me).expect("sched_getaffinity");
    let cpu = (0..CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .expect("some CPU is allowed");
    let mut one = CpuSet::new();
    one.set(cpu).expect("cpu in range");
    sched_setaffinity(me, &one).expect("sched_setaffinity");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16)
                    .ok()
                    .and_then(|n| n.to_string().parse().ok()),
                None => v.parse().ok(),
            };
            parsed.unwrap_or_else(|| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn kernel_and_engine_agree_on_every_packet() {
    let seed: u64 = env_or("WARD_DIFF_SEED", DEFAULT_SEED);
    let target: usize = env_or("WARD_DIFF_PACKETS", DEFAULT_PACKETS);
    assert!(
        (10_000..=65_000).contains(&target),
        "WARD_DIFF_PACKETS must be 10000..=65000"
    );
    println!("differential: seed {seed:#x} (WARD_DIFF_SEED), {target} packets (WARD_DIFF_PACKETS)");
    let started = Instant::now();

    let checked = policy::parse_str(POLICY, "differential.yaml").expect("valid policy");
    let mut rng = Rng(seed);
    let space = space(&checked.policy, &mut rng);
    let flows = generate(&mut rng, &space, target);
    let packets: usize = flows.iter().map(|f| f.steps.len()).sum();

    let lab = lab();
    let macs = Macs {
        fw_lan: mac_of(&lab.fw(), testlab::ifname::FW_LAN),
        fw_wan: mac_of(&lab.fw(), testlab::ifname::FW_WAN),
        lan_host: mac_of(&lab.lan(), testlab::ifname::LAN_HOST),
        wan_host: mac_of(&lab.wan(), testlab::ifname::WAN_HOST),
    };
    prepare_kernel_lab(&lab, &macs);
    apply(&lab, POLICY);

    let mut engine = engine_plane(&checked, &macs, &mut rng);
    let engine_results = drive(&mut engine, &flows, &macs);

    pin_to_one_cpu();
    let mut kernel = KernelPlane {
        lan: open(&lab.lan(), testlab::ifname::LAN_HOST),
        wan: open(&lab.wan(), testlab::ifname::WAN_HOST),
        tx: TxStore::new(1),
        rx: RxBatch::new(2048),
        macs,
        foreign: 0,
    };
    let kernel_started = Instant::now();
    let kernel_results = drive(&mut kernel, &flows, &macs);
    let kernel_time = kernel_started.elapsed();

    // Compare, packet by packet.
    let mut flow_of = vec![0usize; packets];
    for (fi, f) in flows.iter().enumerate() {
        for s in &f.steps {
            flow_of[s.id] = fi;
        }
    }
    let mut stats: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let (mut forwarded, mut agree) = (0usize, 0usize);
    let mut report = String::new();
    let mut disagreements = 0usize;
    for id in 0..packets {
        let flow = &flows[flow_of[id]];
        let step = flow
            .steps
            .iter()
            .find(|s| s.id == id)
            .expect("step of its flow");
        let (ks, kv) = &kernel_results[id];
        let (es, ev) = &engine_results[id];
        let same = match (kv, ev) {
            (Verdict::Forwarded(k, _), Verdict::Forwarded(e, _)) => {
                // Masquerade's port (or echo identifier) is each plane's own choice. A reply
                // of a port-forwarded flow leaves as the port-forward, the same in both.
                let forwarded_flow = flow.from == Side::Wan
                    && space
                        .dnat
                        .iter()
                        .any(|d| (d.0, d.1, d.2) == (flow.dst, flow.dport, step.l4.proto()));
                // A flow that meets its own reverse, masqueraded, gets another source port in
                // both planes (the kernel's NAT null binding), each its own choice too.
                let sent_sport = out_of(ks.side, &ks.frame).map(|o| o.sport);
                let both_moved = Some(k.sport) != sent_sport && Some(e.sport) != sent_sport;
                let masqueraded = !(step.dir == Dir::Reply && forwarded_flow)
                    && ((k.src == addr::FW_WAN && addrs(&ks.frame).0 != addr::FW_WAN)
                        || both_moved);
                let mask = |o: &Out| Out {
                    sport: if masqueraded { 0 } else { o.sport },
                    dport: if masqueraded && o.proto == ICMP {
                        0
                    } else {
                        o.dport
                    },
                    ..*o
                };
                // The options of a forwarded packet, where both planes write them alike.
                let options = |f: &[u8]| f[34..14 + usize::from(f[14] & 0x0f) * 4].to_vec();
                let alike = match step.mangle {
                    Mangle::IpOption(i) => IP_OPTIONS[usize::from(i)].3,
                    _ => true,
                };
                let (Verdict::Forwarded(_, kf), Verdict::Forwarded(_, ef)) = (kv, ev) else {
                    unreachable!("both forwarded")
                };
                mask(k) == mask(e) && (!alike || options(kf) == options(ef))
            }
            (Verdict::Dropped(_), Verdict::Dropped(_)) => true,
            _ => false,
        };
        // Counted by kind of flow and by mangle.
        for label in [
            format!("flow {}", flow.kind),
            format!("mangle {}", step.mangle.label()),
        ] {
            let entry = stats.entry(label).or_default();
            entry[0] += 1;
            entry[1] += usize::from(kv.forwarded());
            entry[2] += usize::from(!same);
        }
        forwarded += usize::from(kv.forwarded());
        if same {
            agree += 1;
            continue;
        }
        disagreements += 1;
        if disagreements > 40 {
            continue;
        }
        let verdict = |v: &Verdict| match v {
            Verdict::Forwarded(o, f) => format!(
                "forwarded out of the {} side: {}",
                side_name(o.side),
                describe(f)
            ),
            Verdict::Dropped(why) => format!("not forwarded ({why})"),
        };
        let _ = writeln!(
            report,
            "packet {id} (tag {}): flow {} {:?} from the {} side {}:{} > {}:{}, step {:?} {}",
            id + 1,
            flow_of[id],
            flow.kind,
            side_name(flow.from),
            flow.src,
            flow.sport,
            flow.dst,
            flow.dport,
            step.dir,
            step.mangle.label()
        );
        // The flow's packets so far, for context.
        for s in flow.steps.iter().take_while(|s| s.id < id) {
            let short = |v: &Verdict| match v {
                Verdict::Forwarded(o, _) => format!("out {}", side_name(o.side)),
                Verdict::Dropped(_) => "dropped".to_string(),
            };
            let _ = writeln!(
                report,
                "  before: packet {} {:?} {}: {} | kernel {}, engine {}",
                s.id,
                s.dir,
                s.mangle.label(),
                describe(&kernel_results[s.id].0.frame),
                short(&kernel_results[s.id].1),
                short(&engine_results[s.id].1)
            );
        }
        for (name, sent, v) in [("kernel", ks, kv), ("engine", es, ev)] {
            let _ = writeln!(
                report,
                "  {name}: sent on the {} side: {}\n    {}\n    {}",
                side_name(sent.side),
                describe(&sent.frame),
                hex(&sent.frame),
                verdict(v)
            );
        }
    }

    println!(
        "differential: {packets} packets in {} flows, {agree} agree ({:.3}%), {forwarded} forwarded \
         by the kernel, {} frames caught that were the firewall's own; kernel plane {:.2?}, all {:.2?}",
        flows.len(),
        100.0 * agree as f64 / packets as f64,
        kernel.foreign,
        kernel_time,
        started.elapsed()
    );
    println!("differential: left out by design: {EXCLUDED}");
    println!("differential: by kind of flow and by mangle: packets, forwarded, disagreements");
    for (label, [n, f, d]) in &stats {
        println!("  {label:26} {n:6} {f:6} {d:6}");
    }
    lab.down().expect("lab down");

    assert!(packets >= 10_000, "only {packets} packets generated");
    assert!(
        disagreements == 0,
        "{disagreements} of {packets} packets got different verdicts (seed {seed:#x}); the first:\n{report}"
    );
    // A stream that one plane passed or blocked wholesale would agree for nothing.
    assert!(
        forwarded * 5 > packets && (packets - forwarded) * 5 > packets,
        "{forwarded} of {packets} forwarded: the stream does not exercise both verdicts"
    );
}

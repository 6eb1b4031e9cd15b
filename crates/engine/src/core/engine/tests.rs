//! Frames driven through [`Engine::handle`], one test per path of the module doc: what comes
//! out (the action, the rewritten frame with verified checksums, the ARP frame) and what was
//! counted.

use super::*;
use crate::core::arp::{REACHABLE_MS, RETRY_MS};
use crate::core::packet::{Ip, Payload, L4};
use alloc::vec::Vec;
use smoltcp::wire::{
    ArpOperation, EthernetAddress, Icmpv4Packet, Ipv4Packet, TcpPacket, UdpPacket,
};

const LAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
const WAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
const HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x10]);
const GW_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
const WAN_HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x20]);
const OTHER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x77]);

const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const WAN_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SEC: u64 = 1000;

/// Egress web, ping and DNS; telnet denied; one port-forward to the LAN host, judged on its
/// inside address (the rule on the WAN address before it must not match it); masquerade.
const POLICY: &str = "
defaults: {default_action: deny, input_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: [80, 443]}
  - {id: no-telnet, action: deny, direction: egress, protocol: tcp, destination_port: 23}
  - {id: ping-out, action: accept, direction: egress, protocol: icmp}
  - {id: by-name, action: accept, direction: egress, destination_fqdn: [example.com], protocol: udp, destination_port: 5000}
  - {id: tunnel, action: accept, direction: egress, destination: 203.0.113.99}
  - {id: wan-addr, action: deny, direction: ingress, destination: 198.51.100.1, protocol: tcp, destination_port: 8080}
  - {id: forwarded-web, action: accept, direction: ingress, destination: 192.168.1.10, protocol: tcp, destination_port: 80}
  - {id: ssh-to-fw, action: deny, direction: input, protocol: tcp, destination_port: 22}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.1.0/24, masquerade: true}
  dnat:
    - {wan_ip: 198.51.100.1, wan_port: 8080, to: '192.168.1.10:80', proto: tcp}
";

fn rules(yaml: &str) -> Rules {
    match policy::parse_str(yaml, "test.yaml") {
        Ok(c) => Rules::compile(&c.policy, [5, 6]),
        Err(e) => panic!("{e}"),
    }
}

fn config(conntrack_capacity: usize, gateway: Option<Ipv4Addr>) -> Config {
    Config {
        lan: Interface {
            name: "lan0".into(),
            own: Own {
                mac: LAN_MAC,
                ip: LAN_IP,
                prefix_len: 24,
            },
        },
        wan: Interface {
            name: "wan0".into(),
            own: Own {
                mac: WAN_MAC,
                ip: WAN_IP,
                prefix_len: 24,
            },
        },
        gateway,
        conntrack_capacity,
        neighbour_capacity: 64,
        conntrack_key: [1, 2],
        neighbour_key: [3, 4],
    }
}

fn engine_with(yaml: &str, conntrack_capacity: usize) -> Engine {
    match Engine::new(rules(yaml), config(conntrack_capacity, Some(GATEWAY))) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

/// The engine with the LAN host, the gateway and the WAN host known as neighbours (each asked
/// for the engine's address, which is how the table learns).
fn engine() -> Engine {
    let mut e = engine_with(POLICY, 64);
    know_neighbours(&mut e, 0);
    e
}

fn know_neighbours(e: &mut Engine, now: u64) {
    for (side, mac, ip, ours) in [
        (Side::Lan, HOST_MAC, HOST, LAN_IP),
        (Side::Wan, GW_MAC, GATEWAY, WAN_IP),
        (Side::Wan, WAN_HOST_MAC, WAN_HOST, WAN_IP),
    ] {
        let mut f = arp(
            ArpOperation::Request,
            EthernetAddress::BROADCAST,
            mac,
            ip,
            ours,
        );
        let (action, _) = run(e, side, &mut f, now);
        assert_eq!(action, Action::Reply(side));
    }
}

fn run(e: &mut Engine, side: Side, frame: &mut [u8], now: u64) -> (Action, [u8; FRAME_LEN]) {
    let mut out = [0u8; FRAME_LEN];
    let action = e.handle(side, frame, now, &mut out);
    (action, out)
}

fn eth(dst: EthernetAddress, src: EthernetAddress, ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn arp(
    op: ArpOperation,
    dst: EthernetAddress,
    sender_mac: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut a = alloc::vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&u16::from(op).to_be_bytes());
    a.extend_from_slice(&sender_mac.0);
    a.extend_from_slice(&sender_ip.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target_ip.octets());
    eth(dst, sender_mac, 0x0806, &a)
}

/// An IPv4 packet around `l4` (whose checksum `fill` completes), in a frame to `dst_mac`.
fn ipv4(
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    proto: u8,
    ttl: u8,
    l4: &[u8],
) -> Vec<u8> {
    let total = 20 + l4.len();
    let mut p = alloc::vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(l4);
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    let mut f = eth(dst_mac, src_mac, 0x0800, &p);
    let (s, d) = (src.into(), dst.into());
    let l4 = &mut f[34..];
    match proto {
        proto::TCP => TcpPacket::new_unchecked(l4).fill_checksum(&s, &d),
        proto::UDP => UdpPacket::new_unchecked(l4).fill_checksum(&s, &d),
        proto::ICMP => Icmpv4Packet::new_unchecked(l4).fill_checksum(),
        _ => {}
    }
    f
}

fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    t
}

/// A TCP segment from (`src`, `sport`) to (`dst`, `dport`) sent to the engine's MAC on
/// `side` by that side's neighbour.
fn tcp(side: Side, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    tcp_ttl(side, src, dst, flags, 64)
}

fn tcp_ttl(side: Side, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, ttl: u8) -> Vec<u8> {
    let (to, from) = macs(side);
    let l4 = tcp_header(src.1, dst.1, flags);
    ipv4(to, from, (src.0, dst.0), proto::TCP, ttl, &l4)
}

fn udp(side: Side, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let (to, from) = macs(side);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&12u16.to_be_bytes());
    l4.extend_from_slice(&[0, 0, b'p', b'i', b'n', b'g']);
    ipv4(to, from, (src.0, dst.0), proto::UDP, 64, &l4)
}

fn echo(side: Side, src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
    let (to, from) = macs(side);
    let mut l4 = alloc::vec![ty, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&[0, 1, 0xde, 0xad, 0xbe, 0xef]);
    ipv4(to, from, (src, dst), proto::ICMP, 64, &l4)
}

/// (the engine's MAC on `side`, the neighbour that sends from there)
fn macs(side: Side) -> (EthernetAddress, EthernetAddress) {
    match side {
        Side::Lan => (LAN_MAC, HOST_MAC),
        Side::Wan => (WAN_MAC, GW_MAC),
    }
}

/// The frame as it left: its MACs, IP header and L4 checksums verified.
fn left(frame: &[u8]) -> (EthernetAddress, EthernetAddress, Ip) {
    let parsed = match parse(frame) {
        Ok(p) => p,
        Err(r) => panic!("the forwarded frame no longer parses: {r}"),
    };
    let Payload::Ip(ip) = parsed.payload else {
        panic!("not IP")
    };
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (ip.src, ip.dst) else {
        panic!("not IPv4")
    };
    let l4 = &frame[ip.offsets.l4..ip.offsets.end];
    let (s, d) = (src.into(), dst.into());
    let ok = match ip.proto {
        proto::TCP => TcpPacket::new_unchecked(l4).verify_checksum(&s, &d),
        proto::UDP => UdpPacket::new_unchecked(l4).verify_checksum(&s, &d),
        proto::ICMP => Icmpv4Packet::new_unchecked(l4).verify_checksum(),
        _ => true,
    };
    assert!(ok, "L4 checksum of {ip:?}");
    (parsed.dst_mac, parsed.src_mac, ip)
}

fn ports(ip: &Ip) -> (u16, u16) {
    match ip.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
        other => panic!("no ports: {other:?}"),
    }
}

fn count(e: &Engine, id: &str) -> u64 {
    match e.rule_count(id) {
        Some(c) => c.packets,
        None => panic!("no rule {id}"),
    }
}

#[test]
fn refused_frames_are_dropped_with_their_reason_before_any_lookup() {
    let mut e = engine();
    let good = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    let mut fragment = good.clone();
    fragment[20] = 0x20; // MF
    Ipv4Packet::new_unchecked(&mut fragment[14..]).fill_checksum();
    let mut damaged = good.clone();
    damaged[24] ^= 0xff; // the IPv4 header checksum
    let mut v6 = eth(LAN_MAC, HOST_MAC, 0x86dd, &[0x60, 0, 0, 0, 0, 0, 59, 64]);
    v6.extend_from_slice(&[0; 32]);
    let lldp = eth(LAN_MAC, HOST_MAC, 0x88cc, &[0; 46]);
    for (what, mut frame, reason) in [
        ("runt", good[..20].to_vec(), DropReason::MalformedPacket),
        ("damaged header", damaged, DropReason::MalformedPacket),
        ("fragment", fragment, DropReason::FragmentedIpv4),
        ("ipv6", v6, DropReason::Ipv6Unsupported),
        ("lldp", lldp, DropReason::NonIp),
    ] {
        let before = frame.clone();
        let (action, _) = run(&mut e, Side::Lan, &mut frame, SEC);
        assert_eq!(action, Action::Drop(reason), "{what}");
        assert_eq!(frame, before, "{what}: left as it came");
        assert_eq!(
            e.drops(reason),
            if what == "damaged header" { 2 } else { 1 }
        );
    }
    assert_eq!(e.conntrack_usage().0, 0);
    assert!(e.rule_counts().all(|r| r.count == Count::default()));
}

#[test]
fn arp_for_our_addresses_is_answered_on_its_side_and_nothing_else_is() {
    let mut e = engine_with(POLICY, 64);
    let mut ask = arp(
        ArpOperation::Request,
        EthernetAddress::BROADCAST,
        HOST_MAC,
        HOST,
        LAN_IP,
    );
    let (action, out) = run(&mut e, Side::Lan, &mut ask, 0);
    assert_eq!(action, Action::Reply(Side::Lan));
    let reply = parse(&out).expect("the reply parses");
    assert_eq!((reply.dst_mac, reply.src_mac), (HOST_MAC, LAN_MAC));
    let Payload::Arp(a) = reply.payload else {
        panic!("not ARP")
    };
    assert_eq!(
        (a.op, a.sender_ip, a.target_ip),
        (ArpOperation::Reply, LAN_IP, HOST)
    );

    // The WAN address is not answered on the LAN, nor another host's anywhere.
    for (side, target) in [(Side::Lan, WAN_IP), (Side::Wan, HOST)] {
        let mut f = arp(
            ArpOperation::Request,
            EthernetAddress::BROADCAST,
            OTHER_MAC,
            Ipv4Addr::new(192, 168, 1, 30),
            target,
        );
        assert_eq!(
            run(&mut e, side, &mut f, 0).0,
            Action::Discard(Discard::Arp)
        );
    }
    assert_eq!(e.totals().arp_replies, 1);
    assert_eq!(e.discards(Discard::Arp), 2);
}

#[test]
fn an_allowed_connection_is_masqueraded_and_its_replies_come_back() {
    let mut e = engine();
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    let (action, _) = run(&mut e, Side::Lan, &mut syn, SEC);
    assert_eq!(
        action,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    let (dst_mac, src_mac, ip) = left(&syn);
    assert_eq!(
        (dst_mac, src_mac),
        (GW_MAC, WAN_MAC),
        "to the gateway, from us"
    );
    assert_eq!(
        (ip.src, ip.dst, ip.ttl),
        (IpAddr::V4(WAN_IP), IpAddr::V4(REMOTE), 63)
    );
    let (ext, dport) = ports(&ip);
    assert!((16_384..=60_999).contains(&ext), "{ext}");
    assert_eq!(dport, 443);
    assert_eq!(
        e.rule_count("web"),
        Some(Count {
            packets: 1,
            bytes: 40
        })
    );

    let mut syn_ack = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), SYN | ACK);
    let (action, _) = run(&mut e, Side::Wan, &mut syn_ack, 2 * SEC);
    assert_eq!(
        action,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    let (dst_mac, src_mac, ip) = left(&syn_ack);
    assert_eq!((dst_mac, src_mac), (HOST_MAC, LAN_MAC));
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(REMOTE), IpAddr::V4(HOST)));
    assert_eq!(ports(&ip), (443, 40000));

    // The rest of the flow keeps its port and is not judged (or counted) again.
    let mut ack = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), ACK);
    assert_eq!(
        run(&mut e, Side::Lan, &mut ack, 3 * SEC).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    assert_eq!(ports(&left(&ack).2), (ext, 443));
    assert_eq!(count(&e, "web"), 1);
    let t = e.totals();
    assert_eq!((t.forwarded, t.snat, t.dnat), (3, 1, 0));
    assert_eq!(e.conntrack_usage(), (1, 64));

    // A reply to a port no flow holds is not part of any: new input to the engine itself.
    let mut stray = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext ^ 1), ACK);
    assert_eq!(
        run(&mut e, Side::Wan, &mut stray, 3 * SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
}

#[test]
fn tcp_flags_no_state_allows_are_dropped_even_on_an_accepted_flow() {
    let mut e = engine();
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut syn, SEC).0,
        Action::Forward { .. }
    ));
    let ext = ports(&left(&syn).2).0;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    const PSH: u8 = 0x08;
    const URG: u8 = 0x20;
    for (n, bad) in [0, FIN, PSH, SYN | FIN, SYN | RST, FIN | RST | ACK, 0x3f]
        .into_iter()
        .enumerate()
    {
        let mut out = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), bad);
        let before = out.clone();
        assert_eq!(
            run(&mut e, Side::Lan, &mut out, 2 * SEC).0,
            Action::Drop(DropReason::MalformedPacket),
            "{bad:#04x} out"
        );
        assert_eq!(out, before, "left as it came");
        let mut back = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), bad | URG);
        assert_eq!(
            run(&mut e, Side::Wan, &mut back, 2 * SEC).0,
            Action::Drop(DropReason::MalformedPacket),
            "{:#04x} back",
            bad | URG
        );
        assert_eq!(e.drops(DropReason::MalformedPacket), 2 * n as u64 + 2);
    }
    // The flow is where it was: its SYN-ACK and data still pass, PSH or not.
    for (side, flags) in [
        (Side::Wan, SYN | ACK),
        (Side::Lan, PSH | ACK),
        (Side::Wan, ACK | URG),
    ] {
        let mut f = match side {
            Side::Wan => tcp(side, (REMOTE, 443), (WAN_IP, ext), flags),
            Side::Lan => tcp(side, (HOST, 40000), (REMOTE, 443), flags),
        };
        assert!(
            matches!(run(&mut e, side, &mut f, 3 * SEC).0, Action::Forward { .. }),
            "{flags:#04x}"
        );
    }
    assert_eq!(count(&e, "web"), 1);
}

fn run_rx(e: &mut Engine, side: Side, frame: &mut [u8], checksum: L4Checksum, now: u64) -> Action {
    let mut out = [0u8; FRAME_LEN];
    e.handle_rx(side, frame, RxInfo { checksum }, now, &mut out)
}

/// Where the L4 checksum of a frame built here (IHL 5) is.
fn l4_sum_at(frame: &[u8]) -> usize {
    34 + match frame[23] {
        proto::TCP => 16,
        proto::UDP => 6,
        _ => 2,
    }
}

#[test]
fn a_wrong_l4_checksum_is_malformed_whatever_the_flow_unless_the_nic_verified_it() {
    let mut e = engine();
    let flip = |mut f: Vec<u8>| {
        let at = l4_sum_at(&f);
        f[at] ^= 0x40;
        f
    };
    // A first packet of each protocol with its checksum damaged: refused before any rule.
    let ping = echo(Side::Lan, HOST, REMOTE, 8, 7);
    let query = udp(Side::Lan, (HOST, 40001), (REMOTE, 5000));
    let syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    for (n, good) in [&syn, &query, &ping].into_iter().enumerate() {
        let mut bad = flip(good.clone());
        let before = bad.clone();
        assert_eq!(
            run(&mut e, Side::Lan, &mut bad, SEC).0,
            Action::Drop(DropReason::MalformedPacket),
            "protocol {}",
            good[23]
        );
        assert_eq!(bad, before, "left as it came");
        assert_eq!(e.drops(DropReason::MalformedPacket), n as u64 + 1);
    }
    assert!(e.rule_counts().all(|r| r.count == Count::default()));
    assert_eq!(e.conntrack_usage().0, 0);

    // Of an accepted flow: the damaged copy is refused, the flow goes on.
    let mut first = syn.clone();
    assert!(matches!(
        run(&mut e, Side::Lan, &mut first, SEC).0,
        Action::Forward { .. }
    ));
    let ext = ports(&left(&first).2).0;
    let syn_ack = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), SYN | ACK);
    let mut bad = flip(syn_ack.clone());
    assert_eq!(
        run(&mut e, Side::Wan, &mut bad, 2 * SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    let mut good = syn_ack.clone();
    assert!(matches!(
        run(&mut e, Side::Wan, &mut good, 2 * SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(e.drops(DropReason::MalformedPacket), 4);

    // To the engine itself, too: refused before the input rules.
    let mut ssh = flip(tcp(Side::Lan, (HOST, 40002), (LAN_IP, 22), SYN));
    assert_eq!(
        run(&mut e, Side::Lan, &mut ssh, 3 * SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    assert_eq!(count(&e, "ssh-to-fw"), 0);

    // What the NIC verified is not read again: the same damaged frame passes as it is.
    let mut trusted = flip(tcp(Side::Lan, (HOST, 40003), (REMOTE, 443), SYN));
    assert!(matches!(
        run_rx(
            &mut e,
            Side::Lan,
            &mut trusted,
            L4Checksum::Verified,
            3 * SEC
        ),
        Action::Forward { .. }
    ));
    assert_eq!(e.drops(DropReason::MalformedPacket), 5);
}

#[test]
fn udp_without_a_checksum_passes_and_stays_without_one() {
    let mut e = engine();
    let mut query = udp(Side::Lan, (HOST, 40001), (REMOTE, 5000));
    query[40..42].copy_from_slice(&[0, 0]);
    assert!(e.learn(3, IpAddr::V4(REMOTE), 10 * SEC));
    assert!(matches!(
        run(&mut e, Side::Lan, &mut query, SEC).0,
        Action::Forward { .. }
    ));
    let ip = left(&query).2;
    assert_eq!(ip.src, IpAddr::V4(WAN_IP), "masqueraded");
    assert_eq!(query[40..42], [0, 0], "no checksum made up");
}

#[test]
fn a_partial_checksum_is_completed_before_the_frame_is_rewritten() {
    let mut e = engine();
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    // As a veth peer leaves it: the folded sum of the pseudo-header only.
    let at = l4_sum_at(&syn);
    let mut pseudo: u32 = [HOST.octets(), REMOTE.octets()]
        .iter()
        .flat_map(|a| {
            [
                u16::from_be_bytes([a[0], a[1]]),
                u16::from_be_bytes([a[2], a[3]]),
            ]
        })
        .map(u32::from)
        .sum();
    pseudo += u32::from(proto::TCP) + 20;
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    syn[at..at + 2].copy_from_slice(&(pseudo as u16).to_be_bytes());
    let mut unverified = syn.clone();
    assert_eq!(
        run(&mut e, Side::Lan, &mut unverified, SEC).0,
        Action::Drop(DropReason::MalformedPacket),
        "a partial checksum is wrong as it stands"
    );
    assert!(matches!(
        run_rx(&mut e, Side::Lan, &mut syn, L4Checksum::Partial, SEC),
        Action::Forward { .. }
    ));
    // `left` verifies the translated frame's checksum.
    assert_eq!(left(&syn).2.src, IpAddr::V4(WAN_IP));
}

/// `frame` (IHL 5) with IPv4 options `opts` (a whole number of words) after its header.
fn with_options(mut frame: Vec<u8>, opts: &[u8]) -> Vec<u8> {
    let total = u16::from_be_bytes([frame[16], frame[17]]) + opts.len() as u16;
    frame.splice(34..34, opts.iter().copied());
    frame[14] = 0x40 | (5 + opts.len() / 4) as u8;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    Ipv4Packet::new_unchecked(&mut frame[14..34 + opts.len()]).fill_checksum();
    frame
}

const LSRR: [u8; 8] = [131, 7, 4, 10, 0, 0, 1, 0];
const RECORD_ROUTE: [u8; 12] = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn source_routes_and_malformed_options_are_refused_as_the_kernel_refuses_them() {
    let mut e = engine();
    // A first packet: refused before any rule, no flow.
    let cipso = [134, 8, 0, 0, 0, 1, 0, 0];
    let bad_length = [7, 13, 4, 0, 0, 0, 0, 0];
    for (n, opts) in [&LSRR[..], &cipso, &bad_length].into_iter().enumerate() {
        let mut syn = with_options(tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN), opts);
        assert_eq!(
            run(&mut e, Side::Lan, &mut syn, SEC).0,
            Action::Drop(DropReason::MalformedPacket),
            "{opts:?}"
        );
        assert_eq!(e.drops(DropReason::MalformedPacket), n as u64 + 1);
    }
    assert_eq!((count(&e, "web"), e.conntrack_usage().0), (0, 0));
    // To the engine itself too.
    let mut ssh = with_options(tcp(Side::Lan, (HOST, 40001), (LAN_IP, 22), SYN), &LSRR);
    assert_eq!(
        run(&mut e, Side::Lan, &mut ssh, SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    assert_eq!(count(&e, "ssh-to-fw"), 0);

    // Of a known flow: refused, and the flow goes on.
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut syn, SEC).0,
        Action::Forward { .. }
    ));
    let ext = ports(&left(&syn).2).0;
    let syn_ack = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), SYN | ACK);
    let mut routed = with_options(syn_ack.clone(), &LSRR);
    assert_eq!(
        run(&mut e, Side::Wan, &mut routed, 2 * SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    let mut plain = syn_ack;
    assert!(matches!(
        run(&mut e, Side::Wan, &mut plain, 2 * SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(e.drops(DropReason::MalformedPacket), 5);
}

#[test]
fn a_forwarded_packet_records_the_address_it_leaves_from() {
    let mut e = engine();
    let mut syn = with_options(
        tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN),
        &RECORD_ROUTE,
    );
    assert!(matches!(
        run(&mut e, Side::Lan, &mut syn, SEC).0,
        Action::Forward { .. }
    ));
    // `left` parses it, so the header checksum verifies after both rewrites.
    let ip = left(&syn).2;
    assert_eq!((ip.src, ip.ttl), (IpAddr::V4(WAN_IP), 63));
    let opts = &syn[34..46];
    assert_eq!(opts[..3], [7, 11, 8], "the pointer moved on");
    assert_eq!(opts[3..7], WAN_IP.octets());
    assert_eq!(opts[7..], [0; 5]);
    // The reply records the LAN side's address, in the next slot of its own option.
    let ext = ports(&ip).0;
    let mut back = with_options(
        tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), SYN | ACK),
        &[7, 11, 8, 9, 9, 9, 9, 0, 0, 0, 0, 0],
    );
    assert!(matches!(
        run(&mut e, Side::Wan, &mut back, SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(left(&back).2.dst, IpAddr::V4(HOST));
    assert_eq!(back[34..46], [7, 11, 12, 9, 9, 9, 9, 192, 168, 1, 1, 0]);
    // Full, it is left alone.
    let full = [7, 7, 8, 9, 9, 9, 9, 0];
    let mut ack = with_options(tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), ACK), &full);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut ack, SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(ack[34..42], full);
}

#[test]
fn a_flow_meeting_its_masqueraded_reverse_gets_another_source_port() {
    let mut e = engine();
    // The LAN host opens HOST:80 → WAN_HOST:443, masqueraded.
    let mut out = tcp(Side::Lan, (HOST, 80), (WAN_HOST, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut out, SEC).0,
        Action::Forward { .. }
    ));
    // WAN_HOST:443 → HOST:80 is not part of it (its reply tuple is WAN_HOST:443 → WAN_IP)
    // but would take its original tuple as its reply tuple: the kernel gives it another
    // source port, below 512 as 443 is, and so does the engine.
    let mut back = tcp(Side::Wan, (WAN_HOST, 443), (HOST, 80), SYN);
    assert_eq!(
        run(&mut e, Side::Wan, &mut back, SEC).0,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    let ip = left(&back).2;
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(WAN_HOST), IpAddr::V4(HOST)));
    let (sport, dport) = ports(&ip);
    assert!((1..=511).contains(&sport) && sport != 443, "{sport}");
    assert_eq!(dport, 80);
    assert_eq!(count(&e, "forwarded-web"), 1);
    assert_eq!(e.conntrack_usage().0, 2);
    // The LAN host's answer to it goes back to the port it came from.
    let mut answer = tcp(Side::Lan, (HOST, 80), (WAN_HOST, sport), SYN | ACK);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut answer, 2 * SEC).0,
        Action::Forward { out: Side::Wan, .. }
    ));
    let ip = left(&answer).2;
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(HOST), IpAddr::V4(WAN_HOST)));
    assert_eq!(ports(&ip), (80, 443));
    assert_eq!(e.discards(Discard::Clash), 0);
}

#[test]
fn an_unresolved_next_hop_is_asked_for_and_the_retransmission_passes() {
    let mut e = engine_with(POLICY, 64);
    let mut learn_host = arp(
        ArpOperation::Request,
        EthernetAddress::BROADCAST,
        HOST_MAC,
        HOST,
        LAN_IP,
    );
    let _ = run(&mut e, Side::Lan, &mut learn_host, 0);
    let syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);

    let (action, out) = run(&mut e, Side::Lan, &mut syn.clone(), SEC);
    assert_eq!(action, Action::Reply(Side::Wan));
    let request = parse(&out).expect("the request parses");
    assert_eq!(
        (request.dst_mac, request.src_mac),
        (EthernetAddress::BROADCAST, WAN_MAC)
    );
    let Payload::Arp(a) = request.payload else {
        panic!("not ARP")
    };
    assert_eq!(
        (a.op, a.sender_ip, a.target_ip),
        (ArpOperation::Request, WAN_IP, GATEWAY)
    );
    assert_eq!(e.discards(Discard::Unresolved), 1);
    // Asked a moment ago: dropped without asking again.
    assert_eq!(
        run(&mut e, Side::Lan, &mut syn.clone(), SEC + 1).0,
        Action::Discard(Discard::Unresolved)
    );

    let mut answer = arp(ArpOperation::Reply, WAN_MAC, GW_MAC, GATEWAY, WAN_IP);
    assert_eq!(
        run(&mut e, Side::Wan, &mut answer, SEC + 2).0,
        Action::Discard(Discard::Arp)
    );
    let mut again = syn.clone();
    assert_eq!(
        run(&mut e, Side::Lan, &mut again, SEC + 3).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    assert_eq!(left(&again).0, GW_MAC);
    // The flow opened with the first SYN: the filter judged it once.
    assert_eq!(count(&e, "web"), 1);
    assert_eq!(e.totals().arp_requests, 1);
}

#[test]
fn a_stale_neighbour_is_used_while_it_is_confirmed_again() {
    let mut e = engine();
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    let (action, out) = run(&mut e, Side::Lan, &mut syn, REACHABLE_MS);
    assert_eq!(
        action,
        Action::Forward {
            out: Side::Wan,
            ask: true
        }
    );
    assert_eq!(left(&syn).0, GW_MAC);
    let request = parse(&out).expect("the request parses");
    assert_eq!(
        (request.dst_mac, request.src_mac),
        (GW_MAC, WAN_MAC),
        "unicast"
    );
    let mut next = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut next, REACHABLE_MS + RETRY_MS - 1).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
}

#[test]
fn a_denied_port_and_unsolicited_ingress_are_dropped_and_counted() {
    let mut e = engine();
    let mut telnet = tcp(Side::Lan, (HOST, 40001), (REMOTE, 23), SYN);
    let before = telnet.clone();
    assert_eq!(
        run(&mut e, Side::Lan, &mut telnet, SEC).0,
        Action::Drop(DropReason::ExplicitDeny)
    );
    assert_eq!(telnet, before);
    assert_eq!(
        e.rule_count("no-telnet"),
        Some(Count {
            packets: 1,
            bytes: 40
        })
    );

    let mut unsolicited = tcp(Side::Wan, (REMOTE, 5555), (HOST, 22), SYN);
    assert_eq!(
        run(&mut e, Side::Wan, &mut unsolicited, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    assert_eq!(count(&e, "default-deny"), 1);
    // A SYN-ACK nothing asked for cannot start a flow: invalid, before any rule.
    let mut syn_ack = tcp(Side::Wan, (REMOTE, 443), (HOST, 40000), SYN | ACK);
    assert_eq!(
        run(&mut e, Side::Wan, &mut syn_ack, SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    assert_eq!(count(&e, "default-deny"), 1);
    assert_eq!(
        (
            e.drops(DropReason::ExplicitDeny),
            e.drops(DropReason::NoMatchingAllowRule),
            e.drops(DropReason::MalformedPacket)
        ),
        (1, 1, 1)
    );
    assert_eq!(e.conntrack_usage().0, 0);
}

#[test]
fn a_port_forward_reaches_the_lan_host_judged_on_its_inside_address() {
    let mut e = engine();
    let wan_host = |frame: &mut Vec<u8>| frame[6..12].copy_from_slice(&WAN_HOST_MAC.0);
    let mut syn = tcp(Side::Wan, (WAN_HOST, 5555), (WAN_IP, 8080), SYN);
    wan_host(&mut syn);
    assert_eq!(
        run(&mut e, Side::Wan, &mut syn, SEC).0,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    let (dst_mac, _, ip) = left(&syn);
    assert_eq!(dst_mac, HOST_MAC);
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(WAN_HOST), IpAddr::V4(HOST)));
    assert_eq!(ports(&ip), (5555, 80));
    assert_eq!((count(&e, "forwarded-web"), count(&e, "wan-addr")), (1, 0));

    let mut reply = tcp(Side::Lan, (HOST, 80), (WAN_HOST, 5555), SYN | ACK);
    assert_eq!(
        run(&mut e, Side::Lan, &mut reply, 2 * SEC).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    let (dst_mac, _, ip) = left(&reply);
    assert_eq!(dst_mac, WAN_HOST_MAC, "on-link: straight to the WAN host");
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(WAN_IP), IpAddr::V4(WAN_HOST)));
    assert_eq!(ports(&ip), (8080, 5555));
    let t = e.totals();
    assert_eq!((t.snat, t.dnat), (0, 1));
}

#[test]
fn ping_through_translates_the_echo_id() {
    let mut e = engine();
    let mut request = echo(Side::Lan, HOST, REMOTE, 8, 0x1234);
    assert_eq!(
        run(&mut e, Side::Lan, &mut request, SEC).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    let (_, _, ip) = left(&request);
    assert_eq!(ip.src, IpAddr::V4(WAN_IP));
    let L4::Icmp {
        echo_id: Some(id), ..
    } = ip.l4
    else {
        panic!("not an echo: {ip:?}")
    };
    assert!((16_384..=60_999).contains(&id), "{id}");

    let mut reply = echo(Side::Wan, REMOTE, WAN_IP, 0, id);
    assert_eq!(
        run(&mut e, Side::Wan, &mut reply, 2 * SEC).0,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    let (dst_mac, _, ip) = left(&reply);
    assert_eq!((dst_mac, ip.dst), (HOST_MAC, IpAddr::V4(HOST)));
    assert!(matches!(
        ip.l4,
        L4::Icmp {
            ty: 0,
            echo_id: Some(0x1234),
            ..
        }
    ));
    assert_eq!(count(&e, "ping-out"), 1);
}

#[test]
fn traffic_to_the_engine_itself_is_input_and_nothing_answers_it() {
    let mut e = engine();
    let mut ssh = tcp(Side::Lan, (HOST, 40000), (LAN_IP, 22), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut ssh, SEC).0,
        Action::Drop(DropReason::ExplicitDeny)
    );
    assert_eq!(count(&e, "ssh-to-fw"), 1);
    let mut http = tcp(Side::Lan, (HOST, 40000), (LAN_IP, 80), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut http, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    // The WAN address from the LAN side is the engine's too.
    let mut across = tcp(Side::Lan, (HOST, 40000), (WAN_IP, 80), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut across, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    assert_eq!(count(&e, "default-deny"), 2);
    // ICMP essentials accept a ping under input deny, and no rule counts it; nothing replies.
    let mut ping = echo(Side::Lan, HOST, LAN_IP, 8, 7);
    let before = ping.clone();
    assert_eq!(
        run(&mut e, Side::Lan, &mut ping, SEC).0,
        Action::Discard(Discard::Local)
    );
    assert_eq!(ping, before);
    assert_eq!(count(&e, "default-deny"), 2);
    assert_eq!(e.conntrack_usage().0, 0, "input opens no flow");

    let mut open = engine_with(
        "defaults: {input_action: accept, icmp_essentials: false}\nrules: []\n",
        64,
    );
    let mut http = tcp(Side::Lan, (HOST, 40000), (LAN_IP, 80), SYN);
    assert_eq!(
        run(&mut open, Side::Lan, &mut http, SEC).0,
        Action::Discard(Discard::Local)
    );
    let mut ping = echo(Side::Wan, REMOTE, WAN_IP, 8, 7);
    assert_eq!(
        run(&mut open, Side::Wan, &mut ping, SEC).0,
        Action::Discard(Discard::Local)
    );
    assert_eq!(count(&open, "default-accept"), 2);
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_the_old() {
    let mut e = engine_with(POLICY, 1);
    know_neighbours(&mut e, 0);
    let mut first = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut first, SEC).0,
        Action::Forward { .. }
    ));
    let mut second = tcp(Side::Lan, (HOST, 40001), (REMOTE, 443), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut second, SEC).0,
        Action::Drop(DropReason::ConntrackFull)
    );
    let mut again = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut again, 2 * SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(e.drops(DropReason::ConntrackFull), 1);
    // Once the first flow expires and is swept, there is room again.
    assert_eq!(e.sweep(2 * SEC + 30 * SEC, 16), 1);
    let mut second = tcp(Side::Lan, (HOST, 40001), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut second, 33 * SEC).0,
        Action::Forward { .. }
    ));
}

#[test]
fn an_exhausted_port_pool_refuses_new_flows() {
    let one_port = "
rules:
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: 443}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.1.0/24, external_ip: 198.51.100.1,
       port_range: {min: 20000, max: 20000}}
";
    let mut e = engine_with(one_port, 64);
    know_neighbours(&mut e, 0);
    let mut first = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut first, SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(ports(&left(&first).2), (20000, 443));
    let mut second = tcp(Side::Lan, (HOST, 40001), (REMOTE, 443), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut second, SEC).0,
        Action::Drop(DropReason::NatPortPoolExhausted)
    );
    // Another remote endpoint has its own use of the port.
    let mut elsewhere = tcp(
        Side::Lan,
        (HOST, 40001),
        (Ipv4Addr::new(203, 0, 113, 6), 443),
        SYN,
    );
    assert!(matches!(
        run(&mut e, Side::Lan, &mut elsewhere, SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(e.drops(DropReason::NatPortPoolExhausted), 1);
    assert_eq!(e.conntrack_usage().0, 2);
}

#[test]
fn an_expiring_ttl_is_not_forwarded() {
    let mut e = engine();
    let mut syn = tcp_ttl(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN, 1);
    assert_eq!(
        run(&mut e, Side::Lan, &mut syn, SEC).0,
        Action::Discard(Discard::TtlExceeded)
    );
    // Judged by no rule, and no flow opened: the kernel never confirms its connection.
    assert_eq!(count(&e, "web"), 0);
    assert_eq!(e.conntrack_usage().0, 0);
    let mut two = tcp_ttl(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN, 2);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut two, SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(left(&two).2.ttl, 1);
}

#[test]
fn a_reply_to_a_packet_whose_ttl_ran_out_is_not_part_of_a_flow() {
    let mut e = engine();
    // A port-forwarded SYN that expires at the engine, then the answer it would have had.
    let mut syn = tcp_ttl(Side::Wan, (WAN_HOST, 50000), (WAN_IP, 8080), SYN, 1);
    assert_eq!(
        run(&mut e, Side::Wan, &mut syn, SEC).0,
        Action::Discard(Discard::TtlExceeded)
    );
    let mut syn_ack = tcp(Side::Lan, (HOST, 80), (WAN_HOST, 50000), SYN | ACK);
    assert_eq!(
        run(&mut e, Side::Lan, &mut syn_ack, SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    assert_eq!((count(&e, "forwarded-web"), e.totals().dnat), (0, 0));
    // An established flow's packet that expires leaves the flow as it was.
    let mut syn = tcp(Side::Wan, (WAN_HOST, 50000), (WAN_IP, 8080), SYN);
    assert!(matches!(
        run(&mut e, Side::Wan, &mut syn, 2 * SEC).0,
        Action::Forward { .. }
    ));
    let mut late = tcp_ttl(Side::Wan, (WAN_HOST, 50000), (WAN_IP, 8080), ACK, 1);
    assert_eq!(
        run(&mut e, Side::Wan, &mut late, 2 * SEC).0,
        Action::Discard(Discard::TtlExceeded)
    );
    let mut syn_ack = tcp(Side::Lan, (HOST, 80), (WAN_HOST, 50000), SYN | ACK);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut syn_ack, 2 * SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(count(&e, "forwarded-web"), 1);
}

#[test]
fn frames_for_others_and_martians_go_no_further() {
    let mut e = engine();
    let mut other = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    other[..6].copy_from_slice(&OTHER_MAC.0);
    let mut broadcast = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    broadcast[..6].copy_from_slice(&EthernetAddress::BROADCAST.0);
    for mut f in [other, broadcast] {
        assert_eq!(
            run(&mut e, Side::Lan, &mut f, SEC).0,
            Action::Discard(Discard::NotForUs)
        );
    }
    for (side, src) in [
        (Side::Wan, HOST),
        (Side::Lan, WAN_HOST),
        (Side::Lan, LAN_IP),
        (Side::Wan, WAN_IP),
        // What the kernel refuses as a source on any interface.
        (Side::Lan, Ipv4Addr::UNSPECIFIED),
        (Side::Lan, Ipv4Addr::LOCALHOST),
        (Side::Wan, Ipv4Addr::new(127, 9, 9, 9)),
        (Side::Wan, Ipv4Addr::new(224, 0, 0, 1)),
        (Side::Lan, Ipv4Addr::BROADCAST),
    ] {
        let dst = if side == Side::Lan { REMOTE } else { HOST };
        let mut f = tcp(side, (src, 40000), (dst, 80), SYN);
        assert_eq!(
            run(&mut e, side, &mut f, SEC).0,
            Action::Discard(Discard::Martian),
            "{src} on {side:?}"
        );
    }
    assert!(e.rule_counts().all(|r| r.count.packets == 0));
    // The rest of 0.0.0.0/8 is unicast to Linux (since 5.3): judged and forwarded.
    let mut f = tcp(
        Side::Lan,
        (Ipv4Addr::new(0, 1, 2, 3), 40000),
        (REMOTE, 443),
        SYN,
    );
    assert!(matches!(
        run(&mut e, Side::Lan, &mut f, SEC).0,
        Action::Forward { out: Side::Wan, .. }
    ));
}

#[test]
fn destinations_without_a_route_are_not_forwarded() {
    let mut e = engine();
    let cases = [
        // The LAN's broadcast, another LAN host (back out of the LAN), and off-link
        // destinations from the WAN (back out of the WAN, via the gateway).
        (Side::Lan, Ipv4Addr::new(192, 168, 1, 255)),
        (Side::Lan, Ipv4Addr::new(192, 168, 1, 20)),
        (Side::Wan, REMOTE),
        (Side::Wan, WAN_HOST),
        // Never a destination: loopback, multicast, broadcast.
        (Side::Lan, Ipv4Addr::new(127, 0, 0, 1)),
        (Side::Lan, Ipv4Addr::new(239, 1, 2, 3)),
        (Side::Wan, Ipv4Addr::BROADCAST),
    ];
    for (side, dst) in cases {
        let src = if side == Side::Lan { HOST } else { REMOTE };
        let mut f = tcp(side, (src, 40000), (dst, 443), SYN);
        assert_eq!(
            run(&mut e, side, &mut f, SEC).0,
            Action::Discard(Discard::NoRoute),
            "{dst} from {side:?}"
        );
    }
    // Without a gateway, only the links are reachable.
    let mut isolated = match Engine::new(rules(POLICY), config(64, None)) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    know_neighbours(&mut isolated, 0);
    let mut f = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert_eq!(
        run(&mut isolated, Side::Lan, &mut f, SEC).0,
        Action::Discard(Discard::NoRoute)
    );
    let mut f = tcp(Side::Lan, (HOST, 40000), (WAN_HOST, 443), SYN);
    assert!(matches!(
        run(&mut isolated, Side::Lan, &mut f, SEC).0,
        Action::Forward { out: Side::Wan, .. }
    ));
    assert_eq!(left(&f).0, WAN_HOST_MAC);
}

#[test]
fn other_protocols_are_tracked_and_masqueraded_by_address() {
    let mut e = engine();
    let tunnel = Ipv4Addr::new(203, 0, 113, 99);
    let (to, from) = macs(Side::Lan);
    // ESP: the first packet is judged and opens a flow, masqueraded; the next is not judged.
    for _ in 1..=2 {
        let mut esp = ipv4(to, from, (HOST, tunnel), 50, 64, &[0xee; 16]);
        assert!(matches!(
            run(&mut e, Side::Lan, &mut esp, SEC).0,
            Action::Forward { out: Side::Wan, .. }
        ));
        let ip = left(&esp).2;
        assert_eq!((ip.src, ip.dst), (IpAddr::V4(WAN_IP), IpAddr::V4(tunnel)));
        assert_eq!(esp[34..], [0xee; 16], "the payload as it was");
        assert_eq!(count(&e, "tunnel"), 1);
    }
    assert_eq!((e.totals().snat, e.conntrack_usage().0), (1, 1));
    // Its replies come back to the LAN host.
    let (wto, wfrom) = macs(Side::Wan);
    let mut back = ipv4(wto, wfrom, (tunnel, WAN_IP), 50, 64, &[0xbb; 16]);
    assert!(matches!(
        run(&mut e, Side::Wan, &mut back, 2 * SEC).0,
        Action::Forward { out: Side::Lan, .. }
    ));
    let ip = left(&back).2;
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(tunnel), IpAddr::V4(HOST)));
    // A second LAN host's ESP to the same address would take the same reply tuple: accepted
    // by the rule, then refused, as the kernel drops it when confirming the connection.
    let other = Ipv4Addr::new(192, 168, 1, 11);
    let mut esp = ipv4(to, from, (other, tunnel), 50, 64, &[0xee; 16]);
    assert_eq!(
        run(&mut e, Side::Lan, &mut esp, 2 * SEC).0,
        Action::Discard(Discard::Clash)
    );
    assert_eq!(count(&e, "tunnel"), 2);
    // Another protocol to the same address is another flow; one no rule allows is dropped.
    let mut ah = ipv4(to, from, (other, tunnel), 51, 64, &[0; 12]);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut ah, 2 * SEC).0,
        Action::Forward { .. }
    ));
    let mut esp = ipv4(to, from, (HOST, REMOTE), 50, 64, &[0; 8]);
    assert_eq!(
        run(&mut e, Side::Lan, &mut esp, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    assert_eq!(e.conntrack_usage().0, 2);
    // Unsolicited from the WAN, to the masquerade address: input, denied.
    let mut stray = ipv4(wto, wfrom, (REMOTE, WAN_IP), 50, 64, &[0; 8]);
    assert_eq!(
        run(&mut e, Side::Wan, &mut stray, 2 * SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
}

#[test]
fn gre_is_translated_only_where_the_kernel_translates_it() {
    let mut e = engine();
    let tunnel = Ipv4Addr::new(203, 0, 113, 99);
    let (to, from) = macs(Side::Lan);
    let (wto, wfrom) = macs(Side::Wan);
    const V0: [u8; 8] = [0x00, 0x00, 0x08, 0x00, 1, 2, 3, 4];
    // Shorter than 8 bytes, it cannot be masqueraded: dropped, and no flow opens.
    let mut short = ipv4(to, from, (HOST, tunnel), proto::GRE, 64, &V0[..4]);
    assert_eq!(
        run(&mut e, Side::Lan, &mut short, SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    assert_eq!(e.conntrack_usage().0, 0);
    let mut gre = ipv4(to, from, (HOST, tunnel), proto::GRE, 64, &V0);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut gre, SEC).0,
        Action::Forward { out: Side::Wan, .. }
    ));
    assert_eq!(left(&gre).2.src, IpAddr::V4(WAN_IP));
    // Back: GRE of a version the kernel's NAT does not know is not translated back.
    let mut v2 = V0;
    v2[1] = 2;
    let mut back = ipv4(wto, wfrom, (tunnel, WAN_IP), proto::GRE, 64, &v2);
    assert_eq!(
        run(&mut e, Side::Wan, &mut back, 2 * SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
    let mut back = ipv4(wto, wfrom, (tunnel, WAN_IP), proto::GRE, 64, &V0);
    assert!(matches!(
        run(&mut e, Side::Wan, &mut back, 2 * SEC).0,
        Action::Forward { out: Side::Lan, .. }
    ));
    assert_eq!(left(&back).2.dst, IpAddr::V4(HOST));
    // PPTP's call id is part of the flow: another call is another flow, and a reply with a
    // call id of its own is not part of it (no PPTP helper maps the two).
    let pptp = |call: u16| {
        let mut h = alloc::vec![0x30, 0x81, 0x88, 0x0b, 0, 0];
        h.extend_from_slice(&call.to_be_bytes());
        h
    };
    let mut call = ipv4(to, from, (HOST, tunnel), proto::GRE, 64, &pptp(0x1234));
    assert!(matches!(
        run(&mut e, Side::Lan, &mut call, 3 * SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(e.conntrack_usage().0, 2);
    let mut answer = ipv4(wto, wfrom, (tunnel, WAN_IP), proto::GRE, 64, &pptp(0x4321));
    assert_eq!(
        run(&mut e, Side::Wan, &mut answer, 3 * SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    // Untranslated, a short GRE packet passes: WAN to LAN host, no NAT on the way.
    let mut e = engine_with(
        "
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: gre-in, action: accept, direction: ingress, destination: 192.168.1.10}
",
        64,
    );
    know_neighbours(&mut e, 0);
    let mut short = ipv4(wto, wfrom, (tunnel, HOST), proto::GRE, 64, &V0[..2]);
    assert!(matches!(
        run(&mut e, Side::Wan, &mut short, SEC).0,
        Action::Forward { out: Side::Lan, .. }
    ));
}

#[test]
fn learned_addresses_open_name_rules_until_they_expire() {
    let mut e = engine();
    let server = Ipv4Addr::new(203, 0, 113, 50);
    let mut q = udp(Side::Lan, (HOST, 7000), (server, 5000));
    assert_eq!(
        run(&mut e, Side::Lan, &mut q, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    assert!(
        !e.learn(0, IpAddr::V4(server), 10 * SEC),
        "web is no name rule"
    );
    assert!(e.learn(3, IpAddr::V4(server), 10 * SEC));
    let mut q = udp(Side::Lan, (HOST, 7000), (server, 5000));
    assert!(matches!(
        run(&mut e, Side::Lan, &mut q, 2 * SEC).0,
        Action::Forward { .. }
    ));
    assert_eq!(count(&e, "by-name"), 1);
    // The flow outlives the name's TTL (SPEC §3); a new flow does not.
    let mut q = udp(Side::Lan, (HOST, 7000), (server, 5000));
    assert!(matches!(
        run(&mut e, Side::Lan, &mut q, 11 * SEC).0,
        Action::Forward { .. }
    ));
    let mut other = udp(Side::Lan, (HOST, 7001), (server, 5000));
    assert_eq!(
        run(&mut e, Side::Lan, &mut other, 11 * SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    e.forget(3, IpAddr::V4(server));
}

#[test]
fn a_reload_keeps_accepted_flows_and_judges_new_ones_by_the_new_rules() {
    let mut e = engine();
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut syn, SEC).0,
        Action::Forward { .. }
    ));
    let ext = ports(&left(&syn).2).0;
    e.reload(rules(
        "interfaces: {lan: [lan0], wan: [wan0]}\nrules: []\nnat:\n  snat:\n    - {out_interface: wan0, source: 192.168.1.0/24, masquerade: true}\n",
    ));
    assert_eq!(e.rule_counts().count(), 2, "the defaults only");
    let mut syn_ack = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), SYN | ACK);
    assert!(matches!(
        run(&mut e, Side::Wan, &mut syn_ack, 2 * SEC).0,
        Action::Forward { out: Side::Lan, .. }
    ));
    let mut new = tcp(Side::Lan, (HOST, 40001), (REMOTE, 443), SYN);
    assert_eq!(
        run(&mut e, Side::Lan, &mut new, 2 * SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
}

#[test]
fn rule_counts_list_every_rule_in_order_then_the_defaults() {
    let e = engine();
    let ids: Vec<(&str, filter::Action)> = e.rule_counts().map(|r| (r.id, r.action)).collect();
    use filter::Action::{Accept, Deny};
    assert_eq!(
        ids,
        [
            ("web", Accept),
            ("no-telnet", Deny),
            ("ping-out", Accept),
            ("by-name", Accept),
            ("tunnel", Accept),
            ("wan-addr", Deny),
            ("forwarded-web", Accept),
            ("ssh-to-fw", Deny),
            ("default-accept", Accept),
            ("default-deny", Deny),
        ]
    );
    assert_eq!(e.rule_count("nope"), None);
}

#[test]
fn configurations_that_cannot_route_are_refused() {
    let bad_gateway = config(64, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(
        Engine::new(rules(POLICY), bad_gateway).err(),
        Some(ConfigError::GatewayOffLink(Ipv4Addr::new(10, 0, 0, 1)))
    );
    let mut overlap = config(64, None);
    overlap.wan.own.ip = Ipv4Addr::new(192, 168, 0, 1);
    overlap.wan.own.prefix_len = 16;
    assert_eq!(
        Engine::new(rules(POLICY), overlap).err(),
        Some(ConfigError::OverlappingSubnets)
    );
    let mut same = config(64, None);
    same.wan.name = "lan0".into();
    assert_eq!(
        Engine::new(rules(POLICY), same).err(),
        Some(ConfigError::SameInterface)
    );
}

/// Denies by default in every direction; the host may send NTP and HTTPS.
const DNS_POLICY: &str = "
defaults: {default_action: deny, input_action: deny, output_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: ntp-out, action: accept, direction: output, protocol: udp, destination_port: 123}
  - {id: https-out, action: accept, direction: output, protocol: tcp, destination_port: 443}
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: 443}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.1.0/24, masquerade: true}
";

/// An engine with a DNS proxy on its host stack, asking the WAN host.
fn engine_with_proxy(intercept: bool) -> Engine {
    let mut r = rules(DNS_POLICY);
    r.dns = Some(DnsProxy {
        port: 53,
        upstreams: alloc::vec![SocketAddr::new(IpAddr::V4(WAN_HOST), 53)],
        intercept,
    });
    let mut e = match Engine::new(r, config(64, Some(GATEWAY))) {
        Ok(e) => e,
        Err(err) => panic!("{err}"),
    };
    know_neighbours(&mut e, 0);
    e
}

/// A packet as the driver hands it over from the host stack: behind an Ethernet header with
/// no MACs.
fn from_host(mut frame: Vec<u8>) -> Vec<u8> {
    frame[..12].fill(0);
    frame
}

fn run_host(e: &mut Engine, frame: &mut [u8], now: u64) -> (Action, [u8; FRAME_LEN]) {
    let mut out = [0u8; FRAME_LEN];
    let action = e.handle_host(frame, now, &mut out);
    (action, out)
}

/// The IP packet of a frame, parsed, with its checksums verified.
fn delivered(frame: &[u8], action: Action) -> Ip {
    let Action::Deliver { l3, end } = action else {
        panic!("not delivered: {action:?}");
    };
    assert_eq!((l3, end), (14, frame.len()), "the whole packet");
    left(frame).2
}

#[test]
fn queries_to_the_proxy_reach_the_host_and_its_answers_go_back_as_they_were_sent() {
    let mut e = engine_with_proxy(false);
    // UDP and TCP from the LAN side, to the engine's LAN address, port 53: no rule asked.
    let mut q = udp(Side::Lan, (HOST, 40000), (LAN_IP, 53));
    let sent = q.clone();
    let (action, _) = run(&mut e, Side::Lan, &mut q, SEC);
    let ip = delivered(&q, action);
    assert_eq!(q, sent, "handed over as it came");
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(HOST), IpAddr::V4(LAN_IP)));
    let mut syn = tcp(Side::Lan, (HOST, 40001), (LAN_IP, 53), SYN);
    let (action, _) = run(&mut e, Side::Lan, &mut syn, SEC);
    delivered(&syn, action);

    // The answer leaves on the LAN as the host wrote it: to the client's MAC, TTL kept.
    let mut a = from_host(udp(Side::Lan, (LAN_IP, 53), (HOST, 40000)));
    let (action, _) = run_host(&mut e, &mut a, SEC);
    assert_eq!(
        action,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    let (dst_mac, src_mac, ip) = left(&a);
    assert_eq!((dst_mac, src_mac, ip.ttl), (HOST_MAC, LAN_MAC, 64));
    assert_eq!(ports(&ip), (53, 40000));
    let mut syn_ack = from_host(tcp(Side::Lan, (LAN_IP, 53), (HOST, 40001), SYN | ACK));
    assert_eq!(
        run_host(&mut e, &mut syn_ack, SEC).0,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    // The rest of the TCP conversation follows the flow.
    let mut ack = tcp(Side::Lan, (HOST, 40001), (LAN_IP, 53), ACK);
    let (action, _) = run(&mut e, Side::Lan, &mut ack, SEC);
    delivered(&ack, action);
    let t = e.totals();
    assert_eq!((t.to_host, t.from_host, t.forwarded), (3, 2, 0));
    assert!(e.rule_counts().all(|r| r.count == Count::default()));

    // Not from the WAN side, not to the WAN address, not another port: input, denied.
    for (side, dst) in [
        (Side::Wan, (LAN_IP, 53)),
        (Side::Wan, (WAN_IP, 53)),
        (Side::Lan, (LAN_IP, 54)),
    ] {
        let mut q = udp(side, (Ipv4Addr::new(198, 51, 100, 77), 40002), dst);
        if side == Side::Lan {
            q = udp(side, (HOST, 40002), dst);
        }
        assert_eq!(
            run(&mut e, side, &mut q, SEC).0,
            Action::Drop(DropReason::NoMatchingAllowRule),
            "{side:?} {dst:?}"
        );
    }
    // Without a proxy, the LAN address answers nothing, DNS included (the existing policy
    // decides: input denied).
    let mut plain = engine_with(DNS_POLICY, 64);
    know_neighbours(&mut plain, 0);
    let mut q = udp(Side::Lan, (HOST, 40000), (LAN_IP, 53));
    assert_eq!(
        run(&mut plain, Side::Lan, &mut q, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
}

#[test]
fn intercepted_queries_reach_the_proxy_and_are_answered_from_where_they_were_sent() {
    let mut e = engine_with_proxy(true);
    let elsewhere = Ipv4Addr::new(9, 9, 9, 9);
    let mut q = udp(Side::Lan, (HOST, 40000), (elsewhere, 53));
    let (action, _) = run(&mut e, Side::Lan, &mut q, SEC);
    let ip = delivered(&q, action);
    assert_eq!((ip.src, ip.dst), (IpAddr::V4(HOST), IpAddr::V4(LAN_IP)));
    assert_eq!(ports(&ip), (40000, 53));

    let mut a = from_host(udp(Side::Lan, (LAN_IP, 53), (HOST, 40000)));
    assert_eq!(
        run_host(&mut e, &mut a, SEC).0,
        Action::Forward {
            out: Side::Lan,
            ask: false
        }
    );
    let ip = left(&a).2;
    assert_eq!((ip.src, ports(&ip)), (IpAddr::V4(elsewhere), (53, 40000)));

    // Without intercept, the same query is forwarded traffic, judged by the rules.
    let mut e = engine_with_proxy(false);
    let mut q = udp(Side::Lan, (HOST, 40000), (elsewhere, 53));
    assert_eq!(
        run(&mut e, Side::Lan, &mut q, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
}

#[test]
fn the_host_reaches_its_upstreams_and_what_output_rules_allow_and_replies_come_back() {
    let mut e = engine_with_proxy(false);
    // The proxy's query to its upstream passes under output deny, as the host sent it.
    let mut q = from_host(udp(Side::Wan, (WAN_IP, 33333), (WAN_HOST, 53)));
    assert_eq!(
        run_host(&mut e, &mut q, SEC).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    let (dst_mac, src_mac, ip) = left(&q);
    assert_eq!((dst_mac, src_mac, ip.ttl), (WAN_HOST_MAC, WAN_MAC, 64));
    assert_eq!(ports(&ip), (33333, 53));
    // Its answer is delivered; an unsolicited packet to another port is not.
    let mut a = udp(Side::Wan, (WAN_HOST, 53), (WAN_IP, 33333));
    let (action, _) = run(&mut e, Side::Wan, &mut a, SEC);
    delivered(&a, action);
    let mut stray = udp(Side::Wan, (WAN_HOST, 53), (WAN_IP, 33334));
    assert_eq!(
        run(&mut e, Side::Wan, &mut stray, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );

    // Anything else the host sends is output, judged by the rules (off both links: through
    // the gateway).
    let mut ntp = from_host(udp(Side::Wan, (WAN_IP, 33335), (REMOTE, 123)));
    assert_eq!(
        run_host(&mut e, &mut ntp, SEC).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    assert_eq!(left(&ntp).0, GW_MAC);
    assert_eq!(count(&e, "ntp-out"), 1);
    let mut other = from_host(udp(Side::Wan, (WAN_IP, 33336), (REMOTE, 5000)));
    assert_eq!(
        run_host(&mut e, &mut other, SEC).0,
        Action::Drop(DropReason::NoMatchingAllowRule)
    );
    assert_eq!(count(&e, "default-deny"), 2, "the stray and this");

    // The host speaks from the engine's addresses only.
    let mut spoofed = from_host(udp(
        Side::Wan,
        (Ipv4Addr::new(192, 168, 1, 77), 1),
        (REMOTE, 123),
    ));
    assert_eq!(
        run_host(&mut e, &mut spoofed, SEC).0,
        Action::Discard(Discard::Martian)
    );
    // A cut-short IPv4 header, behind the header the driver writes for it.
    let mut junk = alloc::vec![0u8; 12];
    junk.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 10]);
    assert_eq!(
        run_host(&mut e, &mut junk, SEC).0,
        Action::Drop(DropReason::MalformedPacket)
    );
}

#[test]
fn a_host_port_a_masqueraded_flow_holds_is_moved_and_moved_back() {
    let mut e = engine_with_proxy(false);
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    assert!(matches!(
        run(&mut e, Side::Lan, &mut syn, SEC).0,
        Action::Forward { .. }
    ));
    let ext = ports(&left(&syn).2).0;
    // The host happens to pick the same port towards the same server.
    let mut clash = from_host(tcp(Side::Wan, (WAN_IP, ext), (REMOTE, 443), SYN));
    assert!(matches!(
        run_host(&mut e, &mut clash, SEC).0,
        Action::Forward { out: Side::Wan, .. }
    ));
    let moved = ports(&left(&clash).2).0;
    assert_ne!(moved, ext);
    // Each reply finds its own flow: the LAN host's is forwarded, the host's delivered with
    // its own port back.
    let mut to_lan = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, ext), SYN | ACK);
    assert!(matches!(
        run(&mut e, Side::Wan, &mut to_lan, SEC).0,
        Action::Forward { out: Side::Lan, .. }
    ));
    let mut to_host = tcp(Side::Wan, (REMOTE, 443), (WAN_IP, moved), SYN | ACK);
    let (action, _) = run(&mut e, Side::Wan, &mut to_host, SEC);
    let ip = delivered(&to_host, action);
    assert_eq!(ports(&ip), (443, ext));
}

#[test]
fn a_host_packet_for_an_unknown_neighbour_asks_for_it_and_passes_once_it_is_known() {
    let mut e = engine_with_proxy(false);
    let learned = e.neighbours_learned();
    let upstream = Ipv4Addr::new(198, 51, 100, 53);
    let mut q = from_host(udp(Side::Wan, (WAN_IP, 33333), (upstream, 123)));
    let held = q.clone();
    let (action, out) = run_host(&mut e, &mut q, SEC);
    assert_eq!(action, Action::Reply(Side::Wan), "an ARP request");
    assert_eq!(q, held, "left as it was, to be handed over again");
    let Payload::Arp(req) = parse(&out).expect("ARP").payload else {
        panic!("not ARP")
    };
    assert_eq!((req.op, req.target_ip), (ArpOperation::Request, upstream));
    assert_eq!(e.neighbours_learned(), learned);

    let mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x53]);
    let mut answer = arp(ArpOperation::Reply, WAN_MAC, mac, upstream, WAN_IP);
    assert_eq!(
        run(&mut e, Side::Wan, &mut answer, SEC).0,
        Action::Discard(Discard::Arp)
    );
    assert_ne!(e.neighbours_learned(), learned);
    assert_eq!(
        run_host(&mut e, &mut q, SEC + 5).0,
        Action::Forward {
            out: Side::Wan,
            ask: false
        }
    );
    assert_eq!(left(&q).0, mac);
    assert_eq!(count(&e, "ntp-out"), 1, "judged once");
}

/// With logging on, each packet a `log: true` rule or a default deny decides is held once,
/// as the filter saw it, with the NAT its flow got; other rules' packets are not.
#[test]
fn logged_decisions_are_held_with_their_flow_and_nat() {
    let logged = POLICY
        .replace(
            "destination_port: [80, 443]}",
            "destination_port: [80, 443], log: true}",
        )
        .replace("destination_port: 23}", "destination_port: 23, log: true}")
        .replace("destination_port: 80}", "destination_port: 80, log: true}");
    let mut e = engine_with(&logged, 64);
    know_neighbours(&mut e, 0);
    let mut syn = tcp(Side::Lan, (HOST, 40000), (REMOTE, 443), SYN);
    run(&mut e, Side::Lan, &mut syn, SEC);
    assert_eq!(e.take_logged().count(), 0, "not started");

    e.start_logging();
    let wan_host = |mut frame: Vec<u8>| {
        frame[6..12].copy_from_slice(&WAN_HOST_MAC.0);
        frame
    };
    let frames = [
        (Side::Lan, tcp(Side::Lan, (HOST, 40001), (REMOTE, 443), SYN)),
        (Side::Lan, tcp(Side::Lan, (HOST, 40002), (REMOTE, 23), SYN)),
        // ping-out does not log; nor does the established flow's next segment.
        (Side::Lan, echo(Side::Lan, HOST, REMOTE, 8, 7)),
        (Side::Lan, tcp(Side::Lan, (HOST, 40001), (REMOTE, 443), ACK)),
        (
            Side::Wan,
            wan_host(tcp(Side::Wan, (WAN_HOST, 5555), (WAN_IP, 8080), SYN)),
        ),
        (
            Side::Wan,
            wan_host(tcp(Side::Wan, (WAN_HOST, 5556), (WAN_IP, 2222), SYN)),
        ),
    ];
    for (side, mut f) in frames {
        run(&mut e, side, &mut f, 2 * SEC);
    }
    let held: Vec<Logged> = e.take_logged().collect();
    let summary: Vec<_> = held
        .iter()
        .map(|l| {
            let (sport, dport) = match l.l4 {
                L4::Tcp { sport, dport, .. } => (sport, dport),
                _ => (0, 0),
            };
            (
                l.rule.and_then(|r| e.rule_id(r)),
                l.direction,
                l.accept,
                (l.from, l.to),
                (l.src, sport, l.dst, dport),
                l.translated.map(|(a, p)| (a, p != 0)),
            )
        })
        .collect();
    let v4 = IpAddr::V4;
    assert_eq!(
        summary,
        [
            (
                Some("web"),
                Direction::Egress,
                true,
                (Some(Side::Lan), Some(Side::Wan)),
                (v4(HOST), 40001, v4(REMOTE), 443),
                Some((v4(WAN_IP), true)),
            ),
            (
                Some("no-telnet"),
                Direction::Egress,
                false,
                (Some(Side::Lan), Some(Side::Wan)),
                (v4(HOST), 40002, v4(REMOTE), 23),
                None,
            ),
            // Judged on the inside address; the public one is the translated side.
            (
                Some("forwarded-web"),
                Direction::Ingress,
                true,
                (Some(Side::Wan), Some(Side::Lan)),
                (v4(WAN_HOST), 5555, v4(HOST), 80),
                Some((v4(WAN_IP), true)),
            ),
            (
                None,
                Direction::Input,
                false,
                (Some(Side::Wan), None),
                (v4(WAN_HOST), 5556, v4(WAN_IP), 2222),
                None,
            ),
        ]
    );
    assert_eq!(held[2].translated, Some((v4(WAN_IP), 8080)));
    assert_eq!(e.log_lost(), (0, 0));
}

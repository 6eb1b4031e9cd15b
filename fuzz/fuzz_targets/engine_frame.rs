//! Fuzz the engine's per-packet path with arbitrary frames: parsing, then the filter and the
//! connection table on whatever parses. Nothing may panic; a bad frame is a drop with a reason.
//!
//! ARP goes to the neighbour table, whose replies must parse; an IP frame is also forwarded
//! and NAT-style rewritten in a copy, which must still parse, one TTL lower (so the incremental
//! IPv4 checksum verifies), and has its checksum completed as if left partial in another.
//! Every frame also goes through a whole `Engine` (with NAT), sent to its MAC half the time,
//! with its L4 checksum said to be unverified, verified or partial by turns (so that frames
//! whose checksums are wrong, as most fuzzed ones are, still reach the tables): what it
//! forwards must parse one TTL lower from its own MAC, what it replies must be ARP. The L4
//! checksum is verified and a record-route option filled in on copies too.
#![no_main]

use engine::core::arp::{Neighbours, Own, Side, FRAME_LEN};
use engine::core::checksum::{addr_changed, complete_partial, l4_valid, l4_word_changed};
use engine::core::conntrack::{Conntrack, Opening, Timeouts, Tuple};
use engine::core::engine::{Action, Config, Engine, Interface, L4Checksum, Rules, RxInfo};
use engine::core::forward::{forward, record_route, NotForwarded};
use engine::core::filter::{Direction, Filter, FlowKey};
use engine::core::packet::{parse, Ip, Payload, L4};
use smoltcp::wire::EthernetAddress;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

const POLICY: &str = "
rules:
  - {id: web, action: accept, direction: egress, destination_fqdn: [example.com], destination_port: 443}
  - {id: dns, action: accept, destination_port: 53, in_interface: eth1}
  - {id: lan, action: deny, source: [10.0.0.0/8, 'fd00::/8'], protocol: icmp}
  - {id: est, action: accept, state: established}
";

/// The whole engine's policy: masquerade and a port-forward, so NAT runs too.
const ENGINE_POLICY: &str = "
interfaces: {lan: [eth1], wan: [eth0]}
rules:
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: [80, 443]}
  - {id: dns, action: accept, direction: egress, protocol: udp, destination_port: 53}
  - {id: ping, action: accept, direction: egress, protocol: icmp}
  - {id: no-ssh, action: deny, protocol: tcp, destination_port: 22}
  - {id: fwd, action: accept, direction: ingress, destination: 192.168.1.10}
nat:
  snat:
    - {out_interface: eth0, source: 192.168.1.0/24, masquerade: true}
  dnat:
    - {wan_ip: 203.0.113.1, wan_port: 8080, to: '192.168.1.10:80', proto: tcp}
";

const LAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x11]);
const WAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x22]);

struct Fixture {
    filter: Filter,
    /// Small, so inputs fill it and its full and expiry paths run too.
    conntrack: Mutex<(Conntrack, u64)>,
    /// Small too, so its sets fill and entries are replaced.
    neighbours: Mutex<Neighbours>,
    /// With its clock; small tables, as above.
    engine: Mutex<(Engine, u64)>,
}

const OWN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let policy = match policy::parse_str(POLICY, "fuzz.yaml") {
            Ok(c) => c.policy,
            Err(e) => panic!("{e}"),
        };
        Fixture {
            filter: Filter::compile(&policy),
            conntrack: Mutex::new((Conntrack::new(64, Timeouts::default(), [1, 2]), 0)),
            neighbours: Mutex::new(Neighbours::new(
                Own {
                    mac: OWN_MAC,
                    ip: Ipv4Addr::new(192, 168, 1, 1),
                    prefix_len: 24,
                },
                Own {
                    mac: OWN_MAC,
                    ip: Ipv4Addr::new(10, 0, 0, 1),
                    prefix_len: 8,
                },
                16,
                [3, 4],
            )),
            engine: Mutex::new((engine(), 0)),
        }
    })
}

fn engine() -> Engine {
    let policy = match policy::parse_str(ENGINE_POLICY, "fuzz-engine.yaml") {
        Ok(c) => c.policy,
        Err(e) => panic!("{e}"),
    };
    let own = |mac, ip| Own {
        mac,
        ip,
        prefix_len: 24,
    };
    let config = Config {
        lan: Interface {
            name: "eth1".into(),
            own: own(LAN_MAC, Ipv4Addr::new(192, 168, 1, 1)),
        },
        wan: Interface {
            name: "eth0".into(),
            own: own(WAN_MAC, Ipv4Addr::new(203, 0, 113, 1)),
        },
        gateway: Some(Ipv4Addr::new(203, 0, 113, 254)),
        conntrack_capacity: 64,
        neighbour_capacity: 16,
        conntrack_key: [5, 6],
        neighbour_key: [7, 8],
    };
    match Engine::new(Rules::compile(&policy, [9, 10]), config) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

/// The frame through the whole engine, on the side its length's parity picks, sent to the
/// engine's MAC there when its first byte is even.
fn through_the_engine(frame: &[u8]) {
    let Ok(mut guard) = fixture().engine.lock() else {
        return;
    };
    let (engine, now) = &mut *guard;
    *now += 250;
    let side = if frame.len() % 2 == 0 { Side::Lan } else { Side::Wan };
    let mut copy = frame.to_vec();
    if copy.len() >= 6 && copy[0] % 2 == 0 {
        copy[..6].copy_from_slice(&engine.own(side).mac.0);
    }
    let before = match parse(&copy).map(|p| p.payload) {
        Ok(Payload::Ip(ip)) => Some(ip.ttl),
        _ => None,
    };
    let mut out = [0u8; FRAME_LEN];
    let is_arp = |out: &[u8; FRAME_LEN]| matches!(parse(out).map(|p| p.payload), Ok(Payload::Arp(_)));
    let checksum = match frame.first().map_or(0, |b| b / 2 % 3) {
        0 => L4Checksum::Unverified,
        1 => L4Checksum::Verified,
        _ => L4Checksum::Partial,
    };
    match engine.handle_rx(side, &mut copy, RxInfo { checksum }, *now, &mut out) {
        Action::Forward { out: to, ask } => {
            let after = parse(&copy).unwrap_or_else(|r| panic!("forwarded, no longer parses: {r}"));
            let Payload::Ip(ip) = after.payload else {
                panic!("forwarded something that is not IP")
            };
            assert_eq!(after.src_mac, engine.own(to).mac);
            assert_eq!(Some(ip.ttl + 1), before);
            assert!(!ask || is_arp(&out));
        }
        Action::Reply(_) => assert!(is_arp(&out)),
        // Only with a DNS proxy on a host stack, which this engine has not.
        Action::Deliver { .. } => panic!("delivered to a host stack the engine has not"),
        Action::Drop(_) | Action::Discard(_) => {}
    }
    if *now % 8_000 == 0 {
        engine.sweep(*now, 16);
    }
}

fuzz_target!(|frame: &[u8]| {
    through_the_engine(frame);
    let Ok(parsed) = parse(frame) else {
        return;
    };
    let f = fixture();
    let ip = match parsed.payload {
        Payload::Ip(ip) => ip,
        Payload::Arp(arp) => {
            let Ok(mut n) = f.neighbours.lock() else {
                return;
            };
            let side = if frame.len() % 2 == 0 { Side::Lan } else { Side::Wan };
            let now = frame.len() as u64 * 500;
            let mut reply = [0u8; FRAME_LEN];
            if n.receive(side, parsed.dst_mac, &arp, now, &mut reply) {
                assert!(matches!(parse(&reply).map(|p| p.payload), Ok(Payload::Arp(_))));
            }
            let _ = n.resolve(side, arp.target_ip, now);
            return;
        }
    };
    assert!(ip.offsets.l4 <= ip.offsets.end && ip.offsets.end <= frame.len());
    rewrite(frame, &ip);
    let Ok(mut guard) = f.conntrack.lock() else {
        return;
    };
    let (ct, now) = &mut *guard;
    // A second per input: flows expire as the corpus runs.
    *now += 1000;
    if let Some(tuple) = Tuple::of(&ip) {
        if ct.track(&tuple, &ip.l4, *now).is_some() {
            return;
        }
    }
    let key = FlowKey {
        direction: Direction::Egress,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        dport: ip.l4.dport(),
        in_iface: f.filter.iface("eth1"),
        out_iface: f.filter.iface("eth0"),
        established: false,
    };
    let verdict = f.filter.classify(&key, *now);
    if let (Some(tuple), Opening::Track(state)) = (Tuple::of(&ip), Opening::of(&ip)) {
        let _ = ct.open(tuple, tuple.reversed(), state, verdict.rule, *now);
    }
    ct.sweep(*now, 8);
});

/// Forwards and NAT-rewrites a copy of the frame: it must still parse, one TTL lower.
fn rewrite(frame: &[u8], ip: &Ip) {
    // Completing a checksum touches only the L4 checksum field.
    let mut completed = frame.to_vec();
    let _ = l4_valid(frame, ip);
    assert_eq!(complete_partial(&mut completed, ip), Ok(()));
    assert!(parse(&completed).is_ok());
    // Recording a route leaves a frame that parses (its options may be refused now: an
    // option whose length is not 3 + 4n has a pointer out of place once full, as with Linux).
    let mut recorded = frame.to_vec();
    assert_eq!(record_route(&mut recorded, ip, Ipv4Addr::new(203, 0, 113, 1)), Ok(()));
    assert!(matches!(parse(&recorded).map(|p| p.payload), Ok(Payload::Ip(_))));
    let mut copy = frame.to_vec();
    match forward(&mut copy, ip, EthernetAddress([0x02, 0, 0, 0, 0, 9]), OWN_MAC) {
        Ok(()) => {}
        Err(NotForwarded::TtlExceeded) => {
            assert!(ip.ttl <= 1 && copy == frame);
            return;
        }
        Err(NotForwarded::Mismatch) => panic!("a parsed frame matches its own offsets"),
    }
    // A new source address and port, written with their checksum updates.
    let new = match ip.src {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
    };
    let at = ip.offsets.l3 + if new.is_ipv4() { 12 } else { 8 };
    match new {
        IpAddr::V4(a) => copy[at..at + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => copy[at..at + 16].copy_from_slice(&a.octets()),
    }
    assert_eq!(addr_changed(&mut copy, ip, ip.src, new), Ok(()));
    if let L4::Tcp { sport, .. } | L4::Udp { sport, .. } = ip.l4 {
        let port = sport ^ 0x5a5a;
        copy[ip.offsets.l4..ip.offsets.l4 + 2].copy_from_slice(&port.to_be_bytes());
        assert_eq!(l4_word_changed(&mut copy, ip, sport, port), Ok(()));
    }
    match parse(&copy).map(|p| p.payload) {
        Ok(Payload::Ip(after)) => assert_eq!((after.ttl, after.src), (ip.ttl - 1, new)),
        other => panic!("the rewritten frame no longer parses: {other:?}"),
    }
}

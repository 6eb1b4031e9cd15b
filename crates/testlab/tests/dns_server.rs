//! The lab's DNS server, queried from its own (WAN) namespace with hand-built hickory-proto
//! messages over UDP and TCP: answers, TTLs, CNAME chains, NXDOMAIN, truncation, counting.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::*;
use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, RecordType};
use testlab::{addr, LabError, Netns, Probe, Transport, Zone, DNS_PORT};

fn query(name: &str, rtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
    testlab::dns_query(name, rtype, edns)
}

/// An EDNS OPT with a large buffer, optionally carrying a Client Subnet option.
fn edns(ecs: bool) -> Edns {
    let mut edns = testlab::edns(4096);
    if ecs {
        let subnet = ClientSubnet::new(addr::LAN_HOST.into(), 24, 0);
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
    }
    edns
}

/// Sends one query from inside `ns` (no resends: the server's query count stays exact).
fn udp(ns: &Netns, server: SocketAddr, wire: Vec<u8>) -> Message {
    ns.dns(server, wire, Transport::Udp, T)
        .expect("UDP answer within 3 s")
}

/// One query over TCP (RFC 1035 §4.2.2: two-byte length prefix) from inside `ns`.
fn tcp(ns: &Netns, server: SocketAddr, wire: Vec<u8>) -> Message {
    ns.dns(server, wire, Transport::Tcp, T)
        .expect("TCP answer within 3 s")
}

/// (owner, ttl, data) of every answer record, for whole-section comparisons.
fn answers(msg: &Message) -> Vec<(String, u32, RData)> {
    msg.answers
        .iter()
        .map(|r| (r.name.to_ascii(), r.ttl, r.data.clone()))
        .collect()
}

fn a(ip: Ipv4Addr) -> RData {
    RData::A(A(ip))
}

fn wan(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

#[test]
fn standard_zone_answers_over_udp_and_tcp() {
    let lab = lab("tl-dns");
    let wan_ns = lab.wan();
    // Declared after the lab: dropped (stopped) first, also when an assertion fails.
    let dns = wan_ns
        .dns_server(Zone::standard())
        .expect("start DNS server");
    assert_eq!(dns.queries(), 0);
    let srv = sa(addr::WAN_HOST, DNS_PORT);
    let srv6 = sa(addr::WAN_HOST6, DNS_PORT);
    let mut sent = 0;

    // A with its TTL, authoritative, over both transports.
    for (transport, msg) in [
        (
            "udp",
            udp(&wan_ns, srv, query("ok.test.", RecordType::A, None)),
        ),
        (
            "tcp",
            tcp(&wan_ns, srv, query("ok.test.", RecordType::A, None)),
        ),
    ] {
        sent += 1;
        assert_eq!(
            msg.metadata.response_code,
            ResponseCode::NoError,
            "{transport}"
        );
        assert!(msg.metadata.authoritative, "{transport}: AA");
        assert!(!msg.metadata.truncation, "{transport}: TC");
        assert_eq!(
            answers(&msg),
            [("ok.test.".into(), 300, a(addr::WAN_HOST))],
            "{transport}"
        );
    }
    assert_eq!(dns.queries(), sent);

    let msg = udp(&wan_ns, srv, query("short.test.", RecordType::A, None));
    sent += 1;
    assert_eq!(answers(&msg), [("short.test.".into(), 2, a(wan(21)))]);

    // AAAA, asked over IPv6 (the server listens on [::] too).
    let msg = udp(&wan_ns, srv6, query("v6.test.", RecordType::AAAA, None));
    sent += 1;
    assert_eq!(
        answers(&msg),
        [("v6.test.".into(), 300, RData::AAAA(AAAA(addr::WAN_HOST6)))]
    );
    let msg = tcp(&wan_ns, srv6, query("v6.test.", RecordType::AAAA, None));
    sent += 1;
    assert_eq!(msg.answers.len(), 1, "AAAA over TCP/v6: {msg:?}");

    // The CNAME chain comes back whole, in order, each record with its own TTL.
    let cname = |t: &str| RData::CNAME(CNAME(Name::from_ascii(t).expect("name")));
    let chain = [
        ("alias.test.".to_string(), 300, cname("mid.test.")),
        ("mid.test.".to_string(), 30, cname("end.test.")),
        ("end.test.".to_string(), 120, a(wan(22))),
    ];
    let msg = udp(&wan_ns, srv, query("alias.test.", RecordType::A, None));
    sent += 1;
    assert_eq!(answers(&msg), chain);
    let msg = tcp(&wan_ns, srv, query("alias.test.", RecordType::A, None));
    sent += 1;
    assert_eq!(answers(&msg), chain);

    // Unknown name: authoritative NXDOMAIN with the SOA; known name, other type: NODATA.
    let msg = udp(&wan_ns, srv, query("nope.test.", RecordType::A, None));
    sent += 1;
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert!(msg.metadata.authoritative);
    assert!(msg.answers.is_empty());
    assert!(
        msg.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "SOA in authority: {msg:?}"
    );
    let msg = udp(&wan_ns, srv, query("ok.test.", RecordType::AAAA, None));
    sent += 1;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.answers.is_empty(), "{msg:?}");

    // Wildcard-pattern and sub-domain test names: each its own address.
    for (name, last) in [
        ("wild.test.", 30),
        ("a.wild.test.", 31),
        ("a.b.wild.test.", 32),
        ("sub.test.", 40),
        ("a.sub.test.", 41),
        ("b.a.sub.test.", 42),
        ("c.b.a.sub.test.", 43),
    ] {
        let msg = udp(&wan_ns, srv, query(name, RecordType::A, None));
        sent += 1;
        assert_eq!(answers(&msg), [(name.to_string(), 300, a(wan(last)))]);
    }

    // big.test.: truncated over plain UDP, complete over TCP or with a large EDNS buffer.
    let msg = udp(&wan_ns, srv, query("big.test.", RecordType::A, None));
    sent += 1;
    assert!(msg.metadata.truncation, "TC=1 over UDP without EDNS");
    assert!(msg.answers.len() < 40, "{} answers", msg.answers.len());
    let expected: BTreeSet<IpAddr> = (100..140).map(|l| IpAddr::V4(wan(l))).collect();
    let wire = query("big.test.", RecordType::A, None);
    assert!(wire.len() < 512);
    let msg = tcp(&wan_ns, srv, wire);
    sent += 1;
    assert!(!msg.metadata.truncation);
    let got: BTreeSet<IpAddr> = msg
        .answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    assert_eq!(msg.answers.len(), 40);
    assert_eq!(got, expected);
    assert!(msg.to_vec().expect("re-encode").len() > 512);
    let msg = udp(
        &wan_ns,
        srv,
        query("big.test.", RecordType::A, Some(edns(false))),
    );
    sent += 1;
    assert!(!msg.metadata.truncation);
    assert_eq!(msg.answers.len(), 40);

    // ECS presence is recorded per query.
    assert!(!dns.last_query_had_ecs());
    let msg = udp(
        &wan_ns,
        srv,
        query("ok.test.", RecordType::A, Some(edns(true))),
    );
    sent += 1;
    assert_eq!(msg.answers.len(), 1);
    assert!(dns.last_query_had_ecs());
    tcp(
        &wan_ns,
        srv,
        query("ok.test.", RecordType::A, Some(edns(false))),
    );
    sent += 1;
    assert!(!dns.last_query_had_ecs());

    assert_eq!(dns.queries(), sent, "one count per query, UDP and TCP");

    // The module docs' recipe: the other answers become reachable from the LAN once the WAN
    // host has the address.
    wan_ns
        .ip(&["addr", "add", "198.51.100.21/24", "dev", "eth0"])
        .expect("add address");
    let _web = wan_ns.tcp_server(sa(wan(21), 80)).expect("server on .21");
    let p = lab.lan().tcp_probe(sa(wan(21), 80), T).expect("probe");
    assert!(p.ok(), "LAN -> 198.51.100.21: {p}");
    dns.stop();
    lab.down().expect("lab teardown");
}

#[test]
fn stop_closes_the_sockets_and_a_new_server_can_bind() {
    let lab = lab("tl-dnsstop");
    let (lan, wan_ns) = (lab.lan(), lab.wan());
    let srv = sa(addr::WAN_HOST, DNS_PORT);
    let zone = Zone::new("example.").a("www.example", Ipv4Addr::new(192, 0, 2, 1), 60);

    let dns = wan_ns.dns_server(zone.clone()).expect("start DNS server");
    // Reachable from the LAN through the (rule-less) firewall too.
    let msg = udp(&lan, srv, query("www.example.", RecordType::A, None));
    assert_eq!(
        answers(&msg),
        [("www.example.".into(), 60, a([192, 0, 2, 1].into()))]
    );
    // Outside the zone: not ours to answer.
    let msg = udp(&lan, srv, query("ok.test.", RecordType::A, None));
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    assert_eq!(dns.queries(), 2);

    // Port 53 is taken while it runs.
    match wan_ns.dns_server(zone.clone()) {
        Err(LabError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}")
        }
        other => panic!("second server on port 53: expected AddrInUse, got {other:?}"),
    }

    dns.stop(); // returns once the server thread has exited
    assert_eq!(lan.tcp_probe(srv, T).expect("probe"), Probe::Refused);
    assert_eq!(lan.udp_probe(srv, T).expect("probe"), Probe::Refused);

    // The sockets are closed: a new server binds the same port and counts from zero.
    let dns = wan_ns.dns_server(zone).expect("restart DNS server");
    let msg = tcp(&lan, srv, query("www.example.", RecordType::A, None));
    assert_eq!(msg.answers.len(), 1);
    assert_eq!(dns.queries(), 1);
    drop(dns);
    lab.down().expect("lab teardown");
}

#[test]
fn bad_zones_and_missing_namespaces_are_errors() {
    // Zone checks happen before any namespace is touched.
    let nowhere = Netns::new("tl-dns-no-such-namespace");
    let outside = Zone::new("test.").a("ok.example.", Ipv4Addr::LOCALHOST, 1);
    let err = nowhere
        .dns_server(outside)
        .expect_err("name outside the origin");
    assert!(matches!(err, LabError::Zone(_)), "{err}");
    assert!(err.to_string().contains("ok.example."), "{err}");

    let clash =
        Zone::new("test.")
            .cname("x.test.", "ok.test.", 1)
            .a("x.test.", Ipv4Addr::LOCALHOST, 1);
    let err = nowhere.dns_server(clash).expect_err("CNAME next to an A");
    assert!(matches!(err, LabError::Zone(_)), "{err}");

    let err = nowhere
        .dns_server(Zone::standard())
        .expect_err("namespace does not exist");
    assert!(matches!(err, LabError::OpenNetns { .. }), "{err}");
}

//! Cost of deciding a new flow against 10,000 rules, by where the deciding rule stands (first,
//! middle, last, none), and of finding an established flow in the connection table.
//!
//! Targets: a new flow in ≤ 1 µs with the worst position within 10% of the best; an
//! established hit fast enough for 10 Mpps (≤ 100 ns). Also measured: the classifier's
//! adversarial worst case, and a hit whose table entry is not in cache.

use criterion::{criterion_group, criterion_main, Criterion};
use engine::core::conntrack::{Conntrack, State, Timeouts, Tuple, DEFAULT_CAPACITY};
use engine::core::filter::{Direction, Filter, FlowKey, IfaceId};
use engine::core::packet::{TcpFlags, L4};
use ipnet::IpNet;
use policy::{Action, PortRange, Protocol, Rule, Span};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const RULES: u32 = 10_000;

fn dst(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, (i >> 8) as u8, i as u8)
}

/// Rule `i`: egress tcp or udp from one of four LAN /16s to its own server on one of 500
/// ports: the shape of a big allow-list, where every rule differs in more than one field.
fn rule(i: u32) -> Rule {
    Rule {
        id: format!("r{i}"),
        name: None,
        action: if i.is_multiple_of(7) {
            Action::Deny
        } else {
            Action::Accept
        },
        direction: Some(policy::Direction::Egress),
        source: vec![format!("10.{}.0.0/16", i % 4).parse().expect("a /16")],
        destination: vec![IpNet::from(IpAddr::V4(dst(i)))],
        destination_fqdn: Vec::new(),
        destination_port: vec![PortRange {
            lo: 1000 + (i % 500) as u16,
            hi: 1000 + (i % 500) as u16,
        }],
        protocol: Some(if i.is_multiple_of(2) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        }),
        state: None,
        in_interface: None,
        out_interface: None,
        log: false,
        span: Span::default(),
    }
}

/// A packet that rule `i` decides (each rule has its own destination, so no earlier rule can).
fn key_for(i: u32) -> FlowKey {
    FlowKey {
        direction: Direction::Egress,
        src: IpAddr::V4(Ipv4Addr::new(10, (i % 4) as u8, 3, 7)),
        dst: IpAddr::V4(dst(i)),
        proto: if i.is_multiple_of(2) { 6 } else { 17 },
        dport: Some(1000 + (i % 500) as u16),
        in_iface: IfaceId::UNLISTED,
        out_iface: IfaceId::UNLISTED,
        established: false,
    }
}

fn classify(c: &mut Criterion) {
    let mut policy = match policy::parse_str("rules: []\n", "bench.yaml") {
        Ok(checked) => checked.policy,
        Err(e) => panic!("{e}"),
    };
    policy.rules = (0..RULES).map(rule).collect();
    let filter = Filter::compile(&policy);

    let mut group = c.benchmark_group("classify_10k_rules");
    for (name, at) in [("first", 0), ("middle", RULES / 2), ("last", RULES - 1)] {
        let key = key_for(at);
        assert_eq!(filter.classify(&key, 0).rule, Some(at), "{name}");
        group.bench_function(name, |b| b.iter(|| filter.classify(black_box(&key), 0)));
    }
    let mut nothing = key_for(0);
    nothing.dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(filter.classify(&nothing, 0).rule, None);
    group.bench_function("no_match", |b| {
        b.iter(|| filter.classify(black_box(&nothing), 0))
    });

    // The aggregated bit vectors' worst case: even rules match the source but not the
    // destination, odd rules the other way round, so every word passes the summaries and
    // every word must be read, for no match.
    policy.rules = (0..RULES)
        .map(|i| {
            let mut r = rule(0);
            r.id = format!("r{i}");
            if i.is_multiple_of(2) {
                r.destination = vec!["192.0.2.1/32".parse().expect("a /32")];
            } else {
                r.source = vec!["192.0.2.2/32".parse().expect("a /32")];
            }
            r
        })
        .collect();
    let interleaved = Filter::compile(&policy);
    let key = key_for(0);
    assert_eq!(interleaved.classify(&key, 0).rule, None);
    group.bench_function("no_match_interleaved_worst_case", |b| {
        b.iter(|| interleaved.classify(black_box(&key), 0))
    });
    group.finish();
}

fn conntrack(c: &mut Criterion) {
    let flows: Vec<Tuple> = (0..60_000u32)
        .map(|i| Tuple {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)),
            dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 251) as u8)),
            sport: 10_000 + (i % 50_000) as u16,
            dport: 443,
            proto: 6,
        })
        .collect();
    let mut ct = Conntrack::new(
        DEFAULT_CAPACITY,
        Timeouts::default(),
        [0x5eed_0001, 0x5eed_0002],
    );
    for t in &flows {
        if ct
            .open(*t, t.reversed(), State::TcpEstablished, Some(1), 0)
            .is_err()
        {
            panic!("table refused {t:?}");
        }
    }
    let ack = L4::Tcp {
        sport: 0,
        dport: 0,
        flags: TcpFlags(TcpFlags::ACK),
    };

    let mut group = c.benchmark_group("conntrack_60k_flows");
    let one = flows[1234].reversed();
    group.bench_function("hit_same_flow", |b| {
        b.iter(|| ct.track(black_box(&one), &ack, 1))
    });
    // Flows in a scattered order, read one after another as packets would arrive: the
    // tuple is at hand (just parsed) but the table's index slot and entry are not in cache.
    let scattered: Vec<Tuple> = (0..flows.len())
        .map(|k| flows[k * 7919 % flows.len()].reversed())
        .collect();
    let mut next = scattered.iter().cycle();
    group.bench_function("hit_scattered", |b| {
        b.iter(|| {
            let t = next.next().unwrap_or(&one);
            ct.track(black_box(t), &ack, 1)
        })
    });
    group.finish();
}

criterion_group!(benches, classify, conntrack);
criterion_main!(benches);

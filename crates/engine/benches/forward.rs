//! Cost of forwarding one frame of an established flow: the in-place rewrite alone (MACs,
//! TTL / hop limit, IPv4 checksum), and the whole per-packet path around it.
//!
//! The path is parse, connection-table hit, next-hop MAC from the neighbour table, rewrite:
//! what an established packet costs before the I/O layer sends it (its filter decision was
//! taken when the flow opened). Each iteration first restores the TTL byte and the checksum
//! the previous one rewrote, two stores, so every iteration forwards the same arriving frame.

use criterion::{criterion_group, criterion_main, Criterion};
use engine::core::arp::{Neighbours, Own, Resolved, Side};
use engine::core::conntrack::{Conntrack, State, Timeouts, Tuple, DEFAULT_CAPACITY};
use engine::core::forward::forward;
use engine::core::packet::{parse, Ip, Payload};
use smoltcp::wire::{EthernetAddress, Ipv4Packet, TcpPacket};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const LAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
const WAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
/// Where the TTL and the IPv4 header checksum sit in the frame.
const TTL_AT: usize = 14 + 8;
const SUM_AT: usize = 14 + 10;

/// A TCP ACK from a LAN host to a server, 54 bytes padded to Ethernet's 60.
fn ack_frame() -> Vec<u8> {
    let (src, dst) = (
        Ipv4Addr::new(192, 168, 1, 10),
        Ipv4Addr::new(198, 51, 100, 7),
    );
    let mut f = Vec::new();
    f.extend_from_slice(&LAN_MAC.0);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&443u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xfa, 0xf0, 0, 0, 0, 0]);
    Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    TcpPacket::new_unchecked(&mut f[34..54]).fill_checksum(&src.into(), &dst.into());
    f.resize(60, 0);
    f
}

fn parsed_ip(frame: &[u8]) -> Ip {
    match parse(frame).map(|p| p.payload) {
        Ok(Payload::Ip(ip)) => ip,
        other => panic!("{other:?}"),
    }
}

fn forwarding(c: &mut Criterion) {
    let arrived = ack_frame();
    let ip = parsed_ip(&arrived);
    let (ttl, sum) = (arrived[TTL_AT], [arrived[SUM_AT], arrived[SUM_AT + 1]]);
    let mut frame = arrived.clone();

    let mut group = c.benchmark_group("forward");
    group.bench_function("rewrite_ipv4_mac_ttl_checksum", |b| {
        b.iter(|| {
            frame[TTL_AT] = ttl;
            frame[SUM_AT..SUM_AT + 2].copy_from_slice(&sum);
            forward(black_box(&mut frame), black_box(&ip), GATEWAY_MAC, WAN_MAC)
        })
    });
    // The rewritten frame is what a full recomputation gives, so the loop measured real work.
    let mut want = arrived.clone();
    want[..6].copy_from_slice(&GATEWAY_MAC.0);
    want[6..12].copy_from_slice(&WAN_MAC.0);
    want[TTL_AT] = ttl - 1;
    Ipv4Packet::new_unchecked(&mut want[14..34]).fill_checksum();
    assert_eq!(frame, want);

    // The established path: a 60,000-flow table, the gateway known on the WAN side.
    let mut ct = Conntrack::new(DEFAULT_CAPACITY, Timeouts::default(), [1, 2]);
    for i in 0..60_000u32 {
        let t = Tuple {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)),
            dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 251) as u8)),
            sport: 10_000 + (i % 50_000) as u16,
            dport: 443,
            proto: 6,
        };
        if ct
            .open(t, t.reversed(), State::TcpEstablished, Some(1), 0)
            .is_err()
        {
            panic!("table refused {t:?}");
        }
    }
    let Some(flow) = Tuple::of(&ip) else {
        panic!("a TCP packet has a tuple")
    };
    if ct
        .open(flow, flow.reversed(), State::TcpEstablished, Some(1), 0)
        .is_err()
    {
        panic!("table refused the benchmarked flow");
    }
    let lan = Own {
        mac: LAN_MAC,
        ip: Ipv4Addr::new(192, 168, 1, 1),
        prefix_len: 24,
    };
    let wan = Own {
        mac: WAN_MAC,
        ip: Ipv4Addr::new(203, 0, 113, 2),
        prefix_len: 24,
    };
    let mut neighbours = Neighbours::new(lan, wan, 1024, [3, 4]);
    let mut reply = [0u8; engine::core::arp::FRAME_LEN];
    let answer = engine::core::packet::Arp {
        op: smoltcp::wire::ArpOperation::Reply,
        sender_mac: GATEWAY_MAC,
        sender_ip: GATEWAY,
        target_mac: WAN_MAC,
        target_ip: wan.ip,
    };
    let _ = neighbours.receive(Side::Wan, WAN_MAC, &answer, 0, &mut reply);
    assert_eq!(
        neighbours.resolve(Side::Wan, GATEWAY, 1),
        Resolved::Mac(GATEWAY_MAC)
    );

    group.bench_function("established_ipv4_parse_track_resolve_rewrite", |b| {
        b.iter(|| {
            frame[TTL_AT] = ttl;
            frame[SUM_AT..SUM_AT + 2].copy_from_slice(&sum);
            let Ok(Payload::Ip(ip)) = parse(black_box(&frame)).map(|p| p.payload) else {
                return false;
            };
            let Some(tuple) = Tuple::of(&ip) else {
                return false;
            };
            if ct.track(&tuple, &ip.l4, 1).is_none() {
                return false;
            }
            let Resolved::Mac(mac) = neighbours.resolve(Side::Wan, GATEWAY, 1) else {
                return false;
            };
            forward(&mut frame, &ip, mac, WAN_MAC).is_ok()
        })
    });
    assert_eq!(frame, want);
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);

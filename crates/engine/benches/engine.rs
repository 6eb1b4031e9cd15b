//! Cost of `Engine::handle_rx` for a frame of an established, masqueraded flow, both ways:
//! parse, connection-table hit, route, next-hop MAC, NAT rewrite and forwarding, what the I/O
//! loop pays per frame besides the system calls. Each iteration handles a fresh copy of the
//! same arriving frame (the copy is included in the figure).
//!
//! Each case runs twice: with the L4 checksum verified by the NIC (`verified`, the frame's
//! payload is never read) and without (`unverified`: the engine sums the whole segment, as the
//! kernel's conntrack does), for a bare ACK (60 bytes) and a full-size segment (1514 bytes).
//! The difference between the two is what verification costs per packet.

use criterion::{criterion_group, criterion_main, Criterion};
use engine::core::arp::{Side, FRAME_LEN};
use engine::core::engine::{Action, Engine, L4Checksum, Rules, RxInfo};
use engine::testing::{
    self, arp_request, GATEWAY, GW_MAC, HOST, HOST_MAC, LAN_IP, LAN_MAC, WAN_IP, WAN_MAC,
};
use smoltcp::wire::{EthernetAddress, Ipv4Packet, TcpPacket};
use std::hint::black_box;
use std::net::Ipv4Addr;

const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

const POLICY: &str = "
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: 443}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.1.0/24, masquerade: true}
";

fn tcp(
    to: EthernetAddress,
    from: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
) -> Vec<u8> {
    tcp_with(to, from, src, dst, flags, 0)
}

/// A segment carrying `data` bytes of payload.
fn tcp_with(
    to: EthernetAddress,
    from: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    data: usize,
) -> Vec<u8> {
    let total = u16::try_from(40 + data).unwrap_or(u16::MAX);
    let mut f = to.0.to_vec();
    f.extend_from_slice(&from);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    f.extend((0..data).map(|i| (i * 7) as u8));
    Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    TcpPacket::new_unchecked(&mut f[34..]).fill_checksum(&src.0.into(), &dst.0.into());
    f.resize(f.len().max(60), 0);
    f
}

fn handling(c: &mut Criterion) {
    let policy = testing::policy(POLICY);
    let config = testing::config(65_536, 1024);
    let mut e = match Engine::new(Rules::compile(&policy, [5, 6]), config) {
        Ok(e) => e,
        Err(err) => panic!("{err}"),
    };
    let mut out = [0u8; FRAME_LEN];
    for (side, mut f) in [
        (Side::Lan, arp_request(HOST_MAC, HOST, LAN_IP)),
        (Side::Wan, arp_request(GW_MAC, GATEWAY, WAN_IP)),
    ] {
        assert_eq!(e.handle(side, &mut f, 0, &mut out), Action::Reply(side));
    }
    let mut syn = tcp(LAN_MAC, HOST_MAC, (HOST, 40000), (REMOTE, 443), 0x02);
    let forwarded = Action::Forward {
        out: Side::Wan,
        ask: false,
    };
    assert_eq!(e.handle(Side::Lan, &mut syn, 1, &mut out), forwarded);
    let ext = u16::from_be_bytes([syn[34], syn[35]]);
    let mut syn_ack = tcp(WAN_MAC, GW_MAC, (REMOTE, 443), (WAN_IP, ext), 0x12);
    let back = Action::Forward {
        out: Side::Lan,
        ask: false,
    };
    assert_eq!(e.handle(Side::Wan, &mut syn_ack, 2, &mut out), back);

    const PSH_ACK: u8 = 0x18;
    let out_ack = tcp(LAN_MAC, HOST_MAC, (HOST, 40000), (REMOTE, 443), 0x10);
    let in_ack = tcp(WAN_MAC, GW_MAC, (REMOTE, 443), (WAN_IP, ext), 0x10);
    let out_full = tcp_with(
        LAN_MAC,
        HOST_MAC,
        (HOST, 40000),
        (REMOTE, 443),
        PSH_ACK,
        1460,
    );
    let in_full = tcp_with(WAN_MAC, GW_MAC, (REMOTE, 443), (WAN_IP, ext), PSH_ACK, 1460);
    let mut frame = vec![0u8; 1514];
    let mut group = c.benchmark_group("engine");
    for (name, side, arrived, want) in [
        (
            "established_out_masqueraded",
            Side::Lan,
            &out_ack,
            forwarded,
        ),
        ("established_in_masqueraded", Side::Wan, &in_ack, back),
        (
            "established_out_masqueraded_1514",
            Side::Lan,
            &out_full,
            forwarded,
        ),
        ("established_in_masqueraded_1514", Side::Wan, &in_full, back),
    ] {
        let frame = &mut frame[..arrived.len()];
        for (how, checksum) in [
            ("verified", L4Checksum::Verified),
            ("unverified", L4Checksum::Unverified),
        ] {
            let info = RxInfo { checksum };
            group.bench_function(format!("{name}/{how}"), |b| {
                b.iter(|| {
                    frame.copy_from_slice(arrived);
                    e.handle_rx(side, black_box(&mut *frame), info, 3, &mut out)
                })
            });
            // The last iteration did the whole job.
            frame.copy_from_slice(arrived);
            assert_eq!(
                e.handle_rx(side, frame, info, 3, &mut out),
                want,
                "{name}/{how}"
            );
        }
    }
    group.finish();
}

criterion_group!(benches, handling);
criterion_main!(benches);

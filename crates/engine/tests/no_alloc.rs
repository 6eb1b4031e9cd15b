//! `Engine::handle` allocates nothing: a counting allocator watches a mix of frames (ARP, new
//! flows with SNAT and DNAT, established traffic both ways, drops of every early kind, an
//! unresolved next hop, queries for the DNS proxy and the host stack's packets) go through an
//! engine whose tables were built beforehand; nor does the packet loop's look at its
//! learned-address inbox when no batch waits, nor holding logged packets for the event log.
//!
//! Its own test binary, since the global allocator is per binary; counts are per thread, so
//! the harness's other threads do not disturb them.

#![cfg(feature = "std")]

use engine::core::arp::{Side, FRAME_LEN};
use engine::core::engine::{Action, DnsProxy, Engine, Rules};
use engine::testing::{self, GATEWAY, GW_MAC, HOST_MAC, LAN_IP, LAN_MAC, WAN_IP, WAN_MAC};
use smoltcp::wire::{EthernetAddress, Icmpv4Packet, Ipv4Packet, TcpPacket};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; the count is a side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const POLICY: &str = "
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: 443}
  - {id: ping, action: accept, direction: egress, protocol: icmp}
  - {id: no-telnet, action: deny, direction: egress, protocol: tcp, destination_port: 23}
  - {id: fwd, action: accept, direction: ingress, destination: 192.168.1.10, protocol: tcp, destination_port: 80}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.1.0/24, masquerade: true}
  dnat:
    - {wan_ip: 198.51.100.1, wan_port: 8080, to: '192.168.1.10:80', proto: tcp}
";

fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

fn ipv4(
    to: EthernetAddress,
    from: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = to.0.to_vec();
    f.extend_from_slice(&from);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&(20 + l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    let (s, d) = (src.into(), dst.into());
    match proto {
        6 => TcpPacket::new_unchecked(&mut f[34..]).fill_checksum(&s, &d),
        1 => Icmpv4Packet::new_unchecked(&mut f[34..]).fill_checksum(),
        _ => {}
    }
    f
}

fn udp(side: Side, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let (to, from) = match side {
        Side::Lan => (LAN_MAC, HOST_MAC),
        Side::Wan => (WAN_MAC, GW_MAC),
    };
    let mut l4 = src.1.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&[0, 12, 0, 0, b'q', b'u', b'e', b'r']);
    ipv4(to, from, src.0, dst.0, 17, &l4)
}

/// A packet from the host stack, behind the Ethernet header the driver writes (no MACs).
fn from_host(mut frame: Vec<u8>) -> Vec<u8> {
    frame[..12].fill(0);
    frame
}

fn tcp(side: Side, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let (to, from) = match side {
        Side::Lan => (LAN_MAC, HOST_MAC),
        Side::Wan => (WAN_MAC, GW_MAC),
    };
    let mut l4 = src.1.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.1.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    ipv4(to, from, src.0, dst.0, 6, &l4)
}

#[test]
fn handling_frames_allocates_nothing() {
    let policy = testing::policy(POLICY);
    let config = testing::config(1024, 64);
    let mut rules = Rules::compile(&policy, [5, 6]);
    rules.dns = Some(DnsProxy {
        port: 53,
        upstreams: vec![SocketAddr::new(IpAddr::V4(GATEWAY), 53)],
        intercept: true,
    });
    let mut e = match Engine::new(rules, config) {
        Ok(e) => e,
        Err(err) => panic!("{err}"),
    };
    // Logged packets (here the default denies) are held in room allocated now.
    e.start_logging();
    let host = Ipv4Addr::new(192, 168, 1, 10);
    let remote = Ipv4Addr::new(203, 0, 113, 5);
    let unknown = Ipv4Addr::new(192, 168, 1, 99);

    // Every frame is built before counting starts; each is handled from a fresh copy.
    let mut frames: Vec<(Side, Vec<u8>)> = vec![
        (Side::Lan, arp_request(HOST_MAC, host, LAN_IP)),
        (Side::Wan, arp_request(GW_MAC, GATEWAY, WAN_IP)),
    ];
    for port in 40_000..40_200u16 {
        frames.push((Side::Lan, tcp(Side::Lan, (host, port), (remote, 443), 0x02)));
    }
    frames.push((Side::Lan, tcp(Side::Lan, (host, 1), (remote, 23), 0x02)));
    frames.push((Side::Wan, tcp(Side::Wan, (remote, 5), (host, 22), 0x02)));
    frames.push((Side::Wan, tcp(Side::Wan, (remote, 5), (WAN_IP, 8080), 0x02)));
    frames.push((Side::Wan, tcp(Side::Wan, (remote, 5), (unknown, 80), 0x02)));
    let mut echo = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    echo.extend_from_slice(b"payload!");
    frames.push((Side::Lan, ipv4(LAN_MAC, HOST_MAC, host, remote, 1, &echo)));
    frames.push((Side::Lan, vec![0u8; 20]));
    // Queries for the DNS proxy on the host stack, sent to it and intercepted.
    frames.push((Side::Lan, udp(Side::Lan, (host, 5353), (LAN_IP, 53))));
    frames.push((Side::Lan, udp(Side::Lan, (host, 5354), (remote, 53))));
    let mut copies: Vec<Vec<u8>> = frames.iter().map(|(_, f)| f.clone()).collect();
    let mut out = [0u8; FRAME_LEN];
    let mut actions: Vec<Action> = Vec::with_capacity(4 * frames.len());
    let mut replies: Vec<(Side, Vec<u8>)> = Vec::with_capacity(frames.len());

    // The driver looks at the learned-address inbox before every wait for frames; with no
    // batch waiting that costs nothing either.
    #[cfg(target_os = "linux")]
    let (_feed, mut inbox) = engine::learn::channel().expect("eventfd");

    let before = allocations();
    for (now, ((side, frame), copy)) in frames.iter().zip(copies.iter_mut()).enumerate() {
        #[cfg(target_os = "linux")]
        assert_eq!(inbox.apply(&mut e, now as u64), 0);
        copy.copy_from_slice(frame);
        actions.push(e.handle(*side, copy, now as u64, &mut out));
    }
    let logged = e.take_logged().count();
    let during = allocations() - before;
    assert!(logged > 0, "the default denies were logged");

    // Then the replies to every forwarded new flow: established traffic back through NAT.
    for ((side, _), copy) in frames.iter().zip(&copies) {
        if *side == Side::Lan && copy.len() > 34 && copy[23] == 6 && copy[12..14] == [8, 0] {
            let sport = u16::from_be_bytes([copy[34], copy[35]]);
            let dport = u16::from_be_bytes([copy[36], copy[37]]);
            let src = Ipv4Addr::new(copy[26], copy[27], copy[28], copy[29]);
            let dst = Ipv4Addr::new(copy[30], copy[31], copy[32], copy[33]);
            if src == WAN_IP {
                replies.push((Side::Wan, tcp(Side::Wan, (dst, dport), (src, sport), 0x12)));
            }
        }
    }
    let mut reply_copies: Vec<Vec<u8>> = replies.iter().map(|(_, f)| f.clone()).collect();
    let before = allocations();
    for ((side, frame), copy) in replies.iter().zip(reply_copies.iter_mut()) {
        copy.copy_from_slice(frame);
        actions.push(e.handle(*side, copy, 1000, &mut out));
    }
    let replying = allocations() - before;

    // The host stack: its answers to both queries, its query upstream, and that one's answer.
    let mut hosted: Vec<(Option<Side>, Vec<u8>)> = vec![
        (None, from_host(udp(Side::Lan, (LAN_IP, 53), (host, 5353)))),
        (None, from_host(udp(Side::Lan, (LAN_IP, 53), (host, 5354)))),
        (
            None,
            from_host(udp(Side::Wan, (WAN_IP, 40000), (GATEWAY, 53))),
        ),
        (
            Some(Side::Wan),
            udp(Side::Wan, (GATEWAY, 53), (WAN_IP, 40000)),
        ),
    ];
    let before = allocations();
    for (side, frame) in hosted.iter_mut() {
        actions.push(match side {
            None => e.handle_host(frame, 2000, &mut out),
            Some(side) => e.handle(*side, frame, 2000, &mut out),
        });
    }
    let hosting = allocations() - before;

    // The mix did take every path meant: forwards both ways, drops, an ARP request.
    let forwarded = |out: Side| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Forward { out: o, .. } if *o == out))
            .count()
    };
    assert_eq!(replies.len(), 200, "every web flow masqueraded");
    // Out: the web flows, the ping and the host's query upstream; in: the port-forward, the
    // replies and the host's two answers.
    assert_eq!(
        (forwarded(Side::Wan), forwarded(Side::Lan)),
        (202, 203),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Drop(_))));
    assert!(actions.contains(&Action::Reply(Side::Lan)));
    let delivered = actions
        .iter()
        .filter(|a| matches!(a, Action::Deliver { .. }))
        .count();
    assert_eq!(
        delivered, 3,
        "two queries and the upstream's answer: {actions:?}"
    );
    assert_eq!(
        (during, replying, hosting),
        (0, 0, 0),
        "allocations while handling frames"
    );
}

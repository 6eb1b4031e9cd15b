//! `engine::io` on real veths, in a `Firewall::Userspace` lab (the firewall namespace has links
//! and no addresses): the sockets and batches on their own, then the whole driver forwarding.
//! Needs root and network namespaces; without them the tests fail and say so.

#![cfg(all(feature = "std", target_os = "linux"))]

use engine::core::arp::Own;
use engine::core::engine::{Config, Engine, Interface, Rules};
use engine::io::{stop_on_signals, Driver, Meta, RxBatch, Sent, Socket, TxStore};
use smoltcp::wire::{EthernetAddress, Ipv4Packet, UdpPacket};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testlab::{addr, Firewall, Lab, LabSpec, Netns};

fn lab() -> Lab {
    Lab::up_with(LabSpec::unique("we"), Firewall::Userspace).unwrap_or_else(|e| {
        panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
    })
}

fn mac_of(ns: &Netns, dev: &str) -> EthernetAddress {
    let out = ns
        .ip(&["-o", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("{e}"));
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"));
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    EthernetAddress::from_bytes(&bytes)
}

fn open(ns: &Netns, dev: &'static str) -> Socket {
    match ns.run(move || Socket::open(dev)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("cannot open a packet socket on {dev}: {e}"),
        Err(e) => panic!("{e}"),
    }
}

/// A UDP datagram in an Ethernet frame, checksums complete.
fn udp_frame(
    macs: (EthernetAddress, EthernetAddress),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut f = macs.0 .0.to_vec();
    f.extend_from_slice(&macs.1 .0);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&(28 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    UdpPacket::new_unchecked(&mut f[34..]).fill_checksum(&src.0.into(), &dst.0.into());
    f
}

/// Reads `socket` until a frame satisfies `want`, for up to two seconds.
fn wait_for(
    socket: &Socket,
    rx: &mut RxBatch,
    want: impl Fn(&[u8]) -> bool,
) -> Option<(Vec<u8>, Meta)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match socket.recv(rx) {
            Ok(0) => std::thread::sleep(Duration::from_millis(5)),
            Ok(_) => {
                if let Some((f, m)) = rx.frames().find(|(f, _)| want(f)) {
                    return Some((f.to_vec(), m));
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    None
}

fn udp_checksum_ok(frame: &[u8]) -> bool {
    let ip = Ipv4Packet::new_unchecked(&frame[14..]);
    let (src, dst) = (ip.src_addr().into(), ip.dst_addr().into());
    UdpPacket::new_unchecked(&frame[34..]).verify_checksum(&src, &dst)
}

#[test]
fn sockets_read_links_complete_partial_checksums_and_send_batches() {
    let lab = lab();
    let (lan0, host) = (mac_of(&lab.fw(), "lan0"), mac_of(&lab.lan(), "eth0"));
    let socket = open(&lab.fw(), "lan0");
    let link = socket.link();
    assert_eq!(
        (link.name.as_str(), link.mac, link.mtu),
        ("lan0", lan0, 1500)
    );
    assert!(link.index > 0);

    // Nothing answers ARP in this firewall namespace: the LAN host is told the MAC.
    lab.lan()
        .ip(&[
            "neigh",
            "replace",
            &addr::FW_LAN.to_string(),
            "lladdr",
            &lan0.0.map(|b| format!("{b:02x}")).join(":"),
            "dev",
            "eth0",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = lab
        .lan()
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(b"partial", (addr::FW_LAN, 9))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent.expect("send from the LAN host"), 7);

    let mut rx = RxBatch::new(2048);
    let is_probe = |f: &[u8]| f.len() >= 42 && f[23] == 17 && f[36..38] == 9u16.to_be_bytes();
    let (mut frame, meta) =
        wait_for(&socket, &mut rx, is_probe).expect("the LAN host's datagram on lan0");
    // A veth peer leaves the UDP checksum to offload: only the pseudo-header sum is there.
    assert_eq!(
        meta,
        Meta {
            partial_checksum: true,
            ..Meta::default()
        }
    );
    assert!(!udp_checksum_ok(&frame), "partial before completion");
    let ip = match engine::core::packet::parse(&frame).map(|p| p.payload) {
        Ok(engine::core::packet::Payload::Ip(ip)) => ip,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        engine::core::checksum::complete_partial(&mut frame, &ip),
        Ok(())
    );
    assert!(udp_checksum_ok(&frame), "complete after");

    // Sending: a datagram from the firewall's address to the LAN host, two in one batch.
    let listener = lab
        .lan()
        .run(|| UdpSocket::bind((addr::LAN_HOST, 7000)))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("bind on the LAN host");
    listener
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let frames = [b"one".as_slice(), b"two"].map(|payload| {
        udp_frame(
            (host, lan0),
            (addr::FW_LAN, 5000),
            (addr::LAN_HOST, 7000),
            payload,
        )
    });
    let mut store = TxStore::new(4);
    let mut batch = store.batch();
    for f in &frames {
        assert!(batch.push(f));
    }
    assert_eq!(
        socket.send(&mut batch),
        Sent {
            frames: 2,
            failed: 0
        }
    );
    let mut buf = [0u8; 64];
    for want in [b"one", b"two"] {
        let (n, from) = listener.recv_from(&mut buf).expect("a datagram from lan0");
        assert_eq!(
            (&buf[..n], from),
            (
                want.as_slice(),
                SocketAddr::new(IpAddr::V4(addr::FW_LAN), 5000)
            )
        );
    }
    // What the socket sent does not come back to it as received.
    let ours = |f: &[u8]| f.len() >= 42 && f[6..12] == lan0.0 && f[34..36] == 5000u16.to_be_bytes();
    if let Some((_, meta)) = wait_for(&socket, &mut rx, ours) {
        assert!(meta.outgoing, "our own frame read as received");
    }
    lab.down().unwrap_or_else(|e| panic!("{e}"));
}

const POLICY: &str = "
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: ping-out, action: accept, direction: egress, protocol: icmp}
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: 8080}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.50.0/24, masquerade: true}
";

#[test]
fn the_driver_forwards_through_the_engine_and_stops_when_told() {
    let lab = lab();
    let (lan, wan) = (open(&lab.fw(), "lan0"), open(&lab.fw(), "wan0"));
    let own = |socket: &Socket, ip| Own {
        mac: socket.link().mac,
        ip,
        prefix_len: addr::PREFIX_LEN,
    };
    let config = Config {
        lan: Interface {
            name: "lan0".into(),
            own: own(&lan, addr::FW_LAN),
        },
        wan: Interface {
            name: "wan0".into(),
            own: own(&wan, addr::FW_WAN),
        },
        gateway: None,
        conntrack_capacity: 1024,
        neighbour_capacity: 64,
        conntrack_key: [1, 2],
        neighbour_key: [3, 4],
    };
    let policy = match policy::parse_str(POLICY, "test.yaml") {
        Ok(c) => c.policy,
        Err(e) => panic!("{e}"),
    };
    let mut engine = match Engine::new(Rules::compile(&policy, [5, 6]), config) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    // What the tick hook last saw: ticks, and frames forwarded and sent by then.
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let driver = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut driver = Driver::new(lan, wan);
            driver.on_tick(Box::new(move |engine, stats| {
                seen[0].fetch_add(1, Ordering::Relaxed);
                seen[1].store(engine.totals().forwarded, Ordering::Relaxed);
                seen[2].store(stats.sent, Ordering::Relaxed);
            }));
            let result = driver.run(&mut engine, &stop);
            (result, engine, driver.stats())
        })
    };

    let ping = lab
        .lan()
        .ping(IpAddr::V4(addr::WAN_HOST), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ping.ok(), "ping through the engine: {ping:?}");
    let server = SocketAddr::new(IpAddr::V4(addr::WAN_HOST), 8080);
    let _srv = lab
        .wan()
        .tcp_server(server)
        .unwrap_or_else(|e| panic!("{e}"));
    let tcp = lab
        .lan()
        .tcp_probe(server, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tcp.ok(), "TCP through the engine: {tcp:?}");
    assert_eq!(
        tcp.seen_as().map(|a| a.ip()),
        Some(IpAddr::V4(addr::FW_WAN)),
        "masqueraded"
    );

    // The hook is shown the engine at every sweep: the traffic above shows within a few.
    let deadline = Instant::now() + Duration::from_secs(2);
    while seen[1].load(Ordering::Relaxed) < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (result, engine, stats) = driver.join().expect("the driver thread");
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "stopped promptly"
    );
    result.unwrap_or_else(|e| panic!("{e}"));
    let count = |id: &str| engine.rule_count(id).map_or(0, |c| c.packets);
    assert!(count("ping-out") >= 1 && count("web") >= 1);
    assert!(engine.totals().forwarded >= 4, "{:?}", engine.totals());
    assert!(stats.sent >= engine.totals().forwarded, "{stats}");
    let seen = seen.each_ref().map(|n| n.load(Ordering::Relaxed));
    assert!(seen[0] >= 1, "ticks: {seen:?}");
    assert!(
        (4..=engine.totals().forwarded).contains(&seen[1]) && seen[2] <= stats.sent,
        "the last tick saw forwarded={} sent={}; at the end {:?} {stats}",
        seen[1],
        seen[2],
        engine.totals()
    );
    // The LAN host's TCP segments leave it with partial checksums, completed here.
    assert!(stats.checksums_completed >= 1, "{stats}");
    assert_eq!((stats.send_failed, stats.oversize), (0, 0), "{stats}");
    lab.down().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sigterm_and_sigint_set_the_stop_flag() {
    let stop = stop_on_signals().unwrap_or_else(|e| panic!("{e}"));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        stop.store(false, Ordering::Relaxed);
        // SAFETY: the handler installed above only stores to the flag.
        assert_eq!(unsafe { libc::raise(sig) }, 0);
        assert!(stop.load(Ordering::Relaxed), "signal {sig}");
    }
}

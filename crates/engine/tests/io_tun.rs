//! `engine::io::Tun` on a real kernel: a TUN device in a network namespace of the test
//! thread's own, configured with an engine's two addresses, carries the host stack's packets
//! out (from the right source address) and delivers packets written to it to the host's
//! sockets. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and /dev/net/tun.

#![cfg(all(feature = "std", target_os = "linux"))]

use engine::io::Tun;
use smoltcp::wire::{IpProtocol, Ipv4Packet, UdpPacket};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

/// Runs `f` on a thread that has a network namespace of its own, gone when the thread ends.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain system call; affects this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot make a network namespace (tests need root): {}",
                std::io::Error::last_os_error()
            );
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The next IPv4 UDP packet the host sends through `tun`, as (source, destination, payload).
fn next_udp(tun: &Tun) -> (SocketAddr, SocketAddr, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match tun.read_packet(&mut buf) {
            Ok(Some(n)) => {
                let ip = Ipv4Packet::new_checked(&buf[..n]).expect("IPv4");
                if ip.next_header() != IpProtocol::Udp {
                    continue;
                }
                let udp = UdpPacket::new_checked(ip.payload()).expect("UDP");
                return (
                    SocketAddr::new(ip.src_addr().into(), udp.src_port()),
                    SocketAddr::new(ip.dst_addr().into(), udp.dst_port()),
                    udp.payload().to_vec(),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the host sent nothing through the TUN device");
}

#[test]
fn the_host_stack_speaks_from_the_engine_addresses_through_the_tun() {
    in_private_netns(|| {
        let tun = Tun::open("wardt0").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tun.name(), "wardt0");
        tun.configure(&[(WAN_IP, 24), (LAN_IP, 24)])
            .unwrap_or_else(|e| panic!("{e}"));

        // Off both subnets: through the default route, from the first address.
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.send_to(b"far", (FAR, 53)).expect("send far");
        let (src, dst, payload) = next_udp(&tun);
        assert_eq!((src.ip(), dst), (WAN_IP.into(), (FAR, 53).into()));
        assert_eq!(payload, b"far");
        // On the LAN subnet: from the LAN address.
        s.send_to(b"near", (LAN_HOST, 40000)).expect("send near");
        let (src, _, payload) = next_udp(&tun);
        assert_eq!(
            (src.ip(), payload.as_slice()),
            (LAN_IP.into(), &b"near"[..])
        );

        // A socket on the engine's LAN address receives what is written to the device.
        let proxy = UdpSocket::bind((LAN_IP, 5353)).expect("bind on the LAN address");
        proxy
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut p = vec![0u8; 28 + 5];
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len(33);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_src_addr(LAN_HOST);
            ip.set_dst_addr(LAN_IP);
            ip.fill_checksum();
        }
        {
            let mut udp = UdpPacket::new_unchecked(&mut p[20..]);
            udp.set_src_port(40001);
            udp.set_dst_port(5353);
            udp.set_len(13);
            udp.payload_mut().copy_from_slice(b"query");
            udp.fill_checksum(&LAN_HOST.into(), &LAN_IP.into());
        }
        assert!(tun.write_packet(&p), "written");
        let mut buf = [0u8; 64];
        let (n, from) = proxy.recv_from(&mut buf).expect("delivered to the socket");
        assert_eq!((&buf[..n], from), (&b"query"[..], (LAN_HOST, 40001).into()));
    });
}

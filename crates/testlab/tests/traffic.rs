//! Real traffic through a lab with no firewall rules: forwarding, UDP, ping, refusals.
//! Runs as root; each test builds its own uniquely named lab.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use testlab::{addr, Probe};

const HOST_SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
    "/proc/sys/net/ipv6/conf/all/accept_dad",
    "/proc/sys/net/ipv6/conf/default/accept_dad",
    "/proc/sys/net/ipv4/conf/all/rp_filter",
    "/proc/sys/net/ipv4/ping_group_range",
];

#[test]
fn forwarding_without_rules_v4_v6_tcp_udp_ping() {
    let host_before: Vec<String> = HOST_SYSCTLS.iter().map(|p| host_sysctl(p)).collect();
    let t0 = Instant::now();
    let lab = lab("tl-traffic");
    eprintln!("lab up took {:?}", t0.elapsed());
    let (lan, fw, wan) = (lab.lan(), lab.fw(), lab.wan());

    // Sysctls are per namespace, and the host's are untouched.
    assert_eq!(fw.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(fw.sysctl("net.ipv6.conf.all.forwarding").unwrap(), "1");
    assert_eq!(fw.sysctl("net.ipv6.conf.lan0.forwarding").unwrap(), "1");
    assert_eq!(lan.sysctl("net.ipv4.ip_forward").unwrap(), "0");
    assert_eq!(wan.sysctl("net.ipv6.conf.eth0.accept_dad").unwrap(), "0");
    let host_after: Vec<String> = HOST_SYSCTLS.iter().map(|p| host_sysctl(p)).collect();
    assert_eq!(host_before, host_after, "host sysctls changed");

    let srv4 = wan.tcp_server(sa(addr::WAN_HOST, 8080)).unwrap();
    let srv6 = wan.tcp_server(sa(addr::WAN_HOST6, 8080)).unwrap();

    // TCP LAN -> WAN, no NAT: the server sees the LAN host's own address.
    let p = lan.tcp_probe(sa(addr::WAN_HOST, 8080), T).unwrap();
    assert!(p.ok(), "v4 TCP LAN->WAN: {p}");
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(IpAddr::from(addr::LAN_HOST)),
        "{p}"
    );
    let p = lan.tcp_probe(sa(addr::WAN_HOST6, 8080), T).unwrap();
    assert!(p.ok(), "v6 TCP LAN->WAN: {p}");
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(IpAddr::from(addr::LAN_HOST6)),
        "{p}"
    );
    // and back: the WAN host routes to the LAN via the firewall.
    let srv_lan = lan.tcp_server(sa(Ipv4Addr::UNSPECIFIED, 22)).unwrap();
    let p = wan.tcp_probe(sa(addr::LAN_HOST, 22), T).unwrap();
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(IpAddr::from(addr::WAN_HOST)),
        "{p}"
    );
    assert_eq!(srv_lan.served(), 1);
    assert_eq!(srv4.served(), 1);
    assert_eq!(srv6.served(), 1);

    // Closed ports are refused (RST), both families.
    assert_eq!(
        lan.tcp_probe(sa(addr::WAN_HOST, 8081), T).unwrap(),
        Probe::Refused
    );
    assert_eq!(
        lan.tcp_probe(sa(addr::WAN_HOST6, 8081), T).unwrap(),
        Probe::Refused
    );

    // UDP echo, v4 and v6 (a dual-stack [::] socket reports v4 peers as plain v4).
    let _u4 = wan.udp_echo(sa(addr::WAN_HOST, 5353)).unwrap();
    let u6 = wan
        .udp_echo(sa(IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED), 5354))
        .unwrap();
    let p = lan.udp_probe(sa(addr::WAN_HOST, 5353), T).unwrap();
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(IpAddr::from(addr::LAN_HOST)),
        "{p}"
    );
    let p = lan.udp_probe(sa(addr::WAN_HOST6, 5354), T).unwrap();
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(IpAddr::from(addr::LAN_HOST6)),
        "{p}"
    );
    let p = lan.udp_probe(sa(addr::WAN_HOST, 5354), T).unwrap();
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(IpAddr::from(addr::LAN_HOST)),
        "{p}"
    );
    assert!(u6.served() >= 2);
    // Closed UDP port: ICMP port unreachable.
    assert_eq!(
        lan.udp_probe(sa(addr::WAN_HOST, 5399), T).unwrap(),
        Probe::Refused
    );
    assert_eq!(
        lan.udp_probe(sa(addr::WAN_HOST6, 5399), T).unwrap(),
        Probe::Refused
    );

    // Ping, v4 and v6, across the firewall and to each of its addresses.
    for dst in [
        IpAddr::from(addr::WAN_HOST),
        addr::WAN_HOST6.into(),
        addr::FW_LAN.into(),
        addr::FW_LAN6.into(),
        addr::FW_WAN.into(),
        addr::FW_WAN2.into(),
        addr::FW_WAN6.into(),
    ] {
        let p = lan.ping(dst, T).unwrap();
        assert!(p.ok(), "ping lan -> {dst}: {p}");
    }
    let p = wan.ping(addr::LAN_HOST6.into(), T).unwrap();
    assert!(p.ok(), "ping wan -> lan v6: {p}");
    let p = fw.ping(addr::WAN_HOST.into(), T).unwrap();
    assert!(p.ok(), "ping fw -> wan: {p}");

    // Nobody there: no reply (ARP/ND for it fails silently within this short timeout).
    let p = lan
        .ping(
            Ipv4Addr::new(198, 51, 100, 99).into(),
            Duration::from_millis(400),
        )
        .unwrap();
    assert!(!p.ok(), "{p}");
    // No route at all from the WAN host to an address outside its prefixes.
    let p = wan
        .tcp_probe(sa(Ipv4Addr::new(10, 1, 2, 3), 80), T)
        .unwrap();
    assert!(matches!(p, Probe::Unreachable(_)), "{p}");

    drop((srv4, srv6, srv_lan));
    let spec = lab.spec.clone();
    lab.down().unwrap();
    assert_gone(&spec);
}

#[test]
fn echo_server_and_run_and_exec() {
    let lab = lab("tl-echo");
    let (lan, wan) = (lab.lan(), lab.wan());
    let echo = wan.tcp_echo_server(sa(addr::WAN_HOST6, 7)).unwrap();
    assert_eq!(echo.local_addr(), sa(addr::WAN_HOST6, 7));

    // `run` executes on a thread inside the namespace: plain std sockets work there.
    let got = lan
        .run(|| -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&sa(addr::WAN_HOST6, 7), T)?;
            s.write_all(b"hello through the firewall")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            Ok(buf)
        })
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello through the firewall");
    // A probe against the echo server connects but hears no address.
    assert_eq!(
        lan.tcp_probe(sa(addr::WAN_HOST6, 7), T).unwrap(),
        Probe::Connected { seen_as: None }
    );
    // Port 0: the guard reports the real port.
    let any = wan.tcp_server(sa(addr::WAN_HOST, 0)).unwrap();
    assert_ne!(any.local_addr().port(), 0);
    assert!(lan.tcp_probe(any.local_addr(), T).unwrap().ok());

    // A panic inside `run` reaches the caller.
    let r = std::panic::catch_unwind(|| lan.run(|| panic!("inside the namespace")));
    assert!(r.is_err());

    // `exec` runs a command inside the namespace.
    let out = lan
        .exec("ip", &["-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("192.168.50.10/24"), "{text}");
    assert!(text.contains("fd00:50::10/64"), "{text}");
    let out = lab
        .fw()
        .exec("ip", &["-o", "addr", "show", "dev", "wan0"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.51.100.2/24"), "{text}");
    // Non-zero exit is not an error of `exec`.
    let out = lan
        .exec("ip", &["link", "show", "dev", "nonexistent0"])
        .unwrap();
    assert!(!out.status.success());
    drop((echo, any));
    lab.down().unwrap();
}

#[test]
fn probe_loop_counts_successes_and_failures() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let lab = lab("tl-loop");
    let dst = sa(addr::WAN_HOST, 9000);
    let srv = lab.wan().tcp_server(dst).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let h = lab.lan().tcp_probe_loop(dst, stop.clone());
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::SeqCst);
    let stats = h.join().unwrap();
    assert!(stats.clean(), "{stats:?}");
    assert!(stats.successes >= 5, "{stats:?}");
    // Every success reached the server (the last one may still be on its way to accept()).
    assert!(
        srv.served() + 1 >= stats.successes,
        "{} {stats:?}",
        srv.served()
    );

    // Server goes away halfway: failures are counted, with their kind.
    let stop = Arc::new(AtomicBool::new(false));
    let h = lab.lan().tcp_probe_loop(dst, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    drop(srv);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let stats = h.join().unwrap();
    assert!(!stats.clean());
    assert!(stats.successes > 0 && stats.failures > 0, "{stats:?}");
    assert_eq!(stats.first_failures[0].1, Probe::Refused, "{stats:?}");
    assert!(stats.longest_outage > Duration::ZERO);
    assert!(stats.error.is_none());

    // A loop in a namespace that does not exist reports why instead of hanging.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = testlab::Netns::new("tl-no-such-ns")
        .tcp_probe_loop(dst, stop)
        .join()
        .unwrap();
    assert!(
        stats
            .error
            .as_deref()
            .unwrap_or("")
            .contains("tl-no-such-ns"),
        "{stats:?}"
    );
    lab.down().unwrap();
}

#[test]
fn rejections_and_drops_are_classified() {
    use std::net::Ipv6Addr;
    let lab = lab("tl-reject");
    let (lan, fw) = (lab.lan(), lab.fw());
    // Route types give ICMP errors without needing nft: prohibit = admin-prohibited.
    let prohibit4 = Ipv4Addr::new(203, 0, 113, 1);
    let blackhole4 = Ipv4Addr::new(203, 0, 113, 3);
    let prohibit6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let blackhole6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
    fw.ip(&["route", "add", "prohibit", &format!("{prohibit4}/32")])
        .unwrap();
    fw.ip(&["route", "add", "blackhole", &format!("{blackhole4}/32")])
        .unwrap();
    fw.ip(&[
        "-6",
        "route",
        "add",
        "prohibit",
        &format!("{prohibit6}/128"),
    ])
    .unwrap();
    fw.ip(&[
        "-6",
        "route",
        "add",
        "blackhole",
        &format!("{blackhole6}/128"),
    ])
    .unwrap();

    // ICMP errors from routes (ip_error) are rate-limited per destination with the
    // host-only sysctls net.ipv4.route.error_{cost,burst} (burst 5): stay below it.
    let quick = Duration::from_millis(500);
    for ip in [IpAddr::from(prohibit4), prohibit6.into()] {
        let t = Instant::now();
        let p = lan.tcp_probe(sa(ip, 80), T).unwrap();
        assert!(matches!(p, Probe::Unreachable(_)), "tcp {ip}: {p}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "slow: {:?}",
            t.elapsed()
        );
        let p = lan.udp_probe(sa(ip, 80), T).unwrap();
        assert!(matches!(p, Probe::Unreachable(_)), "udp {ip}: {p}");
        let p = lan.ping(ip, T).unwrap();
        assert!(matches!(p, Probe::Unreachable(_)), "ping {ip}: {p}");
    }
    for ip in [IpAddr::from(blackhole4), blackhole6.into()] {
        assert_eq!(lan.tcp_probe(sa(ip, 80), quick).unwrap(), Probe::TimedOut);
        assert_eq!(lan.udp_probe(sa(ip, 80), quick).unwrap(), Probe::TimedOut);
        assert_eq!(lan.ping(ip, quick).unwrap(), Probe::TimedOut);
    }

    // ICMP error rate limiting is off inside the lab: many refusals in a row stay refusals
    // (with the kernel default, after a burst of 6 only one error per second gets out).
    for i in 0..20 {
        for dst in [sa(addr::WAN_HOST, 9), sa(addr::WAN_HOST6, 9)] {
            let p = lan.udp_probe(dst, Duration::from_millis(600)).unwrap();
            assert_eq!(p, Probe::Refused, "#{i} {dst}");
        }
    }
    lab.down().unwrap();
}

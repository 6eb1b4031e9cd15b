//! The userspace data plane on real traffic: `ward engine` in the firewall namespace of a lab
//! whose kernel neither holds the firewall's addresses nor forwards (`Firewall::Userspace`),
//! so whatever crosses the firewall crossed the engine.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use testlab::Firewall;

/// Long enough for a first packet that waits for ARP to be sent again (pings resend every
/// 250 ms; TCP resends its SYN after a second).
const PATIENT: Duration = Duration::from_secs(3);

fn engine_lab() -> Lab {
    Lab::up_with(LabSpec::unique("we"), Firewall::Userspace).unwrap_or_else(|e| {
        panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
    })
}

const POLICY: &str = "
defaults: {default_action: deny, input_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: web, action: accept, direction: egress, protocol: tcp, destination_port: 8080}
  - {id: no-telnet, action: deny, direction: egress, protocol: tcp, destination_port: 23}
  - {id: ping-out, action: accept, direction: egress, protocol: icmp}
  - {id: forwarded-web, action: accept, direction: ingress, destination: 192.168.50.10, protocol: tcp, destination_port: 80}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.50.0/24, masquerade: true}
  dnat:
    - {wan_ip: 198.51.100.1, wan_port: 8080, to: '192.168.50.10:80', proto: tcp}
";

/// `rule ID ACTION packets=N bytes=N` and `drop REASON N` lines of the stop report, as
/// `rule ID` → packets and `drop REASON` → count; `totals` fields as `totals FIELD`.
fn counters(report: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in report.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |w: &str| w.rsplit('=').next().and_then(|n| n.parse::<u64>().ok());
        match words.as_slice() {
            ["rule", id, _, packets, _] => {
                if let Some(n) = number(packets) {
                    out.insert(format!("rule {id}"), n);
                }
            }
            ["drop", reason, n] | ["discard", reason, n] => {
                if let Ok(n) = n.parse() {
                    out.insert(format!("{} {reason}", words[0]), n);
                }
            }
            ["totals", fields @ ..] => {
                for f in fields {
                    if let (Some((k, _)), Some(n)) = (f.split_once('='), number(f)) {
                        out.insert(format!("totals {k}"), n);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_engine_forwards_what_the_policy_allows_and_nothing_else() {
    let lab = engine_lab();
    let engine = WardRun::engine(&lab, POLICY, &[]);
    let wan_host = IpAddr::V4(addr::WAN_HOST);

    // Ping through the engine (the first echo may wait for the WAN host's MAC).
    let ping = lab.lan().ping(wan_host, PATIENT).expect("ping");
    assert_pass(&ping, "ping LAN → WAN through the engine");

    // An allowed connection, masqueraded to the engine's WAN address and a pool port.
    let web = SocketAddr::new(wan_host, 8080);
    let srv = lab.wan().tcp_server(web).expect("tcp server");
    let p = lab.lan().tcp_probe(web, PATIENT).expect("tcp probe");
    assert_pass(&p, "LAN → WAN 8080, allowed");
    let seen = p.seen_as().expect("the server says who connected");
    assert_eq!(seen.ip(), IpAddr::V4(addr::FW_WAN), "masqueraded");
    assert!((16_384..=60_999).contains(&seen.port()), "{seen}");
    drop(srv);

    // A denied port, a port no rule allows, and an unsolicited connection from the WAN.
    assert_blocked(&lan_to_wan(&lab, 23), "LAN → WAN 23, denied");
    assert_blocked(&lan_to_wan(&lab, 9999), "LAN → WAN 9999, no rule");
    assert_blocked(&wan_to_lan(&lab, 22), "WAN → LAN 22, unsolicited");

    // The port-forward reaches the LAN host, which sees the WAN host's own address.
    let inside = lab
        .lan()
        .tcp_server(SocketAddr::new(IpAddr::V4(addr::LAN_HOST), 80))
        .expect("tcp server on the LAN host");
    let forwarded = SocketAddr::new(IpAddr::V4(addr::FW_WAN), 8080);
    let p = lab.wan().tcp_probe(forwarded, PATIENT).expect("tcp probe");
    assert_pass(
        &p,
        "WAN → 198.51.100.1:8080, port-forwarded to the LAN host",
    );
    assert_eq!(
        p.seen_as().map(|a| a.ip()),
        Some(wan_host),
        "not source-NATed"
    );
    drop(inside);

    // The engine answers ARP for its addresses and nothing else: not even a ping.
    assert_blocked(
        &lab.wan()
            .ping(IpAddr::V4(addr::FW_WAN), TIMEOUT)
            .expect("ping"),
        "ping to the engine's own address",
    );

    let report = engine.stop();
    let c = counters(&report);
    let get = |k: &str| {
        c.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k:?} in the report:\n{report}"))
    };
    // One SYN each: the probes give up before TCP's first retransmission.
    assert_eq!(get("rule no-telnet"), 1, "{report}");
    assert_eq!(get("drop explicit_deny"), 1, "{report}");
    assert!(
        get("rule web") >= 1 && get("rule ping-out") >= 1,
        "{report}"
    );
    assert!(get("rule forwarded-web") >= 1, "{report}");
    // 9999 from the LAN and 22 from the WAN fell to the default.
    assert!(get("rule default-deny") >= 2, "{report}");
    assert_eq!(get("rule default-deny"), get("drop no_matching_allow_rule"));
    assert!(
        get("totals snat") >= 2 && get("totals dnat") >= 1,
        "{report}"
    );
    assert!(
        get("discard local") >= 1,
        "the ping to the engine: {report}"
    );
    lab.down().expect("lab down");
}

/// `ward engine FILE --netns NS` with the lab's interfaces and addresses; `set` changes the
/// value after a flag.
fn run_engine(file: &PolicyFile, ns: &str, set: &[(&str, &str)]) -> std::process::Output {
    let mut args = vec![
        "engine",
        file.path(),
        "--netns",
        ns,
        "--lan",
        "lan0",
        "--wan",
        "wan0",
        "--lan-addr",
        "192.168.50.1/24",
        "--wan-addr",
        "198.51.100.1/24",
    ];
    for (flag, value) in set {
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = value,
            None => args.extend([*flag, *value]),
        }
    }
    ward(&args)
}

#[test]
fn the_engine_refuses_what_it_cannot_enforce() {
    let file = PolicyFile::new(POLICY);
    // A kernel that forwards in the same namespace would pass what the engine drops.
    let lab = lab();
    let o = run_engine(&file, lab.fw().name(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("forwarding is on"), "{}", text(&o));
    lab.down().expect("lab down");

    let lab = engine_lab();
    for (set, why) in [
        (
            ("--gateway", "10.0.0.1"),
            "not on the WAN interface's subnet",
        ),
        (("--lan", "nosuch0"), "cannot find interface nosuch0"),
        (("--wan-addr", "192.168.50.2/24"), "subnets overlap"),
    ] {
        let o = run_engine(&file, lab.fw().name(), &[set]);
        assert_eq!(o.status.code(), Some(1), "{why}: {}", text(&o));
        assert!(text(&o).contains(why), "{why}: {}", text(&o));
        assert!(text(&o).contains("did not start"), "{}", text(&o));
    }
    // The engine's DNS proxy serves on the engine's LAN address: a listen address elsewhere
    // is refused.
    let named = PolicyFile::new(
        "defaults: {upstream_dns: 198.51.100.20}\ndns: {listen: ['10.9.9.9:53']}\nrules:\n  - {id: by-name, action: accept, direction: egress, destination_fqdn: [example.com]}\n",
    );
    let o = run_engine(&named, lab.fw().name(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("dns.listen names 10.9.9.9:53, but ward engine's DNS proxy listens on the engine's LAN address (192.168.50.1) only"),
        "{}",
        text(&o)
    );
    // Usage errors are exit status 2, before anything is looked at.
    let o = run_engine(&file, lab.fw().name(), &[("--lan-addr", "192.168.50.1/40")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    lab.down().expect("lab down");
}

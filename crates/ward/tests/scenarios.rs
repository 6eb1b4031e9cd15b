//! The forwarding scenarios of the kernel data plane as one table, run against both data
//! planes: the kernel one (`ward apply` in a lab whose firewall namespace forwards) and the
//! userspace engine (`ward engine` in a `Firewall::Userspace` lab, whose kernel neither owns
//! the firewall's addresses nor forwards). Each scenario is a list of stages, a policy and the
//! probes that must then pass or be blocked (and how the far end sees the client); each runs as
//! a test of its own on each plane, in a lab of its own.
//!
//! What only the kernel plane has (IPv6, input and output chains, folded maps and their
//! counters, apply / remove / plan) stays in `kernel_plane.rs`; the engine's own counters and
//! refusals in `engine_plane.rs`; packet by packet agreement in `differential.rs`.
//!
//! How the engine plane is set up for the same probes:
//! - a policy change restarts `ward engine` (it has no reload), so each stage starts with an
//!   empty connection table there, where the kernel's survives an apply: no scenario depends on
//!   either;
//! - the engine drops a packet whose next hop it has not resolved yet (its ARP module doc), and
//!   the probes give up before TCP sends a SYN again; so each start is followed by a ping from
//!   each host to the engine's address, after their neighbour caches are flushed, so that both
//!   ask for the engine's MAC and the engine learns theirs;
//! - the kernel lab's firewall holds a second WAN address, 198.51.100.2, for port-forwards and
//!   SNAT; the engine answers ARP for its own address only, so the WAN host is given the
//!   engine's MAC for 198.51.100.2, as a provider routes an extra address to a router.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use testlab::{ifname, Firewall};

/// What a stage's probe sends.
#[derive(Clone, Copy, Debug)]
enum Traffic {
    /// TCP from the LAN host to this port of the WAN host.
    TcpOut(u16),
    /// TCP from the WAN host to this port of the LAN host.
    TcpIn(u16),
    /// UDP from the LAN host to this port of the WAN host, answered by an echo server.
    UdpOut(u16),
    /// Ping from the LAN host to the WAN host.
    PingOut,
    /// TCP from the WAN host to 198.51.100.2:8080, served on the LAN host's port 80.
    PortForward,
}

/// What must come of it.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Pass,
    Blocked,
    /// Passes, and the server sees the client as this address, with a port in this range
    /// when one is given.
    SeenAs(Ipv4Addr, Option<(u16, u16)>),
}

use Expect::*;
use Traffic::*;

/// A policy (appended to the gateway header: lan0 is the LAN side, wan0 the WAN side) and what
/// probes then give.
struct Stage {
    policy: String,
    checks: Vec<(Traffic, Expect)>,
}

struct Scenario {
    name: &'static str,
    stages: Vec<Stage>,
}

fn stage(policy: &str, checks: &[(Traffic, Expect)]) -> Stage {
    Stage {
        policy: format!("{GATEWAY}{policy}"),
        checks: checks.to_vec(),
    }
}

const FORWARD_RULE: &str =
    "rules:\n  - {id: web-in, direction: ingress, destination: 192.168.50.10, protocol: tcp, destination_port: 80, action: accept}\n";

/// The table.
fn table() -> Vec<Scenario> {
    let dnat = |from: &str| {
        format!(
            "{FORWARD_RULE}nat:\n  dnat:\n    - {{wan_ip: 198.51.100.2, wan_port: 8080, to: \"192.168.50.10:80\", proto: tcp{from}}}\n"
        )
    };
    let out_web = "rules:\n  - {id: out, direction: egress, protocol: tcp, destination_port: 80, action: accept}\n";
    let nat_80 = "nat:\n  dnat:\n    - {wan_ip: 198.51.100.2, wan_port: 8080, to: \"192.168.50.10:80\", proto: tcp}\n";
    let ports: Vec<(Traffic, Expect)> = [
        (22, true),
        (23, false),
        (999, false),
        (1000, true),
        (1010, true),
        (1011, false),
        (3000, true),
        (4001, true),
        (4002, false),
        (5000, true),
    ]
    .into_iter()
    .map(|(port, pass)| (TcpOut(port), if pass { Pass } else { Blocked }))
    .collect();
    vec![
        Scenario {
            name: "defaults_of_each_direction",
            stages: vec![
                // Nothing but defaults: forwarded traffic is denied either way...
                stage("", &[(TcpOut(80), Blocked), (TcpIn(80), Blocked)]),
                // ...or accepted either way.
                stage(
                    "defaults:\n  default_action: accept\n",
                    &[(TcpOut(80), Pass), (TcpIn(80), Pass)],
                ),
            ],
        },
        Scenario {
            name: "first_match_decides",
            stages: vec![stage(
                "rules:
  - {id: deny-8080, direction: egress, protocol: tcp, destination_port: 8080, action: deny}
  - {id: allow-web, direction: egress, protocol: tcp, destination_port: \"8000-8100\", action: accept}
",
                &[(TcpOut(8080), Blocked), (TcpOut(8081), Pass)],
            )],
        },
        Scenario {
            name: "cidr_in_and_out",
            stages: vec![stage(
                "rules:
  - {id: from-lan, direction: egress, source: 192.168.50.0/28, destination: 198.51.100.16/28, protocol: tcp, destination_port: 80, action: accept}
  - {id: other-src, direction: egress, source: 10.0.0.0/8, protocol: tcp, destination_port: 81, action: accept}
  - {id: other-dst, direction: egress, destination: 198.51.100.128/25, protocol: tcp, destination_port: 82, action: accept}
",
                &[(TcpOut(80), Pass), (TcpOut(81), Blocked), (TcpOut(82), Blocked)],
            )],
        },
        Scenario {
            name: "single_port_range_and_list",
            stages: vec![stage(
                "rules:
  - {id: single, direction: egress, protocol: tcp, destination_port: 22, action: accept}
  - {id: range, direction: egress, protocol: tcp, destination_port: \"1000-1010\", action: accept}
  - {id: list, direction: egress, protocol: tcp, destination_port: [3000, \"4000-4001\", 5000], action: accept}
",
                &ports,
            )],
        },
        Scenario {
            name: "protocol_mismatch",
            stages: vec![stage(
                "rules:
  - {id: udp-only, direction: egress, protocol: udp, destination_port: 7000, action: accept}
  - {id: any-proto, direction: egress, destination_port: 7001, action: accept}
",
                &[
                    (UdpOut(7000), Pass),
                    (TcpOut(7000), Blocked),
                    (TcpOut(7001), Pass),
                    (UdpOut(7001), Pass),
                    // ICMP has no port: no port rule matches it.
                    (PingOut, Blocked),
                ],
            )],
        },
        Scenario {
            name: "egress_rule_never_matches_ingress_and_established_returns",
            stages: vec![stage(
                out_web,
                // The SYN/ACK and data of the LAN's connection come back; the same port opened
                // from outside is not matched by an egress rule.
                &[(TcpOut(80), Pass), (TcpIn(80), Blocked)],
            )],
        },
        Scenario {
            name: "masquerade_is_seen_from_the_wan",
            stages: vec![
                stage(out_web, &[(TcpOut(80), SeenAs(addr::LAN_HOST, None))]),
                stage(
                    &format!("{out_web}nat:\n  snat:\n    - {{out_interface: wan0, source: 192.168.50.0/24, masquerade: true}}\n"),
                    &[(TcpOut(80), SeenAs(addr::FW_WAN, None))],
                ),
                stage(
                    &format!("{out_web}nat:\n  snat:\n    - {{out_interface: wan0, source: 192.168.50.0/24, external_ip: 198.51.100.2, port_range: {{min: 20000, max: 20010}}}}\n"),
                    &[(TcpOut(80), SeenAs(addr::FW_WAN2, Some((20_000, 20_010))))],
                ),
            ],
        },
        Scenario {
            name: "dnat_with_and_without_matching_from",
            stages: vec![
                // The inside server sees the real client.
                stage(&dnat(""), &[(PortForward, SeenAs(addr::WAN_HOST, None))]),
                stage(&dnat(", from: 198.51.100.0/24"), &[(PortForward, Pass)]),
                stage(&dnat(", from: 203.0.113.0/24"), &[(PortForward, Blocked)]),
            ],
        },
        Scenario {
            name: "filter_sees_the_address_after_dnat",
            stages: vec![
                // A rule on the WAN address and port never matches port-forwarded traffic...
                stage(
                    &format!("rules:\n  - {{id: wan-addr, direction: ingress, destination: 198.51.100.2, protocol: tcp, destination_port: 8080, action: accept}}\n{nat_80}"),
                    &[(PortForward, Blocked)],
                ),
                // ...a rule on the inside address and port does.
                stage(&format!("{FORWARD_RULE}{nat_80}"), &[(PortForward, Pass)]),
            ],
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plane {
    Kernel,
    Engine,
}

/// A lab and the plane enforcing policies in it.
struct Bed {
    lab: Lab,
    plane: Plane,
    engine: Option<WardRun>,
}

impl Bed {
    fn up(plane: Plane) -> Bed {
        let lab = match plane {
            Plane::Kernel => lab(),
            Plane::Engine => {
                let lab =
                    Lab::up_with(LabSpec::unique("ws"), Firewall::Userspace).unwrap_or_else(|e| {
                        panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
                    });
                // The WAN host reaches the firewall's second address at the engine's MAC.
                let mac = mac_of(&lab.fw(), ifname::FW_WAN);
                lab.wan()
                    .ip(&[
                        "neigh",
                        "replace",
                        &addr::FW_WAN2.to_string(),
                        "lladdr",
                        &mac,
                        "dev",
                        ifname::WAN_HOST,
                        "nud",
                        "permanent",
                    ])
                    .expect("neighbour entry on the WAN host");
                lab
            }
        };
        Bed {
            lab,
            plane,
            engine: None,
        }
    }

    /// Puts `yaml` in force.
    fn enforce(&mut self, yaml: &str) {
        match self.plane {
            Plane::Kernel => apply(&self.lab, yaml),
            Plane::Engine => {
                // Stopped (and waited for) before the next one opens its sockets.
                if let Some(old) = self.engine.take() {
                    old.stop();
                }
                self.engine = Some(WardRun::engine(&self.lab, yaml, &[]));
                self.introduce_hosts();
            }
        }
    }

    /// Makes each host ask for the engine's address, so that the engine knows its MAC before
    /// the first probe needs it (see the module doc).
    fn introduce_hosts(&self) {
        for (ns, dev, engine_addr) in [
            (self.lab.lan(), ifname::LAN_HOST, addr::FW_LAN),
            (self.lab.wan(), ifname::WAN_HOST, addr::FW_WAN),
        ] {
            // Permanent entries (the WAN host's for 198.51.100.2) stay.
            ns.ip(&["neigh", "flush", "dev", dev])
                .expect("flush a host's neighbour cache");
            // The engine answers ARP and nothing else: the ping itself goes unanswered.
            let p = ns
                .ping(IpAddr::V4(engine_addr), Duration::from_millis(200))
                .expect("ping");
            assert!(!p.ok(), "the engine answered a ping: {p:?}");
            let neigh = ns
                .ip(&["neigh", "show", &engine_addr.to_string(), "dev", dev])
                .expect("ip neigh");
            assert!(
                neigh.contains("lladdr"),
                "the engine did not answer ARP for {engine_addr}: {neigh}"
            );
        }
    }

    fn probe(&self, traffic: Traffic) -> Probe {
        let (lan, wan) = (self.lab.lan(), self.lab.wan());
        let wan_host = IpAddr::V4(addr::WAN_HOST);
        match traffic {
            TcpOut(port) => tcp(&lan, &wan, wan_host, port),
            TcpIn(port) => tcp(&wan, &lan, IpAddr::V4(addr::LAN_HOST), port),
            UdpOut(port) => udp(&lan, &wan, wan_host, port),
            PingOut => lan.ping(wan_host, TIMEOUT).expect("ping"),
            PortForward => {
                let _srv = lan
                    .tcp_server(SocketAddr::new(IpAddr::V4(addr::LAN_HOST), 80))
                    .expect("tcp server on the LAN host");
                wan.tcp_probe(SocketAddr::new(IpAddr::V4(addr::FW_WAN2), 8080), TIMEOUT)
                    .expect("tcp probe")
            }
        }
    }

    fn down(mut self) {
        if let Some(engine) = self.engine.take() {
            engine.stop();
        }
        self.lab.down().expect("lab down");
    }
}

fn mac_of(ns: &testlab::Netns, dev: &str) -> String {
    let out = ns
        .ip(&["-o", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("{e}"));
    out.split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_string()
}

/// Runs the scenario called `name` on `plane`.
fn run(plane: Plane, name: &str) {
    let scenario = table()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name} in the table"));
    let mut bed = Bed::up(plane);
    for (i, stage) in scenario.stages.iter().enumerate() {
        bed.enforce(&stage.policy);
        for &(traffic, expect) in &stage.checks {
            let got = bed.probe(traffic);
            let what = format!(
                "{plane:?} plane, {name}, stage {i}: {traffic:?} expected {expect:?}, got {got:?}\npolicy:\n{}",
                stage.policy
            );
            match expect {
                Pass => assert!(got.ok(), "{what}"),
                Blocked => assert!(
                    matches!(got, Probe::TimedOut | Probe::Unreachable(_)),
                    "{what}"
                ),
                SeenAs(ip, ports) => {
                    let seen = got.seen_as();
                    assert_eq!(seen.map(|a| a.ip()), Some(IpAddr::V4(ip)), "{what}");
                    if let (Some((lo, hi)), Some(seen)) = (ports, seen) {
                        assert!((lo..=hi).contains(&seen.port()), "{what}");
                    }
                }
            }
        }
    }
    bed.down();
}

/// One test per scenario and plane; `every_scenario_runs_on_both_planes` checks that this
/// list is the table's.
macro_rules! on_both_planes {
    ($($name:ident),* $(,)?) => {
        const LISTED: &[&str] = &[$(stringify!($name)),*];
        mod kernel {
            $(#[test] fn $name() { super::run(super::Plane::Kernel, stringify!($name)) })*
        }
        mod engine {
            $(#[test] fn $name() { super::run(super::Plane::Engine, stringify!($name)) })*
        }
    };
}

on_both_planes!(
    defaults_of_each_direction,
    first_match_decides,
    cidr_in_and_out,
    single_port_range_and_list,
    protocol_mismatch,
    egress_rule_never_matches_ingress_and_established_returns,
    masquerade_is_seen_from_the_wan,
    dnat_with_and_without_matching_from,
    filter_sees_the_address_after_dnat,
);

#[test]
fn every_scenario_runs_on_both_planes() {
    let names: Vec<&str> = table().iter().map(|s| s.name).collect();
    assert_eq!(names, LISTED, "the test list and the table differ");
    for s in table() {
        assert!(!s.stages.is_empty(), "{}", s.name);
        for stage in &s.stages {
            assert!(!stage.checks.is_empty(), "{}", s.name);
            policy::parse_str(&stage.policy, "scenario.yaml")
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
        }
    }
}

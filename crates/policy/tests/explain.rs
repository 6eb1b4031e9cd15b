//! `explain` / `rule_matches`: hand-written cases for every field and default, and a property
//! test against a straightforward reference matcher on generated rule lists and probes.

mod common;
use common::{naive_fqdn_match, ok};
use ipnet::IpNet;
use policy::*;
use proptest::prelude::*;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn probe(
    src: &str,
    dst: Target,
    proto: Protocol,
    dport: Option<u16>,
    direction: Direction,
) -> Probe {
    Probe::new(ip(src), dst, proto, dport, direction)
}

fn tcp_to(dst: &str, port: u16) -> Probe {
    probe(
        "192.168.1.10",
        Target::Ip(ip(dst)),
        Protocol::Tcp,
        Some(port),
        Direction::Egress,
    )
}

const POLICY: &str = r#"
interfaces: {lan: eth1, wan: eth0}
defaults:
  input_action: accept
rules:
  - id: ssh-in
    action: accept
    direction: input
    destination_port: 22
  - id: block-bad
    action: deny
    destination: 203.0.113.0/24
  - id: github
    action: accept
    direction: egress
    source: 192.168.1.0/24
    destination_fqdn: [github.com, "*.githubusercontent.com"]
    destination_port: 443
    protocol: tcp
  - id: web
    action: accept
    direction: egress
    destination_port: [80, 443]
"#;

#[test]
fn first_match_decides_with_steps() {
    let p = ok(POLICY).policy;
    let e = explain(&p, &tcp_to("198.51.100.7", 443));
    assert_eq!(
        e.verdict,
        Verdict {
            action: Action::Accept,
            rule_id: "web".into(),
            rule_index: Some(3),
            drop_reason: None,
        }
    );
    // ssh-in is for input, so it is not considered at all.
    assert_eq!(
        e.steps,
        vec![
            "rule 'block-bad' (line 9): no match: destination 198.51.100.7 not in 203.0.113.0/24",
            "rule 'github' (line 12): no match: destination_fqdn github.com, *.githubusercontent.com never matches a bare address (198.51.100.7)",
            "rule 'web' (line 19): matches (every field it sets agrees): accept",
        ]
    );
}

#[test]
fn explicit_deny() {
    let p = ok(POLICY).policy;
    let e = explain(&p, &tcp_to("203.0.113.9", 443));
    assert_eq!(e.verdict.action, Action::Deny);
    assert_eq!(e.verdict.rule_id, "block-bad");
    assert_eq!(e.verdict.rule_index, Some(1));
    assert_eq!(e.verdict.drop_reason, Some("explicit_deny"));
}

#[test]
fn fqdn_target() {
    let p = ok(POLICY).policy;
    let mut pr = probe(
        "192.168.1.10",
        Target::Fqdn("objects.githubusercontent.com".into()),
        Protocol::Tcp,
        Some(443),
        Direction::Egress,
    );
    let e = explain(&p, &pr);
    assert_eq!(e.verdict.rule_id, "github");
    assert_eq!(
        e.steps[0],
        "rule 'block-bad' (line 9): no match: destination 203.0.113.0/24 is addresses; the address of objects.githubusercontent.com is not known"
    );
    pr.dst = Target::Fqdn("a.b.githubusercontent.com".into());
    let e = explain(&p, &pr);
    assert_eq!(e.verdict.rule_id, "web");
    assert_eq!(
        e.steps[1],
        "rule 'github' (line 12): no match: destination_fqdn a.b.githubusercontent.com does not match github.com, *.githubusercontent.com"
    );
}

#[test]
fn defaults_per_direction() {
    let p = ok(POLICY).policy;
    // Forwarded: default_action (deny).
    let e = explain(&p, &tcp_to("198.51.100.7", 8080));
    assert_eq!(
        e.verdict,
        Verdict {
            action: Action::Deny,
            rule_id: "default-deny".into(),
            rule_index: None,
            drop_reason: Some("no_matching_allow_rule"),
        }
    );
    assert_eq!(
        e.steps.last().map(String::as_str),
        Some("no rule matched; egress traffic gets defaults.default_action: deny")
    );
    // Input: input_action was set to accept.
    let mut pr = tcp_to("192.168.1.1", 8080);
    pr.direction = Direction::Input;
    let e = explain(&p, &pr);
    assert_eq!(e.verdict.rule_id, "default-accept");
    assert_eq!(e.verdict.drop_reason, None);
    // Output: accept by default.
    pr.direction = Direction::Output;
    assert_eq!(explain(&p, &pr).verdict.action, Action::Accept);
    // Input with a deny default.
    let p = ok("rules: []\n").policy;
    pr.direction = Direction::Input;
    assert_eq!(explain(&p, &pr).verdict.rule_id, "default-deny");
}

fn only_rule(yaml_rule: &str) -> Rule {
    let c = ok(&format!(
        "interfaces: {{lan: eth1, wan: eth0}}\nrules:\n  - {yaml_rule}\n"
    ));
    c.policy.rules.into_iter().next().expect("one rule")
}

#[test]
fn rule_matches_reports_first_mismatch() {
    let r = only_rule("{id: a, action: accept, destination_port: 22}");
    assert_eq!(
        rule_matches(&r, &tcp_to("1.2.3.4", 443)),
        Err("destination_port 443 not in 22".into())
    );
    assert_eq!(rule_matches(&r, &tcp_to("1.2.3.4", 22)), Ok(()));
    let mut no_port = tcp_to("1.2.3.4", 22);
    no_port.dport = None;
    assert_eq!(
        rule_matches(&r, &no_port),
        Err("destination_port 22: probe has no destination port".into())
    );
    let icmp = probe(
        "10.0.0.1",
        Target::Ip(ip("1.2.3.4")),
        Protocol::Icmp,
        None,
        Direction::Egress,
    );
    assert_eq!(
        rule_matches(&r, &icmp),
        Err("destination_port implies tcp or udp, probe is icmp".into())
    );

    let r =
        only_rule("{id: a, action: accept, protocol: udp, source: [192.168.1.0/24, 10.0.0.0/8]}");
    assert_eq!(
        rule_matches(&r, &tcp_to("1.2.3.4", 1)),
        Err("protocol tcp is not udp".into())
    );
    let mut u = tcp_to("1.2.3.4", 53);
    u.proto = Protocol::Udp;
    u.src = ip("172.16.0.1");
    assert_eq!(
        rule_matches(&r, &u),
        Err("source 172.16.0.1 not in 192.168.1.0/24, 10.0.0.0/8".into())
    );

    let r = only_rule("{id: a, action: accept, direction: ingress}");
    assert_eq!(
        rule_matches(&r, &tcp_to("1.2.3.4", 1)),
        Err("direction ingress does not apply to egress traffic".into())
    );
    let r = only_rule("{id: a, action: accept}");
    let mut inp = tcp_to("1.2.3.4", 1);
    inp.direction = Direction::Input;
    assert_eq!(
        rule_matches(&r, &inp),
        Err("direction ingress/egress does not apply to input traffic".into())
    );
    assert_eq!(rule_matches(&r, &tcp_to("1.2.3.4", 1)), Ok(()));

    let r = only_rule("{id: a, action: accept, state: established}");
    let mut est = tcp_to("1.2.3.4", 1);
    assert_eq!(
        rule_matches(&r, &est),
        Err("state established: probe is a new flow".into())
    );
    est.established = true;
    assert_eq!(rule_matches(&r, &est), Ok(()));

    let r = only_rule("{id: a, action: accept, in_interface: eth1, out_interface: eth0}");
    let mut i = tcp_to("1.2.3.4", 1);
    assert_eq!(
        rule_matches(&r, &i),
        Err("in_interface eth1: probe gives no in_interface".into())
    );
    i.in_interface = Some("eth2".into());
    assert_eq!(
        rule_matches(&r, &i),
        Err("in_interface eth2 is not eth1".into())
    );
    i.in_interface = Some("eth1".into());
    assert_eq!(
        rule_matches(&r, &i),
        Err("out_interface eth0: probe gives no out_interface".into())
    );
    i.out_interface = Some("eth0".into());
    assert_eq!(rule_matches(&r, &i), Ok(()));
}

// ----- property test against a reference matcher -----

/// The reference: SPEC §3 read literally, one boolean per field.
fn reference(policy: &Policy, p: &Probe) -> (Action, Option<usize>) {
    for (i, r) in policy.rules.iter().enumerate() {
        let direction = match r.direction {
            None => p.direction == Direction::Ingress || p.direction == Direction::Egress,
            Some(d) => d == p.direction,
        };
        let protocol = match r.protocol {
            Some(x) => x == p.proto,
            None => {
                r.destination_port.is_empty()
                    || p.proto == Protocol::Tcp
                    || p.proto == Protocol::Udp
            }
        };
        let source = r.source.is_empty() || r.source.iter().any(|n| n.contains(&p.src));
        let destination = match &p.dst {
            Target::Ip(a) => {
                r.destination_fqdn.is_empty()
                    && (r.destination.is_empty() || r.destination.iter().any(|n| n.contains(a)))
            }
            Target::Fqdn(name) => {
                r.destination.is_empty()
                    && (r.destination_fqdn.is_empty()
                        || r.destination_fqdn
                            .iter()
                            .any(|f| naive_fqdn_match(&f.to_string(), name)))
            }
        };
        let port = r.destination_port.is_empty()
            || p.dport
                .is_some_and(|d| r.destination_port.iter().any(|x| x.lo <= d && d <= x.hi));
        let state = r.state.is_none() || p.established;
        let in_if = r.in_interface.is_none() || r.in_interface == p.in_interface;
        let out_if = r.out_interface.is_none() || r.out_interface == p.out_interface;
        if direction && protocol && source && destination && port && state && in_if && out_if {
            return (r.action, Some(i));
        }
    }
    let d = &policy.defaults;
    let action = match p.direction {
        Direction::Ingress | Direction::Egress => d.default_action,
        Direction::Input => d.input_action,
        Direction::Output => d.output_action,
    };
    (action, None)
}

const NETS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.3/32",
    "192.168.0.0/16",
    "::/0",
    "2001:db8::/32",
];
const IPS: &[&str] = &[
    "10.1.2.3",
    "10.2.0.1",
    "192.168.5.5",
    "8.8.8.8",
    "2001:db8::1",
    "2001:db9::1",
];
const PATTERNS: &[&str] = &[
    "example.com",
    "*.example.com",
    ".example.com",
    ".a.example.com",
    "github.com",
];
const NAMES: &[&str] = &[
    "example.com",
    "a.example.com",
    "b.a.example.com",
    "GitHub.com.",
    "x.org",
    "example.com.",
];
const IFACES: &[Option<&str>] = &[None, Some("eth0"), Some("eth1")];

fn arb_dir() -> impl Strategy<Value = Direction> {
    prop::sample::select(vec![
        Direction::Ingress,
        Direction::Egress,
        Direction::Input,
        Direction::Output,
    ])
}
fn arb_proto() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Icmp,
        Protocol::Icmpv6,
    ])
}
fn arb_nets() -> impl Strategy<Value = Vec<IpNet>> {
    prop::collection::vec(prop::sample::select(NETS), 0..3)
        .prop_map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
}
fn arb_iface() -> impl Strategy<Value = Option<String>> {
    prop::sample::select(IFACES).prop_map(|o| o.map(str::to_string))
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(arb_dir()),
        arb_nets(),
        (
            0..3u8,
            arb_nets(),
            prop::collection::vec(prop::sample::select(PATTERNS), 1..3),
        ),
        prop::collection::vec((1..100u16, 0..50u16), 0..3),
        prop::option::of(arb_proto()),
        (any::<bool>(), any::<bool>(), arb_iface(), arb_iface()),
    )
        .prop_map(
            |(direction, source, (kind, dn, pats), ports, protocol, (deny, est, ii, oi))| {
                let destination_port: Vec<PortRange> = ports
                    .into_iter()
                    .map(|(lo, len)| PortRange { lo, hi: lo + len })
                    .collect();
                let protocol = if destination_port.is_empty() {
                    protocol
                } else {
                    protocol.filter(|p| p.has_ports())
                };
                Rule {
                    id: "r".into(),
                    name: None,
                    action: if deny { Action::Deny } else { Action::Accept },
                    direction,
                    source,
                    destination: if kind == 1 { dn } else { vec![] },
                    destination_fqdn: if kind == 2 {
                        pats.iter()
                            .filter_map(|p| FqdnPattern::parse(p).ok())
                            .collect()
                    } else {
                        vec![]
                    },
                    destination_port,
                    protocol,
                    state: est.then_some(State::Established),
                    in_interface: ii,
                    out_interface: oi,
                    log: false,
                    span: Span { line: 1, col: 1 },
                }
            },
        )
}

fn arb_probe() -> impl Strategy<Value = Probe> {
    (
        prop::sample::select(IPS),
        prop_oneof![
            prop::sample::select(IPS).prop_map(|s| Target::Ip(ip(s))),
            prop::sample::select(NAMES).prop_map(|s| Target::Fqdn(s.to_string())),
        ],
        arb_proto(),
        prop::option::of(1..160u16),
        arb_dir(),
        (arb_iface(), arb_iface(), any::<bool>()),
    )
        .prop_map(
            |(src, dst, proto, dport, direction, (in_interface, out_interface, established))| {
                Probe {
                    src: ip(src),
                    dst,
                    proto,
                    dport,
                    direction,
                    in_interface,
                    out_interface,
                    established,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn explain_agrees_with_reference(
        rules in prop::collection::vec(arb_rule(), 0..12),
        defaults in (any::<bool>(), any::<bool>(), any::<bool>()),
        p in arb_probe(),
    ) {
        let mut policy = ok("").policy;
        let act = |deny: bool| if deny { Action::Deny } else { Action::Accept };
        policy.defaults.default_action = act(defaults.0);
        policy.defaults.input_action = act(defaults.1);
        policy.defaults.output_action = act(defaults.2);
        policy.rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule { id: format!("r{i}"), ..r })
            .collect();
        let (want_action, want_index) = reference(&policy, &p);
        let e = explain(&policy, &p);
        prop_assert_eq!(e.verdict.action, want_action);
        prop_assert_eq!(e.verdict.rule_index, want_index);
        match want_index {
            Some(i) => {
                prop_assert_eq!(&e.verdict.rule_id, &policy.rules[i].id);
                let reason = (want_action == Action::Deny).then_some("explicit_deny");
                prop_assert_eq!(e.verdict.drop_reason, reason);
                // rule_matches agrees on every rule considered.
                prop_assert!(rule_matches(&policy.rules[i], &p).is_ok());
            }
            None => {
                let (id, reason) = match want_action {
                    Action::Accept => ("default-accept", None),
                    Action::Deny => ("default-deny", Some("no_matching_allow_rule")),
                };
                prop_assert_eq!(e.verdict.rule_id.as_str(), id);
                prop_assert_eq!(e.verdict.drop_reason, reason);
            }
        }
        // One step per rule whose direction applies, up to the decision, plus the default line.
        let upto = want_index.map_or(policy.rules.len(), |i| i + 1);
        let considered = policy.rules[..upto]
            .iter()
            .filter(|r| direction_applies(r.direction, p.direction))
            .count();
        prop_assert_eq!(e.steps.len(), considered + usize::from(want_index.is_none()));
    }
}

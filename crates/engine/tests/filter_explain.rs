//! `Filter::classify` against `policy::explain`, the reference meaning of a policy: random
//! policies and random packets must get the same deciding rule (or the same default).
//!
//! Learned `destination_fqdn` addresses are checked the same way: the reference policy is the
//! random one with each such rule's destination replaced by the addresses live for it.

#![cfg(feature = "std")]

use engine::core::filter::{Action, Filter, FlowKey, IfaceId, Verdict};
use ipnet::IpNet;
use policy::{
    explain, Direction, Explanation, FqdnPattern, Policy, PortRange, Probe, Protocol, Rule, Span,
    State, Target,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Nested, adjacent and overlapping prefixes of both families, the extremes included.
const NETS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "10.1.2.4/31",
    "10.1.2.128/25",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "0.0.0.0/32",
    "255.255.255.255/32",
    "fd00::/8",
    "fd00::/64",
    "fd00::1/128",
    "2001:db8::/32",
    "::/0",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
];
/// Inside, beside and outside those prefixes.
const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.1.2.5",
    "10.1.2.127",
    "10.1.2.128",
    "10.2.0.1",
    "192.168.1.1",
    "8.8.8.8",
    "0.0.0.0",
    "255.255.255.255",
    "fd00::1",
    "fd00::2",
    "fd00:0:0:1::1",
    "2001:db8::1",
    "::1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
];
const PORT_RANGES: &[(u16, u16)] = &[
    (22, 22),
    (53, 53),
    (80, 80),
    (443, 443),
    (1, 1024),
    (1000, 2000),
    (8000, 8080),
    (65535, 65535),
    (1, 65535),
    (2000, 2000),
];
/// Range ends and their neighbours; 0 is a port no rule can name.
const PORTS: &[u16] = &[
    0, 1, 22, 53, 80, 443, 999, 1000, 1024, 1025, 2000, 2001, 8080, 8081, 65534, 65535,
];
const PROTOCOLS: &[Protocol] = &[
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmp,
    Protocol::Icmpv6,
];
const DIRECTIONS: &[Direction] = &[
    Direction::Ingress,
    Direction::Egress,
    Direction::Input,
    Direction::Output,
];
const IFACES: &[&str] = &["eth0", "eth1", "eth2"];
/// No interface, the named ones, and one no rule names.
const PROBE_IFACES: &[Option<&str>] =
    &[None, Some("eth0"), Some("eth1"), Some("eth2"), Some("eth9")];

const NOW: u64 = 1_000;

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn base_policy() -> Policy {
    match policy::parse_str("rules: []\n", "prop.yaml") {
        Ok(c) => c.policy,
        Err(e) => panic!("{e}"),
    }
}

fn action(accept: bool) -> policy::Action {
    if accept {
        policy::Action::Accept
    } else {
        policy::Action::Deny
    }
}

/// A rule over the small space above, valid as the validator would have it: ports only for
/// tcp, udp or no protocol; a destination or a destination_fqdn, not both.
fn rule() -> impl Strategy<Value = Rule> {
    (
        (
            any::<bool>(),
            prop::option::weighted(0.6, select(DIRECTIONS)),
            prop::collection::vec(select(NETS), 0..3),
            prop::collection::vec(select(NETS), 0..3),
            prop::bool::weighted(0.2),
        ),
        (
            prop::collection::vec(select(PORT_RANGES), 0..3),
            prop::option::weighted(0.5, select(PROTOCOLS)),
            prop::bool::weighted(0.2),
            prop::option::weighted(0.2, select(IFACES)),
            prop::option::weighted(0.2, select(IFACES)),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((accept, direction, src, dst, fqdn), (ports, protocol, state, iif, oif, log))| {
                let ports = if protocol.is_none_or(|p| p.has_ports()) {
                    ports
                } else {
                    Vec::new()
                };
                let (destination, destination_fqdn) = if fqdn {
                    (Vec::new(), vec![FqdnPattern::Exact("example.com".into())])
                } else {
                    (dst.into_iter().map(net).collect(), Vec::new())
                };
                Rule {
                    id: String::new(),
                    name: None,
                    action: action(accept),
                    direction,
                    source: src.into_iter().map(net).collect(),
                    destination,
                    destination_fqdn,
                    destination_port: ports
                        .into_iter()
                        .map(|(lo, hi)| PortRange { lo, hi })
                        .collect(),
                    protocol,
                    state: state.then_some(State::Established),
                    in_interface: iif.map(String::from),
                    out_interface: oif.map(String::from),
                    log,
                    span: Span::default(),
                }
            },
        )
}

fn policy_of(mut rules: Vec<Rule>, defaults: (bool, bool, bool)) -> Policy {
    for (i, r) in rules.iter_mut().enumerate() {
        r.id = format!("r{i}");
    }
    let mut p = base_policy();
    p.defaults.default_action = action(defaults.0);
    p.defaults.input_action = action(defaults.1);
    p.defaults.output_action = action(defaults.2);
    p.rules = rules;
    p
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        select(ADDRS),
        select(ADDRS),
        select(PROTOCOLS),
        select(PORTS),
        select(DIRECTIONS),
        select(PROBE_IFACES),
        select(PROBE_IFACES),
        any::<bool>(),
    )
        .prop_map(
            |(src, dst, proto, port, direction, iif, oif, established)| Probe {
                src: addr(src),
                dst: Target::Ip(addr(dst)),
                proto,
                // What a packet has: a port for tcp and udp, none otherwise.
                dport: proto.has_ports().then_some(port),
                direction,
                in_interface: iif.map(String::from),
                out_interface: oif.map(String::from),
                established,
            },
        )
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp => 1,
        Protocol::Icmpv6 => 58,
    }
}

fn flow_key(filter: &Filter, probe: &Probe) -> FlowKey {
    let Target::Ip(dst) = probe.dst else {
        panic!("packets have addresses")
    };
    let iface = |name: &Option<String>| {
        name.as_deref()
            .map_or(IfaceId::UNLISTED, |n| filter.iface(n))
    };
    FlowKey {
        direction: probe.direction.into(),
        src: probe.src,
        dst,
        proto: proto_number(probe.proto),
        dport: probe.dport,
        in_iface: iface(&probe.in_interface),
        out_iface: iface(&probe.out_interface),
        established: probe.established,
    }
}

fn same_decision(
    filter: &Filter,
    verdict: &Verdict,
    reference: &Explanation,
) -> Result<(), String> {
    let want = &reference.verdict;
    let action = match want.action {
        policy::Action::Accept => Action::Accept,
        policy::Action::Deny => Action::Deny,
    };
    let got = (
        verdict.rule.map(|r| r as usize),
        verdict.action,
        filter.rule_id(verdict).to_string(),
        verdict.drop_reason().map(|r| r.as_str()),
    );
    let expected = (
        want.rule_index,
        action,
        want.rule_id.clone(),
        want.drop_reason,
    );
    if got == expected {
        Ok(())
    } else {
        Err(format!("filter: {got:?}\nexplain: {expected:?}"))
    }
}

fn describe(policy: &Policy) -> String {
    let mut out = format!(
        "defaults: forward {:?}, input {:?}, output {:?}\n",
        policy.defaults.default_action, policy.defaults.input_action, policy.defaults.output_action
    );
    for r in &policy.rules {
        out.push_str(&format!("{r:?}\n"));
    }
    out
}

/// A learned-table operation on the n-th `destination_fqdn` rule.
#[derive(Clone, Debug)]
enum Learn {
    Add {
        rule: Index,
        addr: &'static str,
        expires: u64,
    },
    Forget {
        rule: Index,
        addr: &'static str,
    },
}

fn learn_op() -> impl Strategy<Value = Learn> {
    prop_oneof![
        3 => (any::<Index>(), select(ADDRS), (NOW - 5)..(NOW + 5))
            .prop_map(|(rule, addr, expires)| Learn::Add { rule, addr, expires }),
        1 => (any::<Index>(), select(ADDRS)).prop_map(|(rule, addr)| Learn::Forget { rule, addr }),
    ]
}

/// Applies the operations to the filter, and returns the policy `explain` should read: each
/// `destination_fqdn` rule with live addresses now names them as its destination.
fn learn_and_reference(filter: &mut Filter, policy: &Policy, ops: &[Learn]) -> Policy {
    let fqdn_rules: Vec<usize> = (0..policy.rules.len())
        .filter(|&i| !policy.rules[i].destination_fqdn.is_empty())
        .collect();
    let mut live: BTreeMap<(usize, IpAddr), u64> = BTreeMap::new();
    if !fqdn_rules.is_empty() {
        for op in ops {
            match op {
                Learn::Add {
                    rule,
                    addr: a,
                    expires,
                } => {
                    let r = *rule.get(&fqdn_rules);
                    assert!(filter.learn(r as u32, addr(a), *expires));
                    live.insert((r, addr(a)), *expires);
                }
                Learn::Forget { rule, addr: a } => {
                    let r = *rule.get(&fqdn_rules);
                    filter.forget(r as u32, addr(a));
                    live.remove(&(r, addr(a)));
                }
            }
        }
    }
    let mut reference = policy.clone();
    for ((r, a), expires) in live {
        if NOW < expires {
            let rule = &mut reference.rules[r];
            rule.destination_fqdn.clear();
            rule.destination.push(IpNet::from(a));
        }
    }
    reference
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Up to 150 rules: several rule words, so summaries and ranks are exercised too.
    #[test]
    fn classify_agrees_with_explain(
        rules in prop::collection::vec(rule(), 0..150),
        defaults in any::<(bool, bool, bool)>(),
        learned in prop::collection::vec(learn_op(), 0..24),
        probes in prop::collection::vec(probe(), 32),
    ) {
        let policy = policy_of(rules, defaults);
        let mut filter = Filter::compile(&policy);
        let reference = learn_and_reference(&mut filter, &policy, &learned);
        for probe in &probes {
            let verdict = filter.classify(&flow_key(&filter, probe), NOW);
            let expl = explain(&reference, probe);
            if let Err(why) = same_decision(&filter, &verdict, &expl) {
                prop_assert!(
                    false,
                    "{why}\nprobe: {probe:?}\nlearned: {learned:?}\npolicy:\n{}explain:\n{}",
                    describe(&reference),
                    expl.steps.join("\n")
                );
            }
        }
    }
}

/// A big-policy rule: specific enough that few rules match a packet, so the decider is often
/// deep in the list. Fields: (src host, dst host, port, protocol, direction, wildcard bits).
type Compact = (u16, u16, u16, usize, usize, u8);

fn big_rule(c: &Compact) -> Rule {
    let &(src, dst, port, proto, direction, wild) = c;
    let host = |base: [u8; 2], n: u16| {
        IpNet::from(IpAddr::from([base[0], base[1], (n >> 8) as u8, n as u8]))
    };
    let protocol = PROTOCOLS[proto % PROTOCOLS.len()];
    Rule {
        id: String::new(),
        name: None,
        action: action(port % 3 != 0),
        direction: (wild & 1 == 0).then_some(DIRECTIONS[direction % DIRECTIONS.len()]),
        source: if wild & 2 == 0 {
            vec![host([10, 0], src)]
        } else {
            Vec::new()
        },
        destination: if wild & 4 == 0 {
            vec![host([172, 16], dst)]
        } else {
            Vec::new()
        },
        destination_fqdn: Vec::new(),
        destination_port: if protocol.has_ports() && wild & 8 == 0 {
            vec![PortRange { lo: port, hi: port }]
        } else {
            Vec::new()
        },
        protocol: Some(protocol),
        state: None,
        in_interface: None,
        out_interface: None,
        log: false,
        span: Span::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// More than 4,096 rules: more than one summary word. Each probe is built from one rule's
    /// own fields (sometimes nudged off them), so deciders land all over the list.
    #[test]
    fn classify_agrees_with_explain_on_thousands_of_rules(
        compact in prop::collection::vec(
            (0u16..64, 0u16..64, 1u16..40, 0usize..4, 0usize..4, prop::num::u8::ANY.prop_map(|w| if w < 16 { w & 0xf } else { 0 })),
            4100..6000,
        ),
        picks in prop::collection::vec((any::<Index>(), 0u16..3), 48),
    ) {
        let rules: Vec<Rule> = compact.iter().map(big_rule).collect();
        let policy = policy_of(rules, (false, false, true));
        let filter = Filter::compile(&policy);
        for (pick, nudge) in &picks {
            let &(src, dst, port, proto, direction, _) = pick.get(&compact);
            let protocol = PROTOCOLS[proto % PROTOCOLS.len()];
            let probe = Probe {
                src: IpAddr::from([10, 0, (src >> 8) as u8, src as u8]),
                dst: Target::Ip(IpAddr::from([172, 16, 0, (dst + nudge) as u8])),
                proto: protocol,
                dport: protocol.has_ports().then_some(port + nudge),
                direction: DIRECTIONS[direction % DIRECTIONS.len()],
                in_interface: None,
                out_interface: None,
                established: false,
            };
            let verdict = filter.classify(&flow_key(&filter, &probe), NOW);
            let expl = explain(&policy, &probe);
            if let Err(why) = same_decision(&filter, &verdict, &expl) {
                prop_assert!(false, "{why}\nprobe: {probe:?}");
            }
        }
    }
}

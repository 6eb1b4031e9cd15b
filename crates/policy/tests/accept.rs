//! Files that must be accepted, and exactly what they mean: a thurward-only file, a file using
//! every ward extension, defaults, and the scalar forms (443 vs "443", bare IPs, nulls).

mod common;
use common::{ok, warnings_text};
use ipnet::IpNet;
use policy::*;
use std::net::{IpAddr, SocketAddr};

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}
fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}
fn sock(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}
fn pr(lo: u16, hi: u16) -> PortRange {
    PortRange { lo, hi }
}
fn fq(s: &str) -> FqdnPattern {
    FqdnPattern::parse(s).expect("test pattern")
}

fn base_rule(id: &str, action: Action, line: u32) -> Rule {
    Rule {
        id: id.into(),
        name: None,
        action,
        direction: None,
        source: vec![],
        destination: vec![],
        destination_fqdn: vec![],
        destination_port: vec![],
        protocol: None,
        state: None,
        in_interface: None,
        out_interface: None,
        log: false,
        span: Span { line, col: 5 },
    }
}

/// Only what thurward's schema has (no field marked (ext) in SPEC §2).
const THURWARD: &str = r#"
defaults:
  default_action: deny
  upstream_dns: 9.9.9.9
  dns_qps_per_client: 50
  conntrack_timeouts: {tcp_syn_sent: 20, tcp_established: 7200, tcp_time_wait: 30,
                       udp_idle: 45, icmp_echo: 10}
  flow_trace_sample_accept: 0.5
  flow_trace_sample_drop: 1
rules:
  - id: allow-github-https
    name: "HTTPS to GitHub"
    action: accept
    direction: egress
    source: 192.168.1.0/24
    destination_fqdn: [github.com, "*.githubusercontent.com"]
    destination_port: 443
    protocol: tcp
  - id: dns-out
    action: accept
    direction: egress
    source: 192.168.1.53
    destination: 9.9.9.9
    destination_port: "53"
    protocol: udp
  - id: high-ports
    action: accept
    direction: egress
    destination_port: "1024-65535"
    protocol: tcp
  - id: ping
    action: accept
    protocol: icmp
  - id: replies
    action: accept
    direction: ingress
    state: established
  - id: block-bad
    action: deny
    destination: 203.0.113.5
nat:
  snat:
    - out_interface: eth0
      source: 192.168.1.0/24
      masquerade: true
  dnat:
    - wan_ip: 203.0.113.1
      wan_port: 8080
      to: "192.168.1.10:80"
      proto: tcp
      from: 0.0.0.0/0
"#;

#[test]
fn thurward_file_same_meaning() {
    let c = ok(THURWARD);
    let mut r0 = base_rule("allow-github-https", Action::Accept, 10);
    r0.name = Some("HTTPS to GitHub".into());
    r0.direction = Some(Direction::Egress);
    r0.source = vec![net("192.168.1.0/24")];
    r0.destination_fqdn = vec![
        FqdnPattern::Exact("github.com".into()),
        FqdnPattern::OneLabel("githubusercontent.com".into()),
    ];
    r0.destination_port = vec![pr(443, 443)];
    r0.protocol = Some(Protocol::Tcp);
    let mut r1 = base_rule("dns-out", Action::Accept, 18);
    r1.direction = Some(Direction::Egress);
    r1.source = vec![net("192.168.1.53/32")];
    r1.destination = vec![net("9.9.9.9/32")];
    r1.destination_port = vec![pr(53, 53)];
    r1.protocol = Some(Protocol::Udp);
    let mut r2 = base_rule("high-ports", Action::Accept, 25);
    r2.direction = Some(Direction::Egress);
    r2.destination_port = vec![pr(1024, 65535)];
    r2.protocol = Some(Protocol::Tcp);
    let mut r3 = base_rule("ping", Action::Accept, 30);
    r3.protocol = Some(Protocol::Icmp);
    let mut r4 = base_rule("replies", Action::Accept, 33);
    r4.direction = Some(Direction::Ingress);
    r4.state = Some(State::Established);
    let mut r5 = base_rule("block-bad", Action::Deny, 37);
    r5.destination = vec![net("203.0.113.5/32")];

    let expected = Policy {
        defaults: Defaults {
            default_action: Action::Deny,
            input_action: Action::Deny,
            output_action: Action::Accept,
            icmp_essentials: true,
            upstream_dns: vec![sock("9.9.9.9:53")],
            dns_qps_per_client: 50,
            conntrack_timeouts: ConntrackTimeouts {
                tcp_syn_sent: 20,
                tcp_established: 7200,
                tcp_time_wait: 30,
                udp_idle: 45,
                icmp_echo: 10,
            },
            flow_trace_sample_accept: 0.5,
            flow_trace_sample_drop: 1.0,
        },
        interfaces: None,
        dns: DnsSettings::default(),
        rules: vec![r0, r1, r2, r3, r4, r5],
        nat: Nat {
            snat: vec![Snat {
                out_interface: "eth0".into(),
                source: net("192.168.1.0/24"),
                to: SnatTo::Masquerade,
                span: Span { line: 42, col: 7 },
            }],
            dnat: vec![Dnat {
                wan_ip: ip("203.0.113.1"),
                wan_port: 8080,
                to: sock("192.168.1.10:80"),
                proto: NatProto::Tcp,
                from: Some(net("0.0.0.0/0")),
                span: Span { line: 46, col: 7 },
            }],
        },
    };
    assert_eq!(c.policy, expected);
    // SNAT names the WAN side, so this is not host mode and nothing shadows anything.
    assert_eq!(
        c.policy.topology(),
        Topology::SnatWan {
            wan: vec!["eth0".into()]
        }
    );
    assert!(c.warnings.is_empty(), "{}", warnings_text(&c));
}

const EXTENDED: &str = r#"
defaults:
  default_action: accept
  input_action: accept
  output_action: deny
  icmp_essentials: false
  upstream_dns: [1.1.1.1, "9.9.9.9:5353", "2606:4700::1111", "[2001:db8::53]:53"]
interfaces:
  lan: [eth1, eth2]
  wan: eth0
dns:
  listen: [192.168.1.1, "192.168.1.1:5353", "[fd00::1]:53"]
  intercept: false
  unlisted: nxdomain
  min_ttl: 10
  max_ttl: 3600
  max_ips_per_name: 16
  capacity: 1000
rules:
  - id: v6-web
    action: accept
    direction: egress
    source: ["fd00::/64", 192.168.1.0/24]
    destination_fqdn: .example.com
    destination_port: [80, 443, "8000-8999"]
    in_interface: eth1
    out_interface: eth0
    log: true
  - id: nd
    action: accept
    direction: input
    protocol: icmpv6
    source: "fe80::/10"
    in_interface: eth1
  - id: mgmt-out
    action: accept
    direction: output
    out_interface: eth0
    destination: "2001:db8::1"
  - id: nothing-else
    action: deny
    name: ~
    log: false
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
      external_ip: 203.0.113.10
      port_range: {min: 16384, max: 60999}
      masquerade: false
  dnat:
    - wan_ip: "2001:db8::1"
      wan_port: 443
      to: "[fd00::10]:8443"
      proto: udp
"#;

#[test]
fn extended_file() {
    let c = ok(EXTENDED);
    let p = &c.policy;
    assert_eq!(p.defaults.default_action, Action::Accept);
    assert_eq!(p.defaults.input_action, Action::Accept);
    assert_eq!(p.defaults.output_action, Action::Deny);
    assert!(!p.defaults.icmp_essentials);
    assert_eq!(
        p.defaults.upstream_dns,
        vec![
            sock("1.1.1.1:53"),
            sock("9.9.9.9:5353"),
            sock("[2606:4700::1111]:53"),
            sock("[2001:db8::53]:53"),
        ]
    );
    assert_eq!(
        p.interfaces,
        Some(Interfaces {
            lan: vec!["eth1".into(), "eth2".into()],
            wan: vec!["eth0".into()],
        })
    );
    assert_eq!(
        p.dns,
        DnsSettings {
            listen: vec![
                sock("192.168.1.1:53"),
                sock("192.168.1.1:5353"),
                sock("[fd00::1]:53"),
            ],
            intercept: Some(false),
            unlisted: Unlisted::Nxdomain,
            min_ttl: 10,
            max_ttl: 3600,
            max_ips_per_name: 16,
            capacity: 1000,
        }
    );
    let r = &p.rules[0];
    assert_eq!(r.source, vec![net("fd00::/64"), net("192.168.1.0/24")]);
    assert_eq!(r.destination_fqdn, vec![fq(".example.com")]);
    assert_eq!(
        r.destination_port,
        vec![pr(80, 80), pr(443, 443), pr(8000, 8999)]
    );
    assert_eq!(r.in_interface.as_deref(), Some("eth1"));
    assert_eq!(r.out_interface.as_deref(), Some("eth0"));
    assert!(r.log);
    assert_eq!(p.rules[1].protocol, Some(Protocol::Icmpv6));
    assert_eq!(p.rules[1].direction, Some(Direction::Input));
    assert_eq!(p.rules[2].destination, vec![net("2001:db8::1/128")]);
    assert_eq!(p.rules[3].name, None);
    assert_eq!(
        p.nat.snat[0].to,
        SnatTo::Address {
            ip: ip("203.0.113.10"),
            port_range: Some(pr(16384, 60999)),
        }
    );
    assert_eq!(p.nat.dnat[0].to, sock("[fd00::10]:8443"));
    assert_eq!(p.nat.dnat[0].proto, NatProto::Udp);
    assert!(c.warnings.is_empty(), "{}", warnings_text(&c));
}

#[test]
fn empty_and_comment_only_files_are_default_policies() {
    for text in [
        "",
        "# nothing yet\n",
        "---\n",
        "rules:\n",
        "rules: []\nnat:\ndefaults:\n",
    ] {
        let c = ok(text);
        assert!(c.policy.rules.is_empty());
        assert_eq!(c.policy.defaults.default_action, Action::Deny);
        assert_eq!(c.policy.defaults.input_action, Action::Deny);
        assert_eq!(c.policy.defaults.output_action, Action::Accept);
        assert!(c.policy.defaults.icmp_essentials);
        assert_eq!(c.policy.defaults.dns_qps_per_client, 100);
        assert_eq!(
            c.policy.defaults.conntrack_timeouts,
            ConntrackTimeouts::default()
        );
        assert_eq!(c.policy.defaults.flow_trace_sample_accept, 0.01);
        assert_eq!(c.policy.defaults.flow_trace_sample_drop, 1.0);
        assert_eq!(c.policy.dns, DnsSettings::default());
        assert_eq!(c.policy.nat, Nat::default());
        assert_eq!(c.policy.topology(), Topology::Host);
    }
}

#[test]
fn partial_conntrack_timeouts_keep_other_defaults() {
    let c = ok("defaults:\n  conntrack_timeouts:\n    udp_idle: 120\n");
    assert_eq!(
        c.policy.defaults.conntrack_timeouts,
        ConntrackTimeouts {
            udp_idle: 120,
            ..ConntrackTimeouts::default()
        }
    );
}

#[test]
fn port_int_and_string_are_the_same() {
    let a = ok("interfaces: {lan: a, wan: b}\nrules:\n  - {id: a, action: accept, destination_port: 443}\n");
    let b = ok("interfaces: {lan: a, wan: b}\nrules:\n  - {id: a, action: accept, destination_port: \"443\"}\n");
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.policy.rules[0].destination_port, vec![pr(443, 443)]);
}

#[test]
fn bare_ips_become_host_prefixes() {
    let c = ok(r#"
interfaces: {lan: a, wan: b}
rules:
  - id: a
    action: accept
    source: 10.1.2.3
  - id: b
    action: accept
    destination: "2001:db8::5"
"#);
    assert_eq!(c.policy.rules[0].source, vec![net("10.1.2.3/32")]);
    assert_eq!(c.policy.rules[1].destination, vec![net("2001:db8::5/128")]);
}

#[test]
fn host_bits_are_cleared_with_a_warning() {
    let c = ok(r#"
interfaces: {lan: a, wan: b}
rules:
  - id: a
    action: accept
    source: [192.168.1.5/24, "2001:db8::1/32"]
"#);
    assert_eq!(
        c.policy.rules[0].source,
        vec![net("192.168.1.0/24"), net("2001:db8::/32")]
    );
    let w = warnings_text(&c);
    assert!(
        w.contains("rules.yaml:5:14: rules[0].source[0]: 192.168.1.5/24 has host bits set; it means 192.168.1.0/24"),
        "{w}"
    );
    assert!(
        w.contains("rules[0].source[1]: 2001:db8::1/32 has host bits set; it means 2001:db8::/32"),
        "{w}"
    );
}

#[test]
fn host_mode_warns_about_forwarding_directions() {
    let c = ok(r#"
rules:
  - id: fwd
    action: accept
    source: 10.0.0.0/8
  - id: in
    action: accept
    direction: input
  - id: eg
    action: accept
    direction: egress
"#);
    let w = warnings_text(&c);
    assert!(
        w.contains("rules.yaml:2:5: rules[0]: rule 'fwd': direction ingress/egress matches forwarded traffic in either direction without `interfaces`"),
        "{w}"
    );
    assert!(
        w.contains("rules[2]: rule 'eg': direction ingress/egress"),
        "{w}"
    );
    assert!(!w.contains("'in'"), "{w}");
    assert_eq!(c.warnings.len(), 2, "{w}");
}

#[test]
fn anchors_and_aliases_within_budget_work() {
    let c = ok(r#"
interfaces: {lan: a, wan: b}
rules:
  - id: a
    action: accept
    source: &lan [192.168.1.0/24, 192.168.2.0/24]
    destination_port: 22
  - id: b
    action: accept
    source: *lan
    destination_port: 80
"#);
    assert_eq!(c.policy.rules[0].source, c.policy.rules[1].source);
}

/// Rules are checked while the parser reads them, except in a `rules` list with an anchor,
/// which is kept whole: both ways give the same policy, and the same errors.
#[test]
fn rules_checked_while_parsing_or_kept_whole_give_the_same_policy() {
    let body = r#"
  - &first {id: a, action: accept, destination_port: 22}
  - {id: b, action: deny, source: 10.0.0.0/8}
  - id: c
    action: accept
    protocol: *first
"#;
    let streamed = format!("interfaces: {{lan: a, wan: b}}\nrules:{body}");
    let whole = format!("interfaces: {{lan: a, wan: b}}\nrules: &all{body}");
    let bad = common::errors(&streamed);
    assert_eq!(bad, common::errors(&whole));
    assert!(bad.iter().any(|d| d.path == "rules[2].protocol"), "{bad:?}");
    let (streamed, whole) = (
        streamed.replace("protocol: *first", "protocol: tcp"),
        whole.replace("protocol: *first", "protocol: tcp"),
    );
    assert_eq!(ok(&streamed).policy.rules, ok(&whole).policy.rules);
    let ids: Vec<String> = ok(&streamed)
        .policy
        .rules
        .iter()
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn nulls_mean_omitted_for_optional_keys() {
    let c = ok(r#"
interfaces: {lan: a, wan: b}
rules:
  - id: a
    action: accept
    name: null
    source: ~
    protocol:
    log:
"#);
    let r = &c.policy.rules[0];
    assert_eq!(
        (r.name.clone(), r.source.len(), r.protocol, r.log),
        (None, 0, None, false)
    );
}

#[test]
fn diagnostics_name_the_file() {
    match parse_str("rules: 5\n", "/etc/ward/rules.yaml") {
        Ok(_) => panic!("accepted"),
        Err(e) => assert_eq!(
            e.to_string(),
            "/etc/ward/rules.yaml:1:8: rules: expected a list of rules, got 5"
        ),
    }
}

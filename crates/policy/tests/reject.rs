//! Every rejection the schema makes, each asserting the exact line:col, key path and message.

mod common;
use common::{errors, has_err, only_err};

// ----- unknown and duplicate keys, wrong YAML types -----

#[test]
fn unknown_key_top_level_lists_allowed() {
    only_err(
        r#"
rule:
  - id: a
"#,
        1,
        1,
        "rule",
        "unknown key 'rule'; allowed: defaults, interfaces, dns, rules, nat",
    );
}

#[test]
fn unknown_key_in_every_section() {
    let errs = errors(
        r#"
defaults:
  default_acton: deny
  conntrack_timeouts: {tcp_syn: 3}
interfaces: {lan: [eth1], wan: [eth0], dmz: [eth2]}
dns:
  listen_on: 1.2.3.4
rules:
  - id: a
    action: accept
    port: 22
nat:
  snat:
    - {out_interface: eth0, source: 10.0.0.0/8, masquerade: true, random: true}
    - out_interface: eth0
      source: 10.0.0.0/8
      external_ip: 1.2.3.4
      port_range: {min: 1, max: 2, step: 1}
  dnat:
    - {wan_ip: 1.2.3.4, wan_port: 80, to: "10.0.0.1:80", proto: tcp, note: x}
  masq: []
"#,
    );
    has_err(
        &errs,
        2,
        3,
        "defaults.default_acton",
        "allowed: default_action,",
    );
    has_err(
        &errs,
        3,
        24,
        "defaults.conntrack_timeouts.tcp_syn",
        "allowed: tcp_syn_sent, tcp_established, tcp_time_wait, udp_idle, icmp_echo",
    );
    has_err(&errs, 4, 40, "interfaces.dmz", "allowed: lan, wan");
    has_err(&errs, 6, 3, "dns.listen_on", "allowed: listen, intercept,");
    has_err(&errs, 10, 5, "rules[0].port", "unknown key 'port'");
    has_err(
        &errs,
        13,
        67,
        "nat.snat[0].random",
        "allowed: out_interface,",
    );
    has_err(
        &errs,
        17,
        36,
        "nat.snat[1].port_range.step",
        "allowed: min, max",
    );
    has_err(&errs, 19, 70, "nat.dnat[0].note", "allowed: wan_ip,");
    has_err(&errs, 20, 3, "nat.masq", "allowed: snat, dnat");
    assert_eq!(errs.len(), 9, "{}", policy::PolicyErrors(errs.clone()));
}

#[test]
fn duplicate_mapping_key() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    action: deny
"#,
        4,
        5,
        "rules[0].action",
        "duplicate key 'action' (first given on line 3)",
    );
}

#[test]
fn merge_keys_are_named() {
    let errs = errors(
        r#"
rules:
  - id: a
    <<: {action: accept}
"#,
    );
    has_err(
        &errs,
        3,
        5,
        "rules[0].<<",
        "merge keys (<<) are not supported",
    );
    // The merged keys are not applied, so `action` really is missing.
    has_err(&errs, 2, 5, "rules[0]", "missing required key 'action'");
}

#[test]
fn wrong_types() {
    only_err(
        "rules: {a: 1}\n",
        1,
        8,
        "rules",
        "expected a list of rules, got a mapping",
    );
    only_err(
        "defaults: [1]\n",
        1,
        11,
        "defaults",
        "expected a mapping, got a list",
    );
    only_err(
        "rules: [abc]\n",
        1,
        9,
        "rules[0]",
        "expected a mapping, got abc",
    );
    only_err("- 1\n", 1, 1, "", "expected a mapping, got a list");
    only_err(
        r#"
defaults:
  dns_qps_per_client: abc
"#,
        2,
        23,
        "defaults.dns_qps_per_client",
        "expected a positive integer, got abc",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: {a: 1}
"#,
        4,
        13,
        "rules[0].source",
        "expected an IP address or CIDR or a list of them, got a mapping",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: [[10.0.0.0/8]]
"#,
        4,
        14,
        "rules[0].source[0]",
        "expected an IP address or CIDR, got a list",
    );
    only_err(
        r#"
nat:
  snat: {out_interface: eth0}
"#,
        2,
        9,
        "nat.snat",
        "expected a list, got a mapping",
    );
}

#[test]
fn booleans_are_only_true_false() {
    for (value, col) in [("yes", 10), ("\"true\"", 10), ("1", 10), ("True", 10)] {
        only_err(
            &format!("rules:\n  - id: a\n    action: accept\n    log: {value}\n"),
            4,
            col,
            "rules[0].log",
            "expected true or false",
        );
    }
}

#[test]
fn yaml_syntax_error_has_position() {
    let errs = errors("rules:\n  - id: a\n    action: [accept\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 4, "{}", errs[0]);
    assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
}

// ----- addresses -----

#[test]
fn bad_ip() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: 999.1.1.1
"#,
        4,
        13,
        "rules[0].source",
        "expected an IP address or CIDR, got 999.1.1.1",
    );
}

#[test]
fn prefix_too_long() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    destination: [10.0.0.0/8, 10.0.0.0/33]
"#,
        4,
        31,
        "rules[0].destination[1]",
        "prefix length /33 is too long for IPv4 (at most /32)",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: "2001:db8::/129"
"#,
        4,
        13,
        "rules[0].source",
        "prefix length /129 is too long for IPv6 (at most /128)",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: 10.0.0.0/x
"#,
        4,
        13,
        "rules[0].source",
        "expected a prefix length 0-32",
    );
}

#[test]
fn empty_list_is_not_any() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: []
"#,
        4,
        13,
        "rules[0].source",
        "omit 'source' to match any address",
    );
}

// ----- ports -----

#[test]
fn port_zero_and_too_big() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    destination_port: 0
"#,
        4,
        23,
        "rules[0].destination_port",
        "expected a port 1-65535, got 0",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
  - id: b
    action: accept
    destination_port: [22, 70000]
"#,
        6,
        28,
        "rules[1].destination_port[1]",
        "expected a port 1-65535, got 70000",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    destination_port: "1-70000"
"#,
        4,
        23,
        "rules[0].destination_port",
        "expected a port 1-65535 or a range lo-hi, got 1-70000",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    destination_port: 44.3
"#,
        4,
        23,
        "rules[0].destination_port",
        "expected a port 1-65535, got 44.3",
    );
}

#[test]
fn port_range_reversed() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    destination_port: 2000-1000
"#,
        4,
        23,
        "rules[0].destination_port",
        "port range 2000-1000 starts above its end",
    );
}

#[test]
fn port_needs_tcp_or_udp() {
    for proto in ["icmp", "icmpv6"] {
        only_err(
            &format!(
                "rules:\n  - id: a\n    action: accept\n    protocol: {proto}\n    destination_port: 22\n"
            ),
            5,
            23,
            "rules[0].destination_port",
            &format!("destination_port needs protocol tcp or udp (or no protocol), not {proto}"),
        );
    }
}

// ----- enums -----

#[test]
fn unknown_enum_values_list_allowed() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    protocol: sctp
"#,
        4,
        15,
        "rules[0].protocol",
        "expected one of tcp, udp, icmp, icmpv6, got sctp",
    );
    only_err(
        r#"
rules:
  - id: a
    action: maybe
"#,
        3,
        13,
        "rules[0].action",
        "expected one of accept, deny, got maybe",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    direction: forward
"#,
        4,
        16,
        "rules[0].direction",
        "expected one of ingress, egress, input, output, got forward",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    state: new
"#,
        4,
        12,
        "rules[0].state",
        "expected one of established, got new",
    );
    only_err(
        "defaults:\n  input_action: drop\n",
        2,
        17,
        "defaults.input_action",
        "expected one of accept, deny, got drop",
    );
    only_err(
        "dns:\n  unlisted: refuse\n",
        2,
        13,
        "dns.unlisted",
        "expected one of forward, nxdomain, got refuse",
    );
}

// ----- ids -----

#[test]
fn missing_id() {
    only_err(
        r#"
rules:
  - action: accept
    name: x
"#,
        2,
        5,
        "rules[0]",
        "missing required key 'id'",
    );
    only_err(
        r#"
rules:
  - id:
    action: accept
"#,
        2,
        5,
        "rules[0].id",
        "'id' needs a value",
    );
}

#[test]
fn missing_action() {
    only_err(
        "rules:\n  - id: a\n",
        2,
        5,
        "rules[0]",
        "missing required key 'action'",
    );
}

#[test]
fn duplicate_id_names_first_line() {
    only_err(
        r#"
rules:
  - id: web
    action: accept
  - id: other
    action: accept
  - id: web
    action: deny
"#,
        6,
        9,
        "rules[2].id",
        "duplicate rule id 'web' (first used on line 2)",
    );
}

#[test]
fn default_verdict_ids_are_reserved() {
    for id in ["default-deny", "default-accept"] {
        only_err(
            &format!("rules:\n  - id: {id}\n    action: accept\n"),
            2,
            9,
            "rules[0].id",
            &format!("rule id '{id}' is reserved: ward reports the direction's default verdict under it; choose another id"),
        );
    }
}

#[test]
fn bad_id_format() {
    let long = format!("a{}", "b".repeat(64)); // 65 characters
    for bad in ["Web", "1web", "web_1", "-web", long.as_str(), "\"\""] {
        only_err(
            &format!("rules:\n  - id: {bad}\n    action: accept\n"),
            2,
            9,
            "rules[0].id",
            "expected an id of lowercase letters, digits and '-'",
        );
    }
    let max = format!("a{}", "b".repeat(63));
    common::ok(&format!("rules:\n  - id: {max}\n    action: accept\n"));
}

// ----- destination forms -----

#[test]
fn destination_and_fqdn_exclusive() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    destination: 1.2.3.4
    destination_fqdn: github.com
"#,
        5,
        5,
        "rules[0].destination_fqdn",
        "destination and destination_fqdn cannot be used together",
    );
}

#[test]
fn bad_fqdn_patterns() {
    let cases: &[(&str, &str)] = &[
        ("\"**.a.com\"", "only allowed as the whole first label"),
        ("\"a.*.com\"", "only allowed as the whole first label"),
        ("\"*\"", "'*' alone would match every name"),
        ("GitHub.com", "must be lowercase (write 'github.com')"),
        ("github.com.", "ends with a dot"),
        ("a..com", "empty label"),
        ("a_b.com", "only a-z, 0-9 and '-'"),
        ("-a.com", "starts or ends with '-'"),
        ("a-.com", "starts or ends with '-'"),
    ];
    for (bad, needle) in cases {
        only_err(
            &format!(
                "rules:\n  - id: a\n    action: accept\n    destination_fqdn: [ok.com, {bad}]\n"
            ),
            4,
            32,
            "rules[0].destination_fqdn[1]",
            needle,
        );
    }
    let long_label = format!("{}.com", "a".repeat(64));
    only_err(
        &format!("rules:\n  - id: a\n    action: accept\n    destination_fqdn: {long_label}\n"),
        4,
        23,
        "rules[0].destination_fqdn",
        "label of 64 characters; at most 63",
    );
    let long_name = format!("{}com", "abcdefghi.".repeat(25)); // 253 + 0 = 253
    common::ok(&format!(
        "rules:\n  - id: a\n    action: accept\n    destination_fqdn: {long_name}\n"
    ));
    let too_long = format!("{}comx", "abcdefghi.".repeat(25)); // 254
    only_err(
        &format!("rules:\n  - id: a\n    action: accept\n    destination_fqdn: {too_long}\n"),
        4,
        23,
        "rules[0].destination_fqdn",
        "254 characters long; at most 253",
    );
}

// ----- contradictions that can never match -----

#[test]
fn interface_contradicts_direction() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    direction: input
    out_interface: eth0
"#,
        5,
        20,
        "rules[0].out_interface",
        "direction input never has an out_interface",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    direction: output
    in_interface: eth0
"#,
        5,
        19,
        "rules[0].in_interface",
        "direction output never has an in_interface",
    );
}

#[test]
fn address_family_mix() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    source: 10.0.0.0/8
    destination: "2001:db8::/32"
"#,
        5,
        18,
        "rules[0].destination",
        "different address families",
    );
    // A mixed list can match either family, so it is fine.
    common::ok(
        r#"
interfaces: {lan: [eth1], wan: [eth0]}
rules:
  - id: a
    action: accept
    source: [10.0.0.0/8, "2001:db8::/32"]
    destination: "2001:db8::/32"
"#,
    );
}

#[test]
fn icmp_family_mismatch() {
    only_err(
        r#"
rules:
  - id: a
    action: accept
    protocol: icmp
    destination: "2001:db8::1"
"#,
        4,
        15,
        "rules[0].protocol",
        "protocol icmp is IPv4 but the addresses are IPv6; use icmpv6",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    protocol: icmpv6
    source: 192.168.0.0/16
"#,
        4,
        15,
        "rules[0].protocol",
        "protocol icmpv6 is IPv6 but the addresses are IPv4; use icmp",
    );
}

// ----- interfaces / dns / defaults -----

#[test]
fn interface_rules() {
    only_err(
        "interfaces:\n  lan: [eth0, eth1]\n  wan: eth1\n",
        3,
        8,
        "interfaces.wan",
        "interface eth1 is listed in both lan and wan",
    );
    only_err(
        "interfaces:\n  lan: [averyveryverylong0]\n  wan: eth1\n",
        2,
        9,
        "interfaces.lan[0]",
        "interface names are 1-15 characters",
    );
    only_err(
        "interfaces:\n  lan: [eth1, \"a/b\"]\n  wan: eth0\n",
        2,
        15,
        "interfaces.lan[1]",
        "contains '/'",
    );
    only_err(
        "interfaces:\n  lan: eth1\n  wan: 'e\"th0'\n",
        3,
        8,
        "interfaces.wan",
        "contains '\"', which nftables cannot match",
    );
    only_err(
        "interfaces:\n  lan: eth1\n  wan: '@up'\n",
        3,
        8,
        "interfaces.wan",
        "starts with '@', which nftables reads as a set name",
    );
    only_err(
        "interfaces:\n  lan: \"eth 1\"\n  wan: eth0\n",
        2,
        8,
        "interfaces.lan",
        "contains ' '",
    );
    only_err(
        "interfaces:\n  lan: eth1\n",
        2,
        3,
        "interfaces",
        "missing required key 'wan'",
    );
    only_err(
        r#"
rules:
  - id: a
    action: accept
    in_interface: "this-is-too-long"
"#,
        4,
        19,
        "rules[0].in_interface",
        "interface names are 1-15 characters",
    );
}

#[test]
fn dns_rules() {
    only_err(
        "dns:\n  min_ttl: 600\n  max_ttl: 60\n",
        3,
        12,
        "dns.max_ttl",
        "min_ttl (600) must not be greater than max_ttl (60)",
    );
    only_err(
        "dns:\n  capacity: 0\n",
        2,
        13,
        "dns.capacity",
        "expected a positive integer",
    );
    only_err(
        "dns:\n  listen: [\"1.2.3.4:99999\"]\n",
        2,
        12,
        "dns.listen[0]",
        "expected an IP or IP:port",
    );
    only_err(
        "dns:\n  intercept: maybe\n",
        2,
        14,
        "dns.intercept",
        "expected true or false, got maybe",
    );
}

#[test]
fn defaults_rules() {
    only_err(
        "defaults:\n  flow_trace_sample_drop: 1.5\n",
        2,
        27,
        "defaults.flow_trace_sample_drop",
        "expected a number from 0.0 to 1.0, got 1.5",
    );
    only_err(
        "defaults:\n  flow_trace_sample_accept: nan\n",
        2,
        29,
        "defaults.flow_trace_sample_accept",
        "expected a number from 0.0 to 1.0",
    );
    only_err(
        "defaults:\n  conntrack_timeouts:\n    tcp_established: 0\n",
        3,
        22,
        "defaults.conntrack_timeouts.tcp_established",
        "expected a positive integer",
    );
    only_err(
        "defaults:\n  upstream_dns: [1.1.1.1, 1.1.1.1.1]\n",
        2,
        27,
        "defaults.upstream_dns[1]",
        "expected an IP or IP:port",
    );
    only_err(
        "defaults:\n  upstream_dns: \"[::1]:0\"\n",
        2,
        17,
        "defaults.upstream_dns",
        "port 0 is not allowed",
    );
}

// ----- NAT -----

#[test]
fn snat_masquerade_xor_external_ip() {
    only_err(
        r#"
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
      masquerade: true
      external_ip: 203.0.113.1
"#,
        6,
        7,
        "nat.snat[0].external_ip",
        "exactly one of masquerade: true or external_ip, not both",
    );
    only_err(
        r#"
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
"#,
        3,
        7,
        "nat.snat[0]",
        "needs exactly one of masquerade: true or external_ip",
    );
    only_err(
        r#"
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
      masquerade: false
"#,
        3,
        7,
        "nat.snat[0]",
        "needs exactly one of masquerade: true or external_ip",
    );
}

#[test]
fn snat_port_range() {
    only_err(
        r#"
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
      masquerade: true
      port_range: {min: 1024, max: 2048}
"#,
        6,
        7,
        "nat.snat[0].port_range",
        "port_range applies only with external_ip",
    );
    only_err(
        r#"
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
      external_ip: 203.0.113.1
      port_range: {min: 3000, max: 2048}
"#,
        6,
        36,
        "nat.snat[0].port_range.max",
        "port_range min (3000) must not be greater than max (2048)",
    );
    only_err(
        r#"
nat:
  snat:
    - out_interface: eth0
      source: 10.0.0.0/8
      external_ip: 203.0.113.1
      port_range: {min: 0, max: 2048}
"#,
        6,
        25,
        "nat.snat[0].port_range.min",
        "expected a port 1-65535, got 0",
    );
}

#[test]
fn snat_required_and_typed() {
    let errs = errors(
        r#"
nat:
  snat:
    - source: [10.0.0.0/8]
      masquerade: true
    - out_interface: eth0
      source: 10.0.0.0/99
      masquerade: true
    - out_interface: eth0
      source: 10.0.0.0/8
      external_ip: "2001:db8::1"
"#,
    );
    has_err(
        &errs,
        3,
        7,
        "nat.snat[0]",
        "missing required key 'out_interface'",
    );
    has_err(
        &errs,
        3,
        15,
        "nat.snat[0].source",
        "expected an IP address or CIDR, got a list",
    );
    has_err(
        &errs,
        6,
        15,
        "nat.snat[1].source",
        "prefix length /99 is too long",
    );
    has_err(
        &errs,
        10,
        20,
        "nat.snat[2].external_ip",
        "different address families",
    );
    assert_eq!(errs.len(), 4);
}

#[test]
fn dnat_rules() {
    let errs = errors(
        r#"
nat:
  dnat:
    - wan_ip: 203.0.113.1
      wan_port: 8080
      to: "192.168.1.10"
      proto: tcp
    - wan_ip: "2001:db8::1"
      wan_port: 0
      to: "2001:db8::10:80"
      proto: sctp
    - wan_ip: 203.0.113.1
      wan_port: 70000
      to: "192.168.1.10:80"
      proto: udp
      from: 10.0.0.256/8
    - wan_port: 80
      to: "[2001:db8::10]:80"
      proto: tcp
"#,
    );
    has_err(
        &errs,
        5,
        11,
        "nat.dnat[0].to",
        "expected ip:port (IPv6 as [addr]:port), got 192.168.1.10",
    );
    has_err(
        &errs,
        8,
        17,
        "nat.dnat[1].wan_port",
        "expected a port 1-65535, got 0",
    );
    has_err(
        &errs,
        9,
        11,
        "nat.dnat[1].to",
        "expected ip:port (IPv6 as [addr]:port)",
    );
    has_err(
        &errs,
        10,
        14,
        "nat.dnat[1].proto",
        "expected one of tcp, udp, got sctp",
    );
    has_err(
        &errs,
        12,
        17,
        "nat.dnat[2].wan_port",
        "expected a port 1-65535, got 70000",
    );
    has_err(
        &errs,
        15,
        13,
        "nat.dnat[2].from",
        "expected an IP address or CIDR",
    );
    has_err(&errs, 16, 7, "nat.dnat[3]", "missing required key 'wan_ip'");
    assert_eq!(errs.len(), 7, "{}", policy::PolicyErrors(errs.clone()));
}

// ----- size and collection -----

#[test]
fn too_many_rules() {
    let mut text = String::from("rules:\n");
    for _ in 0..=policy::MAX_RULES {
        text.push_str("  - {}\n");
    }
    only_err(&text, 2, 3, "rules", "at most 100000 rules, got 100001");
}

#[test]
fn many_errors_in_one_pass() {
    let errs = errors(
        r#"
rules:
  - id: a
    action: maybe
  - id: b
    action: accept
    destination_port: 0
  - id: a
    action: accept
    protocol: gre
"#,
    );
    has_err(&errs, 3, 13, "rules[0].action", "got maybe");
    has_err(&errs, 6, 23, "rules[1].destination_port", "got 0");
    has_err(
        &errs,
        7,
        9,
        "rules[2].id",
        "duplicate rule id 'a' (first used on line 2)",
    );
    has_err(&errs, 9, 15, "rules[2].protocol", "got gre");
    assert_eq!(errs.len(), 4);
    // File order, so the CLI prints them top to bottom.
    assert!(errs
        .windows(2)
        .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
}

#[test]
fn error_flood_is_capped() {
    let mut text = String::from("rules:\n");
    for i in 0..5000 {
        text.push_str(&format!("  - {{id: r{i}, action: maybe}}\n"));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), 1001);
    assert!(
        errs[1000].message.contains("4000 more errors not shown"),
        "{}",
        errs[1000]
    );
}

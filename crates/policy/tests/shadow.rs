//! Shadowed-rule warnings: cases that must warn (with the exact message and place) and
//! near-misses that must not.

mod common;
use common::{ok, warnings_text};

/// Wraps rule YAML (already indented as list items) in a gateway policy, so host-mode
/// warnings stay out of the way; returns the shadow warnings only.
fn shadow_warnings(rules: &str) -> Vec<String> {
    let text = format!("interfaces: {{lan: eth1, wan: eth0}}\nrules:\n{rules}");
    let c = ok(&text);
    c.warnings
        .iter()
        .filter(|w| w.message.contains("can never match"))
        .map(|w| w.to_string())
        .collect()
}

fn shadowed(rules: &str) -> bool {
    !shadow_warnings(rules).is_empty()
}

#[test]
fn exact_duplicate_is_shadowed_with_message_and_place() {
    let w = shadow_warnings(
        r#"  - id: a
    action: accept
    source: 10.0.0.0/8
  - id: b
    action: deny
    source: 10.0.0.0/8
"#,
    );
    assert_eq!(
        w,
        vec!["rules.yaml:6:5: rules[1]: rule 'b' can never match: rule 'a' (line 3) matches everything it does"]
    );
}

#[test]
fn earliest_coverer_is_named() {
    let w = shadow_warnings(
        r#"  - {id: narrow, action: accept, source: 10.1.0.0/16}
  - {id: wide, action: accept, source: 10.0.0.0/8}
  - {id: any, action: deny}
  - {id: victim, action: deny, source: 10.1.2.0/24, destination_port: 22}
"#,
    );
    // 'victim' is covered by all three earlier rules; the first one is named. 'any' is not
    // covered: the earlier rules constrain the source.
    assert_eq!(
        w,
        vec!["rules.yaml:6:6: rules[3]: rule 'victim' can never match: rule 'narrow' (line 3) matches everything it does"]
    );
}

#[test]
fn positive_cases() {
    let cases: &[(&str, &str)] = &[
        (
            "prefix inside a wider prefix, extra fields on the later rule",
            r#"  - {id: a, action: accept, source: 10.0.0.0/8}
  - {id: b, action: accept, source: 10.1.2.0/24, destination: 1.2.3.4, protocol: tcp, destination_port: 22, state: established, in_interface: eth1, log: true}
"#,
        ),
        (
            "every prefix of a list covered",
            r#"  - {id: a, action: accept, source: [10.0.0.0/8, 172.16.0.0/12]}
  - {id: b, action: accept, source: [10.1.0.0/16, 172.17.0.0/16]}
"#,
        ),
        (
            "an empty rule covers forwarded traffic of either direction",
            r#"  - {id: a, action: deny}
  - {id: b, action: accept, direction: egress, protocol: udp}
"#,
        ),
        (
            "ports without protocol cover tcp and udp rules on those ports",
            r#"  - {id: a, action: accept, destination_port: "1-1024"}
  - {id: b, action: accept, protocol: udp, destination_port: 53}
"#,
        ),
        (
            "ports without protocol cover a port rule without protocol",
            r#"  - {id: a, action: accept, destination_port: [22, "80-90"]}
  - {id: b, action: accept, destination_port: [85, 22]}
"#,
        ),
        (
            "subtree covers one-label pattern",
            r#"  - {id: a, action: accept, destination_fqdn: .example.com}
  - {id: b, action: accept, destination_fqdn: ["*.example.com", example.com, .a.example.com]}
"#,
        ),
        (
            "one-label pattern covers an exact name one label down",
            r#"  - {id: a, action: accept, destination_fqdn: "*.example.com"}
  - {id: b, action: accept, destination_fqdn: api.example.com}
"#,
        ),
        (
            "no destination covers a name rule",
            r#"  - {id: a, action: accept, protocol: tcp}
  - {id: b, action: accept, protocol: tcp, destination_fqdn: github.com}
"#,
        ),
        (
            "same direction",
            r#"  - {id: a, action: accept, direction: input, protocol: tcp}
  - {id: b, action: accept, direction: input, protocol: tcp, destination_port: 22}
"#,
        ),
        (
            "IPv6 prefixes",
            r#"  - {id: a, action: accept, destination: "2001:db8::/32"}
  - {id: b, action: accept, destination: "2001:db8:1::5"}
"#,
        ),
    ];
    for (what, rules) in cases {
        assert!(shadowed(rules), "should be shadowed: {what}");
    }
}

#[test]
fn negative_cases() {
    let cases: &[(&str, &str)] = &[
        (
            "later rule is wider",
            r#"  - {id: a, action: accept, source: 10.1.0.0/16}
  - {id: b, action: accept, source: 10.0.0.0/8}
"#,
        ),
        (
            "only part of a list covered",
            r#"  - {id: a, action: accept, source: 10.0.0.0/8}
  - {id: b, action: accept, source: [10.1.0.0/16, 192.168.0.0/16]}
"#,
        ),
        (
            "protocol without ports does not cover a port rule without protocol (udp)",
            r#"  - {id: a, action: accept, protocol: tcp}
  - {id: b, action: accept, destination_port: 22}
"#,
        ),
        (
            "ports do not cover a rule without ports (it also matches icmp)",
            r#"  - {id: a, action: accept, destination_port: "1-65535"}
  - {id: b, action: accept, source: 10.0.0.0/8}
"#,
        ),
        (
            "port range does not cover a wider one",
            r#"  - {id: a, action: accept, destination_port: "80-90"}
  - {id: b, action: accept, destination_port: "85-95"}
"#,
        ),
        (
            "address destination never covers a name rule",
            r#"  - {id: a, action: accept, destination: 0.0.0.0/0}
  - {id: b, action: accept, destination_fqdn: github.com}
"#,
        ),
        (
            "name rule never covers an address rule",
            r#"  - {id: a, action: accept, destination_fqdn: .com}
  - {id: b, action: accept, destination: 1.2.3.4}
"#,
        ),
        (
            "name rule does not cover a rule without destination",
            r#"  - {id: a, action: accept, destination_fqdn: .com}
  - {id: b, action: accept, protocol: tcp}
"#,
        ),
        (
            "one-label does not cover the subtree or the name itself",
            r#"  - {id: a, action: accept, destination_fqdn: "*.example.com"}
  - {id: b, action: accept, destination_fqdn: [example.com]}
  - {id: c, action: accept, destination_fqdn: [.x.example.com]}
"#,
        ),
        (
            "specific direction does not cover omitted direction",
            r#"  - {id: a, action: accept, direction: egress}
  - {id: b, action: accept}
"#,
        ),
        (
            "omitted direction does not cover input",
            r#"  - {id: a, action: accept}
  - {id: b, action: accept, direction: input}
"#,
        ),
        (
            "state established does not cover any state",
            r#"  - {id: a, action: accept, state: established}
  - {id: b, action: accept}
"#,
        ),
        (
            "interface does not cover a rule without one",
            r#"  - {id: a, action: accept, in_interface: eth1}
  - {id: b, action: accept}
"#,
        ),
        (
            "interface does not cover another interface",
            r#"  - {id: a, action: accept, out_interface: eth1}
  - {id: b, action: accept, out_interface: eth2}
"#,
        ),
        (
            "different protocol",
            r#"  - {id: a, action: accept, protocol: tcp, destination_port: 53}
  - {id: b, action: accept, protocol: udp, destination_port: 53}
"#,
        ),
        (
            "address family differs",
            r#"  - {id: a, action: accept, source: 0.0.0.0/0}
  - {id: b, action: accept, source: "::/0"}
"#,
        ),
    ];
    for (what, rules) in cases {
        let w = shadow_warnings(rules);
        assert!(w.is_empty(), "should not be shadowed: {what}: {w:?}");
    }
}

#[test]
fn many_distinct_rules_have_no_false_positives() {
    let mut rules = String::new();
    for i in 0..3000u32 {
        rules.push_str(&format!(
            "  - {{id: r{i}, action: accept, source: 10.{}.{}.0/24, destination_port: {}}}\n",
            i / 256,
            i % 256,
            1 + i % 1000
        ));
    }
    // The last rule is covered by the first one.
    rules.push_str("  - {id: late, action: accept, source: 10.0.0.7, destination_port: 1}\n");
    let c = ok(&format!(
        "interfaces: {{lan: eth1, wan: eth0}}\nrules:\n{rules}"
    ));
    assert_eq!(c.warnings.len(), 1, "{}", warnings_text(&c));
    assert!(c.warnings[0]
        .message
        .contains("rule 'late' can never match: rule 'r0' (line 3)"));
}

//! Property tests: FQDN patterns (round trip, matching vs a naive reference, `covers`
//! soundness), port and CIDR round trips, and `parse_str` never panicking on any text.

mod common;
use common::naive_fqdn_match;
use ipnet::IpNet;
use policy::{parse_str, FqdnPattern, PortRange};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Valid labels from a tiny alphabet, so generated names and patterns often relate.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["a", "b", "com", "x-1", "0"]).prop_map(str::to_string),
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|v| v.join("."))
}

fn pattern_text() -> impl Strategy<Value = String> {
    (prop::sample::select(vec!["", "*.", "."]), name()).prop_map(|(p, n)| format!("{p}{n}"))
}

/// A queried name: related labels, random case, maybe a trailing dot, maybe junk.
fn query() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 0..5),
        prop::collection::vec(any::<bool>(), 8),
        0..4u8,
    )
        .prop_map(|(labels, upper, tail)| {
            let mut s: String = labels
                .join(".")
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if upper[i % 8] {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            match tail {
                1 => s.push('.'),
                2 => s.push_str(".."),
                3 => s.insert(0, '.'),
                _ => {}
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn fqdn_round_trip(text in pattern_text()) {
        let p = FqdnPattern::parse(&text);
        prop_assert!(p.is_ok(), "{text}: {p:?}");
        if let Ok(p) = p {
            prop_assert_eq!(p.to_string(), text);
        }
    }

    #[test]
    fn fqdn_parse_accepts_only_canonical_text(text in "[*.a-zA-Z0-9_-]{0,20}") {
        // Whatever is accepted displays exactly as written: no silent rewriting.
        if let Ok(p) = FqdnPattern::parse(&text) {
            prop_assert_eq!(p.to_string(), text);
        }
    }

    #[test]
    fn fqdn_matches_agrees_with_naive(pat in pattern_text(), q in query()) {
        let p = FqdnPattern::parse(&pat).map_err(TestCaseError::fail)?;
        prop_assert_eq!(p.matches(&q), naive_fqdn_match(&pat, &q), "{} vs {}", pat, q);
    }

    #[test]
    fn fqdn_matches_never_panics(pat in pattern_text(), q in any::<String>()) {
        let p = FqdnPattern::parse(&pat).map_err(TestCaseError::fail)?;
        let _ = p.matches(&q);
    }

    #[test]
    fn fqdn_covers_is_sound(a in pattern_text(), b in pattern_text(), qs in prop::collection::vec(query(), 20)) {
        let (pa, pb) = (
            FqdnPattern::parse(&a).map_err(TestCaseError::fail)?,
            FqdnPattern::parse(&b).map_err(TestCaseError::fail)?,
        );
        if pa.covers(&pb) {
            for q in &qs {
                prop_assert!(!pb.matches(q) || pa.matches(q), "{a} covers {b} but not {q}");
            }
            // Also the names b is built around.
            let base = pb.base().to_string();
            for q in [base.clone(), format!("z.{base}"), format!("y.z.{base}")] {
                prop_assert!(!pb.matches(&q) || pa.matches(&q), "{a} covers {b} but not {q}");
            }
        }
    }

    #[test]
    fn port_range_round_trip(lo in 1..=65535u16, span in 0..=65535u16) {
        let hi = lo.saturating_add(span);
        let r = PortRange { lo, hi };
        prop_assert_eq!(PortRange::parse(&r.to_string()), Ok(r));
    }

    #[test]
    fn port_range_parse_is_total(text in "[-0-9 +]{0,12}") {
        if let Ok(r) = PortRange::parse(&text) {
            prop_assert!(1 <= r.lo && r.lo <= r.hi);
        }
    }

    #[test]
    fn cidr_round_trip_through_a_rule(v4 in any::<u32>(), len4 in 0..=32u8, v6 in any::<u128>(), len6 in 0..=128u8) {
        for net in [
            IpNet::new(IpAddr::V4(Ipv4Addr::from(v4)), len4),
            IpNet::new(IpAddr::V6(Ipv6Addr::from(v6)), len6),
        ] {
            let net = net.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = format!(
                "interfaces: {{lan: a, wan: b}}\nrules:\n  - id: r\n    action: accept\n    source: \"{net}\"\n"
            );
            let c = parse_str(&text, "t").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&c.policy.rules[0].source, &vec![net.trunc()]);
            // A warning exactly when host bits had to be cleared.
            prop_assert_eq!(c.warnings.len(), usize::from(net != net.trunc()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parse_str_never_panics_on_any_text(text in any::<String>()) {
        let _ = parse_str(&text, "f");
    }

    #[test]
    fn parse_str_never_panics_on_yamlish_text(text in "[-:\\[\\]{}a-z0-9 \n#&*!|>'\"?,./~\t]{0,300}") {
        let _ = parse_str(&text, "f");
    }
}

const VALID: &str = r#"defaults:
  default_action: deny
  upstream_dns: [1.1.1.1, "[::1]:53"]
  conntrack_timeouts: {tcp_syn_sent: 30}
interfaces:
  lan: [eth1]
  wan: [eth0]
dns:
  listen: [192.168.1.1:53]
  unlisted: forward
  min_ttl: 5
rules:
  - id: allow-github-https
    name: "HTTPS to GitHub"
    action: accept
    direction: egress
    source: &lan 192.168.1.0/24
    destination_fqdn: [github.com, "*.githubusercontent.com", .example.com]
    destination_port: [443, "8000-8080"]
    protocol: tcp
    log: true
  - id: ping
    action: accept
    protocol: icmp
    source: *lan
    state: established
    in_interface: eth1
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

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Replace(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..20usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), "[-:\\[\\]{}&*!a-z0-9 \n\"'.,/]{1,6}")
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::Replace(a, c)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let n = chars.len().max(1);
    match m {
        Mutation::Delete(a, len) => {
            let a = a % n;
            let b = (a + len).min(chars.len());
            chars.drain(a.min(chars.len())..b);
            chars.into_iter().collect()
        }
        Mutation::Insert(a, s) => {
            let a = a % (chars.len() + 1);
            chars.splice(a..a, s.chars());
            chars.into_iter().collect()
        }
        Mutation::Replace(a, c) => {
            if !chars.is_empty() {
                let a = a % chars.len();
                chars[a] = *c;
            }
            chars.into_iter().collect()
        }
        Mutation::DuplicateLine(a) | Mutation::SwapLines(a, _) => {
            let mut lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let i = a % lines.len();
            match m {
                Mutation::SwapLines(_, b) => {
                    let j = b % lines.len();
                    lines.swap(i, j);
                }
                _ => lines.insert(i, lines[i]),
            }
            lines.join("\n")
        }
    }
}

#[test]
fn valid_file_is_valid() {
    if let Err(e) = parse_str(VALID, "f") {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parse_str_never_panics_on_mutations(ms in prop::collection::vec(mutation(), 1..6)) {
        let mut text = VALID.to_string();
        for m in &ms {
            text = apply(&text, m);
        }
        // Either outcome is fine; every error must carry a real position.
        if let Err(e) = parse_str(&text, "f") {
            prop_assert!(!e.0.is_empty());
            for d in &e.0 {
                prop_assert!(d.line >= 1 && d.col >= 1, "{}", d);
            }
        }
    }
}

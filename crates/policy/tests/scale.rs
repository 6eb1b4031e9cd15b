//! 100,000 rules: parse + validate + shadow analysis must stay fast (SPEC §4: policies up to
//! 100k rules). The time limit is asserted only in optimised builds (`--release`).

mod common;
use policy::parse_str;
use std::time::{Duration, Instant};

/// Varied but realistic shapes: /32 and /24 sources, single ports and ranges, names,
/// IPv6 — so every index dimension is exercised.
fn big_policy(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 120);
    s.push_str("interfaces: {lan: [eth1], wan: [eth0]}\nrules:\n");
    for i in 0..n {
        let (a, b, c) = (i >> 16, (i >> 8) & 255, i & 255);
        match i % 4 {
            0 => s.push_str(&format!(
                "  - id: r{i}\n    action: accept\n    direction: egress\n    source: 10.{a}.{b}.{c}\n    destination_port: {}\n    protocol: tcp\n",
                1 + i % 60000
            )),
            1 => s.push_str(&format!(
                "  - id: r{i}\n    action: deny\n    source: 172.{}.{b}.0/24\n    destination: 198.51.{b}.{c}\n    destination_port: \"{}-{}\"\n",
                16 + a,
                1 + c,
                1 + c + b
            )),
            2 => s.push_str(&format!(
                "  - id: r{i}\n    action: accept\n    direction: egress\n    destination_fqdn: [h{i}.example.com, \"*.s{i}.example.org\"]\n    destination_port: 443\n"
            )),
            _ => s.push_str(&format!(
                "  - id: r{i}\n    action: accept\n    direction: ingress\n    source: \"2001:db8:{a:x}:{b:x}{c:02x}::/64\"\n    destination_port: [22, {}]\n",
                1000 + c
            )),
        }
    }
    s
}

#[test]
fn hundred_thousand_rules() {
    let text = big_policy(100_000);
    let start = Instant::now();
    let checked = match parse_str(&text, "big.yaml") {
        Ok(c) => c,
        Err(e) => panic!(
            "{}",
            e.0.iter()
                .take(5)
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    let took = start.elapsed();
    eprintln!("parse_str on {} bytes, 100000 rules: {took:?}", text.len());
    assert_eq!(checked.policy.rules.len(), 100_000);
    assert!(
        checked.warnings.is_empty(),
        "{:?}",
        checked.warnings.iter().take(3).collect::<Vec<_>>()
    );
    if !cfg!(debug_assertions) {
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}

#[test]
fn hundred_thousand_rules_with_shadowing_found() {
    // Every rule after the first is inside rule 0's /8 and port range: 99,999 warnings,
    // each found through the index rather than by scanning all earlier rules.
    let mut s = String::from("interfaces: {lan: [eth1], wan: [eth0]}\nrules:\n  - {id: all, action: accept, source: 10.0.0.0/8, destination_port: \"1-65535\"}\n");
    for i in 1..100_000u32 {
        s.push_str(&format!(
            "  - {{id: r{i}, action: deny, source: 10.{}.{}.{}, destination_port: {}, protocol: udp}}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255,
            1 + i % 65535
        ));
    }
    let start = Instant::now();
    let c = match parse_str(&s, "big.yaml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let took = start.elapsed();
    eprintln!("parse_str, 100000 rules all shadowed: {took:?}");
    assert_eq!(c.warnings.len(), 99_999);
    assert!(c.warnings[0]
        .message
        .contains("rule 'r1' can never match: rule 'all' (line 3)"));
    if !cfg!(debug_assertions) {
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}

//! The kernel data plane on real traffic: each test builds its own LAN / firewall / WAN lab,
//! applies a policy with the `ward` binary, and probes through it. What both data planes must
//! do with forwarded IPv4 (defaults, first match, CIDRs, ports, protocols, established
//! returns, masquerade, port-forwards) is the scenario table of `scenarios.rs`, run on both;
//! here is what only the kernel plane has.

mod common;

use common::*;
use std::net::IpAddr;

fn wan_ip() -> IpAddr {
    IpAddr::V4(addr::WAN_HOST)
}

/// The forwarded defaults are in the scenario table (`scenarios.rs`), run on both planes;
/// input and output are the kernel plane's alone.
#[test]
fn defaults_of_input_and_output() {
    let lab = lab();
    // Nothing but defaults: input deny, output accept.
    apply(&lab, GATEWAY);
    let fw_lan = IpAddr::V4(addr::FW_LAN);
    assert_blocked(
        &tcp(&lab.lan(), &lab.fw(), fw_lan, 22),
        "input under input_action deny",
    );
    assert_pass(
        &tcp(&lab.fw(), &lab.wan(), wan_ip(), 80),
        "output under output_action accept",
    );
    // ICMP essentials: the firewall answers ping even though input is denied.
    assert_pass(
        &lab.lan().ping(fw_lan, TIMEOUT).unwrap(),
        "ping to the firewall (icmp essentials)",
    );

    // Flip them.
    apply(
        &lab,
        &format!("{GATEWAY}defaults:\n  input_action: accept\n  output_action: deny\n"),
    );
    assert_pass(
        &tcp(&lab.lan(), &lab.fw(), fw_lan, 22),
        "input under input_action accept",
    );
    assert_blocked(
        &tcp(&lab.fw(), &lab.wan(), wan_ip(), 80),
        "output under output_action deny",
    );
    lab.down().unwrap();
}

#[test]
fn ssh_to_the_firewall_and_output_deny() {
    let lab = lab();
    apply(
        &lab,
        &format!(
            "{GATEWAY}defaults:\n  output_action: accept\nrules:
  - {{id: ssh-lan, direction: input, source: 192.168.50.0/24, protocol: tcp, destination_port: 22, action: accept}}
  - {{id: no-smtp, direction: output, protocol: tcp, destination_port: 25, action: deny}}
"
        ),
    );
    let fw = lab.fw();
    assert_pass(
        &tcp(&lab.lan(), &fw, IpAddr::V4(addr::FW_LAN), 22),
        "ssh from the LAN",
    );
    assert_blocked(
        &tcp(&lab.wan(), &fw, IpAddr::V4(addr::FW_WAN), 22),
        "ssh from the WAN",
    );
    assert_blocked(
        &tcp(&lab.lan(), &fw, IpAddr::V4(addr::FW_LAN), 23),
        "another port from the LAN",
    );
    assert_blocked(&tcp(&fw, &lab.wan(), wan_ip(), 25), "output deny");
    assert_pass(&tcp(&fw, &lab.wan(), wan_ip(), 26), "other output");
    lab.down().unwrap();
}

#[test]
fn ipv6_rule() {
    let lab = lab();
    apply(
        &lab,
        &format!(
            "{GATEWAY}rules:\n  - {{id: v6-web, direction: egress, source: \"fd00:50::/64\", destination: \"fd00:51::20\", protocol: tcp, destination_port: 443, action: accept}}\n  - {{id: v4-web, direction: egress, source: 192.168.50.0/24, protocol: tcp, destination_port: 444, action: accept}}\n"
        ),
    );
    let v6 = IpAddr::V6(addr::WAN_HOST6);
    assert_pass(&tcp(&lab.lan(), &lab.wan(), v6, 443), "IPv6 rule over IPv6");
    assert_blocked(
        &tcp(&lab.lan(), &lab.wan(), v6, 444),
        "IPv4-only rule does not match IPv6",
    );
    assert_blocked(&lan_to_wan(&lab, 443), "IPv6-only rule does not match IPv4");
    assert_pass(&lan_to_wan(&lab, 444), "IPv4 rule over IPv4");
    lab.down().unwrap();
}

#[test]
fn folded_maps_keep_first_match_and_counters() {
    // Enough same-shape rules to be folded into a verdict map, with a deny in the middle.
    let mut rules = String::from("rules:\n");
    for i in 0..40u16 {
        let action = if i == 20 { "deny" } else { "accept" };
        rules.push_str(&format!(
            "  - {{id: r{i}, direction: egress, source: 192.168.50.0/24, protocol: tcp, destination_port: {}, action: {action}}}\n",
            9000 + i
        ));
    }
    let lab = lab();
    apply(&lab, &format!("{GATEWAY}{rules}"));
    let listing = live_table(&lab);
    assert!(
        listing.contains("vmap @egress-"),
        "expected a folded map:\n{listing}"
    );
    assert_pass(&lan_to_wan(&lab, 9000), "first element");
    assert_pass(&lan_to_wan(&lab, 9039), "last element");
    assert_blocked(&lan_to_wan(&lab, 9020), "the deny element");
    assert_blocked(&lan_to_wan(&lab, 9040), "past the map");
    let o = ward(&["status", "--json", "--netns", lab.fw().name()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["overall"], "healthy");
    assert!(
        v["counters"]["r0"]["packets"].as_u64().unwrap() >= 1,
        "r0 counted: {v}"
    );
    assert!(
        v["counters"]["r39"]["packets"].as_u64().unwrap() >= 1,
        "r39 counted: {v}"
    );
    assert!(
        v["counters"]["r20"]["packets"].as_u64().unwrap() >= 1,
        "r20 counted: {v}"
    );
    assert_eq!(
        v["counters"]["r5"]["packets"].as_u64(),
        Some(0),
        "r5 never hit: {v}"
    );
    lab.down().unwrap();
}

#[test]
fn invalid_policy_leaves_live_table_byte_identical() {
    let lab = lab();
    apply(&lab, &format!("{GATEWAY}rules:\n  - {{id: a, direction: egress, protocol: tcp, destination_port: 80, action: accept}}\n"));
    let before = live_table(&lab);
    let bad = PolicyFile::new(&format!(
        "{GATEWAY}rules:\n  - {{id: a, direction: egress, protocol: sctp, action: accept}}\n"
    ));
    let o = ward(&["apply", bad.path(), "--netns", lab.fw().name()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "invalid policy exits 1: {}",
        text(&o)
    );
    let msg = text(&o);
    assert!(
        msg.contains(":5:42: rules[0].protocol: expected one of tcp, udp"),
        "error names line:col and key: {msg}"
    );
    assert_eq!(
        live_table(&lab),
        before,
        "live table changed after a rejected policy"
    );
    lab.down().unwrap();
}

#[test]
fn remove_leaves_foreign_tables() {
    let lab = lab();
    let fw = lab.fw();
    let o = fw.exec("nft", &["add table inet foreign; add chain inet foreign c { type filter hook input priority 10; }"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    apply(&lab, GATEWAY);
    let o = ward(&["remove", "--netns", fw.name()]);
    assert!(o.status.success(), "{}", text(&o));
    let tables = fw.exec("nft", &["list", "tables"]).unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        tables.contains("table inet foreign"),
        "foreign table removed: {tables}"
    );
    assert!(
        !tables.contains("table inet ward"),
        "ward table still there: {tables}"
    );
    // Removing again is not an error.
    let o = ward(&["remove", "--netns", fw.name()]);
    assert!(o.status.success(), "{}", text(&o));
    lab.down().unwrap();
}

#[test]
fn plan_and_status() {
    let lab = lab();
    let fw = lab.fw();
    let a = format!("{GATEWAY}rules:\n  - {{id: a, direction: egress, protocol: tcp, destination_port: 80, action: accept}}\n");
    let b = a.replace("80", "8080");
    let o = ward(&["status", "--json", "--netns", fw.name()]);
    assert!(o.status.success(), "status never fails: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["overall"], "degraded");
    assert_eq!(v["table_installed"], false);
    apply(&lab, &a);
    let fa = PolicyFile::new(&a);
    let fb = PolicyFile::new(&b);
    let same = ward(&["plan", fa.path(), "--netns", fw.name()]);
    assert!(
        same.status.success() && text(&same).contains("no changes"),
        "{}",
        text(&same)
    );
    let diff = ward(&["plan", fb.path(), "--netns", fw.name()]);
    let d = text(&diff);
    assert!(diff.status.success(), "{d}");
    assert!(
        d.contains("-\t\ttcp dport 80 counter") && d.contains("+\t\ttcp dport 8080 counter"),
        "plan shows the change:\n{d}"
    );
    let o = ward(&["status", "--json", "--netns", fw.name()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["overall"], "healthy");
    let sha = v["policy_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64, "{v}");
    assert!(v["applied_at"].as_str().unwrap().ends_with('Z'), "{v}");
    lab.down().unwrap();
}

/// Random same-shape rules with overlapping port ranges and mixed actions: the kernel's
/// verdict on every port must be the one `explain` (first match, top to bottom) gives, however
/// the compiler folded the rules into maps.
#[test]
fn folded_policy_agrees_with_explain() {
    let mut seed: u64 = 0x5eed_0000_0001;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut rules = String::from("rules:\n");
    for i in 0..80 {
        let lo = 6000 + next(40) as u16;
        let hi = lo + next(3) as u16;
        let port = if lo == hi {
            lo.to_string()
        } else {
            format!("\"{lo}-{hi}\"")
        };
        let action = if next(3) == 0 { "deny" } else { "accept" };
        let source = match next(3) {
            0 => "192.168.50.0/24",
            1 => "192.168.50.10",
            _ => "10.9.0.0/16",
        };
        rules.push_str(&format!(
            "  - {{id: r{i}, direction: egress, source: {source}, protocol: tcp, destination_port: {port}, action: {action}}}\n"
        ));
    }
    let yaml = format!("{GATEWAY}{rules}");
    let checked = policy::parse_str(&yaml, "random.yaml").expect("valid random policy");
    let lab = lab();
    apply(&lab, &yaml);
    assert!(
        live_table(&lab).contains("vmap"),
        "the random policy should fold into maps"
    );
    let ports: Vec<u16> = (6000..6045).collect();
    let results: Vec<(u16, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = ports
            .iter()
            .map(|&p| {
                let lab = &lab;
                s.spawn(move || (p, lan_to_wan(lab, p).ok()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (port, passed) in results {
        let v = policy::explain(
            &checked.policy,
            &policy::Probe {
                src: IpAddr::V4(addr::LAN_HOST),
                dst: policy::Target::Ip(wan_ip()),
                proto: policy::Protocol::Tcp,
                dport: Some(port),
                direction: policy::Direction::Egress,
                in_interface: None,
                out_interface: None,
                established: false,
            },
        )
        .verdict;
        assert_eq!(
            passed,
            v.action == policy::Action::Accept,
            "port {port}: kernel {} but explain says {:?} by {}",
            if passed { "passed" } else { "blocked" },
            v.action,
            v.rule_id
        );
    }
    lab.down().unwrap();
}

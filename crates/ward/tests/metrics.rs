//! `ward run --metrics` on real traffic: the scrape parses as Prometheus text, carries every
//! metric of SPEC §7, and its counters move by exactly what the lab sent.

mod common;

use common::scrape::*;
use common::*;
use std::net::IpAddr;
use std::time::Duration;
use testlab::Zone;

const METRICS: &str = "127.0.0.1:9580";

fn policy() -> String {
    format!(
        "{}rules:
  - {{id: ping-out, direction: egress, protocol: icmp, action: accept}}
  - {{id: no-telnet, direction: egress, protocol: tcp, destination_port: 23, action: deny}}
  - {{id: web-by-name, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}}
nat:
  snat:
    - {{out_interface: wan0, source: 192.168.50.0/24, masquerade: true}}
",
        closed_gateway()
    )
}

#[test]
fn scrape_parses_and_counters_move_by_exactly_what_was_sent() {
    const N: usize = 7;
    let lab = lab();
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    let yaml = policy();
    let log = std::env::temp_dir().join(format!("ward-test-metrics-{}.jsonl", std::process::id()));
    let log = log.to_str().expect("utf-8 temp path").to_string();
    let run = WardRun::start_with(&lab, &yaml, &["--metrics", METRICS, "--log", &log]);

    let first = scrape(&lab, METRICS);
    let before = samples(body(&first));
    for family in [
        "ward_rule_accepts_total{rule_id=ping-out}",
        "ward_rule_drops_total{rule_id=no-telnet}",
        "ward_rule_bytes_total{rule_id=web-by-name}",
        "ward_drops_total{drop_reason=no_matching_allow_rule}",
        "ward_drops_total{drop_reason=explicit_deny}",
        "ward_nat_translations_total{kind=snat}",
        "ward_nat_translations_total{kind=dnat}",
        "ward_conntrack_capacity",
        "ward_dns_queries_total{outcome=success}",
        "ward_dns_queries_total{outcome=truncated_upgraded_to_tcp}",
        "ward_fqdn_set_size",
        "ward_fqdn_set_evictions_total{reason=ttl_expired}",
        "ward_fqdn_set_evictions_total{reason=capacity_pressure}",
        "ward_log_events_total{outcome=dropped_overload}",
    ] {
        assert!(
            before.contains_key(family),
            "{family} missing from the scrape:\n{first}"
        );
    }
    dist_files_use_only_served_metrics(body(&first), &[]);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(yaml.as_bytes()));
    assert_eq!(
        value(
            &before,
            &format!(
                "ward_build_info{{rules_sha={sha},version={}}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );

    for i in 0..N {
        let p = lab
            .lan()
            .ping(IpAddr::V4(addr::WAN_HOST), Duration::from_secs(2))
            .expect("ping");
        assert_pass(&p, &format!("ping {i}"));
    }
    // One SYN: the probe gives up before TCP's first retransmission (1 s).
    assert_blocked(&lan_to_wan(&lab, 23), "telnet");
    assert_eq!(resolve(&lab, "ok.test."), vec![IpAddr::V4(addr::WAN_HOST)]);

    let second = scrape(&lab, METRICS);
    let after = samples(body(&second));
    let moved = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(moved("ward_rule_accepts_total{rule_id=ping-out}"), N as f64);
    // Every ping was a new flow through the masquerade rule.
    assert_eq!(moved("ward_nat_translations_total{kind=snat}"), N as f64);
    assert_eq!(moved("ward_rule_drops_total{rule_id=no-telnet}"), 1.0);
    assert_eq!(moved("ward_drops_total{drop_reason=explicit_deny}"), 1.0);
    assert!(moved("ward_rule_bytes_total{rule_id=ping-out}") >= (N * 28) as f64);
    assert_eq!(moved("ward_dns_queries_total{outcome=success}"), 1.0);
    assert_eq!(value(&after, "ward_fqdn_set_size"), 1.0);
    assert_eq!(
        histogram_count(&after, "ward_dns_lookup_duration_seconds")
            - histogram_count(&before, "ward_dns_lookup_duration_seconds"),
        1.0
    );
    assert!(value(&after, "ward_conntrack_entries") >= 1.0);
    run.stop();
    let _ = std::fs::remove_file(&log);
    lab.down().unwrap();
}

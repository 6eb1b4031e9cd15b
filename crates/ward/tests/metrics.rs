//! `ward run --metrics` on real traffic: the scrape parses as Prometheus text, carries every
//! metric of SPEC §7, and its counters move by exactly what the lab sent.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
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

/// `GET /metrics` from inside the firewall's namespace, where ward run serves it.
fn scrape(lab: &Lab) -> String {
    lab.fw()
        .run(|| {
            let mut s = TcpStream::connect(METRICS).expect("connect to the metrics endpoint");
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: ward\r\n\r\n")
                .expect("send request");
            let mut resp = String::new();
            s.read_to_string(&mut resp).expect("read response");
            resp
        })
        .expect("run in the firewall's namespace")
}

/// The body, after checking the response and every line of the exposition format.
fn body(resp: &str) -> &str {
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert_eq!(body.lines().last(), Some("# EOF"), "{body}");
    assert!(body.contains("_bucket{le=\"+Inf\"}"), "{body}");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(series.starts_with("ward_"), "{line:?}");
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
    }
    body
}

/// Samples by `name{label=value,...}` (labels sorted), parsed by a Prometheus text parser.
fn samples(body: &str) -> HashMap<String, prometheus_parse::Value> {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let key = if labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            (key, s.value)
        })
        .collect()
}

fn value(m: &HashMap<String, prometheus_parse::Value>, key: &str) -> f64 {
    match m.get(key) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{key}: {other:?} in {:#?}", m.keys().collect::<Vec<_>>()),
    }
}

fn histogram_count(m: &HashMap<String, prometheus_parse::Value>, key: &str) -> f64 {
    match m.get(key) {
        Some(prometheus_parse::Value::Histogram(b)) => {
            b.iter().map(|c| c.count).fold(0.0, f64::max)
        }
        other => panic!("{key}: {other:?}"),
    }
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

    let first = scrape(&lab);
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
    dist_files_use_only_served_metrics(&first);
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

    let second = scrape(&lab);
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

/// The alert rules and the dashboard shipped in dist/ name only metrics ward serves, and the
/// rules file is YAML with an expression for every alert.
fn dist_files_use_only_served_metrics(scrape: &str) {
    let served: std::collections::HashSet<&str> = body(scrape)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist");
    let rules = std::fs::read_to_string(dist.join("prometheus/ward-alerts.yml")).expect("rules");
    let dashboard =
        std::fs::read_to_string(dist.join("grafana/ward-dashboard.json")).expect("dashboard");
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules).expect("alert rules are YAML");
    let alerts = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("a rules list");
    assert!(alerts.len() >= 5);
    for a in alerts {
        assert!(
            a["alert"].as_str().is_some() && a["expr"].as_str().is_some(),
            "{a:?}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 10));
    for (file, text) in [("alert rules", &rules), ("dashboard", &dashboard)] {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("ward_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                served.contains(name.as_str()),
                "{file} uses {name}, which ward does not serve"
            );
            rest = &rest[at + name.len()..];
        }
    }
}

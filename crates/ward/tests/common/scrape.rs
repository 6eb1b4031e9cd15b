//! Scraping `--metrics` in a lab: `GET /metrics` from inside the firewall's namespace, checked
//! against the exposition format, its samples by key, and dist/'s files against what it serves.

use super::Lab;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET /metrics` from inside the firewall's namespace, where ward serves it on `addr`.
pub fn scrape(lab: &Lab, addr: &'static str) -> String {
    lab.fw()
        .run(move || {
            let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
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
pub fn body(resp: &str) -> &str {
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
pub fn samples(body: &str) -> HashMap<String, prometheus_parse::Value> {
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

pub fn value(m: &HashMap<String, prometheus_parse::Value>, key: &str) -> f64 {
    match m.get(key) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{key}: {other:?} in {:#?}", m.keys().collect::<Vec<_>>()),
    }
}

pub fn histogram_count(m: &HashMap<String, prometheus_parse::Value>, key: &str) -> f64 {
    match m.get(key) {
        Some(prometheus_parse::Value::Histogram(b)) => {
            b.iter().map(|c| c.count).fold(0.0, f64::max)
        }
        other => panic!("{key}: {other:?}"),
    }
}

/// The alert rules and the dashboard shipped in dist/ name only metrics served in `body` (but
/// for those in `absent`), and the rules file is YAML with an expression for every alert.
pub fn dist_files_use_only_served_metrics(body: &str, absent: &[&str]) {
    let served: std::collections::HashSet<&str> = body
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
                served.contains(name.as_str()) || absent.contains(&name.as_str()),
                "{file} uses {name}, which ward does not serve"
            );
            rest = &rest[at + name.len()..];
        }
    }
}

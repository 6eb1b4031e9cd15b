//! `ward engine --metrics` on real traffic: the scrape carries SPEC §7's families from the
//! engine's own counters and the proxy's, and they move by exactly what the lab sent.

mod common;

use common::scrape::*;
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};
use testlab::{Firewall, Zone};

const METRICS: &str = "127.0.0.1:9580";
/// The engine's table, smaller than the default so that it is seen to be the engine's.
const CAPACITY: &str = "4096";

/// Long enough for a first packet that waits for ARP to be sent again.
const PATIENT: Duration = Duration::from_secs(3);

/// SPEC §7's drop reasons, every one of which the engine counts.
const DROP_REASONS: [&str; 10] = [
    "no_matching_allow_rule",
    "explicit_deny",
    "malformed_packet",
    "fragmented_ipv4",
    "ipv6_unsupported",
    "rate_limit_dns",
    "conntrack_full",
    "nat_port_pool_exhausted",
    "dnat_no_backend",
    "non_ip",
];

fn engine_lab() -> Lab {
    Lab::up_with(LabSpec::unique("wm"), Firewall::Userspace).unwrap_or_else(|e| {
        panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
    })
}

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

type Samples = HashMap<String, prometheus_parse::Value>;

/// Scrapes until `done` holds (the loop publishes its counters every 100 ms or so), or
/// panics with the last scrape after a few seconds.
fn scrape_until(lab: &Lab, done: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(lab, METRICS);
        let s = samples(body(&text));
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the counters did not get there:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn engine_counters_are_served_and_move_by_exactly_what_was_sent() {
    const N: usize = 7;
    let lab = engine_lab();
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    let yaml = policy();
    let engine = WardRun::engine(
        &lab,
        &yaml,
        &[
            "--gateway",
            &addr::WAN_HOST.to_string(),
            "--conntrack-capacity",
            CAPACITY,
            "--metrics",
            METRICS,
        ],
    );

    // Served from the start: the loop's first snapshot is taken before it forwards.
    let first = scrape(&lab, METRICS);
    let before = samples(body(&first));
    for family in [
        "ward_rule_accepts_total{rule_id=ping-out}",
        "ward_rule_accepts_total{rule_id=web-by-name}",
        "ward_rule_drops_total{rule_id=no-telnet}",
        "ward_rule_bytes_total{rule_id=web-by-name}",
        "ward_nat_translations_total{kind=snat}",
        "ward_nat_translations_total{kind=dnat}",
        "ward_conntrack_entries",
        "ward_dns_queries_total{outcome=success}",
        "ward_dns_queries_total{outcome=truncated_upgraded_to_tcp}",
        "ward_fqdn_set_size",
        "ward_fqdn_set_evictions_total{reason=ttl_expired}",
        "ward_fqdn_set_evictions_total{reason=capacity_pressure}",
    ] {
        assert!(
            before.contains_key(family),
            "{family} missing from the scrape:\n{first}"
        );
    }
    let reasons: BTreeSet<&str> = before
        .keys()
        .filter_map(|k| k.strip_prefix("ward_drops_total{drop_reason="))
        .filter_map(|k| k.strip_suffix('}'))
        .collect();
    assert_eq!(reasons, BTreeSet::from(DROP_REASONS), "{first}");
    // The engine's defaults are drop reasons, not rules; no event log, no log families.
    assert!(!first.contains("rule_id=\"default-deny\""), "{first}");
    assert!(!first.contains("ward_log_events"), "{first}");
    assert_eq!(value(&before, "ward_conntrack_capacity"), 4096.0);
    // The shipped alert rules and dashboard work for the engine too, its missing event log
    // aside.
    dist_files_use_only_served_metrics(body(&first), &["ward_log_events_total"]);
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
            .ping(IpAddr::V4(addr::WAN_HOST), PATIENT)
            .expect("ping");
        assert_pass(&p, &format!("ping {i} through the engine"));
    }
    // One SYN: the probe gives up before TCP's first retransmission (1 s).
    assert_blocked(&lan_to_wan(&lab, 23), "telnet");
    assert_eq!(resolve(&lab, "ok.test."), vec![IpAddr::V4(addr::WAN_HOST)]);

    let key_moved = |s: &Samples, key: &str| value(s, key) - value(&before, key);
    let after = scrape_until(&lab, |s| {
        key_moved(s, "ward_rule_accepts_total{rule_id=ping-out}") >= N as f64
            && key_moved(s, "ward_rule_drops_total{rule_id=no-telnet}") >= 1.0
    });
    // Exactly, and still so a few publishes later.
    std::thread::sleep(Duration::from_millis(350));
    let later = scrape_until(&lab, |_| true);
    for s in [&after, &later] {
        let moved = |key: &str| key_moved(s, key);
        assert_eq!(moved("ward_rule_accepts_total{rule_id=ping-out}"), N as f64);
        // Every ping was a new flow through the masquerade rule.
        assert_eq!(moved("ward_nat_translations_total{kind=snat}"), N as f64);
        assert_eq!(moved("ward_nat_translations_total{kind=dnat}"), 0.0);
        assert_eq!(moved("ward_rule_drops_total{rule_id=no-telnet}"), 1.0);
        assert_eq!(moved("ward_drops_total{drop_reason=explicit_deny}"), 1.0);
        assert!(moved("ward_rule_bytes_total{rule_id=ping-out}") >= (N * 28) as f64);
        assert_eq!(moved("ward_rule_accepts_total{rule_id=web-by-name}"), 0.0);
        assert_eq!(moved("ward_dns_queries_total{outcome=success}"), 1.0);
        assert_eq!(value(s, "ward_fqdn_set_size"), 1.0);
        assert_eq!(
            histogram_count(s, "ward_dns_lookup_duration_seconds")
                - histogram_count(&before, "ward_dns_lookup_duration_seconds"),
            1.0
        );
        // The pings' flows (and the proxy's upstream query) are in the engine's table.
        assert!(value(s, "ward_conntrack_entries") >= N as f64);
        assert_eq!(value(s, "ward_conntrack_capacity"), 4096.0);
    }

    // What the stop report says is what was served.
    let report = engine.stop();
    let line = |prefix: &str| {
        report
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{report}"))
            .to_string()
    };
    assert_eq!(
        line("rule ping-out "),
        format!(
            "rule ping-out accept packets={} bytes={}",
            value(&later, "ward_rule_accepts_total{rule_id=ping-out}"),
            value(&later, "ward_rule_bytes_total{rule_id=ping-out}")
        )
    );
    assert_eq!(
        line("drop explicit_deny "),
        format!(
            "drop explicit_deny {}",
            value(&later, "ward_drops_total{drop_reason=explicit_deny}")
        )
    );
    lab.down().expect("lab down");
}

#[test]
fn a_metrics_address_it_cannot_take_stops_the_engine_from_starting() {
    let lab = engine_lab();
    let file = PolicyFile::new(&policy());
    // The address taken by someone else in the firewall's namespace, then one not there.
    let taken = lab
        .fw()
        .run(|| TcpListener::bind(METRICS))
        .expect("run in the firewall's namespace")
        .expect("bind the metrics address first");
    for (addr, why) in [
        (METRICS, "Address already in use"),
        ("192.0.2.1:9580", "Cannot assign requested address"),
    ] {
        let lan = format!("{}/{}", addr::FW_LAN, addr::PREFIX_LEN);
        let wan = format!("{}/{}", addr::FW_WAN, addr::PREFIX_LEN);
        let o = ward(&[
            "engine",
            file.path(),
            "--netns",
            lab.fw().name(),
            "--lan",
            "lan0",
            "--wan",
            "wan0",
            "--lan-addr",
            &lan,
            "--wan-addr",
            &wan,
            "--metrics",
            addr,
        ]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{addr}: {out}");
        assert!(
            out.contains(&format!("error: cannot serve metrics on {addr}: {why}")),
            "{addr}: {out}"
        );
        assert!(out.contains("the engine did not start"), "{addr}: {out}");
        assert!(!out.contains("ward engine: ready"), "{addr}: {out}");
    }
    drop(taken);
    lab.down().expect("lab down");
}

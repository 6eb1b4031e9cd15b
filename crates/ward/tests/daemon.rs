//! `ward run` as a daemon, on real traffic: SIGHUP re-applies the file (a broken one keeps the
//! running policy and marks status degraded), repeated SIGHUPs are coalesced, a reload changes
//! the DNS proxy's names too, and SIGTERM leaves the policy enforced.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::net::IpAddr;
use std::time::Duration;
use testlab::Zone;

const RELOAD: Duration = Duration::from_secs(20);

/// Allows LAN → WAN TCP to `port` only, and names matching `fqdn` on port 80 (if given).
fn policy(port: u16, fqdn: Option<&str>) -> String {
    let mut p = format!(
        "{}dns:
  min_ttl: 1
rules:
  - {{id: open-{port}, direction: egress, destination: 198.51.100.20, protocol: tcp, destination_port: {port}, action: accept}}
",
        closed_gateway()
    );
    if let Some(name) = fqdn {
        p.push_str(&format!(
            "  - {{id: by-name, direction: egress, destination_fqdn: {name}, protocol: tcp, destination_port: 80, action: accept}}\n"
        ));
    }
    p
}

fn status_json(lab: &Lab) -> serde_json::Value {
    let o = ward(&["status", "--json", "--netns", lab.fw().name()]);
    assert!(o.status.success(), "ward status: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("status is JSON")
}

fn reload(run: &mut WardRun, yaml: &str) -> String {
    std::fs::write(&run.file().0, yaml).expect("rewrite policy");
    run.signal(Signal::SIGHUP);
    run.wait_for("applied", RELOAD)
}

#[test]
fn sighup_reapplies_and_a_broken_file_keeps_the_running_policy() {
    let lab = lab();
    let mut run = WardRun::start(&lab, &policy(8080, None));
    assert_pass(&lan_to_wan(&lab, 8080), "8080 under the first policy");
    assert_blocked(&lan_to_wan(&lab, 9090), "9090 under the first policy");

    let line = reload(&mut run, &policy(9090, None));
    assert!(line.starts_with("reapplied"), "{line}");
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after the reload");
    assert_blocked(&lan_to_wan(&lab, 8080), "8080 after the reload");
    assert_eq!(status_json(&lab)["overall"], "healthy");

    // A file that does not parse: the error is reported with its place, nothing changes.
    let before = live_table(&lab);
    std::fs::write(&run.file().0, "rules:\n  - {id: broken, action: [\n").expect("rewrite");
    run.signal(Signal::SIGHUP);
    let line = run.wait_for("error", RELOAD);
    assert!(line.contains(run.file().path()), "{line}");
    run.wait_for("reload failed; the running policy stays in force", RELOAD);
    assert_eq!(
        live_table(&lab),
        before,
        "a failed reload changed the table"
    );
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after the failed reload");
    let st = status_json(&lab);
    assert_eq!(st["overall"], "degraded", "{st}");
    assert!(
        st["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{st}"
    );

    // Fixed again: healthy again.
    reload(&mut run, &policy(9090, None));
    assert_eq!(status_json(&lab)["overall"], "healthy");

    // SIGTERM: the daemon goes, the policy stays.
    let out = run.stop();
    assert!(out.contains("the policy stays enforced"), "{out}");
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after ward run stopped");
    assert_blocked(&lan_to_wan(&lab, 8080), "8080 after ward run stopped");
    lab.down().unwrap();
}

#[test]
fn repeated_sighups_are_coalesced_into_at_most_two_reloads() {
    let lab = lab();
    let mut run = WardRun::start(&lab, &policy(8080, None));
    std::fs::write(&run.file().0, policy(9090, None)).expect("rewrite policy");
    for _ in 0..10 {
        run.signal(Signal::SIGHUP);
    }
    run.wait_for("reapplied", RELOAD);
    // Whatever was coalesced into a second reload has finished well within this.
    std::thread::sleep(Duration::from_secs(2));
    let more = run
        .lines()
        .iter()
        .filter(|l| l.starts_with("reapplied"))
        .count();
    assert!(more <= 1, "10 SIGHUPs gave {} reloads", more + 1);
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after the reloads");
    run.stop();
    lab.down().unwrap();
}

#[test]
fn a_reload_gives_the_dns_proxy_the_new_names() {
    let lab = lab();
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[21]);
    let short = wan(21);
    let connect = |dst: IpAddr| tcp(&lab.lan(), &lab.wan(), dst, 80);

    let mut run = WardRun::start(&lab, &policy(8080, Some("ok.test")));
    assert_eq!(resolve(&lab, "ok.test."), vec![IpAddr::V4(addr::WAN_HOST)]);
    assert_pass(&connect(IpAddr::V4(addr::WAN_HOST)), "ok.test, resolved");
    assert_eq!(resolve(&lab, "short.test."), vec![short]);
    assert_blocked(&connect(short), "short.test, not listed yet");

    reload(&mut run, &policy(8080, Some("short.test")));
    assert_eq!(resolve(&lab, "short.test."), vec![short]);
    assert_pass(&connect(short), "short.test, listed by the reload");
    let out = run.stop();
    assert!(out.contains("DNS: success=3"), "{out}");
    lab.down().unwrap();
}

//! `ward engine` reloading its policy on SIGHUP, on real traffic: new rules in force without a
//! restart, established connections carried on, a broken file or a change it cannot make kept
//! out, SIGHUPs coalesced, and the addresses a name rule learned kept across a reload.

mod common;

use common::scrape::{body, scrape};
use common::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;
use testlab::{Firewall, Zone};

const RELOAD: Duration = Duration::from_secs(20);
const METRICS: &str = "127.0.0.1:9581";

fn engine_lab() -> Lab {
    Lab::up_with(LabSpec::unique("wr"), Firewall::Userspace).unwrap_or_else(|e| {
        panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
    })
}

/// Denies by default; allows LAN → WAN TCP to `ports`, then `rules` (YAML list items).
fn policy(ports: &[u16], rules: &str) -> String {
    let mut p = format!("{}dns:\n  min_ttl: 1\nrules:\n", closed_gateway());
    for port in ports {
        p.push_str(&format!(
            "  - {{id: open-{port}, direction: egress, protocol: tcp, destination_port: {port}, action: accept}}\n"
        ));
    }
    p.push_str(rules);
    p
}

/// `ward engine` with the WAN host as its gateway.
fn start(lab: &Lab, yaml: &str, args: &[&str]) -> WardRun {
    let gateway = addr::WAN_HOST.to_string();
    let mut all = vec!["--gateway", gateway.as_str()];
    all.extend_from_slice(args);
    WardRun::engine(lab, yaml, &all)
}

/// Rewrites the file, sends SIGHUP, and returns the `reloaded` line.
fn reload(run: &mut WardRun, yaml: &str) -> String {
    std::fs::write(&run.file().0, yaml).expect("rewrite policy");
    run.signal(Signal::SIGHUP);
    run.wait_for("reloaded", RELOAD)
}

/// The `policy sha256` a `reloaded` line names.
fn sha_of(line: &str) -> String {
    line.split("policy sha256 ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no sha256 in {line:?}"))
        .to_string()
}

#[test]
fn sighup_reloads_and_a_broken_or_unsupported_file_keeps_the_running_policy() {
    let lab = engine_lab();
    let mut run = start(&lab, &policy(&[8080], ""), &["--metrics", METRICS]);
    assert_pass(&lan_to_wan(&lab, 8080), "8080 under the first policy");
    assert_blocked(&lan_to_wan(&lab, 9090), "9090 under the first policy");

    let line = reload(&mut run, &policy(&[9090], ""));
    assert!(line.starts_with("reloaded: policy sha256 "), "{line}");
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after the reload");
    assert_blocked(&lan_to_wan(&lab, 8080), "8080 after the reload");
    // The metrics name the new policy and its rules, counted from 0.
    let m = scrape(&lab, METRICS);
    let m = body(&m);
    assert!(
        m.contains(&format!("rules_sha=\"{}\"", sha_of(&line))),
        "{m}"
    );
    assert!(m.contains("rule_id=\"open-9090\""), "{m}");
    assert!(!m.contains("rule_id=\"open-8080\""), "{m}");

    // A file that does not parse: the error says where, the running policy stays.
    std::fs::write(&run.file().0, "rules:\n  - {id: broken, action: [\n").expect("rewrite");
    run.signal(Signal::SIGHUP);
    let line = run.wait_for("error", RELOAD);
    let at = line
        .split(&format!("{}:", run.file().path()))
        .nth(1)
        .unwrap_or_else(|| panic!("no file in {line:?}"));
    let place: Vec<&str> = at.splitn(3, ':').collect();
    assert!(
        place.len() == 3 && place[..2].iter().all(|n| n.parse::<u32>().is_ok()),
        "no file:line:col in {line:?}"
    );
    run.wait_for("reload failed; the running policy stays in force", RELOAD);
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after the failed reload");
    assert_blocked(&lan_to_wan(&lab, 8080), "8080 after the failed reload");

    // Name rules need the DNS proxy the engine did not start with.
    let names = policy(
        &[8080],
        "  - {id: by-name, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}\n",
    );
    std::fs::write(&run.file().0, names).expect("rewrite");
    run.signal(Signal::SIGHUP);
    let line = run.wait_for("restart ward engine for that", RELOAD);
    assert!(line.contains("destination_fqdn"), "{line}");
    run.wait_for("reload failed; the running policy stays in force", RELOAD);
    assert_blocked(&lan_to_wan(&lab, 8080), "8080 after the refused reload");

    // Fixed again; SIGTERM still stops with the report, of the rules in force.
    reload(&mut run, &policy(&[8080], ""));
    assert_pass(&lan_to_wan(&lab, 8080), "8080 after the last reload");
    let out = run.stop();
    assert!(out.contains("ward engine: stopped"), "{out}");
    assert!(out.contains("rule open-8080 accept packets="), "{out}");
    assert!(!out.contains("rule open-9090"), "{out}");
    lab.down().unwrap();
}

#[test]
fn an_established_connection_outlives_a_reload_that_would_not_admit_it() {
    let lab = engine_lab();
    let mut run = start(&lab, &policy(&[7000], ""), &[]);
    let server = SocketAddr::new(IpAddr::V4(addr::WAN_HOST), 7000);
    let _echo = lab.wan().tcp_echo_server(server).expect("echo server");
    let mut conn = lab
        .lan()
        .run(move || TcpStream::connect_timeout(&server, Duration::from_secs(3)))
        .expect("enter the LAN namespace")
        .expect("connect through the engine");
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let echo = |conn: &mut TcpStream, msg: &[u8]| {
        conn.write_all(msg).expect("send");
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).expect("echoed back");
        assert_eq!(back, msg);
    };
    echo(&mut conn, b"before the reload\n");

    reload(&mut run, &policy(&[7001], ""));
    let fresh = lab.lan().tcp_probe(server, TIMEOUT).expect("tcp probe");
    assert_blocked(&fresh, "a new connection to 7000");
    echo(&mut conn, b"after the reload\n");
    // And a while after, in both directions, many segments.
    for i in 0..50 {
        echo(&mut conn, format!("segment {i}\n").as_bytes());
    }
    drop(conn);
    run.stop();
    lab.down().unwrap();
}

#[test]
fn sighups_during_a_reload_are_coalesced_into_one_more() {
    let lab = engine_lab();
    let mut run = start(&lab, &policy(&[8080], ""), &[]);
    std::fs::write(&run.file().0, policy(&[9090], "")).expect("rewrite policy");
    for _ in 0..10 {
        run.signal(Signal::SIGHUP);
    }
    run.wait_for("reloaded", RELOAD);
    // Whatever was coalesced into a second reload has finished well within this.
    std::thread::sleep(Duration::from_secs(2));
    let more = run
        .lines()
        .iter()
        .filter(|l| l.starts_with("reloaded"))
        .count();
    assert!(more <= 1, "10 SIGHUPs gave {} reloads", more + 1);
    assert_pass(&lan_to_wan(&lab, 9090), "9090 after the reloads");
    run.stop();
    lab.down().unwrap();
}

#[test]
fn a_reload_keeps_what_an_unchanged_name_rule_learned_and_gives_the_proxy_new_names() {
    let lab = engine_lab();
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[21]);
    let connect = |dst: IpAddr| tcp(&lab.lan(), &lab.wan(), dst, 80);
    const OK: &str = "  - {id: by-name, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}\n";
    const SHORT: &str = "  - {id: short, direction: egress, destination_fqdn: short.test, protocol: tcp, destination_port: 80, action: accept}\n";
    let mut run = start(&lab, &policy(&[], OK), &[]);
    let ok = IpAddr::V4(addr::WAN_HOST);
    assert_eq!(resolve(&lab, "ok.test."), vec![ok]);
    assert_pass(&connect(ok), "ok.test, resolved");

    // An unrelated rule first: the name rule moves, its learned address with it.
    let line = reload(&mut run, &policy(&[8080], &format!("{OK}{SHORT}")));
    assert!(line.contains("1 learned address kept"), "{line}");
    assert!(line.contains("the DNS proxy has the new names"), "{line}");
    assert_pass(&connect(ok), "ok.test after the reload, not resolved again");
    assert_pass(&lan_to_wan(&lab, 8080), "the rule the reload added");

    // The proxy knows the new rule's names.
    assert_blocked(&connect(wan(21)), "short.test, not resolved yet");
    assert_eq!(resolve(&lab, "short.test."), vec![wan(21)]);
    assert_pass(&connect(wan(21)), "short.test, listed by the reload");

    // A reload that changes the name rule's names drops what it learned.
    let other = OK.replace("ok.test", "[ok.test, end.test]");
    reload(&mut run, &policy(&[8080], &format!("{other}{SHORT}")));
    assert_blocked(
        &connect(ok),
        "ok.test, its rule changed and not resolved since",
    );
    assert_eq!(resolve(&lab, "ok.test."), vec![ok]);
    assert_pass(&connect(ok), "ok.test, resolved again");
    let out = run.stop();
    assert!(out.contains("dns "), "{out}");
    lab.down().unwrap();
}

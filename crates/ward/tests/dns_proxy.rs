//! `destination_fqdn` rules on real traffic, on both data planes: the LAN host resolves through
//! ward's proxy (a real authoritative server upstream, in the WAN namespace), then connects.
//! On the kernel plane the proxy is `ward run`'s and learns into nftables sets; on the engine
//! it runs on `ward engine`'s host stack and learns into the engine's tables. Every policy
//! denies by default in all three directions, so the proxy's own traffic passes only through
//! the plumbing ward provides for it.

#[macro_use]
mod common;

use common::scrape::{body, samples, scrape, value};
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use testlab::{answer_addrs, dns_exchange, dns_query, edns, Transport, Zone};

/// Where ward serves `--metrics`, inside the firewall's namespace.
const METRICS: &str = "127.0.0.1:9581";
/// Long enough for a SYN that was lost to be sent again (the first retry is after 1 s).
const PATIENT: Duration = Duration::from_secs(5);

/// `ward run`, or `ward engine` with the WAN host as its gateway (as the kernel lab's
/// firewall routes through it).
fn start(plane: Plane, lab: &Lab, yaml: &str) -> WardRun {
    match plane {
        Plane::Kernel => WardRun::start(lab, yaml),
        Plane::Engine => WardRun::engine(lab, yaml, &["--gateway", &addr::WAN_HOST.to_string()]),
    }
}

/// A gateway policy with the upstream in the WAN namespace and the given extra settings.
fn policy(dns: &str, rules: &str) -> String {
    format!(
        "{}dns:
  min_ttl: 1
{dns}rules:
{rules}",
        closed_gateway()
    )
}

/// LAN host → `dst`:80 (a server on the WAN host, which owns `dst`).
fn connect(lab: &Lab, dst: IpAddr) -> Probe {
    tcp(&lab.lan(), &lab.wan(), dst, 80)
}

fn resolve_then_connect_and_never_resolved_stays_blocked(plane: Plane) {
    let lab = lab_on(plane);
    let dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[21]);
    let ward = start(
        plane,
        &lab,
        &policy(
            "",
            "  - {id: web-ok, direction: egress, destination_fqdn: [ok.test, v6.test, short.test], protocol: tcp, destination_port: 80, action: accept}\n",
        ),
    );
    assert_blocked(
        &connect(&lab, wan(20)),
        "ok.test's address before any answer",
    );
    assert_eq!(resolve(&lab, "ok.test."), vec![wan(20)]);
    assert_pass(&connect(&lab, wan(20)), "ok.test's address once resolved");
    assert_blocked(
        &connect(&lab, wan(21)),
        "short.test's address, listed but never resolved",
    );
    assert_blocked(
        &tcp(&lab.lan(), &lab.wan(), wan(20), 81),
        "the learned address on a port the rule does not allow",
    );

    // AAAA learns into the IPv6 set (the engine forwards IPv4 only, but answers alike).
    let m = ask(&lab, PROXY, "v6.test.", RecordType::AAAA, Transport::Udp);
    let v6 = IpAddr::V6(addr::WAN_HOST6);
    assert_eq!(answer_addrs(&m), vec![v6]);
    if plane == Plane::Kernel {
        assert_pass(&connect(&lab, v6), "v6.test's address once resolved");
    }

    // Over TCP too, and the Client Subnet a client sends never reaches the upstream.
    let mut e = edns(1232);
    e.options_mut()
        .insert(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
            hickory_proto::rr::rdata::opt::ClientSubnet::new(IpAddr::V4(addr::LAN_HOST), 24, 0),
        ));
    let m = lab
        .lan()
        .dns(
            PROXY,
            dns_query("short.test.", RecordType::A, Some(e)),
            Transport::Tcp,
            DNS_TIMEOUT,
        )
        .expect("TCP query with ECS");
    assert_eq!(answer_addrs(&m), vec![wan(21)]);
    assert!(
        !dns.last_query_had_ecs(),
        "ECS must be stripped before forwarding"
    );
    assert_pass(
        &connect(&lab, wan(21)),
        "short.test's address once resolved over TCP",
    );

    // NXDOMAIN passes through untouched.
    let m = ask(&lab, PROXY, "nope.test.", RecordType::A, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let out = ward.stop();
    assert!(out.contains("success=3"), "{out}");
    assert!(out.contains("nxdomain=1"), "{out}");
    lab.down().unwrap();
}

fn wildcard_depth_subtree_and_cname_chain(plane: Plane) {
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[22, 30, 31, 32, 40, 41, 42, 43]);
    let ward = start(
        plane,
        &lab,
        &policy(
            "",
            "  - {id: one-label, direction: egress, destination_fqdn: \"*.wild.test\", protocol: tcp, destination_port: 80, action: accept}
  - {id: subtree, direction: egress, destination_fqdn: .a.sub.test, protocol: tcp, destination_port: 80, action: accept}
  - {id: chain, direction: egress, destination_fqdn: alias.test, protocol: tcp, destination_port: 80, action: accept}
",
        ),
    );
    for (name, last, allowed) in [
        ("wild.test.", 30, false),     // the apex is not one label below
        ("a.wild.test.", 31, true),    // exactly one label
        ("a.b.wild.test.", 32, false), // two labels
        ("sub.test.", 40, false),      // above the subtree
        ("a.sub.test.", 41, true),     // the subtree's own name
        ("b.a.sub.test.", 42, true),
        ("c.b.a.sub.test.", 43, true),
    ] {
        assert_eq!(resolve(&lab, name), vec![wan(last)], "{name}");
        let p = connect(&lab, wan(last));
        if allowed {
            assert_pass(&p, name);
        } else {
            assert_blocked(&p, name);
        }
    }
    // alias.test → mid.test → end.test (A .22): the address at the end is allowed.
    assert_eq!(resolve(&lab, "alias.test."), vec![wan(22)]);
    assert_pass(
        &connect(&lab, wan(22)),
        "the end of alias.test's CNAME chain",
    );
    ward.stop();
    lab.down().unwrap();
}

fn expiry_blocks_new_connections_but_not_established_ones(plane: Plane) {
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[21]);
    let ward = start(
        plane,
        &lab,
        &policy(
            "",
            "  - {id: short, direction: egress, destination_fqdn: short.test, protocol: tcp, destination_port: 7, action: accept}\n",
        ),
    );
    let _echo = lab
        .wan()
        .tcp_echo_server(SocketAddr::new(wan(21), 7))
        .expect("echo server");
    // short.test has TTL 2 (min_ttl is 1 here).
    assert_eq!(resolve(&lab, "short.test."), vec![wan(21)]);
    let mut conn = lab
        .lan()
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(wan(21), 7), TIMEOUT))
        .expect("netns")
        .expect("connect within the TTL");
    std::thread::sleep(Duration::from_millis(3500));
    assert_blocked(
        &lab.lan()
            .tcp_probe(SocketAddr::new(wan(21), 7), TIMEOUT)
            .expect("probe"),
        "a new connection after the TTL expired",
    );
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    conn.write_all(b"still here")
        .expect("write on the established connection");
    let mut buf = [0u8; 10];
    conn.read_exact(&mut buf)
        .expect("the established connection keeps working after expiry");
    assert_eq!(&buf, b"still here");
    ward.stop();
    lab.down().unwrap();
}

fn a_thousand_rounds_of_resolve_then_connect_immediately(plane: Plane) {
    const ROUNDS: u32 = 1000;
    let lab = lab_on(plane);
    // Every round a name never seen before with an address never allowed before: 10.77.x.y,
    // all of them local to the WAN host (AnyIP), routed there by the firewall.
    let zone = (0..ROUNDS).fold(Zone::new("race.test."), |z, i| {
        z.a(&format!("r{i}.race.test."), round_addr(i), 300)
    });
    let _dns = lab.wan().dns_server(zone).expect("upstream");
    lab.wan()
        .ip(&["route", "add", "local", "10.77.0.0/16", "dev", "lo"])
        .expect("AnyIP on the WAN host");
    if plane == Plane::Kernel {
        // The engine sends it to its gateway, the WAN host.
        lab.fw()
            .ip(&["route", "add", "10.77.0.0/16", "via", "198.51.100.20"])
            .expect("route to the WAN host's extra range");
    }
    let _srv = lab
        .wan()
        .tcp_server(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80))
        .expect("server");
    // A SYN that arrives before its address is allowed is counted by `race-miss`: a race is
    // seen even when the retransmitted SYN then gets through, and a slow connect under load
    // (the generous timeout below) is not mistaken for one.
    let yaml = policy(
        "",
        "  - {id: race, direction: egress, destination_fqdn: \"*.race.test\", protocol: tcp, destination_port: 80, action: accept}
  - {id: race-miss, direction: egress, protocol: tcp, destination_port: 80, action: deny}\n",
    )
    // One client asking as fast as it can: well over the default 100 a second.
    .replace("upstream_dns:", "dns_qps_per_client: 100000\n  upstream_dns:");
    let metrics = ["--metrics", METRICS];
    let ward = match plane {
        Plane::Kernel => WardRun::start_with(&lab, &yaml, &metrics),
        Plane::Engine => WardRun::engine(
            &lab,
            &yaml,
            &[
                "--gateway",
                &addr::WAN_HOST.to_string(),
                metrics[0],
                metrics[1],
            ],
        ),
    };
    // The allowed SYNs and the missed ones so far, once the counters show `rounds` allowed
    // (the engine publishes its counters every 100 ms or so).
    let counts = |rounds: u32| {
        let deadline = Instant::now() + PATIENT;
        loop {
            let s = samples(body(&scrape(&lab, METRICS)));
            let allowed = value(&s, "ward_rule_accepts_total{rule_id=race}");
            if allowed >= rounds as f64 || Instant::now() > deadline {
                return (
                    allowed,
                    value(&s, "ward_rule_drops_total{rule_id=race-miss}"),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut failures = Vec::new();
    let mut next = 0;
    while next < ROUNDS {
        // Rounds up to one whose connect took a second or more: its first SYN was dropped and
        // sent again, or the machine is only busy. The counters tell which, before going on.
        let (mut failed, done) = lab
            .lan()
            .run(move || {
                let mut failures = Vec::new();
                for i in next..ROUNDS {
                    let name = format!("r{i}.race.test.");
                    let wire = dns_query(&name, RecordType::A, Some(edns(1232)));
                    let addrs = match dns_exchange(PROXY, &wire, Transport::Udp, DNS_TIMEOUT) {
                        Ok(m) => answer_addrs(&m),
                        Err(e) => {
                            failures.push(format!("{name}: query: {e}"));
                            continue;
                        }
                    };
                    let Some(&dst) = addrs.first() else {
                        failures.push(format!("{name}: no address"));
                        continue;
                    };
                    let sent = Instant::now();
                    if let Err(e) = TcpStream::connect_timeout(&SocketAddr::new(dst, 80), PATIENT) {
                        failures.push(format!("{name} → {dst}: connect: {e}"));
                    }
                    if sent.elapsed() >= Duration::from_secs(1) {
                        return (failures, i + 1);
                    }
                }
                (failures, ROUNDS)
            })
            .expect("netns");
        failures.append(&mut failed);
        next = done;
        let (_, missed) = counts(next);
        assert_eq!(
            missed, 0.0,
            "SYNs arrived before their address was allowed (by round {next})"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} rounds failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let (allowed, _) = counts(ROUNDS);
    assert_eq!(
        allowed, ROUNDS as f64,
        "one new connection allowed per round"
    );
    ward.stop();
    lab.down().unwrap();
}

fn round_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn truncated_answers_are_fetched_over_tcp(plane: Plane) {
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[139]);
    let ward = start(
        plane,
        &lab,
        &policy(
            "",
            "  - {id: big, direction: egress, destination_fqdn: big.test, protocol: tcp, destination_port: 80, action: accept}\n",
        ),
    );
    // A classic query (no EDNS): the upstream truncates its 40-address answer over UDP.
    let m = lab
        .lan()
        .dns(
            PROXY,
            dns_query("big.test.", RecordType::A, None),
            Transport::Udp,
            DNS_TIMEOUT,
        )
        .expect("UDP query");
    assert!(
        m.metadata.truncation,
        "over 512 bytes: the UDP client is told to ask over TCP"
    );
    // ward fetched the whole answer over TCP and allowed all 40 addresses, the last included.
    assert_pass(&connect(&lab, wan(139)), "the 40th address of big.test");
    let m = lab
        .lan()
        .dns(
            PROXY,
            dns_query("big.test.", RecordType::A, None),
            Transport::Tcp,
            DNS_TIMEOUT,
        )
        .expect("TCP query");
    assert_eq!(answer_addrs(&m).len(), 40);
    let out = ward.stop();
    assert!(out.contains("truncated_upgraded_to_tcp=2"), "{out}");
    lab.down().unwrap();
}

fn rate_limit_and_unlisted_nxdomain(plane: Plane) {
    let lab = lab_on(plane);
    let dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    let ward = start(
        plane,
        &lab,
        &policy(
            "  unlisted: nxdomain\n",
            "  - {id: web-ok, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}\n",
        )
        .replace("upstream_dns:", "dns_qps_per_client: 5\n  upstream_dns:"),
    );
    let before = dns.queries();
    let m = ask(&lab, PROXY, "sub.test.", RecordType::A, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "unlisted");
    assert_eq!(
        dns.queries(),
        before,
        "an unlisted name is answered locally"
    );

    // The bucket holds 5 and refills at 5 a second: of 20 quick queries, most are refused.
    let codes: Vec<ResponseCode> = (0..20)
        .map(|_| {
            ask(&lab, PROXY, "ok.test.", RecordType::A, Transport::Udp)
                .metadata
                .response_code
        })
        .collect();
    let refused = codes
        .iter()
        .filter(|c| **c == ResponseCode::ServFail)
        .count();
    let answered = codes
        .iter()
        .filter(|c| **c == ResponseCode::NoError)
        .count();
    assert_eq!(refused + answered, 20, "{codes:?}");
    assert!((4..=8).contains(&answered), "{codes:?}");
    assert!(
        dns.queries() - before <= answered as u64,
        "refused queries are not forwarded"
    );
    let out = ward.stop();
    assert!(out.contains("blocked=1"), "{out}");
    assert!(out.contains(&format!("rate_limited={refused}")), "{out}");
    lab.down().unwrap();
}

fn queries_to_other_resolvers_are_intercepted(plane: Plane) {
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    let ward = start(
        plane,
        &lab,
        &policy(
            "",
            "  - {id: web-ok, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}\n",
        ),
    );
    // 203.0.113.53 exists nowhere: only the firewall's redirect can answer.
    let elsewhere: SocketAddr = "203.0.113.53:53".parse().expect("addr");
    for t in [Transport::Udp, Transport::Tcp] {
        let m = ask(&lab, elsewhere, "ok.test.", RecordType::A, t);
        assert_eq!(answer_addrs(&m), vec![wan(20)], "{t:?}");
    }
    assert_pass(
        &connect(&lab, wan(20)),
        "learned through the intercepted query",
    );
    ward.stop();
    lab.down().unwrap();
}

fn upstream_failover_and_commit_failure(plane: Plane) {
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    // The first upstream has no server: ward waits it out, then asks the second.
    let yaml = policy(
        "",
        "  - {id: web-ok, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}\n",
    )
    .replace("upstream_dns: 198.51.100.20", "upstream_dns: [198.51.100.99, 198.51.100.20]");
    let ward = start(plane, &lab, &yaml);
    assert_eq!(resolve(&lab, "ok.test."), vec![wan(20)]);
    assert_pass(&connect(&lab, wan(20)), "learned via the second upstream");
    if plane == Plane::Engine {
        // The engine's tables cannot be taken away from under it.
        let out = ward.stop();
        assert!(out.contains("upstream_failures=1"), "{out}");
        lab.down().unwrap();
        return;
    }

    // With ward's table gone, nothing can be committed: the client gets SERVFAIL, never an
    // answer whose addresses are not allowed.
    let o = lab
        .fw()
        .exec("nft", &["delete", "table", "inet", "ward"])
        .expect("nft");
    assert!(o.status.success(), "{o:?}");
    let m = ask(&lab, PROXY, "ok.test.", RecordType::A, Transport::Tcp);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(answer_addrs(&m).is_empty());
    let out = ward.stop();
    assert!(out.contains("commit_failures=1"), "{out}");
    assert!(out.contains("upstream_failures=1"), "{out}");
    lab.down().unwrap();
}

fn kill_9_keeps_default_deny_and_a_restart_recovers(plane: Plane) {
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    wan_owns(&lab, &[21]);
    let yaml = policy(
        "",
        "  - {id: web, direction: egress, destination_fqdn: [ok.test, short.test], protocol: tcp, destination_port: 80, action: accept}\n",
    );
    let ward = start(plane, &lab, &yaml);
    assert_eq!(resolve(&lab, "ok.test."), vec![wan(20)]);
    assert_pass(&connect(&lab, wan(20)), "resolved while ward runs");
    ward.kill9();

    assert_blocked(
        &connect(&lab, wan(21)),
        "never resolved, proxy dead: default deny holds",
    );
    let dead = lab.lan().dns(
        PROXY,
        dns_query("short.test.", RecordType::A, Some(edns(1232))),
        Transport::Udp,
        Duration::from_millis(700),
    );
    assert!(dead.is_err(), "no proxy, no answer: {dead:?}");
    assert_blocked(
        &connect(&lab, wan(21)),
        "still blocked after a failed query",
    );

    let ward = start(plane, &lab, &yaml);
    assert_eq!(resolve(&lab, "short.test."), vec![wan(21)]);
    assert_pass(&connect(&lab, wan(21)), "the restarted proxy learns again");
    ward.stop();
    lab.down().unwrap();
}

/// Kernel plane only: `ward apply` beside `ward run`.
#[test]
fn a_re_apply_keeps_what_unchanged_name_rules_learned() {
    let plane = Plane::Kernel;
    let lab = lab_on(plane);
    let _dns = lab.wan().dns_server(Zone::standard()).expect("upstream");
    let rule = "  - {id: web, direction: egress, destination_fqdn: [ok.test], protocol: tcp, destination_port: 80, action: accept}\n";
    let ward = start(plane, &lab, &policy("", rule));
    assert_eq!(resolve(&lab, "ok.test."), vec![wan(20)]);
    assert_pass(&connect(&lab, wan(20)), "resolved while ward runs");

    // Another rule added, the name rule unchanged: its sets stay, with what they learned.
    let more = policy(
        "",
        &format!("{rule}  - {{id: ntp, direction: egress, protocol: udp, destination_port: 123, action: accept}}\n"),
    );
    apply(&lab, &more);
    assert_pass(
        &connect(&lab, wan(20)),
        "learned before the re-apply, not asked again",
    );
    ward.stop();
    lab.down().unwrap();
}

on_both_planes!(
    resolve_then_connect_and_never_resolved_stays_blocked,
    wildcard_depth_subtree_and_cname_chain,
    expiry_blocks_new_connections_but_not_established_ones,
    a_thousand_rounds_of_resolve_then_connect_immediately,
    truncated_answers_are_fetched_over_tcp,
    rate_limit_and_unlisted_nxdomain,
    queries_to_other_resolvers_are_intercepted,
    upstream_failover_and_commit_failure,
    kill_9_keeps_default_deny_and_a_restart_recovers,
);

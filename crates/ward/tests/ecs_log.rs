//! `ward run --log FILE` and `ward engine --log FILE` on real traffic: connection attempts
//! through the lab's firewall become one ECS event each, with the rule, the flow and the NAT
//! they got (masquerade out, a port-forward in), alike on both data planes. Each attempt sends
//! exactly one SYN, so each logged rule sees exactly one packet.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Below the kernel's first SYN retransmission (1 s): one attempt is one SYN.
const ATTEMPT: Duration = Duration::from_millis(500);
const DISCARD: u16 = 9;
const ECHO: u16 = 7;
const WEB: u16 = 8080;
/// The port-forward: the firewall's second WAN address, to the LAN host's port 80.
const FORWARDED: u16 = 8081;
const INSIDE: u16 = 80;

/// A lab for `plane`, and ward logging to `log` in it.
fn start(plane: Plane, yaml: &str, log: &TempPath) -> (Lab, WardRun) {
    let lab = lab_on(plane);
    let args = ["--log", log.path()];
    let ward = match plane {
        Plane::Kernel => WardRun::start_with(&lab, yaml, &args),
        Plane::Engine => WardRun::engine(&lab, yaml, &args),
    };
    (lab, ward)
}

/// The port-forward's public address: the kernel lab's firewall has a second WAN address;
/// the engine owns one address per side.
fn public_ip(plane: Plane) -> Ipv4Addr {
    match plane {
        Plane::Kernel => addr::FW_WAN2,
        Plane::Engine => addr::FW_WAN,
    }
}

fn policy(public: Ipv4Addr) -> String {
    format!(
        "defaults:
  default_action: deny
  input_action: deny
  output_action: accept
{GATEWAY}rules:
  - id: no-discard
    name: Never the discard service
    direction: egress
    protocol: tcp
    destination_port: {DISCARD}
    action: deny
    log: true
  - id: web-out
    direction: egress
    source: 192.168.50.0/24
    protocol: tcp
    destination_port: {WEB}
    action: accept
    log: true
  - id: web-in
    direction: ingress
    destination: 192.168.50.10
    protocol: tcp
    destination_port: {INSIDE}
    action: accept
    log: true
nat:
  snat:
    - out_interface: wan0
      source: 192.168.50.0/24
      masquerade: true
  dnat:
    - wan_ip: {public}
      wan_port: {FORWARDED}
      to: \"192.168.50.10:{INSIDE}\"
      proto: tcp
"
    )
}

/// A file path that is removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(what: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!(
            "ward-test-{what}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )))
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One TCP connection attempt from `from` (an address of namespace `ns`) to `to`, bound
/// first so its source port is known. Returns that address and, when it connected, the
/// server's first line: the address the server saw it as.
fn attempt(ns: &testlab::Netns, from: Ipv4Addr, to: SocketAddr) -> (SocketAddr, Option<String>) {
    ns.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        s.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(from), 0)))
            .expect("bind");
        let local = s
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an IP socket");
        let line = match s.connect_timeout(&SockAddr::from(to), ATTEMPT) {
            Ok(()) => {
                let stream: TcpStream = s.into();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("read timeout");
                let mut line = String::new();
                BufReader::new(stream)
                    .read_line(&mut line)
                    .expect("the server's line");
                Some(line.trim().to_string())
            }
            Err(_) => None,
        };
        (local, line)
    })
    .expect("run in the namespace")
}

/// LAN host → WAN host `port`.
fn outbound(lab: &Lab, port: u16) -> (SocketAddr, Option<String>) {
    let to = SocketAddr::new(IpAddr::V4(addr::WAN_HOST), port);
    attempt(&lab.lan(), addr::LAN_HOST, to)
}

/// Every line of the log, each of which must be one JSON object.
fn events(log: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// Events of the flow from `from` (the LAN host's address and port).
fn of_flow(all: &[Value], from: SocketAddr) -> Vec<Value> {
    all.iter()
        .filter(|e| {
            e["source.ip"] == from.ip().to_string() && e["source.port"] == u64::from(from.port())
        })
        .cloned()
        .collect()
}

/// Waits until `done` holds for the log (or 10 s pass).
fn wait_for(log: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = events(log);
        if done(&all) || Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fields every event of a TCP flow `from` → `to` has.
fn assert_flow(e: &Value, from: SocketAddr, to: SocketAddr, direction: &str, before: SystemTime) {
    assert_eq!(e["event.kind"], "event", "{e}");
    assert_eq!(e["event.category"], "network", "{e}");
    assert_eq!(e["source.ip"], from.ip().to_string(), "{e}");
    assert_eq!(e["source.port"], u64::from(from.port()), "{e}");
    assert_eq!(e["destination.ip"], to.ip().to_string(), "{e}");
    assert_eq!(e["destination.port"], u64::from(to.port()), "{e}");
    assert_eq!(e["network.transport"], "tcp", "{e}");
    assert_eq!(e["network.direction"], direction, "{e}");
    assert!(
        e.get("destination.domain").is_none(),
        "no name was learned: {e}"
    );
    let ts = e["@timestamp"].as_str().expect("@timestamp");
    assert!(
        ts.len() == "2024-01-01T00:00:00.000Z".len() && ts.ends_with('Z'),
        "RFC 3339 UTC with milliseconds: {ts}"
    );
    let at = humantime::parse_rfc3339(ts).expect("RFC 3339");
    // Kernel and test read the same clock; the event carries the time the packet arrived.
    let slack = Duration::from_secs(1);
    assert!(
        at + slack >= before && at <= SystemTime::now() + slack,
        "{ts} is not the time of the attempt"
    );
}

/// The one event of the flow from `from`.
fn only(all: &[Value], from: SocketAddr) -> Value {
    let mut e = of_flow(all, from);
    assert_eq!(e.len(), 1, "one SYN, one event: {e:#?}");
    e.remove(0)
}

fn each_logged_decision_is_one_ecs_event(plane: Plane) {
    let log = TempPath::new("ecs.jsonl");
    let (lab, ward) = start(plane, &policy(public_ip(plane)), &log);

    if plane == Plane::Kernel {
        // NFLOG groups are per namespace and have one listener: a second event log is
        // refused before it changes anything.
        let second = ward_in(&lab, ward.file(), log.path());
        assert!(
            !second.status.success() && text(&second).contains("NFLOG group 100"),
            "second ward run:\n{}",
            text(&second)
        );
    }

    let wan_host = |port| SocketAddr::new(IpAddr::V4(addr::WAN_HOST), port);
    let _servers: Vec<_> = [DISCARD, ECHO, WEB]
        .iter()
        .map(|&p| {
            lab.wan()
                .tcp_server(wan_host(p))
                .expect("server on the WAN host")
        })
        .chain([lab
            .lan()
            .tcp_server(SocketAddr::new(IpAddr::V4(addr::LAN_HOST), INSIDE))
            .expect("server on the LAN host")])
        .collect();

    let before = SystemTime::now();
    let (denied, got) = outbound(&lab, DISCARD);
    assert_eq!(got, None, "the discard port is denied");
    let (unlisted, got) = outbound(&lab, ECHO);
    assert_eq!(got, None, "no rule allows the echo port");
    let (web, seen_as) = outbound(&lab, WEB);
    let seen_as: SocketAddr = seen_as
        .expect("the web port is allowed")
        .parse()
        .expect("the server writes the client's address");
    assert_eq!(seen_as.ip(), IpAddr::V4(addr::FW_WAN), "masqueraded");
    let public = SocketAddr::new(IpAddr::V4(public_ip(plane)), FORWARDED);
    let (visitor, got) = attempt(&lab.wan(), addr::WAN_HOST, public);
    assert!(got.is_some(), "the port-forward is allowed");

    let flows = [denied, unlisted, web, visitor];
    wait_for(log.path(), |all| {
        flows.iter().all(|f| !of_flow(all, *f).is_empty())
    });
    // Late duplicates would show within the kernel's flush interval (0.1 s).
    std::thread::sleep(Duration::from_millis(500));
    ward.stop();
    let all = events(log.path());

    let d = only(&all, denied);
    assert_flow(&d, denied, wan_host(DISCARD), "outbound", before);
    assert_eq!(d["event.action"], "drop", "{d}");
    assert_eq!(d["event.outcome"], "failure", "{d}");
    assert_eq!(d["rule.id"], "no-discard", "{d}");
    assert_eq!(d["rule.name"], "Never the discard service", "{d}");
    assert_eq!(d["firewall.drop_reason"], "explicit_deny", "{d}");
    assert!(d.get("network.translated.address").is_none(), "{d}");

    let u = only(&all, unlisted);
    assert_flow(&u, unlisted, wan_host(ECHO), "outbound", before);
    assert_eq!(u["event.action"], "drop", "{u}");
    assert_eq!(u["rule.id"], "default-deny", "{u}");
    assert_eq!(u["rule.name"], "default deny (forward)", "{u}");
    assert_eq!(u["firewall.drop_reason"], "no_matching_allow_rule", "{u}");

    let w = only(&all, web);
    assert_flow(&w, web, wan_host(WEB), "outbound", before);
    assert_eq!(w["event.action"], "accept", "{w}");
    assert_eq!(w["event.outcome"], "success", "{w}");
    assert_eq!(w["rule.id"], "web-out", "{w}");
    assert_eq!(w["rule.name"], "web-out", "no name: the id");
    assert!(w.get("firewall.drop_reason").is_none(), "{w}");
    assert_eq!(
        w["network.translated.address"],
        seen_as.ip().to_string(),
        "{w}"
    );
    assert_eq!(
        w["network.translated.port"],
        u64::from(seen_as.port()),
        "{w}"
    );

    // The filter sees the inside address; the public one is the translated side.
    let v = only(&all, visitor);
    let inside = SocketAddr::new(IpAddr::V4(addr::LAN_HOST), INSIDE);
    assert_flow(&v, visitor, inside, "inbound", before);
    assert_eq!(v["event.action"], "accept", "{v}");
    assert_eq!(v["rule.id"], "web-in", "{v}");
    assert_eq!(
        v["network.translated.address"],
        public.ip().to_string(),
        "{v}"
    );
    assert_eq!(
        v["network.translated.port"],
        u64::from(public.port()),
        "{v}"
    );
}

/// `ward run … --log` with a deadline, for a run that is expected to fail at once.
fn ward_in(lab: &Lab, policy: &PolicyFile, log: &str) -> std::process::Output {
    let mut child = Command::new(WARD)
        .args([
            "run",
            policy.path(),
            "--netns",
            lab.fw().name(),
            "--log",
            log,
        ])
        .env("WARD_STATE_DIR", state_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ward run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let out = child.wait_with_output().expect("output");
    panic!("a second ward run with --log kept running:\n{}", text(&out));
}

fn a_flow_to_a_learned_address_carries_the_name_it_was_learned_for(plane: Plane) {
    let log = TempPath::new("ecs-domain.jsonl");
    let yaml = format!(
        "{}rules:
  - {{id: by-name, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: {WEB}, action: accept, log: true}}
  - {{id: by-address, direction: egress, destination: 198.51.100.20, protocol: tcp, destination_port: {ECHO}, action: deny, log: true}}
",
        closed_gateway()
    );
    let (lab, ward) = start(plane, &yaml, &log);
    let _dns = lab
        .wan()
        .dns_server(testlab::Zone::standard())
        .expect("upstream");
    let _server = lab
        .wan()
        .tcp_server(SocketAddr::new(IpAddr::V4(addr::WAN_HOST), WEB))
        .expect("server on the WAN host");
    assert_eq!(resolve(&lab, "OK.test."), vec![IpAddr::V4(addr::WAN_HOST)]);
    let (named, got) = outbound(&lab, WEB);
    assert!(got.is_some(), "ok.test's address, once resolved");
    // The same address, decided by a rule on the address: still the learned name.
    let (by_address, _) = outbound(&lab, ECHO);
    let all = wait_for(log.path(), |all| {
        !of_flow(all, named).is_empty() && !of_flow(all, by_address).is_empty()
    });
    let e = only(&all, named);
    assert_eq!(e["rule.id"], "by-name", "{e}");
    assert_eq!(e["destination.domain"], "ok.test", "{e}");
    let e = only(&all, by_address);
    assert_eq!(e["rule.id"], "by-address", "{e}");
    assert_eq!(e["destination.domain"], "ok.test", "{e}");
    ward.stop();
    lab.down().unwrap();
}

on_both_planes!(
    each_logged_decision_is_one_ecs_event,
    a_flow_to_a_learned_address_carries_the_name_it_was_learned_for,
);

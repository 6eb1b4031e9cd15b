//! `ward run --log FILE` on real traffic: connection attempts from the LAN host through the
//! lab's firewall become one ECS event each, with the rule, the flow and the NAT they got.
//! Each attempt sends exactly one SYN, so each logged rule sees exactly one packet.

mod common;

use common::*;
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// Below the kernel's first SYN retransmission (1 s): one attempt is one SYN.
const ATTEMPT: Duration = Duration::from_millis(500);
const DISCARD: u16 = 9;
const ECHO: u16 = 7;
const WEB: u16 = 8080;

fn policy() -> String {
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
nat:
  snat:
    - out_interface: wan0
      source: 192.168.50.0/24
      masquerade: true
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

/// `ward run` in the lab's firewall, stopped by its pid (SIGTERM, then SIGKILL) when dropped.
struct WardRun {
    child: Child,
    out: mpsc::Receiver<String>,
}

impl WardRun {
    fn start(lab: &Lab, policy: &PolicyFile, log: &str) -> WardRun {
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
        let (tx, out) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let run = WardRun { child, out };
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match run.out.recv_timeout(left) {
                Ok(line) if line.contains("ready") => return run,
                Ok(line) => seen.push_str(&format!("{line}\n")),
                Err(_) => panic!("ward run did not get ready:\n{seen}"),
            }
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// SIGTERM; panics unless it exits cleanly.
    fn stop(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("wait for ward run");
        std::thread::sleep(Duration::from_millis(50));
        let out: Vec<String> = self.out.try_iter().collect();
        assert!(
            status.success(),
            "ward run exited with {status}:\n{}",
            out.join("\n")
        );
    }
}

impl Drop for WardRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One TCP connection attempt from the LAN host to the WAN host's `port`, bound first so
/// its source port is known. Returns that address and, when it connected, the server's first
/// line: the address the server saw it as.
fn attempt(lab: &Lab, port: u16) -> (SocketAddr, Option<String>) {
    lab.lan()
        .run(move || {
            let dst = SocketAddr::new(IpAddr::V4(addr::WAN_HOST), port);
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            let me = SocketAddr::new(IpAddr::V4(addr::LAN_HOST), 0);
            s.bind(&SockAddr::from(me)).expect("bind");
            let local = s
                .local_addr()
                .expect("local address")
                .as_socket()
                .expect("an IP socket");
            let line = match s.connect_timeout(&SockAddr::from(dst), ATTEMPT) {
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
        .expect("run in the LAN namespace")
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

fn assert_common(e: &Value, from: SocketAddr, port: u16, before: SystemTime) {
    assert_eq!(e["event.kind"], "event", "{e}");
    assert_eq!(e["event.category"], "network", "{e}");
    assert_eq!(e["source.ip"], addr::LAN_HOST.to_string(), "{e}");
    assert_eq!(e["source.port"], u64::from(from.port()), "{e}");
    assert_eq!(e["destination.ip"], addr::WAN_HOST.to_string(), "{e}");
    assert_eq!(e["destination.port"], u64::from(port), "{e}");
    assert_eq!(e["network.transport"], "tcp", "{e}");
    assert_eq!(e["network.direction"], "outbound", "{e}");
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

#[test]
fn each_logged_decision_is_one_ecs_event() {
    let lab = lab();
    let policy = PolicyFile::new(&policy());
    let log = TempPath::new("ecs.jsonl");
    let ward = WardRun::start(&lab, &policy, log.path());

    // NFLOG groups are per namespace and have one listener: a second event log is refused
    // before it changes anything.
    let second = ward_in(&lab, &policy, log.path());
    assert!(
        !second.status.success() && text(&second).contains("NFLOG group 100"),
        "second ward run:\n{}",
        text(&second)
    );

    let _servers: Vec<_> = [DISCARD, ECHO, WEB]
        .iter()
        .map(|&p| {
            lab.wan()
                .tcp_server(SocketAddr::new(IpAddr::V4(addr::WAN_HOST), p))
                .expect("server on the WAN host")
        })
        .collect();

    let before = SystemTime::now();
    let (denied, got) = attempt(&lab, DISCARD);
    assert_eq!(got, None, "the discard port is denied");
    let (unlisted, got) = attempt(&lab, ECHO);
    assert_eq!(got, None, "no rule allows the echo port");
    let (web, seen_as) = attempt(&lab, WEB);
    let seen_as: SocketAddr = seen_as
        .expect("the web port is allowed")
        .parse()
        .expect("the server writes the client's address");
    assert_eq!(seen_as.ip(), IpAddr::V4(addr::FW_WAN), "masqueraded");

    let flows = [denied, unlisted, web];
    wait_for(log.path(), |all| {
        flows.iter().all(|f| !of_flow(all, *f).is_empty())
    });
    // Late duplicates would show within the kernel's flush interval (0.1 s).
    std::thread::sleep(Duration::from_millis(500));
    ward.stop();
    let all = events(log.path());

    let d = of_flow(&all, denied);
    assert_eq!(d.len(), 1, "one SYN, one event: {d:#?}");
    let d = &d[0];
    assert_common(d, denied, DISCARD, before);
    assert_eq!(d["event.action"], "drop", "{d}");
    assert_eq!(d["event.outcome"], "failure", "{d}");
    assert_eq!(d["rule.id"], "no-discard", "{d}");
    assert_eq!(d["rule.name"], "Never the discard service", "{d}");
    assert_eq!(d["firewall.drop_reason"], "explicit_deny", "{d}");
    assert!(d.get("network.translated.address").is_none(), "{d}");

    let u = of_flow(&all, unlisted);
    assert_eq!(u.len(), 1, "{u:#?}");
    let u = &u[0];
    assert_common(u, unlisted, ECHO, before);
    assert_eq!(u["event.action"], "drop", "{u}");
    assert_eq!(u["rule.id"], "default-deny", "{u}");
    assert_eq!(u["rule.name"], "default deny (forward)", "{u}");
    assert_eq!(u["firewall.drop_reason"], "no_matching_allow_rule", "{u}");

    let w = of_flow(&all, web);
    assert_eq!(w.len(), 1, "only a flow's first packet is decided: {w:#?}");
    let w = &w[0];
    assert_common(w, web, WEB, before);
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

//! Shared helpers for ward's integration tests: a lab per test, the real `ward` binary run
//! against it with `--netns`, and short probes.

#![allow(dead_code, unused_macros)]

pub mod scrape;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
pub use testlab::{addr, Lab, LabSpec, Probe};
use testlab::{answer_addrs, dns_query, edns, Transport};

pub const WARD: &str = env!("CARGO_BIN_EXE_ward");

/// Short enough to keep the suite fast, long enough for a namespace round trip.
pub const TIMEOUT: Duration = Duration::from_millis(700);

/// Which data plane a test runs on: `ward run` (nftables) or `ward engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    Kernel,
    Engine,
}

/// A lab for `plane`: on the engine's, the firewall's kernel neither owns its addresses nor
/// forwards.
pub fn lab_on(plane: Plane) -> Lab {
    match plane {
        Plane::Kernel => lab(),
        Plane::Engine => Lab::up_with(LabSpec::unique("wd"), testlab::Firewall::Userspace)
            .unwrap_or_else(|e| {
                panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
            }),
    }
}

/// One test per plane for each function named, which takes the [`Plane`].
macro_rules! on_both_planes {
    ($($name:ident),* $(,)?) => {
        mod kernel {
            $(#[test] fn $name() { super::$name(super::Plane::Kernel) })*
        }
        mod engine {
            $(#[test] fn $name() { super::$name(super::Plane::Engine) })*
        }
    };
}

/// The gateway header every lab policy starts with: lan0 faces the LAN host, wan0 the WAN host.
pub const GATEWAY: &str = "interfaces:\n  lan: [lan0]\n  wan: [wan0]\n";

/// A gateway that denies by default in every direction and resolves through the WAN host;
/// policies append their `dns:` and `rules:`.
pub fn closed_gateway() -> String {
    format!(
        "defaults:
  default_action: deny
  input_action: deny
  output_action: deny
  upstream_dns: 198.51.100.20
{GATEWAY}"
    )
}

pub fn lab() -> Lab {
    Lab::up(LabSpec::unique("wt")).unwrap_or_else(|e| {
        panic!("cannot build the namespace lab (tests need root, netns, veth): {e}")
    })
}

/// A policy file that removes itself when dropped.
pub struct PolicyFile(pub PathBuf);

impl PolicyFile {
    pub fn new(yaml: &str) -> PolicyFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ward-test-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&p, yaml).expect("write policy");
        PolicyFile(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs ward with its state (snapshots, audit log) under the temporary directory rather than
/// /var/lib/ward; tests that look at the state pass `--state-dir` themselves.
pub fn ward(args: &[&str]) -> Output {
    std::process::Command::new(WARD)
        .args(args)
        .env("WARD_STATE_DIR", state_dir())
        .output()
        .expect("run ward")
}

/// The tests' state directory for ward: one for all (each lab's namespace has its own
/// corner of it, and audit lines are appended whole).
pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join("ward-test-state")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ward apply` in the lab's firewall; panics with ward's output when it fails.
pub fn apply(lab: &Lab, yaml: &str) {
    let f = PolicyFile::new(yaml);
    let o = ward(&["apply", f.path(), "--netns", lab.fw().name()]);
    assert!(
        o.status.success(),
        "ward apply failed:\n{}\npolicy:\n{yaml}",
        text(&o)
    );
}

/// ward's table in the firewall without counter values, which the lab's own traffic (IPv6
/// neighbour discovery) changes at any time.
pub fn live_table(lab: &Lab) -> String {
    let o = lab
        .fw()
        .exec("nft", &["-s", "list", "table", "inet", "ward"])
        .expect("nft list");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn tcp(from: &testlab::Netns, server_ns: &testlab::Netns, dst: IpAddr, port: u16) -> Probe {
    let _srv = server_ns
        .tcp_server(SocketAddr::new(dst, port))
        .expect("tcp server");
    from.tcp_probe(SocketAddr::new(dst, port), TIMEOUT)
        .expect("tcp probe")
}

/// LAN host → WAN host, TCP.
pub fn lan_to_wan(lab: &Lab, port: u16) -> Probe {
    tcp(&lab.lan(), &lab.wan(), IpAddr::V4(addr::WAN_HOST), port)
}

/// WAN host → LAN host, TCP (no NAT involved).
pub fn wan_to_lan(lab: &Lab, port: u16) -> Probe {
    tcp(&lab.wan(), &lab.lan(), IpAddr::V4(addr::LAN_HOST), port)
}

pub fn udp(from: &testlab::Netns, server_ns: &testlab::Netns, dst: IpAddr, port: u16) -> Probe {
    let _srv = server_ns
        .udp_echo(SocketAddr::new(dst, port))
        .expect("udp server");
    from.udp_probe(SocketAddr::new(dst, port), TIMEOUT)
        .expect("udp probe")
}

#[track_caller]
pub fn assert_pass(p: &Probe, what: &str) {
    assert!(p.ok(), "{what}: expected to pass, got {p:?}");
}

#[track_caller]
pub fn assert_blocked(p: &Probe, what: &str) {
    // A drop shows as a timeout; a locally generated packet dropped in output as EPERM.
    assert!(
        matches!(p, Probe::TimedOut | Probe::Unreachable(_)),
        "{what}: expected to be dropped, got {p:?}"
    );
}

/// `ward run` (or `ward engine`) in the lab's firewall, stopped (SIGTERM, then SIGKILL) by
/// its pid when dropped.
pub struct WardRun {
    child: Child,
    out: mpsc::Receiver<String>,
    file: PolicyFile,
}

impl WardRun {
    pub fn start(lab: &Lab, yaml: &str) -> WardRun {
        WardRun::start_with(lab, yaml, &[])
    }

    /// With more arguments for `ward run` (`--metrics ADDR`, `--log FILE`).
    pub fn start_with(lab: &Lab, yaml: &str, args: &[&str]) -> WardRun {
        WardRun::spawn("run", lab, yaml, args)
    }

    /// `ward engine` in the lab's firewall (a `Firewall::Userspace` lab), owning the
    /// firewall's usual addresses on lan0 and wan0, with more arguments in `args`.
    pub fn engine(lab: &Lab, yaml: &str, args: &[&str]) -> WardRun {
        let lan = format!("{}/{}", addr::FW_LAN, addr::PREFIX_LEN);
        let wan = format!("{}/{}", addr::FW_WAN, addr::PREFIX_LEN);
        let mut all = vec![
            "--lan",
            testlab::ifname::FW_LAN,
            "--wan",
            testlab::ifname::FW_WAN,
            "--lan-addr",
            &lan,
            "--wan-addr",
            &wan,
        ];
        all.extend_from_slice(args);
        WardRun::spawn("engine", lab, yaml, &all)
    }

    /// `ward COMMAND FILE --netns FW ARGS...`, once it has printed "ready".
    fn spawn(command: &str, lab: &Lab, yaml: &str, args: &[&str]) -> WardRun {
        let file = PolicyFile::new(yaml);
        let mut child = Command::new(WARD)
            .args([command, file.path(), "--netns", lab.fw().name()])
            .args(args)
            .env("WARD_STATE_DIR", state_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start ward {command}: {e}"));
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
        // Only the readers hold senders now: once ward run has exited, waiting ends at once.
        drop(tx);
        let mut run = WardRun { child, out, file };
        run.wait_for("ready", Duration::from_secs(20));
        run
    }

    /// The policy file it runs; rewrite it and send SIGHUP to reload.
    pub fn file(&self) -> &PolicyFile {
        &self.file
    }

    /// Waits for an output line containing `what` and returns it; panics with everything seen
    /// meanwhile if none comes in time.
    pub fn wait_for(&mut self, what: &str, timeout: Duration) -> String {
        let mut seen = String::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push_str(&format!("{line}\n")),
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "ward printed no {what:?} (exit: {status:?}):\n{seen}policy:\n{}",
                        std::fs::read_to_string(&self.file.0).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Output lines printed so far and not yet read.
    pub fn lines(&self) -> Vec<String> {
        self.out.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// SIGTERM, and everything it printed, once it has exited.
    pub fn stop(mut self) -> String {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("wait for ward");
        assert!(status.success(), "ward exited with {status}");
        // The reader threads end with the pipes.
        std::thread::sleep(Duration::from_millis(50));
        self.out.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill9(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
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

/// The proxy's address as the LAN host sees it: the firewall's LAN address.
pub const PROXY: SocketAddr = SocketAddr::new(IpAddr::V4(addr::FW_LAN), 53);
pub const DNS_TIMEOUT: Duration = Duration::from_secs(3);

pub fn wan(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

/// One query from the LAN host over `transport`.
pub fn ask(lab: &Lab, server: SocketAddr, name: &str, rtype: RecordType, t: Transport) -> Message {
    lab.lan()
        .dns(
            server,
            dns_query(name, rtype, Some(edns(1232))),
            t,
            DNS_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("query {name} via {server}: {e}"))
}

/// Resolves `name` (A) through the proxy and returns the addresses.
pub fn resolve(lab: &Lab, name: &str) -> Vec<IpAddr> {
    let m = ask(lab, PROXY, name, RecordType::A, Transport::Udp);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{name}: {m:?}"
    );
    answer_addrs(&m)
}

/// Gives the WAN host more of its subnet's addresses (the zone points names at them).
pub fn wan_owns(lab: &Lab, lasts: &[u8]) {
    for last in lasts {
        lab.wan()
            .ip(&[
                "addr",
                "add",
                &format!("198.51.100.{last}/24"),
                "dev",
                "eth0",
            ])
            .expect("add address to the WAN host");
    }
}

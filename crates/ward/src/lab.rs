//! `ward lab up | down | demo`: a LAN host, the firewall and a WAN host in network namespaces,
//! examples/lab.yaml applied in the firewall, and probes that show what the policy does.

use crate::commands::{self, Failure, Result};
use policy::{Direction, Protocol, Target};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testlab::{addr, Lab, LabSpec, Netns, Transport, Zone};

/// The policy the lab applies when no `--policy` is given (the file ships in examples/).
const LAB_POLICY: &str = include_str!("../../../examples/lab.yaml");

#[derive(clap::Args)]
pub struct LabNames {
    /// Name of the LAN host's namespace
    #[arg(long, global = true, default_value = "lan")]
    lan: String,
    /// Name of the firewall's namespace
    #[arg(long, global = true, default_value = "fw")]
    fw: String,
    /// Name of the WAN host's namespace
    #[arg(long, global = true, default_value = "wan")]
    wan: String,
    /// Policy to apply in the firewall (default: the bundled examples/lab.yaml)
    #[arg(long, global = true)]
    policy: Option<PathBuf>,
}

impl LabNames {
    fn spec(&self) -> LabSpec {
        LabSpec::named(&self.lan, &self.fw, &self.wan)
    }
}

fn lab_err(e: testlab::LabError) -> Failure {
    Failure(format!("error: lab: {e}"))
}

/// Brings the lab up and applies the policy; on failure nothing is left behind.
fn bring_up(names: &LabNames, table: &str) -> Result<(Lab, policy::Policy)> {
    let lab = Lab::up(names.spec()).map_err(lab_err)?;
    let loaded = match &names.policy {
        Some(p) => commands::load(p)?,
        None => {
            let name = "examples/lab.yaml";
            let parsed = policy::parse_str(LAB_POLICY, name).map(|c| (c, LAB_POLICY.to_string()));
            commands::loaded(parsed, name)?
        }
    };
    let fw = lab.fw().name().to_string();
    let table = table.to_string();
    let policy = loaded.checked.policy.clone();
    let applied = lab
        .fw()
        .run(move || -> Result {
            let s = commands::session(None)?;
            let opts = commands::options(
                &policy,
                &table,
                Some(format!("ward sha256={}", loaded.sha256)),
            )?;
            let compiled = nft::compile(&policy, &opts);
            nft::live::install(&s, &nft::render::Parts::of(compiled))?;
            Ok(())
        })
        .map_err(lab_err)?;
    applied?;
    eprintln!(
        "lab up: namespaces {} / {} / {}; policy applied in {fw}",
        names.lan, names.fw, names.wan
    );
    Ok((lab, loaded.checked.policy))
}

pub fn up(names: &LabNames, table: &str) -> Result {
    let (lab, _) = bring_up(names, table)?;
    let spec = lab.leak();
    println!(
        "lab is up. Try: ip netns exec {} ping {}   ·   ward status --netns {}   ·   ward lab down",
        spec.lan_ns,
        addr::WAN_HOST,
        spec.fw_ns
    );
    Ok(())
}

pub fn down(names: &LabNames) -> Result {
    testlab::teardown(&names.spec()).map_err(lab_err)?;
    println!("lab is down");
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
    Ping,
}

struct ProbeCase {
    what: &'static str,
    from: fn(&Lab) -> Netns,
    to: fn(&Lab) -> Netns,
    kind: Kind,
    dst: IpAddr,
    port: u16,
    /// Where the server listens when it differs from `dst` (port-forward).
    listen: Option<SocketAddr>,
    expect_pass: bool,
    /// The packet as the filter sees it, for `explain`.
    direction: Direction,
    filter_dst: IpAddr,
    src: IpAddr,
}

fn cases() -> Vec<ProbeCase> {
    let v4 = |a: std::net::Ipv4Addr| IpAddr::V4(a);
    let v6 = |a: std::net::Ipv6Addr| IpAddr::V6(a);
    let lan = |l: &Lab| l.lan();
    let fw = |l: &Lab| l.fw();
    let wan = |l: &Lab| l.wan();
    let c =
        |what, from, to, kind, dst: IpAddr, port, expect_pass, direction, src: IpAddr| ProbeCase {
            what,
            from,
            to,
            kind,
            dst,
            port,
            listen: None,
            expect_pass,
            direction,
            filter_dst: dst,
            src,
        };
    vec![
        c(
            "LAN → WAN tcp/443",
            lan,
            wan,
            Kind::Tcp,
            v4(addr::WAN_HOST),
            443,
            true,
            Direction::Egress,
            v4(addr::LAN_HOST),
        ),
        c(
            "LAN → WAN tcp/25",
            lan,
            wan,
            Kind::Tcp,
            v4(addr::WAN_HOST),
            25,
            false,
            Direction::Egress,
            v4(addr::LAN_HOST),
        ),
        c(
            "LAN → WAN udp/123",
            lan,
            wan,
            Kind::Udp,
            v4(addr::WAN_HOST),
            123,
            true,
            Direction::Egress,
            v4(addr::LAN_HOST),
        ),
        c(
            "LAN → WAN udp/5000",
            lan,
            wan,
            Kind::Udp,
            v4(addr::WAN_HOST),
            5000,
            false,
            Direction::Egress,
            v4(addr::LAN_HOST),
        ),
        c(
            "LAN → WAN ping",
            lan,
            wan,
            Kind::Ping,
            v4(addr::WAN_HOST),
            0,
            true,
            Direction::Egress,
            v4(addr::LAN_HOST),
        ),
        c(
            "LAN → WAN ping (IPv6)",
            lan,
            wan,
            Kind::Ping,
            v6(addr::WAN_HOST6),
            0,
            true,
            Direction::Egress,
            v6(addr::LAN_HOST6),
        ),
        c(
            "LAN → WAN tcp/443 (IPv6)",
            lan,
            wan,
            Kind::Tcp,
            v6(addr::WAN_HOST6),
            443,
            true,
            Direction::Egress,
            v6(addr::LAN_HOST6),
        ),
        c(
            "LAN → WAN tcp/23 (explicit deny)",
            lan,
            wan,
            Kind::Tcp,
            v4(addr::WAN_HOST),
            23,
            false,
            Direction::Egress,
            v4(addr::LAN_HOST),
        ),
        ProbeCase {
            listen: Some(SocketAddr::new(v4(addr::LAN_HOST), 80)),
            filter_dst: v4(addr::LAN_HOST),
            ..c(
                "WAN → fw:8080 port-forward",
                wan,
                lan,
                Kind::Tcp,
                v4(addr::FW_WAN2),
                8080,
                true,
                Direction::Ingress,
                v4(addr::WAN_HOST),
            )
        },
        c(
            "WAN → LAN tcp/22 unsolicited",
            wan,
            lan,
            Kind::Tcp,
            v4(addr::LAN_HOST),
            22,
            false,
            Direction::Ingress,
            v4(addr::WAN_HOST),
        ),
        c(
            "LAN → firewall ssh",
            lan,
            fw,
            Kind::Tcp,
            v4(addr::FW_LAN),
            22,
            true,
            Direction::Input,
            v4(addr::LAN_HOST),
        ),
        c(
            "WAN → firewall ssh",
            wan,
            fw,
            Kind::Tcp,
            v4(addr::FW_WAN),
            22,
            false,
            Direction::Input,
            v4(addr::WAN_HOST),
        ),
    ]
}

struct Row {
    what: &'static str,
    expected: &'static str,
    observed: String,
    rule: String,
    ok: bool,
}

fn run_case(
    lab: &Lab,
    policy: &policy::Policy,
    c: &ProbeCase,
) -> std::result::Result<Row, testlab::LabError> {
    let timeout = Duration::from_millis(800);
    let listen = c.listen.unwrap_or(SocketAddr::new(c.dst, c.port));
    let server = (c.to)(lab);
    let from = (c.from)(lab);
    let dst = SocketAddr::new(c.dst, c.port);
    let (probe, _guard) = match c.kind {
        Kind::Tcp => {
            let g = server.tcp_server(listen)?;
            (from.tcp_probe(dst, timeout)?, Some(g))
        }
        Kind::Udp => {
            let g = server.udp_echo(listen)?;
            (from.udp_probe(dst, timeout)?, Some(g))
        }
        Kind::Ping => (from.ping(c.dst, timeout)?, None),
    };
    let proto = match (c.kind, c.dst) {
        (Kind::Tcp, _) => Protocol::Tcp,
        (Kind::Udp, _) => Protocol::Udp,
        (Kind::Ping, IpAddr::V4(_)) => Protocol::Icmp,
        (Kind::Ping, IpAddr::V6(_)) => Protocol::Icmpv6,
    };
    // After DNAT the filter sees the inside port.
    let dport = Some(listen.port()).filter(|p| *p != 0);
    let rule = deciding_rule(
        policy,
        c.src,
        Target::Ip(c.filter_dst),
        proto,
        dport,
        c.direction,
    );
    let mut row = traffic_row(c.what, c.expect_pass, &probe, rule);
    if let testlab::Probe::Connected { seen_as: Some(a) } = &probe {
        row.observed.push_str(&format!(", server saw {}", a.ip()));
    }
    Ok(row)
}

/// The rule that decides a new flow like this one, according to `explain`.
fn deciding_rule(
    policy: &policy::Policy,
    src: IpAddr,
    dst: Target,
    proto: Protocol,
    dport: Option<u16>,
    direction: Direction,
) -> String {
    let probe = policy::Probe::new(src, dst, proto, dport, direction);
    policy::explain(policy, &probe).verdict.rule_id
}

/// A row for a traffic probe: what it saw against what the policy says.
fn traffic_row(what: &'static str, expect_pass: bool, probe: &testlab::Probe, rule: String) -> Row {
    let passed = probe.ok();
    Row {
        what,
        expected: if expect_pass { "pass" } else { "blocked" },
        observed: if passed {
            "pass".into()
        } else {
            format!("blocked ({})", probe_kind(probe))
        },
        rule,
        ok: passed == expect_pass,
    }
}

fn probe_kind(p: &testlab::Probe) -> &'static str {
    match p {
        testlab::Probe::Connected { .. } => "connected",
        testlab::Probe::Refused => "refused",
        testlab::Probe::TimedOut => "timed out",
        testlab::Probe::Unreachable(_) => "unreachable",
    }
}

pub fn demo(names: &LabNames, table: &str) -> Result {
    let spec = names.spec();
    // Ctrl-C: remove the namespaces, then leave.
    let on_signal = spec.clone();
    let _ = ctrlc::set_handler(move || {
        let _ = testlab::teardown(&on_signal);
        eprintln!("interrupted: lab removed");
        std::process::exit(130);
    });
    let (lab, policy) = bring_up(names, table)?;
    let mut rows = Vec::new();
    let mut failure = None;
    for c in cases() {
        match run_case(&lab, &policy, &c) {
            Ok(r) => rows.push(r),
            Err(e) => {
                failure = Some(lab_err(e));
                break;
            }
        }
    }
    if failure.is_none() && names.policy.is_none() {
        match dns_rows(&lab, &policy, table) {
            Ok(r) => rows.extend(r),
            Err(e) => failure = Some(e),
        }
    }
    let down = lab.down().map_err(lab_err);
    if let Some(f) = failure {
        return Err(f);
    }
    down?;
    println!(
        "{:<46} {:<9} {:<40} deciding rule",
        "probe", "expected", "observed"
    );
    for r in &rows {
        println!(
            "{:<46} {:<9} {:<40} {}{}",
            r.what,
            r.expected,
            r.observed,
            r.rule,
            if r.ok { "" } else { "   <-- MISMATCH" }
        );
    }
    let bad = rows.iter().filter(|r| !r.ok).count();
    if bad > 0 {
        return Err(Failure(format!(
            "error: {bad} probe(s) did not see what the policy says"
        )));
    }
    println!(
        "\nall {} probes behaved as the policy says; lab removed",
        rows.len()
    );
    Ok(())
}

/// The name the bundled policy allows by DNS (rule docs-by-name), served by the demo's DNS
/// server on the WAN host, and the port the rule opens.
const DEMO_NAME: &str = "docs.example.test";
const DEMO_PORT: u16 = 8443;

/// The DNS part of the demo: `ward run` serves the proxy in the firewall, and the LAN host
/// connects to docs.example.test's address before and after resolving it.
fn dns_rows(lab: &Lab, policy: &policy::Policy, table: &str) -> Result<Vec<Row>> {
    let zone = Zone::new("example.test.").a(&format!("{DEMO_NAME}."), addr::WAN_HOST, 300);
    let _dns = lab.wan().dns_server(zone).map_err(lab_err)?;
    let file = std::env::temp_dir().join(format!("ward-lab-{}.yaml", std::process::id()));
    std::fs::write(&file, LAB_POLICY)
        .map_err(|e| Failure(format!("error: {}: {e}", file.display())))?;
    let run = WardRun::start(&file, lab.fw().name(), table);
    let _ = std::fs::remove_file(&file);
    let _run = run?;

    let target = SocketAddr::new(IpAddr::V4(addr::WAN_HOST), DEMO_PORT);
    let _srv = lab.wan().tcp_server(target).map_err(lab_err)?;
    let timeout = Duration::from_millis(800);
    let connect = |what: &'static str, expect_pass: bool, by: Target| -> Result<Row> {
        let probe = lab.lan().tcp_probe(target, timeout).map_err(lab_err)?;
        let rule = deciding_rule(
            policy,
            IpAddr::V4(addr::LAN_HOST),
            by,
            Protocol::Tcp,
            Some(DEMO_PORT),
            Direction::Egress,
        );
        Ok(traffic_row(what, expect_pass, &probe, rule))
    };
    let resolve = |what: &'static str, server: IpAddr, rule: &str| -> Row {
        let wire = testlab::dns_query(
            &format!("{DEMO_NAME}."),
            hickory_proto::rr::RecordType::A,
            Some(testlab::edns(1232)),
        );
        let reply = lab
            .lan()
            .dns(SocketAddr::new(server, 53), wire, Transport::Udp, timeout);
        let addrs = reply
            .as_ref()
            .map(testlab::answer_addrs)
            .unwrap_or_default();
        Row {
            what,
            expected: "answer",
            observed: match (&reply, addrs.first()) {
                (Ok(_), Some(a)) => format!("answer {a}"),
                (Ok(m), None) => format!("no address ({})", m.metadata.response_code),
                (Err(e), _) => format!("no answer ({e})"),
            },
            rule: rule.into(),
            ok: addrs == [IpAddr::V4(addr::WAN_HOST)],
        }
    };
    let ip = Target::Ip(IpAddr::V4(addr::WAN_HOST));
    Ok(vec![
        connect("LAN → docs.example.test tcp/8443, unresolved", false, ip)?,
        resolve(
            "LAN asks the firewall for docs.example.test",
            IpAddr::V4(addr::FW_LAN),
            "(DNS proxy)",
        ),
        resolve(
            "LAN asks 203.0.113.53 for docs.example.test",
            IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 53)),
            "(intercepted to the proxy)",
        ),
        connect(
            "LAN → docs.example.test tcp/8443, resolved",
            true,
            Target::Fqdn(DEMO_NAME.into()),
        )?,
    ])
}

/// `ward run` as a child process in the firewall's namespace, stopped when dropped. Its
/// output stays connected until then, so the summary it prints on SIGTERM has somewhere to go.
struct WardRun {
    child: Child,
    _out: Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
}

impl WardRun {
    fn start(file: &Path, netns: &str, table: &str) -> Result<WardRun> {
        let exe = std::env::current_exe()
            .map_err(|e| Failure(format!("error: cannot find the ward binary: {e}")))?;
        let mut child = Command::new(exe)
            .args(["--table", table, "run"])
            .arg(file)
            .args(["--netns", netns])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Failure(format!("error: cannot start ward run: {e}")))?;
        let mut lines = child.stdout.take().map(|o| BufReader::new(o).lines());
        let mut run = WardRun { child, _out: None };
        let mut seen = String::new();
        while let Some(Ok(line)) = lines.as_mut().and_then(|l| l.next()) {
            if line.contains("ready") {
                run._out = lines;
                return Ok(run);
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        Err(Failure(format!(
            "error: ward run stopped before serving:\n{seen}"
        )))
    }
}

impl Drop for WardRun {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

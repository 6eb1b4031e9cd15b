//! `ward lab up | down | demo`: a LAN host, the firewall and a WAN host in network namespaces,
//! examples/lab.yaml applied in the firewall, and probes that show what the policy does.

use crate::commands::{self, Failure, Result};
use policy::{Direction, Protocol, Target};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use testlab::{addr, Lab, LabSpec, Netns};

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
            nft::live::replace(&s, &compiled)?;
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
            "LAN → WAN udp/53",
            lan,
            wan,
            Kind::Udp,
            v4(addr::WAN_HOST),
            53,
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
    let ex = policy::explain(
        policy,
        &policy::Probe {
            src: c.src,
            dst: Target::Ip(c.filter_dst),
            proto,
            // After DNAT the filter sees the inside port.
            dport: Some(listen.port()).filter(|p| *p != 0),
            direction: c.direction,
            in_interface: None,
            out_interface: None,
            established: false,
        },
    );
    let passed = probe.ok();
    let mut observed = if passed {
        "pass".to_string()
    } else {
        format!("blocked ({})", probe_kind(&probe))
    };
    if let testlab::Probe::Connected { seen_as: Some(a) } = &probe {
        observed.push_str(&format!(", server saw {}", a.ip()));
    }
    Ok(Row {
        what: c.what,
        expected: if c.expect_pass { "pass" } else { "blocked" },
        observed,
        rule: ex.verdict.rule_id.clone(),
        ok: passed == c.expect_pass,
    })
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
    let down = lab.down().map_err(lab_err);
    if let Some(f) = failure {
        return Err(f);
    }
    down?;
    println!(
        "{:<36} {:<9} {:<40} deciding rule",
        "probe", "expected", "observed"
    );
    for r in &rows {
        println!(
            "{:<36} {:<9} {:<40} {}{}",
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

//! The policy and kernel commands: check, compile, plan, apply, remove, status, explain.
//! Each returns a message for the user on failure; `main` turns that into exit status 1.

use crate::safe;
use nft::live::{self, Installed};
use nft::Session;
use policy::{Action, Direction, Protocol, Target};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// A failure to report: the message already says what went wrong and what to do next.
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<nft::NftError> for Failure {
    fn from(e: nft::NftError) -> Self {
        Failure(format!("error: {e}"))
    }
}

impl From<nft::netns::NetnsError> for Failure {
    fn from(e: nft::netns::NetnsError) -> Self {
        Failure(format!("error: {e}"))
    }
}

pub type Result<T = ()> = std::result::Result<T, Failure>;

/// A policy that passed validation, with the hash of its text.
pub struct Loaded {
    pub checked: policy::Checked,
    pub sha256: String,
}

pub fn load(file: &Path) -> Result<Loaded> {
    loaded(policy::load(file), &file.display().to_string())
}

/// Prints the warnings of a checked policy and hashes its text, or turns its errors into the
/// message for the user; `name` is how the policy is named in that message.
pub fn loaded(
    result: std::result::Result<(policy::Checked, String), policy::PolicyErrors>,
    name: &str,
) -> Result<Loaded> {
    match result {
        Ok((checked, text)) => {
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            Ok(Loaded {
                checked,
                sha256: hex::encode(Sha256::digest(text.as_bytes())),
            })
        }
        Err(errs) => {
            let n = errs.0.len();
            let mut msg: String = errs.0.iter().map(|d| format!("error: {d}\n")).collect();
            msg.push_str(&format!(
                "{name} is invalid ({n} error{}); nothing was changed.",
                if n == 1 { "" } else { "s" }
            ));
            Err(Failure(msg))
        }
    }
}

/// Compiler options for `policy`; where it runs a DNS proxy, the proxy's addresses are looked
/// up in the current network namespace (so call this after entering it).
pub fn options(
    policy: &policy::Policy,
    table: &str,
    comment: Option<String>,
) -> Result<nft::Options> {
    let dns = nft::dnsplan::plan(policy, interface_addrs, || {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| nft::dnsplan::resolv_conf_nameservers(&t))
            .unwrap_or_default()
    })
    .map_err(|e| Failure(format!("error: {e}")))?;
    Ok(nft::Options {
        table: table.to_string(),
        comment,
        dns,
        ..nft::Options::default()
    })
}

/// The addresses of one interface in the current network namespace (none if it is absent).
fn interface_addrs(name: &str) -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// Enters the namespace (if any) and opens a libnftables session there.
pub fn session(netns: Option<&str>) -> Result<Session> {
    if let Some(ns) = netns {
        nft::netns::enter(ns)?;
    }
    Ok(Session::open()?)
}

pub fn check(file: &Path) -> Result {
    let l = load(file)?;
    let p = &l.checked.policy;
    // Only the layout is reported here, so the DNS proxy's addresses need not be looked up.
    let compiled = nft::compile(p, &nft::Options::default());
    println!(
        "{}: ok: {} rules, {} snat, {} dnat; compiles to {} maps ({} elements) and {} linear rules{}",
        file.display(),
        p.rules.len(),
        p.nat.snat.len(),
        p.nat.dnat.len(),
        compiled.stats.maps,
        compiled.stats.map_elements,
        compiled.stats.linear_rules,
        if l.checked.warnings.is_empty() { String::new() } else { format!("; {} warnings", l.checked.warnings.len()) }
    );
    Ok(())
}

pub fn compile(file: &Path, table: &str, json: bool) -> Result {
    let l = load(file)?;
    let p = &l.checked.policy;
    let comment = Some(table_comment(&l.sha256, None));
    // compile works anywhere, also away from the firewall whose LAN address the DNS proxy
    // would listen on: then the listing leaves the proxy's rules out, and says so.
    let opts = options(p, table, comment.clone()).unwrap_or_else(|Failure(why)| {
        eprintln!(
            "warning: {}; the DNS proxy's rules are left out of this listing",
            why.trim_start_matches("error: ")
        );
        nft::Options {
            table: table.to_string(),
            comment,
            ..nft::Options::default()
        }
    });
    let compiled = nft::compile(p, &opts);
    if json {
        let out = serde_json::to_string_pretty(&compiled.replace_batch())
            .map_err(|e| Failure(e.to_string()))?;
        println!("{out}");
    } else {
        print!("{}", nft::render::to_nft(&compiled));
    }
    Ok(())
}

/// `ward sha256=HEX applied=TIME`: kept on the table itself, so status needs no state file.
fn table_comment(sha256: &str, applied: Option<std::time::SystemTime>) -> String {
    match applied {
        Some(t) => format!(
            "ward sha256={sha256} applied={}",
            humantime::format_rfc3339_seconds(t)
        ),
        None => format!("ward sha256={sha256}"),
    }
}

pub fn plan(file: &Path, table: &str, netns: Option<&str>) -> Result {
    let l = load(file)?;
    let s = session(netns)?;
    let p = &l.checked.policy;
    let compiled = nft::compile(p, &options(p, table, Some(table_comment(&l.sha256, None)))?);
    let diff = live::plan(&s, &compiled)?;
    if diff.is_empty() {
        println!(
            "no changes: the live table already matches {}",
            file.display()
        );
    } else {
        print!("{diff}");
    }
    Ok(())
}

/// The table that installs `l` as `table`, rendered, the line that reports it, and the options
/// it was compiled with (the DNS proxy's addresses among them).
pub fn prepare(
    l: &Loaded,
    file: &Path,
    table: &str,
) -> Result<(nft::render::Parts, String, nft::Options)> {
    let comment = table_comment(&l.sha256, Some(std::time::SystemTime::now()));
    let p = &l.checked.policy;
    let opts = options(p, table, Some(comment))?;
    let compiled = nft::compile(p, &opts);
    let summary = format!(
        "applied {} (sha256 {}): {} rules as {} maps and {} linear rules",
        file.display(),
        &l.sha256[..12],
        p.rules.len(),
        compiled.stats.maps,
        compiled.stats.linear_rules
    );
    Ok((nft::render::Parts::of(compiled), summary, opts))
}

/// Where safe apply keeps its state, and for how long an apply waits for `ward confirm`.
pub struct Safety<'a> {
    pub state_dir: &'a Path,
    pub confirm_within: Option<u64>,
}

/// Checks the policy, snapshots the live table (SPEC §6), then installs the policy. With
/// `confirm_within`, a timer process of its own restores the snapshot unless `ward confirm`
/// runs in time. Every outcome is one line in the audit log.
pub fn apply(file: &Path, table: &str, netns: Option<&str>, safety: &Safety) -> Result {
    let state = safe::State::new(safety.state_dir, netns, table);
    let (summary, ()) = apply_audited(&state, "apply", safety, |sha| {
        let l = load(file)?;
        *sha = Some(l.sha256.clone());
        let s = session(netns)?;
        let (parts, summary, _) = prepare(&l, file, table)?;
        // Only the rendered table is needed from here on: free the policy and return its
        // pages to the system before libnftables builds its own copy of the table.
        drop(l);
        crate::release_freed_memory();
        Ok((s, parts, summary, ()))
    })?;
    println!("{summary}");
    Ok(())
}

/// One apply of SPEC §6, serialised with every other apply, confirm and rollback of the table
/// by its state lock and audited as `action`: `render` loads the policy (recording its hash in
/// the audit line) and returns the session to install with, the rendered table, the summary
/// line and whatever else its caller keeps; then the live table is snapshotted and replaced.
pub fn apply_audited<T>(
    state: &safe::State,
    action: &str,
    safety: &Safety,
    render: impl FnOnce(&mut Option<String>) -> Result<(Session, nft::render::Parts, String, T)>,
) -> Result<(String, T)> {
    let _lock = state.lock()?;
    let mut sha = None;
    let mut previous = None;
    let result = (|| -> Result<(String, T)> {
        let (s, parts, summary, kept) = render(&mut sha)?;
        let table = parts.table.as_str();
        let before = live::snapshot(&s, table)?;
        previous = before.as_deref().and_then(comment_sha256);
        let replaced = state.save_snapshot(&state.snapshot_of(before, previous.clone()))?;
        let mut note = String::new();
        match safety.confirm_within {
            Some(secs) => {
                let token = safe::token();
                let (deadline_unix, deadline) = safe::deadline_in(secs);
                // Started before the table changes: killed at any moment after this, the
                // applying process leaves nothing that the timer would not put right.
                let timer_pid = spawn_revert_timer(
                    safety.state_dir,
                    state.netns(),
                    table,
                    &token,
                    deadline_unix,
                )?;
                state.set_pending(&safe::Pending {
                    deadline_unix,
                    deadline: deadline.clone(),
                    token,
                    policy_sha256: sha.clone().unwrap_or_default(),
                    timer_pid: Some(timer_pid),
                })?;
                note = format!(
                    "\nrun `ward confirm` before {deadline}, or the previous table comes back"
                );
            }
            // A plain apply settles any apply still waiting for confirmation.
            None => state.clear_pending()?,
        }
        if let Err(e) = live::install(&s, &parts) {
            let _ = state.clear_pending();
            let _ = state.restore_snapshot_file(replaced);
            return Err(Failure(format!(
                "error: {e}\napply failed; the live table was not changed."
            )));
        }
        Ok((format!("{summary}{note}"), kept))
    })();
    let error = result.as_ref().err().map(|Failure(e)| first_error(e));
    state.audit(action, sha.as_deref(), previous.as_deref(), error);
    result
}

fn comment_sha256(objects: &[serde_json::Value]) -> Option<String> {
    let listing = serde_json::json!({ "nftables": objects });
    live::parse_listing(&listing)
        .comment_field("sha256")
        .map(str::to_string)
}

/// The message of the first `error:` line, for the audit log.
fn first_error(msg: &str) -> &str {
    msg.lines()
        .next()
        .unwrap_or(msg)
        .trim_start_matches("error: ")
}

/// Starts `ward revert-timer` in a session of its own, detached from this process: it lives on
/// if this one is killed.
fn spawn_revert_timer(
    state_dir: &Path,
    netns: Option<&str>,
    table: &str,
    token: &str,
    deadline_unix: u64,
) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| Failure(format!("error: cannot find ward's own binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--table")
        .arg(table)
        .arg("revert-timer")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--token")
        .arg(token)
        .arg("--deadline")
        .arg(deadline_unix.to_string());
    if let Some(ns) = netns {
        cmd.arg("--netns").arg(ns);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Failure(format!("error: cannot start the revert timer: {e}")))?;
    Ok(child.id() as i32)
}

/// Keeps the applied policy: the pending revert is called off.
pub fn confirm(table: &str, netns: Option<&str>, state_dir: &Path) -> Result {
    let state = safe::State::new(state_dir, netns, table);
    let _lock = state.lock()?;
    let Some(p) = state.pending() else {
        return Err(Failure(
            "error: nothing to confirm: no apply is waiting for confirmation".into(),
        ));
    };
    if safe::now_unix() >= p.deadline_unix {
        let e = format!(
            "too late: the deadline was {}; the previous table is being restored",
            p.deadline
        );
        state.audit("confirm", Some(&p.policy_sha256), None, Some(&e));
        return Err(Failure(format!("error: {e}")));
    }
    state.clear_pending()?;
    if let Some(pid) = p.timer_pid.filter(|pid| is_timer(*pid, &p.token)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    state.audit("confirm", Some(&p.policy_sha256), None, None);
    println!("confirmed: policy sha256 {} stays", &p.policy_sha256);
    Ok(())
}

/// Whether `pid` is still the revert timer started with `token` (not a reused pid).
fn is_timer(pid: i32, token: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == token.as_bytes()))
        .unwrap_or(false)
}

/// Restores the last snapshot now.
pub fn rollback(table: &str, netns: Option<&str>, state_dir: &Path) -> Result {
    let state = safe::State::new(state_dir, netns, table);
    let _lock = state.lock()?;
    println!("{}", revert(&state, table, netns, "rollback")?);
    Ok(())
}

/// Puts the last snapshot back (the caller holds the lock), clears any pending confirmation
/// and writes the audit line, as `action`.
fn revert(state: &safe::State, table: &str, netns: Option<&str>, action: &str) -> Result<String> {
    let result = (|| -> Result<(safe::Snapshot, Option<String>)> {
        let snap = state.load_snapshot()?;
        let s = session(netns)?;
        let current = live::snapshot(&s, table)?
            .as_deref()
            .and_then(comment_sha256);
        let objects: Option<Vec<serde_json::Value>> = match &snap.objects {
            Some(o) => Some(serde_json::from_str(o).map_err(|e| Failure(format!("error: {e}")))?),
            None => None,
        };
        live::restore(&s, table, objects.as_deref()).map_err(|e| {
            Failure(format!(
                "error: {e}\nthe snapshot was not restored; the live table was not changed."
            ))
        })?;
        state.clear_pending()?;
        Ok((snap, current))
    })();
    match result {
        Ok((snap, current)) => {
            state.audit(
                action,
                snap.policy_sha256.as_deref(),
                current.as_deref(),
                None,
            );
            Ok(match snap.objects {
                Some(_) => format!(
                    "restored table inet {table} as it was at {} (policy sha256 {})",
                    snap.taken_at,
                    snap.policy_sha256.as_deref().unwrap_or("unknown")
                ),
                None => format!(
                    "removed table inet {table}: it was not installed before the last apply"
                ),
            })
        }
        Err(Failure(e)) => {
            state.audit(action, None, None, Some(first_error(&e)));
            Err(Failure(e))
        }
    }
}

/// The revert timer (started by `apply --confirm-within`): waits for the deadline, then
/// restores the snapshot if the apply it was started for is still unconfirmed.
pub fn revert_timer(
    table: &str,
    netns: Option<&str>,
    state_dir: &Path,
    token: &str,
    deadline_unix: u64,
) -> Result {
    loop {
        let now = safe::now_unix();
        if now >= deadline_unix {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(
            ((deadline_unix - now) * 1000).min(1000),
        ));
    }
    let state = safe::State::new(state_dir, netns, table);
    let _lock = state.lock()?;
    if state.pending().is_some_and(|p| p.token == token) {
        revert(&state, table, netns, "auto-revert")?;
    }
    Ok(())
}

pub fn remove(table: &str, netns: Option<&str>) -> Result {
    let s = session(netns)?;
    if live::remove(&s, table)? {
        println!("removed table inet {table}");
    } else {
        println!("table inet {table} is not installed; nothing to remove");
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Status {
    overall: &'static str,
    table: String,
    table_installed: bool,
    rules_installed: usize,
    policy_sha256: Option<String>,
    applied_at: Option<String>,
    pending_confirmation: Option<String>,
    last_error: Option<String>,
    /// Per rule id (and default-deny / default-accept, ward:snat-N, ward:dnat-N, ...).
    counters: std::collections::BTreeMap<String, live::Count>,
    /// Packets dropped, by drop reason.
    drops: std::collections::BTreeMap<&'static str, u64>,
}

/// Never fails: a problem makes the status `degraded` with `last_error`.
pub fn status(table: &str, json: bool, netns: Option<&str>, state_dir: &Path) -> Result {
    let state = safe::State::new(state_dir, netns, table);
    let read = session(netns).and_then(|s| Ok(live::read(&s, table)?));
    let mut st = Status {
        overall: "healthy",
        table: format!("inet {table}"),
        table_installed: false,
        rules_installed: 0,
        policy_sha256: None,
        applied_at: None,
        pending_confirmation: None,
        last_error: None,
        counters: Default::default(),
        drops: Default::default(),
    };
    match read {
        Ok(Some(inst)) => fill(&mut st, inst),
        Ok(None) => {
            st.overall = "degraded";
            st.last_error = Some(format!(
                "table inet {table} is not installed (run `ward apply`)"
            ));
        }
        Err(Failure(e)) => {
            st.overall = "degraded";
            st.last_error = Some(e.trim_start_matches("error: ").to_string());
        }
    }
    st.pending_confirmation = state.pending().map(|p| p.deadline);
    if st.last_error.is_none() {
        // The last apply, confirm or rollback failed: what is enforced is not what was asked.
        if let Some(e) = state.last_error() {
            st.overall = "degraded";
            st.last_error = Some(e);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
        return Ok(());
    }
    println!("overall:        {}", st.overall);
    println!(
        "table:          {} ({})",
        st.table,
        if st.table_installed {
            "installed"
        } else {
            "not installed"
        }
    );
    if st.table_installed {
        println!("rules:          {} nftables rules", st.rules_installed);
        println!(
            "policy sha256:  {}",
            st.policy_sha256.as_deref().unwrap_or("unknown")
        );
        println!(
            "applied at:     {}",
            st.applied_at.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(d) = &st.pending_confirmation {
        println!("pending:        `ward confirm` before {d}, or the previous table comes back");
    }
    if let Some(e) = &st.last_error {
        println!("last error:     {e}");
    }
    if !st.counters.is_empty() {
        println!("\n{:<40} {:>12} {:>14}", "rule", "packets", "bytes");
        for (id, c) in &st.counters {
            println!("{id:<40} {:>12} {:>14}", c.packets, c.bytes);
        }
    }
    Ok(())
}

fn fill(st: &mut Status, inst: Installed) {
    st.table_installed = true;
    st.rules_installed = inst.rules + inst.map_elements;
    st.policy_sha256 = inst.comment_field("sha256").map(str::to_string);
    st.applied_at = inst.comment_field("applied").map(str::to_string);
    if let Some(c) = inst.counters.get(nft::compile::DEFAULT_DENY) {
        st.drops.insert("no_matching_allow_rule", c.packets);
    }
    st.counters = inst.counters;
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    #[arg(default_value = "rules.yaml")]
    file: std::path::PathBuf,
    #[arg(long)]
    src: IpAddr,
    #[arg(long, conflicts_with = "fqdn", required_unless_present = "fqdn")]
    dst: Option<IpAddr>,
    /// A destination name (as a client would have resolved it)
    #[arg(long)]
    fqdn: Option<String>,
    #[arg(long, value_parser = parse_proto)]
    proto: Protocol,
    #[arg(long)]
    dport: Option<u16>,
    #[arg(long, value_parser = parse_direction, default_value = "egress")]
    direction: Direction,
    #[arg(long)]
    in_interface: Option<String>,
    #[arg(long)]
    out_interface: Option<String>,
    /// Explain a packet of an already established flow
    #[arg(long)]
    established: bool,
}

fn parse_proto(s: &str) -> std::result::Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "icmp" => Ok(Protocol::Icmp),
        "icmpv6" => Ok(Protocol::Icmpv6),
        _ => Err("expected tcp, udp, icmp or icmpv6".into()),
    }
}

fn parse_direction(s: &str) -> std::result::Result<Direction, String> {
    match s {
        "ingress" => Ok(Direction::Ingress),
        "egress" => Ok(Direction::Egress),
        "input" => Ok(Direction::Input),
        "output" => Ok(Direction::Output),
        _ => Err("expected ingress, egress, input or output".into()),
    }
}

pub fn explain(a: &ExplainArgs) -> Result {
    let l = load(&a.file)?;
    let dst = match (&a.dst, &a.fqdn) {
        (Some(ip), _) => Target::Ip(*ip),
        (None, Some(name)) => Target::Fqdn(name.clone()),
        (None, None) => return Err(Failure("error: give --dst IP or --fqdn NAME".into())),
    };
    let probe = policy::Probe {
        src: a.src,
        dst,
        proto: a.proto,
        dport: a.dport,
        direction: a.direction,
        in_interface: a.in_interface.clone(),
        out_interface: a.out_interface.clone(),
        established: a.established,
    };
    let ex = policy::explain(&l.checked.policy, &probe);
    for step in &ex.steps {
        println!("  {step}");
    }
    let v = &ex.verdict;
    let verb = match v.action {
        Action::Accept => "accept",
        Action::Deny => "drop",
    };
    match v.drop_reason {
        Some(r) => println!("{verb} by {} ({r})", v.rule_id),
        None => println!("{verb} by {}", v.rule_id),
    }
    Ok(())
}

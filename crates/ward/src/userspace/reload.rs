//! SIGHUP for `ward engine`: the policy file read, checked and compiled again on a thread of
//! its own, then put in force by the packet loop between batches (and given to the DNS proxy).
//!
//! The signal handler only bumps an eventfd's counter, which the reload thread blocks on: the
//! SIGHUPs that arrive while a reload runs are one more reload, however many they were. The
//! packet loop never waits on the file or the compiler; it swaps the compiled rules in through
//! `engine::learn`'s mailbox (`Reloader`), keeping its connection table, so established flows
//! carry on whatever the new rules say of their first packet (as the kernel's conntrack
//! outlives a ruleset swap). Addresses learned for a name rule with the same id and the same
//! names stay learned at its new position; the other name rules start empty, as the DNS
//! proxy gets a fresh matcher and cache for them.
//!
//! What the engine set up at its start stays: the DNS proxy's address (the `--lan-addr` and
//! `dns.listen`'s port), and whether there is a proxy at all. A policy that would change either
//! is refused ("restart ward engine for that") and the running one stays, as with a broken file.

use super::host::{Control, Plan};
use crate::commands::{self, Failure, Result};
use engine::core::engine::Rules;
use engine::learn::{Refused, Reload, Reloader};
use nix::libc;
use policy::Policy;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread;
use telemetry::metrics::Sources;

/// The eventfd the SIGHUP handler writes to (-1 before [`Hangups::catch`]).
static HANGUP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_hangup(_: libc::c_int) {
    let fd = HANGUP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a live u64. A full counter
        // (EAGAIN) is a reload pending already.
        let _ = unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// SIGHUPs, counted in an eventfd from the moment they are caught. The descriptor is never
/// closed: a SIGHUP may come at any time until the process exits.
pub struct Hangups {
    fd: RawFd,
}

impl Hangups {
    /// Catches SIGHUP from now on (with `SA_RESTART`: no other thread's call is cut short).
    pub fn catch() -> Result<Hangups> {
        // SAFETY: plain system call; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(Failure(format!(
                "error: cannot create an eventfd: {}\nthe engine did not start.",
                std::io::Error::last_os_error()
            )));
        }
        HANGUP_FD.store(raw, Ordering::Relaxed);
        // SAFETY: all-zero is a valid `sigaction`; the handler only writes to the eventfd.
        let r = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_hangup as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut())
        };
        if r < 0 {
            return Err(Failure(format!(
                "error: cannot catch SIGHUP: {}\nthe engine did not start.",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Hangups { fd: raw })
    }

    /// Blocks until a SIGHUP (or [`wake`](Hangups::wake)) since the last wait.
    fn wait(&self) {
        let mut count = [0u8; 8];
        loop {
            // SAFETY: reads the eventfd's 8-byte counter into `count`, resetting it.
            let n = unsafe { libc::read(self.fd, count.as_mut_ptr().cast(), 8) };
            if n == 8 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }

    /// Ends a [`wait`](Hangups::wait) as a SIGHUP would.
    fn wake(&self) {
        on_hangup(libc::SIGHUP);
    }
}

/// What a reload needs from the engine's start, and what it keeps from one reload to the next.
pub struct Reloading {
    pub file: PathBuf,
    pub lan: String,
    pub wan: String,
    pub lan_addr: Ipv4Addr,
    pub reloader: Reloader,
    /// The DNS proxy, if the engine started with one, and the plan it started with.
    pub proxy: Option<(Control, Plan)>,
    /// The policy in force, its DNS side, and the rule numbering the proxy learns under.
    pub policy: Policy,
    pub dns: Option<DnsKey>,
    pub generation: u64,
    pub metrics: Option<Arc<Sources>>,
    /// The event log, whose events name the rules in force.
    pub events: Option<Arc<telemetry::EventLog>>,
}

/// The reload thread, until [`stop`](ReloadThread::stop).
pub struct ReloadThread {
    thread: thread::JoinHandle<()>,
    quit: Arc<AtomicBool>,
    hangups: Arc<Hangups>,
}

impl ReloadThread {
    /// Reloads on every SIGHUP counted by `hangups` (one already counted included).
    pub fn start(hangups: Hangups, mut state: Reloading) -> Result<ReloadThread> {
        let hangups = Arc::new(hangups);
        let quit = Arc::new(AtomicBool::new(false));
        let (h, q) = (hangups.clone(), quit.clone());
        let thread = thread::Builder::new()
            .name("ward-reload".into())
            .spawn(move || loop {
                h.wait();
                if q.load(Ordering::Relaxed) {
                    return;
                }
                match state.reload() {
                    Ok(line) => println!("{line}"),
                    Err(Failure(e)) if e.is_empty() => return,
                    Err(Failure(e)) => {
                        eprintln!("{e}\nreload failed; the running policy stays in force")
                    }
                }
            })
            .map_err(|e| {
                Failure(format!(
                    "error: cannot start the reload thread: {e}\nthe engine did not start."
                ))
            })?;
        Ok(ReloadThread {
            thread,
            quit,
            hangups,
        })
    }

    /// Ends the thread once a reload in progress is over (or has found the loop gone).
    pub fn stop(self) {
        self.quit.store(true, Ordering::Relaxed);
        self.hangups.wake();
        let _ = self.thread.join();
    }
}

impl Reloading {
    /// Reads, checks and compiles the file, and puts it in force; the line to print, or the
    /// error (empty when the engine has stopped meanwhile: nothing to say).
    fn reload(&mut self) -> Result<String> {
        let loaded = commands::load(&self.file)?;
        let policy = &loaded.checked.policy;
        let plan = Plan::of(policy, &self.lan, self.lan_addr)?;
        match (&plan, &self.proxy) {
            (Some(_), None) => {
                return Err(Failure(
                    "error: the policy now has destination_fqdn rules, but ward engine started without a DNS proxy: restart ward engine for that"
                        .into(),
                ))
            }
            (Some(new), Some((_, running))) if new.listen != running.listen => {
                return Err(Failure(format!(
                    "error: the DNS proxy would move from {} to {}: restart ward engine for that",
                    running.listen, new.listen
                )))
            }
            _ => {}
        }
        super::snat_warnings(policy, &self.lan, &self.wan);
        let dns = plan.as_ref().map(|p| DnsKey::of(policy, p));
        let renumbered = dns != self.dns;
        let generation = self.generation + u64::from(renumbered);
        let mut rules = Rules::compile(policy, rand::random());
        rules.dns = plan.as_ref().map(Plan::for_engine);
        let reload = Reload {
            rules,
            generation,
            keep: keep(&self.policy, policy),
        };
        let kept = match self.reloader.reload(reload) {
            Ok(kept) => kept,
            Err(Refused::Stopped) => return Err(Failure(String::new())),
            Err(e) => return Err(Failure(format!("error: {e}"))),
        };
        // In force from here on, whatever the proxy makes of it.
        self.policy = policy.clone();
        self.dns = dns;
        self.generation = generation;
        if let Some(m) = &self.metrics {
            m.set_policy(policy, &loaded.sha256);
        }
        if let Some(e) = &self.events {
            e.reload(policy);
        }
        let mut line = format!(
            "reloaded: policy sha256 {}, {} rule{}",
            loaded.sha256,
            policy.rules.len(),
            if policy.rules.len() == 1 { "" } else { "s" }
        );
        if let (true, Some(plan), Some((control, _))) = (renumbered, &plan, &self.proxy) {
            // It fails only when the proxy has stopped, which the engine has said already.
            match control.reconfigure(policy.clone(), plan.clone(), generation) {
                Ok(()) => line.push_str("; the DNS proxy has the new names"),
                Err(e) => eprintln!("warning: the DNS proxy did not take the new names: {e}"),
            }
        }
        if kept > 0 {
            line.push_str(&format!(
                "; {kept} learned address{} kept",
                if kept == 1 { "" } else { "es" }
            ));
        }
        Ok(line)
    }
}

/// What the DNS proxy was built from: the policy's part (see [`dns::PolicyKey`]; a reload
/// that leaves it unchanged keeps the running proxy and the rule numbering it learns under)
/// and where it serves and asks.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsKey {
    policy: dns::PolicyKey,
    plan: Plan,
}

impl DnsKey {
    pub fn of(p: &Policy, plan: &Plan) -> DnsKey {
        DnsKey {
            policy: dns::PolicyKey::of(p),
            plan: plan.clone(),
        }
    }
}

/// By rule position in `old`: where the name rule with the same id and the same names stands
/// in `new`, whose addresses learned so far stay learned there.
fn keep(old: &Policy, new: &Policy) -> Vec<Option<u32>> {
    old.rules
        .iter()
        .map(|o| {
            if o.destination_fqdn.is_empty() {
                return None;
            }
            let at = new
                .rules
                .iter()
                .position(|n| n.id == o.id && n.destination_fqdn == o.destination_fqdn)?;
            u32::try_from(at).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        let yaml = format!(
            "defaults: {{default_action: deny, upstream_dns: 198.51.100.20}}\ninterfaces: {{lan: [lan0], wan: [wan0]}}\nrules:\n{rules}"
        );
        match policy::parse_str(&yaml, "test.yaml") {
            Ok(c) => c.policy,
            Err(e) => panic!("{e}"),
        }
    }

    const WEB: &str = "  - {id: web, action: accept, direction: egress, destination_fqdn: [ok.test], protocol: tcp, destination_port: 80}\n";
    const MAIL: &str = "  - {id: mail, action: accept, direction: egress, destination_fqdn: [mail.test], protocol: tcp, destination_port: 25}\n";
    const SSH: &str =
        "  - {id: ssh, action: accept, direction: egress, protocol: tcp, destination_port: 22}\n";

    #[test]
    fn name_rules_keep_their_addresses_where_they_move_with_the_same_id_and_names() {
        let old = policy(&format!("{WEB}{SSH}{MAIL}"));
        // ssh first; web on another port (same names: kept); mail with other names: not.
        let new = policy(&format!(
            "{SSH}{}  - {{id: mail, action: accept, direction: egress, destination_fqdn: [post.test], protocol: tcp, destination_port: 25}}\n",
            WEB.replace("80}", "8080}")
        ));
        assert_eq!(keep(&old, &new), vec![Some(1), None, None]);
        // A rule gone, or no longer a name rule, keeps nothing.
        assert_eq!(keep(&old, &policy(SSH)), vec![None, None, None]);
        assert_eq!(keep(&old, &old), vec![Some(0), None, Some(2)]);
    }

    #[test]
    fn the_dns_side_is_renumbered_only_when_its_rules_or_settings_change() {
        let plan = Plan {
            listen: "192.168.1.1:53".parse().expect("addr"),
            upstreams: vec!["198.51.100.20:53".parse().expect("addr")],
            intercept: false,
        };
        let key = |rules: &str| DnsKey::of(&policy(rules), &plan);
        let running = key(&format!("{WEB}{SSH}"));
        let telnet = SSH.replace("ssh", "telnet").replace("22}", "23}");
        assert_eq!(
            key(&format!("{WEB}{SSH}{telnet}")),
            running,
            "a rule more after"
        );
        assert_ne!(key(&format!("{SSH}{WEB}")), running, "web moved");
        assert_ne!(key(&format!("{WEB}{MAIL}")), running, "a name rule more");
        let other = Plan {
            intercept: true,
            ..plan.clone()
        };
        assert_ne!(
            DnsKey::of(&policy(WEB), &other),
            DnsKey::of(&policy(WEB), &plan)
        );
    }
}

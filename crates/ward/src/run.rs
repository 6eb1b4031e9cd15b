//! `ward run`, the daemon: applies the policy, serves its DNS proxy (learned addresses go into
//! the kernel's name sets), re-applies on SIGHUP, and stops on SIGTERM / SIGINT with the policy
//! still enforced. Metrics on `--metrics`, ECS events on `--log`.

use crate::commands::{self, Failure, Result, Safety};
use crate::safe;
use dns::{Committer, Learner, Matcher, Names, Proxy, Stats, Update};
use nft::learn::{SetOp, SetWriter};
use policy::Policy;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use telemetry::metrics;
use tokio::signal::unix::{signal, SignalKind};

/// What `ward run` was asked to do.
pub struct Options<'a> {
    pub file: &'a Path,
    pub table: &'a str,
    pub netns: Option<&'a str>,
    pub state_dir: &'a Path,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// Where to write ECS events (`-`: stdout).
    pub log: Option<&'a Path>,
}

pub fn run(o: &Options) -> Result {
    // Every thread started from here on (the runtime's, the reloads') inherits the namespace.
    if let Some(ns) = o.netns {
        nft::netns::enter(ns)?;
    }
    let state = safe::State::new(o.state_dir, o.netns, o.table);
    let shared = DnsShared {
        stats: Arc::new(Stats::default()),
        names: Arc::new(Names::new(0)),
    };
    let stats = &shared.stats;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("error: cannot start the runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        // Signals are caught from before the first apply: a SIGTERM that arrives while it runs
        // still ends with the policy enforced.
        let signals = Signals::new()?;
        let safety = Safety {
            state_dir: o.state_dir,
            confirm_within: None,
        };
        // What can fail on its own comes before the table changes: the event log's NFLOG
        // group and file (subscribed before the policy logs anything), the metrics address,
        // and (in `render`) the DNS proxy's port.
        let events = match o.log {
            Some(out) => {
                let names = shared.names.clone();
                let group = nft::Options::default().log_group;
                let domain = move |ip: IpAddr| names.lookup(ip);
                Some(
                    telemetry::EventLog::start(out, None, group, domain).map_err(
                        |e| Failure(format!("error: {e}\nnothing was changed.")),
                    )?,
                )
            }
            None => None,
        };
        let sources = Arc::new(metrics::Sources::new(
            o.table,
            stats.clone(),
            events.as_ref().map(|e| e.counters()),
        ));
        let _metrics = match o.metrics {
            Some(addr) => {
                let server = metrics::serve(addr, sources.clone()).map_err(|e| {
                    Failure(format!(
                        "error: cannot serve metrics on {addr}: {e}\nnothing was changed."
                    ))
                })?;
                println!("metrics on http://{}/metrics", server.addr());
                Some(server)
            }
            None => None,
        };
        let (summary, next) = commands::apply_audited(&state, "apply", &safety, |sha| {
            render(o, sha, None, &shared)
        })?;
        println!("{summary}");
        let observers = Observers {
            metrics: &sources,
            events: events.as_ref(),
        };
        observers.policy(&next);
        let mut dns = None;
        start_or_change(&mut dns, next.dns, stats);
        match &dns {
            Some(d) => println!(
                "serving DNS on {} (UDP and TCP), forwarding to {}{}",
                join(&d.proxy.local_addrs()),
                join(&d.rules.plan.upstreams),
                if d.rules.plan.intercept {
                    "; LAN queries to other resolvers are redirected here"
                } else {
                    ""
                }
            ),
            None => println!("no destination_fqdn rules: no DNS proxy to run"),
        }
        println!("ward run: ready; SIGHUP re-applies the file, SIGTERM or Ctrl-C stops (the policy stays enforced)");
        serve(o, dns, signals, &shared, &observers).await
    })?;
    println!(
        "DNS: {}",
        stats
            .snapshot()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("stopped; the policy stays enforced (remove it with `ward remove`)");
    Ok(())
}

/// The daemon's loop: DNS, reloads one at a time (SIGHUPs that arrive during one are
/// coalesced into one more), until SIGTERM / SIGINT.
async fn serve(
    o: &Options<'_>,
    mut dns: Option<Running>,
    signals: Signals,
    shared: &DnsShared,
    observers: &Observers<'_>,
) -> Result {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    let mut serving = dns.as_ref().map(|d| Box::pin(d.proxy.serve()));
    let mut reloading: Option<tokio::task::JoinHandle<Result<(String, Next)>>> = None;
    let mut again = false;
    loop {
        tokio::select! {
            r = async { serving.as_mut().expect("guarded").await }, if serving.is_some() => {
                return Err(Failure(match r {
                    Ok(()) => "error: the DNS proxy stopped".to_string(),
                    Err(e) => format!("error: DNS proxy stopped: {e}"),
                }));
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                if reloading.is_some() {
                    again = true;
                } else {
                    reloading = Some(start_reload(o, dns.as_ref().map(|d| d.rules.key.clone()), shared));
                }
            }
            r = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                reloading = None;
                match r.unwrap_or_else(|e| Err(Failure(format!("error: the reload failed: {e}")))) {
                    Ok((summary, next)) => {
                        println!("re{summary}");
                        observers.policy(&next);
                        if start_or_change(&mut dns, next.dns, &shared.stats) {
                            serving = dns.as_ref().map(|d| Box::pin(d.proxy.serve()));
                        }
                    }
                    Err(Failure(e)) => eprintln!("{e}\nreload failed; the running policy stays in force"),
                }
                if std::mem::take(&mut again) {
                    reloading = Some(start_reload(o, dns.as_ref().map(|d| d.rules.key.clone()), shared));
                }
            }
        }
    }
}

/// Re-applies the file on a thread of its own, so that DNS answers keep flowing meanwhile.
fn start_reload(
    o: &Options,
    current: Option<DnsKey>,
    shared: &DnsShared,
) -> tokio::task::JoinHandle<Result<(String, Next)>> {
    let file = o.file.to_path_buf();
    let table = o.table.to_string();
    let state_dir = o.state_dir.to_path_buf();
    let netns = o.netns.map(str::to_string);
    let state = safe::State::new(&state_dir, netns.as_deref(), &table);
    let shared = shared.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _rt = handle.enter();
        let o = Options {
            file: &file,
            table: &table,
            netns: netns.as_deref(),
            state_dir: &state_dir,
            metrics: None,
            log: None,
        };
        let safety = Safety {
            state_dir: &state_dir,
            confirm_within: None,
        };
        commands::apply_audited(&state, "reload", &safety, |sha| {
            render(&o, sha, current.as_ref(), &shared)
        })
    })
}

/// What describes the running policy to the outside: metrics and ECS events.
struct Observers<'a> {
    metrics: &'a metrics::Sources,
    events: Option<&'a telemetry::EventLog>,
}

impl Observers<'_> {
    /// The policy `next` is now enforced.
    fn policy(&self, next: &Next) {
        self.metrics.set_policy(&next.policy, &next.sha256);
        if let Some(e) = self.events {
            e.reload(&next.policy);
        }
    }
}

/// What an apply hands to the daemon besides the table.
struct Next {
    dns: DnsNext,
    policy: Policy,
    sha256: String,
}

/// What becomes of the DNS proxy after an apply.
enum DnsNext {
    /// The policy has no name rules.
    None,
    /// Same rules and settings: the running proxy carries on as it is.
    Keep,
    /// New rules for the proxy already listening.
    Rules(DnsRules),
    /// A proxy bound for a policy that had none.
    Start(Proxy, DnsRules),
}

/// Loads and renders the policy; `current` is what the running proxy was built from.
fn render(
    o: &Options,
    sha: &mut Option<String>,
    current: Option<&DnsKey>,
    shared: &DnsShared,
) -> Result<(nft::Session, nft::render::Parts, String, Next)> {
    let l = commands::load(o.file)?;
    *sha = Some(l.sha256.clone());
    let s = commands::session(None)?;
    let (parts, summary, opts) = commands::prepare(&l, o.file, o.table)?;
    let p = &l.checked.policy;
    let dns = match opts.dns {
        None => DnsNext::None,
        Some(plan) => {
            let key = DnsKey::of(p, &plan);
            match current {
                Some(cur) if *cur == key => DnsNext::Keep,
                Some(cur) if cur.plan.listen != plan.listen => {
                    return Err(Failure(format!(
                    "error: the DNS proxy would move from {} to {}: restart `ward run` for that",
                    join(&cur.plan.listen),
                    join(&plan.listen)
                )))
                }
                Some(_) => DnsNext::Rules(DnsRules::build(p, key, o.table, shared)?),
                None => {
                    let rules = DnsRules::build(p, key, o.table, shared)?;
                    let proxy = Proxy::bind(
                        rules.config.clone(),
                        rules.matcher.clone(),
                        rules.committer.clone(),
                        shared.stats.clone(),
                    )
                    .map_err(|e| Failure(format!("error: DNS proxy: {e}\nnothing was changed.")))?;
                    DnsNext::Start(proxy, rules)
                }
            }
        }
    };
    let next = Next {
        dns,
        policy: l.checked.policy,
        sha256: l.sha256,
    };
    Ok((s, parts, summary, next))
}

/// Puts an apply's outcome into effect; true if the proxy must be served anew.
fn start_or_change(dns: &mut Option<Running>, next: DnsNext, stats: &Arc<Stats>) -> bool {
    match next {
        DnsNext::Keep => false,
        DnsNext::None => dns.take().is_some(),
        DnsNext::Start(proxy, mut rules) => {
            tokio::task::spawn_local(rules.task.take().expect("fresh"));
            *dns = Some(Running { proxy, rules });
            true
        }
        DnsNext::Rules(mut rules) => {
            let Some(d) = dns.as_mut() else {
                return false;
            };
            tokio::task::spawn_local(rules.task.take().expect("fresh"));
            let changed = d.proxy.reconfigure(
                rules.config.clone(),
                rules.matcher.clone(),
                rules.committer.clone(),
                stats.clone(),
            );
            debug_assert!(changed.is_ok(), "render checked the listen addresses");
            d.rules = rules;
            true
        }
    }
}

/// What the DNS side keeps across reloads: its counters, and the names of learned addresses.
#[derive(Clone)]
struct DnsShared {
    stats: Arc<Stats>,
    names: Arc<Names>,
}

/// The proxy being served and the rules it serves.
struct Running {
    proxy: Proxy,
    rules: DnsRules,
}

/// What the running proxy was built from: the policy's part (see [`dns::PolicyKey`]) and where
/// it serves and asks.
#[derive(Clone, PartialEq)]
struct DnsKey {
    policy: dns::PolicyKey,
    plan: nft::DnsProxy,
}

impl DnsKey {
    fn of(p: &Policy, plan: &nft::DnsProxy) -> DnsKey {
        DnsKey {
            policy: dns::PolicyKey::of(p),
            plan: plan.clone(),
        }
    }
}

/// The proxy's side of one policy: its matcher, and a committer (with a cache of its own)
/// writing into that policy's name sets.
struct DnsRules {
    key: DnsKey,
    plan: nft::DnsProxy,
    config: dns::Config,
    matcher: Arc<Matcher>,
    committer: Committer,
    /// The committer's task, until the daemon's loop takes it.
    task: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl DnsRules {
    fn build(p: &Policy, key: DnsKey, table: &str, shared: &DnsShared) -> Result<DnsRules> {
        shared.names.set_capacity(p.dns.capacity as usize);
        let matcher = Arc::new(Matcher::from_policy(p));
        let rule_ids: Vec<String> = p.rules.iter().map(|r| r.id.clone()).collect();
        let learner = KernelSets::open(table, rule_ids)?;
        let (committer, task) = Committer::new(
            &p.dns,
            matcher.clone(),
            shared.stats.clone(),
            shared.names.clone(),
            learner,
        );
        let plan = key.plan.clone();
        Ok(DnsRules {
            config: dns::Config::new(p, plan.listen.clone(), plan.upstreams.clone()),
            plan,
            key,
            matcher,
            committer,
            task: Some(Box::pin(task)),
        })
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signals the daemon acts on.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        let catch = |kind: SignalKind| {
            signal(kind).map_err(|e| Failure(format!("error: cannot catch signals: {e}")))
        };
        Ok(Signals {
            hup: catch(SignalKind::hangup())?,
            term: catch(SignalKind::terminate())?,
            int: catch(SignalKind::interrupt())?,
        })
    }
}

/// The kernel side of learning: the policy's name sets in ward's table.
struct KernelSets {
    writer: SetWriter,
    /// Rule ids by policy position (the matcher's rule index).
    rule_ids: Vec<String>,
}

impl KernelSets {
    fn open(table: &str, rule_ids: Vec<String>) -> Result<KernelSets> {
        Ok(KernelSets {
            writer: SetWriter::open(table)?,
            rule_ids,
        })
    }
}

impl Learner for KernelSets {
    type Error = nft::NftError;

    fn commit(&mut self, updates: &[Update]) -> std::result::Result<(), nft::NftError> {
        let ops: Vec<SetOp<'_>> = updates
            .iter()
            .filter_map(|u| match *u {
                Update::Add { rule, addr, ttl } => Some(SetOp::Add {
                    rule: self.rule_ids.get(rule.index())?,
                    addr,
                    timeout: ttl,
                }),
                Update::Remove { rule, addr } => Some(SetOp::Remove {
                    rule: self.rule_ids.get(rule.index())?,
                    addr,
                }),
            })
            .collect();
        self.writer.commit(&ops)
    }
}

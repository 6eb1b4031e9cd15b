//! `ward run`: apply the policy, then serve its DNS proxy until SIGTERM / SIGINT, feeding the
//! learned addresses into the kernel's name sets. Stopping leaves the policy enforced.

use crate::commands::{self, Failure, Result};
use dns::{Committer, Learner, Matcher, Proxy, Stats, Update};
use nft::learn::{SetOp, SetWriter};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// What `ward run` was asked to do.
pub struct Options<'a> {
    pub file: &'a Path,
    pub table: &'a str,
    pub netns: Option<&'a str>,
    #[allow(dead_code)] // not used by `run` yet
    pub state_dir: &'a Path,
    /// Where to serve Prometheus metrics.
    #[allow(dead_code)] // not served yet
    pub metrics: Option<SocketAddr>,
    /// Where to write ECS events (`-`: stdout).
    pub log: Option<&'a Path>,
}

pub fn run(o: &Options) -> Result {
    let (file, table, netns) = (o.file, o.table, o.netns);
    let l = commands::load(file)?;
    // Enters the namespace on this thread before any other starts: they all inherit it.
    let session = commands::session(netns)?;
    let p = &l.checked.policy;
    let (parts, summary, opts) = commands::prepare(&l, file, table)?;
    // ECS events on threads of their own (in the namespace entered above), subscribed before
    // the policy logs anything; stopped when `run` returns.
    let _events = o
        .log
        .map(|out| telemetry::EventLog::start(out, p, opts.log_group, |_: IpAddr| None))
        .transpose()
        .map_err(|e| Failure(format!("error: {e}\nnothing was changed.")))?;

    // One thread serves everything: the proxy's sockets, and the commits into the kernel
    // inline between them (see the dns crate's committer).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("error: cannot start the runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    // Sockets and the learner come first: if the port is taken or libnftables is missing,
    // nothing has changed yet.
    let proxy = match &opts.dns {
        Some(d) => {
            let matcher = Arc::new(Matcher::from_policy(p));
            let stats = Arc::new(Stats::default());
            let rule_ids: Vec<String> = p.rules.iter().map(|r| r.id.clone()).collect();
            let learner = KernelSets::open(table, rule_ids)?;
            let (committer, task) = Committer::new(&p.dns, matcher.clone(), stats.clone(), learner);
            local.spawn_local(task);
            let config = dns::Config::new(p, d.listen.clone(), d.upstreams.clone());
            let _in_rt = rt.enter();
            let proxy = Proxy::bind(config, matcher, committer, stats.clone())
                .map_err(|e| Failure(format!("error: DNS proxy: {e}\nnothing was changed.")))?;
            Some((proxy, stats, d))
        }
        None => None,
    };

    nft::live::install(&session, &parts).map_err(|e| {
        Failure(format!(
            "error: {e}\napply failed; the live table was not changed."
        ))
    })?;
    println!("{summary}");
    match &proxy {
        Some((proxy, _, d)) => println!(
            "serving DNS on {} (UDP and TCP), forwarding to {}{}",
            join(&proxy.local_addrs()),
            join(&d.upstreams),
            if d.intercept {
                "; LAN queries to other resolvers are redirected here"
            } else {
                ""
            }
        ),
        None => println!("no destination_fqdn rules: no DNS proxy to run"),
    }
    println!("ward run: ready; SIGTERM or Ctrl-C stops (the policy stays enforced)");

    let stats = proxy.as_ref().map(|(_, s, _)| s.clone());
    let served = local.block_on(&rt, async move {
        let serve = async move {
            match proxy {
                Some((proxy, _, _)) => proxy.serve().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = serve => r,
            _ = stop_signal() => Ok(()),
        }
    });
    if let Some(stats) = stats {
        let counts: Vec<String> = stats
            .snapshot()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("DNS: {}", counts.join(" "));
    }
    served.map_err(|e| Failure(format!("error: DNS proxy stopped: {e}")))?;
    println!("stopped; the policy stays enforced (remove it with `ward remove`)");
    Ok(())
}

fn join(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        // Without handlers the default action (exit) still stops ward.
        _ => std::future::pending().await,
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

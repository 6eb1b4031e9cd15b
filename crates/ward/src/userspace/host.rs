//! The host stack behind `ward engine`: a private network namespace whose only link is a TUN
//! device holding the engine's addresses, where the DNS proxy runs on ordinary sockets.
//!
//! The engine hands the proxy its queries through the TUN device and sends on what the proxy
//! sends (see `engine::io::Tun` and `Engine::handle_host`); what the proxy learns reaches the
//! engine's packet loop through an [`EngineLearner`] and is in force before the answer leaves.
//! The namespace is the thread's own (`unshare`), so it is gone with the thread and the
//! device: nothing is left behind however `ward engine` ends. It cannot be the namespace of
//! the engine's interfaces, whose kernel would take frames for those addresses as its own.
//!
//! A reload hands the proxy new rules through a [`Control`]: it builds a matcher and a
//! committer for them on its own thread and serves them on the same sockets
//! (`Proxy::reconfigure`). Every committer shares the one [`Feed`], and says which policy's
//! rule numbering its batches use (see `engine::learn`).

use super::learner::EngineLearner;
use crate::commands::{Failure, Result};
use dns::{Committer, Matcher, Names, Proxy, Stats};
use engine::io::Tun;
use engine::learn::Feed;
use nix::sched::{unshare, CloneFlags};
use policy::Policy;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// The TUN device's name inside the host namespace.
const DEVICE: &str = "ward0";
/// How often the proxy's thread looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Where the proxy serves and whom it asks, as the engine must know them too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub listen: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    pub intercept: bool,
}

impl Plan {
    /// The proxy's plan for `policy` behind an engine whose LAN address is `lan`, or `None`
    /// when the policy needs no proxy. The proxy listens on the engine's LAN address only
    /// (IPv4, as the engine is): `dns.listen` may choose the port, and name that address or
    /// the wildcard. Errors say what is wrong, not what becomes of it.
    pub fn of(policy: &Policy, lan_if: &str, lan: Ipv4Addr) -> Result<Option<Plan>> {
        let lan_addrs = |name: &str| {
            if name == lan_if {
                vec![IpAddr::V4(lan)]
            } else {
                Vec::new()
            }
        };
        let resolvers = || {
            std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| nft::dnsplan::resolv_conf_nameservers(&t))
                .unwrap_or_default()
        };
        let plan = nft::dnsplan::plan(policy, lan_addrs, resolvers)
            .map_err(|e| Failure(format!("error: {e}")))?;
        let Some(plan) = plan else {
            return Ok(None);
        };
        let port = match policy.dns.listen.as_slice() {
            [] => 53,
            listen => {
                let elsewhere: Vec<String> = listen
                    .iter()
                    .filter(|a| a.ip() != IpAddr::V4(lan) && !a.ip().is_unspecified())
                    .map(|a| a.to_string())
                    .collect();
                if !elsewhere.is_empty() {
                    return Err(Failure(format!(
                        "error: dns.listen names {}, but ward engine's DNS proxy listens on the engine's LAN address ({lan}) only",
                        elsewhere.join(", ")
                    )));
                }
                listen[0].port()
            }
        };
        let upstreams: Vec<SocketAddr> =
            plan.upstreams.into_iter().filter(|u| u.is_ipv4()).collect();
        if upstreams.is_empty() {
            return Err(Failure(
                "error: ward engine's DNS proxy needs an IPv4 upstream resolver: set defaults.upstream_dns"
                    .into(),
            ));
        }
        Ok(Some(Plan {
            listen: SocketAddr::new(IpAddr::V4(lan), port),
            upstreams,
            intercept: plan.intercept,
        }))
    }

    /// What the engine lets through for the proxy.
    pub fn for_engine(&self) -> engine::core::engine::DnsProxy {
        engine::core::engine::DnsProxy {
            port: self.listen.port(),
            upstreams: self.upstreams.clone(),
            intercept: self.intercept,
        }
    }
}

/// The proxy's thread, once it serves.
pub struct Host {
    thread: thread::JoinHandle<()>,
    pub stats: Arc<Stats>,
    control: Control,
}

/// New rules for the proxy, and where to say when it serves them.
struct Reconfigure {
    policy: Policy,
    plan: Plan,
    generation: u64,
    done: mpsc::Sender<std::result::Result<(), String>>,
}

/// The way to give the running proxy new rules, from any thread.
#[derive(Clone)]
pub struct Control {
    tx: tokio::sync::mpsc::UnboundedSender<Reconfigure>,
}

impl Control {
    /// Has the proxy serve `policy`'s names (planned as `plan`, which must listen where it
    /// does) on its sockets, learning under rule numbering `generation`; returns once it
    /// does. Queries in flight finish under the rules they started with.
    pub fn reconfigure(
        &self,
        policy: Policy,
        plan: Plan,
        generation: u64,
    ) -> std::result::Result<(), String> {
        let (done, result) = mpsc::channel();
        self.tx
            .send(Reconfigure {
                policy,
                plan,
                generation,
                done,
            })
            .map_err(|_| "the DNS proxy has stopped".to_string())?;
        result
            .recv()
            .unwrap_or_else(|_| Err("the DNS proxy has stopped".into()))
    }
}

/// The proxy's rules for `policy`: its matcher, its settings, and a committer teaching the
/// engine through `feed` under rule numbering `generation`, whose task the caller runs.
fn rules(
    policy: &Policy,
    plan: &Plan,
    generation: u64,
    feed: &Rc<RefCell<Feed>>,
    names: &Arc<Names>,
    stats: &Arc<Stats>,
) -> (
    dns::Config,
    Arc<Matcher>,
    Committer,
    impl std::future::Future<Output = ()>,
) {
    names.set_capacity(policy.dns.capacity as usize);
    let matcher = Arc::new(Matcher::from_policy(policy));
    let config = dns::Config::new(policy, vec![plan.listen], plan.upstreams.clone());
    let (committer, task) = Committer::new(
        &policy.dns,
        matcher.clone(),
        stats.clone(),
        names.clone(),
        EngineLearner::new(feed.clone(), generation),
    );
    (config, matcher, committer, task)
}

impl Host {
    /// Creates the host namespace and its TUN device holding `wan` and `lan` (address,
    /// prefix length), and starts the DNS proxy there, learning through `feed` and counting
    /// into `stats`. Returns once the proxy listens, with the device for the engine's loop;
    /// the proxy stops when `stop` is set. Fails, leaving nothing behind, if any of that
    /// cannot be done.
    pub fn start(
        policy: &Policy,
        plan: &Plan,
        addrs: [(Ipv4Addr, u8); 2],
        feed: Feed,
        stop: &'static AtomicBool,
        stats: Arc<Stats>,
        names: Arc<Names>,
    ) -> Result<(Host, Tun)> {
        let (policy, plan) = (policy.clone(), plan.clone());
        let (ready_tx, ready) = mpsc::channel::<Result<Tun>>();
        let (control, mut reconfigure) = tokio::sync::mpsc::unbounded_channel::<Reconfigure>();
        let thread_stats = stats.clone();
        let thread = thread::Builder::new()
            .name("ward-dns".into())
            .spawn(move || {
                let fail = |what: String| Failure(format!("error: {what}\nthe engine did not start."));
                let up = (|| -> Result<(Tun, tokio::runtime::Runtime)> {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                        fail(format!("cannot create the DNS proxy's network namespace: {e}"))
                    })?;
                    let tun = Tun::open(DEVICE).map_err(|e| fail(e.to_string()))?;
                    // The WAN address first: the kernel sends what is off both links from it.
                    tun.configure(&addrs).map_err(|e| fail(e.to_string()))?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| fail(format!("cannot start the runtime: {e}")))?;
                    Ok((tun, rt))
                })();
                let (tun, rt) = match up {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    // Every committer's: they take turns on this thread, each commit whole.
                    let feed = Rc::new(RefCell::new(feed));
                    let (config, matcher, committer, task) =
                        rules(&policy, &plan, 0, &feed, &names, &thread_stats);
                    let mut proxy = match Proxy::bind(config, matcher, committer, thread_stats.clone()) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(fail(format!("DNS proxy: {e}"))));
                            return;
                        }
                    };
                    if ready_tx.send(Ok(tun)).is_err() {
                        return;
                    }
                    tokio::task::spawn_local(task);
                    let stopped = async {
                        while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(STOP_POLL).await;
                        }
                    };
                    tokio::pin!(stopped);
                    let mut serving = Box::pin(proxy.serve());
                    loop {
                        tokio::select! {
                            served = &mut serving => {
                                if let Err(e) = served {
                                    eprintln!("ward engine: the DNS proxy stopped: {e}; names learned so far stay until their TTLs run out");
                                }
                                return;
                            }
                            () = &mut stopped => return,
                            Some(r) = reconfigure.recv() => {
                                let (config, matcher, committer, task) =
                                    rules(&r.policy, &r.plan, r.generation, &feed, &names, &thread_stats);
                                let result = proxy
                                    .reconfigure(config, matcher, committer, thread_stats.clone())
                                    .map_err(|c| format!(
                                        "the DNS proxy listens on {}, not {:?}",
                                        plan.listen, c.listen
                                    ));
                                if result.is_ok() {
                                    tokio::task::spawn_local(task);
                                    serving = Box::pin(proxy.serve());
                                }
                                let _ = r.done.send(result);
                            }
                        }
                    }
                });
            })
            .map_err(|e| Failure(format!("error: cannot start the DNS proxy's thread: {e}")))?;
        match ready.recv() {
            Ok(Ok(tun)) => Ok((
                Host {
                    thread,
                    stats,
                    control: Control { tx: control },
                },
                tun,
            )),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Failure(
                    "error: the DNS proxy's thread ended before it served\nthe engine did not start.".into(),
                ))
            }
        }
    }

    /// The way to give the proxy new rules.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Waits for the proxy to stop (after the stop flag is set).
    pub fn join(self) -> Arc<Stats> {
        let _ = self.thread.join();
        self.stats
    }
}

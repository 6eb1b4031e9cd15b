//! `ward engine`: the policy enforced by ward's own data plane (the `engine` crate) forwarding
//! raw frames between a LAN and a WAN interface, reloaded on SIGHUP, until SIGTERM or SIGINT;
//! then its counters.
//!
//! SIGHUP reads the file again and puts it in force without stopping the packet loop or
//! dropping a connection (see `reload`).
//!
//! With `--metrics` the counters are served as Prometheus metrics meanwhile: the packet loop
//! publishes a snapshot of them at every sweep (see [`publish`]), which scrapes read. With
//! `--log` the packets it logged are written as ECS events at the same ticks (see `events`).
//!
//! The engine owns the addresses given on the command line: it answers ARP for them, and
//! with name rules it serves the DNS proxy on them from a host stack of its own (see `host`).
//! The kernel must not forward in the same namespace (it would pass what the engine drops),
//! so `ward engine` refuses to start where IPv4 forwarding is on.

mod events;
mod host;
mod learner;
mod reload;

use crate::commands::{self, Failure, Result};
use engine::core::arp::{Own, Side};
use engine::core::conntrack::DEFAULT_CAPACITY;
use engine::core::engine::{Config, Discard, Engine, Interface, Rules, DEFAULT_NEIGHBOURS};
use engine::core::DropReason;
use engine::io::{self, Driver, Socket};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use telemetry::metrics::{self, EngineCounters, EngineSnapshot};

#[derive(clap::Args)]
pub struct EngineArgs {
    #[arg(default_value = "rules.yaml")]
    file: PathBuf,
    /// The LAN-side interface
    #[arg(long, value_name = "IF")]
    lan: String,
    /// The WAN-side interface
    #[arg(long, value_name = "IF")]
    wan: String,
    /// The engine's own address and prefix on the LAN side (e.g. 192.168.1.1/24)
    #[arg(long, value_name = "IP/LEN", value_parser = parse_addr)]
    lan_addr: (Ipv4Addr, u8),
    /// The engine's own address and prefix on the WAN side
    #[arg(long, value_name = "IP/LEN", value_parser = parse_addr)]
    wan_addr: (Ipv4Addr, u8),
    /// Next hop for destinations off both links (on the WAN side)
    #[arg(long, value_name = "IP")]
    gateway: Option<Ipv4Addr>,
    /// Run inside this named network namespace
    #[arg(long)]
    netns: Option<String>,
    /// Connections tracked at most; new ones beyond are dropped (conntrack_full)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CAPACITY as u32,
          value_parser = clap::value_parser!(u32).range(1..=1 << 28))]
    conntrack_capacity: u32,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9580), in the namespace the
    /// engine runs in; off by default
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Write one ECS JSON event per logged packet (`log: true` rules, default denies) to FILE
    /// ("-" for stdout)
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

fn parse_addr(s: &str) -> std::result::Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("expected IP/LEN such as 192.168.1.1/24, got {s:?}"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{len:?} is not a prefix length (0-32)"))?;
    Ok((ip, len))
}

fn io_failure(e: io::IoError) -> Failure {
    Failure(format!("error: {e}\nthe engine did not start."))
}

pub fn run(a: &EngineArgs) -> Result {
    // Sockets opened from here on belong to the namespace.
    if let Some(ns) = &a.netns {
        nft::netns::enter(ns)?;
    }
    let loaded = commands::load(&a.file)?;
    let policy = &loaded.checked.policy;
    forwarding_is_off()?;
    let dns = host::Plan::of(policy, &a.lan, a.lan_addr.0)
        .map_err(|Failure(e)| Failure(format!("{e}\nthe engine did not start.")))?;
    snat_warnings(policy, &a.lan, &a.wan);

    // The event log and the metrics address are taken before anything is forwarded: if
    // either cannot be, nothing is.
    let events = match &a.log {
        Some(out) => Some(Arc::new(
            telemetry::EventLog::writer(out, Some(policy))
                .map_err(|e| Failure(format!("error: {e}\nthe engine did not start.")))?,
        )),
        None => None,
    };
    let dns_stats = Arc::new(dns::Stats::default());
    // The names the DNS proxy learned addresses for, which events carry.
    let names = Arc::new(dns::Names::new(policy.dns.capacity as usize));
    let counters = Arc::new(EngineCounters::default());
    let sources = Arc::new(metrics::Sources::engine(
        counters.clone(),
        dns_stats.clone(),
        events.as_ref().map(|e| e.counters()),
    ));
    sources.set_policy(policy, &loaded.sha256);
    let metrics_server = match a.metrics {
        Some(addr) => Some(metrics::serve(addr, sources.clone()).map_err(|e| {
            Failure(format!(
                "error: cannot serve metrics on {addr}: {e}\nthe engine did not start."
            ))
        })?),
        None => None,
    };

    let lan = Socket::open(&a.lan).map_err(io_failure)?;
    let wan = Socket::open(&a.wan).map_err(io_failure)?;
    let own = |socket: &Socket, (ip, prefix_len): (Ipv4Addr, u8)| Own {
        mac: socket.link().mac,
        ip,
        prefix_len,
    };
    // The tables' hash keys are secret: tuples and addresses are chosen by whoever sends.
    let key = || rand::random::<[u64; 2]>();
    let config = Config {
        lan: Interface {
            name: a.lan.clone(),
            own: own(&lan, a.lan_addr),
        },
        wan: Interface {
            name: a.wan.clone(),
            own: own(&wan, a.wan_addr),
        },
        gateway: a.gateway,
        conntrack_capacity: a.conntrack_capacity as usize,
        neighbour_capacity: DEFAULT_NEIGHBOURS,
        conntrack_key: key(),
        neighbour_key: key(),
    };
    let mut rules = Rules::compile(policy, key());
    rules.dns = dns.as_ref().map(host::Plan::for_engine);
    let mut engine = Engine::new(rules, config)
        .map_err(|e| Failure(format!("error: {e}\nthe engine did not start.")))?;
    let stop = io::stop_on_signals().map_err(io_failure)?;
    // From here on a SIGHUP is a reload, once the loop runs.
    let hangups = reload::Hangups::catch()?;
    let mut driver = Driver::new(lan, wan);
    let (feed, mut inbox) = engine::learn::channel().map_err(io_failure)?;
    let host = match &dns {
        Some(plan) => {
            let (host, tun) = host::Host::start(
                policy,
                plan,
                [a.wan_addr, a.lan_addr],
                feed,
                stop,
                dns_stats,
                names.clone(),
            )?;
            driver.attach_host(tun);
            println!(
                "serving DNS on {} (UDP and TCP), forwarding to {}{}",
                plan.listen,
                plan.upstreams
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if plan.intercept {
                    "; LAN queries to other resolvers are redirected here"
                } else {
                    ""
                }
            );
            Some(host)
        }
        None => {
            drop(feed);
            None
        }
    };
    let published = metrics_server.as_ref().map(|_| counters.clone());
    if let Some(c) = &published {
        publish(c, &engine);
    }
    let events = events.map(|log| {
        engine.start_logging();
        let ifaces = [a.lan.clone(), a.wan.clone()];
        let e = events::Events::new(log.clone(), names.clone(), ifaces, driver.now());
        (log, Arc::new(std::sync::Mutex::new(e)))
    });
    let taker = events.as_ref().map(|(_, e)| e.clone());
    if published.is_some() || taker.is_some() {
        driver.on_tick(Box::new(move |engine, _| {
            if let Some(c) = &published {
                publish(c, engine);
            }
            if let Some(e) = &taker {
                e.lock().unwrap_or_else(|e| e.into_inner()).take(engine);
            }
        }));
    }
    if let Some(server) = &metrics_server {
        println!("metrics on http://{}/metrics", server.addr());
    }
    let reloads = reload::ReloadThread::start(
        hangups,
        reload::Reloading {
            file: a.file.clone(),
            lan: a.lan.clone(),
            wan: a.wan.clone(),
            lan_addr: a.lan_addr.0,
            reloader: inbox.reloader(),
            proxy: host
                .as_ref()
                .zip(dns.clone())
                .map(|(h, p)| (h.control(), p)),
            policy: policy.clone(),
            dns: dns.as_ref().map(|p| reload::DnsKey::of(policy, p)),
            generation: 0,
            metrics: metrics_server.as_ref().map(|_| sources.clone()),
            events: events.as_ref().map(|(log, _)| log.clone()),
        },
    );
    let reloads = match reloads {
        Ok(r) => Some(r),
        Err(Failure(e)) => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(h) = host {
                h.join();
            }
            return Err(Failure(e));
        }
    };
    println!(
        "ward engine: ready; forwarding between {} ({}/{}) and {} ({}/{}){}, policy sha256 {}; SIGHUP reloads the file, SIGTERM or Ctrl-C stops",
        a.lan,
        a.lan_addr.0,
        a.lan_addr.1,
        a.wan,
        a.wan_addr.0,
        a.wan_addr.1,
        a.gateway
            .map(|g| format!(", gateway {g}"))
            .unwrap_or_default(),
        loaded.sha256
    );
    let result = driver.run_learning(&mut engine, stop, &mut inbox);
    // The last scrapes, while the rest stops, see the final counts; the last logged packets
    // are written.
    publish(&counters, &engine);
    if let Some((_, e)) = &events {
        e.lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&mut engine);
    }
    // The proxy stops with the loop, however it ended; a reload under way finds it gone.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(inbox);
    if let Some(r) = reloads {
        r.stop();
    }
    let dns_stats = host.map(host::Host::join);
    // Counters go out however the loop ended: they say what was enforced until then.
    print!("{}", report(&engine, &driver));
    if let Some(stats) = dns_stats {
        let fields: Vec<String> = stats
            .snapshot()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("dns {}", fields.join(" "));
    }
    drop(metrics_server);
    result.map_err(|e| Failure(format!("error: {e}\nthe engine stopped.")))
}

/// Brings the snapshot scrapes read up to date with the engine's counters (unless a scrape is
/// reading it right then: the next tick does). Called from the packet loop every sweep and
/// after every reload; it allocates only the first time and after a reload, when rule ids
/// change (their counts start again at 0, as the engine's do).
fn publish(counters: &EngineCounters, engine: &Engine) {
    counters.publish(|s: &mut EngineSnapshot| {
        let mut n = 0;
        for (i, r) in engine.rule_counts().enumerate() {
            let count = nft::live::Count {
                packets: r.count.packets,
                bytes: r.count.bytes,
            };
            match s.rules.get_mut(i) {
                Some((id, c)) if id == r.id => *c = count,
                _ => {
                    s.rules.truncate(i);
                    s.rules.push((r.id.to_string(), count));
                }
            }
            n = i + 1;
        }
        s.rules.truncate(n);
        s.drops.clear();
        s.drops
            .extend(DropReason::ALL.map(|r| (r.as_str(), engine.drops(r))));
        let t = engine.totals();
        (s.snat, s.dnat) = (t.snat, t.dnat);
        let (flows, capacity) = engine.conntrack_usage();
        (s.conntrack_entries, s.conntrack_capacity) = (flows as u64, capacity as u64);
    });
}

/// Warns of SNAT rules for interfaces the engine does not forward between.
fn snat_warnings(policy: &policy::Policy, lan: &str, wan: &str) {
    for snat in &policy.nat.snat {
        if snat.out_interface != wan && snat.out_interface != lan {
            eprintln!(
                "warning: the SNAT rule for {} never applies: the engine forwards between {lan} and {wan}",
                snat.out_interface
            );
        }
    }
}

/// Refuses to run beside a forwarding kernel.
fn forwarding_is_off() -> Result {
    const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";
    let value = std::fs::read_to_string(SYSCTL)
        .map_err(|e| Failure(format!("error: cannot read {SYSCTL}: {e}")))?;
    if value.trim() != "0" {
        return Err(Failure(
            "error: IPv4 forwarding is on here, so the kernel would forward what the engine \
             drops.\nturn it off (sysctl -w net.ipv4.ip_forward=0) and start again; the engine \
             did not start."
                .into(),
        ));
    }
    Ok(())
}

/// One line per counter, `kind name value...`, for people and for scripts.
fn report(engine: &Engine, driver: &Driver) -> String {
    let mut out = String::from("ward engine: stopped\n");
    for r in engine.rule_counts() {
        let action = match r.action {
            engine::core::filter::Action::Accept => "accept",
            engine::core::filter::Action::Deny => "deny",
        };
        out.push_str(&format!(
            "rule {} {action} packets={} bytes={}\n",
            r.id, r.count.packets, r.count.bytes
        ));
    }
    for reason in DropReason::ALL {
        out.push_str(&format!("drop {reason} {}\n", engine.drops(reason)));
    }
    for why in Discard::ALL {
        out.push_str(&format!("discard {why} {}\n", engine.discards(why)));
    }
    let t = engine.totals();
    let (flows, capacity) = engine.conntrack_usage();
    out.push_str(&format!(
        "totals forwarded={} arp_replies={} arp_requests={} snat={} dnat={} conntrack={flows}/{capacity}\n",
        t.forwarded, t.arp_replies, t.arp_requests, t.snat, t.dnat
    ));
    for side in [Side::Lan, Side::Wan] {
        let link = driver.link(side);
        let own = engine.own(side);
        let mac = link.mac.0.map(|b| format!("{b:02x}")).join(":");
        out.push_str(&format!(
            "link {} mac={mac} address={}/{}\n",
            link.name, own.ip, own.prefix_len
        ));
    }
    out.push_str(&format!("io {}\n", driver.stats()));
    out
}

#[cfg(test)]
mod tests {
    use super::parse_addr;
    use std::net::Ipv4Addr;

    #[test]
    fn addresses_take_an_ipv4_address_and_a_prefix_length() {
        assert_eq!(
            parse_addr("192.168.1.1/24"),
            Ok((Ipv4Addr::new(192, 168, 1, 1), 24))
        );
        assert_eq!(
            parse_addr("10.0.0.1/32"),
            Ok((Ipv4Addr::new(10, 0, 0, 1), 32))
        );
        for bad in [
            "192.168.1.1",
            "192.168.1.1/33",
            "192.168.1/24",
            "fd00::1/64",
            "/24",
            "1.2.3.4/x",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }
}

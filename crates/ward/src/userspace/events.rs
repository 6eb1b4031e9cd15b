//! `ward engine --log`: the packets the engine logged (`log: true` rules, default denies) taken
//! from it at every tick of its loop and handed to the event log's writer as ECS events.

use engine::core::arp::Side;
use engine::core::engine::Engine;
use engine::core::log::{Chain, Logged};
use engine::core::packet::L4;
use nft::conntrack::{self, Endpoint, Tuple};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use telemetry::ecs::Seen;
use telemetry::EventLog;

/// What turns the engine's logged packets into events.
pub struct Events {
    log: Arc<EventLog>,
    names: Arc<dns::Names>,
    /// The LAN and WAN interfaces' names.
    ifaces: [String; 2],
    /// The wall-clock time of the engine's 0 ms.
    epoch: SystemTime,
    /// The engine's lost packets already counted as dropped events.
    lost: u64,
}

impl Events {
    /// For an engine whose clock reads `now` ms at this moment.
    pub fn new(
        log: Arc<EventLog>,
        names: Arc<dns::Names>,
        ifaces: [String; 2],
        now: u64,
    ) -> Events {
        Events {
            log,
            names,
            ifaces,
            epoch: SystemTime::now() - Duration::from_millis(now),
            lost: 0,
        }
    }

    /// Writes an event for every packet the engine logged since the last take.
    pub fn take(&mut self, engine: &mut Engine) {
        let (lost, _) = engine.log_lost();
        let counters = self.log.counters();
        counters.dropped.fetch_add(lost - self.lost, Relaxed);
        self.lost = lost;
        let held: Vec<Logged> = engine.take_logged().collect();
        for l in held {
            let rule = l.rule.and_then(|r| engine.rule_id(r));
            let name = |side: Option<Side>| {
                side.map(|s| match s {
                    Side::Lan => self.ifaces[0].as_str(),
                    Side::Wan => self.ifaces[1].as_str(),
                })
            };
            let seen = Seen {
                at: self.epoch + Duration::from_millis(l.at),
                flow: flow(&l),
                in_if: name(l.from),
                out_if: name(l.to),
                translated: l.translated.map(|(addr, port)| Endpoint {
                    addr,
                    port: matches!(l.l4, L4::Tcp { .. } | L4::Udp { .. }).then_some(port),
                }),
                domain: self.names.lookup(l.dst),
            };
            let rule = rule.unwrap_or(nft::compile::DEFAULT_DENY);
            self.log.record(rule, Chain::of(l.direction).as_str(), seen);
        }
    }
}

/// The logged packet's flow, as the kernel plane's event log reads it from NFLOG.
fn flow(l: &Logged) -> Tuple {
    let l4 = match l.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => conntrack::L4::Ports {
            src: sport,
            dst: dport,
        },
        L4::Icmp { ty, code, echo_id } => conntrack::L4::Icmp {
            ty,
            code,
            id: echo_id.unwrap_or(0),
        },
        L4::Gre { .. } | L4::Other => conntrack::L4::Other,
    };
    Tuple {
        src: l.src,
        dst: l.dst,
        protocol: l.proto,
        l4,
    }
}

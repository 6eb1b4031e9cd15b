//! The packets the event log hears of: those a `log: true` rule or a default deny decided, as
//! the kernel plane sends them to NFLOG, rate-limited per rule as its `limit` statements are.
//! They wait here, in room allocated once, until the caller takes them (`Engine::take_logged`).

use super::arp::Side;
use super::filter::{Direction, Verdict};
use super::packet::L4;
use alloc::vec::Vec;
use core::net::IpAddr;

/// Events a second each logging rule (and each chain's default deny) may make, and twice as
/// many at once: the kernel plane's `limit rate 20/second burst 40 packets`.
pub const LOG_RATE: u64 = 20;
/// Logged packets held between two takes; beyond this they are counted as lost.
pub const LOG_HELD: usize = 1024;

/// One logged packet, as the filter saw it (after destination NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The engine's clock.
    pub at: u64,
    /// The deciding rule's position in the policy; `None`: the direction's default deny.
    pub rule: Option<u32>,
    pub direction: Direction,
    pub accept: bool,
    /// The side the packet arrived on (`None`: the host stack sent it).
    pub from: Option<Side>,
    /// The side it leaves on (`None`: it is for the engine itself).
    pub to: Option<Side>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4: L4,
    /// The far side of NAT: the address and port source NAT gave the flow, or the public one
    /// a port-forward's client connected to.
    pub translated: Option<(IpAddr, u16)>,
}

/// Which token bucket a verdict draws from: its rule's, or its chain's default deny.
fn bucket(v: &Verdict, rules: usize, d: Direction) -> usize {
    match v.rule {
        Some(r) => r as usize,
        None => rules + Chain::of(d) as usize,
    }
}

/// The kernel plane's chains, each with a default deny of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Input = 0,
    Forward = 1,
    Output = 2,
}

impl Chain {
    pub fn of(d: Direction) -> Chain {
        match d {
            Direction::Input => Chain::Input,
            Direction::Ingress | Direction::Egress => Chain::Forward,
            Direction::Output => Chain::Output,
        }
    }

    /// The chain's name, as the kernel plane's default-deny log prefix gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Chain::Input => "input",
            Chain::Forward => "forward",
            Chain::Output => "output",
        }
    }
}

/// Tokens in thousandths of an event: `LOG_RATE` thousandths come back every millisecond.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: u64,
    at: u64,
}

const FULL: u64 = 2 * LOG_RATE * 1000;

impl Bucket {
    fn take(&mut self, now: u64) -> bool {
        let refill = now.saturating_sub(self.at).saturating_mul(LOG_RATE);
        self.tokens = self.tokens.saturating_add(refill).min(FULL);
        self.at = now;
        if self.tokens >= 1000 {
            self.tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Off until [`Logbook::start`]; then a bucket per rule and per chain, and the held packets.
#[derive(Default)]
pub struct Logbook {
    held: Vec<Logged>,
    buckets: Vec<Bucket>,
    on: bool,
    /// Packets not held: the room was full.
    pub lost: u64,
    /// Packets over their rule's rate, not logged (as the kernel's `limit` skips its log).
    pub limited: u64,
}

impl Logbook {
    /// Logs from now on, for a policy of `rules` rules; allocates all it will need.
    pub fn start(&mut self, rules: usize) {
        self.on = true;
        self.held = Vec::with_capacity(LOG_HELD);
        self.rules(rules);
    }

    /// A reloaded policy of `rules` rules: every bucket full again. Packets held of the old
    /// policy are lost (the caller takes them every 100 ms or so), since their rule
    /// positions would name the new policy's rules.
    pub fn rules(&mut self, rules: usize) {
        if !self.on {
            return;
        }
        self.lost += self.held.len() as u64;
        self.held.clear();
        self.buckets.clear();
        self.buckets.resize(
            rules + 3,
            Bucket {
                tokens: FULL,
                at: 0,
            },
        );
    }

    /// Holds `packet` if its verdict is logged and within its rate; its index in the held
    /// packets, for [`translated`](Logbook::translated).
    pub fn note(&mut self, v: &Verdict, rules: usize, packet: Logged) -> Option<usize> {
        if !self.on || !v.log {
            return None;
        }
        let b = self.buckets.get_mut(bucket(v, rules, packet.direction))?;
        if !b.take(packet.at) {
            self.limited += 1;
            return None;
        }
        if self.held.len() == self.held.capacity() {
            self.lost += 1;
            return None;
        }
        self.held.push(packet);
        Some(self.held.len() - 1)
    }

    /// The NAT the packet held at `at` got, once its flow is open.
    pub fn translated(&mut self, at: Option<usize>, to: (IpAddr, u16)) {
        if let Some(p) = at.and_then(|i| self.held.get_mut(i)) {
            p.translated = Some(to);
        }
    }

    /// The packets held, oldest first; the room stays for the next ones.
    pub fn take(&mut self) -> impl Iterator<Item = Logged> + '_ {
        self.held.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::filter::Action;
    use core::net::Ipv4Addr;

    fn packet(at: u64) -> Logged {
        Logged {
            at,
            rule: Some(0),
            direction: Direction::Egress,
            accept: true,
            from: Some(Side::Lan),
            to: Some(Side::Wan),
            src: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            proto: 17,
            l4: L4::Udp {
                sport: 1000,
                dport: 53,
            },
            translated: None,
        }
    }

    fn verdict(rule: Option<u32>, log: bool) -> Verdict {
        Verdict {
            rule,
            action: Action::Accept,
            log,
        }
    }

    #[test]
    fn nothing_is_held_until_started_nor_for_a_rule_that_does_not_log() {
        let mut book = Logbook::default();
        assert_eq!(book.note(&verdict(Some(0), true), 2, packet(0)), None);
        book.start(2);
        assert_eq!(book.note(&verdict(Some(1), false), 2, packet(0)), None);
        assert_eq!(book.note(&verdict(Some(0), true), 2, packet(0)), Some(0));
        assert_eq!(book.take().count(), 1);
        assert_eq!(book.take().count(), 0);
    }

    #[test]
    fn each_rule_logs_a_burst_of_forty_then_twenty_a_second() {
        let mut book = Logbook::default();
        book.start(2);
        let mut logged = |rule, at| {
            (0..100)
                .filter(|_| book.note(&verdict(rule, true), 2, packet(at)).is_some())
                .count()
        };
        assert_eq!(logged(Some(0), 0), 40);
        // Another rule, and the default deny, have their own.
        assert_eq!(logged(Some(1), 0), 40);
        assert_eq!(logged(None, 0), 40);
        assert_eq!(logged(Some(0), 500), 10);
        assert_eq!(logged(Some(0), 1500), 20);
        assert_eq!(book.limited, 3 * 60 + 90 + 80);
    }

    #[test]
    fn a_full_room_loses_packets_and_a_reload_loses_what_it_held() {
        let mut book = Logbook::default();
        book.start(LOG_HELD);
        for r in 0..LOG_HELD as u32 + 5 {
            book.note(
                &verdict(Some(r % LOG_HELD as u32), true),
                LOG_HELD,
                packet(0),
            );
        }
        assert_eq!(book.lost, 5);
        book.rules(1);
        assert_eq!(book.lost, 5 + LOG_HELD as u64);
        assert_eq!(book.take().count(), 0);
        let at = book.note(&verdict(Some(0), true), 1, packet(0));
        let to = (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 40000);
        book.translated(at, to);
        assert_eq!(book.take().next().map(|p| p.translated), Some(Some(to)));
    }
}

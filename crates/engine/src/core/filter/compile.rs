//! `policy::Policy` → [`Filter`]: for each field, the rules that allow each value (elementary
//! intervals for addresses and ports), deduplicated and encoded as aggregated bit vectors.
//! Runs once per load, off the packet path, so it allocates freely.

use super::{
    Action, AddrField, Direction, Filter, Intervals, RuleInfo, Set, Sets, ICMP, ICMPV6, TCP, UDP,
};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use ipnet::IpNet;
use policy::{Policy, Protocol, Rule};
use std::collections::HashMap;

impl From<policy::Direction> for Direction {
    fn from(d: policy::Direction) -> Direction {
        match d {
            policy::Direction::Ingress => Direction::Ingress,
            policy::Direction::Egress => Direction::Egress,
            policy::Direction::Input => Direction::Input,
            policy::Direction::Output => Direction::Output,
        }
    }
}

impl From<Direction> for policy::Direction {
    fn from(d: Direction) -> policy::Direction {
        match d {
            Direction::Ingress => policy::Direction::Ingress,
            Direction::Egress => policy::Direction::Egress,
            Direction::Input => policy::Direction::Input,
            Direction::Output => policy::Direction::Output,
        }
    }
}

impl From<policy::Action> for Action {
    fn from(a: policy::Action) -> Action {
        match a {
            policy::Action::Accept => Action::Accept,
            policy::Action::Deny => Action::Deny,
        }
    }
}

impl Filter {
    /// Compiles a validated policy. The learned table starts empty: the DNS side re-adds what
    /// it knows after a reload, as it does for the kernel's sets.
    pub fn compile(policy: &Policy) -> Filter {
        let rules = &policy.rules;
        let mut b = Builder::new(rules.len());
        let empty = b.set(rules, |_| false);
        let all = b.set(rules, |_| true);

        let direction = Direction::ALL
            .map(|d| b.set(rules, |r| policy::direction_applies(r.direction, d.into())));

        let class = |p: Protocol| match p {
            Protocol::Tcp => TCP,
            Protocol::Udp => UDP,
            Protocol::Icmp => ICMP,
            Protocol::Icmpv6 => ICMPV6,
        };
        // Ports without a protocol mean tcp or udp (SPEC §2), so such a rule is in those two
        // classes rather than in `any`; no rule is in the class of other protocols.
        let proto_any = b.set(rules, |r| {
            r.protocol.is_none() && r.destination_port.is_empty()
        });
        let proto = [0, 1, 2, 3, 4].map(|c| {
            b.set(rules, |r| match r.protocol {
                Some(p) => class(p) == c,
                None => !r.destination_port.is_empty() && (c == TCP || c == UDP),
            })
        });

        let dport_any = b.set(rules, |r| r.destination_port.is_empty());
        let dport = b.intervals(
            rules
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.destination_port.iter().map(move |p| (p.lo, p.hi, i))),
            |p: u16| p.checked_add(1),
        );

        let src = b.addr_field(rules, |r| &r.source, |r| r.source.is_empty());
        let dst = b.addr_field(
            rules,
            |r| &r.destination,
            |r| r.destination.is_empty() && r.destination_fqdn.is_empty(),
        );

        let names: BTreeSet<&String> = rules
            .iter()
            .flat_map(|r| [&r.in_interface, &r.out_interface])
            .flatten()
            .collect();
        let iface_names: Vec<String> = names.into_iter().cloned().collect();
        let in_any = b.set(rules, |r| r.in_interface.is_none());
        let out_any = b.set(rules, |r| r.out_interface.is_none());
        let in_iface = iface_names
            .iter()
            .map(|n| b.set(rules, |r| r.in_interface.as_ref() == Some(n)))
            .collect();
        let out_iface = iface_names
            .iter()
            .map(|n| b.set(rules, |r| r.out_interface.as_ref() == Some(n)))
            .collect();

        let state_any = b.set(rules, |r| r.state.is_none());
        let established = b.set(rules, |r| r.state.is_some());

        let d = &policy.defaults;
        Filter {
            rules: rules
                .iter()
                .map(|r| RuleInfo {
                    id: r.id.clone(),
                    action: r.action.into(),
                    log: r.log,
                    fqdn: !r.destination_fqdn.is_empty(),
                })
                .collect(),
            defaults: [
                d.default_action.into(),
                d.default_action.into(),
                d.input_action.into(),
                d.output_action.into(),
            ],
            sets: b.sets,
            empty,
            all,
            direction,
            src,
            dst,
            proto_any,
            proto,
            dport_any,
            dport,
            iface_names,
            in_any,
            in_iface,
            out_any,
            out_iface,
            state_any,
            established,
            learned: BTreeMap::new(),
        }
    }
}

/// Builds the set arena, storing each distinct set once.
struct Builder {
    /// Rule words per dense set.
    words: usize,
    sets: Sets,
    interned: HashMap<Vec<u64>, Set>,
}

impl Builder {
    fn new(rules: usize) -> Builder {
        let words = rules.div_ceil(64);
        Builder {
            words,
            sets: Sets {
                summary_words: words.div_ceil(64),
                arena: Vec::new(),
            },
            interned: HashMap::new(),
        }
    }

    /// The rules for which `pick` holds.
    fn set(&mut self, rules: &[Rule], pick: impl Fn(&Rule) -> bool) -> Set {
        let mut dense = vec![0u64; self.words];
        for (i, _) in rules.iter().enumerate().filter(|(_, r)| pick(r)) {
            if let Some(w) = dense.get_mut(i / 64) {
                *w |= 1 << (i % 64);
            }
        }
        self.intern(&dense)
    }

    /// Encodes a dense set (see [`Sets`]) and returns where it is, adding it if new.
    fn intern(&mut self, dense: &[u64]) -> Set {
        let s = self.sets.summary_words;
        let mut encoded = vec![0u64; 2 * s];
        let mut rank = 0;
        for (i, chunk) in dense.chunks(64).enumerate() {
            encoded[s + i] = rank;
            for (b, &w) in chunk.iter().enumerate() {
                if w != 0 {
                    encoded[i] |= 1 << b;
                    encoded.push(w);
                    rank += 1;
                }
            }
        }
        if let Some(&at) = self.interned.get(&encoded) {
            return at;
        }
        let at = self.sets.arena.len();
        self.sets.arena.extend_from_slice(&encoded);
        self.interned.insert(encoded, at);
        at
    }

    /// Elementary intervals over inclusive `(lo, hi, rule)` ranges: a sweep over the range
    /// ends, snapshotting the rules covering each interval. `next` is `v + 1`, `None` at the
    /// top of the domain. A rule may list overlapping ranges, hence a count per rule.
    fn intervals<T: Copy + Ord + Default>(
        &mut self,
        ranges: impl Iterator<Item = (T, T, usize)>,
        next: impl Fn(T) -> Option<T>,
    ) -> Intervals<T> {
        // (where, starts (else ends), rule)
        let mut events: Vec<(T, bool, usize)> = Vec::new();
        for (lo, hi, rule) in ranges {
            events.push((lo, true, rule));
            if let Some(after) = next(hi) {
                events.push((after, false, rule));
            }
        }
        events.sort_unstable();
        let mut covering = vec![0u32; self.words * 64];
        let mut dense = vec![0u64; self.words];
        let empty = self.intern(&dense);
        let mut out = Intervals {
            starts: vec![T::default()],
            sets: vec![empty],
        };
        for group in events.chunk_by(|a, b| a.0 == b.0) {
            for &(_, starts, rule) in group {
                let (Some(count), Some(word)) = (covering.get_mut(rule), dense.get_mut(rule / 64))
                else {
                    continue;
                };
                let bit = 1u64 << (rule % 64);
                if starts {
                    *count += 1;
                    *word |= bit;
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        *word &= !bit;
                    }
                }
            }
            let at = group[0].0;
            let set = self.intern(&dense);
            if at == T::default() {
                out.sets[0] = set;
            } else if out.sets.last() != Some(&set) {
                out.starts.push(at);
                out.sets.push(set);
            }
        }
        out
    }

    fn addr_field(
        &mut self,
        rules: &[Rule],
        nets: impl Fn(&Rule) -> &[IpNet],
        any: impl Fn(&Rule) -> bool,
    ) -> AddrField {
        let any = self.set(rules, any);
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, r) in rules.iter().enumerate() {
            for net in nets(r) {
                match net {
                    IpNet::V4(n) => v4.push((n.network().into(), n.broadcast().into(), i)),
                    IpNet::V6(n) => v6.push((n.network().into(), n.broadcast().into(), i)),
                }
            }
        }
        AddrField {
            any,
            v4: self.intervals(v4.into_iter(), |a: u32| a.checked_add(1)),
            v6: self.intervals(v6.into_iter(), |a: u128| a.checked_add(1)),
        }
    }
}

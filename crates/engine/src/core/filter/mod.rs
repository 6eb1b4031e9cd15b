//! The policy as a bit-vector classifier: which rule decides a new flow, at a cost that does
//! not grow with the number of rules, with the same answers as `policy::explain` (SPEC §3).
//!
//! Each field (direction, source, destination, protocol, destination port, input and output
//! interface, state) maps the packet's value to the set of rules that allow it: a small array
//! for small domains, a binary search over elementary intervals for addresses and ports. A rule
//! that leaves a field out is in that field's `any` set instead of in every value's set, so
//! wildcards cost no memory per value. The deciding rule is the first bit set in the AND, over
//! all fields, of `any | value`: the first match in policy order.
//!
//! Sets are aggregated bit vectors (Baboescu and Varghese, "Scalable packet classification",
//! SIGCOMM 2001): a summary bit per 64-rule word says whether the word has any bit set, and
//! only non-zero words are stored. The summaries are ANDed first, so only words that can hold a
//! match are read, and a set costs memory in proportion to the rules in it. No maintained crate
//! offers a first-match multi-field classifier over such sets, hence this module.
//!
//! `destination_fqdn` rules match no address until one is learned for them ([`Filter::learn`],
//! fed by the DNS side); classification consults those rules through the learned table.
//!
//! [`Filter::classify`] is `no_std`, allocation-free and panic-free; [`Filter::compile`] (the
//! `std` feature) builds a filter from a `policy::Policy`.

#[cfg(feature = "std")]
mod compile;

use super::DropReason;
use ::core::net::IpAddr;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
    Input,
    Output,
}

impl Direction {
    pub const ALL: [Direction; 4] = [
        Direction::Ingress,
        Direction::Egress,
        Direction::Input,
        Direction::Output,
    ];

    fn index(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
            Direction::Input => 2,
            Direction::Output => 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Deny,
}

/// An interface as the filter knows it: one that some rule names, or [`IfaceId::UNLISTED`].
/// Resolve names once with [`Filter::iface`] (again after each recompile), not per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfaceId(pub u32);

impl IfaceId {
    /// No interface (input traffic has no output interface, output traffic no input one), or
    /// one no rule names: rules only ever ask for a named interface, so the two are alike.
    pub const UNLISTED: IfaceId = IfaceId(u32::MAX);
}

/// What the filter looks at in a packet that starts a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub direction: Direction,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// TCP and UDP only: `None` for every other protocol.
    pub dport: Option<u16>,
    pub in_iface: IfaceId,
    pub out_iface: IfaceId,
    /// Part of an already accepted flow (what `state: established` asks for).
    pub established: bool,
}

/// The decision for one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The deciding rule's position in the policy; `None` when the direction's default decided.
    pub rule: Option<u32>,
    pub action: Action,
    /// To be logged: a `log: true` rule, or a default deny (as the kernel data plane logs).
    pub log: bool,
}

impl Verdict {
    pub fn drop_reason(&self) -> Option<DropReason> {
        match (self.action, self.rule) {
            (Action::Accept, _) => None,
            (Action::Deny, Some(_)) => Some(DropReason::ExplicitDeny),
            (Action::Deny, None) => Some(DropReason::NoMatchingAllowRule),
        }
    }
}

/// What the verdict needs to know about a rule besides its matches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RuleInfo {
    id: String,
    action: Action,
    log: bool,
    /// A `destination_fqdn` rule: its destinations are the learned addresses.
    fqdn: bool,
}

/// Offset of one set in [`Sets::arena`].
type Set = usize;

/// Every set of a filter, encoded one after another in a single arena: `summary_words`
/// summary words (bit `b` of word `i`: rule word `64 * i + b` is not zero), as many words of
/// rank (non-zero rule words before summary word `i`), then the non-zero rule words in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sets {
    summary_words: usize,
    arena: Vec<u64>,
}

impl Sets {
    fn at(&self, i: usize) -> u64 {
        self.arena.get(i).copied().unwrap_or(0)
    }

    fn summary(&self, set: Set, i: usize) -> u64 {
        self.at(set + i)
    }

    /// Summary words `from .. from + len` of `set` (shorter only if the arena is broken).
    fn summaries(&self, set: Set, from: usize, len: usize) -> &[u64] {
        let start = set + from;
        self.arena
            .get(start..start + len)
            .or_else(|| self.arena.get(start..))
            .unwrap_or(&[])
    }

    /// Rule word `j` of `set` (rules `64 * j .. 64 * j + 63`).
    fn word(&self, set: Set, j: usize) -> u64 {
        let (i, bit) = (j / 64, j % 64);
        let summary = self.summary(set, i);
        if summary >> bit & 1 == 0 {
            return 0;
        }
        let before = (summary & ((1u64 << bit) - 1)).count_ones() as usize;
        let rank = self.at(set + self.summary_words + i) as usize + before;
        self.at(set + 2 * self.summary_words + rank)
    }

    fn contains(&self, set: Set, rule: u32) -> bool {
        let rule = rule as usize;
        self.word(set, rule / 64) >> (rule % 64) & 1 == 1
    }
}

/// Elementary intervals of one address family (or of ports): `starts` ascending from 0, and
/// `sets[i]` the rules that allow every value from `starts[i]` up to the next start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Intervals<T> {
    starts: Vec<T>,
    sets: Vec<Set>,
}

impl<T: Copy + Ord> Intervals<T> {
    fn lookup(&self, value: T, empty: Set) -> Set {
        let after = self.starts.partition_point(|s| *s <= value);
        after
            .checked_sub(1)
            .and_then(|i| self.sets.get(i))
            .copied()
            .unwrap_or(empty)
    }
}

/// An address field: rules that set no address are in `any`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AddrField {
    any: Set,
    v4: Intervals<u32>,
    v6: Intervals<u128>,
}

impl AddrField {
    fn lookup(&self, addr: IpAddr, empty: Set) -> (Set, Set) {
        let value = match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a), empty),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a), empty),
        };
        (self.any, value)
    }
}

/// Protocol classes: the rules name only these, every other protocol is `OTHER`.
const TCP: usize = 0;
const UDP: usize = 1;
const ICMP: usize = 2;
const ICMPV6: usize = 3;
const OTHER: usize = 4;

fn proto_class(proto: u8) -> usize {
    use super::packet::proto;
    match proto {
        proto::TCP => TCP,
        proto::UDP => UDP,
        proto::ICMP => ICMP,
        proto::ICMPV6 => ICMPV6,
        _ => OTHER,
    }
}

/// Summary words ANDed at a time. 32 of them cover 131,072 rules, more than a policy may
/// have (100,000), so in practice the summaries are read in full and classification costs
/// the same wherever the deciding rule stands. Unit tests use blocks of one word, so that
/// policies of a few thousand rules take the path between blocks too.
const SUMMARY_BLOCK: usize = if cfg!(test) { 1 } else { 32 };

/// The fields, in the order [`Filter::select`] lists them.
const FIELDS: usize = 8;
/// Where the destination stands in that order: learned addresses stand in for it.
const DST: usize = 2;

/// A compiled policy: the classifier, the defaults, and the addresses learned for
/// `destination_fqdn` rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    rules: Vec<RuleInfo>,
    /// Indexed by [`Direction::index`].
    defaults: [Action; 4],
    sets: Sets,
    /// The set with no rule in it.
    empty: Set,
    /// The set with every rule in it.
    all: Set,
    /// By direction; no rule leaves the direction out (omitted means ingress or egress).
    direction: [Set; 4],
    src: AddrField,
    dst: AddrField,
    proto_any: Set,
    /// By protocol class.
    proto: [Set; 5],
    dport_any: Set,
    dport: Intervals<u16>,
    /// Every interface name a rule mentions, sorted: an [`IfaceId`] indexes it.
    iface_names: Vec<String>,
    in_any: Set,
    /// By [`IfaceId`].
    in_iface: Vec<Set>,
    out_any: Set,
    out_iface: Vec<Set>,
    state_any: Set,
    /// Rules with `state: established`.
    established: Set,
    /// Destination address → the `destination_fqdn` rules it was learned for, and until when.
    learned: BTreeMap<IpAddr, Vec<Learned>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Learned {
    rule: u32,
    /// On the caller's clock; the entry matches while `now < expires`.
    expires: u64,
}

impl Filter {
    /// Which rule decides a flow with this key, or the direction's default. `now` is the
    /// caller's clock, the one [`Filter::learn`] was given expiry times on (the engine uses
    /// milliseconds, as for the connection table).
    pub fn classify(&self, key: &FlowKey, now: u64) -> Verdict {
        let fields = self.select(key);
        // A field whose `any` or value set holds every rule rules nothing out; sets are
        // stored once each, so such a set is `self.all` itself. Typical policies leave most
        // fields out of most rules, so this skips most of the work.
        let mut narrowing = [(self.empty, self.empty); FIELDS];
        let mut n = 0;
        for &(any, value) in &fields {
            if any != self.all && value != self.all {
                if let Some(slot) = narrowing.get_mut(n) {
                    *slot = (any, value);
                    n += 1;
                }
            }
        }
        let mut decider = self.first_match(narrowing.get(..n).unwrap_or(&[]));
        if !self.learned.is_empty() {
            if let Some(learned) = self.learned.get(&key.dst) {
                for l in learned {
                    let earlier = decider.is_none_or(|d| l.rule < d);
                    if earlier && now < l.expires && self.matches_besides_dst(&fields, l.rule) {
                        decider = Some(l.rule);
                    }
                }
            }
        }
        self.verdict(decider, key.direction)
    }

    /// For each field, the rules that leave it out and the rules that allow the key's value.
    fn select(&self, key: &FlowKey) -> [(Set, Set); FIELDS] {
        let e = self.empty;
        let proto = proto_class(key.proto);
        let dport = match key.dport {
            // A port the packet has; a rule's ports imply tcp or udp, which the protocol
            // field already checks.
            Some(p) => self.dport.lookup(p, e),
            None => e,
        };
        let iface = |sets: &[Set], id: IfaceId| sets.get(id.0 as usize).copied().unwrap_or(e);
        [
            (e, self.direction[key.direction.index()]),
            self.src.lookup(key.src, e),
            self.dst.lookup(key.dst, e),
            (self.proto_any, self.proto.get(proto).copied().unwrap_or(e)),
            (self.dport_any, dport),
            (self.in_any, iface(&self.in_iface, key.in_iface)),
            (self.out_any, iface(&self.out_iface, key.out_iface)),
            (
                self.state_any,
                if key.established { self.established } else { e },
            ),
        ]
    }

    /// The first rule in every field's `any | value`; the first rule of all for no field.
    fn first_match(&self, fields: &[(Set, Set)]) -> Option<u32> {
        let s = &self.sets;
        let mut block = 0;
        while block < s.summary_words {
            let len = (s.summary_words - block).min(SUMMARY_BLOCK);
            // Field by field over the whole block: each set's summaries are read in one run,
            // and the cost does not depend on where the deciding rule stands.
            let mut candidates = [!0u64; SUMMARY_BLOCK];
            for &(any, value) in fields {
                let (any, value) = (s.summaries(any, block, len), s.summaries(value, block, len));
                for (k, c) in candidates.iter_mut().take(len).enumerate() {
                    *c &= any.get(k).copied().unwrap_or(0) | value.get(k).copied().unwrap_or(0);
                }
            }
            for (k, &summary) in candidates.iter().take(len).enumerate() {
                // A candidate word may still AND to zero across fields; the next one is tried.
                let mut summary = summary;
                while summary != 0 {
                    let j = (block + k) * 64 + summary.trailing_zeros() as usize;
                    let mut word = !0u64;
                    for &(any, value) in fields {
                        word &= s.word(any, j) | s.word(value, j);
                    }
                    if word != 0 {
                        return u32::try_from(j * 64 + word.trailing_zeros() as usize).ok();
                    }
                    summary &= summary - 1;
                }
            }
            block += len;
        }
        None
    }

    fn matches_besides_dst(&self, fields: &[(Set, Set); FIELDS], rule: u32) -> bool {
        let s = &self.sets;
        fields
            .iter()
            .enumerate()
            .all(|(f, &(any, value))| f == DST || s.contains(any, rule) || s.contains(value, rule))
    }

    fn verdict(&self, rule: Option<u32>, direction: Direction) -> Verdict {
        if let Some(info) = rule.and_then(|r| self.rules.get(r as usize)) {
            return Verdict {
                rule,
                action: info.action,
                log: info.log,
            };
        }
        let action = self.defaults[direction.index()];
        Verdict {
            rule: None,
            action,
            log: action == Action::Deny,
        }
    }

    /// The interface's id for [`FlowKey`]; [`IfaceId::UNLISTED`] when no rule names it.
    pub fn iface(&self, name: &str) -> IfaceId {
        match self.iface_names.binary_search_by(|n| n.as_str().cmp(name)) {
            Ok(i) => u32::try_from(i).map_or(IfaceId::UNLISTED, IfaceId),
            Err(_) => IfaceId::UNLISTED,
        }
    }

    /// The id the verdict reports under: the rule's, or `default-deny` / `default-accept`.
    pub fn rule_id(&self, verdict: &Verdict) -> &str {
        match verdict.rule.and_then(|r| self.rules.get(r as usize)) {
            Some(info) => &info.id,
            None => match verdict.action {
                Action::Accept => "default-accept",
                Action::Deny => "default-deny",
            },
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The id and action of the rule at position `rule` in the policy, for reporting its
    /// counters; `None` past the last rule.
    pub fn rule(&self, rule: u32) -> Option<(&str, Action)> {
        self.rules
            .get(rule as usize)
            .map(|r| (r.id.as_str(), r.action))
    }

    /// Allows `addr` for the `destination_fqdn` rule at position `rule` while `now < expires`;
    /// a repeat sets the new expiry. Returns false, changing nothing, when that rule is not a
    /// `destination_fqdn` rule.
    pub fn learn(&mut self, rule: u32, addr: IpAddr, expires: u64) -> bool {
        if !self.rules.get(rule as usize).is_some_and(|r| r.fqdn) {
            return false;
        }
        let learned = self.learned.entry(addr).or_default();
        match learned.iter_mut().find(|l| l.rule == rule) {
            Some(l) => l.expires = expires,
            None => learned.push(Learned { rule, expires }),
        }
        true
    }

    /// Stops allowing `addr` for `rule`; forgetting what is not there is not an error (the
    /// entry may have expired already).
    pub fn forget(&mut self, rule: u32, addr: IpAddr) {
        if let Some(learned) = self.learned.get_mut(&addr) {
            learned.retain(|l| l.rule != rule);
            if learned.is_empty() {
                self.learned.remove(&addr);
            }
        }
    }

    /// Drops every learned entry that has expired by `now` (classification already ignores
    /// them; this returns their memory) and says how many there were.
    pub fn expire_learned(&mut self, now: u64) -> usize {
        let mut removed = 0;
        self.learned.retain(|_, learned| {
            let before = learned.len();
            learned.retain(|l| now < l.expires);
            removed += before - learned.len();
            !learned.is_empty()
        });
        removed
    }

    /// Learned (rule, address) entries held, expired ones not yet dropped included.
    pub fn learned_len(&self) -> usize {
        self.learned.values().map(Vec::len).sum()
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use ::core::net::Ipv4Addr;
    use std::string::ToString;

    fn policy(yaml: &str) -> policy::Policy {
        match policy::parse_str(yaml, "test.yaml") {
            Ok(c) => c.policy,
            Err(e) => panic!("{e}"),
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn key(direction: Direction, dst: IpAddr, proto: u8, dport: Option<u16>) -> FlowKey {
        FlowKey {
            direction,
            src: v4(192, 168, 1, 10),
            dst,
            proto,
            dport,
            in_iface: IfaceId::UNLISTED,
            out_iface: IfaceId::UNLISTED,
            established: false,
        }
    }

    const POLICY: &str = "
defaults: {default_action: deny, input_action: accept, output_action: deny}
rules:
  - {id: web, action: accept, direction: egress, destination_fqdn: [example.com], destination_port: 443}
  - {id: deny-tcp, action: deny, destination: 203.0.113.0/24, protocol: tcp}
  - {id: any-proto, action: accept, destination: 203.0.113.0/24, log: true}
  - {id: ports-only, action: accept, destination_port: 53}
";

    #[test]
    fn protocols_no_rule_names_match_only_protocol_free_rules() {
        let f = Filter::compile(&policy(POLICY));
        let dst = v4(203, 0, 113, 9);
        // GRE: not tcp (rule 1), and without ports (rule 3 asks for tcp or udp).
        let v = f.classify(&key(Direction::Egress, dst, 47, None), 0);
        assert_eq!((v.rule, v.action, v.log), (Some(2), Action::Accept, true));
        assert_eq!(f.rule_id(&v), "any-proto");
        let v = f.classify(&key(Direction::Egress, dst, 6, Some(80)), 0);
        assert_eq!(
            (v.rule, v.drop_reason()),
            (Some(1), Some(DropReason::ExplicitDeny))
        );
        let v = f.classify(&key(Direction::Egress, v4(8, 8, 8, 8), 47, None), 0);
        assert_eq!(v.rule, None);
    }

    #[test]
    fn defaults_by_direction() {
        let f = Filter::compile(&policy(POLICY));
        let nowhere = v4(8, 8, 8, 8);
        for (direction, action) in [
            (Direction::Ingress, Action::Deny),
            (Direction::Egress, Action::Deny),
            (Direction::Input, Action::Accept),
            (Direction::Output, Action::Deny),
        ] {
            let v = f.classify(&key(direction, nowhere, 1, None), 0);
            assert_eq!((v.rule, v.action), (None, action), "{direction:?}");
            assert_eq!(v.log, action == Action::Deny);
        }
        let v = f.classify(&key(Direction::Egress, nowhere, 1, None), 0);
        assert_eq!(f.rule_id(&v), "default-deny");
        assert_eq!(v.drop_reason(), Some(DropReason::NoMatchingAllowRule));
        let v = f.classify(&key(Direction::Input, nowhere, 1, None), 0);
        assert_eq!((f.rule_id(&v), v.drop_reason()), ("default-accept", None));
    }

    #[test]
    fn learned_addresses_match_until_they_expire_or_are_forgotten() {
        let mut f = Filter::compile(&policy(POLICY));
        let dst = v4(203, 0, 113, 9);
        let https = key(Direction::Egress, dst, 6, Some(443));
        assert_eq!(f.classify(&https, 0).rule, Some(1));

        // Rule 1 is not a destination_fqdn rule: nothing to learn for it.
        assert!(!f.learn(1, dst, 100));
        assert!(f.learn(0, dst, 100));
        assert_eq!(f.classify(&https, 99).rule, Some(0));
        assert_eq!(f.classify(&https, 100).rule, Some(1), "expired");
        // The other fields of the rule still count.
        let http = key(Direction::Egress, dst, 6, Some(80));
        assert_eq!(f.classify(&http, 0).rule, Some(1));
        let ingress = key(Direction::Ingress, dst, 6, Some(443));
        assert_eq!(f.classify(&ingress, 0).rule, Some(1));

        // A repeat extends; forgetting ends it.
        assert!(f.learn(0, dst, 200));
        assert_eq!(f.classify(&https, 150).rule, Some(0));
        f.forget(0, dst);
        assert_eq!(f.classify(&https, 150).rule, Some(1));
        f.forget(0, dst);
        assert_eq!(f.learned_len(), 0);

        assert!(f.learn(0, dst, 10));
        assert!(f.learn(0, v4(1, 1, 1, 1), 20));
        assert_eq!(f.expire_learned(10), 1);
        assert_eq!(f.learned_len(), 1);
        assert_eq!(f.expire_learned(20), 1);
        assert_eq!(f.learned_len(), 0);
    }

    #[test]
    fn interfaces_resolve_to_ids_once() {
        let f = Filter::compile(&policy(
            "rules:\n  - {id: a, action: accept, in_interface: eth1, out_interface: eth0}\n",
        ));
        assert_eq!(f.iface("eth0"), IfaceId(0));
        assert_eq!(f.iface("eth1"), IfaceId(1));
        assert_eq!(f.iface("eth2"), IfaceId::UNLISTED);
        let mut k = key(Direction::Egress, v4(8, 8, 8, 8), 6, Some(1));
        assert_eq!(f.classify(&k, 0).rule, None);
        k.in_iface = f.iface("eth1");
        k.out_iface = f.iface("eth0");
        assert_eq!(f.classify(&k, 0).rule, Some(0));
        k.out_iface = f.iface("eth1");
        assert_eq!(f.classify(&k, 0).rule, None);
    }

    #[test]
    fn deciders_in_later_blocks_of_summaries() {
        // 4,200 rules: two summary words, so two blocks here (see SUMMARY_BLOCK).
        let template =
            policy("rules:\n  - {id: t, action: accept, protocol: tcp, destination_port: 443}\n")
                .rules
                .remove(0);
        let host = |i: u32| v4(10, 0, (i >> 8) as u8, i as u8);
        let mut p = policy("rules: []\n");
        p.rules = (0..4200)
            .map(|i| {
                let mut r = template.clone();
                r.id = std::format!("r{i}");
                r.source = std::vec![host(i).into()];
                r
            })
            .collect();
        let f = Filter::compile(&p);
        for i in (0..4200).step_by(97).chain([4095, 4096, 4199]) {
            let mut k = key(Direction::Egress, v4(8, 8, 8, 8), 6, Some(443));
            k.src = host(i);
            let probe = policy::Probe::new(
                k.src,
                policy::Target::Ip(k.dst),
                policy::Protocol::Tcp,
                Some(443),
                policy::Direction::Egress,
            );
            let want = policy::explain(&p, &probe).verdict.rule_index;
            assert_eq!(want, Some(i as usize));
            assert_eq!(f.classify(&k, 0).rule, Some(i));
        }
        let mut k = key(Direction::Egress, v4(8, 8, 8, 8), 6, Some(443));
        k.src = host(4200);
        assert_eq!(f.classify(&k, 0).rule, None);
    }

    #[test]
    fn an_empty_policy_has_only_defaults() {
        let f = Filter::compile(&policy("rules: []\n"));
        assert_eq!(f.rule_count(), 0);
        let v = f.classify(&key(Direction::Output, v4(1, 2, 3, 4), 17, Some(53)), 0);
        assert_eq!((v.rule, v.action), (None, Action::Accept));
        assert_eq!(f.rule_id(&v), "default-accept".to_string());
        assert_eq!(f.rule(0), None);
    }

    #[test]
    fn rules_are_reported_by_position() {
        let f = Filter::compile(&policy(POLICY));
        assert_eq!(f.rule(0), Some(("web", Action::Accept)));
        assert_eq!(f.rule(1), Some(("deny-tcp", Action::Deny)));
        assert_eq!(f.rule(3), Some(("ports-only", Action::Accept)));
        assert_eq!(f.rule(4), None);
    }
}

//! The learned-address cache: which (rule, address) pairs DNS answers have allowed and until
//! when, bounded by `capacity` and `max_ips_per_name`, and the set updates each answer implies.

use crate::matcher::{normalize, same_name, Matcher, RuleIdx};
use policy::DnsSettings;
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

/// CNAMEs followed from the query name before an answer is given up on (as too long to be real).
pub const MAX_CNAME_HOPS: usize = 16;

/// One DNS answer, reduced to what the cache needs. Names are as they came off the wire
/// (any case, trailing dot or not); records of other types are left out by the parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The name the client asked for.
    pub qname: String,
    /// The answer section, in message order.
    pub records: Vec<Record>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Cname {
        owner: String,
        target: String,
        ttl: u32,
    },
    /// An A or AAAA record.
    Addr {
        owner: String,
        addr: IpAddr,
        ttl: u32,
    },
}

/// A change the data plane must make to a rule's learned addresses. Apply a batch in order, all
/// in one transaction: a batch may add an address and, if `capacity` is tiny, remove it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Allow `addr` for `rule` for `ttl` from now (whole seconds); a repeat sets a fresh timeout.
    Add {
        rule: RuleIdx,
        addr: IpAddr,
        ttl: Duration,
    },
    /// Stop allowing `addr` for `rule` (evicted). The element may already have timed out in the
    /// data plane, so removing an absent element must not be an error.
    Remove { rule: RuleIdx, addr: IpAddr },
}

/// End of a linked list.
const NIL: u32 = u32::MAX;

/// One learned (rule, address). 56 bytes: a million of them fit the proxy's memory budget with
/// the index beside them.
#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: IpAddr,
    rule: u32,
    /// Whole seconds on the caller's clock, rounded down: the cache may forget an entry up to a
    /// second before the data plane's timeout fires, never after, so a forgotten entry is gone.
    expires: u32,
    /// Keyed hash of (chain-end name that last taught it, rule): its `max_ips_per_name` group.
    /// A hash, not the name, so that a million one-address names cost no strings; two names
    /// colliding (about 1e-8 at a million names, and not steerable without the random key)
    /// would only share a quota.
    group: u64,
    /// Neighbours in the whole cache's order, least recently learned first.
    older: u32,
    newer: u32,
    /// Neighbours within the entry's (name, rule) group, same order.
    group_older: u32,
    group_newer: u32,
    /// False for a slot on the free list.
    live: bool,
}

/// Ends and size of one (name, rule) list.
#[derive(Clone, Copy, Debug)]
struct Group {
    oldest: u32,
    newest: u32,
    len: u32,
}

/// The learned addresses of every name rule. Time is the caller's monotonic clock in
/// milliseconds (any origin), passed to each call, so that behaviour is reproducible.
///
/// Two bounds, both evicting the least recently learned or refreshed entry first and reporting
/// it as [`Update::Remove`]:
/// - `capacity`: (rule, address) entries in total.
/// - `max_ips_per_name`: addresses one name holds in one rule's set. The name is the end of the
///   CNAME chain (the owner of the A/AAAA records); an entry belongs to the name whose answer
///   learned or last refreshed it. A single answer contributes at most this many addresses, its
///   first ones, so that it never evicts itself.
///
/// Expired entries are dropped silently: the data plane's own timeout has already removed them.
#[derive(Debug)]
pub struct Cache {
    min_ttl: u32,
    max_ttl: u32,
    max_per_name: u32,
    capacity: u32,
    /// Indexed only by slot numbers from this cache's own index and links, never by anything
    /// from an answer: an out-of-range index would be a bug here, not hostile input.
    slots: Vec<Entry>,
    free: Vec<u32>,
    live: u32,
    /// Ends of the whole cache's order.
    oldest: u32,
    newest: u32,
    /// Keyed SipHash, not Fx: addresses and names come from answers an attacker may author
    /// (any name under a `.example.com` rule), and must not be able to pick colliding keys.
    index: HashMap<(u32, IpAddr), u32, RandomState>,
    /// Fx is enough here: the keys are already keyed SipHash values.
    groups: FxHashMap<u64, Group>,
    group_keys: RandomState,
    /// (expires, slot), earliest first. A refresh pushes a new item instead of moving the old
    /// one; an item whose slot no longer has that expiry is stale and skipped.
    expiry: BinaryHeap<Reverse<(u32, u32)>>,
    evictions: Evictions,
}

/// Entries the cache has let go since it was made, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Their TTL ran out (the kernel's element timed out on its own at the same time).
    pub ttl_expired: u64,
    /// Pushed out by newer ones: the cache's `capacity` or the name's `max_ips_per_name`.
    pub capacity_pressure: u64,
}

impl Cache {
    /// An empty cache with `dns`'s TTL clamp and bounds. The validator keeps every value
    /// positive and `min_ttl <= max_ttl`; other values do not panic (a zero bound keeps nothing).
    pub fn new(dns: &DnsSettings) -> Cache {
        Cache {
            min_ttl: dns.min_ttl,
            max_ttl: dns.max_ttl,
            max_per_name: dns.max_ips_per_name,
            // The slot numbers must stay clear of NIL.
            capacity: dns.capacity.min(NIL - 1),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            oldest: NIL,
            newest: NIL,
            index: HashMap::default(),
            groups: FxHashMap::default(),
            group_keys: RandomState::new(),
            expiry: BinaryHeap::new(),
            evictions: Evictions::default(),
        }
    }

    /// Learned entries, including any that expired since the last `learn` / `expire`.
    pub fn len(&self) -> usize {
        self.live as usize
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// When the entry for (`rule`, `addr`) expires, in the caller's milliseconds (a whole
    /// second), if it is cached.
    pub fn expires_at(&self, rule: RuleIdx, addr: IpAddr) -> Option<u64> {
        let slot = *self.index.get(&(rule.0, addr))?;
        Some(u64::from(self.slots[slot as usize].expires) * 1000)
    }

    /// Every unexpired entry as an [`Update::Add`] with its remaining time, oldest first: what a
    /// data plane that lost its sets (a whole-table replace, an engine restart) must be given.
    pub fn entries(&self, now_ms: u64) -> impl Iterator<Item = Update> + '_ {
        let mut slot = self.oldest;
        std::iter::from_fn(move || {
            while slot != NIL {
                let e = &self.slots[slot as usize];
                slot = e.newer;
                let left = (u64::from(e.expires) * 1000).saturating_sub(now_ms);
                if left > 0 {
                    return Some(Update::Add {
                        rule: RuleIdx(e.rule),
                        addr: e.addr,
                        ttl: Duration::from_secs(left.div_ceil(1000)),
                    });
                }
            }
            None
        })
    }

    /// Drops the entry for (`rule`, `addr`) without an update: for an add the data plane
    /// refused, so that the cache does not count what was never allowed.
    pub fn forget(&mut self, rule: RuleIdx, addr: IpAddr) {
        if let Some(&slot) = self.index.get(&(rule.0, addr)) {
            self.evict(slot, None);
        }
    }

    /// Drops every entry that has expired by `now_ms`, without updates.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&Reverse((expires, slot))) = self.expiry.peek() {
            if u64::from(expires) * 1000 > now_ms {
                break;
            }
            self.expiry.pop();
            let e = &self.slots[slot as usize];
            if e.live && e.expires == expires {
                self.evict(slot, None);
                self.evictions.ttl_expired += 1;
            }
        }
    }

    /// Records what `answer` teaches and returns the updates the data plane must commit before
    /// the answer is released. The CNAME chain is followed from the query name; the rules are
    /// those matching any name on it; the addresses are those owned by its last name, each with
    /// the smallest TTL along the chain, clamped to `min_ttl..=max_ttl`. Records about names
    /// off the chain are ignored, so an answer cannot vouch for an unrelated name. An answer
    /// whose chain loops or runs past [`MAX_CNAME_HOPS`] has no end and teaches nothing.
    pub fn learn(&mut self, now_ms: u64, answer: &Answer, matcher: &Matcher) -> Vec<Update> {
        let mut updates = Vec::new();
        self.expire(now_ms);
        let Some(chain) = Chain::follow(answer) else {
            return updates;
        };
        let mut rules = Vec::new();
        for name in &chain.names {
            matcher.extend_rules_for(name, &mut rules);
        }
        if rules.is_empty() {
            return updates;
        }
        rules.sort_unstable();
        rules.dedup();

        let end: &str = chain.end();
        let addrs = addresses(answer, end, self.max_per_name);
        if addrs.is_empty() {
            return updates;
        }
        for &rule in &rules {
            let group = self.group_keys.hash_one((end, rule.0));
            for &(addr, ttl) in &addrs {
                let ttl = ttl.min(chain.ttl).max(self.min_ttl).min(self.max_ttl);
                self.upsert(now_ms, rule, addr, ttl, group, &mut updates);
            }
        }
        updates
    }

    /// Inserts or refreshes one entry as the newest of the cache and of its name's group, then
    /// enforces both bounds.
    fn upsert(
        &mut self,
        now_ms: u64,
        rule: RuleIdx,
        addr: IpAddr,
        ttl: u32,
        group: u64,
        updates: &mut Vec<Update>,
    ) {
        let expires = expiry_secs(now_ms, ttl);
        let slot = match self.index.get(&(rule.0, addr)) {
            Some(&slot) => {
                self.unlink(slot);
                self.unlink_group(slot);
                let e = &mut self.slots[slot as usize];
                // Never shorten: a client that got the earlier answer may still be using it.
                let kept = e.expires.max(expires);
                let left = (u64::from(kept) * 1000).saturating_sub(now_ms);
                let ttl = u64::from(ttl).max(left.div_ceil(1000));
                updates.push(Update::Add {
                    rule,
                    addr,
                    ttl: Duration::from_secs(ttl),
                });
                if kept != e.expires {
                    e.expires = kept;
                    self.expiry.push(Reverse((kept, slot)));
                }
                e.group = group;
                slot
            }
            None => {
                updates.push(Update::Add {
                    rule,
                    addr,
                    ttl: Duration::from_secs(u64::from(ttl)),
                });
                let entry = Entry {
                    addr,
                    rule: rule.0,
                    expires,
                    group,
                    older: NIL,
                    newer: NIL,
                    group_older: NIL,
                    group_newer: NIL,
                    live: true,
                };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = entry;
                        slot
                    }
                    None => {
                        // Bounded by capacity + 1 (the newcomer before eviction), below NIL.
                        let slot = self.slots.len() as u32;
                        self.slots.push(entry);
                        slot
                    }
                };
                self.index.insert((rule.0, addr), slot);
                self.expiry.push(Reverse((expires, slot)));
                self.live += 1;
                slot
            }
        };
        self.push_newest(slot);
        let group = self.push_group(slot);
        if group.len > self.max_per_name {
            self.evict(group.oldest, Some(updates));
            self.evictions.capacity_pressure += 1;
        }
        while self.live > self.capacity {
            self.evict(self.oldest, Some(updates));
            self.evictions.capacity_pressure += 1;
        }
        self.compact_expiry();
    }

    /// Forgets one entry; with `updates`, tells the data plane to delete it too.
    fn evict(&mut self, slot: u32, updates: Option<&mut Vec<Update>>) {
        if slot == NIL {
            return;
        }
        self.unlink(slot);
        self.unlink_group(slot);
        let e = &mut self.slots[slot as usize];
        e.live = false;
        self.index.remove(&(e.rule, e.addr));
        if let Some(updates) = updates {
            updates.push(Update::Remove {
                rule: RuleIdx(e.rule),
                addr: e.addr,
            });
        }
        self.free.push(slot);
        self.live -= 1;
    }

    /// Refreshes leave stale heap items behind; rebuild once they outnumber the live ones, so
    /// the heap stays within twice the entries (amortised O(1) per refresh).
    fn compact_expiry(&mut self) {
        if self.expiry.len() <= 2 * self.live as usize + 1024 {
            return;
        }
        let items: Vec<_> = self
            .slots
            .iter()
            .zip(0u32..)
            .filter(|(e, _)| e.live)
            .map(|(e, slot)| Reverse((e.expires, slot)))
            .collect();
        self.expiry = BinaryHeap::from(items);
    }

    fn push_newest(&mut self, slot: u32) {
        let old_newest = self.newest;
        {
            let e = &mut self.slots[slot as usize];
            e.older = old_newest;
            e.newer = NIL;
        }
        match old_newest {
            NIL => self.oldest = slot,
            n => self.slots[n as usize].newer = slot,
        }
        self.newest = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Entry { older, newer, .. } = self.slots[slot as usize];
        match older {
            NIL => self.oldest = newer,
            o => self.slots[o as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slots[n as usize].older = older,
        }
    }

    /// Appends `slot` to its (name, rule) group; returns the group as it is now.
    fn push_group(&mut self, slot: u32) -> Group {
        let key = self.slots[slot as usize].group;
        let group = self.groups.entry(key).or_insert(Group {
            oldest: NIL,
            newest: NIL,
            len: 0,
        });
        let old_newest = group.newest;
        group.newest = slot;
        if old_newest == NIL {
            group.oldest = slot;
        }
        group.len += 1;
        let group = *group;
        {
            let e = &mut self.slots[slot as usize];
            e.group_older = old_newest;
            e.group_newer = NIL;
        }
        if old_newest != NIL {
            self.slots[old_newest as usize].group_newer = slot;
        }
        group
    }

    fn unlink_group(&mut self, slot: u32) {
        let Entry {
            group: key,
            group_older: older,
            group_newer: newer,
            ..
        } = self.slots[slot as usize];
        if older != NIL {
            self.slots[older as usize].group_newer = newer;
        }
        if newer != NIL {
            self.slots[newer as usize].group_older = older;
        }
        if let Some(group) = self.groups.get_mut(&key) {
            if older == NIL {
                group.oldest = newer;
            }
            if newer == NIL {
                group.newest = older;
            }
            group.len -= 1;
            if group.len == 0 {
                self.groups.remove(&key);
            }
        }
    }
}

/// `now_ms + ttl` seconds, in whole seconds rounded down (see [`Entry::expires`]); saturates
/// after 136 years of uptime rather than wrapping to the past.
fn expiry_secs(now_ms: u64, ttl: u32) -> u32 {
    let ms = now_ms.saturating_add(u64::from(ttl) * 1000);
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The CNAME chain of an answer, from the query name to the name that owns the addresses.
struct Chain<'a> {
    /// Normalised; the query name first. Never empty.
    names: Vec<Cow<'a, str>>,
    /// Smallest CNAME TTL on the chain (`u32::MAX` without CNAMEs).
    ttl: u32,
}

impl<'a> Chain<'a> {
    fn follow(answer: &'a Answer) -> Option<Chain<'a>> {
        let mut chain = Chain {
            names: vec![normalize(&answer.qname)?],
            ttl: u32::MAX,
        };
        loop {
            let current = chain.end();
            // Several CNAMEs for one owner are malformed; the first one is taken.
            let next = answer.records.iter().find_map(|r| match r {
                Record::Cname { owner, target, ttl } if same_name(owner, current) => {
                    Some((target, *ttl))
                }
                _ => None,
            });
            let Some((target, ttl)) = next else {
                return Some(chain);
            };
            let target = normalize(target)?;
            if chain.names.len() > MAX_CNAME_HOPS || chain.names.contains(&target) {
                return None;
            }
            chain.ttl = chain.ttl.min(ttl);
            chain.names.push(target);
        }
    }

    fn end(&self) -> &str {
        self.names.last().map_or("", |n| n.as_ref())
    }
}

/// The distinct addresses owned by `end`, with their TTL, at most `limit` of them, in answer
/// order (the first ones are those a client tries first).
fn addresses(answer: &Answer, end: &str, limit: u32) -> Vec<(IpAddr, u32)> {
    let mut found: Vec<(IpAddr, u32, usize)> = answer
        .records
        .iter()
        .enumerate()
        .filter_map(|(pos, r)| match r {
            Record::Addr { owner, addr, ttl } if same_name(owner, end) => Some((*addr, *ttl, pos)),
            _ => None,
        })
        .collect();
    // Sorting, not a linear search per record: a TCP answer can hold thousands of records.
    found.sort_unstable_by_key(|&(addr, _, pos)| (addr, pos));
    // A repeated address keeps its first position and the smaller TTL (RFC 2181 §5.2 treats
    // differing TTLs in one RRset as an error; the shorter one is the safe reading).
    found.dedup_by(|later, first| {
        if later.0 == first.0 {
            first.1 = first.1.min(later.1);
            true
        } else {
            false
        }
    });
    found.sort_unstable_by_key(|&(_, _, pos)| pos);
    found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    found
        .into_iter()
        .map(|(addr, ttl, _)| (addr, ttl))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::matcher;

    const SEC: u64 = 1000;

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn settings(min_ttl: u32, max_ttl: u32, max_ips_per_name: u32, capacity: u32) -> DnsSettings {
        DnsSettings {
            min_ttl,
            max_ttl,
            max_ips_per_name,
            capacity,
            ..DnsSettings::default()
        }
    }

    fn a(owner: &str, addr: &str, ttl: u32) -> Record {
        Record::Addr {
            owner: owner.into(),
            addr: ip(addr),
            ttl,
        }
    }

    fn cname(owner: &str, target: &str, ttl: u32) -> Record {
        Record::Cname {
            owner: owner.into(),
            target: target.into(),
            ttl,
        }
    }

    fn answer(qname: &str, records: Vec<Record>) -> Answer {
        Answer {
            qname: qname.into(),
            records,
        }
    }

    fn add(rule: u32, addr: &str, secs: u64) -> Update {
        Update::Add {
            rule: RuleIdx(rule),
            addr: ip(addr),
            ttl: Duration::from_secs(secs),
        }
    }

    fn remove(rule: u32, addr: &str) -> Update {
        Update::Remove {
            rule: RuleIdx(rule),
            addr: ip(addr),
        }
    }

    #[test]
    fn entry_stays_compact() {
        assert!(std::mem::size_of::<Entry>() <= 56);
    }

    #[test]
    fn learns_v4_and_v6() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "github.com",
                vec![
                    a("github.com", "192.0.2.1", 60),
                    a("github.com.", "2001:db8::1", 30),
                ],
            ),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.1", 60), add(0, "2001:db8::1", 30)]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.expires_at(RuleIdx(0), ip("2001:db8::1")), Some(30 * SEC));
    }

    #[test]
    fn ttl_clamped_at_both_ends() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 3600, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "github.com",
                vec![
                    a("github.com", "192.0.2.1", 0),
                    a("github.com", "192.0.2.2", 1),
                    a("github.com", "192.0.2.3", 7200),
                    a("github.com", "192.0.2.4", u32::MAX),
                ],
            ),
            &m,
        );
        assert_eq!(
            up,
            vec![
                add(0, "192.0.2.1", 5),
                add(0, "192.0.2.2", 5),
                add(0, "192.0.2.3", 3600),
                add(0, "192.0.2.4", 3600),
            ]
        );
    }

    #[test]
    fn settings_the_validator_rejects_do_not_panic() {
        let m = matcher(&[&["github.com"]]);
        let ans = answer("github.com", vec![a("github.com", "192.0.2.1", 60)]);
        // min_ttl > max_ttl: max_ttl wins rather than a panic in `clamp`.
        let mut c = Cache::new(&settings(100, 10, 256, 100));
        assert_eq!(c.learn(0, &ans, &m), vec![add(0, "192.0.2.1", 10)]);
        // Zero bounds keep nothing.
        let mut c = Cache::new(&settings(5, 60, 0, 100));
        assert_eq!(c.learn(0, &ans, &m), vec![]);
        let mut c = Cache::new(&settings(5, 60, 10, 0));
        assert_eq!(
            c.learn(0, &ans, &m),
            vec![add(0, "192.0.2.1", 60), remove(0, "192.0.2.1")]
        );
        assert!(c.is_empty());
    }

    #[test]
    fn qname_matches_only_via_alias() {
        // The client asked for a listed name; the addresses belong to the CDN name.
        let m = matcher(&[&["www.github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "WWW.GitHub.com.",
                vec![
                    cname("www.github.com.", "github.map.fastly.net.", 300),
                    a("github.map.fastly.net.", "192.0.2.10", 60),
                ],
            ),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.10", 60)]);
    }

    #[test]
    fn qname_matches_only_via_target() {
        let m = matcher(&[&[".fastly.net"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "unlisted.example",
                vec![
                    cname("unlisted.example", "a.cdn.example", 300),
                    cname("a.cdn.example", "x.fastly.net", 300),
                    a("x.fastly.net", "192.0.2.11", 600),
                ],
            ),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.11", 300)]);
    }

    #[test]
    fn union_of_rules_on_the_chain_and_smallest_ttl() {
        let m = matcher(&[
            &["www.github.com"],
            &["nothing.test"],
            &["*.map.fastly.net"],
        ]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "www.github.com",
                vec![
                    // Out of order on purpose: the chain is followed by name, not position.
                    a("github.map.fastly.net", "192.0.2.12", 600),
                    cname("mid.example", "github.map.fastly.net", 40),
                    cname("www.github.com", "mid.example", 3600),
                    a("github.map.fastly.net", "192.0.2.13", 20),
                ],
            ),
            &m,
        );
        assert_eq!(
            up,
            vec![
                add(0, "192.0.2.12", 40),
                add(0, "192.0.2.13", 20),
                add(2, "192.0.2.12", 40),
                add(2, "192.0.2.13", 20),
            ]
        );
    }

    #[test]
    fn cname_loop_and_overlong_chain_teach_nothing() {
        let m = matcher(&[&[".example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let looped = answer(
            "a.example.com",
            vec![
                cname("a.example.com", "b.example.com", 60),
                cname("b.example.com", "A.example.com.", 60),
                a("b.example.com", "192.0.2.1", 60),
            ],
        );
        assert_eq!(c.learn(0, &looped, &m), vec![]);
        let self_loop = answer(
            "a.example.com",
            vec![
                cname("a.example.com", "a.example.com", 60),
                a("a.example.com", "192.0.2.1", 60),
            ],
        );
        assert_eq!(c.learn(0, &self_loop, &m), vec![]);

        let chain = |hops: usize| {
            let mut records: Vec<Record> = (0..hops)
                .map(|i| {
                    cname(
                        &format!("n{i}.example.com"),
                        &format!("n{}.example.com", i + 1),
                        60,
                    )
                })
                .collect();
            records.push(a(&format!("n{hops}.example.com"), "192.0.2.2", 60));
            answer("n0.example.com", records)
        };
        assert_eq!(
            c.learn(0, &chain(MAX_CNAME_HOPS), &m),
            vec![add(0, "192.0.2.2", 60)]
        );
        assert_eq!(c.learn(0, &chain(MAX_CNAME_HOPS + 1), &m), vec![]);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn records_off_the_chain_are_ignored() {
        let m = matcher(&[&["github.com"], &["bank.example"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "github.com",
                vec![
                    a("github.com", "192.0.2.1", 60),
                    // Glue for an unrelated, listed name: must not be learned for it, nor
                    // for github.com.
                    a("bank.example", "198.51.100.66", 60),
                    cname("bank.example", "evil.example", 60),
                    a("evil.example", "198.51.100.67", 60),
                ],
            ),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.1", 60)]);
        // Addresses for the alias itself, when the chain moves on, belong to no one.
        let up = c.learn(
            0,
            &answer(
                "github.com",
                vec![
                    a("github.com", "192.0.2.2", 60),
                    cname("github.com", "gh.cdn.example", 60),
                    a("gh.cdn.example", "192.0.2.3", 60),
                ],
            ),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.3", 60)]);
        assert_eq!(c.expires_at(RuleIdx(1), ip("198.51.100.66")), None);
    }

    #[test]
    fn unmatched_name_and_bad_names_learn_nothing() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        for qname in ["example.org", "", "github..com", "."] {
            let ans = answer(qname, vec![a(qname, "192.0.2.1", 60)]);
            assert_eq!(c.learn(0, &ans, &m), vec![], "{qname:?}");
        }
        let bad_target = answer(
            "github.com",
            vec![cname("github.com", "x..y", 60), a("x..y", "192.0.2.1", 60)],
        );
        assert_eq!(c.learn(0, &bad_target, &m), vec![]);
        assert!(c.is_empty());
    }

    #[test]
    fn duplicate_addresses_are_one_entry_with_the_smaller_ttl() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let up = c.learn(
            0,
            &answer(
                "github.com",
                vec![
                    a("github.com", "192.0.2.1", 60),
                    a("github.com", "192.0.2.2", 60),
                    a("GITHUB.COM", "192.0.2.1", 30),
                ],
            ),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.1", 30), add(0, "192.0.2.2", 60)]);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn refresh_extends_and_never_shortens() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let ans = |ttl| answer("github.com", vec![a("github.com", "192.0.2.1", ttl)]);
        assert_eq!(c.learn(0, &ans(60), &m), vec![add(0, "192.0.2.1", 60)]);
        // 10 s later, a longer TTL: the expiry moves out.
        assert_eq!(
            c.learn(10 * SEC, &ans(100), &m),
            vec![add(0, "192.0.2.1", 100)]
        );
        assert_eq!(c.expires_at(RuleIdx(0), ip("192.0.2.1")), Some(110 * SEC));
        // A shorter TTL keeps the later expiry, and says so to the data plane.
        assert_eq!(
            c.learn(20 * SEC, &ans(5), &m),
            vec![add(0, "192.0.2.1", 90)]
        );
        assert_eq!(c.expires_at(RuleIdx(0), ip("192.0.2.1")), Some(110 * SEC));
        // Partway through a second, the remaining time is rounded up.
        assert_eq!(
            c.learn(20 * SEC + 300, &ans(5), &m),
            vec![add(0, "192.0.2.1", 90)]
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn expiry_is_silent_and_lazy() {
        let m = matcher(&[&["github.com"], &["example.org"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        c.learn(
            0,
            &answer("github.com", vec![a("github.com", "192.0.2.1", 10)]),
            &m,
        );
        c.learn(
            0,
            &answer("example.org", vec![a("example.org", "192.0.2.2", 30)]),
            &m,
        );
        c.expire(10 * SEC - 1);
        assert_eq!(c.len(), 2);
        c.expire(10 * SEC);
        assert_eq!(c.len(), 1);
        assert_eq!(c.expires_at(RuleIdx(0), ip("192.0.2.1")), None);
        // `learn` expires too, and re-learning an expired entry is a plain add.
        let up = c.learn(
            31 * SEC,
            &answer("github.com", vec![a("github.com", "192.0.2.1", 10)]),
            &m,
        );
        assert_eq!(up, vec![add(0, "192.0.2.1", 10)]);
        assert_eq!(c.len(), 1);
        // The first .1 and example.org's .2 ran out; nothing was pushed out.
        assert_eq!(
            c.evictions(),
            Evictions {
                ttl_expired: 2,
                capacity_pressure: 0
            }
        );
    }

    #[test]
    fn refreshed_entry_does_not_expire_at_its_old_time() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        let ans = answer("github.com", vec![a("github.com", "192.0.2.1", 10)]);
        c.learn(0, &ans, &m);
        c.learn(5 * SEC, &ans, &m);
        c.expire(10 * SEC);
        assert_eq!(c.len(), 1);
        c.expire(15 * SEC);
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let m = matcher(&[&[".example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 3));
        let one = |name: &str, addr: &str| answer(name, vec![a(name, addr, 60)]);
        c.learn(0, &one("a.example.com", "192.0.2.1"), &m);
        c.learn(SEC, &one("b.example.com", "192.0.2.2"), &m);
        c.learn(2 * SEC, &one("c.example.com", "192.0.2.3"), &m);
        let up = c.learn(3 * SEC, &one("d.example.com", "192.0.2.4"), &m);
        assert_eq!(up, vec![add(0, "192.0.2.4", 60), remove(0, "192.0.2.1")]);
        // A refresh makes an entry the newest: .2 would go next, but now .3 does.
        c.learn(4 * SEC, &one("b.example.com", "192.0.2.2"), &m);
        let up = c.learn(5 * SEC, &one("e.example.com", "2001:db8::5"), &m);
        assert_eq!(up, vec![add(0, "2001:db8::5", 60), remove(0, "192.0.2.3")]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.evictions().capacity_pressure, 2);
        assert_eq!(c.evictions().ttl_expired, 0);
        let left: Vec<Update> = c.entries(5 * SEC).collect();
        assert_eq!(
            left,
            vec![
                add(0, "192.0.2.4", 58),
                add(0, "192.0.2.2", 59),
                add(0, "2001:db8::5", 60),
            ]
        );
    }

    #[test]
    fn capacity_prefers_dropping_expired_entries_silently() {
        let m = matcher(&[&[".example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 2));
        let one = |name: &str, addr: &str, ttl| answer(name, vec![a(name, addr, ttl)]);
        c.learn(0, &one("a.example.com", "192.0.2.1", 600), &m);
        c.learn(0, &one("b.example.com", "192.0.2.2", 10), &m);
        // .2 is younger but expired: it goes, without a Remove, and .1 stays.
        let up = c.learn(20 * SEC, &one("c.example.com", "192.0.2.3", 60), &m);
        assert_eq!(up, vec![add(0, "192.0.2.3", 60)]);
        assert!(c.expires_at(RuleIdx(0), ip("192.0.2.1")).is_some());
        assert_eq!(
            c.evictions(),
            Evictions {
                ttl_expired: 1,
                capacity_pressure: 0
            }
        );
    }

    #[test]
    fn max_ips_per_name_keeps_the_newest_addresses_of_a_name() {
        let m = matcher(&[&["pool.example.com"], &["other.example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 2, 100));
        let ans = |addrs: &[&str]| {
            answer(
                "pool.example.com",
                addrs.iter().map(|x| a("pool.example.com", x, 60)).collect(),
            )
        };
        // One answer with more than the limit: its first addresses are kept.
        let up = c.learn(0, &ans(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]), &m);
        assert_eq!(up, vec![add(0, "192.0.2.1", 60), add(0, "192.0.2.2", 60)]);
        // A later answer rotating in a new address evicts the name's oldest one.
        let up = c.learn(SEC, &ans(&["192.0.2.3", "192.0.2.2"]), &m);
        assert_eq!(
            up,
            vec![
                add(0, "192.0.2.3", 60),
                remove(0, "192.0.2.1"),
                add(0, "192.0.2.2", 60),
            ]
        );
        // The third address of the first answer was never held, so only .1 was pushed out.
        assert_eq!(c.evictions().capacity_pressure, 1);
        // Other names are not affected by this name's limit.
        c.learn(
            SEC,
            &answer(
                "other.example.com",
                vec![
                    a("other.example.com", "192.0.2.8", 60),
                    a("other.example.com", "192.0.2.9", 60),
                ],
            ),
            &m,
        );
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn max_ips_per_name_counts_the_chain_end() {
        // Two listed aliases of one CDN name share its quota for a rule.
        let m = matcher(&[&["a.example.com", "b.example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 1, 100));
        let via = |alias: &str, addr: &str| {
            answer(
                alias,
                vec![
                    cname(alias, "cdn.example.net", 60),
                    a("cdn.example.net", addr, 60),
                ],
            )
        };
        c.learn(0, &via("a.example.com", "192.0.2.1"), &m);
        let up = c.learn(SEC, &via("b.example.com", "192.0.2.2"), &m);
        assert_eq!(up, vec![add(0, "192.0.2.2", 60), remove(0, "192.0.2.1")]);
    }

    #[test]
    fn entry_moves_to_the_name_that_refreshed_it() {
        let m = matcher(&[&[".example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 1, 100));
        let one = |name: &str, addr: &str| answer(name, vec![a(name, addr, 60)]);
        c.learn(0, &one("a.example.com", "192.0.2.1"), &m);
        // b's answer takes .1 over: a's group is empty now, b's holds .1.
        c.learn(SEC, &one("b.example.com", "192.0.2.1"), &m);
        let up = c.learn(2 * SEC, &one("a.example.com", "192.0.2.2"), &m);
        assert_eq!(up, vec![add(0, "192.0.2.2", 60)]);
        let up = c.learn(3 * SEC, &one("b.example.com", "192.0.2.3"), &m);
        assert_eq!(up, vec![add(0, "192.0.2.3", 60), remove(0, "192.0.2.1")]);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn many_refreshes_keep_the_expiry_heap_bounded() {
        let m = matcher(&[&["github.com"]]);
        let mut c = Cache::new(&settings(5, 86400, 256, 100));
        for i in 0..10_000u64 {
            let ans = answer("github.com", vec![a("github.com", "192.0.2.1", 60)]);
            c.learn(i * SEC, &ans, &m);
        }
        assert_eq!(c.len(), 1);
        assert!(c.expiry.len() <= 2 * c.len() + 1025);
        c.expire(10_000 * SEC + 60 * SEC);
        assert!(c.is_empty());
    }

    #[test]
    fn two_hundred_thousand_addresses_evict_in_learning_order() {
        const TOTAL: u32 = 200_000;
        const CAPACITY: u32 = 150_000;
        const PER_NAME: u32 = 250;
        let m = matcher(&[&[".example.com"]]);
        let mut c = Cache::new(&settings(5, 86400, PER_NAME, CAPACITY));
        let addr = |i: u32| {
            if i.is_multiple_of(2) {
                IpAddr::from(i.to_be_bytes())
            } else {
                IpAddr::from(std::net::Ipv6Addr::from(
                    u128::from(i) | (0x2001_0db8_u128 << 96),
                ))
            }
        };
        let mut removed = Vec::new();
        let mut added = 0usize;
        for n in 0..TOTAL / PER_NAME {
            let name = format!("n{n}.example.com");
            let records = (n * PER_NAME..(n + 1) * PER_NAME)
                .map(|i| Record::Addr {
                    owner: name.clone(),
                    addr: addr(i),
                    ttl: 300,
                })
                .collect();
            let ans = Answer {
                qname: name,
                records,
            };
            for u in c.learn(u64::from(n), &ans, &m) {
                match u {
                    Update::Add { .. } => added += 1,
                    Update::Remove { rule, addr } => removed.push((rule, addr)),
                }
            }
        }
        assert_eq!(added, TOTAL as usize);
        assert_eq!(c.len(), CAPACITY as usize);
        let want: Vec<_> = (0..TOTAL - CAPACITY)
            .map(|i| (RuleIdx(0), addr(i)))
            .collect();
        assert_eq!(removed, want);
        assert_eq!(c.expires_at(RuleIdx(0), addr(TOTAL - CAPACITY - 1)), None);
        assert!(c.expires_at(RuleIdx(0), addr(TOTAL - CAPACITY)).is_some());
        assert_eq!(c.entries(0).count(), CAPACITY as usize);
        c.expire(u64::from(TOTAL) * SEC + 300 * SEC);
        assert!(c.is_empty());
        assert!(c.groups.is_empty());
        assert!(c.index.is_empty());
    }
}

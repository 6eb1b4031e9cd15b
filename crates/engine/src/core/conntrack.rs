//! The connection table: every accepted flow, found from either direction's 5-tuple, with its
//! TCP / UDP / ICMP-echo state and an expiry on the caller's clock (SPEC §8). Bounded.
//!
//! Layout: a slab of entries (capacity fixed at creation, allocated once) and an open-addressed
//! index of `INDEX_SLOTS_PER_ENTRY` slots per entry (load ≤ 2/3), linear probing, deletion by
//! backward shift so no tombstones build up. Each flow has two keys in the index, its original
//! and its reply tuple, so a reply finds its flow even once NAT makes the two differ. The index
//! hash is SipHash-1-3 keyed by the caller: tuples are chosen by whoever sends packets, and an
//! unkeyed hash would let them pile every flow into one probe chain.
//!
//! Written here rather than taken from `hashbrown` & co: those grow (allocate) on insert and
//! hold one key per value; this table must never allocate per packet, must refuse a flow when
//! full, and needs two keys per entry and an expiry sweep bounded per call.
//!
//! Time is milliseconds on the caller's monotonic clock, passed in; nothing here reads a clock.

use super::packet::{icmp_type, proto, Ip, TcpFlags, L4};
use super::DropReason;
use ::core::hash::Hasher;
use ::core::net::IpAddr;
use alloc::vec;
use alloc::vec::Vec;
use siphasher::sip::SipHasher13;

/// Default number of flows (SPEC §8).
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Largest capacity accepted; entry references keep one bit for the direction.
pub const MAX_CAPACITY: usize = 1 << 28;
/// Index slots per entry: each flow holds two, so the index is at most 2/3 full.
const INDEX_SLOTS_PER_ENTRY: usize = 3;
/// Memory one flow takes in a table: its entry, its share of the index and its place on the
/// free list. A table allocates this much per flow of its capacity when it is made.
pub const BYTES_PER_FLOW: usize = ::core::mem::size_of::<Option<Entry>>()
    + INDEX_SLOTS_PER_ENTRY * ::core::mem::size_of::<Slot>()
    + ::core::mem::size_of::<u32>();

/// One direction of a flow. ICMP echo uses the identifier as both ports, so that a request and
/// its reply are each other's reverse. Protocols without ports have 0 for both, but GRE, whose
/// PPTP call id is the destination port (the source "port" is 0: the kernel's GRE tracker
/// learns the other key only from a PPTP helper, which ward does not use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a packet; `None` for ICMP other than echo, which the table does not track
    /// (an error belongs to the flow it quotes, not to one of its own).
    pub fn of(ip: &Ip) -> Option<Tuple> {
        let (sport, dport) = match ip.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
            L4::Icmp {
                echo_id: Some(id), ..
            } => (id, id),
            L4::Icmp { echo_id: None, .. } => return None,
            L4::Gre { key } => (0, key),
            L4::Other => (0, 0),
        };
        Some(Tuple {
            src: ip.src,
            dst: ip.dst,
            sport,
            dport,
            proto: ip.proto,
        })
    }

    /// What the other direction looks like when nothing is translated.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// SipHash-1-3 of the tuple under a secret key, for anything that places tuples where a
    /// sender could aim them (this table's index, NAT's choice of external port).
    pub(crate) fn keyed_hash(&self, key: (u64, u64)) -> u64 {
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        if let (IpAddr::V4(src), IpAddr::V4(dst)) = (self.src, self.dst) {
            // An IPv4 tuple is two words, which SipHash takes without buffering anything.
            h.write_u64(u64::from(src.to_bits()) << 32 | u64::from(dst.to_bits()));
            h.write_u64(
                u64::from(self.sport) << 48 | u64::from(self.dport) << 32 | u64::from(self.proto),
            );
            return h.finish();
        }
        // One write of the packed tuple: fed field by field (the derived `Hash`), SipHash
        // spends more on buffering the pieces than on hashing the bytes.
        let mut packed = [0u8; 37];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            if let Some(to) = packed.get_mut(len..len + bytes.len()) {
                to.copy_from_slice(bytes);
                len += bytes.len();
            }
        };
        for addr in [self.src, self.dst] {
            match addr {
                IpAddr::V4(a) => put(&a.octets()),
                IpAddr::V6(a) => put(&a.octets()),
            }
        }
        put(&self.sport.to_be_bytes());
        put(&self.dport.to_be_bytes());
        put(&[self.proto]);
        h.write(packed.get(..len).unwrap_or(&packed));
        h.finish()
    }
}

/// Seconds, as in the policy's `conntrack_timeouts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_established: u32,
    pub tcp_time_wait: u32,
    pub udp_idle: u32,
    pub icmp_echo: u32,
}

impl Default for Timeouts {
    /// The policy's defaults (SPEC §2).
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn_sent: 30,
            tcp_established: 3600,
            tcp_time_wait: 60,
            udp_idle: 60,
            icmp_echo: 30,
        }
    }
}

#[cfg(feature = "std")]
impl From<policy::ConntrackTimeouts> for Timeouts {
    fn from(t: policy::ConntrackTimeouts) -> Timeouts {
        Timeouts {
            tcp_syn_sent: t.tcp_syn_sent,
            tcp_established: t.tcp_established,
            tcp_time_wait: t.tcp_time_wait,
            udp_idle: t.udp_idle,
            icmp_echo: t.icmp_echo,
        }
    }
}

/// Seconds a flow of another protocol lives after its last packet. The policy's
/// `conntrack_timeouts` name none of these, and the kernel plane leaves them at the kernel's
/// defaults, so these are the kernel's: `nf_conntrack_generic_timeout`, and GRE's
/// `nf_conntrack_gre_timeout` (nothing seen back yet) and `nf_conntrack_gre_timeout_stream`.
pub const GENERIC_TIMEOUT_S: u32 = 600;
pub const GRE_UNREPLIED_TIMEOUT_S: u32 = 30;
pub const GRE_REPLIED_TIMEOUT_S: u32 = 180;

impl Timeouts {
    fn millis(&self, state: State) -> u64 {
        let secs = match state {
            State::TcpSynSent => self.tcp_syn_sent,
            State::TcpEstablished => self.tcp_established,
            State::TcpTimeWait => self.tcp_time_wait,
            State::UdpUnreplied | State::UdpReplied => self.udp_idle,
            State::IcmpEcho => self.icmp_echo,
            State::GreUnreplied => GRE_UNREPLIED_TIMEOUT_S,
            State::GreReplied => GRE_REPLIED_TIMEOUT_S,
            State::Generic => GENERIC_TIMEOUT_S,
        };
        u64::from(secs) * 1000
    }
}

/// A flow's state. TCP follows SPEC §8's three states: SYN_SENT until the reply's SYN-ACK,
/// ESTABLISHED until a FIN or RST from either side, then TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    TcpSynSent,
    TcpEstablished,
    TcpTimeWait,
    /// UDP, nothing seen from the reply side yet.
    UdpUnreplied,
    /// UDP after a reply: established.
    UdpReplied,
    IcmpEcho,
    /// GRE, before and after a packet from the reply side.
    GreUnreplied,
    GreReplied,
    /// Any other protocol: by addresses and protocol alone, as the kernel's generic tracker
    /// has it (ESP, AH, IP-in-IP...).
    Generic,
}

/// What the first packet of a flow (a packet no entry knows) may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Evaluate it; if accepted, open an entry in this state.
    Track(State),
    /// Evaluate it on its own; no entry (ICMPv6 neighbour discovery and MLD).
    Untracked,
    /// It cannot start a flow: drop it before any rule, as `malformed_packet`, which is how
    /// the kernel data plane counts its conntrack-invalid drops. (ICMP errors related to a
    /// flow are not matched to it yet, so they land here too.)
    Invalid,
}

impl Opening {
    /// Mirrors the kernel's conntrack defaults, so both planes give the same verdict: TCP
    /// opens with a SYN, or mid-stream with a bare ACK (`nf_conntrack_tcp_loose`, on by
    /// default); a SYN-ACK, FIN, RST or no flag at all is invalid. ICMP opens only with an
    /// echo request; an unsolicited echo reply or error is invalid, except ICMPv6 neighbour
    /// discovery and MLD, which the kernel leaves untracked. Any other protocol opens a flow
    /// with whatever packet comes first, as with the kernel's GRE and generic trackers.
    pub fn of(ip: &Ip) -> Opening {
        match ip.l4 {
            L4::Tcp { flags, .. } => {
                if flags.any(TcpFlags::RST | TcpFlags::FIN) {
                    Opening::Invalid
                } else if flags.has(TcpFlags::SYN) {
                    if flags.has(TcpFlags::ACK) {
                        Opening::Invalid
                    } else {
                        Opening::Track(State::TcpSynSent)
                    }
                } else if flags.has(TcpFlags::ACK) {
                    Opening::Track(State::TcpEstablished)
                } else {
                    Opening::Invalid
                }
            }
            L4::Udp { .. } => Opening::Track(State::UdpUnreplied),
            L4::Icmp { ty, .. } => match (ip.proto, ty) {
                (proto::ICMP, icmp_type::V4_ECHO_REQUEST)
                | (proto::ICMPV6, icmp_type::V6_ECHO_REQUEST) => Opening::Track(State::IcmpEcho),
                // MLD (130-132, 143), router and neighbour discovery, redirect (133-137).
                (proto::ICMPV6, 130..=137 | 143) => Opening::Untracked,
                _ => Opening::Invalid,
            },
            L4::Gre { .. } => Opening::Track(State::GreUnreplied),
            L4::Other => Opening::Track(State::Generic),
        }
    }
}

/// Which of a flow's tuples a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

/// A packet of a known flow, after its state moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub dir: Dir,
    pub state: State,
    /// The rule that accepted the flow; `None` for the direction's default.
    pub rule: Option<u32>,
    /// The flow's tuple for the other direction. The packet leaves carrying
    /// `other.reversed()`: the tuple it came with unless NAT made the two directions differ,
    /// and then what `nat::rewrite` must turn it into.
    pub other: Tuple,
}

/// Why [`Conntrack::open`] refused a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every entry is in use: the flow is dropped as `conntrack_full`.
    Full,
    /// A live flow already holds one of the tuples. Cannot happen for a tuple that just
    /// missed in [`Conntrack::track`] unless a translation chose a reply tuple in use.
    Clash,
}

impl Refused {
    pub fn drop_reason(self) -> Option<DropReason> {
        match self {
            Refused::Full => Some(DropReason::ConntrackFull),
            Refused::Clash => None,
        }
    }
}

const NO_RULE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    orig: Tuple,
    reply: Tuple,
    /// Milliseconds; the entry is dead from this instant on.
    expires: u64,
    rule: u32,
    state: State,
}

impl Entry {
    fn tuple(&self, dir: Dir) -> &Tuple {
        match dir {
            Dir::Original => &self.orig,
            Dir::Reply => &self.reply,
        }
    }
}

/// An index slot: an entry reference (its position, the top bit set for the reply tuple) and
/// the key's hash, so probing compares 32 bits before it reads an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    hash: u32,
    entry: u32,
}

const EMPTY: Slot = Slot {
    hash: 0,
    entry: u32::MAX,
};
const REPLY_BIT: u32 = 1 << 31;

fn entry_ref(pos: usize, dir: Dir) -> u32 {
    // pos < MAX_CAPACITY < 2^31
    let pos = pos as u32;
    match dir {
        Dir::Original => pos,
        Dir::Reply => pos | REPLY_BIT,
    }
}

pub struct Conntrack {
    entries: Vec<Option<Entry>>,
    /// Positions of removed entries, reused before the slab grows.
    free: Vec<u32>,
    index: Vec<Slot>,
    capacity: usize,
    live: usize,
    timeouts: Timeouts,
    key: (u64, u64),
    /// Where [`Conntrack::sweep`] goes on from.
    cursor: usize,
}

impl Conntrack {
    /// A table for `capacity` flows (clamped to `1..=MAX_CAPACITY`), all memory allocated
    /// now. `hash_key` must be random and secret (from the OS at start-up).
    pub fn new(capacity: usize, timeouts: Timeouts, hash_key: [u64; 2]) -> Conntrack {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        Conntrack {
            entries: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            index: vec![EMPTY; capacity * INDEX_SLOTS_PER_ENTRY],
            capacity,
            live: 0,
            timeouts,
            key: (hash_key[0], hash_key[1]),
            cursor: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Flows held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Takes effect for each flow at its next packet.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The flow this packet belongs to, its state moved on by the packet and its expiry
    /// refreshed; `None` when there is none (never was, expired, or a TIME_WAIT flow reopened
    /// by a new SYN, which must be evaluated again like any new flow).
    pub fn track(&mut self, tuple: &Tuple, l4: &L4, now: u64) -> Option<Hit> {
        let (pos, dir) = self.find(tuple)?;
        let entry = self.entries.get_mut(pos)?.as_mut()?;
        if now >= entry.expires {
            self.remove(pos);
            return None;
        }
        let Some(state) = next_state(entry.state, dir, l4) else {
            self.remove(pos);
            return None;
        };
        entry.state = state;
        entry.expires = now.saturating_add(self.timeouts.millis(state));
        let other = match dir {
            Dir::Original => entry.reply,
            Dir::Reply => entry.orig,
        };
        Some(Hit {
            dir,
            state,
            rule: (entry.rule != NO_RULE).then_some(entry.rule),
            other,
        })
    }

    /// Whether a live flow holds `tuple` as its original or its reply tuple: what
    /// [`Conntrack::open`] would refuse as a clash. An expired entry not yet removed does not
    /// count, as `open` removes it. Reads only; NAT asks this to pick a free external port.
    pub fn holds(&self, tuple: &Tuple, now: u64) -> bool {
        match self.find(tuple) {
            Some((pos, _)) => matches!(self.entries.get(pos), Some(Some(e)) if now < e.expires),
            None => false,
        }
    }

    /// Opens a flow the filter accepted. `reply` is the tuple its replies will carry:
    /// `orig.reversed()` unless a translation changes it.
    pub fn open(
        &mut self,
        orig: Tuple,
        reply: Tuple,
        state: State,
        rule: Option<u32>,
        now: u64,
    ) -> Result<(), Refused> {
        for t in [&orig, &reply] {
            if let Some((pos, _)) = self.find(t) {
                match self.entries.get(pos) {
                    Some(Some(e)) if now >= e.expires => self.remove(pos),
                    _ => return Err(Refused::Clash),
                }
            }
        }
        let pos = match self.free.pop() {
            Some(p) => p as usize,
            None if self.entries.len() < self.capacity => {
                self.entries.push(None);
                self.entries.len() - 1
            }
            None => return Err(Refused::Full),
        };
        let Some(slot) = self.entries.get_mut(pos) else {
            return Err(Refused::Full);
        };
        *slot = Some(Entry {
            orig,
            reply,
            expires: now.saturating_add(self.timeouts.millis(state)),
            rule: rule.unwrap_or(NO_RULE),
            state,
        });
        self.insert_key(&orig, entry_ref(pos, Dir::Original));
        // A flow whose reply is itself (same address and port at both ends) needs one key.
        if reply != orig {
            self.insert_key(&reply, entry_ref(pos, Dir::Reply));
        }
        self.live += 1;
        Ok(())
    }

    /// Looks at up to `budget` entries, going on from where the last sweep stopped, and
    /// removes the expired ones; returns how many it removed. Call it regularly (lookups
    /// remove what they find expired, but a flow that sends nothing more is found only here).
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        for _ in 0..budget.min(self.entries.len()) {
            if self.cursor >= self.entries.len() {
                self.cursor = 0;
            }
            if let Some(Some(e)) = self.entries.get(self.cursor) {
                if now >= e.expires {
                    self.remove(self.cursor);
                    removed += 1;
                }
            }
            self.cursor += 1;
        }
        removed
    }

    fn hash(&self, tuple: &Tuple) -> u32 {
        (tuple.keyed_hash(self.key) >> 32) as u32
    }

    /// Where probing for a hash starts: the hash scaled onto the index (Lemire's
    /// multiply-shift, so the index need not be a power of two).
    fn home(&self, hash: u32) -> usize {
        ((u64::from(hash) * self.index.len() as u64) >> 32) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 >= self.index.len() {
            0
        } else {
            i + 1
        }
    }

    /// The entry holding `tuple`, and which of its tuples it is.
    fn find(&self, tuple: &Tuple) -> Option<(usize, Dir)> {
        let hash = self.hash(tuple);
        let mut i = self.home(hash);
        // The index always has empty slots; the bound only guards against a broken invariant.
        for _ in 0..self.index.len() {
            let slot = self.index.get(i)?;
            if slot.entry == EMPTY.entry {
                return None;
            }
            if slot.hash == hash {
                let pos = (slot.entry & !REPLY_BIT) as usize;
                let dir = if slot.entry & REPLY_BIT == 0 {
                    Dir::Original
                } else {
                    Dir::Reply
                };
                if let Some(Some(e)) = self.entries.get(pos) {
                    if e.tuple(dir) == tuple {
                        return Some((pos, dir));
                    }
                }
            }
            i = self.next(i);
        }
        None
    }

    fn insert_key(&mut self, tuple: &Tuple, entry: u32) {
        let hash = self.hash(tuple);
        let mut i = self.home(hash);
        for _ in 0..self.index.len() {
            let next = self.next(i);
            if let Some(slot) = self.index.get_mut(i) {
                if slot.entry == EMPTY.entry {
                    *slot = Slot { hash, entry };
                    return;
                }
            }
            i = next;
        }
    }

    fn remove(&mut self, pos: usize) {
        let Some(entry) = self.entries.get_mut(pos).and_then(Option::take) else {
            return;
        };
        self.remove_key(&entry.orig, entry_ref(pos, Dir::Original));
        if entry.reply != entry.orig {
            self.remove_key(&entry.reply, entry_ref(pos, Dir::Reply));
        }
        self.free.push(pos as u32);
        self.live -= 1;
    }

    /// Removes the slot for (`tuple`, `entry`) and shifts the rest of its cluster back, so that
    /// every key stays reachable from its home without tombstones.
    fn remove_key(&mut self, tuple: &Tuple, entry: u32) {
        let n = self.index.len();
        let hash = self.hash(tuple);
        let mut hole = self.home(hash);
        let mut found = false;
        for _ in 0..n {
            match self.index.get(hole) {
                Some(s) if s.entry == entry => {
                    found = true;
                    break;
                }
                Some(s) if s.entry != EMPTY.entry => hole = self.next(hole),
                _ => break,
            }
        }
        if !found {
            return;
        }
        let mut j = hole;
        for _ in 0..n {
            j = self.next(j);
            let Some(&slot) = self.index.get(j) else {
                break;
            };
            if slot.entry == EMPTY.entry {
                break;
            }
            // The slot may fill the hole unless its home lies after the hole (cyclically),
            // where probing would no longer pass through the hole to reach it.
            let home = self.home(slot.hash);
            let distance = |from: usize, to: usize| (to + n - from) % n;
            if distance(home, j) >= distance(hole, j) {
                if let Some(h) = self.index.get_mut(hole) {
                    *h = slot;
                }
                hole = j;
            }
        }
        if let Some(h) = self.index.get_mut(hole) {
            *h = EMPTY;
        }
    }
}

/// The state after a packet of the flow; `None` when the packet reopens a closed TCP flow.
fn next_state(state: State, dir: Dir, l4: &L4) -> Option<State> {
    let tcp = matches!(
        state,
        State::TcpSynSent | State::TcpEstablished | State::TcpTimeWait
    );
    match (l4, state) {
        (L4::Tcp { flags, .. }, _) if tcp => {
            let syn = flags.has(TcpFlags::SYN);
            let ack = flags.has(TcpFlags::ACK);
            if flags.any(TcpFlags::FIN | TcpFlags::RST) {
                Some(State::TcpTimeWait)
            } else if state == State::TcpSynSent && dir == Dir::Reply && syn && ack {
                Some(State::TcpEstablished)
            } else if state == State::TcpTimeWait && dir == Dir::Original && syn && !ack {
                // Port reuse: like the kernel, end the old flow and judge the new one afresh.
                None
            } else {
                Some(state)
            }
        }
        (_, State::UdpUnreplied) if dir == Dir::Reply => Some(State::UdpReplied),
        (_, State::GreUnreplied) if dir == Dir::Reply => Some(State::GreReplied),
        _ => Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::packet::{Offsets, Options};
    use ::core::mem::size_of;
    use ::core::net::{Ipv4Addr, Ipv6Addr};
    use std::collections::HashMap;

    const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
    const SEC: u64 = 1000;

    fn tuple(proto: u8, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
            dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
            sport,
            dport,
            proto,
        }
    }

    fn tcp(flags: u8) -> L4 {
        L4::Tcp {
            sport: 0,
            dport: 0,
            flags: TcpFlags(flags),
        }
    }

    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN;
    const RST: u8 = TcpFlags::RST;

    fn table(capacity: usize) -> Conntrack {
        Conntrack::new(capacity, Timeouts::default(), KEY)
    }

    #[test]
    fn an_entry_and_its_index_slots_fit_128_bytes() {
        assert!(
            size_of::<Option<Entry>>() <= 96,
            "{}",
            size_of::<Option<Entry>>()
        );
        assert_eq!(size_of::<Slot>(), 8);
        // Per flow: the entry, its share of the index, its place on the free list.
        let per_flow = size_of::<Option<Entry>>()
            + INDEX_SLOTS_PER_ENTRY * size_of::<Slot>()
            + size_of::<u32>();
        assert!(per_flow <= 128, "{per_flow} bytes per flow");
        assert_eq!(per_flow, BYTES_PER_FLOW);
    }

    #[test]
    fn tcp_handshake_data_and_close() {
        let mut ct = table(16);
        let orig = tuple(proto::TCP, 40000, 443);
        let reply = orig.reversed();
        ct.open(orig, reply, State::TcpSynSent, Some(3), 0).unwrap();

        // A retransmitted SYN changes nothing.
        let hit = ct.track(&orig, &tcp(SYN), SEC).unwrap();
        assert_eq!(
            (hit.dir, hit.state, hit.rule),
            (Dir::Original, State::TcpSynSent, Some(3))
        );
        // An ACK from the client before any SYN-ACK does not establish either.
        let hit = ct.track(&orig, &tcp(ACK), SEC).unwrap();
        assert_eq!(hit.state, State::TcpSynSent);
        let hit = ct.track(&reply, &tcp(SYN | ACK), 2 * SEC).unwrap();
        assert_eq!((hit.dir, hit.state), (Dir::Reply, State::TcpEstablished));
        let hit = ct.track(&orig, &tcp(ACK), 3 * SEC).unwrap();
        assert_eq!(hit.state, State::TcpEstablished);
        // Established lives for tcp_established from its last packet.
        let last = 3 * SEC + 3599 * SEC;
        assert_eq!(
            ct.track(&orig, &tcp(ACK), last).unwrap().state,
            State::TcpEstablished
        );
        let hit = ct.track(&reply, &tcp(FIN | ACK), last + SEC).unwrap();
        assert_eq!(hit.state, State::TcpTimeWait);
        let hit = ct.track(&orig, &tcp(ACK), last + 2 * SEC).unwrap();
        assert_eq!(hit.state, State::TcpTimeWait);
        // TIME_WAIT lasts tcp_time_wait.
        assert!(ct.track(&orig, &tcp(ACK), last + 62 * SEC).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn syn_sent_expires_and_rst_closes() {
        let mut ct = table(16);
        let orig = tuple(proto::TCP, 1, 22);
        ct.open(orig, orig.reversed(), State::TcpSynSent, None, 0)
            .unwrap();
        assert_eq!(ct.track(&orig, &tcp(SYN), 29 * SEC).unwrap().rule, None);
        assert!(
            ct.track(&orig, &tcp(SYN), 59 * SEC).is_none(),
            "30 s after the last SYN"
        );
        assert_eq!(ct.len(), 0);

        ct.open(orig, orig.reversed(), State::TcpSynSent, None, 0)
            .unwrap();
        let hit = ct.track(&orig.reversed(), &tcp(RST | ACK), SEC).unwrap();
        assert_eq!(hit.state, State::TcpTimeWait);
        let again = ct.open(orig, orig.reversed(), State::TcpSynSent, None, SEC);
        assert_eq!(again, Err(Refused::Clash));
        let hit = ct.track(&orig, &tcp(RST), 2 * SEC).unwrap();
        assert_eq!(hit.state, State::TcpTimeWait);
    }

    #[test]
    fn a_new_syn_reopens_a_time_wait_flow_as_a_new_one() {
        let mut ct = table(16);
        let orig = tuple(proto::TCP, 5000, 80);
        ct.open(orig, orig.reversed(), State::TcpEstablished, Some(0), 0)
            .unwrap();
        ct.track(&orig, &tcp(FIN | ACK), SEC).unwrap();
        // A SYN from the reply side is not a reopening.
        let hit = ct.track(&orig.reversed(), &tcp(SYN), SEC).unwrap();
        assert_eq!(hit.state, State::TcpTimeWait);
        assert!(ct.track(&orig, &tcp(SYN), 2 * SEC).is_none());
        assert!(ct.is_empty());
        ct.open(orig, orig.reversed(), State::TcpSynSent, Some(1), 2 * SEC)
            .unwrap();
        assert_eq!(ct.track(&orig, &tcp(SYN), 3 * SEC).unwrap().rule, Some(1));
    }

    #[test]
    fn udp_is_established_by_a_reply_and_idles_out() {
        let mut ct = table(16);
        let orig = tuple(proto::UDP, 5353, 53);
        ct.open(orig, orig.reversed(), State::UdpUnreplied, None, 0)
            .unwrap();
        let udp = L4::Udp { sport: 0, dport: 0 };
        assert_eq!(
            ct.track(&orig, &udp, SEC).unwrap().state,
            State::UdpUnreplied
        );
        let hit = ct.track(&orig.reversed(), &udp, 2 * SEC).unwrap();
        assert_eq!((hit.dir, hit.state), (Dir::Reply, State::UdpReplied));
        assert_eq!(
            ct.track(&orig, &udp, 61 * SEC).unwrap().state,
            State::UdpReplied
        );
        assert!(
            ct.track(&orig, &udp, 121 * SEC).is_none(),
            "udp_idle after the last packet"
        );
    }

    #[test]
    fn other_protocols_are_tracked_by_address_with_the_kernels_timeouts() {
        let mut ct = table(16);
        let esp = tuple(50, 0, 0);
        ct.open(esp, esp.reversed(), State::Generic, None, 0)
            .unwrap();
        let hit = ct.track(&esp.reversed(), &L4::Other, SEC).unwrap();
        assert_eq!((hit.dir, hit.state), (Dir::Reply, State::Generic));
        assert!(ct.track(&esp, &L4::Other, 600 * SEC).is_some());
        assert!(
            ct.track(&esp, &L4::Other, 1201 * SEC).is_none(),
            "600 s idle"
        );

        // GRE: 30 s until something comes back, 180 s after.
        let gre = tuple(proto::GRE, 0, 0);
        let l4 = L4::Gre { key: 0 };
        ct.open(gre, gre.reversed(), State::GreUnreplied, None, 0)
            .unwrap();
        assert_eq!(
            ct.track(&gre, &l4, 29 * SEC).unwrap().state,
            State::GreUnreplied
        );
        assert!(
            ct.track(&gre, &l4, 60 * SEC).is_none(),
            "unreplied for 30 s"
        );
        ct.open(gre, gre.reversed(), State::GreUnreplied, None, 60 * SEC)
            .unwrap();
        let hit = ct.track(&gre.reversed(), &l4, 61 * SEC).unwrap();
        assert_eq!(hit.state, State::GreReplied);
        assert!(ct.track(&gre, &l4, 240 * SEC).is_some());
        assert!(
            ct.track(&gre, &l4, 421 * SEC).is_none(),
            "180 s once replied"
        );
    }

    fn ip(src: IpAddr, dst: IpAddr, proto: u8, l4: L4) -> Ip {
        Ip {
            src,
            dst,
            proto,
            ttl: 64,
            l4,
            offsets: Offsets {
                l3: 14,
                l4: 34,
                end: 60,
            },
            options: Options::default(),
        }
    }

    #[test]
    fn icmp_echo_is_keyed_by_identifier() {
        let a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5));
        let echo = |ty, id| L4::Icmp {
            ty,
            code: 0,
            echo_id: Some(id),
        };
        let request = ip(a, b, proto::ICMPV6, echo(128, 77));
        assert_eq!(Opening::of(&request), Opening::Track(State::IcmpEcho));
        let orig = Tuple::of(&request).unwrap();
        let mut ct = table(16);
        ct.open(orig, orig.reversed(), State::IcmpEcho, Some(2), 0)
            .unwrap();

        let reply = Tuple::of(&ip(b, a, proto::ICMPV6, echo(129, 77))).unwrap();
        let hit = ct.track(&reply, &echo(129, 77), SEC).unwrap();
        assert_eq!(
            (hit.dir, hit.state, hit.rule),
            (Dir::Reply, State::IcmpEcho, Some(2))
        );
        let other_id = Tuple::of(&ip(b, a, proto::ICMPV6, echo(129, 78))).unwrap();
        assert!(ct.track(&other_id, &echo(129, 78), SEC).is_none());
        assert!(
            ct.track(&reply, &echo(129, 77), 31 * SEC).is_none(),
            "icmp_echo timeout"
        );
    }

    #[test]
    fn a_translated_reply_finds_its_flow_and_the_plain_reverse_does_not() {
        let mut ct = table(16);
        let orig = tuple(proto::TCP, 40000, 443);
        // As SNAT would make it: the reply comes back to the external address and port.
        let reply = Tuple {
            src: orig.dst,
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            sport: 443,
            dport: 16384,
            proto: proto::TCP,
        };
        ct.open(orig, reply, State::TcpSynSent, None, 0).unwrap();
        let hit = ct.track(&reply, &tcp(SYN | ACK), SEC).unwrap();
        assert_eq!((hit.dir, hit.state), (Dir::Reply, State::TcpEstablished));
        // Each direction learns the tuple it must leave with.
        assert_eq!(hit.other.reversed(), orig.reversed());
        let hit = ct.track(&orig, &tcp(ACK), SEC).unwrap();
        assert_eq!(
            (hit.dir, hit.other.reversed()),
            (Dir::Original, reply.reversed())
        );
        assert!(ct.track(&orig.reversed(), &tcp(ACK), SEC).is_none());
        assert_eq!(
            ct.open(
                tuple(proto::UDP, 1, 2),
                reply,
                State::UdpUnreplied,
                None,
                SEC
            ),
            Err(Refused::Clash)
        );
    }

    #[test]
    fn a_full_table_refuses_new_flows_until_entries_expire() {
        let mut ct = table(2);
        let udp = L4::Udp { sport: 0, dport: 0 };
        let flows = [1, 2, 3].map(|p| tuple(proto::UDP, p, 53));
        ct.open(flows[0], flows[0].reversed(), State::UdpUnreplied, None, 0)
            .unwrap();
        ct.open(
            flows[1],
            flows[1].reversed(),
            State::UdpUnreplied,
            None,
            10 * SEC,
        )
        .unwrap();
        let full = ct.open(
            flows[2],
            flows[2].reversed(),
            State::UdpUnreplied,
            None,
            20 * SEC,
        );
        assert_eq!(full, Err(Refused::Full));
        assert_eq!(Refused::Full.drop_reason(), Some(DropReason::ConntrackFull));
        assert_eq!((ct.len(), ct.capacity()), (2, 2));
        // The first flow expires at 60 s; the sweep frees its entry for the third.
        assert_eq!(ct.sweep(60 * SEC, 16), 1);
        ct.open(
            flows[2],
            flows[2].reversed(),
            State::UdpUnreplied,
            None,
            60 * SEC,
        )
        .unwrap();
        assert!(ct.track(&flows[1], &udp, 61 * SEC).is_some());
        assert!(ct.track(&flows[2], &udp, 61 * SEC).is_some());
        assert!(ct.track(&flows[0], &udp, 61 * SEC).is_none());
    }

    #[test]
    fn holds_sees_both_tuples_of_live_flows_only() {
        let mut ct = table(4);
        let orig = tuple(proto::UDP, 5000, 53);
        let reply = Tuple {
            dport: 16400,
            ..orig.reversed()
        };
        assert!(!ct.holds(&orig, 0));
        ct.open(orig, reply, State::UdpUnreplied, None, 0).unwrap();
        assert!(ct.holds(&orig, 0) && ct.holds(&reply, 59 * SEC));
        assert!(
            !ct.holds(&orig.reversed(), 0),
            "the untranslated reverse is free"
        );
        // Expired but not yet swept: free, and `open` agrees by taking it over.
        assert!(!ct.holds(&reply, 60 * SEC));
        let other = tuple(proto::UDP, 5001, 53);
        ct.open(other, reply, State::UdpUnreplied, None, 60 * SEC)
            .unwrap();
        assert!(ct.holds(&reply, 60 * SEC) && !ct.holds(&orig, 60 * SEC));
    }

    #[test]
    fn sweep_is_bounded_by_its_budget_and_resumes() {
        let mut ct = table(64);
        for p in 0..10 {
            let t = tuple(proto::UDP, p, 53);
            ct.open(t, t.reversed(), State::UdpUnreplied, None, 0)
                .unwrap();
        }
        assert_eq!(ct.sweep(59 * SEC, 100), 0, "nothing expired yet");
        assert_eq!(ct.sweep(60 * SEC, 3), 3);
        assert_eq!(ct.sweep(60 * SEC, 3), 3);
        assert_eq!(ct.len(), 4);
        assert_eq!(ct.sweep(60 * SEC, 100), 4);
        assert!(ct.is_empty());
    }

    #[test]
    fn opening_packets() {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let t = |flags| Opening::of(&ip(a, b, proto::TCP, tcp(flags)));
        assert_eq!(t(SYN), Opening::Track(State::TcpSynSent));
        assert_eq!(t(SYN | TcpFlags::PSH), Opening::Track(State::TcpSynSent));
        assert_eq!(
            t(ACK | TcpFlags::PSH),
            Opening::Track(State::TcpEstablished)
        );
        for invalid in [SYN | ACK, FIN | ACK, RST, RST | ACK, 0, SYN | FIN] {
            assert_eq!(t(invalid), Opening::Invalid, "{invalid:#x}");
        }
        let udp = ip(a, b, proto::UDP, L4::Udp { sport: 1, dport: 2 });
        assert_eq!(Opening::of(&udp), Opening::Track(State::UdpUnreplied));
        let icmp = |proto, ty| {
            let echo_id = matches!(ty, 0 | 8 | 128 | 129).then_some(1);
            Opening::of(&ip(
                a,
                b,
                proto,
                L4::Icmp {
                    ty,
                    code: 0,
                    echo_id,
                },
            ))
        };
        assert_eq!(icmp(proto::ICMP, 8), Opening::Track(State::IcmpEcho));
        assert_eq!(icmp(proto::ICMP, 0), Opening::Invalid);
        assert_eq!(icmp(proto::ICMP, 3), Opening::Invalid);
        assert_eq!(icmp(proto::ICMPV6, 128), Opening::Track(State::IcmpEcho));
        assert_eq!(icmp(proto::ICMPV6, 129), Opening::Invalid);
        assert_eq!(icmp(proto::ICMPV6, 135), Opening::Untracked);
        assert_eq!(icmp(proto::ICMPV6, 1), Opening::Invalid);
        // Other protocols open with anything, keyed by their addresses (and GRE's call id).
        assert_eq!(
            Opening::of(&ip(a, b, 50, L4::Other)),
            Opening::Track(State::Generic)
        );
        let gre = ip(a, b, proto::GRE, L4::Gre { key: 0x1234 });
        assert_eq!(Opening::of(&gre), Opening::Track(State::GreUnreplied));
        assert_eq!(
            Tuple::of(&gre),
            Some(Tuple {
                src: a,
                dst: b,
                sport: 0,
                dport: 0x1234,
                proto: proto::GRE
            })
        );
        let unreachable = L4::Icmp {
            ty: 3,
            code: 1,
            echo_id: None,
        };
        assert_eq!(Tuple::of(&ip(a, b, proto::ICMP, unreachable)), None);
    }

    proptest::proptest! {
        /// Random opens, lookups and sweeps on a small, crowded table against a plain map:
        /// backward-shift deletion must keep every live key reachable and no dead one.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((0u8..5, 0u16..48, 0u64..40), 1..400)) {
            let mut ct = table(24);
            // tuple -> (expires, is_reply side)
            let mut model: HashMap<Tuple, (u64, Dir)> = HashMap::new();
            let mut now = 0u64;
            let udp = L4::Udp { sport: 0, dport: 0 };
            let timeout = 60 * SEC;
            for (op, port, step) in ops {
                now += step * SEC;
                let t = tuple(proto::UDP, port, 53);
                model.retain(|_, (expires, _)| now < *expires);
                match op {
                    0 | 1 => {
                        let result = ct.open(t, t.reversed(), State::UdpUnreplied, None, now);
                        let known = model.contains_key(&t);
                        if known {
                            proptest::prop_assert_eq!(result, Err(Refused::Clash));
                        } else if result == Err(Refused::Full) {
                            // Expired entries not yet removed still hold their place.
                            proptest::prop_assert_eq!(ct.len(), ct.capacity());
                        } else {
                            proptest::prop_assert_eq!(result, Ok(()));
                            model.insert(t, (now + timeout, Dir::Original));
                            model.insert(t.reversed(), (now + timeout, Dir::Reply));
                        }
                    }
                    2 | 3 => {
                        let t = if op == 2 { t } else { t.reversed() };
                        let hit = ct.track(&t, &udp, now);
                        proptest::prop_assert_eq!(hit.map(|h| h.dir), model.get(&t).map(|m| m.1));
                        if hit.is_some() {
                            for k in [t, t.reversed()] {
                                if let Some(m) = model.get_mut(&k) {
                                    m.0 = now + timeout;
                                }
                            }
                        }
                    }
                    _ => {
                        ct.sweep(now, 7);
                    }
                }
                proptest::prop_assert!(ct.len() >= model.len() / 2);
                proptest::prop_assert!(ct.len() <= ct.capacity());
            }
            // Every live flow is still reachable from both sides.
            for (t, (_, dir)) in &model {
                proptest::prop_assert_eq!(ct.track(t, &udp, now).map(|h| h.dir), Some(*dir));
            }
        }
    }
}

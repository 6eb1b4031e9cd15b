//! The engine's own IPv4 address on each side, the ARP replies it gives for them, and the
//! neighbour table (side, IPv4 → MAC) it learns from ARP and resolves next hops with. Bounded.
//!
//! What it answers: an ARP request for the side's own address, and nothing else (SPEC §8): no
//! proxy ARP, no replies for the other side's address, no ICMP. IPv6 neighbour discovery is not
//! here yet: IPv6 next hops cannot be resolved, so IPv6 is parsed and filtered but has no
//! neighbour to be forwarded to.
//!
//! Learning follows RFC 826's merge rule: any ARP packet refreshes an entry the table already
//! holds for its sender (so gratuitous ARP moves a neighbour to its new MAC), but a new entry
//! is made only from a packet whose target is the engine's own address (a request for it, or
//! a reply to it). Senders outside the side's subnet are never learned: a next hop is always
//! on-link, and the other side's hosts must not be able to claim this side's addresses.
//!
//! An unknown next hop: [`Neighbours::resolve`] says to send an ARP request (built by
//! [`Neighbours::request`]), at most one per address per [`RETRY_MS`], and the core keeps
//! nothing of the packet that needed it. Holding such packets is the I/O loop's business
//! (`engine::io` parks a fixed few, as Linux queues a few per neighbour): a queue per
//! unresolved address is what anyone able to send to unknown addresses could fill.
//!
//! The table is set-associative: an address hashes (SipHash-1-3, keyed by the caller like the
//! connection table) to one set of [`WAYS`] entries, and a new entry replaces an empty or dead
//! one in its set, else the one closest to dying, which is the least recently confirmed. So a
//! lookup reads at most [`WAYS`] entries, and "oldest replaced" holds within the set.
//!
//! Time is milliseconds on the caller's monotonic clock, passed in; nothing here reads a clock.

use super::packet::Arp;
use ::core::hash::Hasher;
use ::core::net::Ipv4Addr;
use alloc::vec;
use alloc::vec::Vec;
use siphasher::sip::SipHasher13;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
};

/// Length of the frames built here: an Ethernet header and an Ethernet / IPv4 ARP packet. The
/// NIC pads it to the 60-byte minimum on the way out, as for the kernel's own ARP frames.
pub const FRAME_LEN: usize = 14 + 28;
/// Entries per set: the most a lookup reads.
pub const WAYS: usize = 8;
/// A neighbour is used without question this long after an ARP packet from it.
pub const REACHABLE_MS: u64 = 30_000;
/// After that, its MAC is still used for this long while it is asked again (so a busy flow
/// does not lose a packet every [`REACHABLE_MS`]); an entry not confirmed by then is dead.
pub const STALE_MS: u64 = 30_000;
/// At most one ARP request per address per this long.
pub const RETRY_MS: u64 = 1_000;
/// An address asked for and never answered is forgotten after this long (three requests).
pub const PENDING_MS: u64 = 3 * RETRY_MS;

/// Which of the engine's two interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Lan,
    Wan,
}

/// The engine's own address on one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Own {
    pub mac: EthernetAddress,
    pub ip: Ipv4Addr,
    /// The side's subnet; a value above 32 is read as 32.
    pub prefix_len: u8,
}

impl Own {
    fn mask(&self) -> u32 {
        let prefix = u32::from(self.prefix_len.min(32));
        u32::MAX.checked_shl(32 - prefix).unwrap_or(0)
    }

    /// Whether `ip` lies in the side's subnet, its own, network and broadcast addresses
    /// included: an address that is this side's to route, neighbour or not.
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = self.mask();
        u32::from(ip) & mask == u32::from(self.ip) & mask
    }

    /// Whether `ip` can be a neighbour on this side: inside the subnet, and not the engine's
    /// own address, the subnet's network or broadcast address (except on /31 and /32, which
    /// have none, RFC 3021), the limited broadcast, or a multicast address.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = self.mask();
        let (net, addr) = (u32::from(self.ip) & mask, u32::from(ip));
        if !self.in_subnet(ip) || ip == self.ip || ip.is_broadcast() || ip.is_multicast() {
            return false;
        }
        self.prefix_len.min(32) >= 31 || (addr != net && addr != net | !mask)
    }
}

/// How to reach a next hop, from [`Neighbours::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Send to this MAC.
    Mac(EthernetAddress),
    /// Send to this MAC, and send an ARP request to it as well ([`Neighbours::request`] with
    /// `Some(mac)`): the entry is past [`REACHABLE_MS`] and is being confirmed again.
    MacAndAsk(EthernetAddress),
    /// Unknown: send a broadcast ARP request for the address and drop the packet.
    Ask,
    /// Unknown, and a request went out less than [`RETRY_MS`] ago: drop the packet.
    Wait,
    /// Not a possible neighbour on that side ([`Own::on_link`] is false): a routing error,
    /// nothing to ask. Drop the packet.
    OffLink,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    side: Side,
    ip: Ipv4Addr,
    /// `None` while a request is unanswered.
    mac: Option<EthernetAddress>,
    /// With a MAC: confirmed until then, stale for [`STALE_MS`] after. Without: dead from then.
    until: u64,
    /// When the last request for it went out, if one did since it was last confirmed.
    asked: Option<u64>,
}

impl Entry {
    fn dead_at(&self) -> u64 {
        match self.mac {
            Some(_) => self.until.saturating_add(STALE_MS),
            None => self.until,
        }
    }

    fn may_ask(&self, now: u64) -> bool {
        self.asked
            .is_none_or(|at| now >= at.saturating_add(RETRY_MS))
    }
}

/// The engine's own addresses and the neighbours it has learned: answers ARP for the former,
/// resolves next hops from the latter. All memory is allocated by [`Neighbours::new`].
pub struct Neighbours {
    lan: Own,
    wan: Own,
    /// `sets * WAYS` entries, set `s` at `s * WAYS..(s + 1) * WAYS`.
    slots: Vec<Option<Entry>>,
    sets: usize,
    key: (u64, u64),
    /// Entries given a MAC so far (new or refreshed).
    learned: u64,
    /// By side, the next hop last resolved to a fresh MAC and its slot: most packets go to
    /// the same one (the gateway), and this finds it without hashing. Checked against the
    /// slot before use, so a stale hint only costs the hashed lookup.
    recent: [Option<(Ipv4Addr, usize)>; 2],
}

impl Neighbours {
    /// A table for `capacity` neighbours over both sides (rounded up to a multiple of
    /// [`WAYS`], at least one set). `hash_key` must be random and secret, as for the
    /// connection table.
    pub fn new(lan: Own, wan: Own, capacity: usize, hash_key: [u64; 2]) -> Neighbours {
        // The bound keeps `sets * WAYS` from overflowing; no real table comes near it.
        let sets = capacity.div_ceil(WAYS).clamp(1, 1 << 24);
        Neighbours {
            lan,
            wan,
            slots: vec![None; sets * WAYS],
            sets,
            key: (hash_key[0], hash_key[1]),
            learned: 0,
            recent: [None; 2],
        }
    }

    /// How many times an entry was given a MAC, new or refreshed: a value that changes
    /// whenever a next hop may have become resolvable, for whoever holds packets back until
    /// it is.
    pub fn learned(&self) -> u64 {
        self.learned
    }

    pub fn own(&self, side: Side) -> &Own {
        match side {
            Side::Lan => &self.lan,
            Side::Wan => &self.wan,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries held, unanswered and dead ones not yet replaced included.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An ARP packet that arrived on `side` in a frame sent to `dst_mac`: learns its sender as
    /// the module doc says, and if it is a request for the side's own address, writes the
    /// reply frame to `reply` and returns true (send it on `side`). Frames for another host
    /// (a NIC in promiscuous mode sees them) are ignored entirely, as are senders with a
    /// group MAC or the engine's own, and senders claiming the engine's own address (an
    /// address conflict: neither learned nor answered).
    #[must_use]
    pub fn receive(
        &mut self,
        side: Side,
        dst_mac: EthernetAddress,
        arp: &Arp,
        now: u64,
        reply: &mut [u8; FRAME_LEN],
    ) -> bool {
        let own = *self.own(side);
        if !(dst_mac.is_broadcast() || dst_mac == own.mac)
            || !arp.sender_mac.is_unicast()
            || arp.sender_mac == own.mac
            || arp.sender_ip == own.ip
        {
            return false;
        }
        let for_us = arp.target_ip == own.ip;
        if own.on_link(arp.sender_ip) {
            self.learn(side, arp.sender_ip, arp.sender_mac, for_us, now);
        }
        if !for_us || arp.op != ArpOperation::Request {
            return false;
        }
        write_frame(
            reply,
            arp.sender_mac,
            &own,
            ArpOperation::Reply,
            arp.sender_mac,
            arp.sender_ip,
        );
        true
    }

    /// The MAC of next hop `ip` on `side`, or what to do without one (see [`Resolved`]).
    /// Records that a request is due when it says so, so call it once per packet.
    pub fn resolve(&mut self, side: Side, ip: Ipv4Addr, now: u64) -> Resolved {
        if !self.own(side).on_link(ip) {
            return Resolved::OffLink;
        }
        if let Some((hint, at)) = self.recent[side as usize] {
            if let (true, Some(Some(e))) = (hint == ip, self.slots.get(at)) {
                if let (true, Some(mac)) = (e.side == side && e.ip == ip && now < e.until, e.mac) {
                    return Resolved::Mac(mac);
                }
            }
        }
        let set = self.set(side, ip);
        let first = set.start;
        let Some(set) = self.slots.get_mut(set) else {
            // Cannot happen (`set` lies inside by construction); dropping is the safe answer.
            return Resolved::Wait;
        };
        if let Some((way, e)) = set.iter_mut().enumerate().find_map(|(w, s)| {
            s.as_mut()
                .filter(|e| e.side == side && e.ip == ip)
                .map(|e| (w, e))
        }) {
            match e.mac {
                Some(mac) if now < e.until => {
                    self.recent[side as usize] = Some((ip, first + way));
                    return Resolved::Mac(mac);
                }
                Some(mac) if now < e.dead_at() => {
                    if e.may_ask(now) {
                        e.asked = Some(now);
                        return Resolved::MacAndAsk(mac);
                    }
                    return Resolved::Mac(mac);
                }
                None if now < e.until => {
                    if e.may_ask(now) {
                        e.asked = Some(now);
                        return Resolved::Ask;
                    }
                    return Resolved::Wait;
                }
                // Dead: asked for afresh, in the same place.
                _ => {
                    *e = pending(side, ip, now);
                    return Resolved::Ask;
                }
            }
        }
        if let Some(slot) = victim(set) {
            *slot = Some(pending(side, ip, now));
        }
        Resolved::Ask
    }

    /// Writes an ARP request for `ip` from the side's own address to `out`: broadcast, or
    /// unicast to `to` when confirming a known neighbour ([`Resolved::MacAndAsk`]).
    pub fn request(
        &self,
        side: Side,
        ip: Ipv4Addr,
        to: Option<EthernetAddress>,
        out: &mut [u8; FRAME_LEN],
    ) {
        let own = self.own(side);
        // The target hardware address is zero in requests (RFC 5227 §2.1.1).
        let unknown = EthernetAddress([0; 6]);
        let dst = to.unwrap_or(EthernetAddress::BROADCAST);
        write_frame(out, dst, own, ArpOperation::Request, unknown, ip);
    }

    fn learn(&mut self, side: Side, ip: Ipv4Addr, mac: EthernetAddress, for_us: bool, now: u64) {
        let set = self.set(side, ip);
        let Some(set) = self.slots.get_mut(set) else {
            return;
        };
        let learned = Entry {
            side,
            ip,
            mac: Some(mac),
            until: now.saturating_add(REACHABLE_MS),
            asked: None,
        };
        if let Some(e) = set
            .iter_mut()
            .flatten()
            .find(|e| e.side == side && e.ip == ip)
        {
            // A dead entry counts as absent: refreshing it from a packet not for us would be
            // learning from unsolicited ARP.
            if now < e.dead_at() || for_us {
                *e = learned;
                self.learned += 1;
            }
            return;
        }
        if !for_us {
            return;
        }
        if let Some(slot) = victim(set) {
            *slot = Some(learned);
            self.learned += 1;
        }
    }

    /// The range of `slots` holding the set for (`side`, `ip`).
    fn set(&self, side: Side, ip: Ipv4Addr) -> ::core::ops::Range<usize> {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        let o = ip.octets();
        h.write(&[side as u8, o[0], o[1], o[2], o[3]]);
        // Lemire's multiply-shift onto the set count, as the connection table's index does.
        let hash = h.finish() >> 32;
        let s = ((hash * self.sets as u64) >> 32) as usize;
        s * WAYS..(s + 1) * WAYS
    }
}

fn pending(side: Side, ip: Ipv4Addr, now: u64) -> Entry {
    Entry {
        side,
        ip,
        mac: None,
        until: now.saturating_add(PENDING_MS),
        asked: Some(now),
    }
}

/// The slot a new entry takes: an empty one, else the one that dies first, which is a dead one
/// if the set has any (they died before now, the others die after).
fn victim(set: &mut [Option<Entry>]) -> Option<&mut Option<Entry>> {
    // `min_by_key` keeps the first of equal keys; an empty slot's 0 wins over any entry.
    set.iter_mut()
        .min_by_key(|slot| slot.as_ref().map_or(0, Entry::dead_at))
}

/// Writes one Ethernet + ARP frame from `own`. The array's length is what makes the smoltcp
/// setters' indexing safe: every field lies inside [`FRAME_LEN`].
fn write_frame(
    out: &mut [u8; FRAME_LEN],
    dst: EthernetAddress,
    own: &Own,
    operation: ArpOperation,
    target_mac: EthernetAddress,
    target_ip: Ipv4Addr,
) {
    let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
    frame.set_dst_addr(dst);
    frame.set_src_addr(own.mac);
    frame.set_ethertype(EthernetProtocol::Arp);
    ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: own.mac,
        source_protocol_addr: own.ip,
        target_hardware_addr: target_mac,
        target_protocol_addr: target_ip,
    }
    .emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::packet::{parse, Parsed, Payload};
    use alloc::vec::Vec;
    use std::collections::HashMap;

    const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
    const LAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
    const WAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
    const HOST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x10]);
    const OTHER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x20]);

    fn lan() -> Own {
        Own {
            mac: LAN_MAC,
            ip: Ipv4Addr::new(192, 168, 1, 1),
            prefix_len: 24,
        }
    }

    fn wan() -> Own {
        Own {
            mac: WAN_MAC,
            ip: Ipv4Addr::new(203, 0, 113, 2),
            prefix_len: 30,
        }
    }

    fn table(capacity: usize) -> Neighbours {
        Neighbours::new(lan(), wan(), capacity, KEY)
    }

    fn lan_host(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 1, last)
    }

    fn arp(op: ArpOperation, sender: (EthernetAddress, Ipv4Addr), target: Ipv4Addr) -> Arp {
        Arp {
            op,
            sender_mac: sender.0,
            sender_ip: sender.1,
            target_mac: EthernetAddress([0; 6]),
            target_ip: target,
        }
    }

    fn request(sender: (EthernetAddress, Ipv4Addr), target: Ipv4Addr) -> Arp {
        arp(ArpOperation::Request, sender, target)
    }

    /// Feeds a packet broadcast on `side`; the reply, parsed back, if one was written.
    fn receive(n: &mut Neighbours, side: Side, a: &Arp, now: u64) -> Option<Parsed> {
        let mut out = [0u8; FRAME_LEN];
        if n.receive(side, EthernetAddress::BROADCAST, a, now, &mut out) {
            Some(parse(&out).expect("the reply parses"))
        } else {
            None
        }
    }

    #[test]
    fn frame_len_is_ethernet_plus_arp() {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: LAN_MAC,
            source_protocol_addr: lan().ip,
            target_hardware_addr: LAN_MAC,
            target_protocol_addr: lan().ip,
        };
        assert_eq!(
            FRAME_LEN,
            EthernetFrame::<&[u8]>::header_len() + repr.buffer_len()
        );
    }

    #[test]
    fn a_request_for_our_address_is_answered_and_its_sender_learned() {
        let mut n = table(64);
        let host = (HOST_MAC, lan_host(10));
        assert_eq!(n.resolve(Side::Lan, host.1, 0), Resolved::Ask);
        let reply = receive(&mut n, Side::Lan, &request(host, lan().ip), 5).expect("a reply");
        assert_eq!((reply.dst_mac, reply.src_mac), (HOST_MAC, LAN_MAC));
        assert_eq!(
            reply.payload,
            Payload::Arp(Arp {
                op: ArpOperation::Reply,
                sender_mac: LAN_MAC,
                sender_ip: lan().ip,
                target_mac: HOST_MAC,
                target_ip: host.1,
            })
        );
        assert_eq!(n.resolve(Side::Lan, host.1, 6), Resolved::Mac(HOST_MAC));
        // Unicast to our MAC is answered too (hosts confirm their entries that way).
        let mut out = [0u8; FRAME_LEN];
        assert!(n.receive(Side::Lan, LAN_MAC, &request(host, lan().ip), 7, &mut out));
    }

    #[test]
    fn the_wan_address_is_answered_on_the_wan_only() {
        let mut n = table(64);
        let gateway = (OTHER_MAC, Ipv4Addr::new(203, 0, 113, 1));
        let reply = receive(&mut n, Side::Wan, &request(gateway, wan().ip), 0).expect("reply");
        assert_eq!(reply.src_mac, WAN_MAC);
        assert!(matches!(
            reply.payload,
            Payload::Arp(Arp { sender_ip, .. }) if sender_ip == wan().ip
        ));
        assert_eq!(n.resolve(Side::Wan, gateway.1, 1), Resolved::Mac(OTHER_MAC));
        // Asked on the LAN for the WAN address: not ours there, no proxy ARP.
        let host = (HOST_MAC, lan_host(10));
        assert_eq!(
            receive(&mut n, Side::Lan, &request(host, wan().ip), 2),
            None
        );
        assert_eq!(
            receive(&mut n, Side::Wan, &request(gateway, lan().ip), 2),
            None
        );
    }

    #[test]
    fn nothing_else_is_answered_and_strangers_are_not_learned() {
        let mut n = table(64);
        let host = (HOST_MAC, lan_host(10));
        // A request for another host: no reply, and its sender is not learned (merge rule).
        assert_eq!(
            receive(&mut n, Side::Lan, &request(host, lan_host(20)), 0),
            None
        );
        assert!(n.is_empty());
        // A reply to another host: the same.
        let a = arp(ArpOperation::Reply, host, lan_host(20));
        assert_eq!(receive(&mut n, Side::Lan, &a, 0), None);
        assert!(n.is_empty());
        // A reply to us is learned, and not answered.
        let a = arp(ArpOperation::Reply, host, lan().ip);
        assert_eq!(receive(&mut n, Side::Lan, &a, 0), None);
        assert_eq!(n.resolve(Side::Lan, host.1, 1), Resolved::Mac(HOST_MAC));
        // Operations other than request and reply (RARP's 3 and 4) are not answered.
        let a = arp(
            ArpOperation::Unknown(3),
            (OTHER_MAC, lan_host(30)),
            lan().ip,
        );
        assert_eq!(receive(&mut n, Side::Lan, &a, 2), None);
    }

    #[test]
    fn a_known_neighbour_follows_gratuitous_arp() {
        let mut n = table(64);
        let ip = lan_host(10);
        let _ = receive(&mut n, Side::Lan, &request((HOST_MAC, ip), lan().ip), 0);
        // Moved to a new NIC: announces itself (sender = target = its own address).
        let _ = receive(&mut n, Side::Lan, &request((OTHER_MAC, ip), ip), 10);
        assert_eq!(n.resolve(Side::Lan, ip, 11), Resolved::Mac(OTHER_MAC));
        // The announcement refreshed the entry: still fresh a full REACHABLE_MS after it.
        assert_eq!(
            n.resolve(Side::Lan, ip, 10 + REACHABLE_MS - 1),
            Resolved::Mac(OTHER_MAC)
        );
    }

    #[test]
    fn refused_senders() {
        let mut n = table(64);
        let ours = lan().ip;
        let cases: [(&str, Arp, EthernetAddress); 7] = [
            (
                "off the LAN subnet",
                request((HOST_MAC, Ipv4Addr::new(10, 0, 0, 5)), ours),
                EthernetAddress::BROADCAST,
            ),
            (
                "the subnet's broadcast address",
                request((HOST_MAC, lan_host(255)), ours),
                EthernetAddress::BROADCAST,
            ),
            (
                "a group MAC",
                request(
                    (EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]), lan_host(10)),
                    ours,
                ),
                EthernetAddress::BROADCAST,
            ),
            (
                "our own MAC",
                request((LAN_MAC, lan_host(10)), ours),
                EthernetAddress::BROADCAST,
            ),
            (
                "our own address (a conflict)",
                request((HOST_MAC, ours), ours),
                EthernetAddress::BROADCAST,
            ),
            (
                "a frame for another host",
                request((HOST_MAC, lan_host(10)), ours),
                OTHER_MAC,
            ),
            (
                "our WAN address's subnet, on the LAN",
                request((HOST_MAC, Ipv4Addr::new(203, 0, 113, 1)), ours),
                EthernetAddress::BROADCAST,
            ),
        ];
        for (what, a, dst) in cases {
            let mut out = [0u8; FRAME_LEN];
            let replied = n.receive(Side::Lan, dst, &a, 0, &mut out);
            assert!(n.is_empty(), "{what}: learned");
            // Off-link askers are still answered (a misconfigured host gets its reply, as
            // from Linux); the rest are not.
            let answered = what == "off the LAN subnet"
                || what.contains("broadcast address")
                || what.contains("WAN address's subnet");
            assert_eq!(replied, answered, "{what}");
        }
    }

    #[test]
    fn sides_do_not_share_entries() {
        let mut n = Neighbours::new(
            lan(),
            Own {
                mac: WAN_MAC,
                ip: Ipv4Addr::new(192, 168, 1, 254),
                prefix_len: 24,
            },
            64,
            KEY,
        );
        let ip = lan_host(10);
        let _ = receive(&mut n, Side::Lan, &request((HOST_MAC, ip), lan().ip), 0);
        assert_eq!(n.resolve(Side::Lan, ip, 1), Resolved::Mac(HOST_MAC));
        assert_eq!(n.resolve(Side::Wan, ip, 1), Resolved::Ask);
    }

    #[test]
    fn resolving_asks_once_per_retry_then_forgets() {
        let mut n = table(64);
        let ip = lan_host(10);
        assert_eq!(n.resolve(Side::Lan, ip, 0), Resolved::Ask);
        assert_eq!(n.resolve(Side::Lan, ip, RETRY_MS - 1), Resolved::Wait);
        assert_eq!(n.resolve(Side::Lan, ip, RETRY_MS), Resolved::Ask);
        assert_eq!(n.resolve(Side::Lan, ip, RETRY_MS + 1), Resolved::Wait);
        assert_eq!(n.len(), 1);
        // Unanswered for PENDING_MS: dead, and the next packet starts over.
        assert_eq!(n.resolve(Side::Lan, ip, PENDING_MS), Resolved::Ask);
        assert_eq!(n.resolve(Side::Lan, ip, PENDING_MS + 1), Resolved::Wait);
        // An unsolicited reply from an address being asked for is taken: it is in the table.
        let a = arp(ArpOperation::Reply, (HOST_MAC, ip), lan_host(99));
        assert_eq!(receive(&mut n, Side::Lan, &a, PENDING_MS + 2), None);
        assert_eq!(
            n.resolve(Side::Lan, ip, PENDING_MS + 3),
            Resolved::Mac(HOST_MAC)
        );
        assert_eq!(n.len(), 1);
    }

    #[test]
    fn a_stale_neighbour_is_used_while_confirmed_again() {
        let mut n = table(64);
        let ip = lan_host(10);
        let _ = receive(&mut n, Side::Lan, &request((HOST_MAC, ip), lan().ip), 0);
        let stale = REACHABLE_MS;
        assert_eq!(n.resolve(Side::Lan, ip, stale - 1), Resolved::Mac(HOST_MAC));
        assert_eq!(
            n.resolve(Side::Lan, ip, stale),
            Resolved::MacAndAsk(HOST_MAC)
        );
        assert_eq!(n.resolve(Side::Lan, ip, stale + 1), Resolved::Mac(HOST_MAC));
        assert_eq!(
            n.resolve(Side::Lan, ip, stale + RETRY_MS),
            Resolved::MacAndAsk(HOST_MAC)
        );
        // Its answer makes it fresh again.
        let a = arp(ArpOperation::Reply, (HOST_MAC, ip), lan().ip);
        let _ = receive(&mut n, Side::Lan, &a, stale + 2 * RETRY_MS);
        assert_eq!(
            n.resolve(Side::Lan, ip, stale + 3 * RETRY_MS),
            Resolved::Mac(HOST_MAC)
        );
        // Never answering: dead at REACHABLE_MS + STALE_MS after the last confirmation.
        let confirmed = stale + 2 * RETRY_MS;
        let dead = confirmed + REACHABLE_MS + STALE_MS;
        assert!(matches!(
            n.resolve(Side::Lan, ip, dead - 1),
            Resolved::Mac(_) | Resolved::MacAndAsk(_)
        ));
        assert_eq!(n.resolve(Side::Lan, ip, dead), Resolved::Ask);
        // A dead entry is not refreshed by ARP that is not for us.
        let mut n = table(64);
        let _ = receive(&mut n, Side::Lan, &request((HOST_MAC, ip), lan().ip), 0);
        let dead = REACHABLE_MS + STALE_MS;
        let _ = receive(&mut n, Side::Lan, &request((HOST_MAC, ip), ip), dead);
        assert_eq!(n.resolve(Side::Lan, ip, dead + 1), Resolved::Ask);
    }

    #[test]
    fn off_link_next_hops_are_not_asked_for() {
        let mut n = table(64);
        for ip in [
            Ipv4Addr::new(10, 0, 0, 1),
            lan().ip,
            lan_host(0),
            lan_host(255),
            Ipv4Addr::BROADCAST,
        ] {
            assert_eq!(n.resolve(Side::Lan, ip, 0), Resolved::OffLink, "{ip}");
        }
        assert!(n.is_empty());
        // The subnet holds what is not a neighbour too: ours, network, broadcast.
        for ip in [lan().ip, lan_host(0), lan_host(255), lan_host(10)] {
            assert!(lan().in_subnet(ip), "{ip}");
        }
        assert!(!lan().in_subnet(Ipv4Addr::new(192, 168, 2, 1)));
        // On a /30 the network and broadcast addresses are not neighbours; on a /31 both
        // addresses are hosts (RFC 3021).
        assert_eq!(
            n.resolve(Side::Wan, Ipv4Addr::new(203, 0, 113, 3), 0),
            Resolved::OffLink
        );
        let p2p = Own {
            mac: WAN_MAC,
            ip: Ipv4Addr::new(203, 0, 113, 0),
            prefix_len: 31,
        };
        assert!(p2p.on_link(Ipv4Addr::new(203, 0, 113, 1)));
        assert!(!p2p.on_link(Ipv4Addr::new(203, 0, 113, 2)));
        let huge = Own {
            prefix_len: 200,
            ..p2p
        };
        assert!(!huge.on_link(Ipv4Addr::new(203, 0, 113, 1)));
        let everything = Own {
            prefix_len: 0,
            ..p2p
        };
        assert!(everything.on_link(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn requests_are_broadcast_or_unicast_from_our_address() {
        let n = table(64);
        let mut out = [0u8; FRAME_LEN];
        let target = Ipv4Addr::new(203, 0, 113, 1);
        for to in [None, Some(OTHER_MAC)] {
            n.request(Side::Wan, target, to, &mut out);
            let p = parse(&out).expect("the request parses");
            assert_eq!(
                (p.dst_mac, p.src_mac),
                (to.unwrap_or(EthernetAddress::BROADCAST), WAN_MAC)
            );
            assert_eq!(
                p.payload,
                Payload::Arp(Arp {
                    op: ArpOperation::Request,
                    sender_mac: WAN_MAC,
                    sender_ip: wan().ip,
                    target_mac: EthernetAddress([0; 6]),
                    target_ip: target,
                })
            );
        }
    }

    #[test]
    fn a_full_set_replaces_the_dead_then_the_oldest() {
        // One set: the table is fully associative, so which entry goes is exact.
        let mut n = table(WAYS);
        assert_eq!(n.capacity(), WAYS);
        let learn = |n: &mut Neighbours, last: u8, now: u64| {
            let a = request((HOST_MAC, lan_host(last)), lan().ip);
            let _ = receive(n, Side::Lan, &a, now);
        };
        for i in 0..WAYS as u8 {
            learn(&mut n, 10 + i, u64::from(i));
        }
        assert_eq!(n.len(), WAYS);
        learn(&mut n, 100, 50);
        assert_eq!(n.len(), WAYS);
        assert_eq!(
            n.resolve(Side::Lan, lan_host(10), 51),
            Resolved::Ask,
            "the oldest"
        );
        // That Ask took the place of the next oldest (host 11).
        assert_eq!(n.resolve(Side::Lan, lan_host(11), 51), Resolved::Ask);
        for i in 2..WAYS as u8 {
            assert_eq!(
                n.resolve(Side::Lan, lan_host(10 + i), 52),
                Resolved::Mac(HOST_MAC)
            );
        }
        // Host 11's request is still pending and dies at 51 + PENDING_MS; host 10's pending
        // request, which replaced host 12 (the oldest then), too. Once they are dead, new
        // entries go there and not over the live, older host 13.
        let later = 51 + PENDING_MS;
        learn(&mut n, 101, later);
        learn(&mut n, 102, later);
        for last in [13, 100, 101, 102] {
            assert_eq!(
                n.resolve(Side::Lan, lan_host(last), later),
                Resolved::Mac(HOST_MAC),
                "{last}"
            );
        }
    }

    #[test]
    fn capacity_rounds_up_to_whole_sets() {
        assert_eq!(table(0).capacity(), WAYS);
        assert_eq!(table(WAYS + 1).capacity(), 2 * WAYS);
        assert_eq!(table(1024).capacity(), 1024);
    }

    proptest::proptest! {
        /// Random ARP traffic on both sides and random lookups: nothing panics, the table
        /// never holds more than its capacity, a MAC handed out is the last one its address
        /// sent, and a reply only ever answers a request for our address.
        #[test]
        fn random_traffic_keeps_the_table_sound(
            events in proptest::collection::vec(
                (
                    proptest::bool::ANY,       // side is the LAN
                    0u8..4,                    // 0 request, 1 reply, 2 other op, 3 resolve
                    0u8..40,                   // sender address (last octet)
                    proptest::bool::ANY,       // target is ours
                    0u8..4,                    // sender MAC
                    0u64..5_000,               // time step
                ),
                1..200,
            ),
        ) {
            let mut n = table(16);
            let mut now = 0;
            let mut sent: HashMap<(Side, Ipv4Addr), EthernetAddress> = HashMap::new();
            for (lan_side, op, last, to_us, mac, step) in events {
                now += step;
                let side = if lan_side { Side::Lan } else { Side::Wan };
                let own = *n.own(side);
                let base = u32::from(own.ip) & !0xff;
                let ip = Ipv4Addr::from(base | u32::from(last));
                let mac = EthernetAddress([0x02, 0, 0, 0, 1, mac]);
                if op == 3 {
                    match n.resolve(side, ip, now) {
                        Resolved::Mac(m) | Resolved::MacAndAsk(m) => {
                            proptest::prop_assert_eq!(sent.get(&(side, ip)), Some(&m));
                        }
                        Resolved::OffLink => proptest::prop_assert!(!own.on_link(ip)),
                        Resolved::Ask | Resolved::Wait => {}
                    }
                } else {
                    let op = [ArpOperation::Request, ArpOperation::Reply, ArpOperation::Unknown(9)]
                        [usize::from(op)];
                    let target = if to_us { own.ip } else { lan_host(7) };
                    let a = arp(op, (mac, ip), target);
                    let mut out = [0u8; FRAME_LEN];
                    let replied = n.receive(side, EthernetAddress::BROADCAST, &a, now, &mut out);
                    proptest::prop_assert_eq!(
                        replied,
                        to_us && op == ArpOperation::Request && ip != own.ip
                    );
                    if own.on_link(ip) {
                        sent.insert((side, ip), mac);
                    }
                }
                proptest::prop_assert!(n.len() <= n.capacity());
            }
        }
    }

    #[test]
    fn hashing_spreads_a_subnet_over_the_sets() {
        // 254 hosts in 1024 slots (128 sets of 8): all fit, none pushed out by its set filling.
        let mut n = table(1024);
        for last in 1..=254u8 {
            if last == 1 {
                continue; // ours
            }
            let a = request((HOST_MAC, lan_host(last)), lan().ip);
            let _ = receive(&mut n, Side::Lan, &a, 0);
        }
        let known: Vec<u8> = (2..=254u8)
            .filter(|&l| n.resolve(Side::Lan, lan_host(l), 1) == Resolved::Mac(HOST_MAC))
            .collect();
        assert_eq!(known.len(), 253);
    }
}

//! Source and destination NAT: the policy's `nat` section as a [`NatPlan`], the external port
//! each new flow gets, and the in-place header rewrite with incremental checksums ([`rewrite`]).
//!
//! The rules mean what the kernel plane's `dstnat` / `srcnat` chains mean (`nft::compile`):
//! - DNAT: the first rule, in policy order, whose protocol, `wan_ip`, `wan_port` and `from`
//!   match, whatever the input interface. Applied to a flow's first packet before the filter
//!   (SPEC §3, §8): [`NatPlan::dnat`].
//! - SNAT: the first rule whose `out_interface` and `source` match, after the filter:
//!   [`NatPlan::snat`]. Masquerade takes the egress interface's address from the caller. TCP and
//!   UDP ports come from the rule's `port_range`, else 16384-60999 (SPEC §8); ICMP echo ids from
//!   16384-60999 whatever the range says, since the kernel plane applies it to TCP and UDP only.
//!   Linux keeps a source port that is free; SPEC §8 asks for the pool, so ports are always mapped.
//!
//! Choosing a port: a keyed hash of the flow's original tuple picks a start in the range, then
//! linear probing takes the first port whose reply tuple no live flow of the connection table
//! holds ([`Conntrack::holds`]), looking at no more than [`MAX_PROBES`] ports. The connection
//! table is the only record of which ports are in use, rather than a bitmap per pool, because:
//! - nothing has to be released or kept in step: a port is free the moment its flow's entry is
//!   dead, whichever of `track`, `open` or `sweep` notices; a bitmap would need every removal
//!   reported back and would leak a port for each one missed. The caller calls nothing when an
//!   entry goes;
//! - it matches the kernel: a port is in use per remote endpoint, so one external port serves
//!   flows to different remote (address, port) pairs, whose reply tuples differ. The pool per
//!   (external ip, protocol) is exhausted, for one remote endpoint, when every port of the range
//!   has a flow to it, or [`MAX_PROBES`] in a row do when the range is longer than that (the
//!   kernel likewise gives up after a bounded number of tries); the probe bound keeps the cost of
//!   a new flow bounded when a host crowds one endpoint. `benches/nat.rs` measures it: about
//!   0.4 µs with half the pool in use, 6 µs at 90%, where 21 in 40,154 new flows are refused;
//! - the same tuple keeps its port while its flow lives, because later packets take their
//!   translation from the entry ([`Hit::other`](super::conntrack::Hit::other)); after the flow
//!   ends, the tuple hashes to the same start, so it gets the same port again if that is free.
//!
//! Ports that a DNAT rule forwards on the same address and protocol are never handed out, so an
//! outbound flow's reply tuple can never capture a port-forward's first packet.
//!
//! `dnat_no_backend` cannot arise here: each DNAT rule of the policy model has exactly one `to`,
//! of its `wan_ip`'s family (the validator checks), so a packet that matches a rule always
//! translates, and one that matches none is not port-forwarded at all: it is for the firewall
//! itself (input), as in the kernel plane. Whether `to` is reachable is for forwarding to say.
//!
//! Protocols without ports (GRE, ESP and the rest) are translated by address alone, as the
//! kernel's NAT does without a PPTP helper: there is no port to choose, so a second flow whose
//! reply tuple would be another live flow's is refused by the connection table (the kernel
//! drops it when it confirms the connection). The kernel refuses to translate a GRE packet
//! shorter than 8 bytes, and to translate the destination of one whose version is not 0 or 1
//! (`gre_manip_pkt`): so does [`rewrite`], and [`translatable`] says so before a flow opens.
//!
//! The validator accepts IPv6 SNAT and DNAT (each rule within one family), so both families are
//! handled here, though the engine may drop IPv6 before NAT (SPEC §3). Not translated: ICMP
//! errors, which are not yet related to flows, and ICMPv6 neighbour discovery, which is not
//! tracked.

use super::conntrack::{Conntrack, Tuple};
use super::packet::{proto, Ip, L4};
use super::DropReason;
use ::core::net::{IpAddr, SocketAddr};
use alloc::string::String;
use alloc::vec::Vec;

/// Ports (and ICMP echo ids) SNAT uses when a rule gives no range (SPEC §8).
pub const DEFAULT_PORTS: PortRange = PortRange {
    lo: 16_384,
    hi: 60_999,
};

/// Most ports looked at for one new flow; a range no longer than this is searched whole.
pub const MAX_PROBES: u32 = 256;

/// Inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// Port 0 is never handed out, and a reversed range means the same ports.
    fn normalised(self) -> PortRange {
        let (lo, hi) = (self.lo.min(self.hi).max(1), self.lo.max(self.hi).max(1));
        PortRange { lo, hi }
    }

    /// 1..=65535 for a normalised range.
    fn len(&self) -> u32 {
        u32::from(self.hi - self.lo) + 1
    }
}

/// An address prefix; host bits are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `len` beyond the address's width means the whole address.
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let masked = u32::from(a) & mask32(len);
                Prefix {
                    addr: IpAddr::V4(masked.into()),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let masked = u128::from(a) & mask128(len);
                Prefix {
                    addr: IpAddr::V6(masked.into()),
                    len,
                }
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// A port-forward: new TCP or UDP flows to `wan_ip:wan_port` (from `from`) go to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnatRule {
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    pub wan_ip: IpAddr,
    pub wan_port: u16,
    /// `None`: from anywhere.
    pub from: Option<Prefix>,
    pub to: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatTo {
    /// The egress interface's own address, passed to [`NatPlan::snat`].
    Masquerade,
    /// A fixed address; `ports` (TCP and UDP only) defaults to [`DEFAULT_PORTS`].
    Address {
        ip: IpAddr,
        ports: Option<PortRange>,
    },
}

/// Flows from `source` leaving on `out_interface` get the source address (and port) of `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatRule {
    pub out_interface: String,
    pub source: Prefix,
    pub to: SnatTo,
}

/// An interface as SNAT knows it: one that a rule names, or [`NatIface::UNLISTED`]. Resolve
/// names once with [`NatPlan::iface`] (again after each recompile), not per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatIface(pub u32);

impl NatIface {
    /// An interface no SNAT rule names: nothing leaving on it is translated.
    pub const UNLISTED: NatIface = NatIface(u32::MAX);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snat {
    iface: NatIface,
    source: Prefix,
    to: SnatTo,
}

/// What NAT makes of a new flow: the two tuples for [`Conntrack::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The tuple the first packet arrived with.
    pub orig: Tuple,
    /// The tuple its replies will arrive with.
    pub reply: Tuple,
}

impl Translation {
    /// Nothing translated.
    pub fn identity(orig: Tuple) -> Translation {
        Translation {
            orig,
            reply: orig.reversed(),
        }
    }

    /// The tuple the packet leaves with, what [`rewrite`] turns it into. After
    /// [`NatPlan::dnat`] alone it is also what the filter judges: the real inside destination.
    pub fn onward(&self) -> Tuple {
        self.reply.reversed()
    }

    pub fn is_identity(&self) -> bool {
        self.reply == self.orig.reversed()
    }
}

/// The policy's NAT rules, ready for the packet path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatPlan {
    /// Sorted by (protocol, wan ip, wan port) for binary search, policy order kept among equal
    /// keys (a stable sort), so the first match found is the first in the policy.
    dnat: Vec<DnatRule>,
    /// Policy order.
    snat: Vec<Snat>,
    /// Every interface an SNAT rule names, sorted: a [`NatIface`] indexes it.
    ifaces: Vec<String>,
    key: (u64, u64),
}

impl NatPlan {
    /// `hash_key` must be random and secret (from the OS at start-up): with a known key, a LAN
    /// host could choose tuples that all start probing at the same port.
    pub fn new(dnat: Vec<DnatRule>, snat: Vec<SnatRule>, hash_key: [u64; 2]) -> NatPlan {
        let mut dnat = dnat;
        dnat.sort_by_key(|r| (r.proto, r.wan_ip, r.wan_port));
        let mut ifaces: Vec<String> = snat.iter().map(|r| r.out_interface.clone()).collect();
        ifaces.sort();
        ifaces.dedup();
        let mut plan = NatPlan {
            dnat,
            snat: Vec::new(),
            ifaces,
            key: (hash_key[0], hash_key[1]),
        };
        plan.snat = snat
            .iter()
            .map(|r| Snat {
                iface: plan.iface(&r.out_interface),
                source: r.source,
                to: match r.to {
                    SnatTo::Address { ip, ports } => SnatTo::Address {
                        ip,
                        ports: ports.map(PortRange::normalised),
                    },
                    SnatTo::Masquerade => SnatTo::Masquerade,
                },
            })
            .collect();
        plan
    }

    /// The interface's id for [`NatPlan::snat`]; [`NatIface::UNLISTED`] when no rule names it.
    pub fn iface(&self, name: &str) -> NatIface {
        match self.ifaces.binary_search_by(|n| n.as_str().cmp(name)) {
            Ok(i) => u32::try_from(i).map_or(NatIface::UNLISTED, NatIface),
            Err(_) => NatIface::UNLISTED,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dnat.is_empty() && self.snat.is_empty()
    }

    /// Destination NAT for the first packet of a flow, before the filter: the translation's
    /// [`Translation::onward`] tuple is what the filter judges and routing sends on.
    pub fn dnat(&self, tuple: &Tuple) -> Translation {
        let mut t = Translation::identity(*tuple);
        if let Some(rule) = self.dnat_rule(tuple) {
            t.reply.src = rule.to.ip();
            t.reply.sport = rule.to.port();
        }
        t
    }

    fn dnat_rule(&self, tuple: &Tuple) -> Option<&DnatRule> {
        let key = (tuple.proto, tuple.dst, tuple.dport);
        let first = self
            .dnat
            .partition_point(|r| (r.proto, r.wan_ip, r.wan_port) < key);
        self.dnat
            .get(first..)?
            .iter()
            .take_while(|r| (r.proto, r.wan_ip, r.wan_port) == key)
            .find(|r| r.from.is_none_or(|f| f.contains(tuple.src)))
    }

    /// Whether some DNAT rule forwards this port: SNAT leaves it alone.
    fn forwarded(&self, proto: u8, ip: IpAddr, port: u16) -> bool {
        let key = (proto, ip, port);
        self.dnat
            .binary_search_by(|r| (r.proto, r.wan_ip, r.wan_port).cmp(&key))
            .is_ok()
    }

    /// Source NAT for a flow the filter accepted, leaving on `out`, after [`NatPlan::dnat`]
    /// made `t`: picks the external address and port and sets `t.reply` to match. `out_addr` is
    /// `out`'s address in the packet's family, for masquerade. `ct` is read to find a port no
    /// live flow uses; `now` is its clock. A flow no rule matches is left as it is.
    ///
    /// `nat_port_pool_exhausted` when no port is free, and also when masquerade has no address
    /// of the packet's family to use (an empty pool), where the kernel drops the packet too.
    pub fn snat(
        &self,
        t: &mut Translation,
        out: NatIface,
        out_addr: Option<IpAddr>,
        ct: &Conntrack,
        now: u64,
    ) -> Result<(), DropReason> {
        const EXHAUSTED: DropReason = DropReason::NatPortPoolExhausted;
        let onward = t.onward();
        let Some(rule) = self
            .snat
            .iter()
            .find(|r| r.iface == out && r.source.contains(onward.src))
        else {
            return Ok(());
        };
        let family = |a: &IpAddr| a.is_ipv4() == onward.src.is_ipv4();
        let (ext, range) = match rule.to {
            SnatTo::Masquerade => (out_addr.filter(family).ok_or(EXHAUSTED)?, DEFAULT_PORTS),
            SnatTo::Address { ip, ports } => {
                let ports = match onward.proto {
                    proto::TCP | proto::UDP => ports.unwrap_or(DEFAULT_PORTS),
                    _ => DEFAULT_PORTS,
                };
                (Some(ip).filter(family).ok_or(EXHAUSTED)?, ports)
            }
        };
        if !has_ports(onward.proto) {
            // Nothing to choose: a clash is for `Conntrack::open` to refuse.
            t.reply = Tuple {
                dst: ext,
                ..onward.reversed()
            };
            return Ok(());
        }
        t.reply = self
            .free_reply(&t.orig, &onward, ext, range, ct, now)
            .ok_or(EXHAUSTED)?;
        Ok(())
    }

    /// A new flow whose reply tuple a live flow already holds (typically its own reverse,
    /// opened first as a flow of its own) gets another source port, or echo id, its address
    /// kept: what the kernel's NAT does for a connection no rule translated when the table
    /// has any NAT chain (the "null binding" of `nf_nat`, `nf_nat_l4proto_unique_tuple`'s
    /// ranges: a port below 512 stays below 512, one below 1024 goes to 600-1023, any other
    /// to 1024-65535; an echo id may become any other). Call it only for a plan that is not empty: without a NAT chain the
    /// kernel drops such a flow, as [`Conntrack::open`] refuses it. The port is the first
    /// free one probing from the tuple's hash, as for SNAT; `nat_port_pool_exhausted` when
    /// none is. A protocol without ports keeps its tuple: the flow clashes, and
    /// [`Conntrack::open`] refuses it, as the kernel drops it.
    pub fn rebind(&self, t: &mut Translation, ct: &Conntrack, now: u64) -> Result<(), DropReason> {
        let onward = t.onward();
        if !has_ports(onward.proto) {
            return Ok(());
        }
        let range = match (onward.proto, onward.sport) {
            (proto::TCP | proto::UDP, 0..=511) => PortRange { lo: 1, hi: 511 },
            (proto::TCP | proto::UDP, 512..=1023) => PortRange { lo: 600, hi: 1023 },
            (proto::TCP | proto::UDP, _) => PortRange {
                lo: 1024,
                hi: 65535,
            },
            _ => PortRange { lo: 1, hi: 65535 },
        };
        t.reply = self
            .free_reply(&t.orig, &onward, onward.src, range, ct, now)
            .ok_or(DropReason::NatPortPoolExhausted)?;
        Ok(())
    }

    /// The reply tuple for the first free port of `range`, probing from where the original
    /// tuple hashes to.
    fn free_reply(
        &self,
        orig: &Tuple,
        onward: &Tuple,
        ext: IpAddr,
        range: PortRange,
        ct: &Conntrack,
        now: u64,
    ) -> Option<Tuple> {
        let len = range.len();
        // Lemire's multiply-shift puts the hash onto the range without a division's bias.
        let start = ((orig.keyed_hash(self.key) >> 32) * u64::from(len)) >> 32;
        let start = u32::try_from(start).unwrap_or(0);
        let ports = matches!(onward.proto, proto::TCP | proto::UDP);
        for i in 0..len.min(MAX_PROBES) {
            let offset = (start + i) % len;
            let port = u16::try_from(u32::from(range.lo) + offset).ok()?;
            if ports && self.forwarded(onward.proto, ext, port) {
                continue;
            }
            let reply = Tuple {
                src: onward.dst,
                dst: ext,
                // An echo reply carries the id in both places (see `Tuple::of`).
                sport: if ports { onward.dport } else { port },
                dport: port,
                proto: onward.proto,
            };
            if !ct.holds(&reply, now) {
                return Some(reply);
            }
        }
        None
    }
}

/// Whether a flow of `proto` has ports (TCP, UDP) or an echo identifier (ICMP, ICMPv6) that
/// NAT may choose; the connection table tracks other protocols by address alone.
fn has_ports(proto: u8) -> bool {
    matches!(proto, proto::TCP | proto::UDP | proto::ICMP | proto::ICMPV6)
}

#[cfg(feature = "std")]
impl NatPlan {
    /// The `nat` section of a validated policy.
    pub fn compile(policy: &policy::Policy, hash_key: [u64; 2]) -> NatPlan {
        let prefix = |n: &ipnet::IpNet| Prefix::new(n.addr(), n.prefix_len());
        let dnat = policy
            .nat
            .dnat
            .iter()
            .map(|d| DnatRule {
                proto: match d.proto {
                    policy::NatProto::Tcp => proto::TCP,
                    policy::NatProto::Udp => proto::UDP,
                },
                wan_ip: d.wan_ip,
                wan_port: d.wan_port,
                from: d.from.as_ref().map(prefix),
                to: d.to,
            })
            .collect();
        let snat = policy
            .nat
            .snat
            .iter()
            .map(|s| SnatRule {
                out_interface: s.out_interface.clone(),
                source: prefix(&s.source),
                to: match s.to {
                    policy::SnatTo::Masquerade => SnatTo::Masquerade,
                    policy::SnatTo::Address { ip, port_range } => SnatTo::Address {
                        ip,
                        ports: port_range.map(|r| PortRange { lo: r.lo, hi: r.hi }),
                    },
                },
            })
            .collect();
        NatPlan::new(dnat, snat, hash_key)
    }
}

/// Rewrites a frame's IP addresses and ports (ICMP echo: the identifier) in place so that its
/// packet, parsed as `ip`, carries `to`, and updates the IPv4 header checksum and the TCP, UDP
/// or ICMP checksum incrementally (RFC 1624), never reading the payload. `to` is
/// [`Translation::onward`] for a flow's first packet, `hit.other.reversed()` for the rest.
///
/// For packets without ports in their tuple (ICMP other than echo, GRE and the rest) the
/// ports of `to` are ignored and only the addresses change. `malformed_packet` when `to` is
/// of another protocol or family than the packet, or `ip` does not describe this frame (both
/// the caller's mistakes), or a GRE packet the kernel would not translate either (see
/// [`translatable`]): the frame is then left unchanged.
pub fn rewrite(frame: &mut [u8], ip: &Ip, to: &Tuple) -> Result<(), DropReason> {
    const BAD: DropReason = DropReason::MalformedPacket;
    translatable(frame, ip, to)?;
    let (l3, l4) = (ip.offsets.l3, ip.offsets.l4);
    let v4 = ip.src.is_ipv4();
    let packet = frame.get_mut(..ip.offsets.end).ok_or(BAD)?;
    // Where the L4 checksum is, and whether it covers the pseudo-header's addresses.
    let (checksum, pseudo) = match ip.proto {
        proto::TCP => (Some(l4 + 16), true),
        proto::UDP => (Some(l4 + 6), true),
        proto::ICMP if v4 => (Some(l4 + 2), false),
        proto::ICMPV6 if !v4 => (Some(l4 + 2), true),
        _ => (None, false),
    };
    let ports = match ip.l4 {
        L4::Tcp { .. } | L4::Udp { .. } => Ports::Two,
        L4::Icmp {
            echo_id: Some(_), ..
        } if to.sport == to.dport => Ports::EchoId,
        L4::Icmp {
            echo_id: Some(_), ..
        } => return Err(BAD),
        L4::Icmp { echo_id: None, .. } | L4::Gre { .. } | L4::Other => Ports::None,
    };
    let (src_at, dst_at) = if v4 {
        (l3 + 12, l3 + 16)
    } else {
        (l3 + 8, l3 + 24)
    };
    // Check every place before writing any, so a refused rewrite leaves the frame as it was.
    let l4_end = match ports {
        Ports::Two => l4 + 4,
        Ports::EchoId => l4 + 6,
        Ports::None => l4,
    };
    let needed = [dst_at + if v4 { 4 } else { 16 }, l3 + 12, l4_end]
        .into_iter()
        .chain(checksum.map(|c| c + 2));
    if needed.into_iter().any(|n| n > packet.len()) {
        return Err(BAD);
    }

    let mut addrs = Delta::default();
    for (at, new) in [(src_at, to.src), (dst_at, to.dst)] {
        match new {
            IpAddr::V4(a) => replace(packet, at, &a.octets(), &mut addrs)?,
            IpAddr::V6(a) => replace(packet, at, &a.octets(), &mut addrs)?,
        }
    }
    let mut l4_delta = Delta::default();
    match ports {
        Ports::Two => {
            replace(packet, l4, &to.sport.to_be_bytes(), &mut l4_delta)?;
            replace(packet, l4 + 2, &to.dport.to_be_bytes(), &mut l4_delta)?;
        }
        Ports::EchoId => replace(packet, l4 + 4, &to.sport.to_be_bytes(), &mut l4_delta)?,
        Ports::None => {}
    }
    if v4 {
        update_checksum(packet, l3 + 10, addrs, false)?;
    }
    if let Some(at) = checksum {
        if pseudo {
            l4_delta.add(addrs);
        }
        let udp = ip.proto == proto::UDP;
        // An IPv4 UDP checksum of 0 means none was sent (RFC 768): there is nothing to update.
        if !(udp && v4 && read16(packet, at)? == 0) {
            update_checksum(packet, at, l4_delta, udp)?;
        }
    }
    Ok(())
}

/// Whether [`rewrite`] can make the packet in `frame` (parsed as `ip`) carry `to`: `to` is of
/// the packet's protocol and family, and a GRE packet is one the kernel's NAT would rewrite
/// (at least the 8 bytes `gre_manip_pkt` makes writable when anything changes; version 0 or
/// 1 when its destination changes, as only those two it knows how to translate). Checked
/// before a flow opens, so that a first packet the translation would drop opens none (the
/// kernel drops it before its connection is confirmed). `malformed_packet` otherwise.
pub fn translatable(frame: &[u8], ip: &Ip, to: &Tuple) -> Result<(), DropReason> {
    const BAD: DropReason = DropReason::MalformedPacket;
    let v4 = ip.src.is_ipv4();
    if to.proto != ip.proto || to.src.is_ipv4() != v4 || to.dst.is_ipv4() != v4 {
        return Err(BAD);
    }
    if let L4::Gre { .. } = ip.l4 {
        let (src, dst) = (to.src != ip.src, to.dst != ip.dst);
        let header = frame.get(ip.offsets.l4..ip.offsets.end).unwrap_or_default();
        if (src || dst) && header.len() < 8 {
            return Err(BAD);
        }
        if dst && !matches!(header.get(1).map(|flags| flags & 0x07), Some(0 | 1)) {
            return Err(BAD);
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Ports {
    /// TCP or UDP source and destination ports.
    Two,
    /// An ICMP echo identifier: the tuple's two ports, which are equal.
    EchoId,
    None,
}

// Incremental checksum helpers, private to NAT for now; the forwarding path needs the same
// for the TTL, and the two will become one shared module.

/// The part of RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), that sums `~m + m'` over changed
/// 16-bit words. Words that did not change are left out: adding ~m + m = 0xFFFF (-0) would not
/// change the value but could flip a checksum between its two representations of zero.
#[derive(Clone, Copy, Default)]
struct Delta {
    /// At most 20 changed words of 0x1FFFE each, far below `u32::MAX`.
    sum: u32,
    changed: bool,
}

impl Delta {
    fn word(&mut self, old: u16, new: u16) {
        if old != new {
            self.sum += u32::from(!old) + u32::from(new);
            self.changed = true;
        }
    }

    fn add(&mut self, other: Delta) {
        self.sum += other.sum;
        self.changed |= other.changed;
    }

    /// The checksum `check` becomes.
    fn apply(self, check: u16) -> u16 {
        let mut sum = u32::from(!check) + self.sum;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // The fold leaves at most 0xffff.
        !(sum as u16)
    }
}

/// Writes `new` (an even number of bytes, at an even offset from the start of what the
/// checksum covers) over the frame's bytes at `at`, adding the change to `delta`.
fn replace(frame: &mut [u8], at: usize, new: &[u8], delta: &mut Delta) -> Result<(), DropReason> {
    let old = frame
        .get_mut(at..at + new.len())
        .ok_or(DropReason::MalformedPacket)?;
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        if let ([o0, o1], [n0, n1]) = (o, n) {
            delta.word(
                u16::from_be_bytes([*o0, *o1]),
                u16::from_be_bytes([*n0, *n1]),
            );
        }
    }
    old.copy_from_slice(new);
    Ok(())
}

fn read16(frame: &[u8], at: usize) -> Result<u16, DropReason> {
    match frame.get(at..at + 2) {
        Some([a, b]) => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DropReason::MalformedPacket),
    }
}

/// Applies `delta` to the checksum at `at`. `udp`: a result of 0 is sent as 0xFFFF, its other
/// representation, since 0 would mean "no checksum" (RFC 768).
fn update_checksum(frame: &mut [u8], at: usize, delta: Delta, udp: bool) -> Result<(), DropReason> {
    if !delta.changed {
        return Ok(());
    }
    let mut check = delta.apply(read16(frame, at)?);
    if udp && check == 0 {
        check = 0xffff;
    }
    frame
        .get_mut(at..at + 2)
        .ok_or(DropReason::MalformedPacket)?
        .copy_from_slice(&check.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conntrack::{Dir, State, Timeouts};
    use crate::core::packet::{parse, Payload, TcpFlags};
    use ::core::net::{Ipv4Addr, Ipv6Addr};
    use alloc::vec;
    use proptest::prelude::*;
    use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, IpAddress, Ipv4Packet, TcpPacket, UdpPacket};
    use std::collections::BTreeSet;

    const KEY: [u64; 2] = [0x0bad_cafe_dead_beef, 0x0123_4567_89ab_cdef];
    const SEC: u64 = 1000;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn plan(yaml: &str) -> NatPlan {
        match policy::parse_str(yaml, "test.yaml") {
            Ok(c) => NatPlan::compile(&c.policy, KEY),
            Err(e) => panic!("{e}"),
        }
    }

    fn table() -> Conntrack {
        Conntrack::new(64, Timeouts::default(), KEY)
    }

    fn tuple(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> Tuple {
        Tuple {
            src,
            dst,
            sport,
            dport,
            proto,
        }
    }

    const LAN_HOST: [u8; 4] = [192, 168, 1, 10];
    const WAN_ADDR: [u8; 4] = [198, 51, 100, 1];
    const REMOTE: [u8; 4] = [203, 0, 113, 5];

    fn ip4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    const MASQUERADE: &str = "
nat:
  snat:
    - {out_interface: eth0, source: 192.168.1.0/24, masquerade: true}
";

    /// SNAT on `eth0` with masquerade address `WAN_ADDR`.
    fn snat(p: &NatPlan, ct: &Conntrack, orig: Tuple, now: u64) -> Result<Translation, DropReason> {
        let mut t = p.dnat(&orig);
        p.snat(&mut t, p.iface("eth0"), Some(ip4(WAN_ADDR)), ct, now)?;
        Ok(t)
    }

    #[test]
    fn masquerade_takes_the_egress_address_and_a_default_pool_port() {
        let p = plan(MASQUERADE);
        let ct = table();
        let orig = tuple(ip4(LAN_HOST), 40000, ip4(REMOTE), 443, proto::TCP);
        let t = snat(&p, &ct, orig, 0).unwrap();
        assert_eq!(t.orig, orig);
        let port = t.reply.dport;
        assert!((16_384..=60_999).contains(&port), "{port}");
        assert_eq!(
            t.reply,
            tuple(ip4(REMOTE), 443, ip4(WAN_ADDR), port, proto::TCP)
        );
        assert_eq!(t.onward().src, ip4(WAN_ADDR));

        // Leaving on another interface, or from outside the source prefix: untouched.
        let mut other = p.dnat(&orig);
        p.snat(&mut other, p.iface("eth1"), Some(ip4(WAN_ADDR)), &ct, 0)
            .unwrap();
        assert!(other.is_identity());
        let outsider = tuple(v4(10, 0, 0, 1), 40000, ip4(REMOTE), 443, proto::TCP);
        assert!(snat(&p, &ct, outsider, 0).unwrap().is_identity());

        // No address of the packet's family to masquerade to: an empty pool.
        for addr in [None, Some(IpAddr::V6(Ipv6Addr::LOCALHOST))] {
            let mut t = p.dnat(&orig);
            assert_eq!(
                p.snat(&mut t, p.iface("eth0"), addr, &ct, 0),
                Err(DropReason::NatPortPoolExhausted)
            );
        }
    }

    #[test]
    fn protocols_without_ports_are_translated_by_address_alone() {
        let p = plan(MASQUERADE);
        let mut ct = table();
        for (proto, key) in [(50, 0), (proto::GRE, 0), (proto::GRE, 0x1234)] {
            let orig = tuple(ip4(LAN_HOST), 0, ip4(REMOTE), key, proto);
            let t = snat(&p, &ct, orig, 0).unwrap();
            assert_eq!(t.reply, tuple(ip4(REMOTE), key, ip4(WAN_ADDR), 0, proto));
            assert_eq!(t.onward(), tuple(ip4(WAN_ADDR), 0, ip4(REMOTE), key, proto));
        }
        // A second inside host meets the first one's reply tuple: nothing to choose, so the
        // translation stays and the connection table refuses it.
        let first = snat(&p, &ct, tuple(ip4(LAN_HOST), 0, ip4(REMOTE), 0, 50), 0).unwrap();
        ct.open(first.orig, first.reply, State::Generic, None, 0)
            .unwrap();
        let second = tuple(v4(192, 168, 1, 11), 0, ip4(REMOTE), 0, 50);
        let mut t = snat(&p, &ct, second, 0).unwrap();
        assert_eq!(t.reply, first.reply);
        assert_eq!(p.rebind(&mut t, &ct, 0), Ok(()));
        assert_eq!(t.reply, first.reply);
        assert!(ct.holds(&t.reply, 0));
    }

    /// An IPv4 frame of `proto` carrying `payload`.
    fn frame_of(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45, 0,
        ];
        f.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&LAN_HOST);
        f.extend_from_slice(&REMOTE);
        f.extend_from_slice(payload);
        Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
        f
    }

    #[test]
    fn gre_is_rewritten_where_the_kernel_rewrites_it() {
        let masq = tuple(ip4(WAN_ADDR), 0, ip4(REMOTE), 0, proto::GRE);
        let demasq = tuple(ip4(LAN_HOST), 0, ip4(WAN_ADDR), 0, proto::GRE);
        let v0 = [0, 0, 0x08, 0x00, 1, 2, 3, 4, 5];
        for (payload, src_ok, dst_ok) in [
            (&v0[..], true, true),
            (&v0[..8], true, true),
            // Shorter than 8 bytes: never.
            (&v0[..7], false, false),
            (&v0[..0], false, false),
            // Versions the kernel cannot translate back: only the source.
            (&[0, 2, 0x08, 0x00, 1, 2, 3, 4][..], true, false),
            (&[0, 7, 0x08, 0x00, 1, 2, 3, 4][..], true, false),
            // PPTP: both.
            (&[0x30, 0x81, 0x88, 0x0b, 0, 0, 0, 0][..], true, true),
        ] {
            for (to, ok) in [(masq, src_ok), (demasq, dst_ok)] {
                let mut f = frame_of(proto::GRE, payload);
                let ip = parsed(&f);
                let before = f.clone();
                let want = if ok {
                    Ok(())
                } else {
                    Err(DropReason::MalformedPacket)
                };
                assert_eq!(translatable(&f, &ip, &to), want, "{payload:?} to {to:?}");
                assert_eq!(rewrite(&mut f, &ip, &to), want, "{payload:?} to {to:?}");
                if ok {
                    let after = parsed(&f);
                    assert_eq!((after.src, after.dst), (to.src, to.dst));
                    assert_eq!(f[34..], before[34..], "GRE itself untouched");
                    assert!(Ipv4Packet::new_unchecked(&f[14..34]).verify_checksum());
                } else {
                    assert_eq!(f, before);
                }
            }
        }
        // Nothing changed: nothing refused, whatever the packet.
        let f = frame_of(proto::GRE, &[0, 2]);
        let ip = parsed(&f);
        let same = tuple(ip4(LAN_HOST), 0, ip4(REMOTE), 0, proto::GRE);
        assert_eq!(translatable(&f, &ip, &same), Ok(()));
    }

    const FIXED: &str = "
nat:
  snat:
    - {out_interface: eth0, source: 192.168.1.0/24, external_ip: 203.0.113.10,
       port_range: {min: 20000, max: 20003}}
";

    #[test]
    fn a_fixed_address_uses_its_range_for_tcp_and_udp_and_the_default_for_echo_ids() {
        let p = plan(FIXED);
        let ct = table();
        let ext = v4(203, 0, 113, 10);
        for proto in [proto::TCP, proto::UDP] {
            let t = snat(
                &p,
                &ct,
                tuple(ip4(LAN_HOST), 5000, ip4(REMOTE), 53, proto),
                0,
            )
            .unwrap();
            assert_eq!((t.reply.dst, t.reply.sport), (ext, 53));
            assert!((20_000..=20_003).contains(&t.reply.dport));
        }
        let echo = tuple(ip4(LAN_HOST), 77, ip4(REMOTE), 77, proto::ICMP);
        let t = snat(&p, &ct, echo, 0).unwrap();
        assert_eq!(t.reply.dst, ext);
        assert_eq!(t.reply.sport, t.reply.dport, "an echo reply carries one id");
        assert!((16_384..=60_999).contains(&t.reply.dport));
    }

    const DNAT: &str = "
nat:
  dnat:
    - {wan_ip: 203.0.113.1, wan_port: 8080, to: '192.168.1.10:80', proto: tcp,
       from: 198.51.100.0/24}
    - {wan_ip: 203.0.113.1, wan_port: 8080, to: '192.168.1.11:80', proto: tcp}
    - {wan_ip: 203.0.113.1, wan_port: 53, to: '192.168.1.12:5353', proto: udp}
    - {wan_ip: 203.0.113.1, wan_port: 2222, to: '192.168.1.13:22', proto: tcp, from: 10.0.0.0/8}
";

    #[test]
    fn dnat_with_and_without_from_first_rule_in_policy_order() {
        let p = plan(DNAT);
        let wan = v4(203, 0, 113, 1);
        let onward = |src: IpAddr, dport: u16, proto: u8| {
            let t = p.dnat(&tuple(src, 5555, wan, dport, proto));
            (t.onward().dst, t.onward().dport)
        };
        let inside = |last: u8, port: u16| (v4(192, 168, 1, last), port);
        // `from` matches: the first rule; otherwise the second, which has none.
        assert_eq!(
            onward(v4(198, 51, 100, 7), 8080, proto::TCP),
            inside(10, 80)
        );
        assert_eq!(onward(v4(8, 8, 8, 8), 8080, proto::TCP), inside(11, 80));
        assert_eq!(onward(v4(8, 8, 8, 8), 53, proto::UDP), inside(12, 5353));
        // Another protocol, port, or address, or a `from` that does not match: for the firewall.
        assert_eq!(onward(v4(8, 8, 8, 8), 8080, proto::UDP), (wan, 8080));
        assert_eq!(onward(v4(8, 8, 8, 8), 53, proto::TCP), (wan, 53));
        assert_eq!(onward(v4(8, 8, 8, 8), 2222, proto::TCP), (wan, 2222));
        assert_eq!(onward(v4(10, 1, 2, 3), 2222, proto::TCP), inside(13, 22));
        let elsewhere = p.dnat(&tuple(
            v4(8, 8, 8, 8),
            1,
            v4(203, 0, 113, 2),
            8080,
            proto::TCP,
        ));
        assert!(elsewhere.is_identity());

        // The translation the connection table gets: the reply comes from the inside server
        // and leaves again as if from the WAN address.
        let orig = tuple(v4(8, 8, 8, 8), 5555, wan, 8080, proto::TCP);
        let t = p.dnat(&orig);
        assert_eq!(
            t.reply,
            tuple(v4(192, 168, 1, 11), 80, v4(8, 8, 8, 8), 5555, proto::TCP)
        );
        let mut ct = table();
        ct.open(t.orig, t.reply, State::TcpSynSent, None, 0)
            .unwrap();
        let synack = L4::Tcp {
            sport: 80,
            dport: 5555,
            flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK),
        };
        let hit = ct.track(&t.reply, &synack, SEC).unwrap();
        assert_eq!(
            (hit.dir, hit.other.reversed()),
            (Dir::Reply, orig.reversed())
        );
    }

    #[test]
    fn the_same_tuple_gets_the_same_port_while_its_flow_lives_and_after() {
        let p = plan(MASQUERADE);
        let mut ct = table();
        let orig = tuple(ip4(LAN_HOST), 40000, ip4(REMOTE), 443, proto::UDP);
        let first = snat(&p, &ct, orig, 0).unwrap();
        // A plan compiled again with the same key chooses alike.
        assert_eq!(snat(&plan(MASQUERADE), &ct, orig, 0).unwrap(), first);
        ct.open(first.orig, first.reply, State::UdpUnreplied, None, 0)
            .unwrap();
        // Later packets of the flow are translated from its entry.
        let udp = L4::Udp {
            sport: 40000,
            dport: 443,
        };
        let hit = ct.track(&orig, &udp, 10 * SEC).unwrap();
        assert_eq!(hit.other.reversed(), first.onward());
        // While it lives, the port is not free for anyone else toward that endpoint, the same
        // tuple included (which reaches NAT again only if its entry is gone).
        assert_ne!(snat(&p, &ct, orig, 10 * SEC).unwrap(), first);
        // Once the flow has idled out the tuple hashes to the same, free, port.
        assert_eq!(snat(&p, &ct, orig, 70 * SEC).unwrap(), first);
        // Different tuples spread over the pool.
        let ports: BTreeSet<u16> = (0..32)
            .map(|i| {
                let t = tuple(ip4(LAN_HOST), 1000 + i, ip4(REMOTE), 443, proto::UDP);
                snat(&p, &ct, t, 0).unwrap().reply.dport
            })
            .collect();
        assert!(ports.len() > 24, "{ports:?}");
    }

    #[test]
    fn a_tiny_pool_exhausts_per_remote_endpoint_and_ports_are_reused_once_flows_end() {
        let p = plan(FIXED);
        let mut ct = table();
        let flow = |sport: u16| tuple(ip4(LAN_HOST), sport, ip4(REMOTE), 53, proto::UDP);
        let mut taken = Vec::new();
        for (i, sport) in (1..=4).enumerate() {
            let t = snat(&p, &ct, flow(sport), 0).unwrap();
            // The oldest flow opens first, then one every 10 s.
            let at = i as u64 * 10 * SEC;
            ct.open(t.orig, t.reply, State::UdpUnreplied, None, at)
                .unwrap();
            taken.push(t.reply.dport);
        }
        taken.sort();
        assert_eq!(taken, [20_000, 20_001, 20_002, 20_003]);
        assert_eq!(
            snat(&p, &ct, flow(5), 30 * SEC),
            Err(DropReason::NatPortPoolExhausted)
        );
        // Another remote endpoint has its own reply tuples: the same ports serve it.
        let elsewhere = tuple(ip4(LAN_HOST), 5, ip4(REMOTE), 123, proto::UDP);
        assert!(snat(&p, &ct, elsewhere, 30 * SEC).is_ok());

        // The first flow idles out at 60 s; the sweep removes it (nothing to release) and its
        // port is the one left for the next flow.
        let first = snat(&p, &Conntrack::new(1, Timeouts::default(), KEY), flow(1), 0)
            .unwrap()
            .reply;
        assert_eq!(ct.sweep(60 * SEC, 64), 1);
        let t = snat(&p, &ct, flow(5), 60 * SEC).unwrap();
        assert_eq!(t.reply, first);
        ct.open(t.orig, t.reply, State::UdpUnreplied, None, 60 * SEC)
            .unwrap();
        assert_eq!(
            snat(&p, &ct, flow(6), 60 * SEC),
            Err(DropReason::NatPortPoolExhausted)
        );
        // An expired entry nobody swept frees its port all the same.
        let second_expires = 70 * SEC;
        assert!(snat(&p, &ct, flow(6), second_expires).is_ok());
    }

    #[test]
    fn rebind_moves_the_source_port_within_the_kernels_ranges() {
        let p = plan(MASQUERADE);
        let mut ct = table();
        let (host, remote) = (v4(192, 168, 1, 10), v4(203, 0, 113, 5));
        for (rport, lo, hi) in [(80, 1, 511), (700, 600, 1023), (40_000, 1024, 65_535)] {
            // The host's own flow to the remote port, masqueraded, holds the reverse of...
            let host_flow = tuple(host, 5000, remote, rport, proto::TCP);
            let masqueraded = tuple(remote, rport, v4(198, 51, 100, 1), 20_000, proto::TCP);
            ct.open(host_flow, masqueraded, State::TcpSynSent, None, 0)
                .unwrap_or_else(|e| panic!("{e:?}"));
            // ...the remote's flow to the host, which must move its source port.
            let orig = tuple(remote, rport, host, 5000, proto::TCP);
            let mut t = Translation::identity(orig);
            assert!(ct.holds(&t.reply, 0));
            assert_eq!(p.rebind(&mut t, &ct, 0), Ok(()));
            assert_eq!(t.orig, orig);
            let onward = t.onward();
            assert_eq!((onward.src, onward.dst, onward.dport), (remote, host, 5000));
            assert!(
                (lo..=hi).contains(&onward.sport) && onward.sport != rport,
                "{rport} → {}",
                onward.sport
            );
            assert!(!ct.holds(&t.reply, 0));
        }
        // An echo id may become any other.
        let ping = tuple(host, 7, remote, 7, proto::ICMP);
        ct.open(ping, ping.reversed(), State::IcmpEcho, None, 0)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut t = Translation::identity(ping.reversed());
        assert!(ct.holds(&t.reply, 0));
        assert_eq!(p.rebind(&mut t, &ct, 0), Ok(()));
        assert!(!ct.holds(&t.reply, 0) && t.onward().sport == t.onward().dport);
    }

    #[test]
    fn snat_never_hands_out_a_forwarded_port() {
        let p = plan(
            "
nat:
  snat:
    - {out_interface: eth0, source: 192.168.1.0/24, external_ip: 203.0.113.1,
       port_range: {min: 8080, max: 8081}}
  dnat:
    - {wan_ip: 203.0.113.1, wan_port: 8080, to: '192.168.1.11:80', proto: tcp}
",
        );
        let mut ct = table();
        let flow = |sport| tuple(ip4(LAN_HOST), sport, ip4(REMOTE), 443, proto::TCP);
        let t = snat(&p, &ct, flow(1), 0).unwrap();
        assert_eq!(t.reply.dport, 8081);
        ct.open(t.orig, t.reply, State::TcpSynSent, None, 0)
            .unwrap();
        assert_eq!(
            snat(&p, &ct, flow(2), 0),
            Err(DropReason::NatPortPoolExhausted)
        );
        // UDP 8080 is not forwarded.
        let udp = tuple(ip4(LAN_HOST), 1, ip4(REMOTE), 443, proto::UDP);
        assert!(snat(&p, &ct, udp, 0).is_ok());
    }

    #[test]
    fn ipv6_rules_translate_ipv6_flows_only() {
        let p = plan(
            "
nat:
  snat:
    - {out_interface: eth0, source: 'fd00::/64', external_ip: '2001:db8::1'}
  dnat:
    - {wan_ip: '2001:db8::1', wan_port: 443, to: '[fd00::10]:8443', proto: tcp}
",
        );
        let ct = table();
        let inside: IpAddr = "fd00::5".parse().unwrap();
        let remote: IpAddr = "2001:db8:ffff::9".parse().unwrap();
        let t = snat(&p, &ct, tuple(inside, 1, remote, 80, proto::TCP), 0).unwrap();
        assert_eq!(t.onward().src, "2001:db8::1".parse::<IpAddr>().unwrap());
        // An IPv4 flow from an address the rule cannot hold is left alone.
        assert!(snat(
            &p,
            &ct,
            tuple(ip4(LAN_HOST), 1, ip4(REMOTE), 80, proto::TCP),
            0
        )
        .unwrap()
        .is_identity());
        let d = p.dnat(&tuple(
            remote,
            9,
            "2001:db8::1".parse().unwrap(),
            443,
            proto::TCP,
        ));
        assert_eq!(
            (d.onward().dst, d.onward().dport),
            ("fd00::10".parse().unwrap(), 8443)
        );
    }

    #[test]
    fn prefixes_clear_host_bits_and_keep_to_their_family() {
        let p = Prefix::new(v4(192, 168, 1, 77), 24);
        assert!(p.contains(v4(192, 168, 1, 1)) && p.contains(v4(192, 168, 1, 255)));
        assert!(!p.contains(v4(192, 168, 2, 1)));
        assert!(!p.contains("::ffff:192.168.1.1".parse().unwrap()));
        assert!(Prefix::new(v4(1, 2, 3, 4), 0).contains(v4(255, 0, 0, 1)));
        assert!(!Prefix::new(v4(1, 2, 3, 4), 40).contains(v4(1, 2, 3, 5)));
        let p6 = Prefix::new("fd00::1:2".parse().unwrap(), 64);
        assert!(p6.contains("fd00::ffff:0:0:1".parse().unwrap()));
        assert!(!p6.contains("fd00:0:0:1::".parse().unwrap()));
        assert!(!p6.contains(v4(0, 0, 0, 0)));
    }

    // Frames for the rewrite tests, checksums filled in by smoltcp.

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Tcp,
        /// `true`: sent without a checksum (IPv4 only).
        Udp(bool),
        /// Request or reply.
        Echo(bool),
    }

    #[derive(Clone, Debug)]
    struct Spec {
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        kind: Kind,
        /// IPv4 option words (NOPs), to move the L4 header.
        options: usize,
        payload: Vec<u8>,
        /// Ethernet padding after the IP packet.
        padding: usize,
    }

    impl Spec {
        fn proto(&self) -> u8 {
            match (self.kind, self.src.is_ipv4()) {
                (Kind::Tcp, _) => proto::TCP,
                (Kind::Udp(_), _) => proto::UDP,
                (Kind::Echo(_), true) => proto::ICMP,
                (Kind::Echo(_), false) => proto::ICMPV6,
            }
        }
    }

    fn frame(s: &Spec) -> Vec<u8> {
        let mut l4 = Vec::new();
        match s.kind {
            Kind::Tcp => {
                l4.extend_from_slice(&s.sport.to_be_bytes());
                l4.extend_from_slice(&s.dport.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 7, 0x50, 0x18, 0xff, 0xff]);
                l4.extend_from_slice(&[0, 0, 0, 0]);
            }
            Kind::Udp(_) => {
                l4.extend_from_slice(&s.sport.to_be_bytes());
                l4.extend_from_slice(&s.dport.to_be_bytes());
                let len = u16::try_from(8 + s.payload.len()).unwrap();
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            Kind::Echo(request) => {
                let ty = match (request, s.src.is_ipv4()) {
                    (true, true) => 8,
                    (false, true) => 0,
                    (true, false) => 128,
                    (false, false) => 129,
                };
                l4.extend_from_slice(&[ty, 0, 0, 0]);
                l4.extend_from_slice(&s.sport.to_be_bytes());
                l4.extend_from_slice(&[0, 1]);
            }
        }
        l4.extend_from_slice(&s.payload);

        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let (src, dst) = (IpAddress::from(s.src), IpAddress::from(s.dst));
        match (s.src, s.dst) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let ihl = 5 + s.options;
                let total = u16::try_from(ihl * 4 + l4.len()).unwrap();
                f.push(0x40 | u8::try_from(ihl).unwrap());
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, s.proto(), 0, 0]);
                f.extend_from_slice(&a.octets());
                f.extend_from_slice(&b.octets());
                f.extend(std::iter::repeat_n(1u8, s.options * 4));
                Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
                f.extend_from_slice(&[s.proto(), 64]);
                f.extend_from_slice(&a.octets());
                f.extend_from_slice(&b.octets());
            }
            _ => panic!("mixed families"),
        }
        let l4_at = f.len();
        f.extend_from_slice(&l4);
        fill_l4(&mut f[l4_at..], s, &src, &dst);
        f.extend(std::iter::repeat_n(0xee, s.padding));
        f
    }

    /// Full recomputation of the L4 checksum, by smoltcp.
    fn fill_l4(l4: &mut [u8], s: &Spec, src: &IpAddress, dst: &IpAddress) {
        match (s.kind, src, dst) {
            (Kind::Tcp, ..) => TcpPacket::new_unchecked(l4).fill_checksum(src, dst),
            (Kind::Udp(true), IpAddress::Ipv4(_), _) => {}
            (Kind::Udp(_), ..) => UdpPacket::new_unchecked(l4).fill_checksum(src, dst),
            (Kind::Echo(_), IpAddress::Ipv4(_), _) => {
                Icmpv4Packet::new_unchecked(l4).fill_checksum()
            }
            (Kind::Echo(_), IpAddress::Ipv6(a), IpAddress::Ipv6(b)) => {
                Icmpv6Packet::new_unchecked(l4).fill_checksum(a, b)
            }
            (Kind::Echo(_), ..) => panic!("mixed families"),
        }
    }

    fn parsed(f: &[u8]) -> Ip {
        match parse(f) {
            Ok(p) => match p.payload {
                Payload::Ip(ip) => ip,
                Payload::Arp(a) => panic!("ARP {a:?}"),
            },
            Err(e) => panic!("{e}"),
        }
    }

    /// Whether smoltcp finds the frame's L4 checksum right.
    fn l4_verifies(f: &[u8], ip: &Ip) -> bool {
        let l4 = &f[ip.offsets.l4..ip.offsets.end];
        let (src, dst) = (IpAddress::from(ip.src), IpAddress::from(ip.dst));
        match (ip.proto, ip.src, ip.dst) {
            (proto::TCP, ..) => TcpPacket::new_checked(l4)
                .unwrap()
                .verify_checksum(&src, &dst),
            (proto::UDP, ..) => UdpPacket::new_checked(l4)
                .unwrap()
                .verify_checksum(&src, &dst),
            (proto::ICMP, ..) => Icmpv4Packet::new_checked(l4).unwrap().verify_checksum(),
            (proto::ICMPV6, IpAddr::V6(a), IpAddr::V6(b)) => {
                Icmpv6Packet::new_unchecked(l4).verify_checksum(&a, &b)
            }
            _ => panic!("not a test protocol"),
        }
    }

    #[test]
    fn echo_ids_are_translated_out_and_back() {
        let p = plan(MASQUERADE);
        let mut ct = table();
        let request = Spec {
            src: ip4(LAN_HOST),
            dst: v4(8, 8, 8, 8),
            sport: 77,
            dport: 77,
            kind: Kind::Echo(true),
            options: 0,
            payload: b"abcdefgh".to_vec(),
            padding: 0,
        };
        let mut f = frame(&request);
        let ip = parsed(&f);
        let orig = Tuple::of(&ip).unwrap();
        let t = snat(&p, &ct, orig, 0).unwrap();
        ct.open(t.orig, t.reply, State::IcmpEcho, None, 0).unwrap();
        rewrite(&mut f, &ip, &t.onward()).unwrap();
        let out = parsed(&f);
        let id = t.reply.dport;
        assert_ne!(id, 77);
        assert_eq!((out.src, out.dst), (ip4(WAN_ADDR), v4(8, 8, 8, 8)));
        assert!(matches!(out.l4, L4::Icmp { ty: 8, echo_id: Some(i), .. } if i == id));
        assert!(l4_verifies(&f, &out));

        // The reply comes back to the external address and id, and leaves for the host.
        let mut back = frame(&Spec {
            src: v4(8, 8, 8, 8),
            dst: ip4(WAN_ADDR),
            sport: id,
            dport: id,
            kind: Kind::Echo(false),
            ..request
        });
        let ip = parsed(&back);
        let hit = ct.track(&Tuple::of(&ip).unwrap(), &ip.l4, SEC).unwrap();
        assert_eq!(hit.dir, Dir::Reply);
        rewrite(&mut back, &ip, &hit.other.reversed()).unwrap();
        let home = parsed(&back);
        assert_eq!((home.src, home.dst), (v4(8, 8, 8, 8), ip4(LAN_HOST)));
        assert!(matches!(
            home.l4,
            L4::Icmp {
                ty: 0,
                echo_id: Some(77),
                ..
            }
        ));
        assert!(l4_verifies(&back, &home));
    }

    #[test]
    fn a_refused_rewrite_leaves_the_frame_alone() {
        let s = Spec {
            src: ip4(LAN_HOST),
            dst: ip4(REMOTE),
            sport: 1,
            dport: 2,
            kind: Kind::Tcp,
            options: 0,
            payload: vec![],
            padding: 0,
        };
        let f = frame(&s);
        let ip = parsed(&f);
        let to = Tuple::of(&ip).unwrap();
        for bad in [
            Tuple {
                src: IpAddr::V6(Ipv6Addr::LOCALHOST),
                ..to
            },
            Tuple {
                proto: proto::UDP,
                ..to
            },
        ] {
            let mut g = f.clone();
            assert_eq!(rewrite(&mut g, &ip, &bad), Err(DropReason::MalformedPacket));
            assert_eq!(g, f);
        }
        // A frame shorter than the parse said.
        let mut short = f[..40].to_vec();
        let to = Tuple { sport: 9, ..to };
        assert_eq!(
            rewrite(&mut short, &ip, &to),
            Err(DropReason::MalformedPacket)
        );
        assert_eq!(short, f[..40]);
        // Echo ids are one value.
        let echo = frame(&Spec {
            kind: Kind::Echo(true),
            ..s
        });
        let ip = parsed(&echo);
        let two = Tuple {
            sport: 5,
            dport: 6,
            ..Tuple::of(&ip).unwrap()
        };
        assert_eq!(
            rewrite(&mut echo.clone(), &ip, &two),
            Err(DropReason::MalformedPacket)
        );
    }

    #[test]
    fn a_udp_checksum_that_comes_to_zero_is_sent_as_all_ones() {
        for (from, to) in [
            (v4(192, 168, 1, 10), v4(198, 51, 100, 1)),
            ("fd00::10".parse().unwrap(), "2001:db8::1".parse().unwrap()),
        ] {
            let mut s = Spec {
                src: from,
                dst: ip4(REMOTE),
                sport: 5000,
                dport: 53,
                kind: Kind::Udp(false),
                options: 0,
                payload: vec![0, 0],
                padding: 0,
            };
            if !from.is_ipv4() {
                s.dst = "2001:db8:ffff::9".parse().unwrap();
            }
            // Choose the payload word that makes the translated datagram's sum 0xFFFF: its
            // checksum computed with a zero word there, since S + ~S = 0xFFFF.
            let translated = Spec {
                src: to,
                sport: 20000,
                ..s.clone()
            };
            let f = frame(&translated);
            let at = parsed(&f).offsets.l4 + 6;
            s.payload = f[at..at + 2].to_vec();

            let mut g = frame(&s);
            let ip = parsed(&g);
            let target = Tuple {
                src: to,
                sport: 20000,
                ..Tuple::of(&ip).unwrap()
            };
            rewrite(&mut g, &ip, &target).unwrap();
            assert_eq!(g[at..at + 2], [0xff, 0xff], "{from}");
            assert!(l4_verifies(&g, &parsed(&g)));
            // smoltcp's full computation agrees.
            assert_eq!(
                g,
                frame(&Spec {
                    payload: s.payload.clone(),
                    ..translated
                })
            );
        }
    }

    fn addr(v6: bool) -> impl Strategy<Value = IpAddr> {
        if v6 {
            any::<[u8; 16]>().prop_map(|a| IpAddr::V6(a.into())).boxed()
        } else {
            any::<[u8; 4]>().prop_map(|a| IpAddr::V4(a.into())).boxed()
        }
    }

    /// A frame and the tuple to rewrite it to: each field kept or changed at random.
    fn frame_and_target() -> impl Strategy<Value = (Spec, Tuple)> {
        any::<bool>().prop_flat_map(|v6| {
            let kind = prop_oneof![
                Just(Kind::Tcp),
                any::<bool>().prop_map(move |zero| Kind::Udp(zero && !v6)),
                any::<bool>().prop_map(Kind::Echo),
            ];
            let spec = (
                addr(v6),
                addr(v6),
                any::<(u16, u16)>(),
                kind,
                0usize..=10,
                proptest::collection::vec(any::<u8>(), 0..48),
                0usize..8,
            )
                .prop_map(
                    move |(src, dst, (sport, dport), kind, options, payload, padding)| {
                        let dport = if matches!(kind, Kind::Echo(_)) {
                            sport
                        } else {
                            dport
                        };
                        Spec {
                            src,
                            dst,
                            sport,
                            dport,
                            kind,
                            options: if v6 { 0 } else { options },
                            payload,
                            padding,
                        }
                    },
                );
            let changes = (
                proptest::option::of(addr(v6)),
                proptest::option::of(addr(v6)),
                proptest::option::of(any::<u16>()),
                proptest::option::of(any::<u16>()),
            );
            (spec, changes).prop_map(|(s, (src, dst, sport, dport))| {
                let echo = matches!(s.kind, Kind::Echo(_));
                let sport = sport.unwrap_or(s.sport);
                let to = Tuple {
                    src: src.unwrap_or(s.src),
                    dst: dst.unwrap_or(s.dst),
                    sport,
                    dport: if echo {
                        sport
                    } else {
                        dport.unwrap_or(s.dport)
                    },
                    proto: s.proto(),
                };
                (s, to)
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The incremental update gives exactly what smoltcp computes from scratch, and every
        /// checksum of the rewritten frame verifies.
        #[test]
        fn rewritten_frames_carry_the_target_and_verify((s, to) in frame_and_target()) {
            let mut f = frame(&s);
            let ip = parsed(&f);
            rewrite(&mut f, &ip, &to).unwrap();
            // `parse` verifies the IPv4 header checksum.
            let out = parsed(&f);
            prop_assert_eq!((out.src, out.dst, out.proto), (to.src, to.dst, to.proto));
            prop_assert_eq!(Tuple::of(&out), Some(to));
            prop_assert!(l4_verifies(&f, &out));
            prop_assert_eq!(out.offsets, ip.offsets);
            prop_assert!(f[ip.offsets.end..].iter().all(|b| *b == 0xee), "padding untouched");

            let expected = frame(&Spec {
                src: to.src,
                dst: to.dst,
                sport: to.sport,
                dport: to.dport,
                ..s.clone()
            });
            if matches!(s.kind, Kind::Udp(true)) {
                let at = ip.offsets.l4 + 6;
                prop_assert_eq!(&f[at..at + 2], &[0u8, 0][..], "no checksum stays none");
            }
            prop_assert_eq!(f, expected);
        }

        /// The helpers alone against smoltcp's full computation: random words of a random
        /// ICMP message (its checksum covers just the message) changed in place.
        #[test]
        fn incremental_updates_equal_recomputation(
            body in proptest::collection::vec(any::<u8>(), 8..80),
            changes in proptest::collection::vec((any::<usize>(), any::<u16>()), 1..6),
        ) {
            let mut full = body.clone();
            Icmpv4Packet::new_unchecked(&mut full[..]).fill_checksum();
            let mut incremental = full.clone();
            let mut delta = Delta::default();
            for (at, word) in changes {
                // Any aligned word but the checksum's own (bytes 2-3).
                let words = full.len() / 2;
                let at = 2 * (at % (words - 1));
                let at = if at >= 2 { at + 2 } else { at };
                replace(&mut incremental, at, &word.to_be_bytes(), &mut delta).unwrap();
                full[at..at + 2].copy_from_slice(&word.to_be_bytes());
            }
            update_checksum(&mut incremental, 2, delta, false).unwrap();
            Icmpv4Packet::new_unchecked(&mut full[..]).fill_checksum();
            prop_assert_eq!(&incremental, &full);
            prop_assert!(Icmpv4Packet::new_unchecked(&incremental[..]).verify_checksum());
        }
    }
}

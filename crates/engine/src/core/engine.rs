//! The engine: one arriving frame in, one [`Action`] out, the pieces of the core put together
//! in SPEC §8's order, with the counters the metrics need (per rule, per drop reason).
//!
//! For a frame arriving on one side, [`Engine::handle`] goes:
//! 1. **parse**: malformed headers, IPv4 fragments and non-IP frames are dropped with their
//!    reason before any table is read; IPv6 is dropped as `ipv6_unsupported` (SPEC §3 lets the
//!    engine start IPv4-only, and the neighbour table has no IPv6 discovery). Every fragment
//!    is dropped as it arrives, `fragmented_ipv4` (SPEC §8), and none is held: where the
//!    kernel plane reassembles a complete train before its conntrack and forwards the
//!    datagram, the engine forwards nothing of it (an incomplete train neither forwards);
//! 2. **ARP** goes to the neighbour table, which may write a reply;
//! 3. IP frames not sent to the side's own MAC, and martians (a source that is the engine's,
//!    the other side's, multicast, broadcast, loopback or 0.0.0.0) go no further;
//! 4. a TCP, UDP or ICMP packet whose checksum does not verify (unless the I/O layer says the
//!    NIC verified it, [`RxInfo`]), and a TCP segment whose flags no state allows (no flag,
//!    SYN+FIN, a lone FIN...: see [`TcpFlags::valid`](super::packet::TcpFlags::valid)), are
//!    `malformed_packet`, of a known flow or not, as the kernel's conntrack calls them invalid
//!    in every state (`nf_conntrack_checksum` is on by default); then the
//!    **conntrack hit**: the flow was accepted already; the packet takes its translation from
//!    the entry and is forwarded without the filter (SPEC §3, stateful), or delivered to the
//!    host stack when the flow is the host's (see below). A packet whose IPv4 options a
//!    router must refuse (malformed, or a source route: [`Refusal`](super::packet::Refusal))
//!    is `malformed_packet` here, after its flow's state moved, or first thing in step 5 for
//!    a packet of no known flow (no rule sees it, no flow opens): the kernel drops it in
//!    `ip_rcv_options`, after its conntrack and before any hook where ward's rules are, so no
//!    counter of the kernel plane sees it (malformed options count in the kernel's own
//!    `InHdrErrors`; source routes nowhere, logged as martians with `log_martians`).
//!    `malformed_packet` is SPEC §7's reason for a header that is refused. A forwarded packet
//!    with a record-route option that has room gets the address it leaves from, as Linux
//!    writes it ([`record_route`]); timestamp options are checked, not stamped;
//! 5. a packet that cannot start a flow ([`Opening::Invalid`]) is `malformed_packet`, as the
//!    kernel plane counts its conntrack-invalid drops; a LAN-side query for the DNS proxy
//!    opens its flow and is **delivered** to the host stack, before any rule ([`DnsProxy`]);
//! 6. **DNAT**, then the **filter** on the translated tuple: the direction comes from the
//!    sides (LAN → WAN egress, WAN → LAN ingress), or is `input` for the engine's own
//!    addresses, which nothing but ARP answers: accepted input goes no further either. A
//!    packet to be forwarded whose TTL runs out here is discarded before the filter, as the
//!    kernel does before its forward hook: judged by no rule, and it opens no flow (the
//!    kernel's connection for it is never confirmed), so no reply can pass on its account;
//! 7. **open** the flow (table full → `conntrack_full`), after **SNAT** has chosen its
//!    external port (none free → `nat_port_pool_exhausted`); a flow whose reply tuple another
//!    live flow holds (its own reverse, opened first and translated) gets another source
//!    port, as the kernel's NAT does ([`NatPlan::rebind`]). Every protocol is tracked, as by
//!    the kernel's conntrack: TCP, UDP and ICMP echo by ports or identifier, GRE and the rest
//!    by their addresses (and a PPTP call id), translated by address alone;
//! 8. **forward**: next hop from the neighbour table (unknown → an ARP request goes out on
//!    that side and the packet is dropped, see [`super::arp`]), NAT rewrite, record route,
//!    MACs, TTL.
//!
//! **The host stack.** With a [`DnsProxy`] in its [`Rules`], the engine has a host behind it
//! (the caller's: `io` reaches it through a TUN device) that holds the engine's own
//! addresses and runs the proxy. [`Action::Deliver`] hands it the proxy's queries and the
//! packets of its own flows; [`Engine::handle_host`] takes what it sends: judged as
//! `output` (the proxy's upstream queries pass whatever the rules say, as in the kernel
//! plane), tracked, and sent from the engine's MAC with the host's TTL. Other input to the
//! engine's addresses still goes nowhere.
//!
//! Routing is what two interfaces allow: a destination on either side's link goes there, any
//! other goes to the WAN gateway if there is one. A packet that would leave on the side it
//! came from is not forwarded (no hairpin, so no hairpin NAT either).
//!
//! Counters follow the kernel plane's meaning, so that both report alike: a rule counts the
//! packets it decided (the first of each flow, and every untracked packet), not the rest of
//! the flows it accepted. Outcomes that are not among SPEC §7's drop reasons (a frame for
//! another host, no route, an unresolved neighbour, TTL expired...) are [`Discard`]s, counted
//! apart. Nothing here allocates once the engine is built; `tests/no_alloc.rs` checks it.
//! `benches/engine.rs` measures a frame of an established, masqueraded TCP flow at about
//! 150 ns either way (parse, table hit, route, next hop, NAT rewrite, forwarding) when the NIC
//! verified its checksum; verifying it here adds about 10 ns to a bare ACK and 140 ns to a
//! full-size (1514-byte) segment.

use super::arp::{Neighbours, Own, Resolved, Side, FRAME_LEN};
use super::checksum;
use super::conntrack::{Conntrack, Opening, Refused, State, Timeouts, Tuple};
use super::filter::{self, Direction, Filter, FlowKey, IfaceId, Verdict};
use super::forward::{address, forward, record_route, NotForwarded};
use super::log::{Logbook, Logged};
use super::nat::{self, NatIface, NatPlan, Translation};
use super::packet::{icmp_type, parse, proto, Ip, Payload, L4};
use super::DropReason;
use ::core::fmt;
use ::core::net::{IpAddr, Ipv4Addr, SocketAddr};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// What to do with a frame [`Engine::handle`] was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the frame, rewritten in place, out of side `out`. With `ask`, also send the ARP
    /// request written to the caller's buffer on `out`: the next hop is known but stale and is
    /// being confirmed again.
    Forward { out: Side, ask: bool },
    /// Send the [`FRAME_LEN`] bytes written to the caller's buffer out of this side: an ARP
    /// reply for the engine's own address, or an ARP request for a next hop whose MAC is
    /// unknown (the frame that needed it is dropped, counted as [`Discard::Unresolved`]).
    Reply(Side),
    /// Hand the IP packet, `frame[l3..end]` (rewritten in place if translated), to the host
    /// stack behind the engine: a query for the DNS proxy, or a reply to what the host sent
    /// (see [`DnsProxy`] and [`Engine::handle_host`]).
    Deliver { l3: usize, end: usize },
    /// Dropped, for one of SPEC §7's reasons.
    Drop(DropReason),
    /// Not forwarded, for a reason that is not a policy drop.
    Discard(Discard),
}

/// What the I/O layer knows of a received frame's L4 checksum (TCP, UDP, ICMP), from the NIC
/// or the kernel that handed the frame over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum L4Checksum {
    /// Nothing: the engine verifies it ([`checksum::l4_valid`]) and drops a wrong one as
    /// `malformed_packet`, as the kernel's conntrack marks it invalid (and ward's ruleset drops
    /// conntrack-invalid packets) when the NIC did not verify it.
    #[default]
    Unverified,
    /// Verified already: by the NIC, or by the kernel (AF_PACKET's `TP_STATUS_CSUM_VALID`).
    Verified,
    /// Left partial for offload by a local sender or a veth peer (`TP_STATUS_CSUMNOTREADY`):
    /// the field holds only the pseudo-header's sum. The engine completes it
    /// ([`checksum::complete_partial`]) before anything rewrites the packet, and takes it as
    /// right, as the kernel does.
    Partial,
}

/// What the I/O layer says about a received frame besides its bytes, for
/// [`Engine::handle_rx`]. The default is what a frame with no such news gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RxInfo {
    pub checksum: L4Checksum,
}

/// Why a frame was neither forwarded nor dropped with a SPEC §7 reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Discard {
    /// An ARP packet that needs no answer: learned from, or not for the engine.
    Arp,
    /// An IP frame sent to another MAC (broadcast and multicast included): not for forwarding.
    NotForUs,
    /// A source address that cannot be a real sender on that side: one of the engine's own,
    /// inside the other side's subnet, multicast or broadcast.
    Martian,
    /// Accepted traffic to the engine's own address: nothing but ARP answers there.
    Local,
    /// No next hop on the other side: off both links without a gateway, a network or
    /// broadcast address, or back out of the side it came in on.
    NoRoute,
    /// The next hop's MAC is unknown; an ARP request went out now or a moment ago.
    Unresolved,
    /// TTL 0 or 1 on arrival (no ICMP time-exceeded is sent yet).
    TtlExceeded,
    /// The flow's translated reply tuple is held by another live flow (a policy with NAT
    /// gives the flow another source port first, [`NatPlan::rebind`]).
    Clash,
}

impl Discard {
    pub const ALL: [Discard; 8] = [
        Discard::Arp,
        Discard::NotForUs,
        Discard::Martian,
        Discard::Local,
        Discard::NoRoute,
        Discard::Unresolved,
        Discard::TtlExceeded,
        Discard::Clash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Arp => "arp",
            Discard::NotForUs => "not_for_us",
            Discard::Martian => "martian",
            Discard::Local => "local",
            Discard::NoRoute => "no_route",
            Discard::Unresolved => "unresolved",
            Discard::TtlExceeded => "ttl_exceeded",
            Discard::Clash => "clash",
        }
    }
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of the engine's interfaces: its name (what `in_interface`, `out_interface` and SNAT's
/// `out_interface` compare with) and the engine's own address there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub own: Own,
}

/// Where the engine sits, and how big its tables are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub lan: Interface,
    pub wan: Interface,
    /// Next hop for destinations off both links; on the WAN link.
    pub gateway: Option<Ipv4Addr>,
    pub conntrack_capacity: usize,
    pub neighbour_capacity: usize,
    /// Keys for the connection table's and the neighbour table's hashes: random and secret.
    pub conntrack_key: [u64; 2],
    pub neighbour_key: [u64; 2],
}

/// Neighbours: enough for a /22 of LAN hosts and the WAN side's few.
pub const DEFAULT_NEIGHBOURS: usize = 4096;

/// The policy's part: what a reload replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub filter: Filter,
    pub nat: NatPlan,
    pub timeouts: Timeouts,
    /// `defaults.icmp_essentials`: input echo requests and fragmentation-needed are accepted
    /// before any rule, as by the kernel plane's essentials rule (and so counted by no rule).
    pub icmp_essentials: bool,
    /// The DNS proxy on the host stack, when the engine has one to hand queries to.
    pub dns: Option<DnsProxy>,
}

/// The DNS proxy served by the host stack behind the engine (the caller's, reached through
/// [`Action::Deliver`] and [`Engine::handle_host`]), and what the engine lets through for it
/// whatever the rules say, as the kernel plane's `ward-dns-proxy`, `ward-dns-upstream` and
/// intercept rules do (SPEC §5): LAN-side UDP and TCP queries to the engine's LAN address on
/// `port`; with `intercept`, LAN-side port-53 traffic to any other address, redirected there;
/// and the host's UDP and TCP to its `upstreams`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsProxy {
    pub port: u16,
    pub upstreams: Vec<SocketAddr>,
    pub intercept: bool,
}

impl DnsProxy {
    fn is_upstream(&self, dst: IpAddr, l4: &L4) -> bool {
        match *l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => {
                self.upstreams.contains(&SocketAddr::new(dst, dport))
            }
            _ => false,
        }
    }
}

#[cfg(feature = "std")]
impl Rules {
    /// A validated policy's filter, NAT plan, timeouts and ICMP essentials. `nat_key` must be
    /// random and secret (see [`NatPlan::new`]).
    pub fn compile(policy: &policy::Policy, nat_key: [u64; 2]) -> Rules {
        Rules {
            filter: Filter::compile(policy),
            nat: NatPlan::compile(policy, nat_key),
            timeouts: policy.defaults.conntrack_timeouts.into(),
            icmp_essentials: policy.defaults.icmp_essentials,
            dns: None,
        }
    }
}

/// Why [`Engine::new`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The gateway is not a possible neighbour on the WAN link.
    GatewayOffLink(Ipv4Addr),
    /// The two subnets overlap, so a destination would not say which side it is on.
    OverlappingSubnets,
    /// Both interfaces have the same name (or the same MAC): frames could not be told apart.
    SameInterface,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::GatewayOffLink(g) => {
                write!(f, "the gateway {g} is not on the WAN interface's subnet")
            }
            ConfigError::OverlappingSubnets => {
                f.write_str("the LAN and WAN subnets overlap: give each side its own")
            }
            ConfigError::SameInterface => {
                f.write_str("the LAN and WAN interfaces must be two different interfaces")
            }
        }
    }
}

/// Packets and bytes (of the IP packet, as the kernel counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

/// One rule's counter, or a default's (`default-accept`, `default-deny`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleCount<'a> {
    pub id: &'a str,
    pub action: filter::Action,
    pub count: Count,
}

/// Everything else the engine counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Frames sent on, rewritten.
    pub forwarded: u64,
    pub arp_replies: u64,
    /// ARP requests for next hops, broadcast or to confirm a stale neighbour.
    pub arp_requests: u64,
    /// New flows source- and destination-translated (`ward_nat_translations_total`).
    pub snat: u64,
    pub dnat: u64,
    /// Packets handed to the host stack, and packets from it sent on.
    pub to_host: u64,
    pub from_host: u64,
}

/// Index of the defaults after the rules in [`Engine::rules`] counts.
const DEFAULT_ACCEPT: usize = 0;
const DEFAULT_DENY: usize = 1;

fn index(side: Side) -> usize {
    match side {
        Side::Lan => 0,
        Side::Wan => 1,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Lan => Side::Wan,
        Side::Wan => Side::Lan,
    }
}

/// The userspace data plane's state: policy, tables, counters. Time is milliseconds on the
/// caller's monotonic clock, as for every table of the core.
pub struct Engine {
    filter: Filter,
    nat: NatPlan,
    icmp_essentials: bool,
    dns: Option<DnsProxy>,
    conntrack: Conntrack,
    neighbours: Neighbours,
    gateway: Option<Ipv4Addr>,
    names: [String; 2],
    /// By side: the ids the filter and SNAT know the interfaces by.
    filter_iface: [IfaceId; 2],
    nat_iface: [NatIface; 2],
    /// By rule position, then the two defaults.
    rules: Vec<Count>,
    drops: [u64; DropReason::ALL.len()],
    discards: [u64; Discard::ALL.len()],
    totals: Totals,
    log: Logbook,
}

impl Engine {
    /// Builds the engine; every table's memory is allocated here.
    pub fn new(rules: Rules, config: Config) -> Result<Engine, ConfigError> {
        let (lan, wan) = (&config.lan, &config.wan);
        if lan.name == wan.name || lan.own.mac == wan.own.mac {
            return Err(ConfigError::SameInterface);
        }
        // Two prefixes overlap exactly when one holds the other's network address.
        if lan.own.in_subnet(wan.own.ip) || wan.own.in_subnet(lan.own.ip) {
            return Err(ConfigError::OverlappingSubnets);
        }
        if let Some(g) = config.gateway {
            if !wan.own.on_link(g) {
                return Err(ConfigError::GatewayOffLink(g));
            }
        }
        let Rules {
            filter,
            nat,
            timeouts,
            icmp_essentials,
            dns,
        } = rules;
        let mut engine = Engine {
            conntrack: Conntrack::new(config.conntrack_capacity, timeouts, config.conntrack_key),
            neighbours: Neighbours::new(
                lan.own,
                wan.own,
                config.neighbour_capacity,
                config.neighbour_key,
            ),
            gateway: config.gateway,
            names: [lan.name.clone(), wan.name.clone()],
            filter_iface: [IfaceId::UNLISTED; 2],
            nat_iface: [NatIface::UNLISTED; 2],
            rules: Vec::new(),
            filter,
            nat,
            icmp_essentials,
            dns,
            drops: [0; DropReason::ALL.len()],
            discards: [0; Discard::ALL.len()],
            totals: Totals::default(),
            log: Logbook::default(),
        };
        engine.resolve_names();
        engine.rules = vec![Count::default(); engine.filter.rule_count() + 2];
        Ok(engine)
    }

    /// Puts a reloaded policy in place. Flows already accepted live on with their
    /// translations (as in the kernel, whose conntrack outlives a ruleset swap); rule counters
    /// start again, since rule positions change. Learned addresses are the DNS side's to add
    /// again, as for the kernel's sets.
    pub fn reload(&mut self, rules: Rules) {
        self.filter = rules.filter;
        self.nat = rules.nat;
        self.icmp_essentials = rules.icmp_essentials;
        self.dns = rules.dns;
        self.conntrack.set_timeouts(rules.timeouts);
        self.resolve_names();
        self.rules = vec![Count::default(); self.filter.rule_count() + 2];
        self.log.rules(self.filter.rule_count());
    }

    /// Holds the packets that `log: true` rules and default denies decide from now on, for
    /// [`take_logged`](Engine::take_logged) (see [`super::log`]).
    pub fn start_logging(&mut self) {
        self.log.start(self.filter.rule_count());
    }

    /// The logged packets held since the last take, oldest first.
    pub fn take_logged(&mut self) -> impl Iterator<Item = Logged> + '_ {
        self.log.take()
    }

    /// Logged packets lost (no room left between two takes, or held across a reload), and
    /// those over their rule's rate.
    pub fn log_lost(&self) -> (u64, u64) {
        (self.log.lost, self.log.limited)
    }

    /// The id of the rule at position `rule` in the policy in force.
    pub fn rule_id(&self, rule: u32) -> Option<&str> {
        self.filter.rule(rule).map(|(id, _)| id)
    }

    fn resolve_names(&mut self) {
        for side in [Side::Lan, Side::Wan] {
            let name = &self.names[index(side)];
            self.filter_iface[index(side)] = self.filter.iface(name);
            self.nat_iface[index(side)] = self.nat.iface(name);
        }
    }

    /// Decides what becomes of `frame`, which arrived on `side`, rewriting it in place when it
    /// is to be forwarded. `out` receives the ARP frame of [`Action::Reply`] and of
    /// [`Action::Forward`] with `ask`; otherwise it is left as it was. The frame's L4 checksum
    /// is verified here: [`Engine::handle_rx`] is for a caller that knows more.
    pub fn handle(
        &mut self,
        side: Side,
        frame: &mut [u8],
        now: u64,
        out: &mut [u8; FRAME_LEN],
    ) -> Action {
        self.handle_rx(side, frame, RxInfo::default(), now, out)
    }

    /// [`Engine::handle`], told by the I/O layer what it knows of the frame: with
    /// [`L4Checksum::Verified`] (the NIC checked it) the engine does not read the payload,
    /// with [`L4Checksum::Partial`] it completes the checksum first. A TCP, UDP or ICMP
    /// checksum is verified, like the kernel's conntrack does in its prerouting hook, for
    /// every packet past the MAC and martian checks: to the engine's own addresses or
    /// forwarded, of a known flow or not.
    pub fn handle_rx(
        &mut self,
        side: Side,
        frame: &mut [u8],
        info: RxInfo,
        now: u64,
        out: &mut [u8; FRAME_LEN],
    ) -> Action {
        let parsed = match parse(frame) {
            Ok(p) => p,
            Err(reason) => return self.drop(reason),
        };
        let ip = match parsed.payload {
            Payload::Arp(arp) => {
                if self
                    .neighbours
                    .receive(side, parsed.dst_mac, &arp, now, out)
                {
                    self.totals.arp_replies += 1;
                    return Action::Reply(side);
                }
                return self.discard(Discard::Arp);
            }
            Payload::Ip(ip) => ip,
        };
        let IpAddr::V4(src) = ip.src else {
            return self.drop(DropReason::Ipv6Unsupported);
        };
        if parsed.dst_mac != self.neighbours.own(side).mac {
            return self.discard(Discard::NotForUs);
        }
        if self.martian(side, src) {
            return self.discard(Discard::Martian);
        }
        match info.checksum {
            L4Checksum::Verified => {}
            L4Checksum::Unverified => {
                if !checksum::l4_valid(frame, &ip) {
                    return self.drop(DropReason::MalformedPacket);
                }
            }
            L4Checksum::Partial => {
                if checksum::complete_partial(frame, &ip).is_err() {
                    return self.drop(DropReason::MalformedPacket);
                }
            }
        }
        if let L4::Tcp { flags, .. } = ip.l4 {
            if !flags.valid() {
                // No TCP state allows it, known flow or not (see `TcpFlags::valid`).
                return self.drop(DropReason::MalformedPacket);
            }
        }
        let tuple = Tuple::of(&ip);
        if let Some(t) = tuple {
            if let Some(hit) = self.conntrack.track(&t, &ip.l4, now) {
                if ip.options.refused.is_some() {
                    // After conntrack has seen it, as in the kernel (see `refused`).
                    return self.drop(DropReason::MalformedPacket);
                }
                let to = hit.other.reversed();
                let IpAddr::V4(dst) = to.dst else {
                    return self.drop(DropReason::MalformedPacket);
                };
                if self.is_own(dst) {
                    // Only the host's flows end at the engine's own addresses.
                    return self.deliver(frame, &ip, (to != t).then_some(&to));
                }
                let Some((out_side, hop)) = self.route(side, dst) else {
                    return self.discard(Discard::NoRoute);
                };
                let rewrite = (to != t).then_some(to);
                return self.send(frame, &ip, rewrite.as_ref(), out_side, hop, now, out);
            }
        }
        self.first_packet(side, frame, &ip, tuple, now, out)
    }

    /// A packet no flow knows: DNAT, the filter, a new flow with SNAT, then forwarding.
    fn first_packet(
        &mut self,
        side: Side,
        frame: &mut [u8],
        ip: &Ip,
        tuple: Option<Tuple>,
        now: u64,
        out: &mut [u8; FRAME_LEN],
    ) -> Action {
        if ip.options.refused.is_some() {
            return self.drop(DropReason::MalformedPacket);
        }
        let state = match Opening::of(ip) {
            Opening::Invalid => return self.drop(DropReason::MalformedPacket),
            Opening::Track(state) => tuple.map(|t| (t, state)),
            Opening::Untracked => None,
        };
        if side == Side::Lan {
            if let Some((t, state)) = state {
                if let Some(to) = self.dns_query(&t) {
                    return self.query_proxy(frame, ip, t, to, state, now);
                }
            }
        }
        // Untracked packets are not translated: nothing could bring their replies back.
        let mut translation = state.map(|(t, _)| self.nat.dnat(&t));
        let dnat = translation.is_some_and(|t| !t.is_identity());
        let (src, dst, dport) = match translation {
            Some(t) => {
                let onward = t.onward();
                let dport = ip.l4.dport().map(|_| onward.dport);
                (onward.src, onward.dst, dport)
            }
            None => (ip.src, ip.dst, ip.l4.dport()),
        };
        let IpAddr::V4(dst4) = dst else {
            return self.drop(DropReason::MalformedPacket);
        };
        let mut key = FlowKey {
            direction: Direction::Input,
            src,
            dst,
            proto: ip.proto,
            dport,
            in_iface: self.filter_iface[index(side)],
            out_iface: IfaceId::UNLISTED,
            established: false,
        };
        let bytes = ip.offsets.end.saturating_sub(ip.offsets.l3) as u64;

        if self.is_own(dst4) {
            if !(self.icmp_essentials && essential_icmp(ip)) {
                let verdict = self.filter.classify(&key, now);
                self.count_rule(&verdict, bytes);
                self.note(&verdict, &key, ip, Some(side), None, now);
                if let Some(reason) = verdict.drop_reason() {
                    return self.drop(reason);
                }
            }
            return self.discard(Discard::Local);
        }

        let Some((out_side, hop)) = self.route(side, dst4) else {
            return self.discard(Discard::NoRoute);
        };
        if ip.ttl <= 1 {
            return self.discard(Discard::TtlExceeded);
        }
        key.direction = match side {
            Side::Lan => Direction::Egress,
            Side::Wan => Direction::Ingress,
        };
        key.out_iface = self.filter_iface[index(out_side)];
        let verdict = self.filter.classify(&key, now);
        self.count_rule(&verdict, bytes);
        let logged = self.note(&verdict, &key, ip, Some(side), Some(out_side), now);
        if let Some(reason) = verdict.drop_reason() {
            return self.drop(reason);
        }

        if let (Some(t), Some((_, state))) = (translation.as_mut(), state) {
            // `open` refuses a full table too, but only after SNAT would have picked a port.
            if self.conntrack.len() >= self.conntrack.capacity() {
                return self.drop(DropReason::ConntrackFull);
            }
            let before = t.reply;
            let masquerade = IpAddr::V4(self.neighbours.own(out_side).ip);
            let out_iface = self.nat_iface[index(out_side)];
            if let Err(reason) = self
                .nat
                .snat(t, out_iface, Some(masquerade), &self.conntrack, now)
            {
                return self.drop(reason);
            }
            let snat = t.reply != before;
            // Another live flow holds the reply tuple (its reverse, opened first and
            // translated): the kernel plane, which has a NAT chain whenever the policy has
            // NAT, gives this flow another source port. (Without NAT no translation can make
            // two flows meet, and `open` would refuse it as a clash, as the kernel does.)
            if !self.nat.is_empty() && self.conntrack.holds(&t.reply, now) {
                if let Err(reason) = self.nat.rebind(t, &self.conntrack, now) {
                    return self.drop(reason);
                }
            }
            if !t.is_identity() {
                // A translation the kernel's NAT refuses drops the packet before its
                // connection is confirmed: no flow either.
                if let Err(reason) = nat::translatable(frame, ip, &t.onward()) {
                    return self.drop(reason);
                }
            }
            match self
                .conntrack
                .open(t.orig, t.reply, state, verdict.rule, now)
            {
                Ok(()) => {}
                Err(Refused::Full) => return self.drop(DropReason::ConntrackFull),
                Err(Refused::Clash) => return self.discard(Discard::Clash),
            }
            self.totals.snat += u64::from(snat);
            self.totals.dnat += u64::from(dnat);
            // As the kernel plane's event log reads it from the connection: source NAT's
            // address and port, else the public address a port-forward's client asked for.
            if snat {
                let onward = t.onward();
                self.log.translated(logged, (onward.src, onward.sport));
            } else if dnat {
                self.log.translated(logged, (t.orig.dst, t.orig.dport));
            }
        }
        let rewrite = translation.filter(|t| !t.is_identity()).map(|t| t.onward());
        self.send(frame, ip, rewrite.as_ref(), out_side, hop, now, out)
    }

    /// The tuple a LAN-side flow's first packet is handed to the host with, if it is a query
    /// for the DNS proxy: as it is when sent to the proxy, its destination made the proxy's
    /// when intercepted.
    fn dns_query(&self, t: &Tuple) -> Option<Tuple> {
        let dns = self.dns.as_ref()?;
        if t.proto != proto::TCP && t.proto != proto::UDP {
            return None;
        }
        let proxy = IpAddr::V4(self.neighbours.own(Side::Lan).ip);
        if t.dst == proxy && t.dport == dns.port {
            Some(*t)
        } else if dns.intercept && t.dport == 53 {
            Some(Tuple {
                dst: proxy,
                dport: dns.port,
                ..*t
            })
        } else {
            None
        }
    }

    /// Opens the flow of a query for the DNS proxy, whose packets then reach the host as
    /// `to`, and hands this first one over. No rule is consulted (see [`DnsProxy`]).
    fn query_proxy(
        &mut self,
        frame: &mut [u8],
        ip: &Ip,
        t: Tuple,
        to: Tuple,
        state: State,
        now: u64,
    ) -> Action {
        match self.conntrack.open(t, to.reversed(), state, None, now) {
            Ok(()) => {}
            Err(Refused::Full) => return self.drop(DropReason::ConntrackFull),
            Err(Refused::Clash) => return self.discard(Discard::Clash),
        }
        self.deliver(frame, ip, (to != t).then_some(&to))
    }

    fn deliver(&mut self, frame: &mut [u8], ip: &Ip, rewrite: Option<&Tuple>) -> Action {
        if let Some(to) = rewrite {
            if let Err(reason) = nat::rewrite(frame, ip, to) {
                return self.drop(reason);
            }
        }
        self.totals.to_host += 1;
        Action::Deliver {
            l3: ip.offsets.l3,
            end: ip.offsets.end,
        }
    }

    /// Decides what becomes of a packet the host stack sent: `frame` holds it behind an
    /// Ethernet header the caller wrote (its MACs are not read, its ethertype is the
    /// packet's). The host speaks from the engine's own addresses only (any other source is
    /// a [`Discard::Martian`]). A packet of a known flow follows it (a reply to a DNS client
    /// goes back translated as the query came in); a new flow is judged as `output`, except
    /// the proxy's queries to its upstreams, which pass (see [`DnsProxy`]), and is tracked so
    /// that its replies are delivered. Host packets are originated here, not forwarded: they
    /// leave with the TTL the host gave them.
    pub fn handle_host(&mut self, frame: &mut [u8], now: u64, out: &mut [u8; FRAME_LEN]) -> Action {
        let parsed = match parse(frame) {
            Ok(p) => p,
            Err(reason) => return self.drop(reason),
        };
        let Payload::Ip(ip) = parsed.payload else {
            return self.drop(DropReason::NonIp);
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (ip.src, ip.dst) else {
            return self.drop(DropReason::Ipv6Unsupported);
        };
        if !self.is_own(src) {
            return self.discard(Discard::Martian);
        }
        if let L4::Tcp { flags, .. } = ip.l4 {
            if !flags.valid() {
                return self.drop(DropReason::MalformedPacket);
            }
        }
        let tuple = Tuple::of(&ip);
        if let Some(t) = tuple {
            if let Some(hit) = self.conntrack.track(&t, &ip.l4, now) {
                let to = hit.other.reversed();
                let IpAddr::V4(to_dst) = to.dst else {
                    return self.drop(DropReason::MalformedPacket);
                };
                let Some((side, hop)) = self.next_hop(to_dst) else {
                    return self.discard(Discard::NoRoute);
                };
                let rewrite = (to != t).then_some(to);
                return self.transmit(frame, &ip, rewrite.as_ref(), side, hop, now, out, false);
            }
        }
        let state = match Opening::of(&ip) {
            Opening::Invalid => return self.drop(DropReason::MalformedPacket),
            Opening::Track(state) => tuple.map(|t| (t, state)),
            Opening::Untracked => None,
        };
        let Some((side, hop)) = self.next_hop(dst) else {
            return self.discard(Discard::NoRoute);
        };
        let mut rule = None;
        if !self
            .dns
            .as_ref()
            .is_some_and(|d| d.is_upstream(ip.dst, &ip.l4))
        {
            let key = FlowKey {
                direction: Direction::Output,
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                dport: ip.l4.dport(),
                in_iface: IfaceId::UNLISTED,
                out_iface: self.filter_iface[index(side)],
                established: false,
            };
            let verdict = self.filter.classify(&key, now);
            let bytes = ip.offsets.end.saturating_sub(ip.offsets.l3) as u64;
            self.count_rule(&verdict, bytes);
            self.note(&verdict, &key, &ip, None, Some(side), now);
            if let Some(reason) = verdict.drop_reason() {
                return self.drop(reason);
            }
            rule = verdict.rule;
        }
        let mut rewrite = None;
        if let Some((t, state)) = state {
            if self.conntrack.len() >= self.conntrack.capacity() {
                return self.drop(DropReason::ConntrackFull);
            }
            let mut translation = Translation::identity(t);
            // The host picks its ports without knowing the engine's masqueraded flows on the
            // same address: one that a flow's reply tuple holds is moved, as the kernel's NAT
            // moves a local connection's (see `NatPlan::rebind`).
            if !self.nat.is_empty() && self.conntrack.holds(&translation.reply, now) {
                if let Err(reason) = self.nat.rebind(&mut translation, &self.conntrack, now) {
                    return self.drop(reason);
                }
            }
            match self
                .conntrack
                .open(translation.orig, translation.reply, state, rule, now)
            {
                Ok(()) => {}
                Err(Refused::Full) => return self.drop(DropReason::ConntrackFull),
                Err(Refused::Clash) => return self.discard(Discard::Clash),
            }
            if !translation.is_identity() {
                rewrite = Some(translation.onward());
            }
        }
        self.transmit(frame, &ip, rewrite.as_ref(), side, hop, now, out, false)
    }

    /// Resolves the next hop and sends the frame on, translated to `rewrite` if given.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        frame: &mut [u8],
        ip: &Ip,
        rewrite: Option<&Tuple>,
        out_side: Side,
        hop: Ipv4Addr,
        now: u64,
        out: &mut [u8; FRAME_LEN],
    ) -> Action {
        self.transmit(frame, ip, rewrite, out_side, hop, now, out, true)
    }

    /// [`send`](Engine::send), for a forwarded packet (`forwarded`: TTL down by one, which
    /// must leave it above 0) or one the host originated (sent as the host wrote it).
    #[allow(clippy::too_many_arguments)]
    fn transmit(
        &mut self,
        frame: &mut [u8],
        ip: &Ip,
        rewrite: Option<&Tuple>,
        out_side: Side,
        hop: Ipv4Addr,
        now: u64,
        out: &mut [u8; FRAME_LEN],
        forwarded: bool,
    ) -> Action {
        // Before resolving, so that an expiring packet does not cost an ARP request.
        if forwarded && ip.ttl <= 1 {
            return self.discard(Discard::TtlExceeded);
        }
        let (mac, ask) = match self.neighbours.resolve(out_side, hop, now) {
            Resolved::Mac(mac) => (mac, false),
            Resolved::MacAndAsk(mac) => {
                self.neighbours.request(out_side, hop, Some(mac), out);
                (mac, true)
            }
            Resolved::Ask => {
                self.neighbours.request(out_side, hop, None, out);
                self.totals.arp_requests += 1;
                self.discards[Discard::Unresolved as usize] += 1;
                return Action::Reply(out_side);
            }
            Resolved::Wait => return self.discard(Discard::Unresolved),
            Resolved::OffLink => return self.discard(Discard::NoRoute),
        };
        if let Some(to) = rewrite {
            if let Err(reason) = nat::rewrite(frame, ip, to) {
                return self.drop(reason);
            }
        }
        let own = self.neighbours.own(out_side);
        let written = if forwarded {
            record_route(frame, ip, own.ip).and_then(|()| forward(frame, ip, mac, own.mac))
        } else {
            address(frame, ip, mac, own.mac)
        };
        match written {
            Ok(()) => {
                if forwarded {
                    self.totals.forwarded += 1;
                } else {
                    self.totals.from_host += 1;
                }
                self.totals.arp_requests += u64::from(ask);
                Action::Forward { out: out_side, ask }
            }
            Err(NotForwarded::TtlExceeded) => self.discard(Discard::TtlExceeded),
            Err(NotForwarded::Mismatch) => self.drop(DropReason::MalformedPacket),
        }
    }

    /// The side and next hop for `dst`, for a packet that arrived on `from`.
    fn route(&self, from: Side, dst: Ipv4Addr) -> Option<(Side, Ipv4Addr)> {
        self.next_hop(dst).filter(|(to, _)| *to == other(from))
    }

    /// The side and next hop for `dst`, from wherever.
    fn next_hop(&self, dst: Ipv4Addr) -> Option<(Side, Ipv4Addr)> {
        let (lan, wan) = (
            self.neighbours.own(Side::Lan),
            self.neighbours.own(Side::Wan),
        );
        let to = if lan.on_link(dst) {
            (Side::Lan, dst)
        } else if wan.on_link(dst) {
            (Side::Wan, dst)
        } else if lan.in_subnet(dst)
            || wan.in_subnet(dst)
            || dst.is_broadcast()
            || dst.is_multicast()
            || dst.is_unspecified()
            || dst.is_loopback()
        {
            return None;
        } else {
            (Side::Wan, self.gateway?)
        };
        Some(to)
    }

    fn is_own(&self, ip: Ipv4Addr) -> bool {
        ip == self.neighbours.own(Side::Lan).ip || ip == self.neighbours.own(Side::Wan).ip
    }

    /// Sources the kernel refuses too (`ip_route_input_slow`'s martians: multicast, the
    /// limited broadcast, 0.0.0.0, loopback), and what only the engine can tell: its own
    /// addresses and the other side's subnet. The rest of 0.0.0.0/8 is unicast to Linux
    /// since 5.3, and forwarded.
    fn martian(&self, side: Side, src: Ipv4Addr) -> bool {
        self.is_own(src)
            || self.neighbours.own(other(side)).in_subnet(src)
            || src.is_broadcast()
            || src.is_multicast()
            || src.is_unspecified()
            || src.is_loopback()
    }

    fn count_rule(&mut self, verdict: &Verdict, bytes: u64) {
        let at = match verdict.rule {
            Some(rule) => rule as usize,
            None => {
                self.filter.rule_count()
                    + match verdict.action {
                        filter::Action::Accept => DEFAULT_ACCEPT,
                        filter::Action::Deny => DEFAULT_DENY,
                    }
            }
        };
        if let Some(count) = self.rules.get_mut(at) {
            count.add(bytes);
        }
    }

    /// Holds the packet for the event log if its verdict is logged (see [`Logbook::note`]).
    fn note(
        &mut self,
        verdict: &Verdict,
        key: &FlowKey,
        ip: &Ip,
        from: Option<Side>,
        to: Option<Side>,
        now: u64,
    ) -> Option<usize> {
        if !verdict.log {
            return None;
        }
        let packet = Logged {
            at: now,
            rule: verdict.rule,
            direction: key.direction,
            accept: verdict.action == filter::Action::Accept,
            from,
            to,
            src: key.src,
            dst: key.dst,
            proto: ip.proto,
            l4: match (ip.l4, key.dport) {
                // The filter's view: the port destination NAT gave it.
                (L4::Tcp { sport, flags, .. }, Some(dport)) => L4::Tcp {
                    sport,
                    dport,
                    flags,
                },
                (L4::Udp { sport, .. }, Some(dport)) => L4::Udp { sport, dport },
                (l4, _) => l4,
            },
            translated: None,
        };
        self.log.note(verdict, self.filter.rule_count(), packet)
    }

    fn drop(&mut self, reason: DropReason) -> Action {
        self.drops[reason as usize] += 1;
        Action::Drop(reason)
    }

    fn discard(&mut self, why: Discard) -> Action {
        self.discards[why as usize] += 1;
        Action::Discard(why)
    }

    /// Removes expired flows, looking at no more than `budget` entries, and expired learned
    /// addresses; returns the flows removed. Call it regularly (once a second or so): a flow
    /// that sends nothing more is found only here.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        self.filter.expire_learned(now);
        self.conntrack.sweep(now, budget)
    }

    /// Allows `addr` for the `destination_fqdn` rule at position `rule` until `expires` (see
    /// [`Filter::learn`]); false when that rule is not a `destination_fqdn` rule.
    pub fn learn(&mut self, rule: u32, addr: IpAddr, expires: u64) -> bool {
        self.filter.learn(rule, addr, expires)
    }

    pub fn forget(&mut self, rule: u32, addr: IpAddr) {
        self.filter.forget(rule, addr);
    }

    /// Packets and bytes each rule decided, in policy order, then `default-accept` and
    /// `default-deny`.
    pub fn rule_counts(&self) -> impl Iterator<Item = RuleCount<'_>> + '_ {
        let n = self.filter.rule_count();
        self.rules.iter().enumerate().map(move |(i, &count)| {
            let (id, action) = match i.checked_sub(n) {
                None => u32::try_from(i)
                    .ok()
                    .and_then(|r| self.filter.rule(r))
                    .unwrap_or(("", filter::Action::Deny)),
                Some(DEFAULT_ACCEPT) => ("default-accept", filter::Action::Accept),
                Some(_) => ("default-deny", filter::Action::Deny),
            };
            RuleCount { id, action, count }
        })
    }

    /// The count of rule `id` (or of `default-accept` / `default-deny`).
    pub fn rule_count(&self, id: &str) -> Option<Count> {
        self.rule_counts().find(|r| r.id == id).map(|r| r.count)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn discards(&self, why: Discard) -> u64 {
        self.discards[why as usize]
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Flows held (expired ones not yet swept included) and the table's capacity.
    pub fn conntrack_usage(&self) -> (usize, usize) {
        (self.conntrack.len(), self.conntrack.capacity())
    }

    pub fn own(&self, side: Side) -> &Own {
        self.neighbours.own(side)
    }

    /// Changes whenever the neighbour table learns a MAC (see [`Neighbours::learned`]): a
    /// host packet that waited for its next hop ([`Action::Reply`] from
    /// [`Engine::handle_host`]) is worth handing over again.
    pub fn neighbours_learned(&self) -> u64 {
        self.neighbours.learned()
    }
}

/// The input ICMP the kernel plane's essentials rule accepts over IPv4: echo requests and
/// fragmentation-needed (PMTUD).
fn essential_icmp(ip: &Ip) -> bool {
    matches!(
        (ip.proto, ip.l4),
        (
            proto::ICMP,
            L4::Icmp {
                ty: icmp_type::V4_ECHO_REQUEST,
                ..
            }
        ) | (proto::ICMP, L4::Icmp { ty: 3, code: 4, .. })
    )
}

#[cfg(all(test, feature = "std"))]
mod tests;

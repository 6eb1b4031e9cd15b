//! The validated policy: what `rules.yaml` means once every value has been checked.
//! Everything downstream (compiler, explain, engine) reads these types, never YAML.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Where a value stood in the policy file (1-based), for diagnostics and `explain`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub defaults: Defaults,
    /// `interfaces:` as written; see [`Policy::topology`] for what it implies.
    pub interfaces: Option<Interfaces>,
    pub dns: DnsSettings,
    pub rules: Vec<Rule>,
    pub nat: Nat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Deny => "deny",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// Forwarded traffic (ingress / egress) that no rule decides.
    pub default_action: Action,
    /// Traffic to the firewall itself that no rule decides.
    pub input_action: Action,
    /// Traffic the firewall originates that no rule decides.
    pub output_action: Action,
    pub icmp_essentials: bool,
    /// Resolvers the DNS proxy forwards to; port 53 when the file gave a bare IP.
    pub upstream_dns: Vec<SocketAddr>,
    pub dns_qps_per_client: u32,
    pub conntrack_timeouts: ConntrackTimeouts,
    pub flow_trace_sample_accept: f64,
    pub flow_trace_sample_drop: f64,
}

/// Seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    pub tcp_syn_sent: u32,
    pub tcp_established: u32,
    pub tcp_time_wait: u32,
    pub udp_idle: u32,
    pub icmp_echo: u32,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            tcp_syn_sent: 30,
            tcp_established: 3600,
            tcp_time_wait: 60,
            udp_idle: 60,
            icmp_echo: 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interfaces {
    pub lan: Vec<String>,
    pub wan: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlisted {
    Forward,
    Nxdomain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Empty: the first address of the first LAN interface, port 53 (resolved at run time).
    pub listen: Vec<SocketAddr>,
    /// `None`: the default (on in gateway mode).
    pub intercept: Option<bool>,
    pub unlisted: Unlisted,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub max_ips_per_name: u32,
    pub capacity: u32,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            listen: Vec::new(),
            intercept: None,
            unlisted: Unlisted::Forward,
            min_ttl: 5,
            max_ttl: 86400,
            max_ips_per_name: 256,
            capacity: 32768,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
    Input,
    Output,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// Inclusive port range; a single port has `lo == hi`. Always `1 <= lo <= hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
    pub fn covers(&self, other: &PortRange) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A `destination_fqdn` pattern, lowercase, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FqdnPattern {
    /// `github.com`: exactly that name.
    Exact(String),
    /// `*.example.com` (stores `example.com`): exactly one more label.
    OneLabel(String),
    /// `.example.com` (stores `example.com`): the name itself and every name below it.
    Subtree(String),
}

impl fmt::Display for FqdnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FqdnPattern::Exact(n) => write!(f, "{n}"),
            FqdnPattern::OneLabel(n) => write!(f, "*.{n}"),
            FqdnPattern::Subtree(n) => write!(f, ".{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Established,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub name: Option<String>,
    pub action: Action,
    /// `None`: ingress or egress (forwarded traffic either way).
    pub direction: Option<Direction>,
    /// Empty: any source. Nested prefixes are kept as written.
    pub source: Vec<IpNet>,
    /// Empty: any destination (unless `destination_fqdn` is set).
    pub destination: Vec<IpNet>,
    /// Non-empty only when `destination` is empty.
    pub destination_fqdn: Vec<FqdnPattern>,
    /// Empty: any port. Non-empty only for tcp, udp, or an omitted protocol (= tcp or udp).
    pub destination_port: Vec<PortRange>,
    pub protocol: Option<Protocol>,
    pub state: Option<State>,
    pub in_interface: Option<String>,
    pub out_interface: Option<String>,
    pub log: bool,
    /// Where `- id:` of this rule stands.
    pub span: Span,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nat {
    pub snat: Vec<Snat>,
    pub dnat: Vec<Dnat>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnatTo {
    Masquerade,
    Address {
        ip: IpAddr,
        port_range: Option<PortRange>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snat {
    pub out_interface: String,
    pub source: IpNet,
    pub to: SnatTo,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatProto {
    Tcp,
    Udp,
}

impl NatProto {
    pub fn as_str(self) -> &'static str {
        match self {
            NatProto::Tcp => "tcp",
            NatProto::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnat {
    pub wan_ip: IpAddr,
    pub wan_port: u16,
    pub to: SocketAddr,
    pub proto: NatProto,
    /// `None`: from anywhere.
    pub from: Option<IpNet>,
    pub span: Span,
}

/// How forwarded traffic splits into ingress and egress (SPEC §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// LAN → WAN is egress, WAN → LAN is ingress; other forwarded traffic gets the default.
    Gateway { lan: Vec<String>, wan: Vec<String> },
    /// WAN interfaces from `nat.snat` out_interfaces; every other interface is LAN.
    SnatWan { wan: Vec<String> },
    /// No notion of sides: ingress / egress rules match forwarded traffic either way.
    Host,
}

impl Policy {
    pub fn topology(&self) -> Topology {
        if let Some(i) = &self.interfaces {
            return Topology::Gateway {
                lan: i.lan.clone(),
                wan: i.wan.clone(),
            };
        }
        let mut wan: Vec<String> = Vec::new();
        for s in &self.nat.snat {
            if !wan.contains(&s.out_interface) {
                wan.push(s.out_interface.clone());
            }
        }
        if wan.is_empty() {
            Topology::Host
        } else {
            Topology::SnatWan { wan }
        }
    }
}

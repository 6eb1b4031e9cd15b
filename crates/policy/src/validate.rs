//! Node tree → `Policy`: every schema and meaning check, each error pinned to the key or value
//! it is about. Keeps going after an error so one run reports as much as practical.

use crate::diag::Diagnostic;
use crate::model::*;
use crate::parse::{Entry, Kind, Node};
use ipnet::IpNet;
use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, SocketAddr};

/// Most rules a policy may have (SPEC §2).
pub const MAX_RULES: usize = 100_000;
/// Errors beyond this many are counted, not kept: a systematic mistake in a huge file
/// should not produce a gigabyte of messages.
const MAX_ERRORS: usize = 1000;

const TOP_KEYS: &[&str] = &["defaults", "interfaces", "dns", "rules", "nat"];
const DEFAULTS_KEYS: &[&str] = &[
    "default_action",
    "input_action",
    "output_action",
    "icmp_essentials",
    "upstream_dns",
    "dns_qps_per_client",
    "conntrack_timeouts",
    "flow_trace_sample_accept",
    "flow_trace_sample_drop",
];
const TIMEOUT_KEYS: &[&str] = &[
    "tcp_syn_sent",
    "tcp_established",
    "tcp_time_wait",
    "udp_idle",
    "icmp_echo",
];
const INTERFACES_KEYS: &[&str] = &["lan", "wan"];
const DNS_KEYS: &[&str] = &[
    "listen",
    "intercept",
    "unlisted",
    "min_ttl",
    "max_ttl",
    "max_ips_per_name",
    "capacity",
];
const RULE_KEYS: &[&str] = &[
    "id",
    "name",
    "action",
    "direction",
    "source",
    "destination",
    "destination_fqdn",
    "destination_port",
    "protocol",
    "state",
    "in_interface",
    "out_interface",
    "log",
];
const NAT_KEYS: &[&str] = &["snat", "dnat"];
const SNAT_KEYS: &[&str] = &[
    "out_interface",
    "source",
    "masquerade",
    "external_ip",
    "port_range",
];
const PORT_RANGE_KEYS: &[&str] = &["min", "max"];
const DNAT_KEYS: &[&str] = &["wan_ip", "wan_port", "to", "proto", "from"];

const ACTIONS: &[(&str, Action)] = &[("accept", Action::Accept), ("deny", Action::Deny)];
const DIRECTIONS: &[(&str, Direction)] = &[
    ("ingress", Direction::Ingress),
    ("egress", Direction::Egress),
    ("input", Direction::Input),
    ("output", Direction::Output),
];
const PROTOCOLS: &[(&str, Protocol)] = &[
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("icmp", Protocol::Icmp),
    ("icmpv6", Protocol::Icmpv6),
];
const STATES: &[(&str, State)] = &[("established", State::Established)];
const UNLISTED: &[(&str, Unlisted)] = &[
    ("forward", Unlisted::Forward),
    ("nxdomain", Unlisted::Nxdomain),
];
const NAT_PROTOS: &[(&str, NatProto)] = &[("tcp", NatProto::Tcp), ("udp", NatProto::Udp)];

/// Rules checked one by one while the file is parsed, and the ids seen so far (for the
/// duplicate message: id → line of its first definition).
#[derive(Default)]
pub(crate) struct Streamed {
    taken: bool,
    rules: Vec<Rule>,
    ids: HashMap<String, u32>,
    /// The errors (and suppressed errors) found in them, which come first.
    errors: usize,
    suppressed: usize,
}

/// Diagnostics collected while validating one file.
pub(crate) struct Validator<'f> {
    file: &'f str,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    suppressed: usize,
}

/// A checked mapping: unknown and duplicate keys already reported.
struct Obj<'a> {
    span: Span,
    entries: Vec<&'a Entry>,
}

impl<'a> Obj<'a> {
    fn empty(span: Span) -> Self {
        Obj {
            span,
            entries: Vec::new(),
        }
    }

    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries.iter().copied().find(|e| e.key == key)
    }

    /// The value of `key`; an explicit null counts as omitted.
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entry(key)
            .map(|e| &*e.value)
            .filter(|n| !matches!(n.kind, Kind::Null))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn one_of<T: Copy>(table: &[(&str, T)]) -> String {
    table.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
}

/// Wraps a list or a single value as items with their element paths; `what` names the
/// element type for the error message.
fn items<'a>(node: &'a Node, what: &str) -> Result<Vec<(Option<usize>, &'a Node)>, String> {
    match &node.kind {
        Kind::Seq(v) => Ok(v.iter().enumerate().map(|(i, n)| (Some(i), &**n)).collect()),
        Kind::Scalar { .. } => Ok(vec![(None, node)]),
        Kind::Null | Kind::Map(_) => Err(format!(
            "expected {what} or a list of them, got {}",
            node.describe()
        )),
    }
}

fn item_path(path: &str, index: Option<usize>) -> String {
    match index {
        Some(i) => format!("{path}[{i}]"),
        None => path.to_string(),
    }
}

/// The text of a scalar; anything else is a type error naming `what` was expected.
fn scalar<'a>(node: &'a Node, what: &str) -> Result<&'a str, String> {
    match &node.kind {
        Kind::Scalar { text, .. } => Ok(text),
        _ => Err(format!("expected {what}, got {}", node.describe())),
    }
}

fn parse_bool(node: &Node) -> Result<bool, String> {
    // YAML 1.1's yes/no/on/off and quoted "true" are deliberately not booleans here.
    match &node.kind {
        Kind::Scalar { text, plain: true } if text == "true" => Ok(true),
        Kind::Scalar { text, plain: true } if text == "false" => Ok(false),
        _ => Err(format!("expected true or false, got {}", node.describe())),
    }
}

/// A decimal integer, written plain (`443`) or quoted (`"443"`).
fn parse_uint(node: &Node, what: &str) -> Result<u64, String> {
    let text = scalar(node, what)?;
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected {what}, got {}", node.describe()));
    }
    // All digits, so the only possible failure is overflow.
    digits.parse::<u64>().or(Ok(u64::MAX))
}

fn parse_positive_u32(node: &Node) -> Result<u32, String> {
    const WHAT: &str = "a positive integer";
    let v = parse_uint(node, WHAT)?;
    if v == 0 || v > u64::from(u32::MAX) {
        return Err(format!(
            "expected {WHAT} (1-{}), got {}",
            u32::MAX,
            node.describe()
        ));
    }
    u32::try_from(v).map_err(|_| format!("expected {WHAT}, got {}", node.describe()))
}

fn parse_fraction(node: &Node) -> Result<f64, String> {
    const WHAT: &str = "a number from 0.0 to 1.0";
    let text = scalar(node, WHAT)?;
    let ok_chars = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    match text.parse::<f64>() {
        Ok(v) if ok_chars && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected {WHAT}, got {}", node.describe())),
    }
}

fn parse_enum<T: Copy>(node: &Node, table: &[(&str, T)]) -> Result<T, String> {
    if let Kind::Scalar { text, .. } = &node.kind {
        if let Some((_, v)) = table.iter().find(|(s, _)| s == text) {
            return Ok(*v);
        }
    }
    Err(format!(
        "expected one of {}, got {}",
        one_of(table),
        node.describe()
    ))
}

/// A single port 1-65535.
fn port_value(text: &str) -> Result<u16, String> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a port 1-65535, got {text}"));
    }
    match t.parse::<u32>() {
        Ok(p @ 1..=65535) => {
            u16::try_from(p).map_err(|_| format!("expected a port 1-65535, got {text}"))
        }
        _ => Err(format!("expected a port 1-65535, got {text}")),
    }
}

impl PortRange {
    /// Parses `443` or `1000-2000` (inclusive).
    pub fn parse(text: &str) -> Result<PortRange, String> {
        match text.split_once('-') {
            None => port_value(text).map(|p| PortRange { lo: p, hi: p }),
            Some((lo, hi)) => {
                let (Ok(lo), Ok(hi)) = (port_value(lo), port_value(hi)) else {
                    return Err(format!(
                        "expected a port 1-65535 or a range lo-hi, got {text}"
                    ));
                };
                if lo > hi {
                    return Err(format!(
                        "port range {lo}-{hi} starts above its end; write {hi}-{lo}"
                    ));
                }
                Ok(PortRange { lo, hi })
            }
        }
    }
}

/// A CIDR or bare address (= /32, /128), normalised to its network. The flag says whether
/// host bits had to be cleared, so the caller can warn.
pub(crate) fn parse_net(text: &str) -> Result<(IpNet, bool), String> {
    if let Some((addr, len)) = text.split_once('/') {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("expected an IP address or CIDR, got {text}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let len: u8 = match len.parse::<u32>() {
            Ok(l) if l <= max && !len.starts_with('+') => {
                u8::try_from(l).map_err(|_| format!("bad prefix length in {text}"))?
            }
            Ok(l) => {
                return Err(format!(
                    "prefix length /{l} is too long for {family} (at most /{max}) in {text}"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "expected a prefix length 0-{max} after '/', got {text}"
                ))
            }
        };
        let net = IpNet::new(ip, len).map_err(|_| format!("bad prefix length in {text}"))?;
        let trunc = net.trunc();
        Ok((trunc, trunc != net))
    } else {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("expected an IP address or CIDR, got {text}"))?;
        Ok((IpNet::from(ip), false))
    }
}

/// `ip:port` (IPv6 as `[addr]:port`), or with `default_port` also a bare IP.
fn parse_socket(text: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("port 0 is not allowed in {text}; use 1-65535"));
        }
        return Ok(sa);
    }
    if let Some(port) = default_port {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        return Err(format!(
            "expected an IP or IP:port (IPv6 as [addr]:port), got {text}"
        ));
    }
    Err(format!(
        "expected ip:port (IPv6 as [addr]:port), got {text}"
    ))
}

/// Linux interface names: 1-15 bytes, not `.`/`..`, no `/`, `:`, whitespace or control
/// characters (what the kernel's dev_valid_name accepts, minus alias syntax).
fn check_ifname(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 15 {
        return Err(format!(
            "interface names are 1-15 characters, got {text:?} ({} bytes)",
            text.len()
        ));
    }
    if text == "." || text == ".." {
        return Err(format!("{text:?} is not a valid interface name"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {text:?} contains {c:?}, which Linux does not allow"
        ));
    }
    // nftables reads a leading '@' as the name of a set.
    if text.starts_with('@') {
        return Err(format!(
            "interface name {text:?} starts with '@', which nftables reads as a set name"
        ));
    }
    // Linux allows '"', but nft's language has no way to write it inside a quoted name.
    if text.contains('"') {
        return Err(format!(
            "interface name {text:?} contains '\"', which nftables cannot match"
        ));
    }
    Ok(())
}

/// The rule ids under which the default verdicts are counted and logged (SPEC §3).
const RESERVED_IDS: [&str; 2] = ["default-deny", "default-accept"];

fn is_valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Address families present in a prefix list: (has IPv4, has IPv6).
fn families(nets: &[IpNet]) -> (bool, bool) {
    (
        nets.iter().any(|n| matches!(n, IpNet::V4(_))),
        nets.iter().any(|n| matches!(n, IpNet::V6(_))),
    )
}

impl<'f> Validator<'f> {
    pub fn new(file: &'f str) -> Self {
        Validator {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
            suppressed: 0,
        }
    }

    fn diag(&self, span: Span, path: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: span.line,
            col: span.col,
            path: path.to_string(),
            message,
        }
    }

    pub fn err(&mut self, span: Span, path: &str, message: impl Into<String>) {
        if self.errors.len() >= MAX_ERRORS {
            self.suppressed += 1;
            return;
        }
        let d = self.diag(span, path, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, span: Span, path: &str, message: impl Into<String>) {
        let d = self.diag(span, path, message.into());
        self.warnings.push(d);
    }

    /// Sorts findings into file order and notes how many errors were dropped.
    pub fn finish(&mut self) {
        self.errors.sort_by_key(|d| (d.line, d.col));
        self.warnings.sort_by_key(|d| (d.line, d.col));
        if self.suppressed > 0 {
            let last = self.errors.last().map_or((1, 1), |d| (d.line, d.col));
            let d = self.diag(
                Span {
                    line: last.0,
                    col: last.1,
                },
                "",
                format!(
                    "{} more errors not shown; fix the ones above first",
                    self.suppressed
                ),
            );
            self.errors.push(d);
        }
    }

    /// Reports a `Result` error at `node`, turning it into an `Option`.
    fn check<T>(&mut self, node: &Node, path: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.err(node.span, path, m);
                None
            }
        }
    }

    /// Checks that `node` is a mapping with only `allowed` keys, each at most once. A null
    /// node (a section written with nothing under it) is an empty mapping.
    fn object<'a>(&mut self, node: &'a Node, path: &str, allowed: &[&str]) -> Option<Obj<'a>> {
        let entries = match &node.kind {
            Kind::Map(entries) => entries,
            Kind::Null => return Some(Obj::empty(node.span)),
            _ => {
                let m = format!("expected a mapping, got {}", node.describe());
                self.err(node.span, path, m);
                return None;
            }
        };
        let mut obj = Obj {
            span: node.span,
            entries: Vec::with_capacity(entries.len()),
        };
        for e in entries {
            if e.key == "<<" {
                self.err(
                    e.key_span,
                    &join(path, &e.key),
                    "YAML merge keys (<<) are not supported; write the keys out",
                );
            } else if !allowed.contains(&e.key.as_str()) {
                let m = format!("unknown key '{}'; allowed: {}", e.key, allowed.join(", "));
                self.err(e.key_span, &join(path, &e.key), m);
            } else if let Some(first) = obj.entry(&e.key) {
                let m = format!(
                    "duplicate key '{}' (first given on line {})",
                    e.key, first.key_span.line
                );
                self.err(e.key_span, &join(path, &e.key), m);
            } else {
                obj.entries.push(e);
            }
        }
        Some(obj)
    }

    fn required<'a>(&mut self, obj: &Obj<'a>, path: &str, key: &str) -> Option<&'a Node> {
        let v = obj.get(key);
        if v.is_none() {
            match obj.entry(key) {
                Some(e) => self.err(
                    e.value.span,
                    &join(path, key),
                    format!("'{key}' needs a value"),
                ),
                None => self.err(obj.span, path, format!("missing required key '{key}'")),
            }
        }
        v
    }

    /// Parses an optional field with `f`, reporting its error at the value.
    fn field<T>(
        &mut self,
        obj: &Obj<'_>,
        path: &str,
        key: &str,
        f: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<T> {
        let node = obj.get(key)?;
        self.check_at(node, path, key, f(node))
    }

    /// Parses a required field with `f`.
    fn req_field<T>(
        &mut self,
        obj: &Obj<'_>,
        path: &str,
        key: &str,
        f: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<T> {
        let node = self.required(obj, path, key)?;
        self.check_at(node, path, key, f(node))
    }

    /// Like `check`, for the value of `key`; the path is only built for an error.
    fn check_at<T>(
        &mut self,
        node: &Node,
        path: &str,
        key: &str,
        r: Result<T, String>,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.err(node.span, &join(path, key), m);
                None
            }
        }
    }

    /// A CIDR list (or one CIDR). `None` when omitted; errors reported, bad items skipped.
    fn nets(&mut self, obj: &Obj<'_>, path: &str, key: &str) -> Option<Vec<IpNet>> {
        let node = obj.get(key)?;
        let kpath = join(path, key);
        let list = self.check(node, &kpath, items(node, "an IP address or CIDR"))?;
        if list.is_empty() {
            self.err(
                node.span,
                &kpath,
                format!("an empty list matches nothing; omit '{key}' to match any address"),
            );
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list {
            let r = scalar(item, "an IP address or CIDR").and_then(parse_net);
            if let Some(net) = self.check(item, &item_path(&kpath, i), r) {
                out.push(self.host_bits(item, &item_path(&kpath, i), net));
            }
        }
        Some(out)
    }

    /// Warns when a CIDR had host bits set (nftables would silently do the same).
    fn host_bits(&mut self, node: &Node, path: &str, (net, had_host_bits): (IpNet, bool)) -> IpNet {
        if had_host_bits {
            let m = format!("{} has host bits set; it means {net}", node.describe());
            self.warn(node.span, path, m);
        }
        net
    }

    fn single_net(&mut self, node: &Node, path: &str) -> Option<IpNet> {
        let r = scalar(node, "an IP address or CIDR").and_then(parse_net);
        let parsed = self.check(node, path, r)?;
        Some(self.host_bits(node, path, parsed))
    }

    fn ifname(node: &Node) -> Result<String, String> {
        let text = scalar(node, "an interface name")?;
        check_ifname(text)?;
        Ok(text.to_string())
    }

    fn ifnames(&mut self, node: &Node, path: &str) -> Vec<(String, Span)> {
        let Some(list) = self.check(node, path, items(node, "an interface name")) else {
            return Vec::new();
        };
        if list.is_empty() {
            self.err(node.span, path, "expected at least one interface name");
        }
        let mut out: Vec<(String, Span)> = Vec::new();
        for (i, item) in list {
            let ipath = item_path(path, i);
            if let Some(name) = self.check(item, &ipath, Self::ifname(item)) {
                if out.iter().any(|(n, _)| *n == name) {
                    self.err(
                        item.span,
                        &ipath,
                        format!("interface {name} is listed twice"),
                    );
                } else {
                    out.push((name, item.span));
                }
            }
        }
        out
    }

    // ----- sections -----

    /// The policy in `root`; `streamed` holds the rules already checked while parsing.
    pub fn policy(&mut self, root: Option<&Node>, streamed: Streamed) -> Option<Policy> {
        let errors_before = self.errors.len() + self.suppressed;
        let top = match root {
            Some(n) => self.object(n, "", TOP_KEYS)?,
            None => Obj::empty(Span { line: 1, col: 1 }),
        };
        let defaults = self.defaults(top.get("defaults"));
        let interfaces = top.get("interfaces").and_then(|n| self.interfaces(n));
        let dns = self.dns(top.get("dns"));
        let rules = self.rules(top.get("rules"), streamed);
        let nat = self.nat(top.get("nat"));
        if self.errors.len() + self.suppressed > errors_before {
            return None;
        }
        Some(Policy {
            defaults: defaults?,
            interfaces,
            dns: dns?,
            rules,
            nat: nat?,
        })
    }

    fn defaults(&mut self, node: Option<&Node>) -> Option<Defaults> {
        let path = "defaults";
        let mut d = Defaults {
            default_action: Action::Deny,
            input_action: Action::Deny,
            output_action: Action::Accept,
            icmp_essentials: true,
            upstream_dns: Vec::new(),
            dns_qps_per_client: 100,
            conntrack_timeouts: ConntrackTimeouts::default(),
            flow_trace_sample_accept: 0.01,
            flow_trace_sample_drop: 1.0,
        };
        let Some(node) = node else { return Some(d) };
        let o = self.object(node, path, DEFAULTS_KEYS)?;
        let action = |n: &Node| parse_enum(n, ACTIONS);
        if let Some(a) = self.field(&o, path, "default_action", action) {
            d.default_action = a;
        }
        if let Some(a) = self.field(&o, path, "input_action", action) {
            d.input_action = a;
        }
        if let Some(a) = self.field(&o, path, "output_action", action) {
            d.output_action = a;
        }
        if let Some(b) = self.field(&o, path, "icmp_essentials", parse_bool) {
            d.icmp_essentials = b;
        }
        if let Some(n) = o.get("upstream_dns") {
            let kpath = join(path, "upstream_dns");
            if let Some(list) = self.check(n, &kpath, items(n, "an IP or IP:port")) {
                for (i, item) in list {
                    let r =
                        scalar(item, "an IP or IP:port").and_then(|t| parse_socket(t, Some(53)));
                    if let Some(sa) = self.check(item, &item_path(&kpath, i), r) {
                        d.upstream_dns.push(sa);
                    }
                }
            }
        }
        if let Some(v) = self.field(&o, path, "dns_qps_per_client", parse_positive_u32) {
            d.dns_qps_per_client = v;
        }
        if let Some(n) = o.get("conntrack_timeouts") {
            let tpath = join(path, "conntrack_timeouts");
            if let Some(t) = self.object(n, &tpath, TIMEOUT_KEYS) {
                let ct = &mut d.conntrack_timeouts;
                let slots: [(&str, &mut u32); 5] = [
                    ("tcp_syn_sent", &mut ct.tcp_syn_sent),
                    ("tcp_established", &mut ct.tcp_established),
                    ("tcp_time_wait", &mut ct.tcp_time_wait),
                    ("udp_idle", &mut ct.udp_idle),
                    ("icmp_echo", &mut ct.icmp_echo),
                ];
                for (key, slot) in slots {
                    if let Some(v) = self.field(&t, &tpath, key, parse_positive_u32) {
                        *slot = v;
                    }
                }
            }
        }
        if let Some(v) = self.field(&o, path, "flow_trace_sample_accept", parse_fraction) {
            d.flow_trace_sample_accept = v;
        }
        if let Some(v) = self.field(&o, path, "flow_trace_sample_drop", parse_fraction) {
            d.flow_trace_sample_drop = v;
        }
        Some(d)
    }

    fn interfaces(&mut self, node: &Node) -> Option<Interfaces> {
        let path = "interfaces";
        let o = self.object(node, path, INTERFACES_KEYS)?;
        let lan_node = self.required(&o, path, "lan");
        let wan_node = self.required(&o, path, "wan");
        let lan = lan_node.map(|n| self.ifnames(n, "interfaces.lan"));
        let wan = wan_node.map(|n| self.ifnames(n, "interfaces.wan"));
        let (lan, wan) = (lan?, wan?);
        for (name, span) in &wan {
            if lan.iter().any(|(l, _)| l == name) {
                self.err(
                    *span,
                    "interfaces.wan",
                    format!("interface {name} is listed in both lan and wan"),
                );
            }
        }
        Some(Interfaces {
            lan: lan.into_iter().map(|(n, _)| n).collect(),
            wan: wan.into_iter().map(|(n, _)| n).collect(),
        })
    }

    fn dns(&mut self, node: Option<&Node>) -> Option<DnsSettings> {
        let path = "dns";
        let mut d = DnsSettings::default();
        let Some(node) = node else { return Some(d) };
        let o = self.object(node, path, DNS_KEYS)?;
        if let Some(n) = o.get("listen") {
            let kpath = join(path, "listen");
            if let Some(list) = self.check(n, &kpath, items(n, "an IP:port")) {
                for (i, item) in list {
                    let r =
                        scalar(item, "an IP or IP:port").and_then(|t| parse_socket(t, Some(53)));
                    if let Some(sa) = self.check(item, &item_path(&kpath, i), r) {
                        d.listen.push(sa);
                    }
                }
            }
        }
        d.intercept = self.field(&o, path, "intercept", parse_bool);
        if let Some(u) = self.field(&o, path, "unlisted", |n| parse_enum(n, UNLISTED)) {
            d.unlisted = u;
        }
        let min = self.field(&o, path, "min_ttl", parse_positive_u32);
        let max = self.field(&o, path, "max_ttl", parse_positive_u32);
        d.min_ttl = min.unwrap_or(d.min_ttl);
        d.max_ttl = max.unwrap_or(d.max_ttl);
        if d.min_ttl > d.max_ttl {
            // Point at whichever the user wrote; the other one is a default.
            let key = if max.is_some() { "max_ttl" } else { "min_ttl" };
            if let Some(n) = o.get(key) {
                self.err(
                    n.span,
                    &join(path, key),
                    format!(
                        "min_ttl ({}) must not be greater than max_ttl ({})",
                        d.min_ttl, d.max_ttl
                    ),
                );
            }
        }
        if let Some(v) = self.field(&o, path, "max_ips_per_name", parse_positive_u32) {
            d.max_ips_per_name = v;
        }
        if let Some(v) = self.field(&o, path, "capacity", parse_positive_u32) {
            d.capacity = v;
        }
        Some(d)
    }

    fn rules(&mut self, node: Option<&Node>, streamed: Streamed) -> Vec<Rule> {
        let Some(node) = node else {
            return Vec::new();
        };
        let Kind::Seq(list) = &node.kind else {
            let m = format!("expected a list of rules, got {}", node.describe());
            self.err(node.span, "rules", m);
            return Vec::new();
        };
        if list.len() > MAX_RULES {
            if streamed.taken {
                // The one message that matters here.
                self.errors.drain(..streamed.errors);
                self.suppressed -= streamed.suppressed;
            }
            let m = format!("at most {MAX_RULES} rules, got {}", list.len());
            self.err(node.span, "rules", m);
            return Vec::new();
        }
        if streamed.taken {
            return streamed.rules;
        }
        let mut out = Streamed::default();
        for (i, item) in list.iter().enumerate() {
            self.stream_rule(&mut out, i, item);
        }
        out.rules
    }

    /// Ends streaming: `taken` says whether the parser handed over any rule.
    pub fn end_stream(&self, s: &mut Streamed, taken: bool) {
        s.taken = taken;
        s.errors = self.errors.len();
        s.suppressed = self.suppressed;
    }

    /// Checks `rules[index]`, as the parser hands it over (`parse::parse_yaml`).
    pub fn stream_rule(&mut self, s: &mut Streamed, index: usize, node: &Node) {
        if let Some(rule) = self.rule(node, index, &mut s.ids) {
            s.rules.push(rule);
        }
    }

    fn rule(&mut self, node: &Node, index: usize, ids: &mut HashMap<String, u32>) -> Option<Rule> {
        let path = format!("rules[{index}]");
        let path = path.as_str();
        let o = self.object(node, path, RULE_KEYS)?;
        let before = self.errors.len() + self.suppressed;

        let id = match self.required(&o, path, "id") {
            Some(n) => match &n.kind {
                Kind::Scalar { text, .. } if is_valid_id(text) => {
                    if RESERVED_IDS.contains(&text.as_str()) {
                        let m = format!(
                            "rule id '{text}' is reserved: ward reports the direction's default verdict under it; choose another id"
                        );
                        self.err(n.span, &join(path, "id"), m);
                    } else if let Some(first) = ids.get(text.as_str()) {
                        let m = format!("duplicate rule id '{text}' (first used on line {first})");
                        self.err(n.span, &join(path, "id"), m);
                    } else {
                        ids.insert(text.clone(), n.span.line);
                    }
                    Some(text.clone())
                }
                _ => {
                    let m = format!(
                        "expected an id of lowercase letters, digits and '-', starting with a letter, at most 64 characters, got {}",
                        n.describe()
                    );
                    self.err(n.span, &join(path, "id"), m);
                    None
                }
            },
            None => None,
        };
        let name = self.field(&o, path, "name", |n| {
            scalar(n, "a string").map(str::to_string)
        });
        let action = self.req_field(&o, path, "action", |n| parse_enum(n, ACTIONS));
        let direction = self.field(&o, path, "direction", |n| parse_enum(n, DIRECTIONS));
        let source = self.nets(&o, path, "source").unwrap_or_default();
        let destination = self.nets(&o, path, "destination").unwrap_or_default();
        let destination_fqdn = self.fqdns(&o, path);
        let destination_port = self.ports(&o, path);
        let protocol = self.field(&o, path, "protocol", |n| parse_enum(n, PROTOCOLS));
        let state = self.field(&o, path, "state", |n| parse_enum(n, STATES));
        let in_interface = self.field(&o, path, "in_interface", Self::ifname);
        let out_interface = self.field(&o, path, "out_interface", Self::ifname);
        let log = self.field(&o, path, "log", parse_bool).unwrap_or(false);

        // Cross-field checks: combinations that are contradictions, not preferences.
        if o.get("destination").is_some() {
            if let Some(e) = o
                .entry("destination_fqdn")
                .filter(|e| !matches!(e.value.kind, Kind::Null))
            {
                self.err(
                    e.key_span,
                    &join(path, "destination_fqdn"),
                    "destination and destination_fqdn cannot be used together; split the rule",
                );
            }
        }
        if let (Some(p), Some(n)) = (protocol, o.get("destination_port")) {
            if !p.has_ports() {
                let m = format!(
                    "destination_port needs protocol tcp or udp (or no protocol), not {}",
                    p.as_str()
                );
                self.err(n.span, &join(path, "destination_port"), m);
            }
        }
        match direction {
            Some(Direction::Input) => {
                if let Some(n) = o.get("out_interface") {
                    self.err(
                        n.span,
                        &join(path, "out_interface"),
                        "direction input never has an out_interface (traffic ends at the firewall); the rule could never match",
                    );
                }
            }
            Some(Direction::Output) => {
                if let Some(n) = o.get("in_interface") {
                    self.err(
                        n.span,
                        &join(path, "in_interface"),
                        "direction output never has an in_interface (traffic starts at the firewall); the rule could never match",
                    );
                }
            }
            _ => {}
        }
        let (src4, src6) = families(&source);
        let (dst4, dst6) = families(&destination);
        if let Some(n) = o.get("destination") {
            if (src4 && !src6 && dst6 && !dst4) || (src6 && !src4 && dst4 && !dst6) {
                self.err(
                    n.span,
                    &join(path, "destination"),
                    "source and destination are different address families (IPv4 vs IPv6); the rule could never match",
                );
            }
        }
        if let (Some(p), Some(n)) = (protocol, o.get("protocol")) {
            let only6 = (src6 && !src4) || (dst6 && !dst4);
            let only4 = (src4 && !src6) || (dst4 && !dst6);
            if p == Protocol::Icmp && only6 {
                self.err(
                    n.span,
                    &join(path, "protocol"),
                    "protocol icmp is IPv4 but the addresses are IPv6; use icmpv6",
                );
            } else if p == Protocol::Icmpv6 && only4 {
                self.err(
                    n.span,
                    &join(path, "protocol"),
                    "protocol icmpv6 is IPv6 but the addresses are IPv4; use icmp",
                );
            }
        }

        if self.errors.len() + self.suppressed > before {
            return None;
        }
        let span = o.entry("id").map_or(o.span, |e| e.key_span);
        Some(Rule {
            id: id?,
            name,
            action: action?,
            direction,
            source,
            destination,
            destination_fqdn,
            destination_port,
            protocol,
            state,
            in_interface,
            out_interface,
            log,
            span,
        })
    }

    fn fqdns(&mut self, o: &Obj<'_>, path: &str) -> Vec<FqdnPattern> {
        self.scalar_list(
            o,
            path,
            "destination_fqdn",
            "a name pattern",
            "",
            FqdnPattern::parse,
        )
    }

    fn ports(&mut self, o: &Obj<'_>, path: &str) -> Vec<PortRange> {
        self.scalar_list(
            o,
            path,
            "destination_port",
            "a port or lo-hi range",
            " to match any port",
            PortRange::parse,
        )
    }

    /// A key holding one scalar or a list of them, each parsed by `parse`; an empty list is an
    /// error because it would match nothing.
    fn scalar_list<T>(
        &mut self,
        o: &Obj<'_>,
        path: &str,
        key: &str,
        what: &str,
        omit_hint: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(node) = o.get(key) else {
            return Vec::new();
        };
        let kpath = join(path, key);
        let Some(list) = self.check(node, &kpath, items(node, what)) else {
            return Vec::new();
        };
        if list.is_empty() {
            let msg = format!(
                "an empty list matches nothing; omit '{key}'{}",
                if omit_hint.is_empty() {
                    " instead"
                } else {
                    omit_hint
                }
            );
            self.err(node.span, &kpath, &msg);
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list {
            let r = scalar(item, what).and_then(&parse);
            if let Some(p) = self.check(item, &item_path(&kpath, i), r) {
                out.push(p);
            }
        }
        out
    }

    fn nat(&mut self, node: Option<&Node>) -> Option<Nat> {
        let mut nat = Nat::default();
        let Some(node) = node else { return Some(nat) };
        let o = self.object(node, "nat", NAT_KEYS)?;
        for (key, is_snat) in [("snat", true), ("dnat", false)] {
            let Some(list_node) = o.get(key) else {
                continue;
            };
            let kpath = join("nat", key);
            let Kind::Seq(list) = &list_node.kind else {
                let m = format!("expected a list, got {}", list_node.describe());
                self.err(list_node.span, &kpath, m);
                continue;
            };
            for (i, item) in list.iter().enumerate() {
                let ipath = format!("{kpath}[{i}]");
                if is_snat {
                    if let Some(s) = self.snat(item, &ipath) {
                        nat.snat.push(s);
                    }
                } else if let Some(d) = self.dnat(item, &ipath) {
                    nat.dnat.push(d);
                }
            }
        }
        Some(nat)
    }

    fn snat(&mut self, node: &Node, path: &str) -> Option<Snat> {
        let o = self.object(node, path, SNAT_KEYS)?;
        let before = self.errors.len() + self.suppressed;
        let out_interface = self.req_field(&o, path, "out_interface", Self::ifname);
        let source = self
            .required(&o, path, "source")
            .and_then(|n| self.single_net(n, &join(path, "source")));
        let masquerade = self.field(&o, path, "masquerade", parse_bool);
        let external_ip = self.field(&o, path, "external_ip", |n| {
            scalar(n, "an IP address")?
                .parse::<IpAddr>()
                .map_err(|_| format!("expected an IP address, got {}", n.describe()))
        });
        let port_range = o.get("port_range").and_then(|n| {
            let ppath = join(path, "port_range");
            let po = self.object(n, &ppath, PORT_RANGE_KEYS)?;
            let port = |n: &Node| {
                let v = parse_uint(n, "a port 1-65535")?;
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| format!("expected a port 1-65535, got {}", n.describe()))
            };
            let min = self.req_field(&po, &ppath, "min", port);
            let max = self.req_field(&po, &ppath, "max", port);
            let (min, max) = (min?, max?);
            if min > max {
                let span = po.get("max").map_or(n.span, |m| m.span);
                self.err(
                    span,
                    &join(&ppath, "max"),
                    format!("port_range min ({min}) must not be greater than max ({max})"),
                );
                return None;
            }
            Some(PortRange { lo: min, hi: max })
        });

        let masq = masquerade == Some(true);
        if masq && external_ip.is_some() {
            let span = o.entry("external_ip").map_or(o.span, |e| e.key_span);
            self.err(
                span,
                &join(path, "external_ip"),
                "use exactly one of masquerade: true or external_ip, not both",
            );
        } else if !masq && o.get("external_ip").is_none() {
            self.err(
                o.span,
                path,
                "needs exactly one of masquerade: true or external_ip",
            );
        }
        if o.get("port_range").is_some() && o.get("external_ip").is_none() {
            let span = o.entry("port_range").map_or(o.span, |e| e.key_span);
            self.err(
                span,
                &join(path, "port_range"),
                "port_range applies only with external_ip",
            );
        }
        if let (Some(src), Some(ip), Some(n)) = (source, external_ip, o.get("external_ip")) {
            if src.addr().is_ipv4() != ip.is_ipv4() {
                self.err(
                    n.span,
                    &join(path, "external_ip"),
                    "external_ip and source are different address families",
                );
            }
        }
        if self.errors.len() + self.suppressed > before {
            return None;
        }
        let to = match external_ip {
            Some(ip) => SnatTo::Address { ip, port_range },
            None => SnatTo::Masquerade,
        };
        Some(Snat {
            out_interface: out_interface?,
            source: source?,
            to,
            span: o.span,
        })
    }

    fn dnat(&mut self, node: &Node, path: &str) -> Option<Dnat> {
        let o = self.object(node, path, DNAT_KEYS)?;
        let before = self.errors.len() + self.suppressed;
        let wan_ip = self.req_field(&o, path, "wan_ip", |n| {
            scalar(n, "an IP address")?
                .parse::<IpAddr>()
                .map_err(|_| format!("expected an IP address, got {}", n.describe()))
        });
        let wan_port = self.req_field(&o, path, "wan_port", |n| {
            let v = parse_uint(n, "a port 1-65535")?;
            u16::try_from(v)
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| format!("expected a port 1-65535, got {}", n.describe()))
        });
        let to = self.req_field(&o, path, "to", |n| {
            let text = scalar(n, "ip:port (quote IPv6 as \"[addr]:port\")")?;
            parse_socket(text, None)
        });
        let proto = self.req_field(&o, path, "proto", |n| parse_enum(n, NAT_PROTOS));
        let from = o
            .get("from")
            .and_then(|n| self.single_net(n, &join(path, "from")));
        if let (Some(w), Some(t), Some(n)) = (wan_ip, to, o.get("to")) {
            if w.is_ipv4() != t.is_ipv4() {
                self.err(
                    n.span,
                    &join(path, "to"),
                    "to and wan_ip are different address families",
                );
            }
        }
        if let (Some(w), Some(f), Some(n)) = (wan_ip, from, o.get("from")) {
            if w.is_ipv4() != f.addr().is_ipv4() {
                self.err(
                    n.span,
                    &join(path, "from"),
                    "from and wan_ip are different address families; it could never match",
                );
            }
        }
        if self.errors.len() + self.suppressed > before {
            return None;
        }
        Some(Dnat {
            wan_ip: wan_ip?,
            wan_port: wan_port?,
            to: to?,
            proto: proto?,
            from,
            span: o.span,
        })
    }
}

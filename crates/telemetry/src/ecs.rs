//! One logged packet → one ECS event: which rule the NFLOG prefix names and what the policy
//! says about it, the packet's flow, NAT and learned name, as the flat keys SPEC §7 lists.
//!
//! `network.direction` takes ECS's network-perimeter values from the interfaces the packet
//! used (the policy's LAN and WAN sides; the firewall itself counts as inside):
//! WAN → LAN or firewall: `inbound`; LAN or firewall → WAN: `outbound`; LAN ↔ LAN or
//! firewall: `internal`; WAN → WAN: `external`. When an interface is on neither side (or
//! gone), the rule's direction decides: ingress and input `inbound`, egress and output
//! `outbound`. A host firewall (no LAN or WAN) has no perimeter: ECS's host values, `ingress`
//! for input and `egress` for output, and `unknown` for forwarded traffic.
//!
//! `network.translated.*` is the flow's address on the far side of NAT: the address and
//! port source NAT gave it, or for a port-forward the public address the client connected to
//! (the filter, and so the event, sees the inside address).

use nft::conntrack::{Endpoint, Tuple};
use policy::{Action, Direction, Policy, Topology};
use serde::{Serialize, Serializer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// The prefix every log statement ward compiles starts with.
const PREFIX: &[u8] = b"ward ";
/// The rule id of default drops (SPEC §3); its prefix names the chain after it.
const DEFAULT_DENY: &str = nft::compile::DEFAULT_DENY;

/// The name of a destination address, when the DNS proxy learned it from an answer.
pub trait DomainLookup: Send + Sync {
    fn domain(&self, addr: IpAddr) -> Option<String>;
}

impl<F: Fn(IpAddr) -> Option<String> + Send + Sync> DomainLookup for F {
    fn domain(&self, addr: IpAddr) -> Option<String> {
        self(addr)
    }
}

/// Why a logged packet makes no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The prefix is not ward's: some other ruleset logs to the same group.
    Foreign,
    /// ward's prefix with a rule id the policy does not have (logged before a reload).
    UnknownRule,
}

#[derive(Clone, Debug)]
struct RuleInfo {
    name: String,
    action: Action,
    direction: Option<Direction>,
}

/// Where an interface stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Inside,
    Outside,
    Unknown,
}

/// What the policy says about the rules that log: built once per policy, swapped on reload.
#[derive(Clone, Debug)]
pub struct RuleBook {
    rules: HashMap<String, RuleInfo>,
    topology: Topology,
}

/// The rule a logged packet hit, as the policy describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub rule_id: &'a str,
    pub rule_name: String,
    pub accept: bool,
    /// The default drop, rather than a rule.
    pub default_deny: bool,
    direction: Option<Direction>,
}

impl RuleBook {
    /// Knows no rule: every logged packet is skipped until a policy is given.
    pub fn empty() -> RuleBook {
        RuleBook {
            rules: HashMap::new(),
            topology: Topology::Host,
        }
    }

    pub fn new(p: &Policy) -> RuleBook {
        let rules = p
            .rules
            .iter()
            .filter(|r| r.log)
            .map(|r| {
                let info = RuleInfo {
                    name: r.name.clone().unwrap_or_else(|| r.id.clone()),
                    action: r.action,
                    direction: r.direction,
                };
                (r.id.clone(), info)
            })
            .collect();
        RuleBook {
            rules,
            topology: p.topology(),
        }
    }

    /// The rule an NFLOG prefix names: `ward <rule-id> ` or `ward default-deny <chain> `.
    pub fn decide<'a>(&'a self, prefix: &'a [u8]) -> Result<Decision<'a>, Skip> {
        let rest = prefix.strip_prefix(PREFIX).ok_or(Skip::Foreign)?;
        let rest = std::str::from_utf8(rest).map_err(|_| Skip::Foreign)?;
        let mut words = rest.split_ascii_whitespace();
        let id = words.next().ok_or(Skip::Foreign)?;
        self.rule(id, words.next().unwrap_or_default())
    }

    /// The rule `id` of the policy that logs, or the default deny of `chain` (`input`,
    /// `forward` or `output`) when `id` is `default-deny`.
    pub fn rule<'a>(&'a self, id: &'a str, chain: &str) -> Result<Decision<'a>, Skip> {
        if id == DEFAULT_DENY {
            let direction = match chain {
                "input" => Some(Direction::Input),
                "output" => Some(Direction::Output),
                "forward" => None,
                _ => return Err(Skip::UnknownRule),
            };
            return Ok(Decision {
                rule_id: DEFAULT_DENY,
                rule_name: format!("default deny ({chain})"),
                accept: false,
                default_deny: true,
                direction,
            });
        }
        let r = self.rules.get(id).ok_or(Skip::UnknownRule)?;
        Ok(Decision {
            rule_id: id,
            rule_name: r.name.clone(),
            accept: r.action == Action::Accept,
            default_deny: false,
            direction: r.direction,
        })
    }

    fn side(&self, ifname: Option<&str>) -> Side {
        let Some(name) = ifname else {
            return Side::Unknown;
        };
        let listed = |list: &[String]| list.iter().any(|l| if_matches(l, name));
        match &self.topology {
            Topology::Gateway { lan, wan } => {
                if listed(wan) {
                    Side::Outside
                } else if listed(lan) {
                    Side::Inside
                } else {
                    Side::Unknown
                }
            }
            Topology::SnatWan { wan } if listed(wan) => Side::Outside,
            Topology::SnatWan { .. } => Side::Inside,
            Topology::Host => Side::Unknown,
        }
    }

    /// ECS `network.direction`; see the module comment.
    fn direction(&self, d: &Decision, in_if: Option<&str>, out_if: Option<&str>) -> &'static str {
        // Which chain logged it: input has no way out, output no way in.
        let hook = match (in_if, out_if, d.direction) {
            (_, _, Some(dir)) => Some(dir),
            (Some(_), None, None) => Some(Direction::Input),
            (None, Some(_), None) => Some(Direction::Output),
            _ => None,
        };
        if matches!(self.topology, Topology::Host) {
            return match hook {
                Some(Direction::Input) => "ingress",
                Some(Direction::Output) => "egress",
                _ => "unknown",
            };
        }
        // The firewall itself is inside.
        let from = match hook {
            Some(Direction::Output) => Side::Inside,
            _ => self.side(in_if),
        };
        let to = match hook {
            Some(Direction::Input) => Side::Inside,
            _ => self.side(out_if),
        };
        match (from, to) {
            (Side::Outside, Side::Inside) => "inbound",
            (Side::Inside, Side::Outside) => "outbound",
            (Side::Inside, Side::Inside) => "internal",
            (Side::Outside, Side::Outside) => "external",
            _ => match hook {
                Some(Direction::Ingress | Direction::Input) => "inbound",
                Some(Direction::Egress | Direction::Output) => "outbound",
                None => "unknown",
            },
        }
    }
}

/// nftables' `iifname` matching: a trailing `*` matches any name with that prefix.
fn if_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// What the packet showed, besides the rule it hit.
#[derive(Clone, Debug)]
pub struct Seen<'a> {
    pub at: SystemTime,
    pub flow: Tuple,
    pub in_if: Option<&'a str>,
    pub out_if: Option<&'a str>,
    /// The flow's address on the far side of NAT (see the module comment).
    pub translated: Option<Endpoint>,
    /// The destination's name, when it was learned from DNS.
    pub domain: Option<String>,
}

/// One ECS event; serialises to the flat dotted keys of SPEC §7, absent fields left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    #[serde(rename = "@timestamp", serialize_with = "rfc3339_millis")]
    pub timestamp: SystemTime,
    #[serde(rename = "event.kind")]
    pub kind: &'static str,
    #[serde(rename = "event.category")]
    pub category: &'static str,
    #[serde(rename = "event.action")]
    pub action: &'static str,
    #[serde(rename = "event.outcome")]
    pub outcome: &'static str,
    #[serde(rename = "rule.id")]
    pub rule_id: String,
    #[serde(rename = "rule.name")]
    pub rule_name: String,
    #[serde(rename = "source.ip")]
    pub source_ip: IpAddr,
    #[serde(rename = "source.port", skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    #[serde(rename = "destination.ip")]
    pub destination_ip: IpAddr,
    #[serde(rename = "destination.port", skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    #[serde(rename = "destination.domain", skip_serializing_if = "Option::is_none")]
    pub destination_domain: Option<String>,
    #[serde(rename = "network.transport")]
    pub transport: String,
    #[serde(rename = "network.direction")]
    pub direction: &'static str,
    #[serde(
        rename = "network.translated.address",
        skip_serializing_if = "Option::is_none"
    )]
    pub translated_address: Option<IpAddr>,
    #[serde(
        rename = "network.translated.port",
        skip_serializing_if = "Option::is_none"
    )]
    pub translated_port: Option<u16>,
    #[serde(
        rename = "firewall.drop_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub drop_reason: Option<&'static str>,
}

impl Event {
    pub fn new(book: &RuleBook, d: &Decision, seen: Seen) -> Event {
        let direction = book.direction(d, seen.in_if, seen.out_if);
        let drop_reason = match (d.accept, d.default_deny) {
            (true, _) => None,
            (false, true) => Some("no_matching_allow_rule"),
            (false, false) => Some("explicit_deny"),
        };
        Event {
            timestamp: seen.at,
            kind: "event",
            category: "network",
            action: if d.accept { "accept" } else { "drop" },
            outcome: if d.accept { "success" } else { "failure" },
            rule_id: d.rule_id.to_string(),
            rule_name: d.rule_name.clone(),
            source_ip: seen.flow.src,
            source_port: seen.flow.src_port(),
            destination_ip: seen.flow.dst,
            destination_port: seen.flow.dst_port(),
            destination_domain: seen.domain,
            transport: transport(seen.flow.protocol),
            direction,
            translated_address: seen.translated.map(|t| t.addr),
            translated_port: seen.translated.and_then(|t| t.port),
            drop_reason,
        }
    }
}

/// ECS `network.transport`: the IANA keyword, lowercase; the number for the rest.
fn transport(protocol: u8) -> String {
    match protocol {
        1 => "icmp",
        2 => "igmp",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        41 => "ipv6",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "ipv6-icmp",
        132 => "sctp",
        136 => "udplite",
        n => return n.to_string(),
    }
    .to_string()
}

/// RFC 3339 UTC with milliseconds. Its four-digit years end with 9999 (and humantime panics
/// on times before 1970): such a time is an error, not a line.
fn rfc3339_millis<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= LAST => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        _ => Err(serde::ser::Error::custom(
            "timestamp outside years 1970-9999",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nft::conntrack::L4;
    use std::time::Duration;

    fn policy(yaml: &str) -> Policy {
        policy::parse_str(yaml, "test.yaml")
            .expect("valid policy")
            .policy
    }

    const GATEWAY: &str = "interfaces:\n  lan: [lan0, 'vlan*']\n  wan: [wan0]\nrules:\n";

    fn gateway() -> RuleBook {
        RuleBook::new(&policy(&format!(
            "{GATEWAY}  - {{id: no-discard, name: Never discard, action: deny, direction: egress, protocol: tcp, destination_port: 9, log: true}}
  - {{id: web, action: accept, protocol: tcp, destination_port: 80, log: true}}
  - {{id: ssh, action: accept, direction: input, protocol: tcp, destination_port: 22, log: true}}
  - {{id: quiet, action: accept, protocol: udp}}
"
        )))
    }

    fn flow(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            protocol: 6,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        }
    }

    fn seen<'a>(in_if: Option<&'a str>, out_if: Option<&'a str>) -> Seen<'a> {
        Seen {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            flow: flow("192.168.50.10", 40000, "198.51.100.20", 9),
            in_if,
            out_if,
            translated: None,
            domain: None,
        }
    }

    fn json(e: &Event) -> serde_json::Value {
        serde_json::to_value(e).expect("serialise")
    }

    #[test]
    fn an_explicit_deny_has_every_field_spec_7_lists_for_a_drop() {
        let book = gateway();
        let d = book.decide(b"ward no-discard ").expect("ward's");
        let e = Event::new(&book, &d, seen(Some("lan0"), Some("wan0")));
        let line = serde_json::to_string(&e).expect("serialise");
        assert_eq!(
            line,
            r#"{"@timestamp":"2023-11-14T22:13:20.123Z","event.kind":"event","event.category":"network","event.action":"drop","event.outcome":"failure","rule.id":"no-discard","rule.name":"Never discard","source.ip":"192.168.50.10","source.port":40000,"destination.ip":"198.51.100.20","destination.port":9,"network.transport":"tcp","network.direction":"outbound","firewall.drop_reason":"explicit_deny"}"#
        );
    }

    #[test]
    fn an_accept_through_nat_with_a_learned_name() {
        let book = gateway();
        let d = book.decide(b"ward web ").expect("ward's");
        let mut s = seen(Some("lan0"), Some("wan0"));
        s.translated = Some(Endpoint {
            addr: "198.51.100.1".parse().expect("ip"),
            port: Some(40001),
        });
        s.domain = Some("docs.example.test".into());
        let v = json(&Event::new(&book, &d, s));
        assert_eq!(v["event.action"], "accept");
        assert_eq!(v["event.outcome"], "success");
        assert_eq!(v["rule.name"], "web", "no name: the id");
        assert_eq!(v["network.translated.address"], "198.51.100.1");
        assert_eq!(v["network.translated.port"], 40001);
        assert_eq!(v["destination.domain"], "docs.example.test");
        assert!(v.get("firewall.drop_reason").is_none());
    }

    #[test]
    fn default_deny_names_its_chain() {
        let book = gateway();
        let d = book.decide(b"ward default-deny forward ").expect("ward's");
        assert!(d.default_deny && !d.accept);
        let v = json(&Event::new(&book, &d, seen(Some("wan0"), Some("lan0"))));
        assert_eq!(v["rule.id"], "default-deny");
        assert_eq!(v["rule.name"], "default deny (forward)");
        assert_eq!(v["firewall.drop_reason"], "no_matching_allow_rule");
        assert_eq!(v["network.direction"], "inbound");
        let d = book.decide(b"ward default-deny input ").expect("ward's");
        let v = json(&Event::new(&book, &d, seen(Some("wan0"), None)));
        assert_eq!(v["rule.name"], "default deny (input)");
        assert_eq!(v["network.direction"], "inbound");
        let v = json(&Event::new(&book, &d, seen(Some("lan0"), None)));
        assert_eq!(v["network.direction"], "internal");
        assert_eq!(
            book.decide(b"ward default-deny prerouting "),
            Err(Skip::UnknownRule)
        );
    }

    #[test]
    fn prefixes_that_are_not_wards_or_name_no_logged_rule_are_skipped() {
        let book = gateway();
        assert_eq!(book.decide(b"DROP: ").map(|_| ()), Err(Skip::Foreign));
        assert_eq!(book.decide(b"").map(|_| ()), Err(Skip::Foreign));
        assert_eq!(book.decide(b"ward ").map(|_| ()), Err(Skip::Foreign));
        assert_eq!(book.decide(b"ward \xff ").map(|_| ()), Err(Skip::Foreign));
        assert_eq!(
            book.decide(b"ward gone ").map(|_| ()),
            Err(Skip::UnknownRule)
        );
        // A rule without `log: true` never logs; a prefix naming it is not ward's doing.
        assert_eq!(
            book.decide(b"ward quiet ").map(|_| ()),
            Err(Skip::UnknownRule)
        );
    }

    #[test]
    fn direction_follows_the_interfaces_then_the_rule() {
        let book = gateway();
        let web = book.decide(b"ward web ").expect("ward's");
        let dir = |i: Option<&str>, o: Option<&str>| Event::new(&book, &web, seen(i, o)).direction;
        assert_eq!(dir(Some("lan0"), Some("wan0")), "outbound");
        assert_eq!(dir(Some("wan0"), Some("lan0")), "inbound");
        assert_eq!(dir(Some("lan0"), Some("vlan7")), "internal", "wildcard");
        assert_eq!(dir(Some("wan0"), Some("wan0")), "external");
        // A rule for either forwarded direction, interfaces unknown.
        assert_eq!(dir(Some("eth9"), Some("wan0")), "unknown");
        let deny = book.decide(b"ward no-discard ").expect("ward's");
        assert_eq!(
            Event::new(&book, &deny, seen(Some("eth9"), None)).direction,
            "outbound",
            "egress rule, interface on neither side"
        );
        let ssh = book.decide(b"ward ssh ").expect("ward's");
        assert_eq!(
            Event::new(&book, &ssh, seen(Some("lan0"), None)).direction,
            "internal"
        );
        assert_eq!(
            Event::new(&book, &ssh, seen(Some("wan0"), None)).direction,
            "inbound"
        );
        let out = book.decide(b"ward default-deny output ").expect("ward's");
        assert_eq!(
            Event::new(&book, &out, seen(None, Some("wan0"))).direction,
            "outbound"
        );
    }

    #[test]
    fn a_host_firewall_uses_host_directions() {
        let book = RuleBook::new(&policy(
            "rules:\n  - {id: ssh, action: accept, direction: input, protocol: tcp, destination_port: 22, log: true}\n",
        ));
        let ssh = book.decide(b"ward ssh ").expect("ward's");
        assert_eq!(
            Event::new(&book, &ssh, seen(Some("eth0"), None)).direction,
            "ingress"
        );
        let out = book.decide(b"ward default-deny output ").expect("ward's");
        assert_eq!(
            Event::new(&book, &out, seen(None, Some("eth0"))).direction,
            "egress"
        );
        let fwd = book.decide(b"ward default-deny forward ").expect("ward's");
        assert_eq!(
            Event::new(&book, &fwd, seen(Some("eth0"), Some("eth1"))).direction,
            "unknown"
        );
    }

    #[test]
    fn without_interfaces_the_snat_interface_is_the_wan() {
        let book = RuleBook::new(&policy(
            "rules:\n  - {id: web, action: accept, protocol: tcp, destination_port: 80, log: true}\nnat:\n  snat:\n    - {out_interface: eth0, source: 10.0.0.0/8, masquerade: true}\n",
        ));
        let web = book.decide(b"ward web ").expect("ward's");
        let dir = |i, o| Event::new(&book, &web, seen(Some(i), Some(o))).direction;
        assert_eq!(dir("eth1", "eth0"), "outbound");
        assert_eq!(dir("eth0", "eth1"), "inbound");
        assert_eq!(dir("eth1", "eth2"), "internal");
    }

    #[test]
    fn icmp_has_no_ports_and_transports_use_iana_keywords() {
        let book = gateway();
        let d = book.decide(b"ward default-deny forward ").expect("ward's");
        let mut s = seen(Some("lan0"), Some("wan0"));
        s.flow = Tuple {
            src: "fd00:50::10".parse().expect("ip"),
            dst: "fd00:51::20".parse().expect("ip"),
            protocol: 58,
            l4: L4::Icmp {
                ty: 128,
                code: 0,
                id: 1,
            },
        };
        let v = json(&Event::new(&book, &d, s));
        assert_eq!(v["network.transport"], "ipv6-icmp");
        assert_eq!(v["source.ip"], "fd00:50::10");
        assert!(v.get("source.port").is_none() && v.get("destination.port").is_none());
        assert_eq!(transport(253), "253");
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let book = gateway();
        let d = book.decide(b"ward web ").expect("ward's");
        let mut s = seen(None, None);
        s.at = SystemTime::UNIX_EPOCH + Duration::new(951_782_400, 5_000_000); // 2000-02-29
        assert_eq!(
            json(&Event::new(&book, &d, s.clone()))["@timestamp"],
            "2000-02-29T00:00:00.005Z"
        );
        s.at = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert!(serde_json::to_string(&Event::new(&book, &d, s.clone())).is_err());
        s.at = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert!(serde_json::to_string(&Event::new(&book, &d, s)).is_err());
    }

    #[test]
    fn the_domain_lookup_is_a_plain_function() {
        let learned: IpAddr = "198.51.100.20".parse().expect("ip");
        let lookup = move |a: IpAddr| (a == learned).then(|| "ok.test".to_string());
        let l: &dyn DomainLookup = &lookup;
        assert_eq!(l.domain(learned), Some("ok.test".into()));
        assert_eq!(l.domain("192.0.2.1".parse().expect("ip")), None);
    }
}

//! `explain`: which rule decides a described packet, and why each earlier rule did not.
//! This is the reference meaning of a policy (SPEC §3); both data planes must agree with it.

use crate::model::{Action, Direction, Policy, Protocol, Rule};
use std::net::IpAddr;

/// What the packet is addressed to: an address, or a DNS name whose address is not known
/// here (so it matches only `destination_fqdn` rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Ip(IpAddr),
    Fqdn(String),
}

/// A packet (or new flow) to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: Target,
    pub proto: Protocol,
    pub dport: Option<u16>,
    pub direction: Direction,
    pub in_interface: Option<String>,
    pub out_interface: Option<String>,
    /// Part of an already accepted flow (matches `state: established`).
    pub established: bool,
}

impl Probe {
    /// A new flow on any interfaces.
    pub fn new(
        src: IpAddr,
        dst: Target,
        proto: Protocol,
        dport: Option<u16>,
        direction: Direction,
    ) -> Probe {
        Probe {
            src,
            dst,
            proto,
            dport,
            direction,
            in_interface: None,
            out_interface: None,
            established: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// The deciding rule's id, or `default-deny` / `default-accept`.
    pub rule_id: String,
    pub rule_index: Option<usize>,
    /// `explicit_deny` or `no_matching_allow_rule`; `None` when accepted.
    pub drop_reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    /// One line per rule considered, in order, ending with why the decider decided.
    pub steps: Vec<String>,
}

/// Whether a rule's direction covers the probe's (omitted = ingress or egress).
pub fn direction_applies(rule: Option<Direction>, probe: Direction) -> bool {
    match rule {
        None => matches!(probe, Direction::Ingress | Direction::Egress),
        Some(d) => d == probe,
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Ok(())` when `rule` matches `probe`, else the first field that does not, in words.
pub fn rule_matches(rule: &Rule, probe: &Probe) -> Result<(), String> {
    if !direction_applies(rule.direction, probe.direction) {
        let rd = rule.direction.map_or("ingress/egress", Direction::as_str);
        return Err(format!(
            "direction {rd} does not apply to {} traffic",
            probe.direction.as_str()
        ));
    }
    match rule.protocol {
        Some(p) if p != probe.proto => {
            return Err(format!(
                "protocol {} is not {}",
                probe.proto.as_str(),
                p.as_str()
            ));
        }
        // Ports imply tcp or udp when the protocol is omitted.
        None if !rule.destination_port.is_empty() && !probe.proto.has_ports() => {
            return Err(format!(
                "destination_port implies tcp or udp, probe is {}",
                probe.proto.as_str()
            ));
        }
        _ => {}
    }
    if !rule.source.is_empty() && !rule.source.iter().any(|n| n.contains(&probe.src)) {
        return Err(format!(
            "source {} not in {}",
            probe.src,
            list(&rule.source)
        ));
    }
    match &probe.dst {
        Target::Ip(ip) => {
            if !rule.destination_fqdn.is_empty() {
                return Err(format!(
                    "destination_fqdn {} never matches a bare address ({ip})",
                    list(&rule.destination_fqdn)
                ));
            }
            if !rule.destination.is_empty() && !rule.destination.iter().any(|n| n.contains(ip)) {
                return Err(format!(
                    "destination {ip} not in {}",
                    list(&rule.destination)
                ));
            }
        }
        Target::Fqdn(name) => {
            if !rule.destination.is_empty() {
                return Err(format!(
                    "destination {} is addresses; the address of {name} is not known",
                    list(&rule.destination)
                ));
            }
            if !rule.destination_fqdn.is_empty()
                && !rule.destination_fqdn.iter().any(|p| p.matches(name))
            {
                return Err(format!(
                    "destination_fqdn {name} does not match {}",
                    list(&rule.destination_fqdn)
                ));
            }
        }
    }
    if !rule.destination_port.is_empty() {
        match probe.dport {
            None => {
                return Err(format!(
                    "destination_port {}: probe has no destination port",
                    list(&rule.destination_port)
                ))
            }
            Some(port) if !rule.destination_port.iter().any(|r| r.contains(port)) => {
                return Err(format!(
                    "destination_port {port} not in {}",
                    list(&rule.destination_port)
                ))
            }
            Some(_) => {}
        }
    }
    if rule.state.is_some() && !probe.established {
        return Err("state established: probe is a new flow".to_string());
    }
    for (field, want, got) in [
        ("in_interface", &rule.in_interface, &probe.in_interface),
        ("out_interface", &rule.out_interface, &probe.out_interface),
    ] {
        if let Some(want) = want {
            match got {
                None => return Err(format!("{field} {want}: probe gives no {field}")),
                Some(g) if g != want => return Err(format!("{field} {g} is not {want}")),
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn describe(rule: &Rule) -> String {
    format!("rule '{}' (line {})", rule.id, rule.span.line)
}

/// First match decides, top to bottom, over the rules whose direction applies.
pub fn explain(policy: &Policy, probe: &Probe) -> Explanation {
    let mut steps = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        if !direction_applies(rule.direction, probe.direction) {
            continue;
        }
        match rule_matches(rule, probe) {
            Err(why) => steps.push(format!("{}: no match: {why}", describe(rule))),
            Ok(()) => {
                steps.push(format!(
                    "{}: matches (every field it sets agrees): {}",
                    describe(rule),
                    rule.action.as_str()
                ));
                let drop_reason = match rule.action {
                    Action::Accept => None,
                    Action::Deny => Some("explicit_deny"),
                };
                return Explanation {
                    verdict: Verdict {
                        action: rule.action,
                        rule_id: rule.id.clone(),
                        rule_index: Some(index),
                        drop_reason,
                    },
                    steps,
                };
            }
        }
    }
    let (action, key) = match probe.direction {
        Direction::Ingress | Direction::Egress => {
            (policy.defaults.default_action, "defaults.default_action")
        }
        Direction::Input => (policy.defaults.input_action, "defaults.input_action"),
        Direction::Output => (policy.defaults.output_action, "defaults.output_action"),
    };
    let (rule_id, drop_reason) = match action {
        Action::Accept => ("default-accept", None),
        Action::Deny => ("default-deny", Some("no_matching_allow_rule")),
    };
    steps.push(format!(
        "no rule matched; {} traffic gets {key}: {}",
        probe.direction.as_str(),
        action.as_str()
    ));
    Explanation {
        verdict: Verdict {
            action,
            rule_id: rule_id.to_string(),
            rule_index: None,
            drop_reason,
        },
        steps,
    }
}

//! Policy → one `inet` table: base chains with the defaults, established/related first,
//! ICMP essentials, then the rules in order, with runs of same-shape rules folded into maps.
//!
//! Folding: consecutive rules whose matches have the same shape (which fields, which address
//! family) and whose keys do not overlap become one verdict map with per-element counters,
//! so matching cost does not grow with the rule count. Overlap ends a run, because nftables
//! rejects overlapping interval elements and because first-match order must be kept.

use crate::schema::*;
use ipnet::IpNet;
use policy::{
    Action, Direction, Nat as NatPolicy, Policy, PortRange, Protocol, Rule as PolicyRule, SnatTo,
    Topology,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};

pub const FAMILY: &str = "inet";

/// What the compiler needs to know besides the policy.
#[derive(Clone, Debug)]
pub struct Options {
    /// The one table ward owns.
    pub table: String,
    /// NFLOG group for `log: true` rules and default drops.
    pub log_group: u16,
    /// Log lines per second per rule (and per default drop), beyond which packets are not logged.
    pub log_rate: u32,
    /// What to record with the table (policy hash, time applied); see `info_chain`.
    pub comment: Option<String>,
    /// The DNS proxy the table must let through, when the policy runs one.
    pub dns: Option<DnsProxy>,
}

/// Where ward's DNS proxy listens and what it asks, already resolved by the caller (the
/// compiler never looks at the running system). The table admits LAN-side clients to `listen`
/// and the proxy to `upstreams` without any user rule, and with `intercept` sends LAN-side
/// port-53 traffic for any address to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsProxy {
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub intercept: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            table: "ward".into(),
            log_group: 100,
            log_rate: 20,
            comment: None,
            dns: None,
        }
    }
}

/// The comment that marks which rule a counter belongs to: a policy rule's id, or one of the
/// default verdicts, which SPEC §3 reports as rule ids (so the policy may not use them).
pub const DEFAULT_DENY: &str = "default-deny";
pub const DEFAULT_ACCEPT: &str = "default-accept";
/// The comments of the rules ward adds on its own start with `ward:`, which no rule id can
/// contain: a policy rule named `snat-office` or `icmp-essentials` is never mistaken for one.
///
/// The rules that drop packets conntrack finds invalid (malformed, or out of any known
/// connection's state), counted as `malformed_packet` drops.
pub const INVALID: &str = "ward:ct-invalid";
/// The ICMP that every chain lets in (echo requests, PMTU discovery, neighbour discovery).
pub const ICMP_ESSENTIALS: &str = "ward:icmp-essentials";
/// The rules ward adds for its DNS proxy: clients in, the proxy out, intercepted.
pub const DNS_PROXY: &str = "ward:dns-proxy";
pub const DNS_UPSTREAM: &str = "ward:dns-upstream";
pub const DNS_INTERCEPT: &str = "ward:dns-intercept";
/// The policy's NAT entries, numbered in the order given: `ward:snat-0`, `ward:dnat-1`, ...
pub const SNAT_PREFIX: &str = "ward:snat-";
pub const DNAT_PREFIX: &str = "ward:dnat-";
/// The regular chain whose one rule's comment records the policy hash and apply time.
pub const INFO_CHAIN: &str = "info";

/// The compiled table, and how the rules were laid out.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub table: Table,
    pub sets: Vec<Set>,
    pub chains: Vec<(Chain, Vec<Rule>)>,
    pub stats: Stats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Policy rules folded into verdict maps.
    pub rules_in_maps: usize,
    pub maps: usize,
    pub map_elements: usize,
    /// nftables rules emitted for policy rules that were not folded.
    pub linear_rules: usize,
}

impl Compiled {
    /// The batch that replaces the table whole: `add` (so that `delete` cannot fail), `delete`,
    /// then everything anew, in one transaction.
    pub fn replace_batch(&self) -> Batch {
        let mut cmds = vec![
            Command::Add(Object::Table(self.table.clone())),
            Command::Delete(Object::Table(self.table.clone())),
        ];
        cmds.extend(self.create_commands());
        Batch { nftables: cmds }
    }

    /// The commands that create the table from nothing.
    pub fn create_commands(&self) -> Vec<Command> {
        let mut cmds = vec![Command::Add(Object::Table(self.table.clone()))];
        // Chains before sets (map elements jump to chains), sets before rules (rules use sets).
        for (c, _) in &self.chains {
            cmds.push(Command::Add(Object::Chain(c.clone())));
        }
        for s in &self.sets {
            let obj = if s.map.is_some() {
                Object::Map(s.clone())
            } else {
                Object::Set(s.clone())
            };
            cmds.push(Command::Add(obj));
        }
        for (_, rules) in &self.chains {
            for r in rules {
                cmds.push(Command::Add(Object::Rule(r.clone())));
            }
        }
        cmds
    }
}

pub fn compile(policy: &Policy, opts: &Options) -> Compiled {
    let mut c = Compiler {
        opts,
        sets: Vec::new(),
        fixed_sets: HashSet::new(),
        chains: Vec::new(),
        stats: Stats::default(),
    };
    c.fqdn_sets(policy);
    c.log_chains(policy);
    c.filter_chains(policy);
    c.nat_chains(&policy.nat, &policy.topology());
    c.info_chain();
    c.hoist_anonymous_sets();
    Compiled {
        table: Table {
            family: FAMILY,
            name: opts.table.clone(),
        },
        sets: c.sets,
        chains: c.chains,
        stats: c.stats,
    }
}

/// Names of the sets that hold the addresses learned for a `destination_fqdn` rule.
pub fn fqdn_set_names(rule_id: &str) -> (String, String) {
    (format!("fqdn4-{rule_id}"), format!("fqdn6-{rule_id}"))
}

fn log_chain_name(rule_id: &str) -> String {
    format!("log-{rule_id}")
}

struct Compiler<'o> {
    opts: &'o Options,
    sets: Vec<Set>,
    /// Names of the sets whose elements the policy fixes (see `add_fixed_set`).
    fixed_sets: HashSet<String>,
    chains: Vec<(Chain, Vec<Rule>)>,
    stats: Stats,
}

impl Compiler<'_> {
    fn chain(&self, name: &str, base: Option<BaseChain>) -> Chain {
        Chain {
            family: FAMILY,
            table: self.opts.table.clone(),
            name: name.to_string(),
            base,
        }
    }

    fn rule(&self, chain: &str, expr: Vec<Stmt>, comment: Option<&str>) -> Rule {
        Rule {
            family: FAMILY,
            table: self.opts.table.clone(),
            chain: chain.to_string(),
            expr,
            comment: comment.map(str::to_string),
        }
    }

    /// Adds a set (or map) whose elements the policy fixes, named `PREFIX-HASH` after its
    /// content, and returns the name. Identical content gets the same name, in this table and
    /// in the one installed before it: `live::install` keeps such a set as it is and creates
    /// only sets with new names, in a transaction of their own before the rules that use them
    /// (the kernel can show rules before the elements of a set created with them).
    fn add_fixed_set(&mut self, prefix: &str, mut set: Set) -> String {
        set.name.clear();
        let mut digest = Sha256Writer(Sha256::new());
        set.hash(&mut digest);
        set.name = format!("{prefix}-{}", hex::encode(&digest.0.finalize()[..6]));
        let name = set.name.clone();
        if self.fixed_sets.insert(name.clone()) {
            self.sets.push(set);
        }
        name
    }

    /// Turns every set of values written into a rule (`tcp dport { 22, 80 }`) into a named
    /// set (`add_fixed_set`), for the same reason: an anonymous set is created with its rule.
    fn hoist_anonymous_sets(&mut self) {
        let mut chains = std::mem::take(&mut self.chains);
        for (chain, rules) in &mut chains {
            for stmt in rules.iter_mut().flat_map(|r| r.expr.iter_mut()) {
                let Stmt::Match { left, right, .. } = stmt else {
                    continue;
                };
                let Expr::Named(Named::Set(items)) = right else {
                    continue;
                };
                let Some(key) = anonymous_set_type(left) else {
                    continue;
                };
                let interval = items
                    .iter()
                    .any(|i| matches!(i, Expr::Named(Named::Prefix { .. } | Named::Range(_))));
                let set = Set {
                    family: FAMILY,
                    table: self.opts.table.clone(),
                    name: String::new(),
                    key_type: KeyType::Single(key),
                    map: None,
                    flags: if interval {
                        vec!["interval"]
                    } else {
                        Vec::new()
                    },
                    elem: std::mem::take(items),
                    stmt: Vec::new(),
                    comment: None,
                };
                *right = s(format!("@{}", self.add_fixed_set(&chain.name, set)));
            }
        }
        self.chains = chains;
    }

    /// The policy hash and apply time ride on a rule comment in a chain no hook reaches:
    /// libnftables before 1.0.7 drops table comments given in JSON, rule comments it keeps.
    fn info_chain(&mut self) {
        if let Some(comment) = &self.opts.comment {
            let rule = self.rule(
                INFO_CHAIN,
                vec![verdict(Verdict::Return(None))],
                Some(comment),
            );
            let chain = self.chain(INFO_CHAIN, None);
            self.chains.push((chain, vec![rule]));
        }
    }

    fn fqdn_sets(&mut self, policy: &Policy) {
        for r in policy
            .rules
            .iter()
            .filter(|r| !r.destination_fqdn.is_empty())
        {
            let (v4, v6) = fqdn_set_names(&r.id);
            for (name, ty) in [(v4, "ipv4_addr"), (v6, "ipv6_addr")] {
                self.sets.push(Set {
                    family: FAMILY,
                    table: self.opts.table.clone(),
                    name,
                    key_type: KeyType::Single(ty),
                    map: None,
                    flags: vec!["timeout"],
                    elem: Vec::new(),
                    stmt: Vec::new(),
                    comment: None,
                });
            }
        }
    }

    /// A rule with `log: true` jumps to its own chain: a rate-limited NFLOG line, then the verdict.
    fn log_chains(&mut self, policy: &Policy) {
        for r in policy.rules.iter().filter(|r| r.log) {
            let name = log_chain_name(&r.id);
            let chain = self.chain(&name, None);
            let rules = vec![
                self.rule(&name, self.log_stmts(&format!("ward {} ", r.id)), None),
                self.rule(&name, vec![verdict(action_verdict(r.action))], None),
            ];
            self.chains.push((chain, rules));
        }
    }

    fn log_stmts(&self, prefix: &str) -> Vec<Stmt> {
        vec![
            Stmt::Limit {
                rate: self.opts.log_rate,
                per: "second",
                burst: self.opts.log_rate.saturating_mul(2),
            },
            Stmt::Log {
                prefix: prefix.to_string(),
                group: self.opts.log_group,
            },
        ]
    }

    fn filter_chains(&mut self, policy: &Policy) {
        let d = &policy.defaults;
        let by_dir = |want: &[Option<Direction>]| -> Vec<&PolicyRule> {
            policy
                .rules
                .iter()
                .filter(|r| want.contains(&r.direction))
                .collect()
        };

        // input
        let mut input = vec![self.rule(
            "input",
            vec![
                matches(meta("iifname"), s("lo")),
                verdict(Verdict::accept()),
            ],
            None,
        )];
        input.extend(self.conntrack_prelude("input"));
        if d.icmp_essentials {
            input.extend(self.icmp_essentials("input"));
        }
        input.extend(self.dns_clients(&policy.topology()));
        input.extend(self.rules("input", &by_dir(&[Some(Direction::Input)])));
        input.extend(self.default_rules("input", d.input_action));
        self.push_base("input", "input", input);

        // forward
        let mut forward = self.conntrack_prelude("forward");
        match policy.topology() {
            Topology::Host => {
                let rules = by_dir(&[None, Some(Direction::Ingress), Some(Direction::Egress)]);
                forward.extend(self.rules("forward", &rules));
            }
            topo => {
                let (egress_match, ingress_match) = side_matches(&topo);
                forward.push(self.rule(
                    "forward",
                    push(egress_match, verdict(Verdict::jump("egress"))),
                    None,
                ));
                forward.push(self.rule(
                    "forward",
                    push(ingress_match, verdict(Verdict::jump("ingress"))),
                    None,
                ));
                for (name, dir) in [
                    ("egress", Direction::Egress),
                    ("ingress", Direction::Ingress),
                ] {
                    let rules = self.rules(name, &by_dir(&[None, Some(dir)]));
                    let chain = self.chain(name, None);
                    self.chains.push((chain, rules));
                }
            }
        }
        forward.extend(self.default_rules("forward", d.default_action));
        self.push_base("forward", "forward", forward);

        // output
        let mut output = vec![self.rule(
            "output",
            vec![
                matches(meta("oifname"), s("lo")),
                verdict(Verdict::accept()),
            ],
            None,
        )];
        output.extend(self.conntrack_prelude("output"));
        if d.icmp_essentials {
            // Neighbour discovery and router solicitation must leave even under `output_action: deny`.
            output.push(self.rule(
                "output",
                vec![
                    matches(
                        payload("icmpv6", "type"),
                        set(strs(&[
                            "nd-neighbor-solicit",
                            "nd-neighbor-advert",
                            "nd-router-solicit",
                        ])),
                    ),
                    verdict(Verdict::accept()),
                ],
                None,
            ));
        }
        output.extend(self.dns_upstreams());
        output.extend(self.rules("output", &by_dir(&[Some(Direction::Output)])));
        output.extend(self.default_rules("output", d.output_action));
        self.push_base("output", "output", output);
    }

    /// Base chains always have policy accept; the default is the explicit last rule instead.
    /// While a replace is committed, the old and the new chain are both hooked for a moment,
    /// and a chain whose rules are not (or no longer) active applies only its policy: with
    /// `drop` there, allowed packets would be lost during every apply.
    fn push_base(&mut self, name: &str, hook: &'static str, rules: Vec<Rule>) {
        let base = BaseChain {
            kind: "filter",
            hook,
            prio: 0,
            policy: "accept",
        };
        let chain = self.chain(name, Some(base));
        // Base chains first in the listing, in hook order, so the output reads top-down.
        let at = self
            .chains
            .iter()
            .take_while(|(c, _)| c.base.is_some())
            .count();
        self.chains.insert(at, (chain, rules));
    }

    fn conntrack_prelude(&self, chain: &str) -> Vec<Rule> {
        vec![
            self.rule(
                chain,
                vec![
                    Stmt::Match {
                        op: "in",
                        left: ct("state"),
                        right: Expr::List(strs(&["established", "related"])),
                    },
                    verdict(Verdict::accept()),
                ],
                None,
            ),
            self.rule(
                chain,
                vec![
                    Stmt::Match {
                        op: "in",
                        left: ct("state"),
                        right: s("invalid"),
                    },
                    counter(),
                    verdict(Verdict::drop()),
                ],
                Some(INVALID),
            ),
        ]
    }

    fn icmp_essentials(&self, chain: &str) -> Vec<Rule> {
        vec![
            self.rule(
                chain,
                vec![
                    matches(payload("icmp", "type"), s("echo-request")),
                    verdict(Verdict::accept()),
                ],
                Some(ICMP_ESSENTIALS),
            ),
            self.rule(
                chain,
                vec![
                    matches(payload("icmp", "type"), s("destination-unreachable")),
                    matches(payload("icmp", "code"), s("frag-needed")),
                    verdict(Verdict::accept()),
                ],
                Some(ICMP_ESSENTIALS),
            ),
            self.rule(
                chain,
                vec![
                    matches(
                        payload("icmpv6", "type"),
                        set(strs(&[
                            "destination-unreachable",
                            "packet-too-big",
                            "time-exceeded",
                            "parameter-problem",
                            "echo-request",
                            "nd-router-solicit",
                            "nd-router-advert",
                            "nd-neighbor-solicit",
                            "nd-neighbor-advert",
                        ])),
                    ),
                    verdict(Verdict::accept()),
                ],
                Some(ICMP_ESSENTIALS),
            ),
        ]
    }

    fn default_rules(&self, chain: &str, action: Action) -> Vec<Rule> {
        match action {
            Action::Accept => vec![self.rule(
                chain,
                vec![counter(), verdict(Verdict::accept())],
                Some(DEFAULT_ACCEPT),
            )],
            Action::Deny => vec![
                self.rule(
                    chain,
                    self.log_stmts(&format!("ward {DEFAULT_DENY} {chain} ")),
                    None,
                ),
                self.rule(
                    chain,
                    vec![counter(), verdict(Verdict::drop())],
                    Some(DEFAULT_DENY),
                ),
            ],
        }
    }

    /// The policy rules of one chain, in order, with same-shape runs folded into maps.
    fn rules(&mut self, chain: &str, rules: &[&PolicyRule]) -> Vec<Rule> {
        let mut out = Vec::new();
        let mut run: Option<Run> = None;
        for atom in family_ordered(rules.iter().flat_map(|r| atoms(r))) {
            let atom = match run.as_mut() {
                Some(r) if atom.foldable() && r.shape == atom.shape() => match r.try_add(atom) {
                    Ok(()) => continue,
                    Err(atom) => atom,
                },
                _ => atom,
            };
            if let Some(r) = run.take() {
                out.extend(self.emit_run(chain, r));
            }
            if atom.foldable() {
                let mut r = Run::new(atom.shape());
                // The keys of one atom never overlap each other (`atoms` normalises them).
                let _ = r.try_add(atom);
                run = Some(r);
            } else {
                out.push(self.linear(chain, &atom));
            }
        }
        if let Some(r) = run.take() {
            out.extend(self.emit_run(chain, r));
        }
        out
    }

    fn emit_run(&mut self, chain: &str, run: Run) -> Vec<Rule> {
        if run.atoms.len() < 2 {
            return run.atoms.iter().map(|a| self.linear(chain, a)).collect();
        }
        self.stats.rules_in_maps += run.atoms.len();
        let dims = run.shape.dims();
        let keys: Vec<(&Atom, &[Val])> = run
            .atoms
            .iter()
            .zip(run.keys_of_atoms())
            .flat_map(|(atom, keys)| keys.iter().map(move |k| (atom, k.as_slice())))
            .collect();
        // Next to other fields, the protocol picks one of several maps instead of being part
        // of one map's key: `meta l4proto tcp ip saddr . th dport vmap @m`. The elements of a
        // run never overlap, so the split changes no verdict, while the shorter keys make the
        // kernel's inserts about a fifth cheaper (10k elements) and lookups shorter.
        let Some(p) = dims
            .iter()
            .position(|d| *d == Dim::Proto)
            .filter(|_| dims.len() > 1)
        else {
            return vec![self.emit_map(chain, run.shape.fam, &dims, None, &keys)];
        };
        let mut protos: Vec<&Val> = Vec::new();
        for (_, key) in &keys {
            if !protos.contains(&&key[p]) {
                protos.push(&key[p]);
            }
        }
        let mut other_dims = dims.clone();
        other_dims.remove(p);
        protos
            .into_iter()
            .map(|proto| {
                let part: Vec<(&Atom, &[Val])> = keys
                    .iter()
                    .filter(|(_, k)| &k[p] == proto)
                    .copied()
                    .collect();
                self.emit_map(chain, run.shape.fam, &other_dims, Some((p, proto)), &part)
            })
            .collect()
    }

    /// One verdict map of `keys` (atom, key) on the fields `dims`, and the rule looking it up;
    /// with `proto`, the field at that index of the keys is left out and matched by the rule.
    fn emit_map(
        &mut self,
        chain: &str,
        fam: Fam,
        dims: &[Dim],
        proto: Option<(usize, &Val)>,
        keys: &[(&Atom, &[Val])],
    ) -> Rule {
        let key_type = if dims.len() == 1 {
            KeyType::Single(dims[0].key_type(fam))
        } else {
            KeyType::Concat(dims.iter().map(|d| d.key_type(fam)).collect())
        };
        let key_exprs: Vec<Expr> = dims.iter().map(|d| d.key_expr(fam)).collect();
        let key = if key_exprs.len() == 1 {
            key_exprs.into_iter().next().unwrap_or_else(|| s(""))
        } else {
            Expr::Named(Named::Concat(key_exprs))
        };
        let interval = dims
            .iter()
            .any(|d| matches!(d, Dim::Saddr | Dim::Daddr | Dim::Dport));
        let mut elem = Vec::with_capacity(keys.len());
        for (atom, key) in keys {
            let vals: Vec<Expr> = key
                .iter()
                .enumerate()
                .filter(|(i, _)| proto.is_none_or(|(p, _)| *i != p))
                .map(|(_, v)| v.expr())
                .collect();
            let val = if vals.len() == 1 {
                vals.into_iter().next().unwrap_or_else(|| s(""))
            } else {
                Expr::Named(Named::Concat(vals))
            };
            elem.push(Expr::Pair(Box::new((
                Expr::Named(Named::Elem {
                    val: Box::new(val),
                    comment: Some(atom.rule.id.clone()),
                }),
                Expr::Verdict(atom.verdict()),
            ))));
        }
        self.stats.maps += 1;
        self.stats.map_elements += elem.len();
        let name = self.add_fixed_set(
            chain,
            Set {
                family: FAMILY,
                table: self.opts.table.clone(),
                name: String::new(),
                key_type,
                map: Some("verdict"),
                flags: if interval {
                    vec!["interval"]
                } else {
                    Vec::new()
                },
                elem,
                stmt: vec![counter()],
                comment: None,
            },
        );
        let mut expr = Vec::new();
        if let Some((_, proto)) = proto {
            expr.push(matches(meta("l4proto"), proto.expr()));
        }
        expr.push(Stmt::Vmap {
            key,
            data: s(format!("@{name}")),
        });
        self.rule(chain, expr, None)
    }

    fn linear(&mut self, chain: &str, atom: &Atom) -> Rule {
        self.stats.linear_rules += 1;
        let mut expr = Vec::new();
        let fam = atom.fam;
        if let Some(i) = atom.iif {
            expr.push(matches(meta("iifname"), s(i)));
        }
        if let Some(o) = atom.oif {
            expr.push(matches(meta("oifname"), s(o)));
        }
        if !atom.saddr.is_empty() {
            expr.push(matches(
                Dim::Saddr.key_expr(fam),
                one_or_set(atom.saddr.iter().map(|n| Val::Net(*n).expr())),
            ));
        }
        match &atom.daddr {
            Dst::Any => {}
            Dst::Nets(n) => {
                expr.push(matches(
                    Dim::Daddr.key_expr(fam),
                    one_or_set(n.iter().map(|n| Val::Net(*n).expr())),
                ));
            }
            Dst::Fqdn(set_name) => {
                expr.push(matches(Dim::Daddr.key_expr(fam), s(format!("@{set_name}"))))
            }
        }
        if !atom.protos.is_empty() {
            expr.push(matches(
                meta("l4proto"),
                one_or_set(atom.protos.iter().map(|p| s(*p))),
            ));
        }
        if !atom.ports.is_empty() {
            expr.push(matches(
                payload("th", "dport"),
                one_or_set(atom.ports.iter().map(|p| Val::Port(*p).expr())),
            ));
        }
        if atom.established {
            expr.push(Stmt::Match {
                op: "in",
                left: ct("state"),
                right: s("established"),
            });
        }
        expr.push(counter());
        expr.push(verdict(atom.verdict()));
        self.rule(chain, expr, Some(&atom.rule.id))
    }

    /// Clients on the LAN side may query the proxy (UDP and TCP), whatever the user rules say.
    fn dns_clients(&self, topo: &Topology) -> Vec<Rule> {
        let Some(dns) = &self.opts.dns else {
            return Vec::new();
        };
        let lan_side = lan_side_input(topo);
        dns.listen
            .iter()
            .map(|l| {
                let fam = fam_of(l.ip());
                let mut e = lan_side.clone();
                if l.ip().is_unspecified() {
                    // A wildcard listener serves every local address of its family.
                    e.push(matches(meta("nfproto"), s(fam.nfproto())));
                } else {
                    e.push(matches(Dim::Daddr.key_expr(fam), s(l.ip().to_string())));
                }
                e.extend(dns_port(l.port()));
                e.push(counter());
                e.push(verdict(Verdict::accept()));
                self.rule("input", e, Some(DNS_PROXY))
            })
            .collect()
    }

    /// The proxy may reach its upstream resolvers even under `output_action: deny`.
    fn dns_upstreams(&self) -> Vec<Rule> {
        let Some(dns) = &self.opts.dns else {
            return Vec::new();
        };
        dns.upstreams
            .iter()
            .map(|u| {
                let fam = fam_of(u.ip());
                let mut e = vec![matches(Dim::Daddr.key_expr(fam), s(u.ip().to_string()))];
                e.extend(dns_port(u.port()));
                e.push(counter());
                e.push(verdict(Verdict::accept()));
                self.rule("output", e, Some(DNS_UPSTREAM))
            })
            .collect()
    }

    /// With `intercept`, LAN-side port-53 traffic to any address goes to the proxy: per
    /// family, to the first listen address of that family (none: that family is left alone).
    /// One rule per protocol: nft maps a port only after a match on a single protocol.
    fn dns_intercept(&self, topo: &Topology) -> Vec<Rule> {
        let Some(dns) = self.opts.dns.as_ref().filter(|d| d.intercept) else {
            return Vec::new();
        };
        let lan_side = lan_side_input(topo);
        [Fam::V4, Fam::V6]
            .into_iter()
            .filter_map(|fam| dns.listen.iter().find(|l| fam_of(l.ip()) == fam))
            .flat_map(|l| ["tcp", "udp"].map(|proto| (l, proto)))
            .map(|(l, proto)| {
                let fam = fam_of(l.ip());
                let mut e = lan_side.clone();
                e.push(matches(meta("nfproto"), s(fam.nfproto())));
                e.push(matches(meta("l4proto"), s(proto)));
                e.push(matches(payload("th", "dport"), num(53)));
                e.push(counter());
                e.push(if l.ip().is_unspecified() {
                    // A wildcard listener is reached on the address the query came in to.
                    Stmt::Redirect(Nat {
                        addr: None,
                        family: None,
                        port: Some(num(l.port().into())),
                    })
                } else {
                    Stmt::Dnat(Nat {
                        addr: Some(s(l.ip().to_string())),
                        family: Some(fam.nat_family()),
                        port: Some(num(l.port().into())),
                    })
                });
                self.rule("dstnat", e, Some(DNS_INTERCEPT))
            })
            .collect()
    }

    fn nat_chains(&mut self, nat: &NatPolicy, topo: &Topology) {
        let intercept = self.dns_intercept(topo);
        if !nat.dnat.is_empty() || !intercept.is_empty() {
            // Port-forwards first: a forward of WAN port 53 is not a LAN query.
            let mut rules = Vec::new();
            for (i, d) in nat.dnat.iter().enumerate() {
                let fam = fam_of(d.wan_ip);
                let mut expr = Vec::new();
                if let Some(from) = d.from {
                    expr.push(matches(Dim::Saddr.key_expr(fam), Val::Net(from).expr()));
                }
                expr.push(matches(Dim::Daddr.key_expr(fam), s(d.wan_ip.to_string())));
                expr.push(matches(
                    payload(d.proto.as_str(), "dport"),
                    num(d.wan_port.into()),
                ));
                expr.push(counter());
                expr.push(Stmt::Dnat(Nat {
                    addr: Some(s(d.to.ip().to_string())),
                    family: Some(fam.nat_family()),
                    port: Some(num(d.to.port().into())),
                }));
                rules.push(self.rule("dstnat", expr, Some(&format!("{DNAT_PREFIX}{i}"))));
            }
            rules.extend(intercept);
            let base = BaseChain {
                kind: "nat",
                hook: "prerouting",
                prio: -100,
                policy: "accept",
            };
            let chain = self.chain("dstnat", Some(base));
            self.chains.push((chain, rules));
        }
        if !nat.snat.is_empty() {
            let mut rules = Vec::new();
            for (i, sn) in nat.snat.iter().enumerate() {
                let fam = fam_of(sn.source.addr());
                let comment = format!("{SNAT_PREFIX}{i}");
                let head = vec![
                    matches(meta("oifname"), s(&sn.out_interface)),
                    matches(Dim::Saddr.key_expr(fam), Val::Net(sn.source).expr()),
                ];
                match &sn.to {
                    SnatTo::Masquerade => {
                        let expr = push(push(head, counter()), Stmt::Masquerade(None));
                        rules.push(self.rule("srcnat", expr, Some(&comment)));
                    }
                    SnatTo::Address { ip, port_range } => {
                        let to = |port: Option<Expr>| {
                            Stmt::Snat(Nat {
                                addr: Some(s(ip.to_string())),
                                family: Some(fam.nat_family()),
                                port,
                            })
                        };
                        if let Some(pr) = port_range {
                            // A port mapping needs a transport header, and nft one protocol per
                            // rule; other protocols keep their ids.
                            for proto in ["tcp", "udp"] {
                                let mut e = head.clone();
                                e.push(matches(meta("l4proto"), s(proto)));
                                e.push(counter());
                                e.push(to(Some(range(pr.lo.into(), pr.hi.into()))));
                                rules.push(self.rule("srcnat", e, Some(&comment)));
                            }
                        }
                        let expr = push(push(head, counter()), to(None));
                        rules.push(self.rule("srcnat", expr, Some(&comment)));
                    }
                }
            }
            let base = BaseChain {
                kind: "nat",
                hook: "postrouting",
                prio: 100,
                policy: "accept",
            };
            let chain = self.chain("srcnat", Some(base));
            self.chains.push((chain, rules));
        }
    }
}

/// DNS over UDP or TCP to `port`.
fn dns_port(port: u16) -> [Stmt; 2] {
    [
        matches(meta("l4proto"), set(strs(&["tcp", "udp"]))),
        matches(payload("th", "dport"), num(port.into())),
    ]
}

/// The type of a named set holding values that `left` is matched against, for every kind of
/// match ward writes with a set of values (a unit test holds the compiler to that).
fn anonymous_set_type(left: &Expr) -> Option<&'static str> {
    let Expr::Named(n) = left else {
        return None;
    };
    Some(match n {
        Named::Meta { key: "l4proto" } => "inet_proto",
        Named::Meta {
            key: "iifname" | "oifname",
        } => "ifname",
        Named::Payload {
            protocol: "icmp",
            field: "type",
        } => "icmp_type",
        Named::Payload {
            protocol: "icmpv6",
            field: "type",
        } => "icmpv6_type",
        Named::Payload {
            protocol: "ip",
            field: "saddr" | "daddr",
        } => "ipv4_addr",
        Named::Payload {
            protocol: "ip6",
            field: "saddr" | "daddr",
        } => "ipv6_addr",
        Named::Payload {
            protocol: "th",
            field: "sport" | "dport",
        } => "inet_service",
        _ => return None,
    })
}

fn push(mut v: Vec<Stmt>, s: Stmt) -> Vec<Stmt> {
    v.push(s);
    v
}

fn strs(v: &[&str]) -> Vec<Expr> {
    v.iter().map(|x| s(*x)).collect()
}

fn one_or_set(mut items: impl Iterator<Item = Expr>) -> Expr {
    let first = items.next();
    let rest: Vec<Expr> = items.collect();
    match first {
        Some(f) if rest.is_empty() => f,
        Some(f) => set(std::iter::once(f).chain(rest).collect()),
        None => set(Vec::new()),
    }
}

fn action_verdict(a: Action) -> Verdict {
    match a {
        Action::Accept => Verdict::accept(),
        Action::Deny => Verdict::drop(),
    }
}

/// The matches that select egress and ingress traffic in the forward hook.
fn side_matches(topo: &Topology) -> (Vec<Stmt>, Vec<Stmt>) {
    let names = |v: &[String]| one_or_set(v.iter().map(s));
    match topo {
        Topology::Gateway { lan, wan } => (
            vec![
                matches(meta("iifname"), names(lan)),
                matches(meta("oifname"), names(wan)),
            ],
            vec![
                matches(meta("iifname"), names(wan)),
                matches(meta("oifname"), names(lan)),
            ],
        ),
        Topology::SnatWan { wan } => (
            vec![
                not_matches(meta("iifname"), names(wan)),
                matches(meta("oifname"), names(wan)),
            ],
            vec![
                matches(meta("iifname"), names(wan)),
                not_matches(meta("oifname"), names(wan)),
            ],
        ),
        Topology::Host => (Vec::new(), Vec::new()),
    }
}

/// What marks a packet as coming from the LAN side, for traffic to the firewall itself.
/// Without interfaces or SNAT there are no sides: any interface.
fn lan_side_input(topo: &Topology) -> Vec<Stmt> {
    let names = |v: &[String]| one_or_set(v.iter().map(s));
    match topo {
        Topology::Gateway { lan, .. } => vec![matches(meta("iifname"), names(lan))],
        Topology::SnatWan { wan } => vec![not_matches(meta("iifname"), names(wan))],
        Topology::Host => Vec::new(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fam {
    Any,
    V4,
    V6,
}

impl Fam {
    fn nat_family(self) -> &'static str {
        match self {
            Fam::V6 => "ip6",
            _ => "ip",
        }
    }

    fn nfproto(self) -> &'static str {
        match self {
            Fam::V6 => "ipv6",
            _ => "ipv4",
        }
    }
}

fn fam_of(ip: IpAddr) -> Fam {
    match ip {
        IpAddr::V4(_) => Fam::V4,
        IpAddr::V6(_) => Fam::V6,
    }
}

fn net_fam(n: &IpNet) -> Fam {
    match n {
        IpNet::V4(_) => Fam::V4,
        IpNet::V6(_) => Fam::V6,
    }
}

#[derive(Clone, Debug)]
enum Dst {
    Any,
    Nets(Vec<IpNet>),
    Fqdn(String),
}

/// One rule restricted to one address family: what a single nftables match can express.
#[derive(Clone, Debug)]
struct Atom<'r> {
    rule: &'r PolicyRule,
    fam: Fam,
    iif: Option<&'r str>,
    oif: Option<&'r str>,
    saddr: Vec<IpNet>,
    daddr: Dst,
    protos: Vec<&'static str>,
    ports: Vec<PortRange>,
    established: bool,
}

/// Split a rule per address family, with each field normalised (no nested prefixes, no
/// overlapping port ranges), so the elements of one rule never overlap each other.
fn atoms(rule: &PolicyRule) -> Vec<Atom<'_>> {
    let protos: Vec<&'static str> = match rule.protocol {
        Some(Protocol::Tcp) => vec!["tcp"],
        Some(Protocol::Udp) => vec!["udp"],
        Some(Protocol::Icmp) => vec!["icmp"],
        Some(Protocol::Icmpv6) => vec!["ipv6-icmp"],
        None if !rule.destination_port.is_empty() => vec!["tcp", "udp"],
        None => Vec::new(),
    };
    let base = Atom {
        rule,
        fam: Fam::Any,
        iif: rule.in_interface.as_deref(),
        oif: rule.out_interface.as_deref(),
        saddr: Vec::new(),
        daddr: Dst::Any,
        protos,
        ports: merge_ports(&rule.destination_port),
        established: rule.state.is_some(),
    };
    let family_specific = !rule.source.is_empty()
        || !rule.destination.is_empty()
        || !rule.destination_fqdn.is_empty();
    if !family_specific {
        return vec![base];
    }
    let mut out = Vec::new();
    for fam in [Fam::V4, Fam::V6] {
        let saddr = normalise_nets(rule.source.iter().filter(|n| net_fam(n) == fam));
        if !rule.source.is_empty() && saddr.is_empty() {
            continue;
        }
        let daddr = if !rule.destination_fqdn.is_empty() {
            let (v4, v6) = fqdn_set_names(&rule.id);
            Dst::Fqdn(if fam == Fam::V4 { v4 } else { v6 })
        } else if !rule.destination.is_empty() {
            let d = normalise_nets(rule.destination.iter().filter(|n| net_fam(n) == fam));
            if d.is_empty() {
                continue;
            }
            Dst::Nets(d)
        } else {
            Dst::Any
        };
        out.push(Atom {
            fam,
            saddr,
            daddr,
            ..base.clone()
        });
    }
    out
}

/// Reorders atoms so that, between two atoms that match both families, the IPv4 atoms come
/// first and the IPv6 ones after, each in policy order. An IPv4 and an IPv6 atom never match
/// the same packet, so this keeps first-match semantics and lets same-shape runs grow.
fn family_ordered<'r>(atoms: impl Iterator<Item = Atom<'r>>) -> Vec<Atom<'r>> {
    let mut out = Vec::new();
    let mut v6 = Vec::new();
    for a in atoms {
        match a.fam {
            Fam::V4 => out.push(a),
            Fam::V6 => v6.push(a),
            Fam::Any => {
                out.append(&mut v6);
                out.push(a);
            }
        }
    }
    out.append(&mut v6);
    out
}

fn normalise_nets<'a>(nets: impl Iterator<Item = &'a IpNet>) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = nets.map(|n| n.trunc()).collect();
    v.sort_by_key(|n| (n.prefix_len(), n.network()));
    let mut out: Vec<IpNet> = Vec::new();
    for n in v {
        if !out.iter().any(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out.sort();
    out
}

fn merge_ports(ports: &[PortRange]) -> Vec<PortRange> {
    let mut v = ports.to_vec();
    v.sort();
    let mut out: Vec<PortRange> = Vec::new();
    for p in v {
        match out.last_mut() {
            Some(last) if u32::from(p.lo) <= u32::from(last.hi) + 1 => last.hi = last.hi.max(p.hi),
            _ => out.push(p),
        }
    }
    out
}

/// One key column of a folded map, in the fixed order the columns appear in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Iif,
    Oif,
    Saddr,
    Daddr,
    Proto,
    Dport,
}

impl Dim {
    fn key_type(self, fam: Fam) -> &'static str {
        match self {
            Dim::Iif | Dim::Oif => "ifname",
            Dim::Saddr | Dim::Daddr if fam == Fam::V6 => "ipv6_addr",
            Dim::Saddr | Dim::Daddr => "ipv4_addr",
            Dim::Proto => "inet_proto",
            Dim::Dport => "inet_service",
        }
    }

    fn key_expr(self, fam: Fam) -> Expr {
        let ip = if fam == Fam::V6 { "ip6" } else { "ip" };
        match self {
            Dim::Iif => meta("iifname"),
            Dim::Oif => meta("oifname"),
            Dim::Saddr => payload(ip, "saddr"),
            Dim::Daddr => payload(ip, "daddr"),
            Dim::Proto => meta("l4proto"),
            Dim::Dport => payload("th", "dport"),
        }
    }
}

/// What `Hash` writes, fed to SHA-256: a digest of a set's content that is the same in every
/// run (std's hashers are not cryptographic, and serialising to JSON first was 10x slower).
struct Sha256Writer(Sha256);

impl std::hash::Hasher for Sha256Writer {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Unused: the digest is read with `finalize`.
    fn finish(&self) -> u64 {
        0
    }
}

/// Which fields a foldable atom matches on; atoms of one shape can share a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    fam: Fam,
    iif: bool,
    oif: bool,
    saddr: bool,
    daddr: bool,
    proto: bool,
    dport: bool,
}

impl Shape {
    fn dims(&self) -> Vec<Dim> {
        [
            (self.iif, Dim::Iif),
            (self.oif, Dim::Oif),
            (self.saddr, Dim::Saddr),
            (self.daddr, Dim::Daddr),
            (self.proto, Dim::Proto),
            (self.dport, Dim::Dport),
        ]
        .into_iter()
        .filter_map(|(on, d)| on.then_some(d))
        .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Val {
    Iface(String),
    Net(IpNet),
    Proto(&'static str),
    Port(PortRange),
}

impl Val {
    fn expr(&self) -> Expr {
        match self {
            Val::Iface(i) => s(i.clone()),
            Val::Net(n) if n.prefix_len() == n.max_prefix_len() => s(n.addr().to_string()),
            Val::Net(n) => Expr::Named(Named::Prefix {
                addr: n.network().to_string(),
                len: n.prefix_len(),
            }),
            Val::Proto(p) => s(*p),
            Val::Port(p) if p.lo == p.hi => num(p.lo.into()),
            Val::Port(p) => range(p.lo.into(), p.hi.into()),
        }
    }

    fn overlaps(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Net(a), Val::Net(b)) => a.contains(b) || b.contains(a),
            (Val::Port(a), Val::Port(b)) => a.overlaps(b),
            (a, b) => a == b,
        }
    }
}

impl<'r> Atom<'r> {
    fn foldable(&self) -> bool {
        !self.established && !matches!(self.daddr, Dst::Fqdn(_)) && !self.shape().dims().is_empty()
    }

    fn shape(&self) -> Shape {
        Shape {
            fam: self.fam,
            iif: self.iif.is_some(),
            oif: self.oif.is_some(),
            saddr: !self.saddr.is_empty(),
            daddr: matches!(self.daddr, Dst::Nets(_)),
            proto: !self.protos.is_empty(),
            dport: !self.ports.is_empty(),
        }
    }

    fn verdict(&self) -> Verdict {
        if self.rule.log {
            Verdict::jump(log_chain_name(&self.rule.id))
        } else {
            action_verdict(self.rule.action)
        }
    }

    /// The map keys this atom stands for: the product of its columns.
    fn elements(&self) -> Vec<Vec<Val>> {
        let mut cols: Vec<Vec<Val>> = Vec::new();
        if let Some(i) = self.iif {
            cols.push(vec![Val::Iface(i.to_string())]);
        }
        if let Some(o) = self.oif {
            cols.push(vec![Val::Iface(o.to_string())]);
        }
        if !self.saddr.is_empty() {
            cols.push(self.saddr.iter().map(|n| Val::Net(*n)).collect());
        }
        if let Dst::Nets(n) = &self.daddr {
            cols.push(n.iter().map(|n| Val::Net(*n)).collect());
        }
        if !self.protos.is_empty() {
            cols.push(self.protos.iter().map(|p| Val::Proto(p)).collect());
        }
        if !self.ports.is_empty() {
            cols.push(self.ports.iter().map(|p| Val::Port(*p)).collect());
        }
        let mut out: Vec<Vec<Val>> = vec![Vec::new()];
        for col in cols {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    col.iter().map(move |v| {
                        let mut k = prefix.clone();
                        k.push(v.clone());
                        k
                    })
                })
                .collect();
        }
        out
    }
}

/// How many existing elements one overlap check may compare against before it gives up and
/// reports an overlap (which only ends the run early: correct, just less folded).
const OVERLAP_CHECK_BUDGET: usize = 256;

/// A run of same-shape atoms being folded into one map, with an index on the first column
/// so that checking a new rule for overlap does not scan the whole run.
struct Run<'r> {
    shape: Shape,
    atoms: Vec<Atom<'r>>,
    /// The keys of all atoms, one after another; `key_ends[i]` is where atom i's keys end.
    elems: Vec<Vec<Val>>,
    key_ends: Vec<usize>,
    pivot: Option<usize>,
    /// Address pivot: elements by (network address, prefix length), and the prefix lengths
    /// present. A prefix that contains a new one is found by one lookup per present length;
    /// prefixes a new one contains are the entries whose network address lies inside it.
    by_net: BTreeMap<(IpAddr, u8), Vec<usize>>,
    net_lens: BTreeSet<u8>,
    /// Port pivot: elements by range start, and the widest range seen.
    by_port: BTreeMap<u16, Vec<usize>>,
    widest_port: u16,
}

impl<'r> Run<'r> {
    fn new(shape: Shape) -> Self {
        let dims = shape.dims();
        let pivot = dims
            .iter()
            .position(|d| matches!(d, Dim::Saddr | Dim::Daddr))
            .or_else(|| dims.iter().position(|d| *d == Dim::Dport));
        Run {
            shape,
            atoms: Vec::new(),
            elems: Vec::new(),
            key_ends: Vec::new(),
            pivot,
            by_net: BTreeMap::new(),
            net_lens: BTreeSet::new(),
            by_port: BTreeMap::new(),
            widest_port: 0,
        }
    }

    /// Adds the atom unless one of its keys overlaps a key already in the run; then it is
    /// handed back (a move of the caller's own value, so its size does not matter).
    #[allow(clippy::result_large_err)]
    fn try_add(&mut self, atom: Atom<'r>) -> Result<(), Atom<'r>> {
        let new = atom.elements();
        if new.iter().any(|k| self.overlaps(k)) {
            return Err(atom);
        }
        for k in new {
            self.index(k);
        }
        self.atoms.push(atom);
        self.key_ends.push(self.elems.len());
        Ok(())
    }

    /// The keys of each atom, in order.
    fn keys_of_atoms(&self) -> impl Iterator<Item = &[Vec<Val>]> {
        let starts = std::iter::once(0).chain(self.key_ends.iter().copied());
        starts
            .zip(self.key_ends.iter().copied())
            .map(|(a, b)| &self.elems[a..b])
    }

    fn candidates(&self, key: &[Val]) -> Option<Vec<usize>> {
        let mut out = Vec::new();
        match self.pivot.map(|p| &key[p]) {
            Some(Val::Net(n)) => {
                for &len in self.net_lens.range(..n.prefix_len()) {
                    if let Ok(anc) = IpNet::new(n.network(), len) {
                        if let Some(v) = self.by_net.get(&(anc.network(), len)) {
                            out.extend_from_slice(v);
                        }
                    }
                }
                for (_, v) in self
                    .by_net
                    .range((n.network(), 0)..=(n.broadcast(), u8::MAX))
                {
                    out.extend_from_slice(v);
                    if out.len() > OVERLAP_CHECK_BUDGET {
                        return None;
                    }
                }
            }
            Some(Val::Port(p)) => {
                let from = p.lo.saturating_sub(self.widest_port);
                for (_, v) in self.by_port.range(from..=p.hi) {
                    out.extend_from_slice(v);
                    if out.len() > OVERLAP_CHECK_BUDGET {
                        return None;
                    }
                }
            }
            _ => {
                if self.elems.len() > OVERLAP_CHECK_BUDGET {
                    return None;
                }
                out.extend(0..self.elems.len());
            }
        }
        (out.len() <= OVERLAP_CHECK_BUDGET).then_some(out)
    }

    fn overlaps(&self, key: &[Val]) -> bool {
        match self.candidates(key) {
            None => true,
            Some(c) => c
                .into_iter()
                .any(|i| self.elems[i].iter().zip(key).all(|(a, b)| a.overlaps(b))),
        }
    }

    fn index(&mut self, key: Vec<Val>) {
        let i = self.elems.len();
        match self.pivot.map(|p| &key[p]) {
            Some(Val::Net(n)) => {
                self.by_net
                    .entry((n.network(), n.prefix_len()))
                    .or_default()
                    .push(i);
                self.net_lens.insert(n.prefix_len());
            }
            Some(Val::Port(p)) => {
                self.by_port.entry(p.lo).or_default().push(i);
                self.widest_port = self.widest_port.max(p.hi - p.lo);
            }
            _ => {}
        }
        self.elems.push(key);
    }
}

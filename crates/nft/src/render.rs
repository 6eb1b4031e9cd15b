//! Renders a compiled table in nft's own language: what `apply` hands libnftables, what
//! `ward compile` prints and the golden files hold. A kernel test proves it equal to the JSON.
//!
//! libnftables reads this about 1.7x faster and with half the memory of the same table in JSON.

use crate::compile::Compiled;
use crate::schema::*;
use std::fmt::Write;

/// The table in one block: what `ward compile` prints, the golden files hold, and what
/// creates the table where nothing is installed.
pub fn to_nft(c: &Compiled) -> String {
    let mut out = format!("table {} {} {{\n", c.table.family, c.table.name);
    for set in &c.sets {
        out.push_str(&set_block(&set_head(set), &set.elem, &quoted(set)));
        out.push('\n');
    }
    let blocks: Vec<String> = c.chains.iter().map(|(c, r)| chain_block(c, r)).collect();
    out.push_str(&blocks.join("\n"));
    out.push_str("}\n");
    out
}

/// A compiled table in pieces, for `live::install`, which sends them in several transactions
/// depending on what is installed already.
pub struct Parts {
    pub table: String,
    pub sets: Vec<SetPart>,
    pub chains: Vec<ChainPart>,
}

pub struct SetPart {
    pub name: String,
    pub is_map: bool,
    /// `\tset NAME {...}\n` (or `map`), to go inside a `table` block: the declaration, with
    /// the elements unless `netlink` holds them.
    pub block: String,
    /// The elements, encoded for netlink, when ward can write them itself: they are sent once
    /// the set exists, faster than libnftables would parse them.
    pub(crate) netlink: Option<Vec<u8>>,
}

pub struct ChainPart {
    pub name: String,
    /// The hook of a base chain.
    pub base: Option<BaseChain>,
    /// `\tchain NAME {...}\n` with its rules, to go inside a `table` block.
    pub block: String,
}

impl ChainPart {
    /// The chain without its rules.
    pub fn declaration(&self) -> String {
        let mut out = format!("\tchain {} {{\n", self.name);
        if let Some(b) = &self.base {
            let _ = writeln!(out, "\t\t{}", hook_line(b));
        }
        out.push_str("\t}\n");
        out
    }
}

fn hook_line(b: &BaseChain) -> String {
    format!(
        "type {} hook {} priority {}; policy {};",
        b.kind, b.hook, b.prio, b.policy
    )
}

impl Parts {
    /// Takes the compiled table apart; set elements are rendered only when sent.
    pub fn of(c: Compiled) -> Parts {
        Parts {
            table: c.table.name,
            chains: c
                .chains
                .iter()
                .map(|(chain, rules)| ChainPart {
                    name: chain.name.clone(),
                    base: chain.base.clone(),
                    block: chain_block(chain, rules),
                })
                .collect(),
            sets: c.sets.into_iter().map(SetPart::of).collect(),
        }
    }
}

impl SetPart {
    fn of(set: Set) -> SetPart {
        let head = set_head(&set);
        let types = key_types(&set);
        let layout = crate::netlink::KeyLayout {
            types: &types,
            interval: set.flags.contains(&"interval"),
        };
        let netlink = match layout.encode(&set.elem) {
            Ok(e) if !e.is_empty() => Some(e),
            // Empty, or not a kind of element ward encodes: libnftables takes them.
            _ => None,
        };
        let elem: &[Expr] = if netlink.is_some() { &[] } else { &set.elem };
        SetPart {
            block: set_block(&head, elem, &quoted(&set)),
            name: set.name,
            is_map: set.map.is_some(),
            netlink,
        }
    }
}

fn key_types(set: &Set) -> Vec<&'static str> {
    match &set.key_type {
        KeyType::Single(t) => vec![*t],
        KeyType::Concat(v) => v.clone(),
    }
}

/// Which parts of an element's key nft wants quoted (interface names).
fn quoted(set: &Set) -> Vec<bool> {
    key_types(set).iter().map(|t| *t == "ifname").collect()
}

fn set_head(set: &Set) -> String {
    let mut out = String::new();
    let kind = if set.map.is_some() { "map" } else { "set" };
    let _ = writeln!(out, "\t{kind} {} {{", set.name);
    let mut ty = key_types(set).join(" . ");
    if let Some(m) = set.map {
        let _ = write!(ty, " : {m}");
    }
    let _ = writeln!(out, "\t\ttype {ty}");
    if !set.flags.is_empty() {
        let _ = writeln!(out, "\t\tflags {}", set.flags.join(", "));
    }
    for st in &set.stmt {
        let _ = writeln!(out, "\t\t{}", stmt(st));
    }
    if let Some(cm) = &set.comment {
        let _ = writeln!(out, "\t\tcomment {}", quote(cm));
    }
    out
}

/// A set's declaration (`set_head`) with `elem` and the closing brace.
fn set_block(head: &str, elem: &[Expr], quoted: &[bool]) -> String {
    let mut out = head.to_string();
    if !elem.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements(elem, quoted));
    }
    out.push_str("\t}\n");
    out
}

fn elements(elem: &[Expr], quoted: &[bool]) -> String {
    let mut out = String::new();
    for (i, e) in elem.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n\t\t\t     ");
        }
        out.push_str(&element(e, quoted));
    }
    out
}

fn chain_block(chain: &Chain, rules: &[Rule]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(b) = &chain.base {
        let _ = writeln!(out, "\t\t{}", hook_line(b));
    }
    for r in rules {
        let mut line: Vec<String> = r.expr.iter().map(stmt).collect();
        if let Some(cm) = &r.comment {
            line.push(format!("comment {}", quote(cm)));
        }
        let _ = writeln!(out, "\t\t{}", line.join(" "));
    }
    out.push_str("\t}\n");
    out
}

/// nft's scanner takes everything up to the next '"' literally and knows no escapes. The
/// quoted strings here are rule ids, generated comments and interface names, and the policy
/// check rejects a '"' in any of them.
fn quote(s: &str) -> String {
    debug_assert!(!s.contains('"'), "unquotable string {s:?}");
    format!("\"{s}\"")
}

fn element(e: &Expr, quoted: &[bool]) -> String {
    match e {
        Expr::Pair(p) => format!("{} : {}", element(&p.0, quoted), expr(&p.1, false)),
        Expr::Named(Named::Elem { val, comment }) => {
            let v = match &**val {
                Expr::Named(Named::Concat(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| expr(p, quoted.get(i).copied().unwrap_or(false)))
                    .collect::<Vec<_>>()
                    .join(" . "),
                other => expr(other, quoted.first().copied().unwrap_or(false)),
            };
            match comment {
                Some(c) => format!("{v} comment {}", quote(c)),
                None => v,
            }
        }
        other => expr(other, false),
    }
}

/// `quote_strings`: the strings here are interface names, which nft wants in quotes.
fn expr(e: &Expr, quote_strings: bool) -> String {
    match e {
        // `@name` is a set of names, not a name (the policy check rejects names with '@').
        Expr::Str(v) if quote_strings && !v.starts_with('@') => quote(v),
        Expr::Str(v) => v.clone(),
        Expr::Num(n) => n.to_string(),
        Expr::Pair(p) => format!("{} : {}", expr(&p.0, false), expr(&p.1, false)),
        Expr::List(items) => items
            .iter()
            .map(|i| expr(i, quote_strings))
            .collect::<Vec<_>>()
            .join(","),
        Expr::Verdict(v) => verdict_str(v),
        Expr::Named(n) => match n {
            Named::Payload { protocol, field } => format!("{protocol} {field}"),
            Named::Meta { key } => format!("meta {key}"),
            Named::Ct { key } => format!("ct {key}"),
            Named::Prefix { addr, len } => format!("{addr}/{len}"),
            Named::Range([lo, hi]) => format!("{}-{}", expr(lo, false), expr(hi, false)),
            Named::Set(items) => {
                let v: Vec<String> = items.iter().map(|i| expr(i, quote_strings)).collect();
                format!("{{ {} }}", v.join(", "))
            }
            Named::Concat(parts) => parts
                .iter()
                .map(|p| expr(p, quote_strings))
                .collect::<Vec<_>>()
                .join(" . "),
            Named::Elem { val, comment } => match comment {
                Some(c) => format!("{} comment {}", expr(val, quote_strings), quote(c)),
                None => expr(val, quote_strings),
            },
        },
    }
}

fn is_ifname(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Named(Named::Meta {
            key: "iifname" | "oifname"
        })
    )
}

fn verdict_str(v: &Verdict) -> String {
    match v {
        Verdict::Accept(_) => "accept".into(),
        Verdict::Drop(_) => "drop".into(),
        Verdict::Return(_) => "return".into(),
        Verdict::Jump { target } => format!("jump {target}"),
    }
}

fn nat_target(n: &Nat) -> String {
    let addr = n.addr.as_ref().map(|a| expr(a, false)).unwrap_or_default();
    let addr = if n.family == Some("ip6") && n.port.is_some() {
        format!("[{addr}]")
    } else {
        addr
    };
    let mut out = format!("{} to {addr}", n.family.unwrap_or("ip"));
    if let Some(p) = &n.port {
        let _ = write!(out, ":{}", expr(p, false));
    }
    out
}

fn stmt(s: &Stmt) -> String {
    match s {
        Stmt::Match { op, left, right } => {
            let r = expr(right, is_ifname(left));
            match *op {
                "==" | "in" => format!("{} {r}", expr(left, false)),
                other => format!("{} {other} {r}", expr(left, false)),
            }
        }
        Stmt::Counter(_) => "counter".into(),
        Stmt::Vmap { key, data } => format!("{} vmap {}", expr(key, false), expr(data, false)),
        Stmt::Limit { rate, per, burst } => {
            format!("limit rate {rate}/{per} burst {burst} packets")
        }
        Stmt::Log { prefix, group } => format!("log prefix {} group {group}", quote(prefix)),
        Stmt::Masquerade(_) => "masquerade".into(),
        Stmt::Snat(n) => format!("snat {}", nat_target(n)),
        Stmt::Dnat(n) => format!("dnat {}", nat_target(n)),
        Stmt::Redirect(n) => match &n.port {
            Some(p) => format!("redirect to :{}", expr(p, false)),
            None => "redirect".into(),
        },
        Stmt::Verdict(v) => verdict_str(v),
    }
}

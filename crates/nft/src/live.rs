//! What is installed right now: reading ward's table back (policy hash, time applied, per-rule
//! counters), installing a compiled table in its place, removing it, and the plan (diff)
//! between it and a policy.

use crate::compile::{Compiled, INFO_CHAIN};
use crate::netlink;
use crate::render::{ChainPart, Parts, SetPart};
use crate::schema::BaseChain;
use crate::session::{Format, NftError, Session};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Packets and bytes counted for one rule id (summed over all its elements and rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// ward's table as read back from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    /// What ward recorded with the table: `ward sha256=HEX applied=TIME`.
    pub comment: Option<String>,
    pub chains: usize,
    pub rules: usize,
    pub map_elements: usize,
    /// By comment: rule id, `default-deny`/`default-accept` (per chain, summed), and the
    /// `ward:` counters of the rules ward adds (`ward:snat-N`, `ward:dnat-N`, ...).
    pub counters: BTreeMap<String, Count>,
}

impl Installed {
    /// A `key=value` field of the table comment.
    pub fn comment_field(&self, key: &str) -> Option<&str> {
        self.comment
            .as_deref()?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Reads ward's table; `Ok(None)` when it is not installed.
pub fn read(session: &Session, table: &str) -> Result<Option<Installed>, NftError> {
    let Some(json) = session.list_table(table, Format::Json)? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&json)
        .map_err(|e| NftError::Rejected(format!("unreadable listing: {e}")))?;
    Ok(Some(parse_listing(&v)))
}

fn counter_of(v: &Value) -> Option<Count> {
    let c = v.get("counter")?;
    Some(Count {
        packets: c.get("packets")?.as_u64()?,
        bytes: c.get("bytes")?.as_u64()?,
    })
}

fn add(map: &mut BTreeMap<String, Count>, key: &str, c: Count) {
    let e = map.entry(key.to_string()).or_default();
    e.packets += c.packets;
    e.bytes += c.bytes;
}

pub fn parse_listing(v: &Value) -> Installed {
    let mut out = Installed::default();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in &items {
        if item.get("chain").is_some() {
            out.chains += 1;
        } else if let Some(r) = item.get("rule") {
            let comment = r.get("comment").and_then(Value::as_str);
            if r.get("chain").and_then(Value::as_str) == Some(INFO_CHAIN) {
                out.comment = comment.map(str::to_string);
                continue;
            }
            out.rules += 1;
            let exprs = r.get("expr").and_then(Value::as_array);
            if let (Some(comment), Some(exprs)) = (comment, exprs) {
                if let Some(c) = exprs.iter().find_map(counter_of) {
                    add(&mut out.counters, comment, c);
                }
            }
        } else if let Some(m) = item.get("map").or_else(|| item.get("set")) {
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.map_elements += 1;
                // A map element is `[{"elem": {...}}, verdict]`; a set element is `{"elem": {...}}`.
                let elem = e.get(0).unwrap_or(e).get("elem");
                if let Some(elem) = elem {
                    if let (Some(id), Some(c)) = (
                        elem.get("comment").and_then(Value::as_str),
                        counter_of(elem),
                    ) {
                        add(&mut out.counters, id, c);
                    }
                }
            }
        }
    }
    out
}

/// Installs a compiled table (`render::Parts`) in place of the live one, so that every packet
/// meets either the old rules or the new ones:
///
/// 1. the named sets and maps the live table lacks, created and then filled (`fill`), with no
///    rule using them yet;
/// 2. every chain flushed and filled anew, then the sets and chains the new table has no use
///    for deleted.
///
/// Why not one transaction replacing the table: the kernel makes new rules live a moment
/// before the elements of sets created in the same transaction (measured on 6.18: an allowed
/// SYN dropped now and then during re-applies, the vmap lookup missing in the new chain).
/// Sets are named after their content (`compile::add_fixed_set`), so a set already live holds
/// exactly what the new rules expect, and the addresses learned for an unchanged name rule
/// stay. If step 2 is rejected, what step 1 created is removed again and the error returned:
/// the live table is as it was.
pub fn install(session: &Session, parts: &Parts) -> Result<(), NftError> {
    let t = &parts.table;
    let live = Shape::read(session, t)?;
    let missing: Vec<&SetPart> = parts
        .sets
        .iter()
        .filter(|s| !live.sets.contains_key(&s.name))
        .collect();
    // Regular chains are declared with the sets: map elements may jump to them. In a new
    // table all chains are, so that they are listed in the compiled order; no rule is in
    // them yet, and a hook without rules lets everything pass, as before the table existed.
    let new_chains: Vec<&ChainPart> = parts
        .chains
        .iter()
        .filter(|c| !live.exists || (c.base.is_none() && !live.chains.contains_key(&c.name)))
        .collect();
    // One transaction: if the kernel rejects it, nothing has changed yet.
    if !live.exists || !missing.is_empty() {
        create_sets(session, t, &missing, &new_chains)?;
    }
    fill(t, &missing)
        .and_then(|()| session.apply_text(&swap_script(parts, &live)))
        .map_err(|e| {
            let undo = if !live.exists {
                format!("delete table inet {t}\n")
            } else {
                let mut u = String::new();
                for s in &missing {
                    let kind = if s.is_map { "map" } else { "set" };
                    let _ = writeln!(u, "delete {kind} inet {t} {}", s.name);
                }
                for c in &new_chains {
                    let _ = writeln!(u, "delete chain inet {t} {}", c.name);
                }
                u
            };
            match session.apply_text(&undo) {
                Ok(()) => e,
                Err(u) => NftError::Rejected(format!(
                    "{e}\nand removing the sets added for it failed too: {u}"
                )),
            }
        })
}

/// Step 1: creates the table if needed, declares `chains` (empty) and creates `sets`, with
/// their elements unless they go over netlink (`fill`).
fn create_sets(
    session: &Session,
    t: &str,
    sets: &[&SetPart],
    chains: &[&ChainPart],
) -> Result<(), NftError> {
    let mut script = format!("table inet {t} {{\n");
    for c in chains {
        script.push_str(&c.declaration());
    }
    for s in sets {
        script.push_str(&s.block);
    }
    script.push_str("}\n");
    session.apply_text(&script)
}

/// Adds the elements ward encodes itself to the sets just created, in one transaction.
fn fill(t: &str, sets: &[&SetPart]) -> Result<(), NftError> {
    let mut todo = sets
        .iter()
        .filter_map(|s| s.netlink.as_ref().map(|e| (&s.name, e)))
        .peekable();
    if todo.peek().is_none() {
        return Ok(());
    }
    netlink::Socket::open()?.commit(|b| {
        for (name, elements) in todo {
            b.elements(netlink::NFT_MSG_NEWSETELEM, t, name, elements);
        }
    })
}

/// Step 2, one transaction: every live chain flushed, the new table's chains filled, the sets
/// and chains it has no use for deleted.
fn swap_script(parts: &Parts, live: &Shape) -> String {
    let t = &parts.table;
    let mut script = String::new();
    for name in live.chains.keys() {
        let _ = writeln!(script, "flush chain inet {t} {name}");
    }
    for c in &parts.chains {
        if matches!(live.chains.get(&c.name), Some(hook) if *hook != c.base.as_ref().map(Hook::of))
        {
            // A chain's hook cannot change in place (ward never changes one; older tables may).
            let _ = writeln!(script, "delete chain inet {t} {}", c.name);
        }
    }
    let _ = writeln!(script, "table inet {t} {{");
    for c in &parts.chains {
        script.push_str(&c.block);
    }
    script.push_str("}\n");
    for (name, is_map) in &live.sets {
        if !parts.sets.iter().any(|s| &s.name == name) {
            let kind = if *is_map { "map" } else { "set" };
            let _ = writeln!(script, "delete {kind} inet {t} {name}");
        }
    }
    for name in live.chains.keys() {
        if !parts.chains.iter().any(|c| &c.name == name) {
            let _ = writeln!(script, "delete chain inet {t} {name}");
        }
    }
    script
}

/// A base chain's hook as compared between the live table and a compiled one.
#[derive(Debug, PartialEq, Eq)]
struct Hook {
    kind: String,
    hook: String,
    prio: i64,
    policy: String,
}

impl Hook {
    fn of(b: &BaseChain) -> Hook {
        Hook {
            kind: b.kind.into(),
            hook: b.hook.into(),
            prio: b.prio.into(),
            policy: b.policy.into(),
        }
    }
}

/// The names in ward's live table, without set elements or rules' details.
#[derive(Default)]
struct Shape {
    exists: bool,
    /// Name → is it a map.
    sets: BTreeMap<String, bool>,
    /// Name → its hook, for base chains.
    chains: BTreeMap<String, Option<Hook>>,
}

impl Shape {
    fn read(session: &Session, table: &str) -> Result<Shape, NftError> {
        let Some(json) = session.list_table(table, Format::JsonTerse)? else {
            return Ok(Shape::default());
        };
        let v: Value = serde_json::from_str(&json)
            .map_err(|e| NftError::Rejected(format!("unreadable listing: {e}")))?;
        let mut shape = Shape {
            exists: true,
            ..Shape::default()
        };
        let items = v.get("nftables").and_then(Value::as_array);
        for item in items.into_iter().flatten() {
            let name = |o: &Value| o.get("name").and_then(Value::as_str).map(str::to_string);
            if let Some(c) = item.get("chain") {
                let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
                let hook = match (text("type"), text("hook"), text("policy")) {
                    (Some(kind), Some(hook), Some(policy)) => Some(Hook {
                        kind,
                        hook,
                        prio: c.get("prio").and_then(Value::as_i64).unwrap_or(0),
                        policy,
                    }),
                    _ => None,
                };
                if let Some(n) = name(c) {
                    shape.chains.insert(n, hook);
                }
            } else if let Some((s, is_map)) = item
                .get("set")
                .map(|s| (s, false))
                .or_else(|| item.get("map").map(|m| (m, true)))
            {
                if let Some(n) = name(s) {
                    shape.sets.insert(n, is_map);
                }
            }
        }
        Ok(shape)
    }
}

/// Deletes ward's table and nothing else; `Ok(false)` when it was not there.
pub fn remove(session: &Session, table: &str) -> Result<bool, NftError> {
    if session.list_table(table, Format::TextStateless)?.is_none() {
        return Ok(false);
    }
    session.apply_text(&format!("delete table inet {table}"))?;
    Ok(true)
}

/// The live table as libnftables JSON objects (table, sets with their elements, chains,
/// rules, counters included; no handles), or `None` when it is not installed: what
/// `restore` puts back. Learned addresses come along with their remaining timeouts.
pub fn snapshot(session: &Session, table: &str) -> Result<Option<Vec<Value>>, NftError> {
    let Some(listing) = session.list_table(table, Format::Json)? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&listing)
        .map_err(|e| NftError::Rejected(format!("libnftables listed unreadable JSON: {e}")))?;
    let mut objects: Vec<Value> = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    objects.retain(|o| o.get("metainfo").is_none());
    for o in &mut objects {
        if let Some(inner) = o.as_object_mut().and_then(|m| m.values_mut().next()) {
            if let Some(m) = inner.as_object_mut() {
                m.remove("handle");
            }
        }
    }
    Ok(Some(objects))
}

/// Replaces ward's table with a `snapshot` in one transaction (or removes it, for a snapshot
/// of no table). Unlike `install`, the restored rules and their sets are created together:
/// a packet may meet a restored map before its elements for a moment (see `install`), a
/// price only a rollback pays.
pub fn restore(session: &Session, table: &str, snapshot: Option<&[Value]>) -> Result<(), NftError> {
    let t = serde_json::json!({"table": {"family": "inet", "name": table}});
    let mut batch = vec![
        serde_json::json!({"add": t}),
        serde_json::json!({"delete": t}),
    ];
    // Chains before sets: a map's elements may jump to a chain listed after it.
    let rank = |o: &Value| match o
        .as_object()
        .and_then(|m| m.keys().next())
        .map(String::as_str)
    {
        Some("table") => 0,
        Some("chain") => 1,
        Some("rule") => 3,
        _ => 2,
    };
    let mut objects: Vec<&Value> = snapshot.unwrap_or_default().iter().collect();
    objects.sort_by_key(|o| rank(o));
    for o in objects {
        // Every object names its table (`table`), or is the table (`name`).
        let (kind, inner) = match o.as_object().and_then(|m| m.iter().next()) {
            Some((k, v)) => (k.as_str(), v),
            None => ("", &Value::Null),
        };
        let owner = if kind == "table" { "name" } else { "table" };
        let belongs = inner.get("family") == Some(&Value::from("inet"))
            && inner.get(owner) == Some(&Value::from(table));
        if !belongs {
            return Err(NftError::Rejected(format!(
                "the snapshot holds an object outside table inet {table}: {o}"
            )));
        }
        batch.push(serde_json::json!({ "add": o }));
    }
    session.apply_json(&serde_json::json!({ "nftables": batch }).to_string())
}

/// The table `compiled` would produce, as the kernel lists it (without counter values). It is
/// loaded into a private, empty network namespace that vanishes with its thread, so the
/// listing has exactly the kernel's normal form and nothing live is touched.
pub fn render_in_scratch(compiled: &Compiled) -> Result<String, NftError> {
    let script = crate::render::to_nft(compiled);
    let table = compiled.table.name.clone();
    std::thread::spawn(move || -> Result<String, NftError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            NftError::Init(format!(
                "cannot create a scratch network namespace: {e} (are you root?)"
            ))
        })?;
        let s = Session::open()?;
        s.apply_text(&script)?;
        Ok(s.list_table(&table, Format::TextStateless)?
            .unwrap_or_default())
    })
    .join()
    .map_err(|_| NftError::Init("scratch namespace thread panicked".into()))?
}

/// A unified diff between the live table and the one `compiled` would install (empty when equal).
pub fn plan(session: &Session, compiled: &Compiled) -> Result<String, NftError> {
    let live = session
        .list_table(&compiled.table.name, Format::TextStateless)?
        .unwrap_or_default();
    let want = render_in_scratch(compiled)?;
    let want = strip_comment_line(&want);
    let live = in_order_of(&strip_comment_line(&live), &want);
    let want = in_order_of(&want, &want);
    if live == want {
        return Ok(String::new());
    }
    let diff = similar::TextDiff::from_lines(&live, &want);
    Ok(diff
        .unified_diff()
        .context_radius(2)
        .header("live", "policy")
        .to_string())
}

/// A listing's sets, maps and chains put in the order `want` lists them (the rest after),
/// one blank line between them, and set elements sorted: the kernel lists both in the order
/// they were created, which depends on what earlier applies left in place and on how
/// `install` sent them, and is no difference in policy.
pub fn in_order_of(listing: &str, want: &str) -> String {
    let blocks = |text: &str| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let top = line.starts_with('\t') && !line.starts_with("\t\t") && line.ends_with('{');
            if top || out.is_empty() || line == "}" {
                out.push(String::new());
            }
            if let Some(b) = out.last_mut() {
                b.push_str(line);
                b.push('\n');
            }
        }
        out.iter().map(|b| sorted_elements(b)).collect::<Vec<_>>()
    };
    let header = |b: &str| b.lines().next().unwrap_or("").to_string();
    let mut live = blocks(listing);
    let end = live.pop().unwrap_or_default(); // the table's closing brace
    let mut ordered = Vec::new();
    for w in blocks(want) {
        if let Some(i) = live.iter().position(|b| header(b) == header(&w)) {
            ordered.push(live.remove(i));
        }
    }
    ordered.extend(live);
    let (table, inner) = ordered.split_first().unwrap_or((&end, &[]));
    format!("{table}{}{end}", inner.join("\n"))
}

/// A set's listing with its elements sorted, one per line. Elements hold addresses, ports,
/// protocol and verdict names and rule ids, none of which contains a ',' or a '}'.
fn sorted_elements(block: &str) -> String {
    let Some(start) = block.find("elements = {") else {
        return block.to_string();
    };
    let body_start = start + "elements = {".len();
    let Some(len) = block[body_start..].find('}') else {
        return block.to_string();
    };
    let mut items: Vec<&str> = block[body_start..body_start + len]
        .split(',')
        .map(str::trim)
        .collect();
    items.sort_unstable();
    format!(
        "{}elements = {{ {} }}{}",
        &block[..start],
        items.join(",\n\t\t\t     "),
        &block[body_start + len + 1..]
    )
}

/// The info chain carries the apply time, which is not a difference in policy.
fn strip_comment_line(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !l.contains("comment \"ward sha256="))
        .map(|l| format!("{l}\n"))
        .collect()
}

//! What is installed right now: reading ward's table back (policy hash, time applied, per-rule
//! counters), replacing it whole, removing it, and the plan (diff) between it and a policy.

use crate::compile::{
    Compiled, DEFAULT_ACCEPT, DEFAULT_DENY, DNS_INTERCEPT, DNS_PROXY, DNS_UPSTREAM, INFO_CHAIN,
};
use crate::session::{Format, NftError, Session};
use serde_json::Value;
use std::collections::BTreeMap;

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
    /// By comment: rule id, `default-deny`/`default-accept` (per chain, summed), `snat-N`, `dnat-N`.
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

/// Is this counter key a rule of the policy (not a default, NAT or essentials counter)?
pub fn is_rule_counter(key: &str) -> bool {
    key != DEFAULT_DENY
        && key != DEFAULT_ACCEPT
        && key != "icmp-essentials"
        && !key.starts_with("snat-")
        && !key.starts_with("dnat-")
        && ![DNS_PROXY, DNS_UPSTREAM, DNS_INTERCEPT].contains(&key)
}

/// Replaces ward's table with `compiled` in one transaction. The kernel validates the whole
/// batch before it commits any of it, so a rejected batch leaves the live table untouched; a
/// separate dry run first would parse and validate everything twice for nothing.
pub fn replace(session: &Session, compiled: &Compiled) -> Result<(), NftError> {
    session.apply_text(&crate::render::replace_script(compiled))
}

/// Deletes ward's table and nothing else; `Ok(false)` when it was not there.
pub fn remove(session: &Session, table: &str) -> Result<bool, NftError> {
    if session.list_table(table, Format::TextStateless)?.is_none() {
        return Ok(false);
    }
    session.apply_text(&format!("delete table inet {table}"))?;
    Ok(true)
}

/// The table `compiled` would produce, as the kernel lists it (without counter values). It is
/// loaded into a private, empty network namespace that vanishes with its thread, so the
/// listing has exactly the kernel's normal form and nothing live is touched.
pub fn render_in_scratch(compiled: &Compiled) -> Result<String, NftError> {
    let script = crate::render::replace_script(compiled);
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
    let live = strip_comment_line(&live);
    let want = strip_comment_line(&want);
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

/// The info chain carries the apply time, which is not a difference in policy.
fn strip_comment_line(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !l.contains("comment \"ward sha256="))
        .map(|l| format!("{l}\n"))
        .collect()
}

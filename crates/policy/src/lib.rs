//! ward's policy: `rules.yaml` → a typed, validated [`Policy`], with diagnostics that point at
//! file:line:col, shadowed-rule warnings, FQDN patterns and `explain`. No I/O beyond [`load`].
//!
//! Not here: compiling to nftables (crate `nft`), the DNS proxy, the data planes.

mod diag;
mod explain;
mod fqdn;
mod model;
mod parse;
mod shadow;
mod validate;

pub use diag::{Diagnostic, PolicyErrors};
pub use explain::{direction_applies, explain, rule_matches, Explanation, Probe, Target, Verdict};
pub use fqdn::{MAX_LABEL as MAX_DNS_LABEL, MAX_NAME as MAX_DNS_NAME};
pub use model::*;
pub use parse::{MAX_ALIAS_NODES, MAX_DEPTH};
pub use validate::MAX_RULES;

use std::io::Read;
use std::path::Path;

/// Largest policy file accepted, checked before any parsing.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A valid policy and the warnings about it (shadowed rules, normalised CIDRs, host mode).
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

fn whole_file(file: &str, message: String) -> PolicyErrors {
    PolicyErrors(vec![Diagnostic {
        file: file.to_string(),
        line: 1,
        col: 1,
        path: String::new(),
        message,
    }])
}

/// Parses and validates policy text; `file` is the name used in diagnostics.
pub fn parse_str(text: &str, file: &str) -> Result<Checked, PolicyErrors> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(whole_file(
            file,
            format!(
                "file is {} bytes; at most {MAX_FILE_BYTES} bytes allowed",
                text.len()
            ),
        ));
    }
    let mut v = validate::Validator::new(file);
    let mut streamed = validate::Streamed::default();
    // Rules are checked as the parser completes them, so their YAML nodes are freed as it
    // goes: at 10k rules that halves the peak memory of a load.
    let parsed = parse::parse_yaml(text, &mut |i, node| v.stream_rule(&mut streamed, i, node));
    let root = match parsed {
        Ok((root, taken)) => {
            v.end_stream(&mut streamed, taken);
            root
        }
        // Only the YAML error: what was checked before it is moot.
        Err(e) => {
            return Err(PolicyErrors(vec![Diagnostic {
                file: file.to_string(),
                line: e.span.line,
                col: e.span.col,
                path: e.path,
                message: e.message,
            }]))
        }
    };
    let policy = v.policy(root.as_deref(), streamed);
    let policy = match policy {
        Some(p) if v.errors.is_empty() => p,
        _ => {
            v.finish();
            if v.errors.is_empty() {
                // Defensive: a None without a reported error would be a validator bug; never
                // turn it into an accepted policy.
                v.err(model::Span { line: 1, col: 1 }, "", "invalid policy");
            }
            return Err(PolicyErrors(v.errors));
        }
    };
    warn_host_mode(&policy, &mut v);
    warn_shadowed(&policy, &mut v);
    v.finish();
    Ok(Checked {
        policy,
        warnings: v.warnings,
    })
}

/// Without `interfaces` or SNAT there are no sides, so ingress / egress both mean "forwarded
/// either way" — likely not what the author meant (SPEC §1).
fn warn_host_mode(policy: &Policy, v: &mut validate::Validator<'_>) {
    if policy.topology() != Topology::Host {
        return;
    }
    for (i, r) in policy.rules.iter().enumerate() {
        if matches!(
            r.direction,
            None | Some(Direction::Ingress | Direction::Egress)
        ) {
            v.warn(
                r.span,
                &format!("rules[{i}]"),
                format!(
                    "rule '{}': direction ingress/egress matches forwarded traffic in either direction without `interfaces`",
                    r.id
                ),
            );
        }
    }
}

fn warn_shadowed(policy: &Policy, v: &mut validate::Validator<'_>) {
    let report = shadow::find_shadowed(&policy.rules);
    for s in &report.found {
        let (Some(j), Some(i)) = (policy.rules.get(s.shadowed), policy.rules.get(s.by)) else {
            continue;
        };
        v.warn(
            j.span,
            &format!("rules[{}]", s.shadowed),
            format!(
                "rule '{}' can never match: rule '{}' (line {}) matches everything it does",
                j.id, i.id, i.span.line
            ),
        );
    }
    if let Some(first) = report.incomplete {
        if let Some(r) = policy.rules.get(first) {
            v.warn(
                r.span,
                &format!("rules[{first}]"),
                format!(
                    "shadowed-rule check stopped at rule '{}': too many similar rules to compare them all",
                    r.id
                ),
            );
        }
    }
}

/// Reads and checks a policy file, never reading more than [`MAX_FILE_BYTES`] + 1 bytes.
/// Returns the text too, so callers can hash exactly what was checked.
pub fn load(path: &Path) -> Result<(Checked, String), PolicyErrors> {
    let file = path.display().to_string();
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| {
        // Sized up front: through `take`, the buffer would grow by doubling, copying a big
        // policy several times into freshly faulted memory.
        let len = f.metadata().map_or(0, |m| m.len()).min(MAX_FILE_BYTES);
        bytes.reserve_exact(usize::try_from(len).unwrap_or(0) + 1);
        f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        return Err(whole_file(
            &file,
            format!("cannot read the policy file: {e}"),
        ));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(whole_file(
            &file,
            format!("file is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let col = good.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            return Err(PolicyErrors(vec![Diagnostic {
                file,
                line: u32::try_from(line).unwrap_or(u32::MAX),
                col: u32::try_from(col).unwrap_or(u32::MAX),
                path: String::new(),
                message: "the file is not valid UTF-8".to_string(),
            }]));
        }
    };
    let checked = parse_str(&text, &file)?;
    Ok((checked, text))
}

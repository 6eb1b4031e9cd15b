// Shared helpers; included with `mod common;` by each test file.
#![allow(dead_code)]

use policy::{parse_str, Checked, Diagnostic, PolicyErrors};

/// Test YAML is written flush-left after `r#"` and a newline; drop that first newline so
/// line numbers in assertions match what one sees in the source.
pub fn y(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

pub fn ok(yaml: &str) -> Checked {
    match parse_str(y(yaml), "rules.yaml") {
        Ok(c) => c,
        Err(e) => panic!("expected the policy to be accepted, got:\n{e}"),
    }
}

pub fn errors(yaml: &str) -> Vec<Diagnostic> {
    match parse_str(y(yaml), "rules.yaml") {
        Ok(c) => panic!("expected errors, policy was accepted: {:#?}", c.policy),
        Err(PolicyErrors(v)) => {
            assert!(!v.is_empty(), "an error result must carry a diagnostic");
            v
        }
    }
}

/// Asserts exactly one error, at `line:col`, on `path`, whose message contains `needle`.
pub fn only_err(yaml: &str, line: u32, col: u32, path: &str, needle: &str) {
    let errs = errors(yaml);
    let shown = PolicyErrors(errs.clone()).to_string();
    assert_eq!(errs.len(), 1, "expected one error, got:\n{shown}");
    let d = &errs[0];
    assert_eq!(
        (d.line, d.col, d.path.as_str()),
        (line, col, path),
        "wrong place:\n{shown}"
    );
    assert!(
        d.message.contains(needle),
        "message {:?} lacks {needle:?}",
        d.message
    );
    assert_eq!(d.file, "rules.yaml");
}

/// Asserts some error at `line:col` on `path` whose message contains `needle`.
pub fn has_err(errs: &[Diagnostic], line: u32, col: u32, path: &str, needle: &str) {
    let shown = PolicyErrors(errs.to_vec()).to_string();
    assert!(
        errs.iter().any(|d| d.line == line
            && d.col == col
            && d.path == path
            && d.message.contains(needle)),
        "no error {line}:{col} {path} ~ {needle:?} in:\n{shown}"
    );
}

pub fn warnings_text(c: &Checked) -> String {
    c.warnings
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Naive, label-by-label reading of SPEC §3 name matching, independent of
/// `FqdnPattern::matches`, used as the reference in property tests.
pub fn naive_fqdn_match(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return false;
    }
    let (kind, base) = if let Some(b) = pattern.strip_prefix("*.") {
        ('*', b)
    } else if let Some(b) = pattern.strip_prefix('.') {
        ('.', b)
    } else {
        ('=', pattern)
    };
    let base: Vec<&str> = base.split('.').collect();
    let ends_with_base =
        labels.len() >= base.len() && labels[labels.len() - base.len()..] == base[..];
    match kind {
        '=' => labels == base,
        '*' => ends_with_base && labels.len() == base.len() + 1,
        _ => ends_with_base,
    }
}

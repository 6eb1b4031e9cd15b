//! Hostile and oversized input: alias bombs, deep nesting, huge files, odd YAML features, and
//! `load`'s file handling. Each must fail with a clear message, quickly, without panicking.

mod common;
use common::{errors, only_err};
use policy::{load, parse_str, MAX_FILE_BYTES};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Generous for a debug build on a loaded 2-core machine; the real cost is milliseconds.
const FAST: Duration = Duration::from_secs(1);

fn billion_laughs() -> String {
    let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=9 {
        let p = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    s.push_str("rules: *a9\n");
    s
}

#[test]
fn billion_laughs_fails_fast() {
    let text = billion_laughs();
    let start = Instant::now();
    let errs = errors(&text);
    assert!(start.elapsed() < FAST, "took {:?}", start.elapsed());
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .message
            .contains("alias expansion exceeds 1000000 nodes"),
        "{}",
        errs[0]
    );
    // It fails at the first alias that crosses the budget, not at the end of the file.
    assert!(errs[0].line <= 8, "{}", errs[0]);
}

#[test]
fn wide_alias_fan_out_is_bounded_too() {
    // One big anchored list referenced many times: linear in text, quadratic if copied.
    let items: Vec<String> = (0..50_000).map(|i| format!("x{i}")).collect();
    let mut text = format!("big: &b [{}]\nrefs: [", items.join(", "));
    for _ in 0..100 {
        text.push_str("*b, ");
    }
    text.push_str("]\n");
    let start = Instant::now();
    let errs = errors(&text);
    assert!(start.elapsed() < FAST * 2, "took {:?}", start.elapsed());
    assert!(
        errs[0].message.contains("alias expansion exceeds"),
        "{}",
        errs[0]
    );
}

#[test]
fn deep_flow_nesting_fails_fast() {
    let text = format!("rules: {}{}\n", "[".repeat(100), "]".repeat(100));
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].message.contains("nesting deeper than 64 levels"),
        "{}",
        errs[0]
    );
    // The root mapping is level 1, so the 64th `[` (column 7 + 64) is one too many.
    assert_eq!((errs[0].line, errs[0].col), (1, 7 + 64));

    // Far deeper: the YAML scanner's own limit (255 open brackets) may trip first, as it
    // reads ahead of the events; either way it is one fast error, not a stack overflow.
    let depth = 1_000_000;
    let text = format!("rules: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let start = Instant::now();
    let errs = errors(&text);
    assert!(start.elapsed() < FAST, "took {:?}", start.elapsed());
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].message.contains("nesting deeper than 64 levels")
            || errs[0].message.contains("recursion limit exceeded"),
        "{}",
        errs[0]
    );
}

#[test]
fn deep_block_nesting_fails_fast() {
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&" ".repeat(i));
        text.push_str("k:\n");
    }
    let start = Instant::now();
    let errs = errors(&text);
    assert!(start.elapsed() < FAST, "took {:?}", start.elapsed());
    assert!(
        errs[0].message.contains("nesting deeper than 64 levels"),
        "{}",
        errs[0]
    );
}

#[test]
fn aliases_cannot_smuggle_depth() {
    // Each anchor is 40 deep; nesting an alias of it 40 deep would make 80.
    let open = "[".repeat(40);
    let close = "]".repeat(40);
    let text = format!("a: &a {open}x{close}\nb: {open}*a{close}\n");
    let errs = errors(&text);
    assert!(
        errs[0]
            .message
            .contains("nesting deeper than 64 levels (through an alias)"),
        "{}",
        errs[0]
    );
}

#[test]
fn unknown_alias_is_an_error() {
    let errs = errors("rules: *nope\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("anchor"), "{}", errs[0]);
}

#[test]
fn one_document_only() {
    only_err(
        "rules: []\n---\nrules: []\n",
        2,
        1,
        "",
        "only one YAML document is allowed",
    );
}

#[test]
fn tags_are_rejected() {
    only_err(
        "rules:\n  - id: a\n    action: !!str accept\n",
        3,
        19,
        "rules[0].action",
        "YAML tags (!!str) are not supported",
    );
}

#[test]
fn non_string_keys_are_rejected() {
    let errs = errors("rules:\n  - ? [a, b]\n    : 1\n");
    assert!(
        errs[0]
            .message
            .contains("mapping keys must be plain strings"),
        "{}",
        errs[0]
    );
}

#[test]
fn oversized_text_rejected_before_parsing() {
    // Valid-looking content, so only the size check can reject it.
    let mut text = String::from("rules: []\n");
    let filler = "# padding padding padding padding padding padding padding padding\n";
    while text.len() as u64 <= MAX_FILE_BYTES {
        text.push_str(filler);
    }
    let start = Instant::now();
    only_err(&text, 1, 1, "", "at most 16777216 bytes allowed");
    assert!(start.elapsed() < FAST);
}

struct TempFile(PathBuf);
impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("ward-policy-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_reads_and_returns_text() {
    let text = "interfaces: {lan: eth1, wan: eth0}\nrules:\n  - {id: a, action: accept}\n";
    let f = TempFile::new("ok.yaml", text.as_bytes());
    let (checked, got) = match load(&f.0) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(got, text);
    assert_eq!(checked.policy.rules[0].id, "a");
}

#[test]
fn load_errors_name_the_file() {
    let f = TempFile::new("bad.yaml", b"rules:\n  - {id: a, action: maybe}\n");
    let e = load(&f.0).expect_err("invalid policy");
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].file, f.0.display().to_string());
    assert_eq!((e.0[0].line, e.0[0].col), (2, 21));
}

#[test]
fn load_missing_file() {
    let path = std::env::temp_dir().join("ward-policy-test-does-not-exist.yaml");
    let e = load(&path).expect_err("missing file");
    assert_eq!(e.0.len(), 1);
    let d = &e.0[0];
    assert_eq!((d.line, d.col, d.path.as_str()), (1, 1, ""));
    assert!(d.message.contains("cannot read the policy file"), "{d}");
}

#[test]
fn load_oversized_file() {
    let size = usize::try_from(MAX_FILE_BYTES).expect("fits") + 1;
    let mut contents = vec![b'#'; size];
    contents[size - 1] = b'\n';
    let f = TempFile::new("big.yaml", &contents);
    let e = load(&f.0).expect_err("oversized");
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].col), (1, 1));
    assert!(
        e.0[0].message.contains("larger than 16777216 bytes"),
        "{}",
        e.0[0]
    );
}

#[test]
fn load_rejects_invalid_utf8_with_position() {
    let f = TempFile::new("latin1.yaml", b"rules:\n  - id: caf\xe9\n");
    let e = load(&f.0).expect_err("not UTF-8");
    let d = &e.0[0];
    assert_eq!((d.line, d.col), (2, 12), "{d}");
    assert!(d.message.contains("not valid UTF-8"));
}

#[test]
fn parse_str_handles_odd_text_without_panicking() {
    for text in [
        "\u{feff}rules: []",
        "\t",
        "rules:\n\t- a",
        ":",
        "? ",
        "[",
        "{",
        "&a",
        "*",
        "!",
        "%YAML 1.2\n---\n",
        "rules: [&a x, *a]",
        "\0",
        "key: \"\\u",
    ] {
        let _ = parse_str(text, "f");
    }
}

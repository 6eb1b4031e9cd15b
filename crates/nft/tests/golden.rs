//! Golden files: every example policy compiled and rendered in nft's language, so a change
//! in the compiler shows up as a reviewable diff. `WARD_BLESS=1 cargo test -p nft` rewrites them.

mod common;

use common::compile_example;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "expected the example policies, found {v:?}");
    v
}

fn check(path: &Path, rendered: &str) {
    if std::env::var_os("WARD_BLESS").is_some() {
        std::fs::write(path, rendered).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WARD_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == rendered,
        "{} differs from the compiler's output (WARD_BLESS=1 to accept):\n{}",
        path.display(),
        similar::TextDiff::from_lines(want.as_str(), rendered)
            .unified_diff()
            .header("golden", "now")
    );
}

#[test]
fn examples_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for ex in examples() {
        let name = ex.file_stem().and_then(|s| s.to_str()).expect("file name");
        let compiled = compile_example(&ex);
        check(
            &dir.join(format!("{name}.nft")),
            &nft::render::to_nft(&compiled),
        );
        if name == "lab" {
            let json = serde_json::to_string_pretty(&compiled.replace_batch()).expect("json");
            check(&dir.join("lab.json"), &format!("{json}\n"));
        }
    }
}

/// `live::install` creates sets in a transaction before the rules that use them; a set of
/// values written into a rule would be created with the rule and could miss for a moment.
#[test]
fn compiled_rules_name_every_set_they_use() {
    use nft::schema::{Expr, Named, Stmt};
    for ex in examples() {
        let compiled = compile_example(&ex);
        for (chain, rules) in &compiled.chains {
            for stmt in rules.iter().flat_map(|r| &r.expr) {
                let anonymous = match stmt {
                    Stmt::Match { right, .. } => matches!(right, Expr::Named(Named::Set(_))),
                    Stmt::Vmap { data, .. } => matches!(data, Expr::Named(Named::Set(_))),
                    _ => false,
                };
                assert!(
                    !anonymous,
                    "{}: chain {}: a rule with an anonymous set: {stmt:?}",
                    ex.display(),
                    chain.name
                );
            }
        }
    }
}

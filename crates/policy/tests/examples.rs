//! The repository's example policies (`examples/*.yaml`) must stay valid.

use std::path::Path;

#[test]
fn repository_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("cannot list {}", dir.display());
    };
    let mut checked = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            match policy::load(&path) {
                Ok((c, _)) => {
                    for w in &c.warnings {
                        eprintln!("warning: {w}");
                    }
                }
                Err(e) => panic!("{e}"),
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no examples found in {}", dir.display());
}

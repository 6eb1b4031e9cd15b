//! The command line without a kernel: check, compile, explain, and exit codes.

mod common;

use common::{text, ward, PolicyFile};

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_checks() {
    for name in [
        "gateway.yaml",
        "host.yaml",
        "vm-host.yaml",
        "thurward.yaml",
        "lab.yaml",
    ] {
        let o = ward(&["check", &example(name)]);
        assert!(o.status.success(), "{name}: {}", text(&o));
    }
}

#[test]
fn invalid_policy_exits_1_with_position_and_key() {
    let f = PolicyFile::new("rules:\n  - id: a\n    action: accept\n    destination_port: 70000\n");
    let o = ward(&["check", f.path()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains(&format!("{}:4:23: rules[0].destination_port", f.path())),
        "{msg}"
    );
    assert!(msg.contains("nothing was changed"), "{msg}");
}

#[test]
fn usage_error_exits_2() {
    let o = ward(&["apply", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = ward(&["explain", "--src", "10.0.0.1", "--proto", "tcp"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--dst or --fqdn is required: {}",
        text(&o)
    );
}

#[test]
fn shadowed_rules_warn_but_check_passes() {
    let f = PolicyFile::new(
        "rules:\n  - {id: wide, action: accept, protocol: tcp}\n  - {id: narrow, action: deny, protocol: tcp, destination_port: 22}\n",
    );
    let o = ward(&["check", f.path()]);
    assert!(o.status.success(), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("warning:")
            && msg.contains("'narrow' can never match")
            && msg.contains("'wide'"),
        "{msg}"
    );
}

#[test]
fn compile_prints_nft_and_json() {
    let o = ward(&["compile", &example("lab.yaml")]);
    assert!(o.status.success(), "{}", text(&o));
    let nft = String::from_utf8_lossy(&o.stdout);
    assert!(
        nft.starts_with("table inet ward {") && nft.contains("masquerade"),
        "{nft}"
    );
    let o = ward(&[
        "compile",
        &example("lab.yaml"),
        "--format",
        "json",
        "--table",
        "edge",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let cmds = v["nftables"].as_array().expect("nftables array");
    assert_eq!(cmds[0]["add"]["table"]["name"], "edge");
    assert_eq!(cmds[1]["delete"]["table"]["name"], "edge");
}

#[test]
fn explain_names_the_deciding_rule() {
    let lab = example("lab.yaml");
    let run = |args: &[&str]| {
        let mut a = vec!["explain", lab.as_str()];
        a.extend_from_slice(args);
        let o = ward(&a);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run(&[
        "--src",
        "192.168.50.10",
        "--dst",
        "198.51.100.20",
        "--proto",
        "tcp",
        "--dport",
        "443",
    ]);
    assert!(out.trim_end().ends_with("accept by web-out"), "{out}");
    let out = run(&[
        "--src",
        "192.168.50.10",
        "--dst",
        "198.51.100.20",
        "--proto",
        "tcp",
        "--dport",
        "23",
    ]);
    assert!(
        out.trim_end()
            .ends_with("drop by no-telnet (explicit_deny)"),
        "{out}"
    );
    let out = run(&[
        "--src",
        "198.51.100.20",
        "--dst",
        "192.168.50.1",
        "--proto",
        "tcp",
        "--dport",
        "22",
        "--direction",
        "input",
    ]);
    assert!(
        out.trim_end()
            .ends_with("drop by default-deny (no_matching_allow_rule)"),
        "{out}"
    );
}

/// The man pages and completions shipped in dist/ are what `ward generate` makes from the
/// command line as it is (regenerate with `ward generate man dist/man` and
/// `ward generate completions SHELL`).
#[test]
fn shipped_man_pages_and_completions_match_the_command_line() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist");
    let tmp = std::env::temp_dir().join(format!("ward-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let o = ward(&["generate", "man", tmp.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    let mut pages: Vec<_> = std::fs::read_dir(&tmp)
        .expect("pages")
        .map(|e| e.expect("entry").file_name())
        .collect();
    pages.sort();
    assert!(pages.len() > 10, "{pages:?}");
    for page in &pages {
        let want = std::fs::read(tmp.join(page)).expect("generated");
        let have = std::fs::read(dist.join("man").join(page)).unwrap_or_default();
        assert!(
            want == have,
            "dist/man/{page:?} is stale: run `ward generate man dist/man`"
        );
    }
    let shipped = std::fs::read_dir(dist.join("man"))
        .expect("dist/man")
        .count();
    assert_eq!(
        shipped,
        pages.len(),
        "dist/man has pages no command has any more"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    for (shell, file) in [
        ("bash", "ward.bash"),
        ("zsh", "_ward"),
        ("fish", "ward.fish"),
    ] {
        let o = ward(&["generate", "completions", shell]);
        assert!(o.status.success(), "{}", text(&o));
        let have = std::fs::read(dist.join("completions").join(file)).unwrap_or_default();
        assert!(
            o.stdout == have,
            "dist/completions/{file} is stale: run `ward generate completions {shell}`"
        );
    }
}

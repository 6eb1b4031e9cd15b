//! The compiler against the real kernel, each test in a private network namespace that
//! vanishes with its thread: the JSON batch and the rendered text (what apply loads) give the same table,
//! and a batch the kernel rejects leaves the live table exactly as it was.

mod common;

use nft::schema::{payload, s, Stmt};
use nft::{Format, Session};
use std::path::Path;

/// Runs `f` with a libnftables session in a fresh, empty network namespace.
fn in_scratch<T: Send + 'static>(f: impl FnOnce(&Session) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): these tests need root");
        let s = Session::open().expect("libnftables (install the nftables package)");
        f(&s)
    })
    .join()
    .expect("scratch thread")
}

fn compile(name: &str) -> nft::Compiled {
    common::compile_example(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name),
    )
}

#[test]
fn json_and_rendered_text_load_to_the_same_table() {
    for name in [
        "lab.yaml",
        "gateway.yaml",
        "host.yaml",
        "vm-host.yaml",
        "thurward.yaml",
    ] {
        let c = compile(name);
        let json = serde_json::to_string(&c.replace_batch()).expect("json");
        let from_json = in_scratch(move |s| {
            s.apply_json(&json).map(|_| {
                s.list_table("ward", Format::TextStateless)
                    .unwrap()
                    .unwrap()
            })
        })
        .unwrap_or_else(|e| panic!("{name}: kernel rejected the JSON batch: {e}"));
        let from_text = nft::live::render_in_scratch(&c)
            .unwrap_or_else(|e| panic!("{name}: kernel rejected the rendered text: {e}"));
        assert_eq!(
            from_json, from_text,
            "{name}: the text rendering and the JSON batch differ"
        );
    }
}

#[test]
fn rejected_replace_leaves_the_live_table_byte_identical() {
    let good = compile("lab.yaml");
    let mut bad = compile("gateway.yaml");
    // A rule the kernel must refuse: it looks up a set that does not exist.
    let chain = bad
        .chains
        .iter_mut()
        .find(|(c, _)| c.name == "forward")
        .expect("forward chain");
    let mut rule = chain.1[0].clone();
    rule.expr = vec![
        Stmt::Match {
            op: "==",
            left: payload("ip", "saddr"),
            right: s("@does-not-exist"),
        },
        nft::schema::counter(),
    ];
    chain.1.push(rule);
    in_scratch(move |s| {
        nft::live::replace(s, &good).expect("apply the lab policy");
        let before = s.list_table("ward", Format::Text).unwrap().unwrap();
        let err = nft::live::replace(s, &bad).expect_err("the kernel must reject a missing set");
        assert!(
            err.to_string().contains("does-not-exist") || err.to_string().contains("No such file"),
            "{err}"
        );
        let after = s.list_table("ward", Format::Text).unwrap().unwrap();
        assert_eq!(before, after, "a rejected replace changed the live table");
    });
}

#[test]
fn status_reads_back_what_apply_recorded() {
    let c = compile("lab.yaml");
    let inst = in_scratch(move |s| {
        nft::live::replace(s, &c).unwrap();
        nft::live::read(s, "ward").unwrap().expect("installed")
    });
    assert_eq!(inst.comment_field("sha256"), Some("golden"));
    for id in [
        "ssh-from-lan",
        "web-out",
        "dns-out",
        "web-server-in",
        "default-deny",
        "snat-0",
        "dnat-0",
    ] {
        assert!(
            inst.counters.contains_key(id),
            "no counter for {id}: {:?}",
            inst.counters.keys()
        );
    }
    let removed = in_scratch(|s| {
        nft::live::replace(s, &compile("host.yaml")).unwrap();
        let first = nft::live::remove(s, "ward").unwrap();
        let second = nft::live::remove(s, "ward").unwrap();
        (first, second, s.list_table("ward", Format::Text).unwrap())
    });
    assert_eq!(removed, (true, false, None));
}

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
        nft::live::install(s, &nft::render::Parts::of(good)).expect("apply the lab policy");
        let before = s.list_table("ward", Format::Text).unwrap().unwrap();
        let err = nft::live::install(s, &nft::render::Parts::of(bad))
            .expect_err("the kernel must reject a missing set");
        assert!(
            err.to_string().contains("does-not-exist") || err.to_string().contains("No such file"),
            "{err}"
        );
        let after = s.list_table("ward", Format::Text).unwrap().unwrap();
        assert_eq!(before, after, "a rejected replace changed the live table");
    });
}

/// The kernel refusing the map elements ward writes over netlink (`install`'s step 1) leaves
/// the live table as it was too, the sets created for them removed again.
#[test]
fn refused_map_elements_leave_the_live_table_byte_identical() {
    let good = big_policy(10, 0);
    let mut bad = big_policy(10, 1);
    // The same key twice with different verdicts: the kernel refuses the second.
    let map = bad
        .sets
        .iter_mut()
        .find(|s| s.map.is_some() && matches!(s.key_type, nft::schema::KeyType::Concat(_)))
        .expect("a concatenated map");
    let mut twin = map.elem[0].clone();
    if let nft::schema::Expr::Pair(p) = &mut twin {
        p.1 = nft::schema::Expr::Verdict(nft::schema::Verdict::drop());
    }
    map.elem.push(twin);
    in_scratch(move |s| {
        nft::live::install(s, &nft::render::Parts::of(good)).expect("apply");
        let before = s.list_table("ward", Format::Text).unwrap().unwrap();
        let err = nft::live::install(s, &nft::render::Parts::of(bad))
            .expect_err("the kernel must refuse a key with two verdicts");
        assert!(err.to_string().contains("File exists"), "{err}");
        let after = s.list_table("ward", Format::Text).unwrap().unwrap();
        assert_eq!(before, after, "refused elements changed the live table");
    });
}

#[test]
fn status_reads_back_what_apply_recorded() {
    let c = compile("lab.yaml");
    let inst = in_scratch(move |s| {
        nft::live::install(s, &nft::render::Parts::of(c)).unwrap();
        nft::live::read(s, "ward").unwrap().expect("installed")
    });
    assert_eq!(inst.comment_field("sha256"), Some("golden"));
    for id in [
        "ssh-from-lan",
        "web-out",
        "ntp-out",
        "docs-by-name",
        "web-server-in",
        "default-deny",
        "ward:snat-0",
        "ward:dnat-0",
    ] {
        assert!(
            inst.counters.contains_key(id),
            "no counter for {id}: {:?}",
            inst.counters.keys()
        );
    }
    let removed = in_scratch(|s| {
        nft::live::install(s, &nft::render::Parts::of(compile("host.yaml"))).unwrap();
        let first = nft::live::remove(s, "ward").unwrap();
        let second = nft::live::remove(s, "ward").unwrap();
        (first, second, s.list_table("ward", Format::Text).unwrap())
    });
    assert_eq!(removed, (true, false, None));
}

/// The elements of one set with their remaining lifetime in seconds, from the kernel listing.
fn set_elements(s: &Session, set: &str) -> Vec<(String, u64)> {
    let out = s
        .list_json(&format!("list set inet ward {set}"))
        .expect("list set");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json listing");
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let elem = &e["elem"];
            let addr = elem["val"].as_str().unwrap_or_default().to_string();
            found.push((addr, elem["expires"].as_u64().unwrap_or(0)));
        }
    }
    found.sort();
    found
}

#[test]
fn learned_addresses_commit_refresh_and_remove() {
    use nft::learn::{SetOp, SetWriter};
    use std::time::Duration;
    let c = compile("vm-host.yaml");
    for readd_refreshes in [true, false] {
        let c = c.clone();
        in_scratch(move |s| {
            nft::live::install(s, &nft::render::Parts::of(c)).unwrap();
            let w = SetWriter::open("ward")
                .unwrap()
                .with_readd_refreshes(readd_refreshes);
            let a4 = "192.0.2.10".parse().unwrap();
            let a6 = "2001:db8::10".parse().unwrap();
            let add = |addr, secs| SetOp::Add {
                rule: "github",
                addr,
                timeout: Duration::from_secs(secs),
            };
            w.commit(&[add(a4, 30), add(a6, 30)]).unwrap();
            let v4 = set_elements(s, "fqdn4-github");
            assert_eq!(v4.len(), 1, "{v4:?}");
            assert!(v4[0].0 == "192.0.2.10" && v4[0].1 <= 30, "{v4:?}");
            assert_eq!(set_elements(s, "fqdn6-github")[0].0, "2001:db8::10");

            // A repeated answer extends the lifetime.
            w.commit(&[add(a4, 3600)]).unwrap();
            let v4 = set_elements(s, "fqdn4-github");
            assert!(
                v4[0].1 > 3000,
                "timeout not refreshed ({readd_refreshes}): {v4:?}"
            );

            // Removing a present and an absent address in one batch.
            let gone = "192.0.2.99".parse().unwrap();
            w.commit(&[
                SetOp::Remove {
                    rule: "github",
                    addr: a4,
                },
                SetOp::Remove {
                    rule: "github",
                    addr: gone,
                },
            ])
            .unwrap();
            assert!(set_elements(s, "fqdn4-github").is_empty());

            // One bad op, first or last, fails the whole batch and changes nothing.
            let bad = SetOp::Add {
                rule: "no-such-rule",
                addr: a4,
                timeout: Duration::from_secs(30),
            };
            for batch in [[add(a4, 30), bad], [bad, add(a4, 30)]] {
                let err = w.commit(&batch).expect_err("unknown set");
                assert!(err.to_string().contains("No such file"), "{err}");
                assert!(set_elements(s, "fqdn4-github").is_empty());
            }
            // The writer is still in step with its socket afterwards.
            w.commit(&[add(a4, 30)]).unwrap();
            assert_eq!(set_elements(s, "fqdn4-github").len(), 1);
        });
    }
}

/// `n` egress rules that fold into one map keyed by (source, protocol, port range) (a
/// pipapo set in the kernel, filled in pieces) and `n` that fold into one keyed by adjacent
/// destination networks alone (an rbtree, sent whole); `variant` changes both maps.
fn big_policy(n: u32, variant: u32) -> nft::Compiled {
    let mut yaml = String::from("interfaces:\n  lan: [lan0]\n  wan: [wan0]\nrules:\n");
    for i in 0..n {
        let (b, c) = (i / 256, i % 256);
        let lo = 1000 + variant * 10 + i % 7;
        yaml.push_str(&format!(
            "  - {{id: s{i}, direction: egress, source: 10.{b}.{c}.0/24, protocol: tcp, destination_port: \"{lo}-{}\", action: accept}}\n",
            lo + 3
        ));
    }
    for i in 0..n {
        let (b, c) = (i / 256, i % 256);
        let action = if (i + variant).is_multiple_of(3) {
            "deny"
        } else {
            "accept"
        };
        yaml.push_str(&format!(
            "  - {{id: d{i}, direction: egress, destination: 172.{}.{c}.0/24, action: {action}}}\n",
            16 + b
        ));
    }
    let checked = policy::parse_str(&yaml, "big.yaml").expect("valid policy");
    nft::compile(&checked.policy, &nft::Options::default())
}

/// Elements are listed in the order they were added, and sets kept from an earlier table
/// before those created for a later one: listings are compared in one order.
fn same(got: &str, want: &str, what: &str) {
    let (got, want) = (
        nft::live::in_order_of(got, want),
        nft::live::in_order_of(want, want),
    );
    let diff = similar::TextDiff::from_lines(&want, &got);
    let d = diff.unified_diff().context_radius(1).to_string();
    assert!(got == want, "{what}:\n{}", &d[..d.len().min(3000)]);
}

/// `install` writes map elements over netlink itself (`nft::netlink`): every kind of key and
/// verdict ward's maps hold must list exactly as when libnftables loads the table whole.
#[test]
fn map_elements_written_over_netlink_list_as_libnftables_loads_them() {
    let yaml = r#"
interfaces:
  lan: [lan0, lan1]
  wan: [wan0]
rules:
  # interface . IPv6 address . port, with ranges, one map per protocol; a jump to a log chain
  - {id: a1, direction: egress, in_interface: lan0, destination: "2001:db8:1::/48", protocol: tcp, destination_port: "1000-1010", action: accept}
  - {id: a2, direction: egress, in_interface: lan1, destination: "2001:db8:2::1", protocol: udp, destination_port: 53, action: deny, log: true}
  # an interface, one map per protocol: no ranges, a hash in the kernel
  - {id: b1, direction: egress, in_interface: lan0, protocol: tcp, action: accept}
  - {id: b2, direction: egress, in_interface: lan1, protocol: udp, action: deny}
  # a protocol alone: a one-byte key
  - {id: c1, direction: ingress, protocol: tcp, action: deny}
  - {id: c2, direction: ingress, protocol: udp, action: accept}
  # IPv4 source . destination, prefixes and hosts
  - {id: d1, direction: ingress, source: 198.51.100.0/24, destination: 10.1.0.0/16, action: accept}
  - {id: d2, direction: ingress, source: 203.0.113.7, destination: 10.2.0.9, action: deny}
"#;
    let c = nft::compile(
        &policy::parse_str(yaml, "kinds.yaml")
            .expect("valid policy")
            .policy,
        &nft::Options::default(),
    );
    assert_eq!(c.stats.maps, 6, "{:?}", c.stats);
    let whole = nft::live::render_in_scratch(&c).expect("load whole");
    let parts = nft::render::Parts::of(c);
    for set in parts.sets.iter().filter(|s| s.is_map) {
        assert!(
            !set.block.contains("elements"),
            "{} would not be written over netlink:\n{}",
            set.name,
            set.block
        );
    }
    let installed = in_scratch(move |s| {
        nft::live::install(s, &parts).expect("install");
        s.list_table("ward", Format::TextStateless)
            .unwrap()
            .unwrap()
    });
    same(
        &installed,
        &whole,
        "written over netlink differs from loaded whole",
    );
}

#[test]
fn big_sets_installed_in_pieces_equal_the_table_loaded_whole() {
    let (a, b) = (big_policy(6000, 0), big_policy(6000, 1));
    assert_eq!(a.stats.maps, 2, "{:?}", a.stats);
    let whole_a = nft::live::render_in_scratch(&a).expect("load whole");
    let whole_b = nft::live::render_in_scratch(&b).expect("load whole");
    let (first, again, other) = in_scratch(move |s| {
        let mut listings = Vec::new();
        for c in [a.clone(), a, b] {
            nft::live::install(s, &nft::render::Parts::of(c)).expect("install");
            listings.push(
                s.list_table("ward", Format::TextStateless)
                    .unwrap()
                    .unwrap(),
            );
        }
        (listings.remove(0), listings.remove(0), listings.remove(0))
    });
    same(
        &first,
        &whole_a,
        "installed in pieces differs from loaded whole",
    );
    same(&again, &whole_a, "re-installing the same table changed it");
    same(
        &other,
        &whole_b,
        "replacing it with another left a difference",
    );
}

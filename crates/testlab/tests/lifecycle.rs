//! Lab lifecycle: teardown on down/Drop/panic, parallel labs, leak + teardown, failure cleanup.
//! Runs as root; every namespace is uniquely named and checked gone with `ip netns list`.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use testlab::{addr, reap_stale, teardown, Lab, LabError, LabSpec};

#[test]
fn down_removes_namespaces() {
    let lab = lab("tl-down");
    let spec = lab.spec.clone();
    assert_present(&spec);
    lab.down().unwrap();
    assert_gone(&spec);
}

#[test]
fn drop_removes_namespaces() {
    let spec = {
        let lab = lab("tl-drop");
        assert_present(&lab.spec);
        lab.spec.clone()
    };
    assert_gone(&spec);
}

#[test]
fn panic_removes_namespaces() {
    let seen: Arc<Mutex<Option<LabSpec>>> = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = lab("tl-panic");
        let _server = lab.wan().tcp_server(sa(addr::WAN_HOST, 80)).unwrap();
        *seen2.lock().unwrap() = Some(lab.spec.clone());
        panic!("test body failed while the lab was up");
    });
    assert!(result.is_err());
    let spec = seen.lock().unwrap().clone().expect("lab was built");
    assert_gone(&spec);
}

#[test]
fn parallel_labs_do_not_collide() {
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                // Same prefix, same addresses and ports in every lab.
                let lab = lab("tl-par");
                let _srv = lab.wan().tcp_server(sa(addr::WAN_HOST, 8080)).unwrap();
                let _u = lab.wan().udp_echo(sa(addr::WAN_HOST6, 53)).unwrap();
                for _ in 0..5 {
                    let p = lab.lan().tcp_probe(sa(addr::WAN_HOST, 8080), T).unwrap();
                    assert_eq!(
                        p.seen_as().map(|a| a.ip()),
                        Some(IpAddr::from(addr::LAN_HOST))
                    );
                    assert!(lab
                        .lan()
                        .udp_probe(sa(addr::WAN_HOST6, 53), T)
                        .unwrap()
                        .ok());
                    assert!(
                        lab.lan().ping(addr::WAN_HOST.into(), T).unwrap().ok(),
                        "lab {i}"
                    );
                }
                let spec = lab.spec.clone();
                lab.down().unwrap();
                spec
            })
        })
        .collect();
    let specs: Vec<LabSpec> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut names: Vec<&str> = specs.iter().flat_map(|s| s.names()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 9, "names not unique: {specs:?}");
    for spec in &specs {
        assert_gone(spec);
    }
}

#[test]
fn leak_then_teardown() {
    let spec = LabSpec::unique("tl-leak");
    // Fixed names, as `ward lab up` uses them.
    let named = LabSpec::named(&spec.lan_ns, &spec.fw_ns, &spec.wan_ns);
    let kept = Lab::up(named.clone())
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"))
        .leak();
    assert_eq!(kept, named);
    assert_present(&named);
    // Still usable through plain handles after the Lab value is gone.
    assert!(named.lan().ping(addr::WAN_HOST6.into(), T).unwrap().ok());
    teardown(&named).unwrap();
    assert_gone(&named);
    // Idempotent: nothing there is fine.
    teardown(&named).unwrap();
}

#[test]
fn up_refuses_existing_namespaces_and_cleans_partial_state() {
    let lab = lab("tl-exists");
    // Same names again: refused, and the running lab is left alone.
    match Lab::up(lab.spec.clone()) {
        Err(LabError::AlreadyExists { name }) => assert_eq!(name, lab.spec.lan_ns),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_present(&lab.spec);
    assert!(lab.lan().tcp_probe(sa(addr::WAN_HOST, 1), T).unwrap() == testlab::Probe::Refused);

    // Only the fw name is taken: the lan namespace created before noticing is removed again,
    // the foreign fw namespace is not touched.
    let spec = LabSpec::unique("tl-partial");
    let status = Command::new("ip")
        .args(["netns", "add", &spec.fw_ns])
        .status()
        .unwrap();
    assert!(status.success());
    let err = Lab::up(spec.clone()).unwrap_err();
    assert!(err.to_string().contains(&spec.fw_ns), "{err}");
    let list = netns_list();
    assert!(!list.contains(&spec.lan_ns), "{list:?}");
    assert!(list.contains(&spec.fw_ns), "{list:?}");
    let status = Command::new("ip")
        .args(["netns", "del", &spec.fw_ns])
        .status()
        .unwrap();
    assert!(status.success());
    assert_gone(&spec);
    lab.down().unwrap();
}

#[test]
fn invalid_specs_are_rejected_before_touching_anything() {
    for spec in [
        LabSpec::named("a", "a", "b"),
        LabSpec::named("", "fw", "wan"),
        LabSpec::named("../etc", "fw", "wan"),
        LabSpec::named("-x", "fw", "wan"),
        LabSpec::named("a b", "fw", "wan"),
    ] {
        assert!(
            matches!(Lab::up(spec.clone()), Err(LabError::Spec(_))),
            "{spec:?}"
        );
        assert!(
            matches!(teardown(&spec), Err(LabError::Spec(_))),
            "{spec:?}"
        );
    }
    assert_eq!(LabSpec::default(), LabSpec::named("lan", "fw", "wan"));
    let a = LabSpec::unique("x");
    let b = LabSpec::unique("x");
    assert_ne!(a, b);
    assert!(
        a.lan_ns.starts_with(&format!("x-{}-", std::process::id())),
        "{a:?}"
    );
    assert!(a.lan_ns.ends_with("-lan") && a.fw_ns.ends_with("-fw") && a.wan_ns.ends_with("-wan"));
}

#[test]
fn reap_stale_removes_only_dead_owners() {
    let prefix = format!("tl-reap{}", std::process::id());
    // pid 999999999 is above any pid_max: its owner is certainly dead.
    let dead = format!("{prefix}-999999999-0-fw");
    let alive = format!("{prefix}-{}-0-fw", std::process::id());
    for name in [&dead, &alive] {
        assert!(Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap()
            .success());
    }
    let reaped = reap_stale(&prefix).unwrap();
    assert_eq!(reaped, vec![dead.clone()]);
    let list = netns_list();
    assert!(!list.contains(&dead) && list.contains(&alive), "{list:?}");
    assert!(Command::new("ip")
        .args(["netns", "del", &alive])
        .status()
        .unwrap()
        .success());
}

#[test]
fn errors_say_what_and_why() {
    let ns = testlab::Netns::new("tl-does-not-exist");
    let err = ns.tcp_probe(sa(addr::WAN_HOST, 80), T).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("tl-does-not-exist") && text.contains("/run/netns"),
        "{text}"
    );
    let err = ns.ip(&["link", "show"]).unwrap_err().to_string();
    assert!(err.contains("ip -n tl-does-not-exist link show"), "{err}");
    let err = ns.set_sysctl("kernel.hostname", "x").unwrap_err();
    assert!(matches!(err, LabError::Spec(_)), "{err}");
}

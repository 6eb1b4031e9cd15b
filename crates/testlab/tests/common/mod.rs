//! Helpers shared by the testlab integration tests.
//! They fail loudly (never skip) when the lab cannot be built, saying why.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use testlab::{Lab, LabSpec};

pub const T: Duration = Duration::from_secs(3);

pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Builds a lab with unique names or fails the test with the reason.
pub fn lab(prefix: &str) -> Lab {
    Lab::up(LabSpec::unique(prefix)).unwrap_or_else(|e| {
        panic!("cannot build the lab (these tests need root and iproute2): {e}")
    })
}

/// Names shown by `ip netns list`.
pub fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip netns list`: {e}"));
    assert!(
        out.status.success(),
        "`ip netns list` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

pub fn assert_gone(spec: &LabSpec) {
    let list = netns_list();
    for name in spec.names() {
        assert!(
            !list.iter().any(|n| n == name),
            "namespace {name} still listed: {list:?}"
        );
    }
}

pub fn assert_present(spec: &LabSpec) {
    let list = netns_list();
    for name in spec.names() {
        assert!(
            list.iter().any(|n| n == name),
            "namespace {name} missing: {list:?}"
        );
    }
}

/// Host (initial namespace) value of a sysctl, read from this thread.
pub fn host_sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        .trim()
        .to_string()
}

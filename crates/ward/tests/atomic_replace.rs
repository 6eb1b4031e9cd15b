//! Atomic replace on real traffic: a client loop runs through 50 re-applies, alternating
//! between two policies. In a test binary
//! of its own, so that no other test's lab is built or torn down meanwhile.
//!
//! Whether the *firewall* dropped an allowed packet is judged by a witness: a foreign table in
//! the firewall counting the allowed flow's SYN and SYN-ACK packets just before ward's forward
//! chain and just after it. The client's own timeouts are reported too, but a connect that
//! timed out while every packet of it passed ward's chain was lost elsewhere: on this kind of
//! VM, the kernel tearing down namespaces (even after the previous test binary ended) now and
//! then stalls a probe past its 300 ms timeout with the firewall passing everything.

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn wan_ip() -> IpAddr {
    IpAddr::V4(addr::WAN_HOST)
}

#[test]
fn atomic_replace_under_traffic() {
    let lab = lab();
    let policy = format!(
        "{GATEWAY}rules:\n  - {{id: allowed, direction: egress, protocol: tcp, destination_port: 80, action: accept}}\n  - {{id: denied, direction: egress, protocol: tcp, destination_port: 81, action: deny}}\n"
    );
    apply(&lab, &policy);
    let witness = "table inet witness {
  counter syn_in {}
  counter syn_out {}
  counter synack_in {}
  counter synack_out {}
  chain before {
    type filter hook forward priority -10; policy accept;
    tcp dport 80 tcp flags & (syn | ack) == syn counter name syn_in
    tcp sport 80 tcp flags & (syn | ack) == syn | ack counter name synack_in
  }
  chain after {
    type filter hook forward priority 10; policy accept;
    tcp dport 80 tcp flags & (syn | ack) == syn counter name syn_out
    tcp sport 80 tcp flags & (syn | ack) == syn | ack counter name synack_out
  }
}
";
    let file = PolicyFile::new(witness);
    let o = lab.fw().exec("nft", &["-f", file.path()]).expect("nft");
    assert!(o.status.success(), "witness table: {o:?}");
    let _s80 = lab.wan().tcp_server(SocketAddr::new(wan_ip(), 80)).unwrap();
    let _s81 = lab.wan().tcp_server(SocketAddr::new(wan_ip(), 81)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = lab
        .lan()
        .tcp_probe_loop(SocketAddr::new(wan_ip(), 80), stop.clone());
    let denied = lab
        .lan()
        .tcp_probe_loop(SocketAddr::new(wan_ip(), 81), stop.clone());
    // Two policies that agree on ports 80 and 81 but differ elsewhere, so that every apply
    // replaces the map that decides both flows.
    let other = format!(
        "{policy}  - {{id: other, direction: egress, protocol: tcp, destination_port: [82, 8000-8100], action: deny}}\n  - {{id: lists, direction: egress, protocol: udp, destination: [203.0.113.0/24, 198.51.100.7], destination_port: [53, 123], action: accept}}\n"
    );
    let files = [PolicyFile::new(&policy), PolicyFile::new(&other)];
    for i in 0..50 {
        let f = &files[i % 2];
        let o = ward(&["apply", f.path(), "--netns", lab.fw().name()]);
        assert!(o.status.success(), "re-apply {i}: {}", text(&o));
    }
    stop.store(true, Ordering::SeqCst);
    let allowed = allowed.join().unwrap();
    let denied = denied.join().unwrap();
    assert!(allowed.successes > 0, "the allowed loop ran: {allowed:?}");
    let count = |name: &str| -> u64 {
        let o = lab
            .fw()
            .exec("nft", &["list", "counter", "inet", "witness", name])
            .expect("nft");
        let t = String::from_utf8_lossy(&o.stdout);
        t.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("counter {name}: {t}"))
    };
    let (syn_in, syn_out) = (count("syn_in"), count("syn_out"));
    let (synack_in, synack_out) = (count("synack_in"), count("synack_out"));
    assert!(
        syn_in >= allowed.attempts,
        "the witness saw the SYNs: {syn_in}"
    );
    assert_eq!(
        (syn_in, synack_in),
        (syn_out, synack_out),
        "ward's chain dropped an allowed packet during re-applies (SYN, SYN-ACK in vs out); client: {allowed:?}"
    );
    if allowed.failures > 0 {
        eprintln!(
            "note: {} allowed connect(s) timed out although ward's chain passed every packet of the flow: {allowed:?}",
            allowed.failures
        );
    }
    assert!(denied.failures > 0, "the denied loop ran: {denied:?}");
    assert_eq!(
        denied.successes, 0,
        "a denied flow got through during re-applies: {denied:?}"
    );
    lab.down().unwrap();
}

//! How long one learned-address commit takes (SetWriter::commit: netlink + kernel), in a
//! private network namespace with a table holding name sets. Needs root.
//!
//!     cargo run --release -p nft --example set_update_latency [ROUNDS]

use nft::learn::{SetOp, SetWriter};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const POLICY: &str = "interfaces: {lan: [lan0], wan: [wan0]}\nrules:\n  - {id: gh, direction: egress, destination_fqdn: github.com, action: accept}\n";

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let report = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root?)");
        let s = nft::Session::open().expect("libnftables");
        let policy = policy::parse_str(POLICY, "bench.yaml")
            .expect("policy")
            .policy;
        let c = nft::compile(&policy, &nft::Options::default());
        nft::live::install(&s, &nft::render::Parts::of(c)).expect("apply");
        let w = SetWriter::open("ward").expect("netlink");
        let mut one = Vec::with_capacity(rounds);
        let mut four = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let addr = |k: usize| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i * 4 + k) as u32));
            let op = |k| SetOp::Add {
                rule: "gh",
                addr: addr(k),
                timeout: Duration::from_secs(60),
            };
            let t = Instant::now();
            w.commit(&[op(0)]).expect("commit");
            one.push(t.elapsed());
            let t = Instant::now();
            w.commit(&[op(1), op(2), op(3)]).expect("commit");
            four.push(t.elapsed());
        }
        (one, four)
    })
    .join()
    .expect("bench thread");
    for (label, mut v) in [("1 address", report.0), ("3 addresses", report.1)] {
        v.sort();
        let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
        println!(
            "{label:>12} per commit: p50 {:>6} us  p99 {:>6} us  ({} commits, set growing to {} elements)",
            q(0.5).as_micros(),
            q(0.99).as_micros(),
            v.len(),
            rounds * 4
        );
    }
}

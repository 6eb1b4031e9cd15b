//! Fuzz the engine's per-packet path with arbitrary frames: parsing, then the filter and the
//! connection table on whatever parses. Nothing may panic; a bad frame is a drop with a reason.
#![no_main]

use engine::core::conntrack::{Conntrack, Opening, Timeouts, Tuple};
use engine::core::filter::{Direction, Filter, FlowKey};
use engine::core::packet::{parse, Payload};
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

const POLICY: &str = "
rules:
  - {id: web, action: accept, direction: egress, destination_fqdn: [example.com], destination_port: 443}
  - {id: dns, action: accept, destination_port: 53, in_interface: eth1}
  - {id: lan, action: deny, source: [10.0.0.0/8, 'fd00::/8'], protocol: icmp}
  - {id: est, action: accept, state: established}
";

struct Fixture {
    filter: Filter,
    /// Small, so inputs fill it and its full and expiry paths run too.
    conntrack: Mutex<(Conntrack, u64)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let policy = match policy::parse_str(POLICY, "fuzz.yaml") {
            Ok(c) => c.policy,
            Err(e) => panic!("{e}"),
        };
        Fixture {
            filter: Filter::compile(&policy),
            conntrack: Mutex::new((Conntrack::new(64, Timeouts::default(), [1, 2]), 0)),
        }
    })
}

fuzz_target!(|frame: &[u8]| {
    let Ok(parsed) = parse(frame) else {
        return;
    };
    let Payload::Ip(ip) = parsed.payload else {
        return;
    };
    assert!(ip.offsets.l4 <= ip.offsets.end && ip.offsets.end <= frame.len());
    let f = fixture();
    let Ok(mut guard) = f.conntrack.lock() else {
        return;
    };
    let (ct, now) = &mut *guard;
    // A second per input: flows expire as the corpus runs.
    *now += 1000;
    if let Some(tuple) = Tuple::of(&ip) {
        if ct.track(&tuple, &ip.l4, *now).is_some() {
            return;
        }
    }
    let key = FlowKey {
        direction: Direction::Egress,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        dport: ip.l4.dport(),
        in_iface: f.filter.iface("eth1"),
        out_iface: f.filter.iface("eth0"),
        established: false,
    };
    let verdict = f.filter.classify(&key, *now);
    if let (Some(tuple), Opening::Track(state)) = (Tuple::of(&ip), Opening::of(&ip)) {
        let _ = ct.open(tuple, tuple.reversed(), state, verdict.rule, *now);
    }
    ct.sweep(*now, 8);
});

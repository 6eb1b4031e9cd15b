//! Fuzz the NFLOG reader with arbitrary bytes: as a datagram from the kernel (packet
//! messages, their conntrack entries, IP and L4 headers, and the ECS event made of each), as a
//! bare IP packet, and as a conntrack entry. Nothing may panic; bad input is an error value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nft::{conntrack, nflog};
use std::sync::OnceLock;
use std::time::SystemTime;
use telemetry::ecs::{Event, RuleBook, Seen};

fn book() -> &'static RuleBook {
    static B: OnceLock<RuleBook> = OnceLock::new();
    B.get_or_init(|| {
        let yaml = "interfaces:\n  lan: [lan0]\n  wan: [wan0]\nrules:\n  - {id: no-discard, action: deny, direction: egress, protocol: tcp, destination_port: 9, log: true}\n  - {id: web, action: accept, protocol: tcp, destination_port: 80, log: true}\n";
        RuleBook::new(&policy::parse_str(yaml, "fuzz.yaml").expect("policy").policy)
    })
}

fuzz_target!(|data: &[u8]| {
    for p in nflog::packets(data).flatten() {
        let Ok(flow) = p.headers() else { continue };
        if let Ok(d) = book().decide(p.prefix) {
            let e = Event::new(
                book(),
                &d,
                Seen {
                    at: p.timestamp.unwrap_or(SystemTime::UNIX_EPOCH),
                    flow,
                    in_if: Some("lan0"),
                    out_if: p.out_ifindex.map(|_| "wan0"),
                    translated: p.conntrack.and_then(|c| c.snat().or_else(|| c.dnat())),
                    domain: None,
                },
            );
            let _ = serde_json::to_vec(&e);
        }
    }
    let _ = nflog::headers(data);
    if let Ok(e) = conntrack::parse(data) {
        let _ = (e.snat(), e.dnat(), e.confirmed(), e.original.reversed());
    }
});

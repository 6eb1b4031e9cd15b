//! Fuzz the DNS proxy's message path with arbitrary bytes: as a client's query, as an
//! upstream's reply to a fixed query, and what the cache learns from such a reply. Nothing
//! may panic; a bad message is an error the proxy counts and drops.
#![no_main]

use dns::wire::{error_reply, parse_query, parse_reply, set_id, truncated_reply};
use dns::{Cache, Matcher};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;
use policy::{DnsSettings, FqdnPattern};
use std::sync::OnceLock;

struct Fixture {
    matcher: Matcher,
    query: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let patterns = [
            FqdnPattern::Exact("example.com".into()),
            FqdnPattern::OneLabel("example.com".into()),
            FqdnPattern::Subtree("test".into()),
        ];
        let matcher = Matcher::new(
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| (dns::RuleIdx(i as u32), std::slice::from_ref(p))),
        );
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("a.example.com.").expect("name"),
            RecordType::A,
        ));
        Fixture {
            matcher,
            query: m.to_vec().expect("query"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // As a client's query: checked, answered locally, truncated.
    if let Ok(q) = parse_query(data) {
        let _ = error_reply(&q, ResponseCode::ServFail);
        let _ = truncated_reply(&q, data);
        let mut fwd = q.forward.clone();
        set_id(&mut fwd, 7);
    }
    // As an upstream's reply to a fixed query, sent with the id the data carries.
    let Ok(q) = parse_query(&f.query) else {
        return;
    };
    let id = data.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if let Ok(reply) = parse_reply(data.to_vec(), id, &q) {
        let mut cache = Cache::new(&DnsSettings {
            capacity: 64,
            max_ips_per_name: 8,
            ..DnsSettings::default()
        });
        let _ = cache.learn(1_000, &reply.answer, &f.matcher);
        let _ = cache.learn(900_000, &reply.answer, &f.matcher);
        let _ = reply.names().count();
        let _ = truncated_reply(&q, &reply.bytes);
    }
});

//! DNS messages as the proxy sees them, with no sockets: a client's query checked and made
//! ready to forward (EDNS Client Subnet stripped), an upstream's reply checked against it and
//! reduced to an [`Answer`], and the few replies ward writes itself (SERVFAIL, NXDOMAIN, TC).

use crate::cache::{Answer, Record};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::{Name, RData};

/// The UDP reply size every client accepts (RFC 1035); EDNS may advertise more.
pub const CLASSIC_UDP_LIMIT: usize = 512;

/// Why a message was dropped without a reply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("not a DNS message: {0}")]
    Decode(String),
    #[error("a response where a query was expected")]
    NotAQuery,
    #[error("a query where a response was expected")]
    NotAResponse,
    #[error("reply id {got} does not match the query's {expected}")]
    WrongId { expected: u16, got: u16 },
    #[error("reply is for another question")]
    WrongQuestion,
}

/// A query ward answers itself instead of forwarding, with the reply to send.
#[derive(Debug)]
pub struct Refusal {
    pub reply: Vec<u8>,
    pub rcode: ResponseCode,
}

/// Why a client's message is not forwarded.
#[derive(Debug)]
pub enum Rejected {
    /// Dropped without a reply (and counted): it cannot be answered meaningfully.
    Malformed(Malformed),
    /// Answered locally: FORMERR for anything but exactly one question, NOTIMP for opcodes
    /// other than QUERY.
    Refused(Refusal),
}

/// A client's query, checked and ready to forward.
#[derive(Debug)]
pub struct ClientQuery {
    /// The client's message id, restored on the reply.
    pub id: u16,
    /// The question name as matched against the rules: lower case, no trailing dot. `None`
    /// when a label holds a dot or a byte outside printable ASCII: such a name could pass for
    /// another one in dotted text, so it never matches a rule and nothing is learned from it.
    pub name: Option<String>,
    /// What goes upstream: the client's bytes, re-encoded only when an EDNS Client Subnet
    /// option had to be removed. The caller puts its own id into the first two bytes.
    pub forward: Vec<u8>,
    /// Whether an EDNS Client Subnet option was removed.
    pub ecs_stripped: bool,
    /// The largest UDP reply this client accepts.
    pub udp_limit: usize,
    /// The parsed query, kept to build local replies.
    message: Message,
}

impl ClientQuery {
    /// The question, exactly as asked ([`parse_query`] admits exactly one).
    pub fn question(&self) -> &Query {
        &self.message.queries[0]
    }
}

/// An upstream's reply to a [`ClientQuery`].
#[derive(Debug)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub truncated: bool,
    /// What the cache learns from: the question name and the answer section's CNAME, A and
    /// AAAA records (other records and names that could pass for others are left out).
    pub answer: Answer,
    /// The reply as received (still carrying the id ward sent upstream).
    pub bytes: Vec<u8>,
}

impl Reply {
    /// Every name in the answer, for a cheap "could any rule care?" check before the cache.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.answer.qname.as_str()).chain(self.answer.records.iter().flat_map(
            |r| match r {
                Record::Cname { owner, target, .. } => [owner.as_str(), target.as_str()],
                Record::Addr { owner, .. } => [owner.as_str(), owner.as_str()],
            },
        ))
    }
}

/// Checks a message from a client.
pub fn parse_query(bytes: &[u8]) -> Result<ClientQuery, Rejected> {
    let mut message = Message::from_vec(bytes)
        .map_err(|e| Rejected::Malformed(Malformed::Decode(e.to_string())))?;
    if message.metadata.message_type != MessageType::Query {
        return Err(Rejected::Malformed(Malformed::NotAQuery));
    }
    let refuse = |m: &Message, rcode| {
        Rejected::Refused(Refusal {
            reply: local_reply(m, rcode),
            rcode,
        })
    };
    if message.metadata.op_code != OpCode::Query {
        return Err(refuse(&message, ResponseCode::NotImp));
    }
    if message.queries.len() != 1 {
        return Err(refuse(&message, ResponseCode::FormErr));
    }
    let mut ecs_stripped = false;
    let mut udp_limit = CLASSIC_UDP_LIMIT;
    if let Some(edns) = message.edns.as_mut() {
        udp_limit = usize::from(edns.max_payload()).max(CLASSIC_UDP_LIMIT);
        if edns.option(EdnsCode::Subnet).is_some() {
            edns.options_mut().remove(EdnsCode::Subnet);
            ecs_stripped = true;
        }
    }
    let forward = if ecs_stripped {
        message
            .to_vec()
            .map_err(|e| Rejected::Malformed(Malformed::Decode(e.to_string())))?
    } else {
        bytes.to_vec()
    };
    Ok(ClientQuery {
        id: message.metadata.id,
        name: name_text(&message.queries[0].name),
        forward,
        ecs_stripped,
        udp_limit,
        message,
    })
}

/// Checks an upstream's reply to `query`, sent upstream with id `sent_id`.
pub fn parse_reply(bytes: Vec<u8>, sent_id: u16, query: &ClientQuery) -> Result<Reply, Malformed> {
    let message = Message::from_vec(&bytes).map_err(|e| Malformed::Decode(e.to_string()))?;
    let meta = &message.metadata;
    if meta.message_type != MessageType::Response {
        return Err(Malformed::NotAResponse);
    }
    if meta.id != sent_id {
        return Err(Malformed::WrongId {
            expected: sent_id,
            got: meta.id,
        });
    }
    // Error replies may leave the question out; any other reply must echo it.
    let q = query.question();
    let echoed = match message.queries.as_slice() {
        [] => meta.response_code != ResponseCode::NoError,
        [r] => {
            r.query_type == q.query_type
                && r.query_class == q.query_class
                && r.name.eq_case(&q.name)
        }
        _ => false,
    };
    if !echoed {
        return Err(Malformed::WrongQuestion);
    }
    let mut records = Vec::new();
    for r in &message.answers {
        let Some(owner) = name_text(&r.name) else {
            continue;
        };
        let record = match &r.data {
            RData::A(a) => Record::Addr {
                owner,
                addr: a.0.into(),
                ttl: r.ttl,
            },
            RData::AAAA(a) => Record::Addr {
                owner,
                addr: a.0.into(),
                ttl: r.ttl,
            },
            RData::CNAME(c) => match name_text(&c.0) {
                Some(target) => Record::Cname {
                    owner,
                    target,
                    ttl: r.ttl,
                },
                None => continue,
            },
            _ => continue,
        };
        records.push(record);
    }
    Ok(Reply {
        rcode: meta.response_code,
        truncated: meta.truncation,
        answer: Answer {
            qname: query.name.clone().unwrap_or_default(),
            records,
        },
        bytes,
    })
}

/// `bytes` with its message id replaced (a no-op on anything shorter than a header).
pub fn set_id(bytes: &mut [u8], id: u16) {
    if let Some(head) = bytes.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
}

/// A reply to `query` with no records and `rcode`: SERVFAIL, or NXDOMAIN for unlisted names.
pub fn error_reply(query: &ClientQuery, rcode: ResponseCode) -> Vec<u8> {
    local_reply(&query.message, rcode)
}

/// The reply for a UDP client whose limit `reply` exceeds: the header and question with TC=1,
/// which tells the client to ask again over TCP.
pub fn truncated_reply(query: &ClientQuery, reply: &[u8]) -> Vec<u8> {
    let mut m = match Message::from_vec(reply) {
        Ok(full) => full.truncate(),
        Err(_) => return error_reply(query, ResponseCode::ServFail),
    };
    m.metadata.id = query.id;
    m.to_vec()
        .unwrap_or_else(|_| error_reply(query, ResponseCode::ServFail))
}

fn local_reply(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = query.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.queries = query.queries.clone();
    if let Some(edns) = &query.edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(edns.max_payload().max(CLASSIC_UDP_LIMIT as u16));
        m.set_edns(e);
    }
    // Encoding a header, a question that was just decoded and an empty OPT cannot fail for
    // lack of room; should it fail anyway, a bare header still tells the client the rcode.
    m.to_vec().unwrap_or_else(|_| {
        let mut h = vec![0u8; 12];
        set_id(&mut h, query.metadata.id);
        h[2] = 0x80 | (u8::from(query.metadata.op_code) << 3);
        h[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8;
        h
    })
}

/// A name as dotted text (lower case, no trailing dot), or `None` if a label could be mistaken
/// for several: one holding a dot, or bytes outside printable ASCII. The root is "".
pub fn name_text(name: &Name) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for label in name.iter() {
        if label.iter().any(|&b| b == b'.' || !b.is_ascii_graphic()) {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            out.push(char::from(b.to_ascii_lowercase()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Edns;
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Record as HRecord, RecordType};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    fn query(name: &str, rtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).expect("name"), rtype));
        if let Some(e) = edns {
            m.set_edns(e);
        }
        m.to_vec().expect("encode")
    }

    fn reply_to(q: &[u8], id: u16, records: Vec<HRecord>, tc: bool) -> Vec<u8> {
        let q = Message::from_vec(q).expect("query");
        let mut m = Message::response(id, OpCode::Query);
        m.queries = q.queries.clone();
        m.metadata.truncation = tc;
        m.answers = records;
        m.to_vec().expect("encode")
    }

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("name")
    }

    #[test]
    fn plain_query_is_forwarded_byte_for_byte() {
        let bytes = query("Ok.Test.", RecordType::A, None);
        let q = parse_query(&bytes).expect("query");
        assert_eq!(q.forward, bytes);
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name.as_deref(), Some("ok.test"));
        assert_eq!(q.udp_limit, CLASSIC_UDP_LIMIT);
        assert!(!q.ecs_stripped);
    }

    #[test]
    fn client_subnet_is_stripped_and_the_rest_kept() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
            Ipv4Addr::new(192, 0, 2, 0).into(),
            24,
            0,
        )));
        let bytes = query("ok.test.", RecordType::A, Some(e));
        let q = parse_query(&bytes).expect("query");
        assert!(q.ecs_stripped);
        assert_eq!(q.udp_limit, 1232);
        let fwd = Message::from_vec(&q.forward).expect("forwarded");
        let edns = fwd.edns.expect("EDNS kept");
        assert!(edns.option(EdnsCode::Subnet).is_none());
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(fwd.queries, Message::from_vec(&bytes).expect("q").queries);
    }

    #[test]
    fn garbage_responses_and_odd_queries() {
        assert!(matches!(
            parse_query(b"\x01\x02"),
            Err(Rejected::Malformed(Malformed::Decode(_)))
        ));
        let bytes = query("ok.test.", RecordType::A, None);
        let resp = reply_to(&bytes, 1, vec![], false);
        assert!(matches!(
            parse_query(&resp),
            Err(Rejected::Malformed(Malformed::NotAQuery))
        ));
        let mut two = Message::from_vec(&bytes).expect("q");
        two.add_query(Query::query(name("b.test."), RecordType::A));
        match parse_query(&two.to_vec().expect("encode")) {
            Err(Rejected::Refused(r)) => {
                assert_eq!(r.rcode, ResponseCode::FormErr);
                let m = Message::from_vec(&r.reply).expect("reply");
                assert_eq!(m.metadata.id, 0x1234);
                assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            }
            other => panic!("expected FORMERR, got {other:?}"),
        }
    }

    #[test]
    fn reply_checks_id_and_question_and_extracts_the_chain() {
        let bytes = query("alias.test.", RecordType::A, None);
        let q = parse_query(&bytes).expect("query");
        let records = vec![
            HRecord::from_rdata(
                name("ALIAS.test."),
                300,
                RData::CNAME(CNAME(name("end.test."))),
            ),
            HRecord::from_rdata(
                name("end.test."),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
            ),
            HRecord::from_rdata(
                name("end.test."),
                60,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
        ];
        let wire = reply_to(&bytes, 77, records, false);
        assert_eq!(
            parse_reply(wire.clone(), 78, &q).err(),
            Some(Malformed::WrongId {
                expected: 78,
                got: 77
            })
        );
        let r = parse_reply(wire, 77, &q).expect("reply");
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert_eq!(r.answer.qname, "alias.test");
        assert_eq!(
            r.answer.records,
            vec![
                Record::Cname {
                    owner: "alias.test".into(),
                    target: "end.test".into(),
                    ttl: 300
                },
                Record::Addr {
                    owner: "end.test".into(),
                    addr: Ipv4Addr::new(192, 0, 2, 7).into(),
                    ttl: 60
                },
                Record::Addr {
                    owner: "end.test".into(),
                    addr: Ipv6Addr::LOCALHOST.into(),
                    ttl: 60
                },
            ]
        );
        assert!(r.names().any(|n| n == "end.test"));

        let other = reply_to(&query("evil.test.", RecordType::A, None), 77, vec![], false);
        assert_eq!(
            parse_reply(other, 77, &q).err(),
            Some(Malformed::WrongQuestion)
        );
        assert_eq!(
            parse_reply(bytes.clone(), 0x1234, &q).err(),
            Some(Malformed::NotAResponse)
        );
    }

    #[test]
    fn names_that_could_pass_for_others_never_match() {
        let mut n = Name::from_labels(vec![&b"x.github"[..], b"com"]).expect("name");
        n.set_fqdn(true);
        assert_eq!(name_text(&n), None);
        assert_eq!(
            name_text(&name("A-b.Example.")).as_deref(),
            Some("a-b.example")
        );
        assert_eq!(name_text(&Name::root()).as_deref(), Some(""));
    }

    #[test]
    fn local_replies_keep_id_question_and_edns() {
        let bytes = query("gone.test.", RecordType::AAAA, Some(Edns::new()));
        let q = parse_query(&bytes).expect("query");
        let m = Message::from_vec(&error_reply(&q, ResponseCode::NXDomain)).expect("reply");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries, vec![q.question().clone()]);
        assert!(m.edns.is_some());

        let full = reply_to(&bytes, 9, vec![], false);
        let t = Message::from_vec(&truncated_reply(&q, &full)).expect("tc");
        assert!(t.metadata.truncation);
        assert_eq!(t.metadata.id, 0x1234);
        assert!(t.answers.is_empty());
    }

    #[test]
    fn set_id_on_short_input_is_harmless() {
        let mut b = vec![0u8; 1];
        set_id(&mut b, 7);
        let mut b = vec![0u8; 12];
        set_id(&mut b, 0xabcd);
        assert_eq!(&b[..2], &[0xab, 0xcd]);
    }
}

//! The proxy on loopback against a scripted upstream: hostile client messages and upstream
//! replies are counted and dropped without harm, the answer leaves only after the learner's
//! commit has returned, and an upstream that never answers turns into SERVFAIL.

use dns::{Committer, Config, Learner, Matcher, Proxy, RecordingError, Stats, Update};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use policy::{DnsSettings, FqdnPattern, Unlisted};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(3);

/// What the scripted upstream does with each query.
#[derive(Clone, Copy)]
enum Upstream {
    /// Garbage, then a reply with the wrong id, then the real answer.
    NoisyThenRight,
    /// Never answers.
    Silent,
}

/// A UDP upstream on loopback, answering every A query with 192.0.2.1 (TTL 60).
fn upstream(mode: Upstream) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
    let addr = sock.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if let Upstream::Silent = mode {
                continue;
            }
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.queries = q.queries.clone();
            let name = q.queries[0].name.clone();
            r.answers = vec![Record::from_rdata(
                name,
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            )];
            let right = r.to_vec().expect("encode");
            let _ = sock.send_to(b"\xff\xfe garbage", peer);
            let mut wrong = right.clone();
            wrong[0] ^= 0xff;
            let _ = sock.send_to(&wrong, peer);
            let _ = sock.send_to(&right, peer);
        }
    });
    addr
}

/// A learner that takes its time, so a reply released early would be caught.
struct Slow {
    committed: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
}

impl Learner for Slow {
    type Error = RecordingError;
    fn commit(&mut self, updates: &[Update]) -> Result<(), RecordingError> {
        if updates.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        self.commits.fetch_add(1, SeqCst);
        self.committed.store(true, SeqCst);
        Ok(())
    }
}

struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    committed: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
}

/// The proxy on its own thread, with a single-threaded loop as `ward run` has; it lives as long
/// as the test process.
fn proxy(up: SocketAddr) -> Running {
    let patterns = [FqdnPattern::Exact("ok.example".into())];
    let matcher = Arc::new(Matcher::new([(dns::RuleIdx(0), &patterns[..])]));
    let stats = Arc::new(Stats::default());
    let committed = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let learner = Slow {
        committed: committed.clone(),
        commits: commits.clone(),
    };
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        upstreams: vec![up],
        upstream_timeout: Duration::from_millis(300),
        qps_per_client: 1_000_000,
        unlisted: Unlisted::Forward,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stats.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let (committer, task) = Committer::new(
            &DnsSettings::default(),
            matcher.clone(),
            st.clone(),
            Arc::new(dns::Names::new(1024)),
            learner,
        );
        local.spawn_local(task);
        local.block_on(&rt, async move {
            let p = Proxy::bind(config, matcher, committer, st).expect("bind");
            tx.send(p.local_addrs()[0]).expect("send addr");
            p.serve().await
        })
    });
    Running {
        addr: rx.recv().expect("proxy bound"),
        stats,
        committed,
        commits,
    }
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4321;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}

fn ask(to: SocketAddr, wire: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").expect("client");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.send_to(wire, to).expect("send");
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("a reply");
    Message::from_vec(&buf[..n]).expect("reply parses")
}

#[test]
fn answers_leave_only_after_the_commit_and_noise_is_counted() {
    let p = proxy(upstream(Upstream::NoisyThenRight));
    let m = ask(p.addr, &query("ok.example."));
    assert!(
        p.committed.load(SeqCst),
        "the reply arrived before the learner committed"
    );
    assert_eq!(m.metadata.id, 4321, "the client's id is restored");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.answers.len(), 1);
    // The garbage and the wrong-id reply were read, counted and ignored.
    assert_eq!(p.stats.malformed_replies.load(SeqCst), 2);

    // A name no rule lists is answered without a commit.
    let m = ask(p.addr, &query("other.example."));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(p.commits.load(SeqCst), 1);
    assert_eq!(p.stats.success.load(SeqCst), 2);
}

#[test]
fn hostile_client_messages_are_dropped_and_counted() {
    let p = proxy(upstream(Upstream::NoisyThenRight));
    let s = UdpSocket::bind("127.0.0.1:0").expect("client");
    let mut reply_to_a_reply = query("ok.example.");
    reply_to_a_reply[2] |= 0x80; // QR: a response, not a query
    for junk in [
        &b""[..],
        b"\x00",
        &[0xffu8; 12],
        &[0u8; 3000],
        &reply_to_a_reply,
    ] {
        s.send_to(junk, p.addr).expect("send");
    }
    // Over TCP: a frame promising more than it sends, then a frame of garbage.
    let mut t = TcpStream::connect(p.addr).expect("tcp");
    t.set_read_timeout(Some(T)).expect("timeout");
    t.write_all(&[0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .expect("write");
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing is answered to garbage: {rest:?}");

    // Still serving, over both transports.
    assert_eq!(ask(p.addr, &query("ok.example.")).answers.len(), 1);
    let mut t = TcpStream::connect(p.addr).expect("tcp");
    t.set_read_timeout(Some(T)).expect("timeout");
    let q = query("ok.example.");
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    t.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    t.read_exact(&mut len).expect("length");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    t.read_exact(&mut buf).expect("reply");
    assert_eq!(Message::from_vec(&buf).expect("parses").answers.len(), 1);
    // Undecodable: the empty datagram, the single byte, the TCP frame. Not a query: the
    // all-ones header and the response. The 3000 zero bytes decode as a query without a
    // question, which gets FORMERR rather than silence.
    let malformed = p.stats.malformed_queries.load(SeqCst);
    assert_eq!(malformed, 5, "malformed_queries");
    assert_eq!(p.stats.other_rcode.load(SeqCst), 1, "the FORMERR");
}

#[test]
fn an_upstream_that_never_answers_means_servfail() {
    let p = proxy(upstream(Upstream::Silent));
    let m = ask(p.addr, &query("ok.example."));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 4321);
    assert_eq!(p.stats.upstream_failures.load(SeqCst), 1);
    assert_eq!(p.stats.servfail.load(SeqCst), 1);
    assert!(!p.committed.load(SeqCst));
}

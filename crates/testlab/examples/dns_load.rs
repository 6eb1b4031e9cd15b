//! DNS upstream and load generator for `bench/dns.py` (needs root for `serve`).
//!
//! ```text
//! dns_load serve --netns NS [--names N] [--ttl S] [--engine fast|hickory]
//!     An authoritative server on UDP/TCP port 53 (0.0.0.0 and [::]) in namespace NS, zone
//!     bench.test. with N names n{i}.bench.test. -> 10.88.{i/256}.{i%256}. Prints "ready",
//!     serves until its stdin closes, then prints {"queries": Q} (messages it received).
//!     --engine fast (the default): answers from replies precomputed at start (see `Fast`),
//!             a few microseconds of CPU per query, one blocking thread per socket;
//!     --engine hickory: testlab's hickory-server (`Netns::dns_server`), the same answers byte
//!             for byte at several times the CPU per query.
//! dns_load load --server IP:PORT [--names N] [--duration S] (--rate QPS | --window W)
//!     UDP A queries for the N names in turn, from one socket in the calling process's
//!     namespace (run it with `ip netns exec`), for S seconds. Prints one JSON line.
//!     --rate: open loop, QPS queries per second on a fixed schedule, whatever the replies;
//!             afterwards up to 1 s for the last replies.
//!     --window: closed loop, as fast as possible with W queries outstanding (peak qps).
//! dns_load stalls --cpu N --duration S
//!     Keeps CPU N busy for S seconds (an ordinary thread pinned to it, reading the clock in a
//!     loop) and records each gap of over 250 us between two reads: time the CPU spent on
//!     something else, another thread, interrupts, or a hypervisor running something else on
//!     it. Prints one JSON line: {"cpu": N, "stalls": [LENGTH_US, ...]}.
//! ```
//!
//! A reply counts as answered when it has the query's id and question, NOERROR, and the name's
//! address in an A record; other replies are errors. A query unanswered after 1 s is a timeout
//! (its reply, if it comes later, is counted as late). Latency is from just before send() to
//! just after recv() returned the reply, in microseconds.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use socket2::{Domain, Protocol, Socket, Type};
use testlab::{dns_query, Netns, Zone};

/// Ids are 16 bits: at most this many queries can be told apart at once.
const SLOTS: usize = 1 << 16;
/// A query unanswered this long is given up on.
const TIMEOUT: Duration = Duration::from_secs(1);
const MAX_NAMES: u32 = 1 << 16;

fn name(i: u32) -> String {
    format!("n{i}.bench.test.")
}

fn address(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, (i >> 8) as u8, i as u8)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => Opts::parse(&args[1..]).and_then(|o| serve(&o)),
        Some("load") => Opts::parse(&args[1..]).and_then(|o| load(&o)),
        Some("stalls") => Opts::parse(&args[1..]).and_then(|o| stalls(&o)),
        _ => Err("usage: dns_load serve --netns NS [--names N] [--ttl S] [--engine fast|hickory]\n       \
                  dns_load load --server IP:PORT [--names N] [--duration S] (--rate QPS | --window W)\n       \
                  dns_load stalls --cpu N --duration S"
            .to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dns_load: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct Opts {
    netns: Option<String>,
    server: Option<SocketAddr>,
    names: u32,
    ttl: u32,
    duration: f64,
    rate: Option<f64>,
    window: Option<usize>,
    /// serve: the precomputed-reply server instead of hickory-server.
    fast: bool,
    /// stalls: the CPU to watch.
    cpu: Option<usize>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            netns: None,
            server: None,
            names: 10_000,
            ttl: 300,
            duration: 5.0,
            rate: None,
            window: None,
            fast: true,
            cpu: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .as_str();
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--netns" => o.netns = Some(value.to_string()),
                "--server" => o.server = Some(value.parse().map_err(|e| bad(&e))?),
                "--names" => o.names = value.parse().map_err(|e| bad(&e))?,
                "--ttl" => o.ttl = value.parse().map_err(|e| bad(&e))?,
                "--duration" => o.duration = value.parse().map_err(|e| bad(&e))?,
                "--rate" => o.rate = Some(value.parse().map_err(|e| bad(&e))?),
                "--window" => o.window = Some(value.parse().map_err(|e| bad(&e))?),
                "--cpu" => o.cpu = Some(value.parse().map_err(|e| bad(&e))?),
                "--engine" => {
                    o.fast = match value {
                        "fast" => true,
                        "hickory" => false,
                        _ => return Err(bad(&"expected fast or hickory")),
                    }
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if o.names == 0 || o.names > MAX_NAMES {
            return Err(format!("--names must be 1..={MAX_NAMES}"));
        }
        if o.duration.is_nan() || o.duration <= 0.0 {
            return Err("--duration must be positive".into());
        }
        Ok(o)
    }
}

fn serve(o: &Opts) -> Result<(), String> {
    let ns = o.netns.as_deref().ok_or("serve needs --netns")?;
    let queries: Box<dyn Fn() -> u64> = if o.fast {
        let count = Arc::new(AtomicU64::new(0));
        let zone = Arc::new(Fast::new(o.names, o.ttl));
        let sockets = Netns::new(ns)
            .run(bind_all)
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("binding port 53 in {ns}: {e}"))?;
        for (udp, tcp) in sockets {
            let (z, c) = (zone.clone(), count.clone());
            std::thread::spawn(move || serve_udp(&udp, &z, &c));
            let (z, c) = (zone.clone(), count.clone());
            std::thread::spawn(move || serve_tcp(&tcp, &z, &c));
        }
        Box::new(move || count.load(Ordering::Relaxed))
    } else {
        let zone = (0..o.names).fold(Zone::new("bench.test."), |z, i| {
            z.a(&name(i), address(i), o.ttl)
        });
        let server = Netns::new(ns).dns_server(zone).map_err(|e| e.to_string())?;
        Box::new(move || server.queries())
    };
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Until the parent closes our stdin (or exits).
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    println!("{{\"queries\": {}}}", queries());
    Ok(())
}

/// The wire form of an absolute dotted name (lower case as given).
fn wire_name(dotted: &str) -> Vec<u8> {
    let mut w = Vec::with_capacity(dotted.len() + 1);
    for label in dotted.trim_end_matches('.').split('.') {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

const T_A: u16 = 1;
const T_SOA: u16 = 6;
const T_OPT: u16 = 41;
const T_ANY: u16 = 255;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// The fast upstream: hickory-server's replies for zone bench.test., precomputed.
///
/// The benchmark's upstream must cost far less CPU than the proxies it is compared with (it
/// shares a core with the load generator), yet give them exactly the replies hickory gives, so
/// that they do the same work. The replies below were compared byte for byte with testlab's
/// hickory server's. An A (or ANY) query for a zone name: flags QR AA, RD and CD copied from the
/// query, the question as asked (case included), one A record with the owner written out in
/// lower case (no compression), class IN, the zone's TTL. A query with EDNS: an OPT with payload
/// max(512, the query's) and no flags is added (version > 0: BADVERS instead). Other types for a
/// zone name, or at the apex: NOERROR, no answer, the SOA in the authority section (an SOA query
/// at the apex: the SOA as the answer). Other names under bench.test.: NXDOMAIN with the SOA.
/// Names elsewhere: REFUSED. Opcodes other than QUERY: NOTIMP. Not exactly one question:
/// FORMERR. Responses and messages cut short: no reply. Unlike hickory, EDNS options are not
/// checked (hickory answers a malformed one with FORMERR).
struct Fast {
    /// Lower-case wire name -> its A record as it follows the question in a reply.
    answers: HashMap<Box<[u8]>, Box<[u8]>>,
    /// `bench.test.` in wire form.
    apex: Vec<u8>,
}

impl Fast {
    fn new(names: u32, ttl: u32) -> Fast {
        let answers = (0..names)
            .map(|i| {
                let owner = wire_name(&name(i));
                let mut rr = owner.clone();
                rr.extend_from_slice(&T_A.to_be_bytes());
                rr.extend_from_slice(&1u16.to_be_bytes()); // IN
                rr.extend_from_slice(&ttl.to_be_bytes());
                rr.extend_from_slice(&4u16.to_be_bytes());
                rr.extend_from_slice(&address(i).octets());
                (owner.into_boxed_slice(), rr.into_boxed_slice())
            })
            .collect();
        Fast {
            answers,
            apex: wire_name("bench.test."),
        }
    }

    /// The zone's SOA record at offset `at` of the reply (its names point back to its owner).
    fn soa(&self, out: &mut Vec<u8>) {
        let at = out.len() as u16;
        let ptr = (0xc000 | at).to_be_bytes();
        out.extend_from_slice(&self.apex);
        out.extend_from_slice(&T_SOA.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&300u32.to_be_bytes());
        out.extend_from_slice(&38u16.to_be_bytes());
        out.extend_from_slice(b"\x02ns");
        out.extend_from_slice(&ptr);
        out.extend_from_slice(b"\x0ahostmaster");
        out.extend_from_slice(&ptr);
        for v in [1u32, 3600, 600, 86400, 5] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Writes the reply to `q` into `out`; false if `q` gets none.
    fn reply(&self, q: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        let be16 = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
        if q.len() < 12 || q[2] & 0x80 != 0 {
            return false;
        }
        // QR, the query's opcode and RD; AA only where the zone answers.
        let flags = 0x80 | (q[2] & 0x79);
        let cd = q[3] & 0x10;
        let header = |out: &mut Vec<u8>, aa: bool, rcode: u8, counts: [u16; 4]| {
            out.extend_from_slice(&q[..2]);
            out.push(flags | if aa { 0x04 } else { 0 });
            out.push(cd | rcode);
            for c in counts {
                out.extend_from_slice(&c.to_be_bytes());
            }
        };
        if be16(4) != 1 {
            header(out, false, RCODE_FORMERR, [0; 4]);
            return true;
        }
        // The question: uncompressed labels, then type and class.
        let mut at = 12;
        let mut starts = [0usize; 128];
        let mut labels = 0;
        loop {
            let Some(&len) = q.get(at) else { return false };
            if len == 0 {
                at += 1;
                break;
            }
            if len & 0xc0 != 0 || at + 1 + usize::from(len) - 12 > 254 {
                header(out, false, RCODE_FORMERR, [0; 4]);
                return true;
            }
            starts[labels] = at;
            labels += 1;
            at += 1 + usize::from(len);
        }
        let qname_end = at;
        if q.len() < at + 4 {
            return false;
        }
        let qtype = be16(at);
        let question = &q[12..at + 4];
        at += 4;
        if (q[2] >> 3) & 0x0f != 0 {
            header(out, false, RCODE_NOTIMP, [1, 0, 0, 0]);
            out.extend_from_slice(question);
            return true;
        }
        // EDNS: an OPT among the additional records (answer and authority must be empty).
        let mut opt: Option<(u16, u8)> = None; // (payload, version)
        if be16(6) != 0 || be16(8) != 0 {
            header(out, false, RCODE_FORMERR, [0; 4]);
            return true;
        }
        for _ in 0..be16(10) {
            // Owner (the root for an OPT), type, class, TTL, rdata.
            let mut owner_end = at;
            while let Some(&len) = q.get(owner_end) {
                owner_end += if len & 0xc0 == 0xc0 {
                    2
                } else {
                    1 + usize::from(len)
                };
                if len == 0 || len & 0xc0 == 0xc0 {
                    break;
                }
            }
            if q.len() < owner_end + 10 {
                return false;
            }
            let rtype = be16(owner_end);
            let rdlen = usize::from(be16(owner_end + 8));
            if rtype == T_OPT {
                if opt.is_some() || owner_end != at + 1 || q[at] != 0 {
                    header(out, false, RCODE_FORMERR, [0; 4]);
                    return true;
                }
                opt = Some((be16(owner_end + 2), q[owner_end + 5]));
            }
            at = owner_end + 10 + rdlen;
            if q.len() < at {
                return false;
            }
        }
        let with_opt = |out: &mut Vec<u8>| {
            if let Some((payload, version)) = opt {
                out.push(0);
                out.extend_from_slice(&T_OPT.to_be_bytes());
                out.extend_from_slice(&payload.max(512).to_be_bytes());
                out.extend_from_slice(&[u8::from(version != 0), 0, 0, 0, 0, 0]);
            }
        };
        let ar = u16::from(opt.is_some());
        if matches!(opt, Some((_, v)) if v != 0) {
            header(out, false, 0, [1, 0, 0, ar]);
            out.extend_from_slice(question);
            with_opt(out);
            return true;
        }

        let mut lower = [0u8; 256];
        let qname = &mut lower[..qname_end - 12];
        // Length bytes are below 64, so lower-casing the whole wire name leaves them alone.
        qname.copy_from_slice(&q[12..qname_end]);
        qname.make_ascii_lowercase();
        let qname = &*qname;
        if let Some(rr) = self.answers.get(qname) {
            if qtype == T_A || qtype == T_ANY {
                header(out, true, 0, [1, 1, 0, ar]);
                out.extend_from_slice(question);
                out.extend_from_slice(rr);
            } else {
                header(out, true, 0, [1, 0, 1, ar]);
                out.extend_from_slice(question);
                self.soa(out);
            }
        } else if qname == self.apex.as_slice() {
            let (an, ns) = if qtype == T_SOA { (1, 0) } else { (0, 1) };
            header(out, true, 0, [1, an, ns, ar]);
            out.extend_from_slice(question);
            self.soa(out);
        } else if starts[..labels]
            .iter()
            .any(|&s| &qname[s - 12..] == self.apex.as_slice())
        {
            header(out, true, RCODE_NXDOMAIN, [1, 0, 1, ar]);
            out.extend_from_slice(question);
            self.soa(out);
        } else {
            header(out, false, RCODE_REFUSED, [1, 0, 0, ar]);
            out.extend_from_slice(question);
        }
        with_opt(out);
        true
    }
}

/// UDP and TCP on port 53 of 0.0.0.0 and of [::] (v6 only, as testlab's server binds them).
fn bind_all() -> std::io::Result<Vec<(UdpSocket, TcpListener)>> {
    let wildcards: [IpAddr; 2] = [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()];
    wildcards
        .into_iter()
        .map(|ip| {
            let addr: SocketAddr = (ip, 53).into();
            let bind = |ty: Type, proto: Protocol| -> std::io::Result<Socket> {
                let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
                if ip.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                if ty == Type::STREAM {
                    s.set_reuse_address(true)?;
                } else {
                    // Room for bursts while the server thread waits for the CPU (best effort).
                    let _ = s.set_recv_buffer_size(4 << 20);
                }
                s.bind(&addr.into())?;
                Ok(s)
            };
            let udp = bind(Type::DGRAM, Protocol::UDP)?;
            let tcp = bind(Type::STREAM, Protocol::TCP)?;
            tcp.listen(128)?;
            Ok((udp.into(), tcp.into()))
        })
        .collect()
}

fn serve_udp(sock: &UdpSocket, zone: &Fast, count: &AtomicU64) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(4096);
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        count.fetch_add(1, Ordering::Relaxed);
        if zone.reply(&buf[..n], &mut out) {
            let _ = sock.send_to(&out, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, zone: &Arc<Fast>, count: &Arc<AtomicU64>) {
    for conn in listener.incoming().flatten() {
        let (zone, count) = (zone.clone(), count.clone());
        std::thread::spawn(move || serve_conn(conn, &zone, &count));
    }
}

/// Length-prefixed messages, one reply each, until the client closes or idles for 10 s.
fn serve_conn(mut conn: TcpStream, zone: &Fast, count: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let msg = &mut buf[..usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(msg).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
        if zone.reply(msg, &mut out) {
            let mut framed = (out.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&out);
            if conn.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

/// The queries (id 0, patched per send) and the answer each must contain.
struct Queries {
    wire: Vec<Vec<u8>>,
    /// rdlength 4 followed by the name's address: how the A record's data looks on the wire.
    rdata: Vec<[u8; 6]>,
}

impl Queries {
    fn new(n: u32) -> Queries {
        let wire = (0..n)
            .map(|i| {
                let mut q = dns_query(&name(i), RecordType::A, None);
                q[0] = 0;
                q[1] = 0;
                q
            })
            .collect();
        let rdata = (0..n)
            .map(|i| {
                let a = address(i).octets();
                [0, 4, a[0], a[1], a[2], a[3]]
            })
            .collect();
        Queries { wire, rdata }
    }

    fn len(&self) -> usize {
        self.wire.len()
    }

    /// Whether `reply` correctly answers query `i`.
    fn answers(&self, i: usize, reply: &[u8]) -> bool {
        let q = &self.wire[i];
        reply.len() > q.len()
            && reply[2] & 0x80 != 0 // QR
            && reply[3] & 0x0f == 0 // NOERROR
            && u16::from_be_bytes([reply[6], reply[7]]) >= 1 // ANCOUNT
            && reply[12..q.len()].eq_ignore_ascii_case(&q[12..])
            && reply[q.len()..]
                .windows(6)
                .any(|w| w == self.rdata[i].as_slice())
    }
}

fn socket(server: SocketAddr) -> Result<UdpSocket, String> {
    let s = Socket::new(
        Domain::for_address(server),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(|e| e.to_string())?;
    // Room for bursts of replies while the receiver is descheduled (best effort).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    s.bind(&local.into()).map_err(|e| e.to_string())?;
    s.connect(&server.into())
        .map_err(|e| format!("connect {server}: {e}"))?;
    Ok(s.into())
}

/// What one run saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    errors: u64,
    timeouts: u64,
    late: u64,
    /// Latencies of the answered queries, nanoseconds.
    lat: Vec<u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.late += other.late;
        self.lat.extend(other.lat);
    }

    fn print(mut self, mode: &str, target: f64, secs: f64, max_lag_us: u64) {
        self.lat.sort_unstable();
        let q = |p: f64| -> u64 {
            if self.lat.is_empty() {
                0
            } else {
                self.lat[((self.lat.len() - 1) as f64 * p).round() as usize] / 1000
            }
        };
        println!(
            "{{\"mode\": \"{mode}\", \"target\": {target}, \"secs\": {secs:.3}, \"sent\": {}, \
             \"answered\": {}, \"errors\": {}, \"timeouts\": {}, \"late\": {}, \
             \"qps\": {:.1}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"max_us\": {}, \
             \"max_send_lag_us\": {max_lag_us}}}",
            self.sent,
            self.answered,
            self.errors,
            self.timeouts,
            self.late,
            self.answered as f64 / secs,
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
        );
    }
}

/// Waits for one datagram (up to the socket's read timeout) and handles it; true if it settled
/// an outstanding query.
fn receive(
    sock: &UdpSocket,
    buf: &mut [u8],
    now_ns: impl Fn() -> u64,
    sent_at: &[AtomicU64],
    name_of: &[AtomicU32],
    queries: &Queries,
    t: &mut Tally,
) -> bool {
    match sock.recv(buf) {
        Ok(n) => on_reply(&buf[..n], now_ns(), sent_at, name_of, queries, t),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        // ICMP port unreachable and the like: nobody listening (yet).
        Err(_) => {
            t.errors += 1;
            false
        }
    }
}

/// Handles one received datagram; true if it settled an outstanding query.
fn on_reply(
    buf: &[u8],
    now_ns: u64,
    sent_at: &[AtomicU64],
    name_of: &[AtomicU32],
    queries: &Queries,
    t: &mut Tally,
) -> bool {
    if buf.len() < 12 {
        t.errors += 1;
        return false;
    }
    let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    let sent = sent_at[id].swap(0, Ordering::AcqRel);
    if sent == 0 {
        t.late += 1;
        return false;
    }
    let i = name_of[id].load(Ordering::Acquire) as usize;
    if queries.answers(i, buf) {
        t.answered += 1;
        t.lat.push(now_ns.saturating_sub(sent));
    } else {
        t.errors += 1;
    }
    true
}

fn load(o: &Opts) -> Result<(), String> {
    let server = o.server.ok_or("load needs --server")?;
    if let Some(ns) = &o.netns {
        return Err(format!(
            "run load inside the namespace with `ip netns exec {ns}` instead of --netns"
        ));
    }
    let queries = Queries::new(o.names);
    let sock = socket(server)?;
    match (o.rate, o.window) {
        (Some(rate), None) if rate > 0.0 => open_loop(sock, queries, rate, o.duration),
        (None, Some(w)) if w > 0 && w < SLOTS / 2 => closed_loop(sock, &queries, w, o.duration),
        _ => Err("give either --rate QPS (> 0) or --window W (1..32767)".into()),
    }
}

/// A fixed send schedule (one sender thread, one receiver thread).
fn open_loop(sock: UdpSocket, queries: Queries, rate: f64, secs: f64) -> Result<(), String> {
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
    let name_of: Arc<Vec<AtomicU32>> = Arc::new((0..SLOTS).map(|_| AtomicU32::new(0)).collect());
    let queries = Arc::new(queries);
    let done = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let ns = move || epoch.elapsed().as_nanos() as u64 + 1; // never 0: 0 means "free"

    let rx = {
        let sock = sock.try_clone().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        let (sent_at, name_of, queries, done) = (
            sent_at.clone(),
            name_of.clone(),
            queries.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let mut t = Tally::default();
            let mut buf = vec![0u8; 4096];
            let mut deadline = None;
            loop {
                receive(&sock, &mut buf, ns, &sent_at, &name_of, &queries, &mut t);
                if done.load(Ordering::Acquire) {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + TIMEOUT);
                    let idle = sent_at.iter().all(|s| s.load(Ordering::Acquire) == 0);
                    if Instant::now() >= d || (idle && t.answered > 0) {
                        break;
                    }
                }
            }
            t
        })
    };

    // Sleeps end up to the timer slack late (50 us by default): ask for 1 us.
    let _ = nix::sys::prctl::set_timerslack(1000);
    let mut tx = Tally::default();
    let interval = 1e9 / rate;
    let total = (rate * secs).round() as u64;
    let start_ns = ns();
    let mut max_lag = 0u64;
    let mut wire = vec![0u8; 512];
    for seq in 0..total {
        let due = start_ns + (seq as f64 * interval) as u64;
        let now = ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        } else {
            max_lag = max_lag.max(now - due);
        }
        let id = (seq as usize) % SLOTS;
        let i = (seq % queries.len() as u64) as usize;
        let q = &queries.wire[i];
        wire.clear();
        wire.extend_from_slice(q);
        wire[0..2].copy_from_slice(&(id as u16).to_be_bytes());
        name_of[id].store(i as u32, Ordering::Release);
        // A previous query still holding this id has been waiting 65536 / rate seconds.
        if sent_at[id].swap(ns(), Ordering::AcqRel) != 0 {
            tx.timeouts += 1;
        }
        if sock.send(&wire).is_err() {
            sent_at[id].store(0, Ordering::Release);
            tx.errors += 1;
        }
        tx.sent += 1;
    }
    let elapsed = (ns() - start_ns) as f64 / 1e9;
    done.store(true, Ordering::Release);
    let mut t = rx.join().map_err(|_| "receiver thread panicked")?;
    t.timeouts += sent_at
        .iter()
        .filter(|s| s.load(Ordering::Acquire) != 0)
        .count() as u64;
    t.merge(tx);
    t.print("rate", rate, elapsed.max(secs), max_lag / 1000);
    Ok(())
}

/// As fast as the server answers, `window` queries outstanding (one thread).
fn closed_loop(sock: UdpSocket, queries: &Queries, window: usize, secs: f64) -> Result<(), String> {
    let sent_at: Vec<AtomicU64> = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
    let name_of: Vec<AtomicU32> = (0..SLOTS).map(|_| AtomicU32::new(0)).collect();
    sock.set_read_timeout(Some(Duration::from_millis(10)))
        .map_err(|e| e.to_string())?;
    let epoch = Instant::now();
    let ns = || epoch.elapsed().as_nanos() as u64 + 1;
    let end = ns() + (secs * 1e9) as u64;
    let mut t = Tally::default();
    // (id, send time) in send order, to find the queries that timed out.
    let mut order: VecDeque<(usize, u64)> = VecDeque::with_capacity(window * 2);
    let mut outstanding = 0usize;
    let mut seq = 0u64;
    let mut buf = vec![0u8; 4096];
    let mut wire = vec![0u8; 512];
    let start = ns();
    loop {
        let now = ns();
        if now >= end {
            break;
        }
        // Drop answered entries from the front; give up on the ones waiting too long.
        while let Some(&(id, at)) = order.front() {
            let cur = sent_at[id].load(Ordering::Relaxed);
            if cur != at {
                order.pop_front(); // answered (or the id was reused)
            } else if now - at > TIMEOUT.as_nanos() as u64 {
                sent_at[id].store(0, Ordering::Relaxed);
                t.timeouts += 1;
                outstanding -= 1;
                order.pop_front();
            } else {
                break;
            }
        }
        while outstanding < window {
            let id = (seq as usize) % SLOTS;
            let i = (seq % queries.len() as u64) as usize;
            seq += 1;
            if sent_at[id].load(Ordering::Relaxed) != 0 {
                continue; // still outstanding from 64k queries ago; skip the id
            }
            wire.clear();
            wire.extend_from_slice(&queries.wire[i]);
            wire[0..2].copy_from_slice(&(id as u16).to_be_bytes());
            name_of[id].store(i as u32, Ordering::Relaxed);
            let at = ns();
            sent_at[id].store(at, Ordering::Relaxed);
            t.sent += 1;
            if sock.send(&wire).is_err() {
                sent_at[id].store(0, Ordering::Relaxed);
                t.errors += 1;
                continue;
            }
            order.push_back((id, at));
            outstanding += 1;
        }
        if receive(&sock, &mut buf, ns, &sent_at, &name_of, queries, &mut t) {
            outstanding -= 1;
        }
    }
    let elapsed = (ns() - start) as f64 / 1e9;
    t.print("window", window as f64, elapsed, 0);
    Ok(())
}

/// `dns_load stalls`: see the module's text. An ordinary thread, not a real-time one: a FIFO
/// thread that never sleeps is throttled by the kernel (`sched_rt_runtime_us`), which would be
/// recorded as stalls of its own making.
fn stalls(o: &Opts) -> Result<(), String> {
    const GAP: Duration = Duration::from_micros(250);
    let cpu = o.cpu.ok_or("stalls needs --cpu")?;
    // SAFETY: sched_setaffinity on this thread with a set initialised here.
    unsafe {
        let mut set: nix::libc::cpu_set_t = std::mem::zeroed();
        nix::libc::CPU_SET(cpu, &mut set);
        if nix::libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return Err(format!(
                "pinning to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(o.duration);
    let mut found = Vec::new();
    let mut last = start;
    while last < end {
        let now = Instant::now();
        if now - last > GAP {
            found.push((now - last).as_micros().to_string());
        }
        last = now;
    }
    println!("{{\"cpu\": {cpu}, \"stalls\": [{}]}}", found.join(", "));
    Ok(())
}

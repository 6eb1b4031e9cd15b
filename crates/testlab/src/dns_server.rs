//! A real authoritative DNS server (hickory-server, in-memory zone) inside a lab namespace:
//! the upstream the DNS proxy's integration tests forward to, on UDP and TCP port 53.
//!
//! [`Zone`] describes the data in plain Rust; [`Netns::dns_server`] serves it until the
//! returned [`DnsServer`] is dropped. The server counts the queries it receives, so a test can
//! prove that a query did or did not reach the upstream.
//!
//! # The standard zone
//!
//! [`Zone::standard`] (origin `test.`) serves the following. Only `198.51.100.20` (the WAN host)
//! and `fd00:51::20` exist in a fresh lab; the other addresses are on the WAN subnet on purpose,
//! so a test that wants to connect to them adds one to the WAN host
//! (`wan.ip(&["addr", "add", "198.51.100.21/24", "dev", "eth0"])`) and it is routed like the
//! WAN host itself. Distinct addresses per name let tests tell which answer opened what.
//!
//! | name              | type  | value                                          | TTL |
//! |-------------------|-------|------------------------------------------------|-----|
//! | `test.`           | SOA   | `ns.test. hostmaster.test. 1 3600 600 86400 5` | 300 |
//! | `ok.test.`        | A     | 198.51.100.20 (WAN host)                       | 300 |
//! | `short.test.`     | A     | 198.51.100.21                                  | 2   |
//! | `v6.test.`        | AAAA  | fd00:51::20 (WAN host)                         | 300 |
//! | `alias.test.`     | CNAME | `mid.test.`                                    | 300 |
//! | `mid.test.`       | CNAME | `end.test.`                                    | 30  |
//! | `end.test.`       | A     | 198.51.100.22                                  | 120 |
//! | `big.test.`       | A ×40 | 198.51.100.100 – 198.51.100.139                | 300 |
//! | `wild.test.`      | A     | 198.51.100.30                                  | 300 |
//! | `a.wild.test.`    | A     | 198.51.100.31                                  | 300 |
//! | `a.b.wild.test.`  | A     | 198.51.100.32                                  | 300 |
//! | `sub.test.`       | A     | 198.51.100.40                                  | 300 |
//! | `a.sub.test.`     | A     | 198.51.100.41                                  | 300 |
//! | `b.a.sub.test.`   | A     | 198.51.100.42                                  | 300 |
//! | `c.b.a.sub.test.` | A     | 198.51.100.43                                  | 300 |
//!
//! Any other name under `test.` is NXDOMAIN (authoritative, SOA in the authority section);
//! an existing name asked for another type is NOERROR with no answer; names outside `test.`
//! are REFUSED. A query for `alias.test.` A returns CNAME, CNAME, A in the answer section
//! (the chain's TTLs differ, smallest in the middle). `big.test.`'s answer is about 670
//! bytes: over UDP without EDNS (or with an EDNS buffer of 512) it comes back with TC=1, over
//! TCP in full; a query advertising a larger EDNS buffer gets it whole over UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::LabError;
use crate::netns::Netns;

/// The port [`Netns::dns_server`] listens on (UDP and TCP).
pub const DNS_PORT: u16 = 53;
/// TTL of the synthesized SOA record, and (as its MINIMUM) of negative answers.
const SOA_TTL: u32 = 300;
const NEGATIVE_TTL: u32 = 5;
/// A TCP client that sends nothing for this long is disconnected (hickory needs a bound).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What a record holds. Kept free of hickory types so that tests describing a zone need no
/// DNS library.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    ttl: u32,
    data: Data,
}

/// The contents of one authoritative zone, built with chained calls:
///
/// ```
/// use testlab::Zone;
/// let zone = Zone::new("example.")
///     .a("www.example.", [192, 0, 2, 1].into(), 60)
///     .cname("web.example.", "www.example.", 300);
/// ```
///
/// Names are absolute (the trailing dot is optional) and must be the origin or below it; a
/// CNAME target may be anywhere. Mistakes are reported by [`Netns::dns_server`], not here.
/// An SOA for the origin is added when the zone is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    origin: String,
    entries: Vec<Entry>,
}

impl Zone {
    /// An empty zone for `origin` (e.g. `"test."`).
    pub fn new(origin: &str) -> Zone {
        Zone {
            origin: origin.to_string(),
            entries: Vec::new(),
        }
    }

    /// The zone's origin as given to [`Zone::new`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn push(mut self, name: &str, ttl: u32, data: Data) -> Zone {
        self.entries.push(Entry {
            name: name.to_string(),
            ttl,
            data,
        });
        self
    }

    /// Adds an A record.
    pub fn a(self, name: &str, ip: Ipv4Addr, ttl: u32) -> Zone {
        self.push(name, ttl, Data::A(ip))
    }

    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, ip: Ipv6Addr, ttl: u32) -> Zone {
        self.push(name, ttl, Data::Aaaa(ip))
    }

    /// Adds a CNAME record (a name with a CNAME can have no other record).
    pub fn cname(self, name: &str, target: &str, ttl: u32) -> Zone {
        self.push(name, ttl, Data::Cname(target.to_string()))
    }

    /// Adds one A record per address to `name`, all with the same TTL. Each adds 16 bytes to
    /// the answer: about 31 or more exceed 512 bytes, so a plain UDP query gets TC=1.
    pub fn many_a(self, name: &str, ips: impl IntoIterator<Item = Ipv4Addr>, ttl: u32) -> Zone {
        ips.into_iter().fold(self, |zone, ip| zone.a(name, ip, ttl))
    }

    /// The zone the DNS proxy tests use; see the table in the [module docs](crate::dns_server).
    pub fn standard() -> Zone {
        let wan = |last: u8| Ipv4Addr::new(198, 51, 100, last);
        Zone::new("test.")
            .a("ok.test.", crate::addr::WAN_HOST, 300)
            .a("short.test.", wan(21), 2)
            .aaaa("v6.test.", crate::addr::WAN_HOST6, 300)
            .cname("alias.test.", "mid.test.", 300)
            .cname("mid.test.", "end.test.", 30)
            .a("end.test.", wan(22), 120)
            .many_a("big.test.", (100..140).map(wan), 300)
            .a("wild.test.", wan(30), 300)
            .a("a.wild.test.", wan(31), 300)
            .a("a.b.wild.test.", wan(32), 300)
            .a("sub.test.", wan(40), 300)
            .a("a.sub.test.", wan(41), 300)
            .a("b.a.sub.test.", wan(42), 300)
            .a("c.b.a.sub.test.", wan(43), 300)
    }

    /// Builds hickory's in-memory zone, checking every name on the way.
    fn build(&self) -> Result<InMemoryZoneHandler, LabError> {
        let origin = absolute(&self.origin)?;
        let mut handler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            absolute("ns")?.append_domain(&origin).map_err(zone_err)?,
            absolute("hostmaster")?
                .append_domain(&origin)
                .map_err(zone_err)?,
            1,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        );
        let soa = Record::from_rdata(origin.clone(), SOA_TTL, RData::SOA(soa));
        let mut records = vec![soa];
        for e in &self.entries {
            let name = absolute(&e.name)?;
            if !origin.zone_of(&name) {
                return Err(LabError::Zone(format!(
                    "{name} is not in the zone {origin}"
                )));
            }
            let data = match &e.data {
                Data::A(ip) => RData::A(A(*ip)),
                Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
                Data::Cname(target) => RData::CNAME(CNAME(absolute(target)?)),
            };
            records.push(Record::from_rdata(name, e.ttl, data));
        }
        for record in records {
            let what = format!("{} {}", record.name, record.record_type());
            // Refused e.g. for a CNAME next to other data at the same name (RFC 1034 §3.6.2).
            if !handler.upsert_mut(record, 1) {
                return Err(LabError::Zone(format!(
                    "{what} conflicts with another record"
                )));
            }
        }
        Ok(handler)
    }
}

fn zone_err(e: impl std::fmt::Display) -> LabError {
    LabError::Zone(e.to_string())
}

fn absolute(name: &str) -> Result<Name, LabError> {
    let mut n = Name::from_ascii(name).map_err(|e| LabError::Zone(format!("{name:?}: {e}")))?;
    n.set_fqdn(true);
    Ok(n)
}

/// What the server has seen, shared between the handle and the server thread.
#[derive(Debug, Default)]
struct Stats {
    queries: AtomicU64,
    last_had_ecs: AtomicBool,
}

/// The catalog, plus counting: hickory calls this for every message that parsed.
struct Counting {
    catalog: Catalog,
    stats: Arc<Stats>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let ecs = request
            .edns
            .as_ref()
            .is_some_and(|edns| edns.option(EdnsCode::Subnet).is_some());
        // Recorded before answering, so a client holding the answer sees the count.
        self.stats.last_had_ecs.store(ecs, Ordering::SeqCst);
        self.stats.queries.fetch_add(1, Ordering::SeqCst);
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A running DNS server; dropping it (or [`DnsServer::stop`]) shuts it down, closes its
/// sockets and joins its thread.
#[derive(Debug)]
pub struct DnsServer {
    ns: String,
    stats: Arc<Stats>,
    /// Dropping the sender is the stop signal.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// DNS messages received so far (UDP and TCP, any type, counted before they are answered).
    /// Messages too broken to parse are not counted.
    pub fn queries(&self) -> u64 {
        self.stats.queries.load(Ordering::SeqCst)
    }

    /// Whether the most recent query carried an EDNS Client Subnet option (false before the
    /// first query).
    pub fn last_query_had_ecs(&self) -> bool {
        self.stats.last_had_ecs.load(Ordering::SeqCst)
    }

    /// Stops the server and waits for its thread (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has nowhere better to go than stderr here.
            if thread.join().is_err() {
                eprintln!("testlab: {}: DNS server thread panicked", self.ns);
            }
        }
    }
}

/// The four sockets, bound inside the namespace before the server is reported ready.
struct Sockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

/// Binds `[::]:53` v6-only next to `0.0.0.0:53`, so that nothing depends on the namespace's
/// `net.ipv6.bindv6only` and v4 clients see plain v4 peers.
fn bind_all() -> std::io::Result<Sockets> {
    let mut sockets = Sockets {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    let wildcards: [IpAddr; 2] = [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()];
    for ip in wildcards {
        let addr = SocketAddr::new(ip, DNS_PORT);
        for ty in [Type::DGRAM, Type::STREAM] {
            let proto = if ty == Type::DGRAM {
                Protocol::UDP
            } else {
                Protocol::TCP
            };
            let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
            if ip.is_ipv6() {
                sock.set_only_v6(true)?;
            }
            if ty == Type::STREAM {
                // A restarted server must not wait for the old connections' TIME_WAIT.
                sock.set_reuse_address(true)?;
            }
            // tokio adopts the sockets as they are: they must be non-blocking.
            sock.set_nonblocking(true)?;
            sock.bind(&addr.into())?;
            if ty == Type::STREAM {
                sock.listen(128)?;
                sockets.tcp.push(sock.into());
            } else {
                sockets.udp.push(sock.into());
            }
        }
    }
    Ok(sockets)
}

/// Everything that can fail, done on the server thread before it reports ready: enter the
/// namespace, bind, build the runtime, hand the sockets to hickory.
fn start(
    ns: &Netns,
    handler: Counting,
) -> Result<(tokio::runtime::Runtime, hickory_server::Server<Counting>), LabError> {
    let io = |what: &str| {
        let (ns, what) = (ns.name().to_string(), what.to_string());
        move |source| LabError::Io { ns, what, source }
    };
    ns.enter()?;
    let sockets = bind_all().map_err(io("binding the DNS server to port 53"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("building the DNS server's tokio runtime"))?;
    // Adopting std sockets and spawning hickory's tasks need a runtime context; the tasks
    // only run once the thread blocks on the runtime.
    let context = rt.enter();
    let mut server = hickory_server::Server::new(handler);
    for s in sockets.udp {
        let s = tokio::net::UdpSocket::from_std(s).map_err(io("adopting a UDP socket"))?;
        server.register_socket(s);
    }
    for l in sockets.tcp {
        let l = tokio::net::TcpListener::from_std(l).map_err(io("adopting a TCP listener"))?;
        server.register_listener(l, TCP_IDLE, 64);
    }
    drop(context);
    Ok((rt, server))
}

impl Netns {
    /// Starts an authoritative DNS server for `zone` in this namespace, on UDP and TCP port
    /// 53 of every address (`0.0.0.0` and `[::]`). Returns once it is bound and serving.
    ///
    /// Answers leave from the address the routing table picks, as with [`Netns::udp_echo`]:
    /// fine for the lab's WAN host, which has one address per family.
    pub fn dns_server(&self, zone: Zone) -> Result<DnsServer, LabError> {
        let zone_handler = zone.build()?;
        let mut catalog = Catalog::new();
        catalog.upsert(zone_handler.origin().clone(), vec![Arc::new(zone_handler)]);
        let stats = Arc::new(Stats::default());
        let handler = Counting {
            catalog,
            stats: stats.clone(),
        };

        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), LabError>>(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dns:{}", self.name()))
            .spawn(move || {
                let (rt, mut server) = match start(&me, handler) {
                    Ok(started) => started,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let stopped = rt.block_on(async {
                    // Err(RecvError) means the handle was dropped: the usual way to stop.
                    let _ = stop_rx.await;
                    // Ends the accept/receive loops; open TCP connections go with them.
                    server.shutdown_gracefully().await
                });
                if let Err(e) = stopped {
                    eprintln!("testlab: {}: DNS server: {e}", me.name());
                }
                // Dropping `server` and `rt` here closes every socket before the join returns.
            })
            .map_err(|source| LabError::Thread {
                ns: self.name().to_string(),
                source,
            })?;

        let server = DnsServer {
            ns: self.name().to_string(),
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(server),
            // Dropping `server` joins the thread, which has already returned.
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let mut server = server;
                match server.thread.take().map(JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => Err(LabError::Io {
                        ns: self.name().to_string(),
                        what: "starting the DNS server".to_string(),
                        source: std::io::Error::other("server thread exited before binding"),
                    }),
                }
            }
        }
    }
}

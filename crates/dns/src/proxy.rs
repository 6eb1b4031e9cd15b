//! The proxy's socket side: UDP and TCP listeners on `dns.listen`, forwarding to the upstreams
//! (the next one on timeout, TC=1 asked again over TCP), the per-client rate limit, and the
//! rule that no answer leaves before the committer has made what it allows effective.

use crate::committer::Committer;
use crate::matcher::Matcher;
use crate::stats::Stats;
use crate::wire::{self, ClientQuery, Rejected, Reply};
use crate::RateLimiter;
use hickory_proto::op::ResponseCode;
use policy::{Policy, Unlisted};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// How long one upstream gets to answer before the next one is asked.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Queries being answered at once; beyond this, new UDP queries are dropped (and counted)
/// rather than queued without bound.
const MAX_IN_FLIGHT: usize = 4096;
/// TCP clients served at once; later ones wait in the kernel's accept queue.
const MAX_TCP_CLIENTS: usize = 256;
/// A TCP client silent this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Idle upstream sockets kept per upstream.
const MAX_POOLED: usize = 256;
/// Largest UDP message read; anything longer arrives cut short and fails to decode.
const UDP_BUF: usize = 4096;
/// Socket receive buffer for the listeners, to ride out bursts.
const RCVBUF: usize = 4 << 20;

/// What the proxy needs to know besides the rules.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to serve on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// Tried in order, starting from the last one that answered.
    pub upstreams: Vec<SocketAddr>,
    pub upstream_timeout: Duration,
    pub qps_per_client: u32,
    pub unlisted: Unlisted,
}

impl Config {
    /// The policy's settings, with the addresses the caller resolved (`dns.listen` and
    /// `upstream_dns` may be left to defaults the policy alone cannot know).
    pub fn new(policy: &Policy, listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> Config {
        Config {
            listen,
            upstreams,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            qps_per_client: policy.defaults.dns_qps_per_client,
            unlisted: policy.dns.unlisted,
        }
    }
}

/// A bound proxy, ready to [`serve`](Proxy::serve).
pub struct Proxy {
    shared: Arc<Shared>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<Arc<TcpListener>>,
}

struct Shared {
    config: Config,
    matcher: Arc<Matcher>,
    committer: Committer,
    limiter: Mutex<RateLimiter>,
    /// The upstream to ask first: the last one that answered.
    preferred: AtomicUsize,
    /// Idle UDP sockets connected to each upstream (by index), reused by later queries.
    pools: Vec<Mutex<Vec<UdpSocket>>>,
    stats: Arc<Stats>,
    epoch: Instant,
    in_flight: Arc<Semaphore>,
}

impl Proxy {
    /// Binds every listen address (UDP and TCP). Call inside a tokio runtime.
    pub fn bind(
        config: Config,
        matcher: Arc<Matcher>,
        committer: Committer,
        stats: Arc<Stats>,
    ) -> io::Result<Proxy> {
        if config.upstreams.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no upstream DNS server: set defaults.upstream_dns or a nameserver in /etc/resolv.conf",
            ));
        }
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &addr in &config.listen {
            let ctx =
                |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
            let sock = bind_udp(addr).map_err(ctx)?;
            // TCP on the same port, also when the config left the choice to the kernel.
            tcp.push(Arc::new(bind_tcp(sock.local_addr()?).map_err(ctx)?));
            udp.push(Arc::new(sock));
        }
        Ok(Proxy {
            shared: Shared::new(config, matcher, committer, stats),
            udp,
            tcp,
        })
    }

    /// The same sockets with new rules and settings (a reload). Queries already in flight
    /// finish under the old ones. Fails, changing nothing, if `config` listens elsewhere.
    pub fn reconfigure(
        &mut self,
        config: Config,
        matcher: Arc<Matcher>,
        committer: Committer,
        stats: Arc<Stats>,
    ) -> Result<(), Config> {
        if config.listen != self.shared.config.listen {
            return Err(config);
        }
        self.shared = Shared::new(config, matcher, committer, stats);
        Ok(())
    }

    /// The bound addresses (with the ports chosen, where the config said 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serves until a listener fails for good (it does not on its own: drop the future to
    /// stop). The sockets stay bound meanwhile, so queries that arrive before the proxy is
    /// served again (after [`reconfigure`](Proxy::reconfigure)) wait in them.
    pub fn serve(&self) -> impl std::future::Future<Output = io::Result<()>> + use<> {
        let mut tasks = JoinSet::new();
        for sock in &self.udp {
            tasks.spawn(serve_udp(self.shared.clone(), sock.clone()));
        }
        for listener in &self.tcp {
            tasks.spawn(serve_tcp(self.shared.clone(), listener.clone()));
        }
        async move {
            match tasks.join_next().await {
                Some(Ok(r)) => r,
                Some(Err(e)) => Err(io::Error::other(e)),
                None => Ok(()),
            }
        }
    }
}

impl Shared {
    fn new(
        config: Config,
        matcher: Arc<Matcher>,
        committer: Committer,
        stats: Arc<Stats>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            limiter: Mutex::new(RateLimiter::new(config.qps_per_client)),
            pools: config.upstreams.iter().map(|_| Mutex::default()).collect(),
            config,
            matcher,
            committer,
            preferred: AtomicUsize::new(0),
            stats,
            epoch: Instant::now(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer only means drops under bursts.
    let _ = s.set_recv_buffer_size(RCVBUF);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // A restarted proxy must get its port back while old connections sit in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

async fn serve_udp(shared: Arc<Shared>, sock: Arc<UdpSocket>) -> io::Result<()> {
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // Errors queued on an unconnected UDP socket concern earlier sends; carry on.
            Err(e) if e.kind() != io::ErrorKind::OutOfMemory => {
                tracing::debug!(error = %e, "DNS UDP receive");
                continue;
            }
            Err(e) => return Err(e),
        };
        let received = Instant::now();
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            Stats::add(&shared.stats.overload_drops);
            continue;
        };
        let query = buf[..n].to_vec();
        let (shared, sock) = (shared.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(reply) = shared.answer(&query, peer.ip(), true).await {
                match sock.send_to(&reply, peer).await {
                    Ok(_) => shared.stats.lookup.observe(received.elapsed()),
                    Err(e) => tracing::debug!(error = %e, %peer, "DNS UDP reply"),
                }
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: Arc<TcpListener>) -> io::Result<()> {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.serve_tcp_client(stream, peer).await {
                tracing::debug!(error = %e, %peer, "DNS TCP client");
            }
            drop(permit);
        });
    }
}

impl Shared {
    /// Answers one TCP client's queries, one after another, until it closes or goes quiet.
    async fn serve_tcp_client(&self, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        loop {
            let len = match timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            };
            let mut query = vec![0u8; len];
            timeout(TCP_IDLE, stream.read_exact(&mut query))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query cut short"))??;
            let received = Instant::now();
            let Some(reply) = self.answer(&query, peer.ip(), false).await else {
                // A malformed message on a stream: the framing may be lost too, so hang up.
                return Ok(());
            };
            write_framed(&mut stream, &reply).await?;
            self.stats.lookup.observe(received.elapsed());
        }
    }

    /// The reply for one client message, or `None` to drop it.
    async fn answer(&self, bytes: &[u8], client: IpAddr, over_udp: bool) -> Option<Vec<u8>> {
        let stats = &self.stats;
        let q = match wire::parse_query(bytes) {
            Ok(q) => q,
            Err(Rejected::Malformed(e)) => {
                Stats::add(&stats.malformed_queries);
                tracing::debug!(error = %e, %client, "malformed DNS query dropped");
                return None;
            }
            Err(Rejected::Refused(r)) => {
                stats.outcome(r.rcode);
                return Some(r.reply);
            }
        };
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| l.allow(client, now_ms))
            .unwrap_or(false);
        if !allowed {
            Stats::add(&stats.rate_limited);
            return Some(wire::error_reply(&q, ResponseCode::ServFail));
        }
        if self.config.unlisted == Unlisted::Nxdomain
            && !q.name.as_deref().is_some_and(|n| self.matcher.is_listed(n))
        {
            Stats::add(&stats.blocked);
            return Some(wire::error_reply(&q, ResponseCode::NXDomain));
        }
        let Some(reply) = self.forward(&q).await else {
            stats.outcome(ResponseCode::ServFail);
            return Some(wire::error_reply(&q, ResponseCode::ServFail));
        };
        if !reply.answer.records.is_empty() && reply.names().any(|n| self.matcher.is_listed(n)) {
            if let Err(e) = self.committer.learn(reply.answer).await {
                tracing::debug!(error = %e, "answer withheld");
                stats.outcome(ResponseCode::ServFail);
                return Some(wire::error_reply(&q, ResponseCode::ServFail));
            }
        }
        stats.outcome(reply.rcode);
        let mut bytes = reply.bytes;
        wire::set_id(&mut bytes, q.id);
        if over_udp && bytes.len() > q.udp_limit {
            bytes = wire::truncated_reply(&q, &bytes);
        }
        Some(bytes)
    }

    /// Asks the upstreams in turn, from the preferred one, until one gives a usable reply.
    async fn forward(&self, q: &ClientQuery) -> Option<Reply> {
        let ups = &self.config.upstreams;
        let start = self.preferred.load(Relaxed);
        for i in 0..ups.len() {
            let idx = (start + i) % ups.len();
            let up = ups[idx];
            let id: u16 = rand::random();
            let mut msg = q.forward.clone();
            wire::set_id(&mut msg, id);
            match self.exchange_udp(idx, &msg, id, q).await {
                Ok(reply) => {
                    if idx != start {
                        self.preferred.store(idx, Relaxed);
                    }
                    if !reply.truncated {
                        return Some(reply);
                    }
                    Stats::add(&self.stats.truncated_upgraded_to_tcp);
                    return match self.exchange_tcp(up, &msg, id, q).await {
                        Ok(full) => Some(full),
                        Err(e) => {
                            // The truncated reply is still true; a TCP client gets it as is
                            // and a UDP one retries over TCP.
                            Stats::add(&self.stats.upstream_failures);
                            tracing::warn!(upstream = %up, error = %e, "DNS over TCP upstream");
                            Some(reply)
                        }
                    };
                }
                Err(e) => {
                    Stats::add(&self.stats.upstream_failures);
                    tracing::warn!(upstream = %up, error = %e, "DNS upstream failed, trying the next");
                }
            }
        }
        None
    }

    /// One query to one upstream over UDP. Sockets are reused from a pool, each bound once to
    /// a random port: creating one per query cost about a quarter of the proxy's CPU. Replies
    /// are matched by id and question, so a late reply to an earlier query on the same socket
    /// is ignored like any other stray message.
    async fn exchange_udp(
        &self,
        idx: usize,
        msg: &[u8],
        id: u16,
        q: &ClientQuery,
    ) -> io::Result<Reply> {
        let up = self.config.upstreams[idx];
        let pooled = self.pools[idx].lock().ok().and_then(|mut p| p.pop());
        let sock = match pooled {
            Some(s) => s,
            None => {
                let local: SocketAddr = if up.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local).await?;
                s.connect(up).await?;
                s
            }
        };
        sock.send(msg).await?;
        let deadline = tokio::time::Instant::now() + self.config.upstream_timeout;
        loop {
            // As large as the client allows: an upstream honours the size the query advertises.
            let mut buf = Vec::with_capacity(q.udp_limit);
            // On a timeout or an error the socket is dropped, not pooled.
            tokio::time::timeout_at(deadline, sock.recv_buf(&mut buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
            match wire::parse_reply(buf, id, q) {
                Ok(reply) => {
                    if let Ok(mut pool) = self.pools[idx].lock() {
                        if pool.len() < MAX_POOLED {
                            pool.push(sock);
                        }
                    }
                    return Ok(reply);
                }
                Err(e) => {
                    Stats::add(&self.stats.malformed_replies);
                    tracing::debug!(upstream = %up, error = %e, "DNS reply ignored");
                }
            }
        }
    }

    /// The same query over TCP, for answers too large for UDP.
    async fn exchange_tcp(
        &self,
        up: SocketAddr,
        msg: &[u8],
        id: u16,
        q: &ClientQuery,
    ) -> io::Result<Reply> {
        let work = async {
            let mut s = TcpStream::connect(up).await?;
            let _ = s.set_nodelay(true);
            write_framed(&mut s, msg).await?;
            let len = usize::from(s.read_u16().await?);
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await?;
            wire::parse_reply(buf, id, q).map_err(|e| {
                Stats::add(&self.stats.malformed_replies);
                io::Error::new(io::ErrorKind::InvalidData, e)
            })
        };
        timeout(self.config.upstream_timeout, work)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
    }
}

/// Writes one DNS-over-TCP message (two-byte length, then the message) in one send.
async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    s.write_all(&framed).await
}

//! Real traffic from Rust: TCP/UDP servers and TCP/UDP/ICMP probes inside a namespace.
//! Servers run on background threads until their [`Server`] guard drops; probes say what happened.

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::error::LabError;
use crate::netns::Netns;

/// How often server threads wake up to check their stop flag.
const POLL: Duration = Duration::from_millis(50);
/// How long a greeting connection waits for the client to close after the server's reply.
const DRAIN: Duration = Duration::from_secs(2);
/// UDP and ICMP probes resend this often until a reply arrives or the timeout expires.
const RESEND: Duration = Duration::from_millis(250);
/// Per-attempt timeout of [`Netns::tcp_probe_loop`].
pub const LOOP_TIMEOUT: Duration = Duration::from_millis(300);
/// Pause between attempts of [`Netns::tcp_probe_loop`].
pub const LOOP_PAUSE: Duration = Duration::from_millis(5);
/// How many failures [`ProbeStats::first_failures`] keeps.
pub const MAX_RECORDED_FAILURES: usize = 16;

/// The payload [`Netns::udp_probe`] sends.
pub const UDP_PROBE_PAYLOAD: &[u8] = b"ward-lab udp probe\n";

/// What a probe observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// TCP handshake completed / a UDP reply / an ICMP echo reply came back.
    /// `seen_as` is the client address the server reported (TCP and UDP servers of this
    /// crate write it as the first line), `None` for ping or a server that said nothing.
    Connected { seen_as: Option<SocketAddr> },
    /// Actively refused: TCP RST or ICMP port unreachable.
    Refused,
    /// No answer within the timeout (e.g. silently dropped).
    TimedOut,
    /// Rejected with an ICMP unreachable other than port-unreachable (host/net unreachable,
    /// admin-prohibited: EHOSTUNREACH for v4, EACCES "Permission denied" for v6), no route,
    /// or dropped by the sender's own output hook (EPERM). Carries the OS error text.
    Unreachable(String),
}

impl Probe {
    /// True for [`Probe::Connected`].
    pub fn ok(&self) -> bool {
        matches!(self, Probe::Connected { .. })
    }

    /// The address the server saw the client as, if it said.
    pub fn seen_as(&self) -> Option<SocketAddr> {
        match self {
            Probe::Connected { seen_as } => *seen_as,
            _ => None,
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Connected { seen_as: Some(a) } => write!(f, "connected (seen as {a})"),
            Probe::Connected { seen_as: None } => write!(f, "connected"),
            Probe::Refused => write!(f, "refused"),
            Probe::TimedOut => write!(f, "timed out"),
            Probe::Unreachable(why) => write!(f, "unreachable ({why})"),
        }
    }
}

/// Results of [`Netns::tcp_probe_loop`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    /// The first [`MAX_RECORDED_FAILURES`] failures, with their time since the loop started.
    /// Harness errors (not network outcomes) appear as `Unreachable("harness error: …")`.
    pub first_failures: Vec<(Duration, Probe)>,
    /// Longest stretch from a failed attempt to the next success (or to the end).
    pub longest_outage: Duration,
    /// First harness error (e.g. the namespace could not be entered), if any.
    pub error: Option<String>,
    /// How long the loop ran.
    pub elapsed: Duration,
}

impl ProbeStats {
    /// At least one success, no failures, no harness error.
    pub fn clean(&self) -> bool {
        self.successes > 0 && self.failures == 0 && self.error.is_none()
    }
}

/// A server running on background threads; dropping it stops and joins them.
#[derive(Debug)]
pub struct Server {
    ns: String,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// The bound address (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Connections accepted (TCP) or datagrams received (UDP) so far. UDP probes resend every
    /// 250 ms until answered, so one probe may count more than once.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Stops the server and waits for its threads (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[derive(Clone, Copy)]
enum TcpKind {
    /// Write "peer\n", close.
    Greet,
    /// Echo everything back until the client closes.
    Echo,
}

/// IPv4-mapped IPv6 peers (from a dual-stack `[::]` socket) are shown as plain IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

fn parse_seen_as(buf: &[u8]) -> Option<SocketAddr> {
    let line = buf.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

fn is_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Maps an OS error to a network outcome; `None` means a harness problem.
fn classify(e: io::Error) -> io::Result<Probe> {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Ok(Probe::Refused),
        TimedOut | WouldBlock => Ok(Probe::TimedOut),
        HostUnreachable | NetworkUnreachable | PermissionDenied => {
            Ok(Probe::Unreachable(e.to_string()))
        }
        _ => Err(e),
    }
}

fn io_err(ns: &str, what: String) -> impl FnOnce(io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        ns: ns.to_string(),
        what,
        source,
    }
}

fn spawn_named<F: FnOnce() + Send + 'static>(
    ns: &str,
    name: String,
    f: F,
) -> Result<JoinHandle<()>, LabError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|source| LabError::Thread {
            ns: ns.to_string(),
            source,
        })
}

/// Turns `IP_RECVERR` / `IPV6_RECVERR` on or off for a socket connecting to `dst`.
fn set_recv_err(sock: &Socket, dst: &SocketAddr, on: bool) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    match dst {
        SocketAddr::V4(_) => setsockopt(sock, sockopt::Ipv4RecvErr, &on),
        SocketAddr::V6(_) => setsockopt(sock, sockopt::Ipv6RecvErr, &on),
    }
    .map_err(io::Error::from)
}

/// TCP connect + read the server's first line, in the calling thread's namespace.
/// `timeout` bounds the connect and, separately, the wait for the server's reply.
pub(crate) fn tcp_probe_here(dst: SocketAddr, timeout: Duration) -> io::Result<Probe> {
    let timeout = timeout.max(Duration::from_millis(1));
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    // Between namespaces an ICMP error for our SYN can be processed while connect() still
    // holds the socket lock (the whole veth/forward/reject path runs in the same softirq).
    // The kernel then only records a *soft* error and waits for the SYN retransmit (1 s).
    // With RECVERR the error is also queued, poll() reports POLLERR at once, and SO_ERROR
    // hands out the soft error: refusals are seen immediately.
    set_recv_err(&sock, &dst, true)?;
    match sock.connect_timeout(&SockAddr::from(dst), timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            return match sock.take_error() {
                Ok(Some(soft)) => classify(soft),
                _ => Ok(Probe::TimedOut),
            }
        }
        Err(e) => return classify(e),
    }
    // Connected: from now on ICMP errors must not turn into hard errors.
    set_recv_err(&sock, &dst, false)?;
    let mut stream: TcpStream = sock.into();
    // Tell the server we have nothing to say: an echo server then closes, a greeting server
    // writes its line and closes.
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || buf.contains(&b'\n') || buf.len() > 4096 {
            break;
        }
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break, // timed out or reset after connecting: still connected
        }
    }
    Ok(Probe::Connected {
        seen_as: parse_seen_as(&buf),
    })
}

fn udp_probe_here(dst: SocketAddr, timeout: Duration) -> io::Result<Probe> {
    let bind: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind)?;
    if let Err(e) = sock.connect(dst) {
        return classify(e);
    }
    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Probe::TimedOut);
        }
        if now >= next_send {
            if let Err(e) = sock.send(UDP_PROBE_PAYLOAD) {
                return classify(e);
            }
            next_send = now + RESEND;
        }
        let wait = deadline.min(next_send).saturating_duration_since(now);
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                return Ok(Probe::Connected {
                    seen_as: parse_seen_as(&buf[..n]),
                })
            }
            Err(e) if is_wait(&e) => continue,
            Err(e) => return classify(e),
        }
    }
}

static PING_SEQ: AtomicU16 = AtomicU16::new(1);

fn ping_socket(dst: IpAddr) -> io::Result<Socket> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Ping sockets are gated by a per-namespace sysctl; open it up in this namespace.
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647\n")?;
            Socket::new(domain, Type::DGRAM, Some(proto))
        }
        other => other,
    }
}

fn ping_here(dst: IpAddr, timeout: Duration) -> io::Result<Probe> {
    let sock = ping_socket(dst)?;
    if let Err(e) = sock.connect(&SockAddr::from(SocketAddr::new(dst, 0))) {
        return classify(e);
    }
    let seq = PING_SEQ.fetch_add(1, Ordering::Relaxed);
    let nonce = (std::process::id() as u64) << 16 | seq as u64;
    let (request, reply) = match dst {
        IpAddr::V4(_) => (8u8, 0u8),
        IpAddr::V6(_) => (128u8, 129u8),
    };
    // type, code, checksum (kernel fills it), identifier (kernel sets it), sequence, payload.
    let mut pkt = vec![request, 0, 0, 0, 0, 0];
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"ward-lab");
    pkt.extend_from_slice(&nonce.to_be_bytes());

    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(Probe::TimedOut);
        }
        if now >= next_send {
            if let Err(e) = sock.send(&pkt) {
                return classify(e);
            }
            next_send = now + RESEND;
        }
        let wait = deadline.min(next_send).saturating_duration_since(now);
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match (&sock).read(&mut buf) {
            Ok(n) => {
                if n == pkt.len() && buf[0] == reply && buf[6..n] == pkt[6..] {
                    return Ok(Probe::Connected { seen_as: None });
                }
            }
            Err(e) if is_wait(&e) => continue,
            Err(e) => return classify(e),
        }
    }
}

impl Netns {
    fn probe_in_ns<F>(&self, what: String, f: F) -> Result<Probe, LabError>
    where
        F: FnOnce() -> io::Result<Probe> + Send + 'static,
    {
        self.run(f)?.map_err(io_err(self.name(), what))
    }

    /// TCP-connects to `dst` from this namespace and reads the server's first line
    /// (a [`Netns::tcp_server`] writes the client address it saw).
    ///
    /// `timeout` bounds the handshake and, separately, the wait for the server's reply.
    pub fn tcp_probe(&self, dst: SocketAddr, timeout: Duration) -> Result<Probe, LabError> {
        self.probe_in_ns(format!("TCP probe to {dst}"), move || {
            tcp_probe_here(dst, timeout)
        })
    }

    /// Sends [`UDP_PROBE_PAYLOAD`] to `dst` (resending every 250 ms) and waits for any reply;
    /// `seen_as` is parsed from the reply's first line (as [`Netns::udp_echo`] writes it).
    pub fn udp_probe(&self, dst: SocketAddr, timeout: Duration) -> Result<Probe, LabError> {
        self.probe_in_ns(format!("UDP probe to {dst}"), move || {
            udp_probe_here(dst, timeout)
        })
    }

    /// ICMP / ICMPv6 echo from an unprivileged "ping" socket (`SOCK_DGRAM`, `IPPROTO_ICMP*`).
    /// If the namespace's `net.ipv4.ping_group_range` forbids it, it is widened (in that
    /// namespace only). `Connected` means a matching echo reply came back.
    pub fn ping(&self, dst: IpAddr, timeout: Duration) -> Result<Probe, LabError> {
        self.probe_in_ns(format!("ping to {dst}"), move || ping_here(dst, timeout))
    }

    /// TCP server in this namespace: for each connection writes the client's address as
    /// `"ip:port\n"` (`SocketAddr` display form, IPv4-mapped addresses shown as IPv4) and closes.
    pub fn tcp_server(&self, addr: SocketAddr) -> Result<Server, LabError> {
        self.tcp_serve(addr, TcpKind::Greet)
    }

    /// TCP server in this namespace that echoes everything back until the client closes.
    pub fn tcp_echo_server(&self, addr: SocketAddr) -> Result<Server, LabError> {
        self.tcp_serve(addr, TcpKind::Echo)
    }

    fn tcp_serve(&self, addr: SocketAddr, kind: TcpKind) -> Result<Server, LabError> {
        let ns = self.name().to_string();
        let listener = self
            .run(move || TcpListener::bind(addr))?
            .map_err(io_err(&ns, format!("binding a TCP server to {addr}")))?;
        let local = listener
            .local_addr()
            .map_err(io_err(&ns, format!("getsockname of TCP server on {addr}")))?;
        // Linux honours SO_RCVTIMEO on accept(): the loop wakes up to look at the stop flag.
        SockRef::from(&listener)
            .set_read_timeout(Some(POLL))
            .map_err(io_err(&ns, format!("setting accept timeout on {addr}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2, ns2) = (stop.clone(), served.clone(), ns.clone());
        let handle = spawn_named(&ns, format!("tcp:{local}"), move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        served2.fetch_add(1, Ordering::SeqCst);
                        let stop3 = stop2.clone();
                        let spawned = std::thread::Builder::new()
                            .spawn(move || serve_tcp_conn(stream, canonical(peer), kind, &stop3));
                        match spawned {
                            Ok(h) => conns.push(h),
                            // The connection is closed; the client sees a reset.
                            Err(e) => eprintln!("testlab: {ns2}: no thread for connection: {e}"),
                        }
                        conns.retain(|h| !h.is_finished());
                    }
                    Err(e) if is_wait(&e) => {}
                    Err(_) => std::thread::sleep(POLL), // e.g. EMFILE, ECONNABORTED
                }
            }
            for h in conns {
                let _ = h.join();
            }
        })?;
        Ok(Server {
            ns,
            local,
            stop,
            served,
            handle: Some(handle),
        })
    }

    /// UDP server in this namespace: answers each datagram with `"<peer ip:port>\n"` followed
    /// by the payload. Replies leave from the address the routing table picks; bind to a
    /// specific address (not `0.0.0.0`) if you need replies from a secondary address.
    pub fn udp_echo(&self, addr: SocketAddr) -> Result<Server, LabError> {
        let ns = self.name().to_string();
        let sock = self
            .run(move || UdpSocket::bind(addr))?
            .map_err(io_err(&ns, format!("binding a UDP server to {addr}")))?;
        let local = sock
            .local_addr()
            .map_err(io_err(&ns, format!("getsockname of UDP server on {addr}")))?;
        sock.set_read_timeout(Some(POLL))
            .map_err(io_err(&ns, format!("setting read timeout on {addr}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        let handle = spawn_named(&ns, format!("udp:{local}"), move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::SeqCst) {
                match sock.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        served2.fetch_add(1, Ordering::SeqCst);
                        let mut reply = format!("{}\n", canonical(peer)).into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = sock.send_to(&reply, peer);
                    }
                    Err(e) if is_wait(&e) => {}
                    Err(_) => std::thread::sleep(POLL), // e.g. ECONNREFUSED from an old reply
                }
            }
        })?;
        Ok(Server {
            ns,
            local,
            stop,
            served,
            handle: Some(handle),
        })
    }

    /// Keeps TCP-probing `dst` (300 ms timeout per attempt, 5 ms apart) from this namespace
    /// until `stop` is set; for checking that a ruleset replacement never drops traffic.
    pub fn tcp_probe_loop(&self, dst: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<ProbeStats> {
        let ns = self.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut stats = ProbeStats::default();
            if let Err(e) = ns.enter() {
                stats.error = Some(e.to_string());
                return stats;
            }
            let mut outage_start: Option<Instant> = None;
            while !stop.load(Ordering::SeqCst) {
                stats.attempts += 1;
                let t = Instant::now();
                let probe = match tcp_probe_here(dst, LOOP_TIMEOUT) {
                    Ok(p) => p,
                    Err(e) => {
                        let msg =
                            format!("harness error: TCP probe to {dst} in {}: {e}", ns.name());
                        stats.error.get_or_insert_with(|| msg.clone());
                        Probe::Unreachable(msg)
                    }
                };
                if probe.ok() {
                    stats.successes += 1;
                    if let Some(s) = outage_start.take() {
                        stats.longest_outage = stats.longest_outage.max(t - s);
                    }
                } else {
                    stats.failures += 1;
                    outage_start.get_or_insert(t);
                    if stats.first_failures.len() < MAX_RECORDED_FAILURES {
                        stats.first_failures.push((t - start, probe));
                    }
                }
                std::thread::sleep(LOOP_PAUSE);
            }
            if let Some(s) = outage_start {
                stats.longest_outage = stats.longest_outage.max(s.elapsed());
            }
            stats.elapsed = start.elapsed();
            stats
        })
    }
}

fn serve_tcp_conn(mut stream: TcpStream, peer: SocketAddr, kind: TcpKind, stop: &AtomicBool) {
    let _ = stream.set_write_timeout(Some(DRAIN));
    let _ = stream.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 16384];
    match kind {
        TcpKind::Greet => {
            let _ = stream.write_all(format!("{peer}\n").as_bytes());
            let _ = stream.shutdown(Shutdown::Write);
            // Drain until the client closes, so that unread client data does not turn our
            // close into a RST.
            let until = Instant::now() + DRAIN;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if is_wait(&e) => {}
                    Err(_) => break,
                }
            }
        }
        TcpKind::Echo => {
            while !stop.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if is_wait(&e) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

//! The kernel's NFLOG group as a stream of logged packets: subscribes over nfnetlink and
//! parses each message (prefix, time, interfaces, conntrack entry, IP and L4 headers).
//!
//! Written by hand on `netlink`'s helpers: libnetfilter_log would be one more C library loaded
//! at run time for the dozen attributes read here. Every length is checked before use; a bad
//! message or payload is a [`Malformed`] the caller counts, never a panic.

use crate::conntrack::{self, Entry, Tuple, L4};
use crate::netlink::{self, parse_attrs, Socket};
use nix::errno::Errno;
use nix::sys::socket::{recv, setsockopt, sockopt, MsgFlags};
use smoltcp::wire::{
    Icmpv4Message, Icmpv4Packet, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet,
    Ipv6ExtHeader, Ipv6FragmentHeader, Ipv6Packet, TcpPacket, UdpPacket, UDP_HEADER_LEN,
};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

// From linux/netfilter/nfnetlink.h and nfnetlink_log.h.
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULA_CFG_FLAGS: u16 = 6;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULNL_CFG_F_CONNTRACK: u16 = 0x0004;
const NFULA_PACKET_HDR: usize = 1;
const NFULA_TIMESTAMP: usize = 3;
const NFULA_IFINDEX_INDEV: usize = 4;
const NFULA_IFINDEX_OUTDEV: usize = 5;
const NFULA_PAYLOAD: usize = 9;
const NFULA_PREFIX: usize = 10;
const NFULA_CT: usize = 18;
const NFULA_MAX: usize = 22;
const NLMSG_NOOP: u16 = 1;
const AF_UNSPEC: u8 = 0;

/// Bytes of each packet copied from the network header on: IPv4 (up to 60) or IPv6 with a
/// few extension headers, then a TCP header with options (up to 60).
pub const COPY_RANGE: u32 = 256;
/// How long the kernel holds messages to send several in one datagram (1/100 s), and how
/// many at most: logged packets reach the reader within 0.1 s.
const FLUSH_TIMEOUT: u32 = 10;
const QUEUE_THRESHOLD: u32 = 32;
/// The kernel's buffer for one datagram (it accepts up to 128 KiB).
const KERNEL_BUFFER: u32 = 64 * 1024;
/// Room for bursts between the reader's wake-ups: several seconds at the compiled rate limit.
const RECEIVE_BUFFER: usize = 4 << 20;
/// How long `recv` waits for a datagram before returning, so the caller can check for stop.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);

/// Why a message or its packet could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot subscribe to NFLOG group {group}: {reason}")]
    Subscribe { group: u16, reason: String },
    /// The socket's receive buffer overflowed: the kernel dropped messages (how many, it does
    /// not say). Receiving goes on.
    #[error("NFLOG messages lost: the receive buffer overflowed")]
    Overrun,
    #[error("NFLOG receive: {0}")]
    Receive(nix::Error),
}

/// One logged packet. Borrowed from the datagram it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The log statement's prefix, without its terminating NUL.
    pub prefix: &'a [u8],
    /// When the packet arrived, for packets logged before routing decided its way out
    /// (prerouting, input, forward); the kernel sends none for locally generated ones.
    pub timestamp: Option<SystemTime>,
    /// The hook that logged it (`NF_INET_*`: 0 prerouting, 1 input, 2 forward, 3 output,
    /// 4 postrouting).
    pub hook: u8,
    /// Ethertype of the packet (0x0800 IPv4, 0x86dd IPv6).
    pub hw_protocol: u16,
    pub in_ifindex: Option<u32>,
    pub out_ifindex: Option<u32>,
    /// The packet from its network header on, at most [`COPY_RANGE`] bytes of it.
    pub payload: &'a [u8],
    /// The conntrack entry, when the kernel can attach it (CONFIG_NETFILTER_NETLINK_GLUE_CT).
    pub conntrack: Option<Entry>,
}

impl Packet<'_> {
    /// The IP and L4 headers of the payload as a flow tuple.
    pub fn headers(&self) -> Result<Tuple, Malformed> {
        headers(self.payload)
    }
}

/// Parses the packets of one datagram from the NFLOG socket. Acknowledgements and the end
/// of a multi-message datagram are passed over; anything else that is not a packet message
/// is malformed here.
pub fn packets(datagram: &[u8]) -> impl Iterator<Item = Result<Packet<'_>, Malformed>> {
    netlink::messages(datagram).filter_map(|m| match m {
        Err(e) => Some(Err(e)),
        Ok(m) if m.ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET => Some(packet(m.body)),
        Ok(m) if m.ty == netlink::NLMSG_DONE || m.ty == NLMSG_NOOP => None,
        Ok(m) if m.ty == netlink::NLMSG_ERROR && m.body.get(..4) == Some(&[0; 4]) => None,
        Ok(_) => Some(Err(Malformed("unexpected message type"))),
    })
}

/// A packet message's body: nfgenmsg, then attributes.
fn packet(body: &[u8]) -> Result<Packet<'_>, Malformed> {
    let attrs = body
        .get(netlink::NFGENMSG_LEN..)
        .ok_or(Malformed("packet message without its header"))?;
    let a = parse_attrs::<NFULA_MAX>(attrs)?;
    // struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
    let hdr = match a[NFULA_PACKET_HDR] {
        Some(h) if h.len() >= 4 => h,
        _ => return Err(Malformed("packet message without its packet header")),
    };
    let prefix = a[NFULA_PREFIX].map_or(&[][..], |p| {
        p.iter().position(|&b| b == 0).map_or(p, |end| &p[..end])
    });
    // struct nfulnl_msg_packet_timestamp { __be64 sec; __be64 usec; }
    let timestamp = match netlink::be::<16>(a[NFULA_TIMESTAMP])? {
        None => None,
        Some(ts) => {
            let (sec, usec) = ts.split_at(8);
            let sec = u64::from_be_bytes(sec.try_into().unwrap_or_default());
            let usec = u64::from_be_bytes(usec.try_into().unwrap_or_default());
            if usec >= 1_000_000 {
                return Err(Malformed("timestamp microseconds out of range"));
            }
            let at = SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(sec))
                .and_then(|t| t.checked_add(Duration::from_micros(usec)))
                .ok_or(Malformed("timestamp out of range"))?;
            Some(at)
        }
    };
    let ifindex = |i: usize| Ok::<_, Malformed>(netlink::be::<4>(a[i])?.map(u32::from_be_bytes));
    Ok(Packet {
        prefix,
        timestamp,
        hook: hdr[2],
        hw_protocol: u16::from_be_bytes([hdr[0], hdr[1]]),
        in_ifindex: ifindex(NFULA_IFINDEX_INDEV)?,
        out_ifindex: ifindex(NFULA_IFINDEX_OUTDEV)?,
        payload: a[NFULA_PAYLOAD].unwrap_or_default(),
        conntrack: a[NFULA_CT].map(conntrack::parse).transpose()?,
    })
}

/// The flow tuple of an IP packet that may be cut short at [`COPY_RANGE`].
pub fn headers(ip: &[u8]) -> Result<Tuple, Malformed> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => ipv4(ip),
        Some(6) => ipv6(ip),
        Some(_) => Err(Malformed("not an IP packet")),
        None => Err(Malformed("no payload")),
    }
}

fn ipv4(buf: &[u8]) -> Result<Tuple, Malformed> {
    const MIN_HEADER: usize = 20;
    let bad = Malformed("bad IPv4 header");
    let (p, l4, cut) = match Ipv4Packet::new_checked(buf) {
        Ok(p) => {
            let l4 = p.payload();
            (p, l4, false)
        }
        // A capture cut short: `new_checked` wants all `total_len` bytes. The header must be
        // whole, and only its fields are read.
        Err(_) => {
            if buf.len() < MIN_HEADER {
                return Err(bad);
            }
            let p = Ipv4Packet::new_unchecked(buf);
            let hl = usize::from(p.header_len());
            if hl < MIN_HEADER || hl > buf.len() || usize::from(p.total_len()) <= buf.len() {
                return Err(bad);
            }
            (p, &buf[hl..], true)
        }
    };
    if p.header_len() < MIN_HEADER as u8 {
        return Err(bad);
    }
    let protocol = p.next_header();
    let (src, dst) = (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()));
    // Only the first fragment carries the L4 header.
    let l4 = if p.frag_offset() != 0 {
        L4::Other
    } else {
        transport(protocol, false, l4, cut)?
    };
    Ok(Tuple {
        src,
        dst,
        protocol: protocol.into(),
        l4,
    })
}

fn ipv6(buf: &[u8]) -> Result<Tuple, Malformed> {
    const HEADER: usize = 40;
    /// More than this many extension headers in a row is not a packet worth reading.
    const MAX_EXTENSIONS: usize = 8;
    let (p, mut rest, cut) = match Ipv6Packet::new_checked(buf) {
        Ok(p) => {
            let l4 = p.payload();
            (p, l4, false)
        }
        Err(_) if buf.len() >= HEADER => (Ipv6Packet::new_unchecked(buf), &buf[HEADER..], true),
        Err(_) => return Err(Malformed("bad IPv6 header")),
    };
    let (src, dst) = (IpAddr::V6(p.src_addr()), IpAddr::V6(p.dst_addr()));
    let mut next = p.next_header();
    for _ in 0..MAX_EXTENSIONS {
        let later_fragment = match next {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => false,
            IpProtocol::Ipv6Frag => {
                let h = Ipv6ExtHeader::new_checked(rest)
                    .map_err(|_| Malformed("bad IPv6 fragment header"))?;
                let f = Ipv6FragmentHeader::new_checked(h.payload())
                    .map_err(|_| Malformed("bad IPv6 fragment header"))?;
                f.frag_offset() != 0
            }
            _ => {
                let l4 = transport(next, true, rest, cut)?;
                return Ok(Tuple {
                    src,
                    dst,
                    protocol: next.into(),
                    l4,
                });
            }
        };
        let h =
            Ipv6ExtHeader::new_checked(rest).map_err(|_| Malformed("bad IPv6 extension header"))?;
        next = h.next_header();
        if later_fragment {
            return Ok(Tuple {
                src,
                dst,
                protocol: next.into(),
                l4: L4::Other,
            });
        }
        // `new_checked` made sure the whole header (8 bytes per length unit, plus 8) is there.
        rest = &rest[usize::from(h.header_len()) * 8 + 8..];
    }
    Err(Malformed("too many IPv6 extension headers"))
}

/// Ports or ICMP identity from the L4 header in `buf`; `cut`: the capture ended early, so a
/// UDP length that reaches past it is expected.
fn transport(protocol: IpProtocol, v6: bool, buf: &[u8], cut: bool) -> Result<L4, Malformed> {
    Ok(match protocol {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(buf).map_err(|_| Malformed("bad TCP header"))?;
            L4::Ports {
                src: t.src_port(),
                dst: t.dst_port(),
            }
        }
        IpProtocol::Udp => {
            let u = match UdpPacket::new_checked(buf) {
                Ok(u) => u,
                Err(_) if cut && buf.len() >= UDP_HEADER_LEN => UdpPacket::new_unchecked(buf),
                Err(_) => return Err(Malformed("bad UDP header")),
            };
            L4::Ports {
                src: u.src_port(),
                dst: u.dst_port(),
            }
        }
        IpProtocol::Icmp if !v6 => {
            let i = Icmpv4Packet::new_checked(buf).map_err(|_| Malformed("bad ICMP header"))?;
            let ty = i.msg_type();
            let id = match ty {
                Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply => i.echo_ident(),
                _ => 0,
            };
            L4::Icmp {
                ty: ty.into(),
                code: i.msg_code(),
                id,
            }
        }
        IpProtocol::Icmpv6 if v6 => {
            let i = Icmpv6Packet::new_checked(buf).map_err(|_| Malformed("bad ICMPv6 header"))?;
            let ty = i.msg_type();
            let id = match ty {
                Icmpv6Message::EchoRequest | Icmpv6Message::EchoReply => i.echo_ident(),
                _ => 0,
            };
            L4::Icmp {
                ty: ty.into(),
                code: i.msg_code(),
                id,
            }
        }
        _ => L4::Other,
    })
}

/// `NFULNL_MSG_CONFIG` binding `group` to this socket, copying [`COPY_RANGE`] bytes of each
/// packet, with or without the conntrack entry.
fn config_request(group: u16, conntrack: bool, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    let at = netlink::header(
        &mut buf,
        (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
        netlink::NLM_F_REQUEST | netlink::NLM_F_ACK,
        seq,
        AF_UNSPEC,
        group,
    );
    // struct nfulnl_msg_config_cmd { __u8 command; }
    netlink::attr(&mut buf, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    // struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; } (packed)
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    netlink::attr(&mut buf, NFULA_CFG_MODE, &mode);
    netlink::attr(&mut buf, NFULA_CFG_NLBUFSIZ, &KERNEL_BUFFER.to_be_bytes());
    netlink::attr(&mut buf, NFULA_CFG_TIMEOUT, &FLUSH_TIMEOUT.to_be_bytes());
    netlink::attr(&mut buf, NFULA_CFG_QTHRESH, &QUEUE_THRESHOLD.to_be_bytes());
    if conntrack {
        netlink::attr(
            &mut buf,
            NFULA_CFG_FLAGS,
            &NFULNL_CFG_F_CONNTRACK.to_be_bytes(),
        );
    }
    netlink::close(&mut buf, at);
    buf
}

/// A subscription to one NFLOG group in the calling thread's network namespace. The kernel
/// drops it when the socket closes.
#[derive(Debug)]
pub struct Subscription {
    sock: Socket,
    group: u16,
    conntrack: bool,
    buf: Vec<u8>,
}

impl Subscription {
    /// Binds `group`. Asks for conntrack entries and goes on without them on a kernel that
    /// cannot attach them.
    pub fn open(group: u16) -> Result<Subscription, NflogError> {
        let fail = |reason: String| NflogError::Subscribe { group, reason };
        let sock = Socket::open_with(RECEIVE_TIMEOUT).map_err(|e| fail(e.to_string()))?;
        // Forcing a size past rmem_max needs CAP_NET_ADMIN, which ward runs with; without it
        // the plain option still gets what rmem_max allows.
        if setsockopt(sock.fd(), sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            setsockopt(sock.fd(), sockopt::RcvBuf, &RECEIVE_BUFFER)
                .map_err(|e| fail(format!("receive buffer: {e}")))?;
        }
        let mut conntrack = true;
        loop {
            let seq = sock.next_seq();
            let req = config_request(group, conntrack, seq);
            match sock.request(&req, seq, |_| {}) {
                Ok(Ok(())) => break,
                // CONFIG_NETFILTER_NETLINK_GLUE_CT is off: the kernel refuses the flag before
                // binding anything.
                Ok(Err(Errno::EOPNOTSUPP)) if conntrack => conntrack = false,
                Ok(Err(Errno::EBUSY | Errno::EPERM)) => {
                    return Err(fail(
                        "another process in this network namespace is bound to it (another \
                         `ward run`?)"
                            .into(),
                    ))
                }
                Ok(Err(e)) => return Err(fail(e.desc().into())),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        Ok(Subscription {
            sock,
            group,
            conntrack,
            // Larger than any datagram the kernel builds for KERNEL_BUFFER.
            buf: vec![0; 2 * KERNEL_BUFFER as usize],
        })
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    /// Whether the kernel attaches conntrack entries to logged packets.
    pub fn conntrack(&self) -> bool {
        self.conntrack
    }

    /// The next datagram (parse it with [`packets`]), or `None` when none came within a
    /// fraction of a second.
    pub fn recv(&mut self) -> Result<Option<&[u8]>, NflogError> {
        match recv(self.sock.fd().as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
            Ok(n) => Ok(Some(&self.buf[..n])),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
            Err(Errno::ENOBUFS) => Err(NflogError::Overrun),
            Err(e) => Err(NflogError::Receive(e)),
        }
    }
}

/// The name of interface `index` in the calling thread's network namespace (which /sys may
/// not show: it belongs to whoever mounted it).
pub fn interface_name(index: u32) -> Option<String> {
    let mut name = [0 as nix::libc::c_char; nix::libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname writes at most, NUL included;
    // on success the result points into it.
    let found = unsafe { nix::libc::if_indextoname(index, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: if_indextoname succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    name.to_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tests::{entry_attrs, tcp};
    use crate::netlink::{attr, close, header};

    /// An IPv4 header (no options) for `l4`; `total` overrides the total length.
    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8], total: Option<u16>) -> Vec<u8> {
        let total = total.unwrap_or(20 + l4.len() as u16);
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// What the kernel's __build_packet_message writes, for the attributes ward reads.
    struct Msg<'a> {
        prefix: Option<&'a str>,
        timestamp: Option<(u64, u64)>,
        hook: u8,
        indev: Option<u32>,
        outdev: Option<u32>,
        payload: &'a [u8],
        ct: Option<Vec<u8>>,
    }

    impl Default for Msg<'_> {
        fn default() -> Self {
            Msg {
                prefix: Some("ward deny-discard "),
                timestamp: Some((1_700_000_000, 123_456)),
                hook: 2,
                indev: Some(3),
                outdev: Some(4),
                payload: &[],
                ct: None,
            }
        }
    }

    impl Msg<'_> {
        fn append(&self, buf: &mut Vec<u8>) {
            let at = header(
                buf,
                (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET,
                0,
                0,
                2,
                100,
            );
            attr(buf, NFULA_PACKET_HDR as u16, &[0x08, 0x00, self.hook, 0]);
            if let Some(p) = self.prefix {
                let mut z = p.as_bytes().to_vec();
                z.push(0);
                attr(buf, NFULA_PREFIX as u16, &z);
            }
            if let Some(i) = self.indev {
                attr(buf, NFULA_IFINDEX_INDEV as u16, &i.to_be_bytes());
            }
            if let Some(o) = self.outdev {
                attr(buf, NFULA_IFINDEX_OUTDEV as u16, &o.to_be_bytes());
            }
            if let Some((s, u)) = self.timestamp {
                let mut ts = s.to_be_bytes().to_vec();
                ts.extend_from_slice(&u.to_be_bytes());
                attr(buf, NFULA_TIMESTAMP as u16, &ts);
            }
            if let Some(ct) = &self.ct {
                let n = netlink::nest(buf, NFULA_CT as u16);
                buf.extend_from_slice(ct);
                netlink::end_nest(buf, n);
            }
            attr(buf, NFULA_PAYLOAD as u16, self.payload);
            close(buf, at);
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            self.append(&mut b);
            b
        }
    }

    fn one(datagram: &[u8]) -> Result<Packet<'_>, Malformed> {
        let mut all: Vec<_> = packets(datagram).collect();
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[test]
    fn a_forwarded_tcp_syn_with_everything_the_kernel_sends() {
        let payload = ipv4(
            6,
            [192, 168, 50, 10],
            [198, 51, 100, 20],
            &tcp_syn(40000, 9),
            None,
        );
        let e = Entry {
            original: tcp("192.168.50.10", 40000, "198.51.100.20", 9),
            reply: tcp("198.51.100.20", 9, "192.168.50.10", 40000),
            status: Some(0),
        };
        let m = Msg {
            payload: &payload,
            ct: Some(entry_attrs(&e)),
            ..Msg::default()
        };
        let bytes = m.bytes();
        let p = one(&bytes).expect("parse");
        assert_eq!(p.prefix, b"ward deny-discard ");
        assert_eq!(
            p.timestamp,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000))
        );
        assert_eq!((p.hook, p.hw_protocol), (2, 0x0800));
        assert_eq!((p.in_ifindex, p.out_ifindex), (Some(3), Some(4)));
        assert_eq!(p.payload, &payload[..]);
        assert_eq!(p.conntrack, Some(e));
        assert_eq!(p.headers(), Ok(e.original));
    }

    #[test]
    fn several_messages_in_one_datagram_end_with_done() {
        let a = ipv4(17, [10, 0, 0, 1], [10, 0, 0, 2], &udp(5000, 53, b"q"), None);
        let b = ipv4(17, [10, 0, 0, 3], [10, 0, 0, 4], &udp(5001, 123, b""), None);
        let mut d = Vec::new();
        Msg {
            payload: &a,
            ..Msg::default()
        }
        .append(&mut d);
        Msg {
            payload: &b,
            prefix: None,
            timestamp: None,
            outdev: None,
            ..Msg::default()
        }
        .append(&mut d);
        let done = header(&mut d, netlink::NLMSG_DONE, 0, 0, 0, 100);
        close(&mut d, done);
        let got: Vec<_> = packets(&d).collect::<Result<_, _>>().expect("parse");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].headers().expect("a").dst_port(), Some(53));
        let second = got[1];
        assert_eq!(
            (second.prefix, second.timestamp, second.out_ifindex),
            (&b""[..], None, None)
        );
        assert_eq!(
            second.headers().expect("b").l4,
            L4::Ports {
                src: 5001,
                dst: 123
            }
        );
    }

    #[test]
    fn a_capture_cut_at_the_copy_range_still_has_its_ports() {
        let big = udp(4444, 5555, &[7u8; 1000]);
        let full = ipv4(17, [10, 0, 0, 1], [10, 0, 0, 2], &big, None);
        let cut = &full[..COPY_RANGE as usize];
        let t = headers(cut).expect("cut UDP");
        assert_eq!(
            t.l4,
            L4::Ports {
                src: 4444,
                dst: 5555
            }
        );
        // Cut inside the UDP header: nothing to read the ports from.
        assert!(headers(&full[..24]).is_err());
        // Cut inside the IPv4 header.
        assert!(headers(&full[..19]).is_err());
    }

    #[test]
    fn ipv6_with_extension_headers_and_fragments() {
        let src: [u8; 16] = "fd00:50::10"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets();
        let dst: [u8; 16] = "fd00:51::20"
            .parse::<std::net::Ipv6Addr>()
            .expect("ip")
            .octets();
        let v6 = |next: u8, rest: &[u8]| {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(rest.len() as u16).to_be_bytes());
            p.extend_from_slice(&[next, 64]);
            p.extend_from_slice(&src);
            p.extend_from_slice(&dst);
            p.extend_from_slice(rest);
            p
        };
        // Hop-by-hop (8 bytes: next = TCP, length 0, PadN) then TCP.
        let mut rest = vec![6, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&tcp_syn(1234, 443));
        let t = headers(&v6(0, &rest)).expect("v6 tcp");
        assert_eq!(
            (t.protocol, t.l4),
            (
                6,
                L4::Ports {
                    src: 1234,
                    dst: 443
                }
            )
        );
        assert_eq!(t.src, "fd00:50::10".parse::<IpAddr>().expect("ip"));
        // First fragment: ports are there.
        let mut first = vec![17, 0, 0, 1, 0, 0, 0, 9];
        first.extend_from_slice(&udp(1, 2, b"x"));
        assert_eq!(
            headers(&v6(44, &first)).expect("first").l4,
            L4::Ports { src: 1, dst: 2 }
        );
        // A later fragment: the protocol, no ports.
        let mut later = vec![17, 0, 0x05, 0x01, 0, 0, 0, 9];
        later.extend_from_slice(b"middle of a datagram");
        let t = headers(&v6(44, &later)).expect("later");
        assert_eq!((t.protocol, t.l4), (17, L4::Other));
        // ICMPv6 echo request: type, code and identifier.
        let echo = [128, 0, 0, 0, 0x12, 0x34, 0, 1];
        let t = headers(&v6(58, &echo)).expect("echo");
        assert_eq!(
            t.l4,
            L4::Icmp {
                ty: 128,
                code: 0,
                id: 0x1234
            }
        );
        // An extension header that claims more than is there.
        assert!(headers(&v6(0, &[6, 9, 0, 0, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn icmp_and_later_ipv4_fragments() {
        let echo = [8, 0, 0, 0, 0, 42, 0, 1];
        let t = headers(&ipv4(1, [1, 1, 1, 1], [2, 2, 2, 2], &echo, None)).expect("echo");
        assert_eq!(
            t.l4,
            L4::Icmp {
                ty: 8,
                code: 0,
                id: 42
            }
        );
        let mut frag = ipv4(6, [1, 1, 1, 1], [2, 2, 2, 2], b"not a tcp header", None);
        frag[6..8].copy_from_slice(&[0, 10]); // offset 80 bytes
        let t = headers(&frag).expect("fragment");
        assert_eq!((t.protocol, t.l4), (6, L4::Other));
    }

    #[test]
    fn malformed_messages_and_payloads_are_errors() {
        let good = ipv4(6, [1, 1, 1, 1], [2, 2, 2, 2], &tcp_syn(1, 2), None);
        // Header length below 20.
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert!(headers(&short_ihl).is_err());
        // TCP data offset past the end.
        let mut bad_tcp = good.clone();
        bad_tcp[32] = 0xf0;
        assert!(headers(&bad_tcp).is_err());
        // A UDP length past the end of a packet that is not cut short.
        let mut bad_udp = ipv4(17, [1, 1, 1, 1], [2, 2, 2, 2], &udp(1, 2, b"abc"), None);
        bad_udp[25] = 200;
        assert!(headers(&bad_udp).is_err());
        assert!(headers(&[0x15, 0, 0]).is_err(), "version 1");
        assert!(headers(&[]).is_err());

        let bytes = Msg {
            payload: &good,
            ..Msg::default()
        }
        .bytes();
        // An attribute whose length runs past the message.
        let mut over = bytes.clone();
        over[20..22].copy_from_slice(&1000u16.to_ne_bytes());
        assert!(one(&over).is_err());
        // A message length past the datagram.
        let mut long = bytes.clone();
        long[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(one(&long).is_err());
        // No packet header attribute.
        let mut d = Vec::new();
        let at = header(
            &mut d,
            (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET,
            0,
            0,
            2,
            100,
        );
        attr(&mut d, NFULA_PAYLOAD as u16, &good);
        close(&mut d, at);
        assert!(one(&d).is_err());
        // Microseconds past a second.
        let ts = Msg {
            timestamp: Some((1, 2_000_000)),
            ..Msg::default()
        }
        .bytes();
        assert!(one(&ts).is_err());
        // A conntrack attribute that is not an entry.
        let ct = Msg {
            ct: Some(vec![4, 0, 1, 0]),
            ..Msg::default()
        }
        .bytes();
        assert!(one(&ct).is_err());
        // Some other subsystem's message.
        let mut other = Vec::new();
        let at = header(&mut other, 10 << 8, 0, 0, 0, 0);
        close(&mut other, at);
        assert!(one(&other).is_err());
    }

    #[test]
    fn config_binds_the_group_with_packet_copies() {
        let req = config_request(100, true, 5);
        let msgs: Vec<_> = netlink::messages(&req)
            .collect::<Result<_, _>>()
            .expect("walk");
        assert_eq!(msgs.len(), 1);
        let m = msgs[0];
        assert_eq!(m.ty, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG);
        assert_eq!(
            &m.body[..4],
            &[AF_UNSPEC, 0, 0, 100],
            "group in res_id, big-endian"
        );
        let a = parse_attrs::<7>(&m.body[4..]).expect("attrs");
        assert_eq!(
            a[usize::from(NFULA_CFG_CMD)],
            Some(&[NFULNL_CFG_CMD_BIND][..])
        );
        assert_eq!(
            a[usize::from(NFULA_CFG_MODE)],
            Some(&[0, 0, 1, 0, NFULNL_COPY_PACKET, 0][..])
        );
        assert_eq!(a[usize::from(NFULA_CFG_FLAGS)], Some(&[0, 4][..]));
        let without = config_request(100, false, 6);
        let m = netlink::messages(&without)
            .next()
            .expect("one")
            .expect("walk");
        assert_eq!(
            parse_attrs::<7>(&m.body[4..]).expect("attrs")[usize::from(NFULA_CFG_FLAGS)],
            None
        );
    }
}

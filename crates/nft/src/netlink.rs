//! nf_tables set-element messages written by hand, and the netlink socket that commits them
//! as one transaction: for the DNS learner's updates and for filling big maps on apply. Also
//! the message and attribute walkers the NFLOG reader and conntrack lookups parse replies with.
//!
//! Why by hand: libnftables spends most of its time parsing its language, which the kernel
//! then needs only a fraction of (a learned address: ~80 µs vs a few; 10k map elements:
//! about as long as the kernel's own inserts), and no maintained crate encodes nf_tables
//! element messages without linking libnftnl. Tables, sets, chains and rules stay with
//! libnftables.

use crate::nflog::Malformed;
use crate::schema::{Expr, Named, Verdict};
use crate::session::NftError;
use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use std::cell::Cell;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

// From linux/netlink.h, linux/netfilter/nfnetlink.h and linux/netfilter/nf_tables.h.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// nfgenmsg: family, version, resource id.
pub(crate) const NFGENMSG_LEN: usize = 4;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
/// From libnftnl's udata.h: an element's comment, NUL-terminated.
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
/// Attribute lengths are 16 bits: a message's element list must stay below this.
const MAX_ELEMENTS_BYTES: usize = 60_000;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default())
}

/// Appends a netlink attribute, padded to 4 bytes.
pub(crate) fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + align(len) - len, 0);
}

/// Opens a nested attribute; `end_nest` with the returned offset closes it.
pub(crate) fn nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

pub(crate) fn end_nest(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// `NFTA_SET_ELEM_KEY` (or `_KEY_END`) holding `value`.
pub(crate) fn key(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let at = nest(buf, ty);
    attr(buf, NFTA_DATA_VALUE, value);
    end_nest(buf, at);
}

/// Appends a NUL-terminated string attribute.
fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let len = 4 + s.len() + 1;
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    buf.resize(buf.len() + align(len) - len, 0);
}

/// One nfnetlink batch: begin, element messages, end; the kernel commits it as one
/// transaction. Only the last element message asks for an acknowledgement (the kernel
/// reports any message's error anyway): one ack per message could overflow the socket's
/// receive buffer for a large batch.
pub(crate) struct Batch {
    pub(crate) buf: Vec<u8>,
    seq: u32,
    /// Where the last element message starts.
    last: Option<usize>,
}

impl Batch {
    pub(crate) fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(512),
            seq,
            last: None,
        };
        let at = b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.close(at);
        b
    }

    /// `NEWSETELEM` / `DELSETELEM` for `set` with `elements`: `NFTA_LIST_ELEM` attributes one
    /// after another, as `KeyLayout::encode` makes them. Split over several messages when they do not
    /// fit in one attribute.
    pub(crate) fn elements(&mut self, msg: u16, table: &str, set: &str, elements: &[u8]) {
        let mut from = 0;
        while from < elements.len() {
            let mut to = from;
            while to < elements.len() && to - from < MAX_ELEMENTS_BYTES {
                let len = u16::from_ne_bytes([elements[to], elements[to + 1]]);
                to += align(usize::from(len).max(4));
            }
            let to = to.min(elements.len());
            self.message(msg, table, set, &elements[from..to]);
            from = to;
        }
    }

    fn message(&mut self, msg: u16, table: &str, set: &str, elements: &[u8]) {
        let flags = if msg == NFT_MSG_NEWSETELEM {
            NLM_F_REQUEST | NLM_F_CREATE
        } else {
            NLM_F_REQUEST
        };
        let at = self.header((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, NFPROTO_INET, 0);
        self.last = Some(at);
        attr_str(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, table);
        attr_str(&mut self.buf, NFTA_SET_ELEM_LIST_SET, set);
        let list = nest(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        self.buf.extend_from_slice(elements);
        end_nest(&mut self.buf, list);
        self.close(at);
    }

    /// Ends the batch; returns the sequence number of its last element message.
    pub(crate) fn finish(&mut self) -> u32 {
        if let Some(at) = self.last {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        let last = self.seq.wrapping_sub(1);
        let at = self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.close(at);
        last
    }

    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = header(&mut self.buf, ty, flags, self.seq, family, res_id);
        self.seq = self.seq.wrapping_add(1);
        at
    }

    fn close(&mut self, at: usize) {
        close(&mut self.buf, at);
    }
}

/// Appends nlmsghdr + nfgenmsg; returns where the message starts (see `close`).
pub(crate) fn header(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `close`
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
    at
}

/// Sets the length of the message that starts at `at` to reach the end of `buf`.
pub(crate) fn close(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One message of a datagram from the kernel; `body` follows the nlmsghdr.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Msg<'a> {
    pub ty: u16,
    pub seq: u32,
    pub body: &'a [u8],
}

/// The messages of one datagram, in order; a length that does not fit what is left ends the
/// walk with an error.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(hdr) = rest.get(..NLMSG_HDRLEN) else {
            rest = &[];
            return Some(Err(Malformed("netlink message shorter than its header")));
        };
        let len = u32_at(hdr, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("netlink message length out of bounds")));
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([hdr[4], hdr[5]]),
            seq: u32_at(hdr, 8),
            body: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align(len)..).unwrap_or_default();
        Some(Ok(msg))
    })
}

/// The attributes in `buf` by type, as the kernel's `nla_parse` sees them: flags masked off,
/// the last of a type wins, types of `N` and above are ignored (newer kernels add some).
pub(crate) fn parse_attrs<const N: usize>(buf: &[u8]) -> Result<[Option<&[u8]>; N], Malformed> {
    let mut out = [None; N];
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
        let ty =
            u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
        if len < 4 || at + len > buf.len() {
            return Err(Malformed("attribute length out of bounds"));
        }
        if let Some(slot) = out.get_mut(usize::from(ty)) {
            *slot = Some(&buf[at + 4..at + len]);
        }
        at += align(len);
    }
    Ok(out)
}

/// A big-endian integer attribute of exactly `N` bytes.
pub(crate) fn be<const N: usize>(value: Option<&[u8]>) -> Result<Option<[u8; N]>, Malformed> {
    value
        .map(|v| {
            v.try_into()
                .map_err(|_| Malformed("integer attribute of the wrong size"))
        })
        .transpose()
}

/// A NETLINK_NETFILTER socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: Cell<u32>,
}

impl Socket {
    pub(crate) fn open() -> Result<Socket, NftError> {
        // A reply never takes long; this only keeps a lost one from hanging the caller.
        Socket::open_with(Duration::from_secs(5))
    }

    /// A socket whose receives give up after `timeout` (`EAGAIN`).
    pub(crate) fn open_with(timeout: Duration) -> Result<Socket, NftError> {
        let err = |what: &str, e: nix::Error| NftError::Init(format!("netlink {what}: {e}"));
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| err("socket", e))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err("bind", e))?;
        let limit = nix::sys::time::TimeVal::new(
            timeout.as_secs() as nix::libc::time_t,
            timeout.subsec_micros() as nix::libc::suseconds_t,
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &limit).map_err(|e| err("timeout", e))?;
        Ok(Socket {
            fd,
            seq: Cell::new(1),
        })
    }

    /// Commits what `build` adds to a batch as one transaction: all of it takes effect, or
    /// none and the kernel's error. Returns once the kernel has committed it.
    pub(crate) fn commit(&self, build: impl FnOnce(&mut Batch)) -> Result<(), NftError> {
        let first = self.seq.get();
        let mut b = Batch::new(first);
        build(&mut b);
        if b.last.is_none() {
            return Ok(());
        }
        let last = b.finish();
        self.seq.set(last.wrapping_add(2));
        // The kernel takes a batch in one piece, so the send buffer must hold all of it.
        const DEFAULT_SNDBUF: usize = 200 * 1024;
        if b.buf.len() > DEFAULT_SNDBUF {
            setsockopt(&self.fd, sockopt::SndBufForce, &(b.buf.len() + 4096))
                .map_err(|e| NftError::Rejected(format!("netlink send buffer: {e}")))?;
        }
        send(self.fd.as_raw_fd(), &b.buf, MsgFlags::empty())
            .map_err(|e| NftError::Rejected(format!("netlink send: {e}")))?;
        self.wait_for(first, last)
    }

    /// Reads replies until the acknowledgement of message `last`; the first error reported
    /// for a message of this batch (seq `first..=last`, in order) fails it.
    fn wait_for(&self, first: u32, last: u32) -> Result<(), NftError> {
        match self.acked(first, last, |_| {}) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NftError::Rejected(format!(
                "Could not process rule: {}",
                e.desc()
            ))),
            Err(e) => Err(NftError::Rejected(format!("netlink reply: {e}"))),
        }
    }

    /// The socket, for the caller's own options and receives.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The sequence number for the next request.
    pub(crate) fn next_seq(&self) -> u32 {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        seq
    }

    /// Sends one message that asks for an acknowledgement (sequence number `seq`) and waits
    /// for it. Other messages for it (a GET's answer) go to `reply`. The outer error is the
    /// socket's, the inner one the kernel's refusal.
    pub(crate) fn request(
        &self,
        msg: &[u8],
        seq: u32,
        reply: impl FnMut(Msg<'_>),
    ) -> nix::Result<Result<(), Errno>> {
        send(self.fd.as_raw_fd(), msg, MsgFlags::empty())?;
        self.acked(seq, seq, reply)
    }

    /// Reads until the acknowledgement of message `last`; the first error the kernel reports
    /// for a message of `first..=last` ends the wait with it. Messages of that range other
    /// than acks go to `reply`; anything else (a late answer to an earlier request) is
    /// skipped.
    fn acked(
        &self,
        first: u32,
        last: u32,
        mut reply: impl FnMut(Msg<'_>),
    ) -> nix::Result<Result<(), Errno>> {
        // Acks are 36 bytes, an error echoes one element message: a page holds many.
        let mut buf = [0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            for m in messages(&buf[..n]) {
                let Ok(m) = m else { break };
                let mine = m.seq.wrapping_sub(first) <= last.wrapping_sub(first);
                if !mine {
                    continue;
                }
                if m.ty != NLMSG_ERROR {
                    reply(m);
                    continue;
                }
                let Some(errno) = m.body.get(..4) else {
                    continue;
                };
                let errno = i32::from_ne_bytes(errno.try_into().unwrap_or_default());
                if errno != 0 {
                    return Ok(Err(Errno::from_raw(-errno)));
                }
                if m.seq == last {
                    return Ok(Ok(()));
                }
            }
        }
    }
}

/// How the key of a set is laid out: its field types, and whether elements are ranges.
pub(crate) struct KeyLayout<'a> {
    pub types: &'a [&'static str],
    pub interval: bool,
}

impl KeyLayout<'_> {
    /// Encodes `elements` as compiled (`[key, verdict]` pairs or keys, each with an optional
    /// comment) as `NFTA_LIST_ELEM` attributes one after another, or says why it cannot. Covers what ward's maps hold: interfaces, addresses,
    /// protocols and ports, single or concatenated, and for concatenations ranges
    /// (`key_end`). An interval set of one field is out: the kernel wants it as separate
    /// start and end elements.
    pub(crate) fn encode(&self, elements: &[Expr]) -> Result<Vec<u8>, String> {
        if self.interval && self.types.len() < 2 {
            return Err("interval set of one field".into());
        }
        let mut out = Vec::with_capacity(elements.len() * 80);
        let (mut lo, mut hi) = (Vec::with_capacity(48), Vec::with_capacity(48));
        for e in elements {
            let (elem, data) = match e {
                Expr::Pair(p) => (&p.0, Some(&p.1)),
                other => (other, None),
            };
            let (val, comment) = match elem {
                Expr::Named(Named::Elem { val, comment }) => (&**val, comment.as_deref()),
                other => (other, None),
            };
            let fields: &[Expr] = match val {
                Expr::Named(Named::Concat(v)) => v,
                one => std::slice::from_ref(one),
            };
            if fields.len() != self.types.len() {
                return Err(format!(
                    "{} fields for a key of {}",
                    fields.len(),
                    self.types.len()
                ));
            }
            lo.clear();
            hi.clear();
            for (f, ty) in fields.iter().zip(self.types) {
                field(f, ty, &mut lo, &mut hi)?;
                if self.types.len() > 1 {
                    // Each field of a concatenation takes whole 32-bit registers.
                    lo.resize(align(lo.len()), 0);
                    hi.resize(align(hi.len()), 0);
                }
            }
            if !self.interval && lo != hi {
                return Err("a range in a set without intervals".into());
            }
            let buf = &mut out;
            let at = nest(buf, NFTA_LIST_ELEM);
            key(buf, NFTA_SET_ELEM_KEY, &lo);
            if self.interval {
                key(buf, NFTA_SET_ELEM_KEY_END, &hi);
            }
            match data {
                None => {}
                Some(Expr::Verdict(v)) => verdict(buf, v),
                Some(other) => return Err(format!("map data {other:?}")),
            }
            if let Some(c) = comment {
                let len = u8::try_from(c.len() + 1).map_err(|_| "long comment".to_string())?;
                let mut udata = vec![NFTNL_UDATA_SET_ELEM_COMMENT, len];
                udata.extend_from_slice(c.as_bytes());
                udata.push(0);
                attr(buf, NFTA_SET_ELEM_USERDATA, &udata);
            }
            end_nest(buf, at);
        }
        Ok(out)
    }
}

/// Appends one key field's first and last value in the kernel's layout (network byte order).
fn field(f: &Expr, ty: &str, lo: &mut Vec<u8>, hi: &mut Vec<u8>) -> Result<(), String> {
    let bad = || format!("{ty} value {f:?}");
    match (ty, f) {
        ("ipv4_addr" | "ipv6_addr", Expr::Str(a)) => {
            let a: IpAddr = a.parse().map_err(|_| bad())?;
            let bytes = ip_bytes(a, ty).ok_or_else(bad)?;
            lo.extend_from_slice(&bytes);
            hi.extend_from_slice(&bytes);
        }
        ("ipv4_addr" | "ipv6_addr", Expr::Named(Named::Prefix { addr, len })) => {
            let a: IpAddr = addr.parse().map_err(|_| bad())?;
            let net = ipnet::IpNet::new(a, *len).map_err(|_| bad())?;
            lo.extend_from_slice(&ip_bytes(net.network(), ty).ok_or_else(bad)?);
            hi.extend_from_slice(&ip_bytes(net.broadcast(), ty).ok_or_else(bad)?);
        }
        ("inet_proto", Expr::Str(p)) => {
            let n = match p.as_str() {
                "icmp" => 1,
                "tcp" => 6,
                "udp" => 17,
                "ipv6-icmp" | "icmpv6" => 58,
                _ => return Err(bad()),
            };
            lo.push(n);
            hi.push(n);
        }
        ("inet_service", Expr::Num(p)) => {
            let p = u16::try_from(*p).map_err(|_| bad())?.to_be_bytes();
            lo.extend_from_slice(&p);
            hi.extend_from_slice(&p);
        }
        ("inet_service", Expr::Named(Named::Range([a, b]))) => {
            let (Expr::Num(a), Expr::Num(b)) = (&**a, &**b) else {
                return Err(bad());
            };
            lo.extend_from_slice(&u16::try_from(*a).map_err(|_| bad())?.to_be_bytes());
            hi.extend_from_slice(&u16::try_from(*b).map_err(|_| bad())?.to_be_bytes());
        }
        // A trailing '*' makes nft match a prefix of the name: left to libnftables.
        ("ifname", Expr::Str(name)) if name.len() < 16 && !name.ends_with('*') => {
            let mut b = [0u8; 16];
            b[..name.len()].copy_from_slice(name.as_bytes());
            lo.extend_from_slice(&b);
            hi.extend_from_slice(&b);
        }
        _ => return Err(bad()),
    }
    Ok(())
}

fn ip_bytes(a: IpAddr, ty: &str) -> Option<Vec<u8>> {
    match (a, ty) {
        (IpAddr::V4(a), "ipv4_addr") => Some(a.octets().to_vec()),
        (IpAddr::V6(a), "ipv6_addr") => Some(a.octets().to_vec()),
        _ => None,
    }
}

fn verdict(buf: &mut Vec<u8>, v: &Verdict) {
    let data = nest(buf, NFTA_SET_ELEM_DATA);
    let nested = nest(buf, NFTA_DATA_VERDICT);
    let (code, chain) = match v {
        Verdict::Accept(_) => (NF_ACCEPT, None),
        Verdict::Drop(_) => (NF_DROP, None),
        Verdict::Return(_) => (NFT_RETURN, None),
        Verdict::Jump { target } => (NFT_JUMP, Some(target)),
    };
    attr(buf, NFTA_VERDICT_CODE, &code.to_be_bytes());
    if let Some(c) = chain {
        attr_str(buf, NFTA_VERDICT_CHAIN, c);
    }
    end_nest(buf, nested);
    end_nest(buf, data);
}

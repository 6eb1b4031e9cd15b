//! Addresses learned by the DNS proxy, written into the name rules' sets in one nf_tables
//! transaction per batch; `commit` returns only once the kernel has committed it.
//!
//! The messages are nf_tables netlink written here by hand, not libnftables commands: a
//! commit runs before a DNS answer is released, and libnftables spends most of its ~80 µs per
//! call parsing its language, filling its cache and checking the generation, where the kernel
//! needs a fraction of that. No maintained crate encodes nf_tables element messages without
//! linking libnftnl.

use crate::compile::fqdn_set_names;
use crate::session::NftError;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use std::cell::Cell;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// One change to the learned addresses of a `destination_fqdn` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOp<'a> {
    /// Allow `addr` for `rule` for `timeout` (a repeated add sets a fresh timeout).
    Add {
        rule: &'a str,
        addr: IpAddr,
        timeout: Duration,
    },
    /// Stop allowing `addr` for `rule` now (evicted); fine if it already expired.
    Remove { rule: &'a str, addr: IpAddr },
}

/// Writes learned addresses into ward's table, over a netlink socket of its own opened in the
/// network namespace of the thread that called `open`.
#[derive(Debug)]
pub struct SetWriter {
    table: String,
    /// Whether re-adding an element sets its timeout afresh (Linux 6.12 and later). Before,
    /// a re-add leaves the old expiry, so a refresh is delete + add in the same transaction.
    readd_refreshes: bool,
    sock: OwnedFd,
    seq: Cell<u32>,
}

impl SetWriter {
    pub fn open(table: &str) -> Result<SetWriter, NftError> {
        let err = |what: &str, e: nix::Error| NftError::Init(format!("netlink {what}: {e}"));
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| err("socket", e))?;
        bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err("bind", e))?;
        // A reply never takes long; this only keeps a lost one from hanging the proxy.
        let limit = nix::sys::time::TimeVal::new(5, 0);
        setsockopt(&sock, sockopt::ReceiveTimeout, &limit).map_err(|e| err("timeout", e))?;
        Ok(SetWriter {
            table: table.to_string(),
            readd_refreshes: kernel_at_least(6, 12),
            sock,
            seq: Cell::new(1),
        })
    }

    /// Overrides the kernel-version detection (both forms work on new kernels; tests use this).
    pub fn with_readd_refreshes(mut self, yes: bool) -> SetWriter {
        self.readd_refreshes = yes;
        self
    }

    /// Commits all of `ops` in one transaction: all take effect, or none and an error.
    ///
    /// Deleting an element that is not there fails the whole transaction, so every delete
    /// follows an add of the same element (a no-op when it exists): removals of
    /// already-expired addresses stay harmless.
    pub fn commit(&self, ops: &[SetOp<'_>]) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        let first = self.seq.get();
        let mut b = Batch::new(first);
        let t = &self.table;
        for op in ops {
            let (SetOp::Add { rule, addr, .. } | SetOp::Remove { rule, addr }) = *op;
            let (v4, v6) = fqdn_set_names(rule);
            let set = if addr.is_ipv4() { v4 } else { v6 };
            if matches!(op, SetOp::Remove { .. }) || !self.readd_refreshes {
                b.element(
                    NFT_MSG_NEWSETELEM,
                    t,
                    &set,
                    addr,
                    Some(Duration::from_secs(1)),
                );
                b.element(NFT_MSG_DELSETELEM, t, &set, addr, None);
            }
            if let SetOp::Add { timeout, .. } = *op {
                // Whole seconds, at least one, as nft would write it.
                let timeout = timeout.max(Duration::from_secs(1));
                b.element(NFT_MSG_NEWSETELEM, t, &set, addr, Some(timeout));
            }
        }
        let last = b.finish();
        self.seq.set(last.wrapping_add(2));
        send(self.sock.as_raw_fd(), &b.buf, MsgFlags::empty())
            .map_err(|e| NftError::Rejected(format!("netlink send: {e}")))?;
        self.wait_for(first, last)
    }

    /// Reads replies until the acknowledgement of message `last`; the first error reported
    /// for a message of this batch (seq `first..=last`, in order) fails it.
    fn wait_for(&self, first: u32, last: u32) -> Result<(), NftError> {
        // Acks are 36 bytes, an error echoes one element message: a page holds many.
        let mut buf = [0u8; 8192];
        loop {
            let n = recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| NftError::Rejected(format!("netlink reply: {e}")))?;
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let len = u32_at(&buf, at) as usize;
                if len < NLMSG_HDRLEN || at + len > n {
                    break;
                }
                let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let seq = u32_at(&buf, at + 8);
                let mine = seq.wrapping_sub(first) <= last.wrapping_sub(first);
                if ty == NLMSG_ERROR && mine && len >= NLMSG_HDRLEN + 4 {
                    let errno = i32::from_ne_bytes(
                        buf[at + NLMSG_HDRLEN..at + NLMSG_HDRLEN + 4]
                            .try_into()
                            .unwrap_or_default(),
                    );
                    if errno != 0 {
                        let e = nix::errno::Errno::from_raw(-errno);
                        return Err(NftError::Rejected(format!(
                            "Could not process rule: {}",
                            e.desc()
                        )));
                    }
                    if seq == last {
                        return Ok(());
                    }
                }
                at += align(len);
            }
        }
    }
}

// From linux/netlink.h, linux/netfilter/nfnetlink.h and linux/netfilter/nf_tables.h.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 1 << 15;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default())
}

/// One nfnetlink batch: begin, element messages, end. Only the last element message asks
/// for an acknowledgement (the kernel reports any message's error anyway): one ack per
/// message could overflow the socket's receive buffer for a large batch.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Where the last element message starts.
    last: Option<usize>,
}

impl Batch {
    fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(512),
            seq,
            last: None,
        };
        let at = b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.close(at);
        b
    }

    /// `NEWSETELEM` / `DELSETELEM` of one address.
    fn element(
        &mut self,
        msg: u16,
        table: &str,
        set: &str,
        addr: IpAddr,
        timeout: Option<Duration>,
    ) {
        let flags = if msg == NFT_MSG_NEWSETELEM {
            NLM_F_REQUEST | NLM_F_CREATE
        } else {
            NLM_F_REQUEST
        };
        let at = self.header((NFNL_SUBSYS_NFTABLES << 8) | msg, flags, NFPROTO_INET, 0);
        self.last = Some(at);
        self.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        self.attr(NFTA_SET_ELEM_LIST_SET, &cstr(set));
        let elements = self.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        let elem = self.nest(NFTA_LIST_ELEM);
        let key = self.nest(NFTA_SET_ELEM_KEY);
        match addr {
            IpAddr::V4(a) => self.attr(NFTA_DATA_VALUE, &a.octets()),
            IpAddr::V6(a) => self.attr(NFTA_DATA_VALUE, &a.octets()),
        }
        self.close_attr(key);
        if let Some(t) = timeout {
            let ms = t.as_secs().saturating_mul(1000);
            self.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        self.close_attr(elem);
        self.close_attr(elements);
        self.close(at);
    }

    /// Ends the batch; returns the sequence number of its last element message.
    fn finish(&mut self) -> u32 {
        if let Some(at) = self.last {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        let last = self.seq.wrapping_sub(1);
        let at = self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.close(at);
        last
    }

    /// nlmsghdr + nfgenmsg; returns where the message starts (see `close`).
    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `close`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        at
    }

    fn close(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len() + align(len) - len, 0);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn close_attr(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Whether the running kernel is at least `major.minor` (unknown: assume not).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = u.release().to_string_lossy();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (nums.next().flatten(), nums.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the kernel parses: lengths cover their message or attribute, attributes
    /// are 4-byte aligned, sequence numbers count up from the batch's first.
    #[test]
    fn batch_layout() {
        let mut b = Batch::new(7);
        let addr: IpAddr = "192.0.2.1".parse().expect("ip");
        b.element(
            NFT_MSG_NEWSETELEM,
            "ward",
            "fqdn4-gh",
            addr,
            Some(Duration::from_secs(30)),
        );
        let last = b.finish();
        assert_eq!(last, 8, "begin is 7, the element 8, end 9");
        let types: Vec<u16> = messages(&b.buf).iter().map(|m| m.0).collect();
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                NFNL_MSG_BATCH_END
            ]
        );
        let msg = &b.buf[20..];
        let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
        // table "ward", set "fqdn4-gh", then elements > elem > key > value 192.0.2.1 and the
        // timeout, 30000 ms big-endian.
        assert!(hex.contains("0900010077617264"), "{hex}");
        assert!(hex.contains("0d0002006671646e342d676800"), "{hex}");
        assert!(hex.contains("08000100c0000201"), "{hex}");
        assert!(hex.contains("0c0004000000000000007530"), "{hex}");
    }

    #[test]
    fn only_the_last_element_message_asks_for_an_ack() {
        let mut b = Batch::new(1);
        let addr: IpAddr = "2001:db8::1".parse().expect("ip");
        b.element(
            NFT_MSG_NEWSETELEM,
            "ward",
            "s",
            addr,
            Some(Duration::from_secs(1)),
        );
        b.element(NFT_MSG_DELSETELEM, "ward", "s", addr, None);
        b.finish();
        let acks: Vec<bool> = messages(&b.buf)
            .iter()
            .map(|m| m.1 & NLM_F_ACK != 0)
            .collect();
        assert_eq!(acks, [false, false, true, false]);
    }

    /// Type and flags of each message in a batch, checking that the lengths tile it in
    /// 4-byte-aligned pieces.
    fn messages(buf: &[u8]) -> Vec<(u16, u16)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < buf.len() {
            let len = u32_at(buf, at) as usize;
            assert_eq!(len % 4, 0);
            out.push((
                u16::from_ne_bytes([buf[at + 4], buf[at + 5]]),
                u16::from_ne_bytes([buf[at + 6], buf[at + 7]]),
            ));
            at += len;
        }
        assert_eq!(at, buf.len());
        out
    }
}

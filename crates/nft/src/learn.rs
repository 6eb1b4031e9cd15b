//! Addresses learned by the DNS proxy, written into the name rules' sets in one nf_tables
//! transaction per batch; `commit` returns only once the kernel has committed it.
//!
//! The messages go straight over netlink (`crate::netlink`), not through libnftables: a
//! commit runs before a DNS answer is released, and libnftables spends most of its ~80 µs
//! per call parsing its language, filling its cache and checking the generation.

use crate::compile::fqdn_set_names;
use crate::netlink::{self, Socket, NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM};
use crate::session::NftError;
use std::net::IpAddr;
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
    sock: Socket,
}

impl SetWriter {
    pub fn open(table: &str) -> Result<SetWriter, NftError> {
        Ok(SetWriter {
            table: table.to_string(),
            readd_refreshes: kernel_at_least(6, 12),
            sock: Socket::open()?,
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
        let t = &self.table;
        // One element's attributes, encoded anew for each message.
        let mut e = Vec::with_capacity(40);
        self.sock.commit(|b| {
            for op in ops {
                let (SetOp::Add { rule, addr, .. } | SetOp::Remove { rule, addr }) = *op;
                let (v4, v6) = fqdn_set_names(rule);
                let set = if addr.is_ipv4() { v4 } else { v6 };
                if matches!(op, SetOp::Remove { .. }) || !self.readd_refreshes {
                    let one_second = Some(Duration::from_secs(1));
                    b.elements(
                        NFT_MSG_NEWSETELEM,
                        t,
                        &set,
                        element(&mut e, addr, one_second),
                    );
                    b.elements(NFT_MSG_DELSETELEM, t, &set, element(&mut e, addr, None));
                }
                if let SetOp::Add { timeout, .. } = *op {
                    // Whole seconds, at least one, as nft would write it.
                    let timeout = timeout.max(Duration::from_secs(1));
                    b.elements(
                        NFT_MSG_NEWSETELEM,
                        t,
                        &set,
                        element(&mut e, addr, Some(timeout)),
                    );
                }
            }
        })
    }
}

/// One address as an `NFTA_LIST_ELEM` attribute, with its timeout, written over `buf`.
fn element(buf: &mut Vec<u8>, addr: IpAddr, timeout: Option<Duration>) -> &[u8] {
    buf.clear();
    let elem = netlink::nest(buf, netlink::NFTA_LIST_ELEM);
    match addr {
        IpAddr::V4(a) => netlink::key(buf, netlink::NFTA_SET_ELEM_KEY, &a.octets()),
        IpAddr::V6(a) => netlink::key(buf, netlink::NFTA_SET_ELEM_KEY, &a.octets()),
    }
    if let Some(t) = timeout {
        let ms = t.as_secs().saturating_mul(1000);
        netlink::attr(buf, netlink::NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
    }
    netlink::end_nest(buf, elem);
    buf
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
    use netlink::{
        u32_at, Batch, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK,
    };

    /// The layout the kernel parses: lengths cover their message or attribute, attributes
    /// are 4-byte aligned, sequence numbers count up from the batch's first.
    #[test]
    fn batch_layout() {
        let mut b = Batch::new(7);
        let addr: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut e = Vec::new();
        let e = element(&mut e, addr, Some(Duration::from_secs(30)));
        b.elements(NFT_MSG_NEWSETELEM, "ward", "fqdn4-gh", e);
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
        let mut e = Vec::new();
        let one_second = Some(Duration::from_secs(1));
        b.elements(
            NFT_MSG_NEWSETELEM,
            "ward",
            "s",
            element(&mut e, addr, one_second),
        );
        b.elements(NFT_MSG_DELSETELEM, "ward", "s", element(&mut e, addr, None));
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

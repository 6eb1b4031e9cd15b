//! Addresses learned by the DNS proxy, written into the name rules' sets in one libnftables
//! transaction per batch; `commit` returns only once the kernel has committed it.

use crate::compile::fqdn_set_names;
use crate::session::{NftError, Session};
use std::fmt::Write;
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

/// Writes learned addresses into ward's table.
#[derive(Clone, Debug)]
pub struct SetWriter {
    table: String,
    /// Whether re-adding an element sets its timeout afresh (Linux 6.12 and later). Before,
    /// a re-add leaves the old expiry, so a refresh is delete + add in the same transaction.
    readd_refreshes: bool,
}

impl SetWriter {
    pub fn new(table: &str) -> SetWriter {
        SetWriter {
            table: table.to_string(),
            readd_refreshes: kernel_at_least(6, 12),
        }
    }

    /// Commits all of `ops` in one transaction: all take effect, or none and an error.
    pub fn commit(&self, session: &Session, ops: &[SetOp<'_>]) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        session.apply_text(&self.script(ops))
    }

    /// The transaction for `ops`, in nft's language. Deleting an element that is not there
    /// fails the whole transaction, so every delete follows an add of the same element (a
    /// no-op when it exists): removals of already-expired addresses stay harmless.
    pub fn script(&self, ops: &[SetOp<'_>]) -> String {
        let mut out = String::with_capacity(ops.len() * 96);
        for op in ops {
            let (SetOp::Add { rule, addr, .. } | SetOp::Remove { rule, addr }) = *op;
            let (v4, v6) = fqdn_set_names(rule);
            let set = if addr.is_ipv4() { v4 } else { v6 };
            let t = &self.table;
            let remove = |out: &mut String| {
                let _ = writeln!(out, "add element inet {t} {set} {{ {addr} timeout 1s }}");
                let _ = writeln!(out, "delete element inet {t} {set} {{ {addr} }}");
            };
            match *op {
                SetOp::Add { timeout, .. } => {
                    if !self.readd_refreshes {
                        remove(&mut out);
                    }
                    // Whole seconds, at least one: nft's smallest unit here is the second anyway.
                    let secs = timeout.as_secs().max(1);
                    let _ = writeln!(
                        out,
                        "add element inet {t} {set} {{ {addr} timeout {secs}s }}"
                    );
                }
                SetOp::Remove { .. } => remove(&mut out),
            }
        }
        out
    }

    /// Overrides the kernel-version detection (both forms work on new kernels; tests use this).
    pub fn with_readd_refreshes(mut self, yes: bool) -> SetWriter {
        self.readd_refreshes = yes;
        self
    }
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

    #[test]
    fn script_forms() {
        let ops = [
            SetOp::Add {
                rule: "gh",
                addr: "192.0.2.1".parse().expect("ip"),
                timeout: Duration::from_millis(300),
            },
            SetOp::Remove {
                rule: "gh",
                addr: "2001:db8::1".parse().expect("ip"),
            },
        ];
        let new = SetWriter::new("ward").with_readd_refreshes(true);
        assert_eq!(
            new.script(&ops),
            "add element inet ward fqdn4-gh { 192.0.2.1 timeout 1s }\n\
             add element inet ward fqdn6-gh { 2001:db8::1 timeout 1s }\n\
             delete element inet ward fqdn6-gh { 2001:db8::1 }\n"
        );
        let old = SetWriter::new("ward").with_readd_refreshes(false);
        assert!(old.script(&ops[..1]).starts_with(
            "add element inet ward fqdn4-gh { 192.0.2.1 timeout 1s }\n\
             delete element inet ward fqdn4-gh { 192.0.2.1 }\n\
             add element inet ward fqdn4-gh { 192.0.2.1 timeout 1s }\n"
        ));
    }
}

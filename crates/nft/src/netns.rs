//! `--netns NAME`: move the calling thread into a named network namespace (/run/netns/NAME),
//! the way `ip netns exec` does, so every later socket and nftables call happens there.

use nix::sched::{setns, CloneFlags};
use std::fs::File;

#[derive(Debug, thiserror::Error)]
#[error("cannot enter network namespace {name:?}: {reason}")]
pub struct NetnsError {
    pub name: String,
    pub reason: String,
}

/// Enters `/run/netns/NAME` (or a path, if NAME contains a '/'). Affects the calling thread
/// only: call it before spawning threads that should live there.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("/run/netns/{name}")
    };
    let err = |reason: String| NetnsError {
        name: name.to_string(),
        reason,
    };
    let f = File::open(&path)
        .map_err(|e| err(format!("{path}: {e} (list them with `ip netns list`)")))?;
    setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| err(format!("setns: {e} (are you root?)")))
}

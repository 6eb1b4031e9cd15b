//! The one error type of the lab harness.
//! Every variant says what was attempted, in which namespace, and why it failed.

use std::io;

/// Everything that can go wrong while building a lab or sending traffic through it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An external command (`ip …`) could not be started at all.
    #[error("could not run `{cmd}`: {source}{hint}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    /// An external command ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}{hint}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    /// `/run/netns/NAME` could not be opened.
    #[error("cannot open network namespace {name:?} at {path}: {source}{hint}")]
    OpenNetns {
        name: String,
        path: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    /// `setns(CLONE_NEWNET)` was refused.
    #[error("setns into network namespace {name:?} failed: {source} (are you root / do you have CAP_SYS_ADMIN?)")]
    Setns {
        name: String,
        #[source]
        source: nix::errno::Errno,
    },
    /// Writing a sysctl inside a namespace failed.
    #[error("cannot set sysctl {key}={value} in namespace {ns:?}: {source}")]
    Sysctl {
        ns: String,
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
    /// A socket or other I/O operation inside a namespace failed.
    #[error("{what} in namespace {ns:?} failed: {source}")]
    Io {
        ns: String,
        what: String,
        #[source]
        source: io::Error,
    },
    /// A helper thread could not be spawned.
    #[error("cannot spawn a thread for namespace {ns:?}: {source}")]
    Thread {
        ns: String,
        #[source]
        source: io::Error,
    },
    /// A namespace the lab wants to create already exists; it is left untouched.
    #[error("network namespace {name:?} already exists (left over from an earlier lab? try `ward lab down` or `ip netns del {name}`)")]
    AlreadyExists { name: String },
    /// The lab did not become ready (links up, addresses usable) in time.
    #[error("lab not ready after {waited:?}: {detail}")]
    NotReady {
        waited: std::time::Duration,
        detail: String,
    },
    /// The lab description is unusable (e.g. duplicate or invalid namespace names).
    #[error("invalid lab spec: {0}")]
    Spec(String),
    /// A [`crate::Zone`] cannot be served (bad name, name outside the origin, CNAME clash).
    #[error("invalid DNS zone: {0}")]
    Zone(String),
    /// Tearing down failed for one or more namespaces.
    #[error("teardown failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<LabError>),
}

/// A hint appended to error messages, based on what the kernel or `ip` said.
pub(crate) fn hint_for(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.contains("operation not permitted") || t.contains("permission denied") {
        " (are you root? the lab needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    } else if t.contains("file exists") {
        " (already exists: a previous lab was not torn down? try `ward lab down` or `ip netns del NAME`)"
    } else if t.contains("no such file") {
        " (does the namespace exist? `ip netns list`)"
    } else {
        ""
    }
}

pub(crate) fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            " (not found: is iproute2 installed / does the namespace exist?)"
        }
        io::ErrorKind::PermissionDenied => " (are you root?)",
        _ => "",
    }
}

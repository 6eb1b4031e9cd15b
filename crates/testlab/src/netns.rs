//! Handles to named network namespaces under `/run/netns` (as managed by `ip netns`).
//! Run closures on a thread that has `setns()`'d into one, or run commands in it via `ip netns exec`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};

use nix::sched::{setns, CloneFlags};

use crate::error::{hint_for, io_hint, LabError};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A handle to a named network namespace (`/run/netns/NAME`).
///
/// The handle is only a name: creating one does not create the namespace, and dropping it
/// does not delete it (that is [`crate::Lab`]'s job).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A handle to the namespace called `name` (it need not exist yet).
    pub fn new(name: impl Into<String>) -> Netns {
        Netns { name: name.into() }
    }

    /// The namespace's name, as shown by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Whether `/run/netns/NAME` exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Moves the *calling thread* into this namespace. Only for threads this crate owns.
    pub(crate) fn enter(&self) -> Result<(), LabError> {
        let path = self.path();
        let file = File::open(&path).map_err(|source| LabError::OpenNetns {
            name: self.name.clone(),
            path: path.display().to_string(),
            hint: io_hint(&source),
            source,
        })?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Setns {
            name: self.name.clone(),
            source,
        })
    }

    /// Runs `f` on a fresh thread that has `setns()`'d into this namespace and returns its result.
    ///
    /// Sockets created by `f` belong to this namespace for their whole life, even after they
    /// are handed back to (and used from) other threads. If `f` panics, the panic is resumed
    /// on the calling thread, so assertions inside `f` behave as if they ran inline.
    pub fn run<T, F>(&self, f: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("netns:{}", self.name))
            .spawn(move || -> Result<T, LabError> {
                me.enter()?;
                Ok(f())
            })
            .map_err(|source| LabError::Thread {
                ns: self.name.clone(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs `ip netns exec NAME cmd args…` and returns its output, whatever its exit status.
    ///
    /// Only a failure to start `ip` is an error; check `output.status` yourself.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output, LabError> {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        let line = command_line("ip", &full);
        Command::new("ip")
            .args(&full)
            .output()
            .map_err(|source| LabError::Spawn {
                cmd: line,
                hint: spawn_hint(&source),
                source,
            })
    }

    /// Runs `ip -n NAME args…`; a non-zero exit is an error. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Sets a sysctl (dotted form, e.g. `net.ipv4.ip_forward`) inside this namespace only.
    ///
    /// `/proc/sys/net` resolves to the namespace of the thread that opens it, so the write is
    /// done from a thread that has entered the namespace; the host's values are never touched.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        let path = sysctl_path(key)?;
        let (ns, key, value) = (self.name.clone(), key.to_string(), value.to_string());
        self.run(move || {
            std::fs::write(&path, format!("{value}\n")).map_err(|source| LabError::Sysctl {
                ns,
                key,
                value,
                source,
            })
        })?
    }

    /// Reads a sysctl (dotted form) inside this namespace, trimmed.
    pub fn sysctl(&self, key: &str) -> Result<String, LabError> {
        let path = sysctl_path(key)?;
        let (ns, what) = (self.name.clone(), format!("reading sysctl {key}"));
        self.run(move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| LabError::Io { ns, what, source })
        })?
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn sysctl_path(key: &str) -> Result<PathBuf, LabError> {
    if !key.starts_with("net.") || key.contains('/') || key.contains("..") {
        return Err(LabError::Spec(format!(
            "sysctl {key:?}: only per-namespace `net.*` keys in dotted form are allowed"
        )));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

fn command_line(prog: &str, args: &[&str]) -> String {
    std::iter::once(prog)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (is iproute2 installed and `ip` on PATH?)",
        _ => io_hint(e),
    }
}

/// Runs `ip args…`; a non-zero exit is an error carrying ip's stderr. Returns stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    let line = command_line("ip", args);
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: line.clone(),
            hint: spawn_hint(&source),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(LabError::Command {
            cmd: line,
            status: out.status.to_string(),
            hint: hint_for(&stderr),
            stderr,
        })
    }
}

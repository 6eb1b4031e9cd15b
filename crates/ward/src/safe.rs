//! Safe apply (SPEC §6): the snapshot of the table each apply replaces, the confirmation
//! deadline kept by a timer process of its own, rollback, and the audit log.
//!
//! Layout under the state directory (`--state-dir`, default /var/lib/ward):
//! `audit.jsonl` (one JSON line per action, every table and namespace), and per table and
//! namespace a directory holding `snapshot.json`, `pending.json` and a `lock` file that
//! serialises apply, confirm, rollback and the automatic revert.

use crate::commands::{Failure, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ward";

/// The state of one table in one network namespace.
pub struct State {
    root: PathBuf,
    dir: PathBuf,
    netns: Option<String>,
    table: String,
}

/// The table as it was before an apply, to be put back by `rollback` or the revert timer.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub table: String,
    pub netns: Option<String>,
    pub taken_at: String,
    /// The policy the table was applied from (its comment), if ward applied it.
    pub policy_sha256: Option<String>,
    /// `nft::live::snapshot`'s objects as JSON text, or `None` when no table was installed.
    pub objects: Option<String>,
    /// SHA-256 of `objects` (or of the empty string): a snapshot that does not match it is
    /// refused, never half applied.
    pub checksum: String,
}

/// An apply waiting for `ward confirm`.
#[derive(Serialize, Deserialize, Clone)]
pub struct Pending {
    /// Seconds since the Unix epoch.
    pub deadline_unix: u64,
    pub deadline: String,
    /// Which apply this is: the timer reverts only the apply it was started for.
    pub token: String,
    pub policy_sha256: String,
    /// The revert timer's process.
    pub timer_pid: Option<i32>,
}

/// One line of the audit log.
#[derive(Serialize, Deserialize)]
pub struct AuditEntry {
    pub timestamp: String,
    /// apply | confirm | rollback | auto-revert
    pub action: String,
    pub table: String,
    pub netns: Option<String>,
    pub policy_sha256: Option<String>,
    pub previous_sha256: Option<String>,
    /// ok | error
    pub result: String,
    pub error: Option<String>,
}

/// Held while one action reads and changes the state (and the table): an exclusive `flock`.
pub struct Lock(#[allow(dead_code)] Flock<File>);

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure(format!("error: {what} {}: {e}", path.display()))
}

impl State {
    /// The state of `table` in `netns` under `root`; nothing is read or created yet.
    pub fn new(root: &Path, netns: Option<&str>, table: &str) -> State {
        let scope = match netns {
            Some(ns) => format!("netns-{ns}.{table}"),
            None => format!("host.{table}"),
        };
        State {
            root: root.to_path_buf(),
            dir: root.join(scope),
            netns: netns.map(str::to_string),
            table: table.to_string(),
        }
    }

    /// The namespace whose table this is (`None`: ward's own).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Waits for the other actions on this table to finish, then holds them off.
    pub fn lock(&self) -> Result<Lock> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| fail("cannot create the state directory", &self.dir, e))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| fail("cannot open", &path, e))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map(Lock)
            .map_err(|(_, e)| fail("cannot lock", &path, e))
    }

    pub fn snapshot_of(
        &self,
        objects: Option<Vec<serde_json::Value>>,
        policy_sha256: Option<String>,
    ) -> Snapshot {
        let objects = objects.map(|o| serde_json::Value::Array(o).to_string());
        Snapshot {
            version: 1,
            table: self.table.clone(),
            netns: self.netns.clone(),
            taken_at: now_rfc3339(),
            policy_sha256,
            checksum: hex::encode(Sha256::digest(objects.as_deref().unwrap_or(""))),
            objects,
        }
    }

    /// Saves `s` as the last snapshot; returns what it replaced, for `restore_snapshot_file`.
    pub fn save_snapshot(&self, s: &Snapshot) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join("snapshot.json");
        let old = fs::read(&path).ok();
        let text = serde_json::to_string(s).map_err(|e| Failure(format!("error: {e}")))?;
        write_atomically(&path, text.as_bytes())?;
        Ok(old)
    }

    /// Puts back the snapshot file `save_snapshot` replaced (after an apply that failed).
    pub fn restore_snapshot_file(&self, old: Option<Vec<u8>>) -> Result<()> {
        let path = self.dir.join("snapshot.json");
        match old {
            Some(bytes) => write_atomically(&path, &bytes),
            None => fs::remove_file(&path).map_err(|e| fail("cannot remove", &path, e)),
        }
    }

    /// The last snapshot, checked whole; a clear error when there is none or it is damaged.
    pub fn load_snapshot(&self) -> Result<Snapshot> {
        let path = self.dir.join("snapshot.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure(format!(
                    "error: there is no snapshot to restore ({} does not exist): nothing was applied here yet",
                    path.display()
                )))
            }
            Err(e) => return Err(fail("cannot read", &path, e)),
        };
        let corrupt = |why: String| {
            Failure(format!(
                "error: the snapshot {} is corrupt ({why}); it was not applied and nothing was changed",
                path.display()
            ))
        };
        let s: Snapshot = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let sum = hex::encode(Sha256::digest(s.objects.as_deref().unwrap_or("")));
        if sum != s.checksum || s.version != 1 {
            return Err(corrupt("its checksum does not match its content".into()));
        }
        if s.table != self.table || s.netns != self.netns {
            return Err(corrupt(format!(
                "it is of table {} in {}",
                s.table,
                s.netns.as_deref().unwrap_or("the host's namespace")
            )));
        }
        if let Some(o) = &s.objects {
            serde_json::from_str::<Vec<serde_json::Value>>(o)
                .map_err(|e| corrupt(format!("its objects: {e}")))?;
        }
        Ok(s)
    }

    pub fn pending(&self) -> Option<Pending> {
        let text = fs::read_to_string(self.dir.join("pending.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn set_pending(&self, p: &Pending) -> Result<()> {
        let text = serde_json::to_string(p).map_err(|e| Failure(format!("error: {e}")))?;
        write_atomically(&self.dir.join("pending.json"), text.as_bytes())
    }

    pub fn clear_pending(&self) -> Result<()> {
        let path = self.dir.join("pending.json");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(fail("cannot remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// Appends one line to the audit log; a log that cannot be written is reported on stderr
    /// but does not undo what was done.
    pub fn audit(
        &self,
        action: &str,
        policy_sha256: Option<&str>,
        previous_sha256: Option<&str>,
        error: Option<&str>,
    ) {
        let entry = AuditEntry {
            timestamp: now_rfc3339(),
            action: action.to_string(),
            table: self.table.clone(),
            netns: self.netns.clone(),
            policy_sha256: policy_sha256.map(str::to_string),
            previous_sha256: previous_sha256.map(str::to_string),
            result: if error.is_some() { "error" } else { "ok" }.to_string(),
            error: error.map(str::to_string),
        };
        let path = self.root.join("audit.jsonl");
        let mut line = serde_json::to_string(&entry).unwrap_or_default();
        line.push('\n');
        // One write of one line with O_APPEND: concurrent writers never interleave lines.
        let wrote = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = wrote {
            eprintln!(
                "warning: cannot write the audit log {}: {e}",
                path.display()
            );
        }
    }

    /// The error of the last action on this table, if it failed.
    pub fn last_error(&self) -> Option<String> {
        let text = fs::read_to_string(self.root.join("audit.jsonl")).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
            .find(|e| e.table == self.table && e.netns == self.netns)
            .and_then(|e| e.error)
    }
}

/// Writes `path` whole or not at all: a temporary file (mode 0600) synced, then renamed over
/// it, then the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        fail("cannot write", path, e)
    })
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A deadline `secs` from now.
pub fn deadline_in(secs: u64) -> (u64, String) {
    let at = SystemTime::now() + Duration::from_secs(secs);
    let unix = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (unix, humantime::format_rfc3339_seconds(at).to_string())
}

/// A random token naming one confirmable apply.
pub fn token() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

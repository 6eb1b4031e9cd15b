//! Safe apply on real traffic in a namespace lab: `apply --confirm-within` reverts to the
//! snapshot unless confirmed, also after SIGKILL of the applying process; `confirm` keeps the
//! policy; `rollback` restores the last snapshot; a damaged snapshot is refused; every action
//! is one audit line.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Port 8080 from the LAN to the WAN host: allowed by OPEN, denied by CLOSED.
const OPEN: &str = "rules:
  - {id: web, direction: egress, protocol: tcp, destination_port: 8080, action: accept}
";
const CLOSED: &str = "rules:
  - {id: no-web, direction: egress, protocol: tcp, destination_port: 8080, action: deny}
";

/// A state directory of the test's own, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new(name: &str) -> StateDir {
        let p = std::env::temp_dir().join(format!("ward-safe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        StateDir(p)
    }
    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.0.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
            .collect()
    }
    fn scope(&self, lab: &Lab) -> PathBuf {
        self.0.join(format!("netns-{}.ward", lab.fw().name()))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn policy(rules: &str) -> PolicyFile {
    PolicyFile::new(&format!("{GATEWAY}{rules}"))
}

fn run(lab: &Lab, state: &StateDir, args: &[&str]) -> std::process::Output {
    let fw = lab.fw();
    let mut all = vec!["--state-dir", state.arg()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--netns", fw.name()]);
    ward(&all)
}

#[track_caller]
fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed:\n{}", text(o));
    text(o)
}

fn status(lab: &Lab, state: &StateDir) -> serde_json::Value {
    let o = run(lab, state, &["status", "--json"]);
    serde_json::from_slice(&o.stdout).expect("status --json")
}

fn sha_of(file: &PolicyFile) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(&file.0).expect("policy")))
}

/// Waits until `cond` holds, up to `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

fn actions(state: &StateDir) -> Vec<(String, String)> {
    state
        .audit()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn unconfirmed_apply_is_reverted_even_after_sigkill_of_the_applying_process() {
    let lab = lab();
    let state = StateDir::new("revert");
    let (open, closed) = (policy(OPEN), policy(CLOSED));
    ok(&run(&lab, &state, &["apply", open.path()]), "apply OPEN");
    assert_pass(&lan_to_wan(&lab, 8080), "OPEN allows 8080");

    let mut child = Command::new(WARD)
        .args(["--state-dir", state.arg(), "apply", closed.path()])
        .args(["--netns", lab.fw().name(), "--confirm-within", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ward apply");
    let closed_sha = sha_of(&closed);
    assert!(
        wait_for(Duration::from_secs(3), || status(&lab, &state)
            ["policy_sha256"]
            == closed_sha.as_str()),
        "CLOSED never became live"
    );
    // Killed right after applying (it may have exited already): the revert must not need it.
    let _ = child.kill();
    let _ = child.wait();
    let st = status(&lab, &state);
    assert!(st["pending_confirmation"].is_string(), "{st}");
    assert_blocked(
        &lan_to_wan(&lab, 8080),
        "CLOSED denies 8080 until the deadline",
    );

    let open_sha = sha_of(&open);
    assert!(
        wait_for(Duration::from_secs(5), || status(&lab, &state)
            ["policy_sha256"]
            == open_sha.as_str()),
        "the previous policy did not come back by the deadline: {}",
        status(&lab, &state)
    );
    assert_pass(
        &lan_to_wan(&lab, 8080),
        "the reverted policy allows 8080 again",
    );
    let st = status(&lab, &state);
    assert!(st["pending_confirmation"].is_null(), "{st}");
    assert_eq!(st["overall"], "healthy", "{st}");
    let audit = state.audit();
    let revert = audit.last().expect("audit lines");
    assert_eq!(revert["action"], "auto-revert", "{audit:?}");
    assert_eq!(revert["result"], "ok", "{audit:?}");
    assert_eq!(revert["policy_sha256"], open_sha.as_str(), "{audit:?}");
    assert_eq!(revert["previous_sha256"], closed_sha.as_str(), "{audit:?}");
    for e in &audit {
        for key in [
            "timestamp",
            "action",
            "policy_sha256",
            "previous_sha256",
            "result",
            "error",
        ] {
            assert!(e.get(key).is_some(), "audit line without {key}: {e}");
        }
    }
    lab.down().unwrap();
}

#[test]
fn confirm_keeps_the_policy_and_stops_the_timer() {
    let lab = lab();
    let state = StateDir::new("confirm");
    let (open, closed) = (policy(OPEN), policy(CLOSED));
    ok(&run(&lab, &state, &["apply", open.path()]), "apply OPEN");
    let out = ok(
        &run(
            &lab,
            &state,
            &["apply", closed.path(), "--confirm-within", "2"],
        ),
        "apply CLOSED",
    );
    assert!(out.contains("ward confirm"), "{out}");
    let pending: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.scope(&lab).join("pending.json")).expect("pending.json"),
    )
    .expect("pending is JSON");
    let timer = pending["timer_pid"].as_i64().expect("timer pid") as i32;
    ok(&run(&lab, &state, &["confirm"]), "confirm");
    assert!(
        wait_for(Duration::from_secs(2), || !Path::new(&format!(
            "/proc/{timer}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{timer}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the revert timer is still running after confirm"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        status(&lab, &state)["policy_sha256"],
        sha_of(&closed).as_str()
    );
    assert_blocked(&lan_to_wan(&lab, 8080), "the confirmed policy stays");
    let again = run(&lab, &state, &["confirm"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to confirm"),
        "{}",
        text(&again)
    );
    assert_eq!(
        actions(&state),
        [
            ("apply".to_string(), "ok".to_string()),
            ("apply".into(), "ok".into()),
            ("confirm".into(), "ok".into())
        ]
    );
    lab.down().unwrap();
}

#[test]
fn rollback_restores_the_last_snapshot_and_refuses_a_damaged_one() {
    let lab = lab();
    let state = StateDir::new("rollback");
    let (open, closed) = (policy(OPEN), policy(CLOSED));
    let none = run(&lab, &state, &["rollback"]);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));
    assert!(text(&none).contains("no snapshot"), "{}", text(&none));

    ok(&run(&lab, &state, &["apply", open.path()]), "apply OPEN");
    ok(
        &run(&lab, &state, &["apply", closed.path()]),
        "apply CLOSED",
    );
    let snap = state.scope(&lab).join("snapshot.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&snap)
        .expect("snapshot")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "snapshot mode {mode:o}");

    // A damaged snapshot: refused with a clear error, the live table untouched.
    let good = std::fs::read_to_string(&snap).expect("snapshot");
    std::fs::write(&snap, good.replacen("8080", "8081", 1)).expect("damage it");
    let before = live_table(&lab);
    let bad = run(&lab, &state, &["rollback"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("corrupt"), "{}", text(&bad));
    assert_eq!(
        live_table(&lab),
        before,
        "a refused snapshot changed the table"
    );
    std::fs::write(&snap, &good[..good.len() / 2]).expect("truncate it");
    let cut = run(&lab, &state, &["rollback"]);
    assert!(text(&cut).contains("corrupt"), "{}", text(&cut));
    let st = status(&lab, &state);
    assert_eq!(st["overall"], "degraded", "a failed rollback shows: {st}");

    std::fs::write(&snap, &good).expect("repair it");
    ok(&run(&lab, &state, &["rollback"]), "rollback");
    assert_eq!(
        status(&lab, &state)["policy_sha256"],
        sha_of(&open).as_str()
    );
    assert_pass(&lan_to_wan(&lab, 8080), "rolled back to OPEN");
    assert_eq!(status(&lab, &state)["overall"], "healthy");

    // An invalid policy is refused, audited, and changes nothing.
    let broken = PolicyFile::new("rules: [{id: x}]\n");
    let o = run(&lab, &state, &["apply", broken.path()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let last = state.audit().pop().expect("audit");
    assert_eq!(
        (last["action"].as_str(), last["result"].as_str()),
        (Some("apply"), Some("error"))
    );
    assert!(
        last["error"].as_str().is_some_and(|e| e.contains("action")),
        "{last}"
    );
    assert_eq!(
        status(&lab, &state)["policy_sha256"],
        sha_of(&open).as_str()
    );
    lab.down().unwrap();
}

//! Learned addresses handed from the DNS side to the packet loop: a [`Feed`] the DNS proxy's
//! committer writes to from its own thread, and an [`Inbox`] that [`Driver`](crate::io::Driver)
//! empties into the [`Engine`] between batches of frames.
//!
//! SPEC §5 lets an answer reach the client only once the data plane holds what it allows.
//! [`Feed::commit`] therefore returns only when the packet loop has applied the whole batch,
//! so the client's first packet, sent after the answer, is judged with the address learned.
//!
//! Why a mailbox and not a table shared behind a lock: the learned table is the filter's, read
//! by [`Engine::handle`] for every new flow on the loop's thread. Sharing it would put a lock
//! (and the committer's allocations while it holds it) on that path. Here the loop owns the
//! engine alone; per pass it reads one atomic flag, and only when a batch waits does it take
//! the lock, for the time of swapping two vectors (the one it gave back last time is reused,
//! so that takes no allocation either). It then applies the batch without the lock, wakes the
//! committer, and goes on. The committer's side blocks meanwhile: `dns::Learner::commit` is
//! synchronous, as a kernel transaction is. An eventfd in the loop's `poll` set wakes an idle
//! loop at once, and a busy one applies the batch after the frames already read (at most
//! `ROUNDS` batches a side, well under a millisecond), so the wait is short either way.
//!
//! Time: the DNS side speaks in TTLs; the engine's clock is the loop's milliseconds. An
//! [`Op::Learn`] carries the TTL and the loop turns it into an expiry on its own clock when it
//! applies the batch (`now + ttl`), so the address lives at least its TTL after the answer.
//!
//! Failure is closed: a loop that stopped, or that does not take a batch within the feed's
//! timeout, makes `commit` fail (and the proxy answer SERVFAIL); a batch not yet taken is
//! withdrawn first, so a failed commit never takes effect later.
//!
//! Reloads ([`Reloader::reload`], `ward engine` on SIGHUP) come through the same mailbox: the
//! loop puts the new [`Rules`] in place between batches ([`Engine::reload`], which keeps the
//! connection table) and moves the addresses learned for unchanged name rules to their new
//! positions, as the kernel plane's name sets outlive a re-apply. The inbox keeps its own copy
//! of what it taught the engine for that (the engine's learned table is the filter's, and a
//! new filter starts empty). Rule positions are the numbering both sides share, and a reload
//! may change them: every batch says which numbering (`generation`) it was made under. The
//! loop applies batches of the current one, maps those of the one before through the
//! reload's `keep`, and refuses the rest ([`Refused::Reloaded`]: the proxy answers SERVFAIL and
//! the client asks again, this time of the proxy that knows the new rules).

use crate::core::engine::{Engine, Rules};
use crate::io::IoError;
use ::core::fmt;
use ::core::net::IpAddr;
use ::core::sync::atomic::{AtomicBool, Ordering};
use ::core::time::Duration;
use std::boxed::Box;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use std::vec::Vec;

/// How long [`Feed::commit`] waits for the loop to take a batch by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// One change to the learned addresses of a `destination_fqdn` rule (by policy position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Allow `addr` for `rule` for `ttl` from when the loop applies it; a repeat sets a fresh
    /// expiry.
    Learn {
        rule: u32,
        addr: IpAddr,
        ttl: Duration,
    },
    /// Stop allowing `addr` for `rule`; it may have expired already.
    Forget { rule: u32, addr: IpAddr },
}

/// Why a batch did not take effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The packet loop has stopped: nothing is learned any more.
    Stopped,
    /// The loop did not take the batch in time; it was withdrawn.
    TimedOut,
    /// The rule at this position is not a `destination_fqdn` rule: the DNS side and the
    /// engine disagree about the policy. The batch's other changes did take effect.
    NotANameRule(u32),
    /// The batch was made for a policy the engine no longer enforces, and the rule at this
    /// position is not in the new one unchanged. The batch's other changes did take effect.
    Reloaded(u32),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Stopped => f.write_str("the engine's packet loop has stopped"),
            Refused::TimedOut => {
                f.write_str("the engine's packet loop did not take the learned addresses in time")
            }
            Refused::NotANameRule(r) => write!(
                f,
                "rule {r} of the engine's policy is not a destination_fqdn rule"
            ),
            Refused::Reloaded(r) => write!(
                f,
                "the engine's policy was reloaded and rule {r} of the one before is not in it unchanged"
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// A reloaded policy, for the loop to put in place between batches ([`Reloader::reload`]).
#[derive(Debug)]
pub struct Reload {
    pub rules: Rules,
    /// The rule numbering the DNS side learns under from now on: the one before if the
    /// policy's name rules kept their positions, else a new one (see the module doc).
    pub generation: u64,
    /// By rule position in the running policy: where the same `destination_fqdn` rule, with
    /// the same names, stands in the new one. Its learned addresses move there (with their
    /// expiry); those of other rules are dropped.
    pub keep: Vec<Option<u32>>,
}

struct State {
    /// Changes waiting for the loop, in order.
    ops: Vec<Op>,
    /// The numbering they were made under.
    generation: u64,
    /// A reload waiting for the loop, and reloads sent and applied so far.
    reload: Option<Box<Reload>>,
    reloads_sent: u64,
    reloads_applied: u64,
    /// Learned addresses the last applied reload kept.
    kept: usize,
    /// Batches sent, taken and applied so far (each counts up; `applied <= taken <= sent`).
    sent: u64,
    taken: u64,
    applied: u64,
    /// Why the last applied batch did not wholly take effect.
    refused: Option<Refused>,
    /// The inbox is gone: nothing will be applied again.
    closed: bool,
}

struct Shared {
    /// A batch waits: the only thing the loop reads when none does.
    pending: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a batch is applied or the inbox closes.
    done: Condvar,
    /// An eventfd the loop polls, written to wake it.
    wake: OwnedFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that matters here: the
        // counters only ever move forward.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.done.notify_all();
    }

    /// Tells the loop something waits.
    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to the eventfd. A full counter (EAGAIN) means
        // a wake-up is pending already, and the flag is set either way.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), ::core::ptr::addr_of!(one).cast(), 8) };
    }
}

/// The reloading side's end ([`Inbox::reloader`]): one at a time, as it waits for each.
pub struct Reloader {
    shared: Arc<Shared>,
}

impl Reloader {
    /// Hands `reload` to the packet loop and returns once it is in force there, with how many
    /// learned addresses it kept; fails only when the loop has stopped.
    pub fn reload(&self, reload: Reload) -> Result<usize, Refused> {
        let shared = &*self.shared;
        let mine = {
            let mut s = shared.lock();
            if s.closed {
                return Err(Refused::Stopped);
            }
            s.reload = Some(Box::new(reload));
            s.reloads_sent += 1;
            s.reloads_sent
        };
        shared.wake();
        let mut s = shared.lock();
        loop {
            if s.reloads_applied >= mine {
                return Ok(s.kept);
            }
            if s.closed {
                return Err(Refused::Stopped);
            }
            s = shared.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// The copy of the learned table is pruned of expired entries when it grows past twice its
/// size after the last pruning, and never below this.
const PRUNE_FLOOR: usize = 1024;

/// A connected feed and inbox.
pub fn channel() -> Result<(Feed, Inbox), IoError> {
    // SAFETY: plain system call; the result is checked before use.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(IoError {
            what: "cannot create an eventfd".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
    let wake = unsafe { OwnedFd::from_raw_fd(raw) };
    let shared = Arc::new(Shared {
        pending: AtomicBool::new(false),
        state: Mutex::new(State {
            ops: Vec::new(),
            generation: 0,
            reload: None,
            reloads_sent: 0,
            reloads_applied: 0,
            kept: 0,
            sent: 0,
            taken: 0,
            applied: 0,
            refused: None,
            closed: false,
        }),
        done: Condvar::new(),
        wake,
    });
    let feed = Feed {
        shared: shared.clone(),
        timeout: DEFAULT_TIMEOUT,
    };
    let inbox = Inbox {
        shared,
        spare: Vec::new(),
        generation: 0,
        prior: None,
        learned: BTreeMap::new(),
        prune_at: PRUNE_FLOOR,
        reloads: 0,
    };
    Ok((feed, inbox))
}

/// The DNS side's end: one per channel, so a batch waiting in the mailbox is always its own.
/// (Committers of successive policies share it from one thread, as `ward engine`'s proxy does.)
pub struct Feed {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Feed {
    /// How long [`commit`](Feed::commit) waits for the loop to take a batch.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Hands `ops` to the packet loop and returns once it has applied them all, between two
    /// frames. An empty batch changes nothing and returns at once. Rules are numbered as in
    /// the policy the loop started with (generation 0).
    pub fn commit(&mut self, ops: &[Op]) -> Result<(), Refused> {
        self.commit_as(0, ops)
    }

    /// [`commit`](Feed::commit) for rules numbered as in the policy of `generation` (see
    /// [`Reload::generation`]).
    pub fn commit_as(&mut self, generation: u64, ops: &[Op]) -> Result<(), Refused> {
        if ops.is_empty() {
            return Ok(());
        }
        let shared = &*self.shared;
        let mine = {
            let mut s = shared.lock();
            if s.closed {
                return Err(Refused::Stopped);
            }
            s.ops.extend_from_slice(ops);
            s.generation = generation;
            s.sent += 1;
            s.sent
        };
        shared.wake();
        let deadline = Instant::now() + self.timeout;
        let mut s = shared.lock();
        loop {
            if s.applied >= mine {
                return match s.refused {
                    Some(why) => Err(why),
                    None => Ok(()),
                };
            }
            if s.closed {
                return Err(Refused::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if s.taken < mine {
                    // Not taken: withdraw it, so that it never takes effect. Everything
                    // waiting is this batch, as this feed is the only one and sends one
                    // batch at a time.
                    s.ops.clear();
                    return Err(Refused::TimedOut);
                }
                // Taken: the loop is applying it now, which takes no waiting on anything.
                s = shared.done.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s = shared
                .done
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The packet loop's end. Dropping it fails every commit from then on.
pub struct Inbox {
    shared: Arc<Shared>,
    /// The vector the last batch came in, given back to the mailbox with the next take.
    spare: Vec<Op>,
    /// The numbering of the policy in force, and the one before with its rules' positions
    /// in the current policy.
    generation: u64,
    prior: Option<(u64, Vec<Option<u32>>)>,
    /// What the engine was taught, (rule, address) → expiry: what a reload moves.
    learned: BTreeMap<(u32, IpAddr), u64>,
    prune_at: usize,
    /// Reloads applied.
    reloads: u64,
}

impl Inbox {
    /// The descriptor to poll for readability: written whenever a batch waits.
    pub fn fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    /// A handle to send this loop reloaded policies with.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// Reloads applied so far.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// Applies the waiting reload, then the waiting batches, to `engine`, `now` being its
    /// clock, and tells the feed and the reloader; returns the changes applied. With nothing
    /// waiting it reads one atomic flag and allocates nothing.
    pub fn apply(&mut self, engine: &mut Engine, now: u64) -> usize {
        let shared = self.shared.clone();
        if !shared.pending.swap(false, Ordering::Acquire) {
            return 0;
        }
        let mut count = [0u8; 8];
        // SAFETY: reads the eventfd's 8-byte counter into `count`, resetting it; EAGAIN
        // (already reset) is fine.
        let _ = unsafe { libc::read(shared.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        let (batch, generation, reload) = {
            let mut s = shared.lock();
            self.spare.clear();
            ::core::mem::swap(&mut s.ops, &mut self.spare);
            s.taken = s.sent;
            (s.taken, s.generation, s.reload.take())
        };
        if let Some(reload) = reload {
            let kept = self.reload(engine, *reload, now);
            let mut s = shared.lock();
            s.reloads_applied += 1;
            s.kept = kept;
        }
        let mut refused = None;
        let ops = ::core::mem::take(&mut self.spare);
        for op in &ops {
            match *op {
                Op::Learn { rule, addr, ttl } => {
                    let Some(at) = self.position(generation, rule) else {
                        refused = refused.or(Some(Refused::Reloaded(rule)));
                        continue;
                    };
                    let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    let expires = now.saturating_add(ttl);
                    if engine.learn(at, addr, expires) {
                        self.learned.insert((at, addr), expires);
                    } else {
                        refused = refused.or(Some(Refused::NotANameRule(rule)));
                    }
                }
                Op::Forget { rule, addr } => {
                    // A rule the reload did not keep holds nothing of the old policy's.
                    if let Some(at) = self.position(generation, rule) {
                        engine.forget(at, addr);
                        self.learned.remove(&(at, addr));
                    }
                }
            }
        }
        self.spare = ops;
        {
            let mut s = shared.lock();
            s.applied = batch;
            s.refused = refused;
        }
        shared.done.notify_all();
        if self.learned.len() > self.prune_at {
            self.learned.retain(|_, expires| now < *expires);
            self.prune_at = (2 * self.learned.len()).max(PRUNE_FLOOR);
        }
        self.spare.len()
    }

    /// Where rule `rule` of the policy of `generation` stands in the one in force, if there.
    fn position(&self, generation: u64, rule: u32) -> Option<u32> {
        if generation == self.generation {
            return Some(rule);
        }
        match &self.prior {
            Some((g, keep)) if *g == generation => keep.get(rule as usize).copied().flatten(),
            _ => None,
        }
    }

    /// Puts `reload` in force; returns how many learned addresses it kept.
    fn reload(&mut self, engine: &mut Engine, reload: Reload, now: u64) -> usize {
        let Reload {
            rules,
            generation,
            keep,
        } = reload;
        engine.reload(rules);
        let old = ::core::mem::take(&mut self.learned);
        for ((rule, addr), expires) in old {
            if now >= expires {
                continue;
            }
            if let Some(&Some(to)) = keep.get(rule as usize) {
                if engine.learn(to, addr, expires) {
                    self.learned.insert((to, addr), expires);
                }
            }
        }
        if generation == self.generation {
            // Same numbering for the DNS side: the batches of the one before map as they did,
            // then through this reload's moves.
            if let Some((_, prior)) = &mut self.prior {
                for at in prior.iter_mut() {
                    *at = at.and_then(|i| keep.get(i as usize).copied().flatten());
                }
            }
        } else {
            self.prior = Some((self.generation, keep));
            self.generation = generation;
        }
        self.reloads += 1;
        self.learned.len()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("fd", &self.fd()).finish()
    }
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::arp::Side;
    use crate::core::engine::{Action, Rules};
    use crate::core::DropReason;
    use crate::testing::{self, Loop};
    use ::core::net::Ipv4Addr;
    use std::thread;
    use std::vec;

    const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

    /// Rule 0 is the name rule; rule 1 is not.
    const POLICY: &str = "
defaults: {default_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: by-name, action: accept, direction: egress, destination_fqdn: [example.com], protocol: udp, destination_port: 5000}
  - {id: by-address, action: accept, direction: egress, destination: 192.0.2.1}
";

    /// `POLICY` reloaded with a rule put first: the name rule moves from 0 to 1.
    const RELOADED: &str = "
defaults: {default_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: ssh, action: accept, direction: egress, protocol: tcp, destination_port: 22}
  - {id: by-name, action: accept, direction: egress, destination_fqdn: [example.com], protocol: udp, destination_port: 5000}
  - {id: by-address, action: accept, direction: egress, destination: 192.0.2.1}
";

    fn rules(yaml: &str) -> Rules {
        Rules::compile(&testing::policy(yaml), [5, 6])
    }

    fn engine() -> Engine {
        testing::engine(&testing::policy(POLICY), 256, 16)
    }

    fn learn(ttl_secs: u64) -> Op {
        Op::Learn {
            rule: 0,
            addr: IpAddr::V4(SERVER),
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    /// Whether a new flow to the server (from port `sport`) passes at engine time `now`.
    fn passes(lp: &Loop, now: u64, sport: u16) -> bool {
        match lp.handle(now, testing::host_datagram(SERVER, sport, 5000)) {
            Action::Forward { out: Side::Wan, .. } => true,
            Action::Drop(DropReason::NoMatchingAllowRule) => false,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn learned_once_commit_returns_refreshed_forgotten_and_expired_on_the_loop_clock() {
        let (mut feed, inbox) = channel().expect("eventfd");
        let lp = Loop::start(engine(), inbox);
        assert!(!passes(&lp, 0, 1), "nothing learned yet");

        // Applied at engine time 1000: allowed until 6000, on the loop's clock.
        lp.clock(1000);
        assert_eq!(feed.commit(&[learn(5)]), Ok(()));
        // The very next frame after `commit` returned: no wait, no retry.
        assert!(passes(&lp, 1000, 2));
        assert!(passes(&lp, 5999, 3));
        assert!(!passes(&lp, 6000, 4), "expired at 1000 + 5 s");

        // A repeat sets a fresh expiry from when it is applied.
        lp.clock(7000);
        assert_eq!(feed.commit(&[learn(5)]), Ok(()));
        lp.clock(10_000);
        assert_eq!(feed.commit(&[learn(5)]), Ok(()));
        assert!(passes(&lp, 14_999, 5), "refreshed at 10,000");
        assert!(!passes(&lp, 15_000, 6));

        // Learned, then forgotten in the next batch; learned and forgotten in one batch.
        lp.clock(20_000);
        assert_eq!(feed.commit(&[learn(60)]), Ok(()));
        assert!(passes(&lp, 20_000, 7));
        let forget = Op::Forget {
            rule: 0,
            addr: IpAddr::V4(SERVER),
        };
        assert_eq!(feed.commit(&[forget]), Ok(()));
        assert!(!passes(&lp, 20_001, 8));
        assert_eq!(feed.commit(&[learn(60), forget]), Ok(()));
        assert!(!passes(&lp, 20_002, 9), "applied in order");
        assert_eq!(feed.commit(&[]), Ok(()));
    }

    #[test]
    fn commit_waits_for_a_slow_loop_to_apply() {
        let (mut feed, mut inbox) = channel().expect("eventfd");
        let applied = Arc::new(AtomicBool::new(false));
        let seen = applied.clone();
        // A loop that dawdles after its wake-up before it applies the batch.
        let slow = thread::spawn(move || {
            let mut e = engine();
            let mut fd = libc::pollfd {
                fd: inbox.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut fd, 1, 5000) }, 1, "woken");
            thread::sleep(Duration::from_millis(100));
            seen.store(true, Ordering::SeqCst);
            assert_eq!(inbox.apply(&mut e, 0), 1);
            inbox
        });
        assert_eq!(feed.commit(&[learn(60)]), Ok(()));
        assert!(
            applied.load(Ordering::SeqCst),
            "returned before the loop applied it"
        );
        let _inbox = slow.join().expect("no panic");
    }

    #[test]
    fn a_rule_without_names_is_refused_and_said_so() {
        let (mut feed, inbox) = channel().expect("eventfd");
        let lp = Loop::start(engine(), inbox);
        let wrong = Op::Learn {
            rule: 1,
            addr: IpAddr::V4(SERVER),
            ttl: Duration::from_secs(60),
        };
        assert_eq!(
            feed.commit(&[wrong, learn(60)]),
            Err(Refused::NotANameRule(1))
        );
        // The rest of the batch took effect; the next batch is judged on its own.
        assert!(passes(&lp, 0, 1));
        assert_eq!(feed.commit(&[learn(60)]), Ok(()));
    }

    #[test]
    fn without_a_loop_commits_fail_and_never_take_effect_later() {
        let (mut feed, mut inbox) = channel().expect("eventfd");
        feed.set_timeout(Duration::from_millis(30));
        let started = Instant::now();
        assert_eq!(feed.commit(&[learn(60)]), Err(Refused::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(30));
        // The loop comes back: the withdrawn batch is not there to apply.
        let mut e = engine();
        assert_eq!(inbox.apply(&mut e, 0), 0);
        let lp = Loop::start(e, inbox);
        assert!(!passes(&lp, 0, 1));
        assert_eq!(feed.commit(&[learn(60)]), Ok(()));
        assert!(passes(&lp, 0, 2));

        // The loop gone, commits fail at once.
        drop(lp);
        feed.set_timeout(Duration::from_secs(60));
        let started = Instant::now();
        assert_eq!(feed.commit(&[learn(60)]), Err(Refused::Stopped));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_loop_going_away_wakes_a_waiting_commit() {
        let (mut feed, inbox) = channel().expect("eventfd");
        feed.set_timeout(Duration::from_secs(60));
        let waiter = thread::spawn(move || feed.commit(&[learn(60)]));
        thread::sleep(Duration::from_millis(50));
        drop(inbox);
        assert_eq!(waiter.join().expect("no panic"), Err(Refused::Stopped));
    }

    #[test]
    fn a_reload_moves_what_unchanged_name_rules_learned_and_maps_batches_made_before_it() {
        // Times stay within the gateway's neighbour entry (learned at 0).
        let (mut feed, inbox) = channel().expect("eventfd");
        let reloader = inbox.reloader();
        let lp = Loop::start(engine(), inbox);
        lp.clock(1000);
        assert_eq!(feed.commit(&[learn(5)]), Ok(()));
        assert!(passes(&lp, 1000, 1));

        // The name rule moves to position 1, under a new numbering for the DNS side.
        let moved = Reload {
            rules: rules(RELOADED),
            generation: 1,
            keep: vec![Some(1), None],
        };
        assert_eq!(reloader.reload(moved), Ok(1));
        assert!(passes(&lp, 2000, 2), "kept at its new position");
        assert!(passes(&lp, 5999, 3), "with its expiry");
        assert!(!passes(&lp, 6000, 4));

        // A batch of the new numbering; one of the old, mapped; one of neither, refused.
        let at = |rule| Op::Learn {
            rule,
            addr: IpAddr::V4(SERVER),
            ttl: Duration::from_secs(5),
        };
        lp.clock(7000);
        assert_eq!(feed.commit_as(1, &[at(1)]), Ok(()));
        assert!(passes(&lp, 11_999, 5));
        lp.clock(13_000);
        assert_eq!(feed.commit_as(0, &[at(0)]), Ok(()));
        assert!(
            passes(&lp, 17_999, 6),
            "rule 0 of the old policy is rule 1 now"
        );
        assert_eq!(feed.commit_as(0, &[at(1)]), Err(Refused::Reloaded(1)));
        assert_eq!(feed.commit_as(7, &[at(1)]), Err(Refused::Reloaded(1)));
        assert_eq!(feed.commit_as(1, &[at(0)]), Err(Refused::NotANameRule(0)));

        // A reload under the same numbering keeps the old one's mapping working.
        let same = || Reload {
            rules: rules(RELOADED),
            generation: 1,
            keep: vec![None, Some(1), None],
        };
        assert_eq!(reloader.reload(same()), Ok(1));
        assert!(passes(&lp, 17_999, 7));
        lp.clock(20_000);
        assert_eq!(feed.commit_as(0, &[at(0)]), Ok(()));
        assert!(passes(&lp, 24_999, 8));

        // Expired addresses and those of rules not kept are dropped.
        lp.clock(25_000);
        assert_eq!(reloader.reload(same()), Ok(0), "expired at 25,000");
        assert_eq!(feed.commit_as(1, &[at(1)]), Ok(()));
        let dropped = Reload {
            rules: rules(RELOADED),
            generation: 2,
            keep: vec![None, None, None],
        };
        assert_eq!(reloader.reload(dropped), Ok(0));
        assert!(!passes(&lp, 25_001, 9));

        // The loop gone, a reload fails at once.
        drop(lp);
        let late = Reload {
            rules: rules(POLICY),
            generation: 3,
            keep: Vec::new(),
        };
        assert_eq!(reloader.reload(late), Err(Refused::Stopped));
    }
}

//! The DNS proxy's [`Learner`] for `ward engine`: the committer's batches of learned and
//! evicted addresses go to the engine's packet loop through an [`engine::learn::Feed`], and a
//! commit returns once the loop has applied them (see `engine::learn` for the hand-off, and
//! why it is a mailbox the loop empties rather than a table both threads lock).
//!
//! The DNS side numbers rules by policy position, as the engine does, so an update maps onto
//! an [`Op`] field for field; the TTL stays a duration here and becomes an expiry on the
//! engine's clock when the loop applies it. Positions are those of the policy this learner's
//! committer was built for: its `generation`, which the loop maps from after a reload.

use dns::{Learner, Update};
use engine::learn::{Feed, Op, Refused};
use std::cell::RefCell;
use std::rc::Rc;

pub struct EngineLearner {
    /// Shared with the committers of the policies before and after, on the same thread.
    feed: Rc<RefCell<Feed>>,
    generation: u64,
    /// Reused for every batch.
    ops: Vec<Op>,
}

impl EngineLearner {
    pub fn new(feed: Rc<RefCell<Feed>>, generation: u64) -> EngineLearner {
        EngineLearner {
            feed,
            generation,
            ops: Vec::new(),
        }
    }
}

impl Learner for EngineLearner {
    type Error = Refused;

    fn commit(&mut self, updates: &[Update]) -> Result<(), Refused> {
        self.ops.clear();
        self.ops.extend(updates.iter().map(|u| match *u {
            Update::Add { rule, addr, ttl } => Op::Learn {
                rule: rule.0,
                addr,
                ttl,
            },
            Update::Remove { rule, addr } => Op::Forget { rule: rule.0, addr },
        }));
        // Commits are synchronous and never nest: the feed is never borrowed already.
        self.feed.borrow_mut().commit_as(self.generation, &self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dns::{Answer, Committer, Matcher, Names, Record, RuleIdx, Stats};
    use engine::core::arp::Side;
    use engine::core::engine::{Action, Engine};
    use engine::core::DropReason;
    use engine::testing::{self, Loop};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;
    use std::time::Duration;

    const LISTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    const UNLISTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 6);

    /// HTTPS to GitHub's names only; the name rule is not the first, so rule positions are
    /// checked to agree between the two sides.
    const POLICY: &str = "
defaults: {default_action: deny}
interfaces: {lan: [lan0], wan: [wan0]}
rules:
  - {id: telnet, action: deny, direction: egress, protocol: tcp, destination_port: 23}
  - {id: github, action: accept, direction: egress, destination_fqdn: [github.com, '*.github.io'], protocol: tcp, destination_port: 443}
nat:
  snat:
    - {out_interface: wan0, source: 192.168.1.0/24, masquerade: true}
";

    fn policy() -> policy::Policy {
        testing::policy(POLICY)
    }

    fn engine(p: &policy::Policy) -> Engine {
        testing::engine(p, 256, 16)
    }

    /// Whether a new connection to `dst`:443 (from port `sport`) passes at engine time `now`.
    fn passes(lp: &Loop, now: u64, dst: Ipv4Addr, sport: u16) -> bool {
        match lp.handle(now, testing::host_syn(dst, sport, 443)) {
            // Forwarded, or held while the gateway's MAC is asked for again (its entry ages
            // out on the test's clock): either only once the filter accepted it.
            Action::Forward { out: Side::Wan, .. } | Action::Reply(Side::Wan) => true,
            Action::Drop(DropReason::NoMatchingAllowRule) => false,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn add(addr: Ipv4Addr, secs: u64) -> Update {
        Update::Add {
            rule: RuleIdx(1),
            addr: IpAddr::V4(addr),
            ttl: Duration::from_secs(secs),
        }
    }

    #[test]
    fn updates_add_refresh_remove_and_expire_on_the_engine_clock() {
        let p = policy();
        let (feed, inbox) = engine::learn::channel().expect("eventfd");
        let mut learner = EngineLearner::new(Rc::new(RefCell::new(feed)), 0);
        let lp = Loop::start(engine(&p), inbox);
        assert!(!passes(&lp, 0, LISTED, 1000));

        // Added at engine time 2 s, with a 30 s TTL: allowed until 32 s.
        lp.clock(2_000);
        learner.commit(&[add(LISTED, 30)]).expect("committed");
        assert!(
            passes(&lp, 2_000, LISTED, 1001),
            "held once commit returned"
        );
        assert!(passes(&lp, 31_999, LISTED, 1002));
        assert!(
            !passes(&lp, 32_000, LISTED, 1003),
            "expired on the engine's clock"
        );
        assert!(!passes(&lp, 2_000, UNLISTED, 1004), "only what was learned");

        // The same answer again, later: the timeout starts afresh.
        lp.clock(40_000);
        learner.commit(&[add(LISTED, 30)]).expect("committed");
        lp.clock(60_000);
        learner.commit(&[add(LISTED, 30)]).expect("committed");
        assert!(passes(&lp, 89_999, LISTED, 1005), "refreshed at 60 s");

        // Evicted: gone at once, while its TTL would still run.
        learner
            .commit(&[Update::Remove {
                rule: RuleIdx(1),
                addr: IpAddr::V4(LISTED),
            }])
            .expect("committed");
        assert!(!passes(&lp, 89_999, LISTED, 1006));

        // A rule the engine knows by another position is refused, not silently dropped.
        let wrong = Update::Add {
            rule: RuleIdx(0),
            addr: IpAddr::V4(UNLISTED),
            ttl: Duration::from_secs(30),
        };
        assert_eq!(learner.commit(&[wrong]), Err(Refused::NotANameRule(0)));

        drop(lp);
        assert_eq!(learner.commit(&[add(LISTED, 30)]), Err(Refused::Stopped));
        assert_eq!(
            learner.commit(&[]),
            Ok(()),
            "an empty batch changes nothing"
        );
    }

    /// The proxy's own committer, learning an answer for a listed name: once `learn` returns
    /// (when the proxy would release the answer), the engine lets the name's addresses
    /// through, CNAME chain and all, and nothing else.
    #[test]
    fn an_answer_the_committer_releases_is_already_allowed_by_the_engine() {
        let p = policy();
        let (feed, inbox) = engine::learn::channel().expect("eventfd");
        let lp = Loop::start(engine(&p), inbox);
        lp.clock(5_000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        let stats = Arc::new(Stats::default());
        let (committer, task) = Committer::new(
            &p.dns,
            Arc::new(Matcher::from_policy(&p)),
            stats.clone(),
            Arc::new(Names::new(100)),
            EngineLearner::new(Rc::new(RefCell::new(feed)), 0),
        );
        local.spawn_local(task);
        local.block_on(&rt, async {
            let answer = Answer {
                qname: "www.github.io".into(),
                records: vec![
                    Record::Cname {
                        owner: "www.github.io".into(),
                        target: "github.com".into(),
                        ttl: 300,
                    },
                    Record::Addr {
                        owner: "github.com".into(),
                        addr: IpAddr::V4(LISTED),
                        ttl: 60,
                    },
                ],
            };
            committer.learn(answer).await.expect("committed");
        });
        assert!(passes(&lp, 5_000, LISTED, 2000));
        assert!(!passes(&lp, 5_000, UNLISTED, 2001));
        // The chain's smallest TTL, 60 s, from when the loop applied it.
        assert!(passes(&lp, 64_999, LISTED, 2002));
        assert!(!passes(&lp, 65_000, LISTED, 2003));
        assert_eq!(
            stats
                .commit_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );

        // With the loop gone, the committer refuses: the proxy answers SERVFAIL.
        drop(lp);
        let refused = local.block_on(&rt, async {
            committer
                .learn(Answer {
                    qname: "github.com".into(),
                    records: vec![Record::Addr {
                        owner: "github.com".into(),
                        addr: IpAddr::V4(UNLISTED),
                        ttl: 60,
                    }],
                })
                .await
        });
        assert!(
            matches!(refused, Err(dns::CommitFailed::Refused(_))),
            "{refused:?}"
        );
        assert_eq!(
            stats
                .commit_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}

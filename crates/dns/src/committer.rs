//! The one thread that owns the cache and the data plane's [`Learner`]: answers waiting to be
//! released queue here, every answer that arrived meanwhile joins one batch and one commit,
//! and each waiting query learns the commit's result only once it is final.

use crate::cache::{Answer, Cache, Update};
use crate::learner::Learner;
use crate::matcher::Matcher;
use crate::stats::Stats;
use policy::DnsSettings;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Answers committed together at most; more wait for the next transaction.
const MAX_BATCH: usize = 512;

/// How often an idle committer drops expired cache entries.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Why an answer was not released.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommitFailed {
    #[error("the data plane refused the learned addresses: {0}")]
    Refused(String),
    #[error("the learner thread has stopped")]
    Stopped,
}

struct Job {
    answer: Answer,
    done: oneshot::Sender<Result<(), CommitFailed>>,
}

/// The proxy's handle on the committer thread; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the thread. `make` builds the learner on that thread (so it may hold things that
    /// cannot move between threads, like a libnftables context); its error is returned here.
    /// The thread ends once every `Committer` clone is dropped.
    pub fn spawn<L, F, E>(
        settings: &DnsSettings,
        matcher: Arc<Matcher>,
        stats: Arc<Stats>,
        make: F,
    ) -> Result<(Committer, JoinHandle<()>), String>
    where
        L: Learner,
        F: FnOnce() -> Result<L, E> + Send + 'static,
        E: std::fmt::Display,
    {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let cache = Cache::new(settings);
        let thread = std::thread::Builder::new()
            .name("ward-dns-commit".into())
            .spawn(move || match make() {
                Ok(learner) => {
                    let _ = ready_tx.send(Ok(()));
                    run(rx, learner, cache, &matcher, &stats);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| format!("cannot start the DNS commit thread: {e}"))?;
        match ready.recv() {
            Ok(Ok(())) => Ok((Committer { jobs }, thread)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the DNS commit thread died while starting".into()),
        }
    }

    /// Learns `answer` and returns once the data plane holds what it allows (or refused it).
    pub async fn learn(&self, answer: Answer) -> Result<(), CommitFailed> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job { answer, done })
            .map_err(|_| CommitFailed::Stopped)?;
        result.await.unwrap_or(Err(CommitFailed::Stopped))
    }
}

fn run<L: Learner>(
    jobs: mpsc::Receiver<Job>,
    mut learner: L,
    mut cache: Cache,
    matcher: &Matcher,
    stats: &Stats,
) {
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut updates = Vec::new();
    loop {
        match jobs.recv_timeout(EXPIRE_EVERY) {
            Ok(job) => batch.push(job),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                cache.expire(now_ms());
                stats.learned.store(cache.len() as u64, Relaxed);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let now = now_ms();
        updates.clear();
        for job in &batch {
            updates.extend(cache.learn(now, &job.answer, matcher));
        }
        let result = learner.commit(&updates).map_err(|e| {
            Stats::add(&stats.commit_failures);
            tracing::warn!(error = %e, "DNS answers withheld: committing learned addresses failed");
            // The data plane did not take these; the next answer for the name adds them again.
            for u in &updates {
                if let Update::Add { rule, addr, .. } = *u {
                    cache.forget(rule, addr);
                }
            }
            CommitFailed::Refused(e.to_string())
        });
        stats.learned.store(cache.len() as u64, Relaxed);
        for job in batch.drain(..) {
            let _ = job.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Record;
    use crate::learner::{RecordingError, RecordingLearner};
    use crate::matcher::{matcher, RuleIdx};
    use std::sync::Mutex;

    /// Records into a shared learner so the test can look while the thread owns it.
    struct Shared(Arc<Mutex<RecordingLearner>>);

    impl Learner for Shared {
        type Error = RecordingError;
        fn commit(&mut self, updates: &[Update]) -> Result<(), RecordingError> {
            self.0.lock().expect("lock").commit(updates)
        }
    }

    fn answer(name: &str, ip: &str) -> Answer {
        Answer {
            qname: name.into(),
            records: vec![Record::Addr {
                owner: name.into(),
                addr: ip.parse().expect("ip"),
                ttl: 60,
            }],
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn commits_before_returning_and_reports_refusals() {
        let rec = Arc::new(Mutex::new(RecordingLearner::new()));
        let stats = Arc::new(Stats::default());
        let shared = Shared(rec.clone());
        let (c, _thread) = Committer::spawn(
            &DnsSettings::default(),
            Arc::new(matcher(&[&["example.com"]])),
            stats.clone(),
            move || Ok::<_, String>(shared),
        )
        .expect("spawn");
        let rt = runtime();
        rt.block_on(c.learn(answer("example.com", "192.0.2.1")))
            .expect("committed");
        assert_eq!(
            rec.lock()
                .expect("lock")
                .updates()
                .copied()
                .collect::<Vec<_>>(),
            vec![Update::Add {
                rule: RuleIdx(0),
                addr: "192.0.2.1".parse().expect("ip"),
                ttl: Duration::from_secs(60)
            }]
        );
        assert_eq!(stats.learned.load(Relaxed), 1);

        rec.lock().expect("lock").fail = true;
        let err = rt.block_on(c.learn(answer("example.com", "192.0.2.2")));
        assert!(matches!(err, Err(CommitFailed::Refused(_))), "{err:?}");
        assert_eq!(stats.commit_failures.load(Relaxed), 1);
        // The refused address was forgotten: only the first one is held.
        assert_eq!(stats.learned.load(Relaxed), 1);

        // Unmatched names commit an empty batch and still succeed.
        rec.lock().expect("lock").fail = false;
        rt.block_on(c.learn(answer("other.org", "192.0.2.3")))
            .expect("nothing to learn");
    }

    #[test]
    fn a_learner_that_cannot_start_is_reported() {
        let r = Committer::spawn(
            &DnsSettings::default(),
            Arc::new(matcher(&[])),
            Arc::new(Stats::default()),
            || Err::<RecordingLearner, _>("no libnftables"),
        );
        assert_eq!(r.err().as_deref(), Some("no libnftables"));
    }
}

//! The seam between the cache and a data plane: whatever enforces the rules (the kernel's
//! sets, the engine's table) receives learned and evicted addresses through [`Learner`].

use crate::cache::Update;

/// A data plane that can be told which addresses the name rules now allow.
pub trait Learner {
    type Error: std::error::Error;

    /// Puts every update into effect, in order, and returns only once they all are: in one
    /// transaction where the data plane has transactions, so that all or none take effect.
    /// The proxy releases the answer to the client as soon as this returns `Ok`, so returning
    /// early would let a client connect before its address is allowed. On `Err` the proxy
    /// answers SERVFAIL instead. An empty batch is allowed and changes nothing.
    fn commit(&mut self, updates: &[Update]) -> Result<(), Self::Error>;
}

/// A [`Learner`] that only records what it is given, for tests of the code that drives one.
#[derive(Clone, Debug, Default)]
pub struct RecordingLearner {
    /// Each successful commit's batch, in order.
    pub commits: Vec<Vec<Update>>,
    /// While set, commits fail and record nothing (a transaction that did not happen).
    pub fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("commit refused: the recording learner was told to fail")]
pub struct RecordingError;

impl RecordingLearner {
    pub fn new() -> RecordingLearner {
        RecordingLearner::default()
    }

    /// One whose commits fail until `fail` is cleared.
    pub fn failing() -> RecordingLearner {
        RecordingLearner {
            fail: true,
            ..RecordingLearner::default()
        }
    }

    /// Every committed update, in order, across batches.
    pub fn updates(&self) -> impl Iterator<Item = &Update> {
        self.commits.iter().flatten()
    }
}

impl Learner for RecordingLearner {
    type Error = RecordingError;

    fn commit(&mut self, updates: &[Update]) -> Result<(), RecordingError> {
        if self.fail {
            return Err(RecordingError);
        }
        self.commits.push(updates.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleIdx;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    #[test]
    fn records_batches_and_fails_on_request() {
        let add = Update::Add {
            rule: RuleIdx(1),
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            ttl: Duration::from_secs(60),
        };
        let mut l = RecordingLearner::new();
        assert!(l.commit(&[add]).is_ok());
        assert!(l.commit(&[]).is_ok());
        l.fail = true;
        assert!(l.commit(&[add]).is_err());
        assert_eq!(l.commits, vec![vec![add], vec![]]);
        assert_eq!(l.updates().count(), 1);

        let mut l = RecordingLearner::failing();
        let err = l.commit(&[add]).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("commit refused: the recording learner was told to fail")
        );
        assert!(l.commits.is_empty());
    }
}

//! A transactional id's state, as Kafka's transaction coordinator keeps it.
//!
//! `Empty` (no open transaction) -> `Ongoing` (partitions or a group's
//! offsets added) -> `PrepareCommit` / `PrepareAbort` (the decision is
//! durable; markers are being written) -> `CompleteCommit` /
//! `CompleteAbort` (markers written) -> `Ongoing` again with the next
//! transaction. Each producer incarnation has an epoch; an older epoch is
//! fenced. The checks here are pure; the coordinator does the I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sluice_protocol::ResponseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// The names DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A transactional id's durable state (the transaction log's value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump (-1 if none): a retried
    /// InitProducerId from it is answered again, not fenced.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, i32)>,
    pub groups: BTreeSet<String>,
    pub start_ms: i64,
    pub last_update_ms: i64,
}

impl TxnMeta {
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
        TxnMeta {
            producer_id,
            producer_epoch: 0,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now_ms,
        }
    }

    /// Checks that a request comes from the current producer incarnation.
    pub fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if epoch > self.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        Ok(())
    }

    /// Whether the epoch can be bumped once more without overflowing.
    pub fn epoch_exhausted(&self) -> bool {
        self.producer_epoch >= i16::MAX - 1
    }

    /// Adds to the transaction (AddPartitionsToTxn, AddOffsetsToTxn),
    /// starting one if none is open.
    pub fn add(&mut self, partitions: &[(String, i32)], group: Option<&str>, now_ms: i64) -> Result<(), ResponseError> {
        match self.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => return Err(ResponseError::ConcurrentTransactions),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                self.partitions.clear();
                self.groups.clear();
                self.start_ms = now_ms;
                self.state = TxnState::Ongoing;
            }
            TxnState::Ongoing => {}
        }
        self.partitions.extend(partitions.iter().cloned());
        if let Some(g) = group {
            self.groups.insert(g.to_string());
        }
        self.last_update_ms = now_ms;
        Ok(())
    }

    /// EndTxn: what to do for a commit (`true`) or abort.
    pub fn end(&self, commit: bool) -> Result<EndStep, ResponseError> {
        let prepare = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        let complete = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        match self.state {
            TxnState::Ongoing => Ok(EndStep::Prepare(prepare)),
            // A retry of an EndTxn whose markers are being (or were)
            // written: finish them, or just answer.
            s if s == prepare => Ok(EndStep::Finish),
            s if s == complete => Ok(EndStep::AlreadyDone),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndStep {
    /// Persist this Prepare state, then write markers.
    Prepare(TxnState),
    /// Markers must still be written (a retry, or after a restart).
    Finish,
    AlreadyDone,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TxnMeta {
        TxnMeta::new(10, 60_000, 0)
    }

    #[test]
    fn producers_are_checked_by_id_and_epoch() {
        let mut m = meta();
        m.producer_epoch = 3;
        assert_eq!(m.check_producer(10, 3), Ok(()));
        assert_eq!(m.check_producer(11, 3), Err(ResponseError::InvalidProducerIdMapping));
        assert_eq!(m.check_producer(10, 2), Err(ResponseError::ProducerFenced));
        assert_eq!(m.check_producer(10, 4), Err(ResponseError::InvalidProducerEpoch));
    }

    #[test]
    fn a_transaction_runs_add_prepare_complete() {
        let mut m = meta();
        assert_eq!(m.end(true), Err(ResponseError::InvalidTxnState), "nothing to commit");
        m.add(&[("t".into(), 0)], None, 5).unwrap();
        assert_eq!((m.state, m.start_ms), (TxnState::Ongoing, 5));
        m.add(&[("t".into(), 1)], Some("g"), 6).unwrap();
        assert_eq!(m.partitions.len(), 2);
        assert_eq!(m.end(true), Ok(EndStep::Prepare(TxnState::PrepareCommit)));
        m.state = TxnState::PrepareCommit;
        assert_eq!(
            m.add(&[("t".into(), 2)], None, 7),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(m.end(true), Ok(EndStep::Finish));
        assert_eq!(m.end(false), Err(ResponseError::InvalidTxnState));
        m.state = TxnState::CompleteCommit;
        assert_eq!(m.end(true), Ok(EndStep::AlreadyDone));
        // The next transaction starts afresh.
        m.add(&[("u".into(), 0)], None, 9).unwrap();
        assert_eq!(
            m.partitions.iter().cloned().collect::<Vec<_>>(),
            vec![("u".to_string(), 0)]
        );
        assert!(m.groups.is_empty());
    }
}

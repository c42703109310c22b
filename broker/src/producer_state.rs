//! What a partition knows of the producers that write to it: the basis of
//! idempotence and of transactions on the read side.
//!
//! Per producer id: its current epoch, the sequence ranges and offsets of
//! its last five batches (a retried batch among them is answered with its
//! original offset, not appended again), and the first offset of its open
//! transaction here, if any. Per partition: the aborted transactions, for
//! read_committed fetches, and the first offset of any open transaction,
//! which caps the last stable offset.
//!
//! State changes only by [`ProducerStates::apply`] on each appended batch,
//! in log order, so replaying the log from a snapshot rebuilds it exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use sluice_protocol::ResponseError;
use sluice_storage::batch::{BatchHeader, MarkerType, sequence_after};

/// Batches remembered per producer for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct BatchSequence {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSequence>,
    last_append_ms: i64,
    /// First offset of this producer's open transaction in this partition.
    txn_first_offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

/// Whether a producer's batch may be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// A retry of a batch already in the log, at this base offset.
    Duplicate {
        base_offset: i64,
    },
    Reject(ResponseError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: BTreeMap<i64, ProducerEntry>,
    /// Aborted transactions, in order of their markers.
    aborted: Vec<AbortedTxn>,
    /// (first offset, producer id) of each open transaction: an index of
    /// `producers`' `txn_first_offset`, so the last stable offset (asked on
    /// every fetch) costs no scan of every producer. Rebuilt by `reindex`
    /// after loading.
    #[serde(skip)]
    open_txns: BTreeSet<(i64, i64)>,
}

impl ProducerStates {
    /// Checks a data batch of an idempotent or transactional producer
    /// (producer id >= 0) before it is appended.
    pub fn check(&self, h: &BatchHeader) -> Verdict {
        assert!(h.producer_id >= 0 && !h.is_control());
        let first_seq = h.base_sequence;
        let last_seq = sequence_after(first_seq, h.last_offset_delta);
        let Some(e) = self.producers.get(&h.producer_id) else {
            // Unknown producer: its first batch starts at sequence 0.
            return if first_seq == 0 {
                Verdict::Append
            } else {
                Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
            };
        };
        if h.producer_epoch < e.epoch {
            return Verdict::Reject(ResponseError::InvalidProducerEpoch);
        }
        if h.producer_epoch > e.epoch {
            // A new epoch restarts the sequence.
            return if first_seq == 0 {
                Verdict::Append
            } else {
                Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
            };
        }
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Verdict::Duplicate {
                base_offset: b.base_offset,
            };
        }
        match e.batches.back() {
            // The epoch is known only from a marker: sequences start at 0.
            None if first_seq == 0 => Verdict::Append,
            Some(last) if first_seq == sequence_after(last.last_seq, 1) => Verdict::Append,
            _ => Verdict::Reject(ResponseError::OutOfOrderSequenceNumber),
        }
    }

    /// Records an appended batch (base offset assigned). `marker` is the
    /// batch's marker type when it is a transaction marker.
    pub fn apply(&mut self, h: &BatchHeader, marker: Option<MarkerType>, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        let e = self.producers.entry(h.producer_id).or_insert_with(|| ProducerEntry {
            epoch: h.producer_epoch,
            batches: VecDeque::new(),
            last_append_ms: now_ms,
            txn_first_offset: None,
        });
        if h.producer_epoch > e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        e.last_append_ms = now_ms;
        if h.is_control() {
            if let (Some(marker), Some(first)) = (marker, e.txn_first_offset.take()) {
                self.open_txns.remove(&(first, h.producer_id));
                if marker == MarkerType::Abort {
                    self.aborted.push(AbortedTxn {
                        producer_id: h.producer_id,
                        first_offset: first,
                        last_offset: h.base_offset.0,
                    });
                }
            }
            return;
        }
        if h.is_transactional() && e.txn_first_offset.is_none() {
            e.txn_first_offset = Some(h.base_offset.0);
            self.open_txns.insert((h.base_offset.0, h.producer_id));
        }
        e.batches.push_back(BatchSequence {
            first_seq: h.base_sequence,
            last_seq: sequence_after(h.base_sequence, h.last_offset_delta),
            base_offset: h.base_offset.0,
        });
        while e.batches.len() > PRODUCER_BATCHES_KEPT {
            e.batches.pop_front();
        }
    }

    /// The first offset of any open transaction: the last stable offset is
    /// at most this.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        debug_assert_eq!(
            self.open_txns.first().map(|(first, _)| *first),
            self.producers.values().filter_map(|e| e.txn_first_offset).min()
        );
        self.open_txns.first().map(|(first, _)| *first)
    }

    /// Rebuilds the open-transaction index (after deserializing).
    pub fn reindex(&mut self) {
        self.open_txns = self
            .producers
            .iter()
            .filter_map(|(pid, e)| e.txn_first_offset.map(|first| (first, *pid)))
            .collect();
    }

    /// Aborted transactions that have data in `[from, to)`: (producer id,
    /// first offset), as Fetch lists them.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        // In marker order, so by last offset: skip those ending before `from`.
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    }

    /// Forgets producers idle for `expiration_ms` with nothing open, and
    /// aborted transactions wholly below the log start.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64, log_start: i64) {
        self.producers
            .retain(|_, e| e.txn_first_offset.is_some() || now_ms.saturating_sub(e.last_append_ms) < expiration_ms);
        self.aborted.retain(|a| a.last_offset >= log_start);
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::Offset;
    use sluice_storage::batch::{BatchWriter, RecordData, encode_batch_as, encode_marker};

    fn batch(pid: i64, epoch: i16, seq: i32, records: i32, transactional: bool) -> BatchHeader {
        let recs: Vec<RecordData> = (0..records)
            .map(|_| RecordData {
                key: None,
                value: Some(b"v".to_vec()),
                headers: vec![],
            })
            .collect();
        let b = encode_batch_as(
            &recs,
            0,
            BatchWriter {
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: seq,
                transactional,
                control: false,
            },
        );
        BatchHeader::parse(&b).unwrap()
    }

    fn at(mut h: BatchHeader, offset: i64) -> BatchHeader {
        h.base_offset = Offset(offset);
        h
    }

    #[test]
    fn sequences_duplicates_and_epochs() {
        let mut s = ProducerStates::default();
        let b0 = batch(7, 0, 0, 3, false);
        assert_eq!(s.check(&b0), Verdict::Append);
        s.apply(&at(b0, 100), None, 0);
        // The same batch again: a duplicate at its original offset.
        assert_eq!(s.check(&b0), Verdict::Duplicate { base_offset: 100 });
        // The next batch continues at sequence 3; a gap or a replay of a
        // partial range is out of order.
        let b1 = batch(7, 0, 3, 2, false);
        assert_eq!(s.check(&b1), Verdict::Append);
        assert_eq!(
            s.check(&batch(7, 0, 4, 1, false)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(
            s.check(&batch(7, 0, 9, 1, false)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
        s.apply(&at(b1, 103), None, 0);
        // An older epoch is fenced; a newer one starts over at 0.
        assert_eq!(
            s.check(&batch(7, -1, 5, 1, false)),
            Verdict::Reject(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(
            s.check(&batch(7, 1, 5, 1, false)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(s.check(&batch(7, 1, 0, 1, false)), Verdict::Append);
        // An unknown producer must start at 0.
        assert_eq!(
            s.check(&batch(8, 0, 4, 1, false)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
    }

    #[test]
    fn only_the_last_five_batches_count_as_duplicates() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            let b = batch(1, 0, i, 1, false);
            assert_eq!(s.check(&b), Verdict::Append);
            s.apply(&at(b, i as i64), None, 0);
        }
        assert_eq!(
            s.check(&batch(1, 0, 6, 1, false)),
            Verdict::Duplicate { base_offset: 6 }
        );
        assert_eq!(
            s.check(&batch(1, 0, 2, 1, false)),
            Verdict::Duplicate { base_offset: 2 }
        );
        assert_eq!(
            s.check(&batch(1, 0, 1, 1, false)),
            Verdict::Reject(ResponseError::OutOfOrderSequenceNumber)
        );
    }

    #[test]
    fn transactions_hold_the_stable_offset_and_aborts_are_listed() {
        let mut s = ProducerStates::default();
        s.apply(&at(batch(5, 0, 0, 2, true), 10), None, 0);
        s.apply(&at(batch(6, 0, 0, 1, true), 12), None, 0);
        assert_eq!(s.first_unstable_offset(), Some(10));
        let commit = BatchHeader::parse(&encode_marker(5, 0, MarkerType::Commit, 0, 0)).unwrap();
        s.apply(&at(commit, 13), Some(MarkerType::Commit), 0);
        assert_eq!(s.first_unstable_offset(), Some(12));
        let abort = BatchHeader::parse(&encode_marker(6, 0, MarkerType::Abort, 0, 0)).unwrap();
        s.apply(&at(abort, 14), Some(MarkerType::Abort), 0);
        assert_eq!(s.first_unstable_offset(), None);
        assert_eq!(s.aborted_in(0, 100), vec![(6, 12)]);
        assert_eq!(s.aborted_in(15, 100), vec![]);
        assert_eq!(s.aborted_in(0, 12), vec![]);
        // A marker with a higher epoch fences: the old epoch is rejected.
        let fence = BatchHeader::parse(&encode_marker(6, 3, MarkerType::Abort, 0, 0)).unwrap();
        s.apply(&at(fence, 15), Some(MarkerType::Abort), 0);
        assert_eq!(
            s.check(&batch(6, 0, 1, 1, true)),
            Verdict::Reject(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(s.check(&batch(6, 3, 0, 1, true)), Verdict::Append);
    }

    #[test]
    fn expiry_keeps_open_transactions() {
        let mut s = ProducerStates::default();
        s.apply(&at(batch(1, 0, 0, 1, false), 0), None, 0);
        s.apply(&at(batch(2, 0, 0, 1, true), 1), None, 0);
        s.expire(1_000_000, 1000, 0);
        assert_eq!(s.producer_count(), 1);
        assert_eq!(s.first_unstable_offset(), Some(1));
    }
}

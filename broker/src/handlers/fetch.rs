//! Fetch (v4-v16). Partitions are read on their owning shards, up to the
//! high watermark (the durable offset), whole batches only: a fetch from
//! the middle of a batch returns that whole batch. When less than
//! `min_bytes` is available the request waits, up to `max_wait_ms`, and is
//! woken early when any requested partition gains data.
//!
//! Limits: each partition returns at most `partition_max_bytes` and the
//! response at most `max_bytes` (capped by the broker's `fetch.max.bytes`),
//! except that the first partition with data always returns at least one
//! batch, so a batch larger than the limits still reaches the consumer.
//!
//! read_committed fetches read only up to the last stable offset and list
//! the aborted transactions in what they return, so clients drop aborted
//! records (control batches are dropped by clients in both modes).
//!
//! Served batches are not copied into the response: `handle` returns the
//! response's fields and, per partition, the batches, which
//! `encode_fetch_response` chains into the frame as the shared buffers they
//! are (the cache's, or a disk read's).
//!
//! Fetch sessions (KIP-227) are not kept: every response is a full one with
//! session id 0, which clients take as "sessions unsupported".

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_protocol::ResponseError;
use sluice_protocol::fetch_frame::RecordsSource;
use sluice_protocol::frame_chain::FrameChain;
use sluice_protocol::kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use sluice_protocol::kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use sluice_storage::{Offset, ReadLimits, ServedBatch};

use crate::error::storage_error_code;
use crate::runtime;
use crate::shard::Shard;

/// One requested partition.
#[derive(Debug, Clone)]
struct Slot {
    topic: usize,
    partition_pos: usize,
    name: String,
    index: i32,
    fetch_offset: i64,
    partition_max_bytes: usize,
    read_committed: bool,
}

impl Slot {
    /// Where this fetch's reads of the partition stop: the last stable
    /// offset for read_committed, else the high watermark.
    fn readable_end(&self, high_watermark: Offset, last_stable: Offset) -> Offset {
        if self.read_committed {
            last_stable
        } else {
            high_watermark
        }
    }
}

/// What a partition read returned.
#[derive(Debug)]
struct SlotRead {
    error_code: i16,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    batches: Vec<ServedBatch>,
    /// read_committed: (producer id, first offset) of aborted transactions
    /// with data in `batches`.
    aborted: Vec<(i64, i64)>,
}

impl SlotRead {
    fn error(code: i16) -> SlotRead {
        SlotRead {
            error_code: code,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            batches: Vec::new(),
            aborted: Vec::new(),
        }
    }

    fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }

    /// Whether the partition had records to give at `slot`'s offset.
    fn may_have_data(&self, slot: &Slot) -> bool {
        let upper = slot.readable_end(Offset(self.high_watermark), Offset(self.last_stable_offset));
        self.error_code == 0 && slot.fetch_offset < upper.0
    }
}

/// A partition's records in a response: whole batches, served as stored.
#[derive(Debug, Default)]
pub struct ServedRecords(Vec<ServedBatch>);

impl RecordsSource for ServedRecords {
    fn records_len(&self) -> usize {
        self.0.iter().map(|b| b.len()).sum()
    }

    fn put_records(&self, out: &mut FrameChain) {
        for batch in &self.0 {
            out.put_slice(&batch.head());
            out.put_bytes(batch.tail());
        }
    }
}

/// The response's fields and, per partition in response order, its records.
pub type FetchOutcome = (FetchResponse, Vec<Option<ServedRecords>>);

pub async fn handle(shard: &Rc<Shard>, request: FetchRequest, version: i16) -> FetchOutcome {
    if request.session_id != 0 {
        let response = FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
        return (response, Vec::new());
    }
    let metadata = shard.metadata();
    let read_committed = request.isolation_level == 1;
    let max_wait = runtime::client_wait(i64::from(request.max_wait_ms));
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = match request.max_bytes {
        n if n > 0 => (n as usize).min(shard.config.fetch_bytes_max),
        _ => shard.config.fetch_bytes_max,
    };
    let mut response = FetchResponse::default();
    let mut slots: Vec<Slot> = Vec::new();
    let mut fixed: Vec<(usize, usize, SlotRead)> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let found = if version >= 13 {
            metadata.topic_by_id(&topic.topic_id)
        } else {
            metadata.topic(&topic.topic)
        };
        let mut out = FetchableTopicResponse::default();
        if version >= 13 {
            out.topic_id = topic.topic_id;
        } else {
            out.topic = topic.topic.clone();
        }
        for (pi, p) in topic.partitions.iter().enumerate() {
            out.partitions
                .push(PartitionData::default().with_partition_index(p.partition));
            match found {
                Some(t) if (0..t.partitions).contains(&p.partition) => slots.push(Slot {
                    topic: ti,
                    partition_pos: pi,
                    name: t.name.clone(),
                    index: p.partition,
                    fetch_offset: p.fetch_offset,
                    partition_max_bytes: p.partition_max_bytes.max(0) as usize,
                    read_committed,
                }),
                Some(_) => fixed.push((ti, pi, SlotRead::error(ResponseError::UnknownTopicOrPartition.code()))),
                None if version >= 13 => fixed.push((ti, pi, SlotRead::error(ResponseError::UnknownTopicId.code()))),
                None => fixed.push((ti, pi, SlotRead::error(ResponseError::UnknownTopicOrPartition.code()))),
            }
        }
        response.responses.push(out);
    }

    let mut by_owner: BTreeMap<usize, Vec<(usize, Slot)>> = BTreeMap::new();
    for (i, slot) in slots.iter().enumerate() {
        by_owner
            .entry(shard.owner_of(&slot.name, slot.index))
            .or_default()
            .push((i, slot.clone()));
    }
    let deadline = Instant::now() + max_wait;
    let reads = loop {
        let reads = read_all(shard, &by_owner, slots.len(), max_bytes).await;
        let available: usize = reads.iter().map(|r| r.bytes()).sum();
        let any_error = reads.iter().any(|r| r.error_code != 0);
        if available >= min_bytes || any_error || Instant::now() >= deadline || shard.is_stopping() || slots.is_empty()
        {
            break reads;
        }
        wait_for_data(shard, &by_owner, deadline).await;
    };

    // Assemble in request order, within max_bytes; the first partition with
    // data returns at least its first batch.
    let mut budget = max_bytes;
    let mut returned_any = false;
    let mut records: Vec<Vec<Option<ServedRecords>>> = response
        .responses
        .iter()
        .map(|t| t.partitions.iter().map(|_| None).collect())
        .collect();
    let mut place = |ti: usize, pi: usize, read: SlotRead, budget: &mut usize, returned_any: &mut bool| {
        let p = &mut response.responses[ti].partitions[pi];
        p.error_code = read.error_code;
        p.high_watermark = read.high_watermark;
        p.last_stable_offset = read.last_stable_offset;
        if version >= 5 {
            p.log_start_offset = read.log_start_offset;
        }
        if read_committed {
            let aborted = read
                .aborted
                .iter()
                .map(|&(producer_id, first_offset)| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(producer_id))
                        .with_first_offset(first_offset)
                })
                .collect();
            p.aborted_transactions = Some(aborted);
        }
        let mut served = read.batches;
        let (kept, taken) = fit(served.iter().map(|b| b.len()), *budget, !*returned_any);
        served.truncate(kept);
        *budget = budget.saturating_sub(taken);
        *returned_any |= kept > 0;
        records[ti][pi] = Some(ServedRecords(served));
    };
    let mut reads: Vec<Option<SlotRead>> = reads.into_iter().map(Some).collect();
    for (i, slot) in slots.iter().enumerate() {
        let read = reads[i].take().expect("one read per slot");
        place(slot.topic, slot.partition_pos, read, &mut budget, &mut returned_any);
    }
    for (ti, pi, read) in fixed {
        place(ti, pi, read, &mut budget, &mut returned_any);
    }
    (response, records.into_iter().flatten().collect())
}

/// Reads every slot on its owner; results in slot order.
async fn read_all(
    shard: &Rc<Shard>,
    by_owner: &BTreeMap<usize, Vec<(usize, Slot)>>,
    slot_count: usize,
    max_bytes: usize,
) -> Vec<SlotRead> {
    let calls: Vec<_> = by_owner
        .iter()
        .map(|(owner, slots)| {
            let slots = slots.clone();
            let indexes: Vec<usize> = slots.iter().map(|(i, _)| *i).collect();
            let call = shard.invoke_on(
                *owner,
                move |s| async move { read_on_owner(&s, slots, max_bytes).await },
            );
            async move {
                match call.await {
                    Ok(reads) => reads,
                    Err(_) => indexes
                        .into_iter()
                        .map(|i| (i, SlotRead::error(ResponseError::NotLeaderOrFollower.code())))
                        .collect(),
                }
            }
        })
        .collect();
    let mut out: Vec<Option<SlotRead>> = (0..slot_count).map(|_| None).collect();
    for reads in sluice_storage::local_sync::join_bounded(calls, shard.count).await {
        for (i, r) in reads {
            out[i] = Some(r);
        }
    }
    out.into_iter().map(|r| r.expect("every slot was read")).collect()
}

/// Partition reads of one fetch that one shard runs at once.
const PARTITION_READS_IN_FLIGHT_MAX: usize = 16;

/// Reads the owner's slots within the response's byte budget, so a fetch
/// of many partitions holds at most about `max_bytes` per shard.
///
/// As Kafka does, partitions take the budget in request order. To overlap
/// their disk reads (a consumer behind the cache would otherwise wait for
/// one partition's read after another), the partitions whose whole limit
/// fits the budget, with the limits of the ones before them, are read at
/// once; then the results are taken in order, each cut to what is left.
/// The others are read after, one at a time, from what is left then.
///
/// The response's first batch comes whole even when over the limits
/// (KIP-74). Only the first partition is read that way at once; a later
/// one that returned nothing while nothing came before it is read again
/// so, as a one-by-one reading would have (else a consumer whose first
/// partitions are empty would never get a batch over the limits).
async fn read_on_owner(shard: &Rc<Shard>, slots: Vec<(usize, Slot)>, max_bytes: usize) -> Vec<(usize, SlotRead)> {
    let at_once = read_at_once(slots.iter().map(|(_, slot)| slot.partition_max_bytes), max_bytes);
    let first_round: Vec<_> = slots
        .iter()
        .zip(&at_once)
        .enumerate()
        .filter(|(_, (_, at_once))| **at_once)
        .map(|(k, ((_, slot), _))| read_slot(shard, slot, slot.partition_max_bytes, k == 0))
        .collect();
    let mut first_reads = sluice_storage::local_sync::join_bounded(first_round, PARTITION_READS_IN_FLIGHT_MAX)
        .await
        .into_iter();
    let mut out = Vec::with_capacity(slots.len());
    let mut budget = max_bytes;
    for (k, ((i, slot), at_once)) in slots.into_iter().zip(at_once).enumerate() {
        let response_empty = budget == max_bytes;
        let mut read = if at_once {
            first_reads.next().expect("one read per slot read at once")
        } else {
            read_slot(shard, &slot, slot.partition_max_bytes.min(budget), response_empty).await
        };
        // Read without min_one, it may have left out a first batch over
        // the limits that the response would carry.
        if at_once && k > 0 && response_empty && read.batches.is_empty() && read.may_have_data(&slot) {
            read = read_slot(shard, &slot, slot.partition_max_bytes.min(budget), true).await;
        }
        let (kept, taken) = fit(read.batches.iter().map(|b| b.len()), budget, response_empty);
        read.batches.truncate(kept);
        budget = budget.saturating_sub(taken);
        out.push((i, read));
    }
    out
}

/// Which partitions, of these limits in request order, can be read at once:
/// those whose limit fits in `max_bytes` after the limits before them.
fn read_at_once(limits: impl Iterator<Item = usize>, max_bytes: usize) -> Vec<bool> {
    let mut taken = 0usize;
    limits
        .map(|limit| {
            taken = taken.saturating_add(limit);
            limit > 0 && taken <= max_bytes
        })
        .collect()
}

/// How many of a partition's batches (of `lens` bytes) fit in `budget`,
/// and their bytes. The response's first batch comes whole even when
/// over the limits (KIP-74), so with `response_empty` the first batch
/// always fits.
fn fit(lens: impl Iterator<Item = usize>, budget: usize, response_empty: bool) -> (usize, usize) {
    let mut kept = 0;
    let mut taken = 0;
    for len in lens {
        if taken + len > budget && !(response_empty && kept == 0) {
            break;
        }
        taken += len;
        kept += 1;
    }
    (kept, taken)
}

/// Reads one partition: at most `bytes_max`, or its first batch whole when
/// `min_one` and that batch alone is larger.
async fn read_slot(shard: &Rc<Shard>, slot: &Slot, bytes_max: usize, min_one: bool) -> SlotRead {
    let Some(partition) = shard.partition(&slot.name, slot.index) else {
        return SlotRead::error(ResponseError::NotLeaderOrFollower.code());
    };
    let high_watermark = partition.high_watermark();
    let last_stable = partition.last_stable_offset();
    let log_start = partition.log_start_offset();
    let limits = ReadLimits {
        bytes_max,
        upper: slot.readable_end(high_watermark, last_stable),
        min_one,
    };
    match partition.log.read(Offset(slot.fetch_offset), limits).await {
        Ok(batches) => {
            // Cutting batches off the end later leaves this list a superset
            // of what is returned, which clients accept.
            let aborted = match (slot.read_committed, batches.first(), batches.last()) {
                (true, Some(first), Some(last)) => partition.aborted_in(first.base_offset(), last.next_offset()),
                _ => Vec::new(),
            };
            SlotRead {
                error_code: 0,
                high_watermark: high_watermark.0,
                last_stable_offset: last_stable.0,
                log_start_offset: log_start.0,
                batches,
                aborted,
            }
        }
        Err(e) => SlotRead {
            error_code: storage_error_code(&format!("fetch from {}-{}", slot.name, slot.index), &e),
            high_watermark: high_watermark.0,
            last_stable_offset: last_stable.0,
            log_start_offset: log_start.0,
            batches: Vec::new(),
            aborted: Vec::new(),
        },
    }
}

/// Waits until any slot's partition may have new data, the deadline, or
/// shutdown.
async fn wait_for_data(shard: &Rc<Shard>, by_owner: &BTreeMap<usize, Vec<(usize, Slot)>>, deadline: Instant) {
    let waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>> = by_owner
        .iter()
        .map(|(owner, slots)| {
            let slots: Vec<Slot> = slots.iter().map(|(_, s)| s.clone()).collect();
            let call = shard.invoke_on(*owner, move |s| async move { wait_on_owner(&s, slots, deadline).await });
            Box::pin(async move {
                let _ = call.await;
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
        })
        .collect();
    let remaining = deadline.saturating_duration_since(Instant::now());
    let stop = Box::pin(async move {
        shard.stopped().await;
    });
    let mut all = waits;
    all.push(stop);
    runtime::timeout(remaining, runtime::first_of(all)).await;
}

/// On the owner: returns once any of the partitions has data at or past its
/// fetch offset below the high watermark (read_committed: the last stable
/// offset), or at the deadline.
async fn wait_on_owner(shard: &Rc<Shard>, slots: Vec<Slot>, deadline: Instant) {
    let partitions: Vec<_> = slots
        .iter()
        .filter_map(|s| {
            shard
                .partition(&s.name, s.index)
                .map(|p| (p, s.fetch_offset, s.read_committed))
        })
        .collect();
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(300));
    // Listen first, then check: a change between the two is not missed.
    let changed: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> = partitions
        .iter()
        .map(|(p, _, _)| Box::pin(p.log.durable_changed()) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)
        .collect();
    let readable_end = |p: &crate::partition::Partition, committed: bool| {
        if committed {
            p.last_stable_offset()
        } else {
            p.high_watermark()
        }
    };
    if partitions
        .iter()
        .any(|(p, offset, committed)| readable_end(p, *committed).0 > *offset)
        || partitions.is_empty()
    {
        return;
    }
    let mut all = changed;
    all.push(Box::pin(shard.stopped()));
    runtime::timeout(remaining, runtime::first_of(all)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_whose_limits_fit_the_budget_in_order_are_read_at_once() {
        assert_eq!(read_at_once([100, 100, 100].into_iter(), 250), vec![true, true, false]);
        // One that does not fit sends the rest to be read one by one too.
        assert_eq!(read_at_once([300, 100].into_iter(), 250), vec![false, false]);
        assert_eq!(read_at_once([10, 20].into_iter(), 1000), vec![true, true]);
        // A limit of 0 reads nothing at once (one by one, the response's
        // first batch may still come from it).
        assert_eq!(read_at_once([0, 10].into_iter(), 1000), vec![false, true]);
        assert_eq!(read_at_once([usize::MAX, 10].into_iter(), 1000), vec![false, false]);
        assert_eq!(read_at_once(std::iter::empty(), 1000), Vec::<bool>::new());
    }

    #[test]
    fn a_read_is_cut_to_what_is_left_of_the_budget() {
        // Whole batches that fit, then nothing past the first that does not.
        assert_eq!(fit([40, 40, 40].into_iter(), 100, false), (2, 80));
        assert_eq!(fit([40, 80, 10].into_iter(), 100, false), (1, 40));
        assert_eq!(fit([40, 40].into_iter(), 0, false), (0, 0));
        // The response's first batch comes whole however large (KIP-74),
        // and only it: the next ones must fit what is left.
        assert_eq!(fit([500, 10].into_iter(), 100, true), (1, 500));
        assert_eq!(fit([500].into_iter(), 100, false), (0, 0));
        assert_eq!(fit([60, 60].into_iter(), 100, true), (1, 60));
    }
}

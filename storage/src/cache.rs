//! A bounded cache of recently appended batches, shared by the logs of one
//! shard. Direct I/O bypasses the page cache, so without it every consumer
//! reading near the tail would go to the disk for bytes written a moment ago.
//!
//! Entries are evicted (about) oldest-appended first once `bytes_max` is
//! passed. Insertion and eviction are O(1); a lookup is a binary search in
//! one log's entries.
//! Cached batches are the producer's bytes as received, with their assigned
//! base offset and epoch beside them (see `ServedBatch`), so a hit is served
//! with no copy.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::batch::BATCH_HEADER_BYTES;
use crate::offset::Offset;
use crate::served::ServedBatch;

/// Identifies one log's entries in the shared cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheLogId(u32);

struct Cached {
    base: i64,
    last: i64,
    leader_epoch: i32,
    /// As the producer sent it: the head is assigned when served.
    batch: Bytes,
}

struct CacheState {
    bytes_max: usize,
    bytes: usize,
    /// Batches cached, over all logs.
    live: usize,
    /// Each log's cached batches in offset order (appends only grow a log,
    /// so this is also the order they came in). Indexed by `CacheLogId`.
    logs: Vec<Option<VecDeque<Cached>>>,
    /// Which log each insertion went to, oldest first: eviction pops the
    /// front log's oldest batch. After truncation or retention removed
    /// batches it names logs with fewer entries; eviction then takes that
    /// log's oldest remaining batch, or nothing, which keeps it approximate
    /// FIFO and the byte count exact.
    order: VecDeque<CacheLogId>,
}

impl CacheState {
    fn entries(&mut self, log: CacheLogId) -> &mut VecDeque<Cached> {
        self.logs[log.0 as usize].as_mut().expect("a registered log")
    }
}

/// What a cache read found.
#[derive(Debug)]
pub struct CacheRead {
    pub batches: Vec<ServedBatch>,
    /// The next batch is cached but does not fit the budget: the reader is
    /// done, and must not look for it on the disk.
    pub budget_reached: bool,
}

#[derive(Clone)]
pub struct BatchCache {
    state: Rc<RefCell<CacheState>>,
}

/// Reads from the cache stop after this many batches, so one read cannot
/// hold the shard for long.
const BATCHES_PER_READ_MAX: usize = 4096;

impl BatchCache {
    pub fn new(bytes_max: usize) -> BatchCache {
        BatchCache {
            state: Rc::new(RefCell::new(CacheState {
                bytes_max,
                bytes: 0,
                live: 0,
                logs: Vec::new(),
                order: VecDeque::new(),
            })),
        }
    }

    pub fn register(&self) -> CacheLogId {
        let mut st = self.state.borrow_mut();
        st.logs.push(Some(VecDeque::new()));
        CacheLogId(u32::try_from(st.logs.len() - 1).expect("fewer than 4G logs per shard"))
    }

    /// Forgets a log for good (it was closed or deleted).
    pub fn unregister(&self, log: CacheLogId) {
        let mut st = self.state.borrow_mut();
        if let Some(entries) = st.logs[log.0 as usize].take() {
            st.bytes -= entries.iter().map(|c| c.batch.len()).sum::<usize>();
            st.live -= entries.len();
        }
    }

    /// Caches a batch just appended to `log` (bytes as received; base offset
    /// and epoch as assigned); bases must increase per log.
    pub fn insert(&self, log: CacheLogId, base: Offset, leader_epoch: i32, batch: Bytes) {
        assert!(batch.len() >= BATCH_HEADER_BYTES);
        let mut st = self.state.borrow_mut();
        if batch.len() > st.bytes_max {
            return;
        }
        let last = base.0 + i64::from(last_offset_delta(&batch));
        st.bytes += batch.len();
        st.live += 1;
        let entries = st.entries(log);
        assert!(
            entries.back().is_none_or(|c| c.last < base.0),
            "cache inserts must follow the log"
        );
        entries.push_back(Cached {
            base: base.0,
            last,
            leader_epoch,
            batch,
        });
        st.order.push_back(log);
        while st.bytes > st.bytes_max {
            let Some(victim) = st.order.pop_front() else { break };
            let evicted = st.logs[victim.0 as usize].as_mut().and_then(|e| e.pop_front());
            if let Some(c) = evicted {
                st.bytes -= c.batch.len();
                st.live -= 1;
            }
        }
        // Names of logs whose batches left by truncation or unregistering
        // linger in `order`; keep it from outgrowing the entries.
        if st.order.len() > 2 * st.live + 1024 {
            let CacheState { order, logs, .. } = &mut *st;
            order.retain(|id| logs[id.0 as usize].is_some());
        }
    }

    /// Consecutive cached batches of `log` starting with the one that holds
    /// `from`, none starting at or past `upper`, within `bytes_max` (the
    /// first batch counts even if larger when `min_one`). No batches on a
    /// miss.
    pub fn read(&self, log: CacheLogId, from: Offset, upper: Offset, bytes_max: usize, min_one: bool) -> CacheRead {
        let mut st = self.state.borrow_mut();
        let mut out = CacheRead {
            batches: Vec::new(),
            budget_reached: false,
        };
        let entries = st.entries(log);
        let first = entries.partition_point(|c| c.last < from.0);
        let mut bytes = 0usize;
        let mut next = from.0;
        for c in entries.range(first..) {
            if c.base > next || c.base >= upper.0 || out.batches.len() == BATCHES_PER_READ_MAX {
                break; // a gap (the rest comes from the disk), or the limit
            }
            if bytes + c.batch.len() > bytes_max && !(min_one && out.batches.is_empty()) {
                out.budget_reached = true;
                break;
            }
            bytes += c.batch.len();
            out.batches
                .push(ServedBatch::new(Offset(c.base), c.leader_epoch, c.batch.clone()));
            next = c.last + 1;
        }
        out
    }

    /// Forgets `log`'s batches holding offsets at or past `from` (truncation).
    pub fn remove_from(&self, log: CacheLogId, from: Offset) {
        let mut st = self.state.borrow_mut();
        let entries = st.entries(log);
        let (mut freed, mut count) = (0, 0);
        while let Some(c) = entries.pop_back_if(|c| c.last >= from.0) {
            freed += c.batch.len();
            count += 1;
        }
        st.bytes -= freed;
        st.live -= count;
    }

    /// Forgets `log`'s batches wholly below `below` (retention).
    pub fn remove_below(&self, log: CacheLogId, below: Offset) {
        let mut st = self.state.borrow_mut();
        let entries = st.entries(log);
        let (mut freed, mut count) = (0, 0);
        while let Some(c) = entries.pop_front_if(|c| c.last < below.0) {
            freed += c.batch.len();
            count += 1;
        }
        st.bytes -= freed;
        st.live -= count;
    }

    pub fn bytes(&self) -> usize {
        self.state.borrow().bytes
    }
}

fn last_offset_delta(batch: &[u8]) -> i32 {
    i32::from_be_bytes([batch[23], batch[24], batch[25], batch[26]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{build_batch, set_base_offset};

    fn batch(base: i64, records: i32) -> Bytes {
        let mut b = build_batch(records, 10, 0);
        set_base_offset(&mut b, Offset(base));
        Bytes::from(b)
    }

    fn put(cache: &BatchCache, log: CacheLogId, base: i64, records: i32) {
        cache.insert(log, Offset(base), 0, batch(base, records));
    }

    #[test]
    fn reads_consecutive_batches_from_the_middle_of_one() {
        let cache = BatchCache::new(1 << 20);
        let log = cache.register();
        let other = cache.register();
        put(&cache, log, 0, 3);
        put(&cache, log, 3, 2);
        put(&cache, other, 5, 1);
        let got = cache.read(log, Offset(1), Offset(100), 1 << 20, true).batches;
        assert_eq!(got.len(), 2);
        assert!(
            cache
                .read(log, Offset(5), Offset(100), 1 << 20, true)
                .batches
                .is_empty()
        );
        assert_eq!(cache.read(log, Offset(0), Offset(3), 1 << 20, true).batches.len(), 1);
        // Budget: only the first batch fits, and min_one lets it through.
        let one = cache.read(log, Offset(0), Offset(100), 1, true).batches;
        assert_eq!(one.len(), 1);
        assert!(cache.read(log, Offset(0), Offset(100), 1, false).batches.is_empty());
        // Over the budget is not a miss: the reader must not go to the disk.
        assert!(cache.read(log, Offset(0), Offset(100), 1, false).budget_reached);
        assert!(!cache.read(log, Offset(5), Offset(100), 1 << 20, true).budget_reached);
        assert!(!cache.read(log, Offset(0), Offset(100), 1 << 20, true).budget_reached);
    }

    #[test]
    fn evicts_oldest_first_within_the_limit() {
        let b = batch(0, 1);
        let cache = BatchCache::new(b.len() * 2);
        let log = cache.register();
        for i in 0..5 {
            put(&cache, log, i, 1);
        }
        assert!(cache.bytes() <= b.len() * 2);
        assert!(cache.read(log, Offset(0), Offset(10), 1 << 20, true).batches.is_empty());
        assert_eq!(cache.read(log, Offset(3), Offset(10), 1 << 20, true).batches.len(), 2);
    }

    #[test]
    fn truncation_and_retention_forget_entries() {
        let cache = BatchCache::new(1 << 20);
        let log = cache.register();
        for i in 0..6 {
            put(&cache, log, i, 1);
        }
        cache.remove_from(log, Offset(4));
        cache.remove_below(log, Offset(2));
        assert!(cache.read(log, Offset(1), Offset(10), 1 << 20, true).batches.is_empty());
        assert_eq!(cache.read(log, Offset(2), Offset(10), 1 << 20, true).batches.len(), 2);
    }
}

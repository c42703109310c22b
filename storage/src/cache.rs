//! A bounded cache of recently appended batches, shared by the logs of one
//! shard. Direct I/O bypasses the page cache, so without it every consumer
//! reading near the tail would go to the disk for bytes written a moment ago.
//!
//! Entries are evicted oldest-appended first once `bytes_max` is passed.
//! Cached batches are the exact stored payloads (base offset assigned), so a
//! hit is served with no copy.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

use crate::batch::BATCH_HEADER_BYTES;
use crate::offset::Offset;

/// Identifies one log's entries in the shared cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheLogId(u64);

struct CacheState {
    bytes_max: usize,
    bytes: usize,
    next_log_id: u64,
    entries: BTreeMap<(CacheLogId, i64), Bytes>,
    /// Insertion order, for eviction. May hold keys already removed.
    order: VecDeque<(CacheLogId, i64)>,
    hits: u64,
    misses: u64,
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
                next_log_id: 0,
                entries: BTreeMap::new(),
                order: VecDeque::new(),
                hits: 0,
                misses: 0,
            })),
        }
    }

    pub fn register(&self) -> CacheLogId {
        let mut st = self.state.borrow_mut();
        st.next_log_id += 1;
        CacheLogId(st.next_log_id)
    }

    pub fn insert(&self, log: CacheLogId, base: Offset, batch: Bytes) {
        assert!(batch.len() >= BATCH_HEADER_BYTES);
        let mut st = self.state.borrow_mut();
        if batch.len() > st.bytes_max {
            return;
        }
        st.bytes += batch.len();
        if let Some(old) = st.entries.insert((log, base.0), batch) {
            st.bytes -= old.len();
        }
        st.order.push_back((log, base.0));
        while st.bytes > st.bytes_max {
            let Some(key) = st.order.pop_front() else { break };
            if let Some(evicted) = st.entries.remove(&key) {
                st.bytes -= evicted.len();
            }
        }
        // Keys of entries removed by truncation linger in `order`; drop them
        // before they outnumber live entries.
        if st.order.len() > 2 * st.entries.len() + 1024 {
            let CacheState { order, entries, .. } = &mut *st;
            order.retain(|k| entries.contains_key(k));
        }
    }

    /// Consecutive cached batches of `log` starting with the one that holds
    /// `from`, none starting at or past `upper`, within `bytes_max` (the
    /// first batch counts even if larger when `min_one`). Empty on a miss.
    pub fn read(&self, log: CacheLogId, from: Offset, upper: Offset, bytes_max: usize, min_one: bool) -> Vec<Bytes> {
        let mut st = self.state.borrow_mut();
        let mut out = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        let first = st
            .entries
            .range(..=(log, from.0))
            .next_back()
            .map(|((l, b), _)| (*l, *b));
        let Some((l, start)) = first.filter(|(l, _)| *l == log) else {
            st.misses += 1;
            return out;
        };
        for ((_, base), batch) in st.entries.range((l, start)..(log, upper.0)) {
            if *base > next.0 || out.len() == BATCHES_PER_READ_MAX {
                break; // a gap: the rest comes from the disk
            }
            let last = Offset(*base + i64::from(last_offset_delta(batch)));
            if last < next {
                break; // `from` is past this batch and the next one is missing
            }
            if bytes + batch.len() > bytes_max && !(min_one && out.is_empty()) {
                break;
            }
            bytes += batch.len();
            out.push(batch.clone());
            next = last.plus(1);
        }
        if out.is_empty() {
            st.misses += 1;
        } else {
            st.hits += 1;
        }
        out
    }

    /// Forgets `log`'s batches at or past `from` (truncation).
    pub fn remove_from(&self, log: CacheLogId, from: Offset) {
        self.remove_range(log, from.0, i64::MAX);
    }

    /// Forgets `log`'s batches starting before `below` (retention).
    pub fn remove_below(&self, log: CacheLogId, below: Offset) {
        self.remove_range(log, i64::MIN, below.0);
    }

    fn remove_range(&self, log: CacheLogId, from: i64, to: i64) {
        let mut st = self.state.borrow_mut();
        let keys: Vec<_> = st.entries.range((log, from)..(log, to)).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(b) = st.entries.remove(&k) {
                st.bytes -= b.len();
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.state.borrow().bytes
    }

    /// (hits, misses) since creation.
    pub fn hit_counts(&self) -> (u64, u64) {
        let st = self.state.borrow();
        (st.hits, st.misses)
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

    #[test]
    fn reads_consecutive_batches_from_the_middle_of_one() {
        let cache = BatchCache::new(1 << 20);
        let log = cache.register();
        let other = cache.register();
        cache.insert(log, Offset(0), batch(0, 3));
        cache.insert(log, Offset(3), batch(3, 2));
        cache.insert(other, Offset(5), batch(5, 1));
        let got = cache.read(log, Offset(1), Offset(100), 1 << 20, true);
        assert_eq!(got.len(), 2);
        assert!(cache.read(log, Offset(5), Offset(100), 1 << 20, true).is_empty());
        assert_eq!(cache.read(log, Offset(0), Offset(3), 1 << 20, true).len(), 1);
        // Budget: only the first batch fits, and min_one lets it through.
        let one = cache.read(log, Offset(0), Offset(100), 1, true);
        assert_eq!(one.len(), 1);
        assert!(cache.read(log, Offset(0), Offset(100), 1, false).is_empty());
    }

    #[test]
    fn evicts_oldest_first_within_the_limit() {
        let b = batch(0, 1);
        let cache = BatchCache::new(b.len() * 2);
        let log = cache.register();
        for i in 0..5 {
            cache.insert(log, Offset(i), batch(i, 1));
        }
        assert!(cache.bytes() <= b.len() * 2);
        assert!(cache.read(log, Offset(0), Offset(10), 1 << 20, true).is_empty());
        assert_eq!(cache.read(log, Offset(3), Offset(10), 1 << 20, true).len(), 2);
    }

    #[test]
    fn truncation_and_retention_forget_entries() {
        let cache = BatchCache::new(1 << 20);
        let log = cache.register();
        for i in 0..6 {
            cache.insert(log, Offset(i), batch(i, 1));
        }
        cache.remove_from(log, Offset(4));
        cache.remove_below(log, Offset(2));
        assert!(cache.read(log, Offset(1), Offset(10), 1 << 20, true).is_empty());
        assert_eq!(cache.read(log, Offset(2), Offset(10), 1 << 20, true).len(), 2);
    }
}

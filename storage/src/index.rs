//! Sparse per-segment indexes: offset → file position, and timestamp →
//! file position.
//!
//! An entry is added for the first frame that starts at least
//! `index_interval_bytes` after the previous entry (the segment's first frame,
//! at position 0, needs none). Both indexes take an entry at the same frames;
//! the time index only when the timestamp has grown since its last entry.
//!
//! - offset entry: (relative offset of the frame's base, position), 8 bytes;
//! - time entry: (largest timestamp of all frames before the position,
//!   relative offset, position), 16 bytes. Every frame before the entry's
//!   position has timestamps at most the entry's, so a search for timestamp T
//!   may start at the last entry whose timestamp is below T.
//!
//! On disk both are plain little-endian arrays of entries, appended as the
//! segment grows. The checkpoint records how many entries of each are
//! durable; entries past that count are ignored. A loaded index is checked
//! (strictly increasing, inside the segment) and rebuilt from the log if not.

use crate::offset::Offset;

pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_before: i64,
    pub relative_offset: u32,
    pub position: u32,
}

impl OffsetEntry {
    pub fn encode(&self) -> [u8; OFFSET_ENTRY_BYTES] {
        let mut b = [0u8; OFFSET_ENTRY_BYTES];
        b[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.position.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> OffsetEntry {
        OffsetEntry {
            relative_offset: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl TimeEntry {
    pub fn encode(&self) -> [u8; TIME_ENTRY_BYTES] {
        let mut b = [0u8; TIME_ENTRY_BYTES];
        b[0..8].copy_from_slice(&self.timestamp_before.to_le_bytes());
        b[8..12].copy_from_slice(&self.relative_offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.position.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> TimeEntry {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[0..8]);
        TimeEntry {
            timestamp_before: i64::from_le_bytes(ts),
            relative_offset: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            position: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

/// Entries a frame added, to be appended to the index files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NewEntries {
    pub offset: Option<OffsetEntry>,
    pub time: Option<TimeEntry>,
}

/// Both indexes of one segment, in memory.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    base: Offset,
    interval_bytes: u64,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    /// Largest timestamp of the frames indexed so far.
    max_timestamp: i64,
}

impl SegmentIndex {
    pub fn new(base: Offset, interval_bytes: u64) -> SegmentIndex {
        assert!(interval_bytes > 0);
        SegmentIndex {
            base,
            interval_bytes,
            offsets: Vec::new(),
            times: Vec::new(),
            max_timestamp: i64::MIN,
        }
    }

    /// Indexes a frame at `position` covering `base..=last` with the given
    /// max timestamp. Frames must come in order.
    pub fn add_frame(&mut self, position: u64, base: Offset, max_timestamp: i64) -> NewEntries {
        let relative = base.since(self.base);
        assert!(
            (0..=i64::from(u32::MAX)).contains(&relative),
            "offset outside the segment"
        );
        assert!(position <= u64::from(u32::MAX), "segment position past 4 GiB");
        let last_position = self.offsets.last().map_or(0, |e| u64::from(e.position));
        let mut added = NewEntries::default();
        if position > 0 && position - last_position >= self.interval_bytes {
            let entry = OffsetEntry {
                relative_offset: relative as u32,
                position: position as u32,
            };
            self.offsets.push(entry);
            added.offset = Some(entry);
            let grew = self
                .times
                .last()
                .is_none_or(|t| self.max_timestamp > t.timestamp_before);
            if grew && self.max_timestamp != i64::MIN {
                let t = TimeEntry {
                    timestamp_before: self.max_timestamp,
                    relative_offset: relative as u32,
                    position: position as u32,
                };
                self.times.push(t);
                added.time = Some(t);
            }
        }
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        added
    }

    /// Position to start scanning for `offset`: the last entry at or below it.
    pub fn position_for_offset(&self, offset: Offset) -> u64 {
        let relative = offset.since(self.base);
        if relative <= 0 {
            return 0;
        }
        let i = self
            .offsets
            .partition_point(|e| i64::from(e.relative_offset) <= relative);
        i.checked_sub(1).map_or(0, |i| u64::from(self.offsets[i].position))
    }

    /// Position to start scanning for the first frame whose max timestamp is
    /// at least `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let i = self.times.partition_point(|e| e.timestamp_before < timestamp);
        i.checked_sub(1).map_or(0, |i| u64::from(self.times[i].position))
    }

    pub fn offset_entries(&self) -> &[OffsetEntry] {
        &self.offsets
    }

    pub fn time_entries(&self) -> &[TimeEntry] {
        &self.times
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Drops entries at or past `position` (truncation), and sets the max
    /// timestamp of what remains.
    pub fn truncate(&mut self, position: u64, max_timestamp: i64) {
        self.offsets.retain(|e| u64::from(e.position) < position);
        self.times.retain(|e| u64::from(e.position) < position);
        self.max_timestamp = max_timestamp;
    }

    /// Rebuilds from persisted entries; `None` when they are not a valid
    /// index of a segment whose data ends at `end`.
    pub fn load(
        base: Offset,
        interval_bytes: u64,
        offset_bytes: &[u8],
        time_bytes: &[u8],
        end: u64,
        max_timestamp: i64,
    ) -> Option<SegmentIndex> {
        if !offset_bytes.len().is_multiple_of(OFFSET_ENTRY_BYTES) || !time_bytes.len().is_multiple_of(TIME_ENTRY_BYTES)
        {
            return None;
        }
        let offsets: Vec<OffsetEntry> = offset_bytes
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .map(OffsetEntry::decode)
            .collect();
        let times: Vec<TimeEntry> = time_bytes
            .chunks_exact(TIME_ENTRY_BYTES)
            .map(TimeEntry::decode)
            .collect();
        let offsets_ok = offsets.iter().all(|e| e.position > 0 && u64::from(e.position) < end)
            && offsets
                .windows(2)
                .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
        // Every time entry sits at an offset entry's frame.
        let times_ok = times.windows(2).all(|w| w[0].timestamp_before < w[1].timestamp_before)
            && times.iter().all(|t| {
                offsets
                    .binary_search_by_key(&t.relative_offset, |e| e.relative_offset)
                    .is_ok_and(|i| offsets[i].position == t.position)
            });
        if !(offsets_ok && times_ok) {
            return None;
        }
        Some(SegmentIndex {
            base,
            interval_bytes,
            offsets,
            times,
            max_timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_the_interval_and_lookups_start_at_or_before() {
        let mut idx = SegmentIndex::new(Offset(100), 1000);
        // Frames of 300 bytes, 2 records each, timestamps rising by 10.
        let mut added = 0;
        for i in 0..20u64 {
            let e = idx.add_frame(i * 300, Offset(100 + 2 * i as i64), 1_000 + 10 * i as i64);
            added += e.offset.is_some() as usize;
        }
        assert_eq!(added, idx.offset_entries().len());
        // Entry at 1200 (>= 1000 after 0), then 2400, 3600, 4800.
        let positions: Vec<u32> = idx.offset_entries().iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![1200, 2400, 3600, 4800]);
        assert_eq!(idx.position_for_offset(Offset(100)), 0);
        assert_eq!(idx.position_for_offset(Offset(107)), 0);
        assert_eq!(idx.position_for_offset(Offset(108)), 1200);
        assert_eq!(idx.position_for_offset(Offset(115)), 1200);
        assert_eq!(idx.position_for_offset(Offset(116)), 2400);
        assert_eq!(idx.position_for_offset(Offset(1_000)), 4800);
        // Frame at 1200 has timestamps before it up to 1030.
        assert_eq!(idx.position_for_timestamp(0), 0);
        assert_eq!(idx.position_for_timestamp(1_030), 0);
        assert_eq!(idx.position_for_timestamp(1_031), 1200);
        assert_eq!(idx.position_for_timestamp(i64::MAX), 4800);
    }

    #[test]
    fn time_entries_only_when_timestamps_grow() {
        let mut idx = SegmentIndex::new(Offset(0), 1);
        for i in 0..5u64 {
            idx.add_frame(i * 100, Offset(i as i64), 500);
        }
        assert_eq!(idx.offset_entries().len(), 4);
        assert_eq!(idx.time_entries().len(), 1);
    }

    #[test]
    fn persisted_entries_load_back_and_garbage_is_refused() {
        let mut idx = SegmentIndex::new(Offset(0), 100);
        let mut off = Vec::new();
        let mut tim = Vec::new();
        for i in 0..50u64 {
            let e = idx.add_frame(i * 150, Offset(i as i64 * 3), i as i64);
            if let Some(o) = e.offset {
                off.extend_from_slice(&o.encode());
            }
            if let Some(t) = e.time {
                tim.extend_from_slice(&t.encode());
            }
        }
        let end = 50 * 150;
        let loaded = SegmentIndex::load(Offset(0), 100, &off, &tim, end, idx.max_timestamp()).unwrap();
        assert_eq!(loaded.offset_entries(), idx.offset_entries());
        assert_eq!(loaded.time_entries(), idx.time_entries());
        // An entry past the data, a reordering, a ragged length: all refused.
        assert!(SegmentIndex::load(Offset(0), 100, &off, &tim, 1000, 0).is_none());
        let mut swapped = off.clone();
        swapped[0..8].copy_from_slice(&off[8..16]);
        assert!(SegmentIndex::load(Offset(0), 100, &swapped, &tim, end, 0).is_none());
        assert!(SegmentIndex::load(Offset(0), 100, &off[..7], &tim, end, 0).is_none());
    }

    #[test]
    fn truncate_keeps_entries_before_the_cut() {
        let mut idx = SegmentIndex::new(Offset(0), 100);
        for i in 0..10u64 {
            idx.add_frame(i * 100, Offset(i as i64), i as i64);
        }
        idx.truncate(500, 4);
        assert!(idx.offset_entries().iter().all(|e| e.position < 500));
        assert_eq!(idx.max_timestamp(), 4);
        let e = idx.add_frame(500, Offset(5), 5);
        assert_eq!(e.offset.map(|o| o.position), Some(500));
    }
}

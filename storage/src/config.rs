//! Per-log settings. Names follow Kafka's topic configs where one exists.

use crate::appender::AppenderConfig;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: a segment rolls before passing this size.
    pub segment_bytes: u64,
    /// `segment.ms`: a segment rolls once it has been open this long.
    pub segment_ms: i64,
    /// `retention.bytes`: oldest segments go once the log passes this; -1 keeps all.
    pub retention_bytes: i64,
    /// `retention.ms`: segments whose newest record is older go; -1 keeps all.
    pub retention_ms: i64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// Appended bytes not yet durable before an append waits for a sync.
    pub write_buffer_bytes_max: u64,
    /// Durable bytes written between checkpoints; bounds recovery's scan.
    /// Each checkpoint costs four syncs (the two index files, the new
    /// checkpoint file, the directory), each a flush of the device's
    /// cache; 256 MiB keeps a full-speed log's checkpoint flushes to 16 per
    /// GiB, and a crash costs a scan of at most 256 MiB per partition
    /// (0.12-0.14 s measured on a 3.6 GB/s disk).
    pub checkpoint_interval_bytes: u64,
    /// Keep the file of the newest segment that retention or the log
    /// start deleted, and write the next new segment into it: overwriting
    /// written blocks costs the disk less than writing into fresh space.
    pub recycle_segments: bool,
    pub appender: AppenderConfig,
}

pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
pub const SEGMENT_BYTES_MIN: u64 = 14;

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            write_buffer_bytes_max: 16 << 20,
            checkpoint_interval_bytes: 256 << 20,
            recycle_segments: true,
            appender: AppenderConfig {
                chunk_bytes: 256 << 10,
                pooled_chunks_max: 16,
                preallocate_bytes: 128 << 20,
            },
        }
    }
}

impl LogConfig {
    /// Panics on settings no log can work with; the broker validates user
    /// input before it gets here.
    pub fn validate(&self) {
        assert!((SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes));
        assert!(self.segment_ms > 0);
        assert!(self.index_interval_bytes > 0);
        assert!(self.write_buffer_bytes_max > 0);
        assert!(self.checkpoint_interval_bytes > 0);
        self.appender.validate();
    }
}

//! Shared by the storage integration tests: batch generation, a model of
//! what the log should hold, and whole-log reads.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use sluice_storage::appender::AppenderConfig;
use sluice_storage::batch::{build_batch, set_base_offset};
use sluice_storage::io::FileSystem;
use sluice_storage::io::sim::{SimFileSystem, SimRng};
use sluice_storage::{Log, LogConfig, Offset, ReadLimits};

/// A log config with tiny sizes, so a few hundred batches exercise rolls,
/// index entries, checkpoints and backpressure.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_ms: i64::MAX / 2,
        retention_bytes: -1,
        retention_ms: -1,
        index_interval_bytes: 512,
        write_buffer_bytes_max: 48 << 10,
        checkpoint_interval_bytes: 24 << 10,
        recycle_segments: true,
        appender: AppenderConfig {
            chunk_bytes: 8192,
            pooled_chunks_max: 4,
            preallocate_bytes: 32768,
        },
    }
}

pub fn dir() -> PathBuf {
    PathBuf::from("/data/topic-0")
}

/// A random batch: 1..=8 records of 8..=600 bytes, at timestamp `ts`.
pub fn random_batch(rng: &mut SimRng, ts: i64) -> Bytes {
    let records = 1 + rng.below(8) as i32;
    // At least 8 value bytes: the salt below lands inside the last value.
    let value = 8 + rng.below(593) as usize;
    let mut b = build_batch(records, value, ts);
    // Vary the payload so batches differ byte for byte.
    let n = b.len();
    let salt = rng.next_u64().to_le_bytes();
    b[n - 9..n - 1].copy_from_slice(&salt);
    sluice_storage::batch::write_crc(&mut b);
    Bytes::from(b)
}

/// What the log must hold: every appended batch by base offset, with the
/// base offset the log assigned patched in.
#[derive(Default, Debug, Clone)]
pub struct Model {
    pub batches: BTreeMap<i64, Bytes>,
}

impl Model {
    pub fn record(&mut self, base: Offset, batch: &Bytes) {
        let mut b = batch.to_vec();
        set_base_offset(&mut b, base);
        self.batches.insert(base.0, Bytes::from(b));
    }

    /// Forgets batches at or past `end` (after a crash cut or truncation).
    pub fn cut(&mut self, end: Offset) {
        let keys: Vec<i64> = self.batches.range(end.0..).map(|(k, _)| *k).collect();
        for k in keys {
            self.batches.remove(&k);
        }
    }

    pub fn forget_below(&mut self, start: Offset) {
        let keys: Vec<i64> = self
            .batches
            .iter()
            .filter(|(base, b)| **base + last_delta(b) < start.0)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.batches.remove(&k);
        }
    }

    pub fn end(&self) -> Offset {
        self.batches
            .iter()
            .next_back()
            .map_or(Offset(0), |(base, b)| Offset(base + last_delta(b) + 1))
    }
}

pub fn last_delta(b: &[u8]) -> i64 {
    i64::from(i32::from_be_bytes([b[23], b[24], b[25], b[26]]))
}

pub fn base_of(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[0..8].try_into().unwrap())
}

pub fn everything() -> ReadLimits {
    ReadLimits {
        bytes_max: usize::MAX / 2,
        upper: Offset(i64::MAX),
        min_one: true,
    }
}

/// The files on the simulated disk with extension `ext`, sorted (so by
/// base offset or bound).
pub fn files_with(fs: &SimFileSystem, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs
        .file_names()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// The base offsets of the segment files on the simulated disk, in order.
pub fn segment_bases(fs: &SimFileSystem) -> Vec<i64> {
    files_with(fs, "log")
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect()
}

/// `Log::read` with each batch as one buffer, as it would go on the wire.
pub async fn read_bytes<S: FileSystem>(
    log: &Log<S>,
    from: Offset,
    limits: ReadLimits,
) -> Result<Vec<Bytes>, sluice_storage::StorageError> {
    Ok(log.read(from, limits).await?.iter().map(|b| b.to_bytes()).collect())
}

/// Every readable batch, from the log start, in reads small enough that the
/// read path crosses chunk and segment boundaries.
pub async fn read_all<S: FileSystem>(log: &Log<S>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        let got = read_bytes(
            log,
            next,
            ReadLimits {
                bytes_max: 64 << 10,
                upper: Offset(i64::MAX),
                min_one: true,
            },
        )
        .await
        .expect("read");
        let Some(last) = got.last() else { break };
        next = Offset(base_of(last) + last_delta(last) + 1);
        out.extend(got);
    }
    out
}

/// Asserts the log holds exactly the model's batches from its start.
pub async fn assert_matches<S: FileSystem>(log: &Log<S>, model: &Model) {
    let got = read_all(log).await;
    let expected: Vec<&Bytes> = model
        .batches
        .iter()
        .filter(|(base, b)| **base + last_delta(b) >= log.start_offset().0)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(got.len(), expected.len(), "batch count differs");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g, e, "batch at offset {} differs", base_of(e));
    }
    assert_eq!(log.end_offset(), model.end().max(log.start_offset()));
}

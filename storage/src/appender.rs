//! Appending to a file through page-aligned direct I/O.
//!
//! Bytes are copied into a chain of DMA buffers that mirrors the file from
//! the page holding the last durable byte onward. A sync seals the chain:
//! pads its last page with zeros, writes every buffer (several in flight),
//! and fdatasyncs. The partial last page is copied into the next chain and
//! rewritten by the next sync with more bytes after it; its durable prefix is
//! byte-identical in both versions, so a torn rewrite cannot damage it.
//!
//! A failed sync keeps its writes; the next sync repeats them before its own.
//! Writes of one seal never overlap, but writes of two seals may share a page,
//! so each seal's writes are a stage and stages run one after the other: two
//! writes of the same page are never in flight together, and the newer one
//! lands last.

use std::io;
use std::rc::Rc;

use crate::io::{ALIGN, IoBuffer, StorageFile, align_down, align_up, write_all_at};
use crate::local_sync::join_bounded;

/// Writes of one sync issued to the device at once.
pub const WRITES_IN_FLIGHT_MAX: usize = 8;
/// Bytes copied, then checksummed from the copy, at a time: small enough to
/// stay in the L1 cache between the two.
const HASHED_PIECE_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppenderConfig {
    /// Size of each buffer of the chain, and of each write.
    pub chunk_bytes: usize,
    /// Whole buffers kept for reuse after their write, so steady appends
    /// allocate (and page-fault) nothing.
    pub pooled_chunks_max: usize,
    /// File space is reserved in steps of this many bytes.
    pub preallocate_bytes: u64,
}

impl AppenderConfig {
    pub fn validate(&self) {
        assert!(self.chunk_bytes >= ALIGN && self.chunk_bytes.is_multiple_of(ALIGN));
        assert!(self.preallocate_bytes >= ALIGN as u64 && self.preallocate_bytes.is_multiple_of(ALIGN as u64));
    }
}

/// The writes of one sync, in stages run one after the other.
pub struct SyncJob<B> {
    stages: Vec<Vec<(u64, Rc<B>)>>,
    /// The logical end this job makes durable.
    pub end: u64,
    allocate_to: Option<u64>,
}

impl<B> SyncJob<B> {
    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(|s| s.is_empty()) && self.allocate_to.is_none()
    }
}

pub struct Appender<F: StorageFile> {
    config: AppenderConfig,
    /// File position of the first byte of `chain[0]`; page aligned.
    chain_pos: u64,
    chain: Vec<F::Buffer>,
    /// Bytes filled in the last buffer of `chain`.
    last_fill: usize,
    /// Logical end of the data, durable or not.
    end: u64,
    /// `end` at the last seal: bytes past it are in the chain being filled.
    sealed_end: u64,
    durable_end: u64,
    /// Writes of failed syncs, one stage per seal, oldest first; repeated
    /// by the next sync before its own.
    unsynced: Vec<Vec<(u64, Rc<F::Buffer>)>>,
    /// File bytes reserved (the file's size, with `keep_size = false`).
    allocated: u64,
    /// Whole, written buffers ready for reuse.
    pool: Vec<F::Buffer>,
}

impl<F: StorageFile> Appender<F> {
    /// Continues a file whose data ends at `end`. `tail` holds the bytes from
    /// the start of the page containing `end` up to `end` (empty when `end`
    /// is page aligned); `file_bytes` is the file's current size.
    pub fn new(file: &F, config: AppenderConfig, end: u64, tail: &[u8], file_bytes: u64) -> Appender<F> {
        config.validate();
        let chain_pos = align_down(end);
        assert_eq!(tail.len() as u64, end - chain_pos, "tail must be the partial last page");
        let mut appender = Appender {
            config,
            chain_pos,
            chain: Vec::new(),
            last_fill: 0,
            end: chain_pos,
            sealed_end: end,
            durable_end: end,
            unsynced: Vec::new(),
            allocated: file_bytes,
            pool: Vec::new(),
        };
        appender.copy_in(file, tail);
        assert_eq!(appender.end, end);
        appender
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// Bytes appended since the last successful sync.
    pub fn pending_bytes(&self) -> u64 {
        self.end - self.durable_end
    }

    /// Bytes appended since the last seal: the buffer being filled, not
    /// counting a sync in flight.
    pub fn unsealed_bytes(&self) -> u64 {
        self.end - self.sealed_end
    }

    pub fn append(&mut self, file: &F, bytes: &[u8]) {
        self.copy_in(file, bytes);
    }

    /// Appends `bytes` and feeds them to `crc` in the same pass: each piece
    /// is checksummed from the buffer just after it is copied there, while it
    /// is still in the CPU's cache, so the source is read once.
    pub fn append_hashed(&mut self, file: &F, bytes: &[u8], crc: &mut crc32fast::Hasher) {
        for piece in bytes.chunks(HASHED_PIECE_BYTES) {
            let at = self.end;
            self.copy_in(file, piece);
            self.each_slice(at, piece.len(), |s| crc.update(s));
        }
    }

    /// Overwrites bytes already appended, at logical position `pos`, that
    /// no seal has taken yet (a field of a header appended earlier in the
    /// same step).
    pub fn patch(&mut self, pos: u64, bytes: &[u8]) {
        assert!(
            pos >= self.sealed_end && pos + bytes.len() as u64 <= self.end,
            "patching sealed or unwritten bytes"
        );
        let mut done = 0;
        for (i, span) in spans(pos - self.chain_pos, bytes.len(), self.config.chunk_bytes) {
            let n = span.len();
            self.chain[i].as_mut_slice()[span].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
    }

    /// Calls `f` on the chain's bytes from logical position `pos`, `len` of
    /// them, in order (one slice per buffer they span).
    fn each_slice(&self, pos: u64, len: usize, mut f: impl FnMut(&[u8])) {
        for (i, span) in spans(pos - self.chain_pos, len, self.config.chunk_bytes) {
            f(&self.chain[i].as_slice()[span]);
        }
    }

    fn copy_in(&mut self, file: &F, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let full = self.chain.last().is_none_or(|b| self.last_fill == b.as_slice().len());
            if full {
                let buf = self
                    .pool
                    .pop()
                    .unwrap_or_else(|| file.alloc_buffer(self.config.chunk_bytes));
                self.chain.push(buf);
                self.last_fill = 0;
            }
            let buf = self.chain.last_mut().expect("a buffer was just ensured");
            let room = buf.as_slice().len() - self.last_fill;
            let n = room.min(bytes.len());
            buf.as_mut_slice()[self.last_fill..self.last_fill + n].copy_from_slice(&bytes[..n]);
            self.last_fill += n;
            self.end += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// Seals everything appended so far into a job; appends may continue
    /// into a new chain while the job runs.
    pub fn seal(&mut self, file: &F) -> SyncJob<F::Buffer> {
        let mut writes = Vec::with_capacity(self.chain.len());
        let mut pos = self.chain_pos;
        let chain = std::mem::take(&mut self.chain);
        let last_index = chain.len().checked_sub(1);
        let mut carried: Option<Vec<u8>> = None;
        for (i, mut buf) in chain.into_iter().enumerate() {
            if Some(i) == last_index {
                let fill = self.last_fill;
                let padded = align_up(fill as u64) as usize;
                buf.as_mut_slice()[fill..padded].fill(0);
                if !fill.is_multiple_of(ALIGN) {
                    carried = Some(buf.as_slice()[align_down(fill as u64) as usize..fill].to_vec());
                }
                buf.trim_to(padded);
            }
            let len = buf.as_slice().len() as u64;
            writes.push((pos, Rc::new(buf)));
            pos += len;
        }
        assert!(pos == align_up(self.end) || writes.is_empty());
        // Start the next chain at the partial last page.
        self.chain_pos = align_down(self.end);
        self.last_fill = 0;
        let resume_end = self.end;
        self.end = self.chain_pos;
        if let Some(tail) = carried {
            self.copy_in(file, &tail);
        }
        assert_eq!(self.end, resume_end);

        self.sealed_end = self.end;
        let mut stages = std::mem::take(&mut self.unsynced);
        stages.push(writes);
        let needed = align_up(self.end);
        let allocate_to = (needed > self.allocated).then(|| {
            let step = self.config.preallocate_bytes;
            needed.div_ceil(step) * step
        });
        SyncJob {
            stages,
            end: self.end,
            allocate_to,
        }
    }

    /// Records the outcome of a job from [`seal`](Self::seal).
    pub fn finish(&mut self, job: SyncJob<F::Buffer>, result: &io::Result<()>) {
        match result {
            Ok(()) => {
                assert!(job.end >= self.durable_end);
                self.durable_end = job.end;
                if let Some(to) = job.allocate_to {
                    self.allocated = self.allocated.max(to);
                }
                for (_, buf) in job.stages.into_iter().flatten() {
                    if self.pool.len() < self.config.pooled_chunks_max
                        && let Ok(buf) = Rc::try_unwrap(buf)
                        && buf.as_slice().len() == self.config.chunk_bytes
                    {
                        self.pool.push(buf);
                    }
                }
            }
            Err(_) => {
                // Keep every write for the next attempt, in seal order.
                assert!(self.unsynced.is_empty(), "only one job runs at a time");
                self.unsynced = job.stages.into_iter().filter(|s| !s.is_empty()).collect();
            }
        }
    }
}

/// Where the chain holds its bytes `from..from + len` (counted from the
/// chain's start, buffers of `chunk` bytes): each buffer's index and range.
fn spans(from: u64, len: usize, chunk: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let start = from as usize;
    let end = start + len;
    let buffers = if len == 0 {
        0..0
    } else {
        start / chunk..end.div_ceil(chunk)
    };
    buffers.map(move |i| {
        let base = i * chunk;
        (i, start.max(base) - base..end.min(base + chunk) - base)
    })
}

/// Runs a job: reserves space, writes, fdatasyncs. Touches no appender state,
/// so the caller holds no borrow across it.
pub async fn run_job<F: StorageFile>(file: &F, job: &SyncJob<F::Buffer>) -> io::Result<()> {
    if let Some(to) = job.allocate_to {
        file.allocate(to).await?;
    }
    for stage in &job.stages {
        let writes: Vec<_> = stage.iter().map(|(pos, buf)| write_all_at(file, buf, *pos)).collect();
        for r in join_bounded(writes, WRITES_IN_FLIGHT_MAX).await {
            r?;
        }
    }
    if job.stages.iter().any(|s| !s.is_empty()) || job.allocate_to.is_some() {
        file.sync_data().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FileSystem;
    use crate::io::sim::{SimFaults, SimFileSystem};
    use crate::testing::block_on;
    use std::path::Path;

    /// A simulated file, and an appender config of one-page buffers.
    async fn page_chunks() -> (<SimFileSystem as FileSystem>::File, AppenderConfig) {
        let fs = SimFileSystem::new(7, SimFaults::default());
        let file = fs.open(Path::new("/a"), true).await.unwrap();
        let config = AppenderConfig {
            chunk_bytes: ALIGN,
            pooled_chunks_max: 4,
            preallocate_bytes: ALIGN as u64,
        };
        (file, config)
    }

    #[test]
    fn hashed_appends_checksum_what_they_copy_and_patches_land_across_buffers() {
        block_on(async {
            let (file, config) = page_chunks().await;
            // Start mid-page, so pieces straddle buffers at odd places.
            let tail: Vec<u8> = (0..100u8).collect();
            let mut a = Appender::new(&file, config, 100, &tail, 0);
            let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + 3) as u8).collect();
            let header_at = a.end();
            a.append(&file, &[0u8; 8]);
            let mut crc = crc32fast::Hasher::new();
            a.append_hashed(&file, &payload[..5], &mut crc);
            a.append_hashed(&file, &payload[5..], &mut crc);
            assert_eq!(crc.finalize(), crc32fast::hash(&payload));
            // A patch over the boundary of the first two buffers (4096).
            a.patch(header_at + 8 + 3990, &[0xAB; 10]);
            a.patch(header_at, &[1, 2, 3, 4, 5, 6, 7, 8]);
            let job = a.seal(&file);
            run_job(&file, &job).await.unwrap();
            a.finish(job, &Ok(()));
            let end = a.end();
            let written = file.read_at(0, end as usize).await.unwrap();
            let mut expected = tail.clone();
            expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            expected.extend_from_slice(&payload);
            let at = (header_at + 8 + 3990) as usize;
            expected[at..at + 10].fill(0xAB);
            assert_eq!(&written[..], &expected[..]);
        });
    }

    #[test]
    #[should_panic(expected = "patching sealed or unwritten bytes")]
    fn a_patch_of_sealed_bytes_is_refused() {
        block_on(async {
            let (file, config) = page_chunks().await;
            let mut a = Appender::new(&file, config, 0, &[], 0);
            a.append(&file, &[9; 10]);
            let _job = a.seal(&file);
            a.patch(2, &[1]);
        });
    }
}

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
//!
//! Between seals, a flusher may take the chain's full buffers and write them
//! ahead of the sync that will cover them ([`Appender::take_ahead`]), so
//! that the device keeps working while a sync's last writes drain and its
//! fdatasync runs. A buffer written ahead never holds a page that another
//! write puts other bytes on: a chain's first buffer, which holds the last
//! seal's partial page, is left to the next seal, and the partial last
//! buffer is never full. So writes ahead may land in any order, and be
//! repeated, without harm. The seal after them waits for them before its
//! fdatasync, and a failure among them fails that sync, which then writes
//! them again.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use crate::io::{ALIGN, IoBuffer, StorageFile, align_down, align_up, clone_io_error, write_all_at};
use crate::local_sync::{LocalNotify, Slots, join_bounded};

/// Writes of one file issued to the device at once: a sync's own, and
/// those ahead of it, together (they share [`WriteShare::slots`]).
pub const WRITES_IN_FLIGHT_MAX: usize = 8;
/// Full buffers taken to be written ahead between two seals: bounds the
/// memory a log's writes ahead hold until a sync covers them.
pub const AHEAD_CHUNKS_MAX: usize = 16;
/// Bytes checksummed, then copied, at a time: small enough to stay in the
/// L1 cache between the two.
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

/// What one file's writes share: the device depth (a sync's writes and
/// those ahead of it), and word of each write ahead that ends.
pub struct WriteShare {
    pub slots: Slots,
    ahead_done: LocalNotify,
}

impl WriteShare {
    pub fn new() -> Rc<WriteShare> {
        Rc::new(WriteShare {
            slots: Slots::new(WRITES_IN_FLIGHT_MAX),
            ahead_done: LocalNotify::default(),
        })
    }

    /// Waits until `settled` holds, looking again each time a write ahead
    /// ends.
    pub async fn until_ahead(&self, settled: impl Fn() -> bool) {
        loop {
            let done = self.ahead_done.listen();
            if settled() {
                return;
            }
            done.await;
        }
    }
}

fn all_done<B>(writes: &[Rc<AheadWrite<B>>]) -> bool {
    writes.iter().all(|a| a.is_done())
}

/// A full buffer taken to be written ahead of the seal that will cover it.
/// Its bytes are final, and no other write puts other bytes on its pages.
pub struct AheadWrite<B> {
    pub pos: u64,
    pub buf: Rc<B>,
    /// `None` while the write is in flight.
    outcome: RefCell<Option<io::Result<()>>>,
}

impl<B> AheadWrite<B> {
    pub fn is_done(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// Records how the write ended (the first report counts), and tells
    /// the seal waiting for it.
    pub fn record(&self, result: io::Result<()>, share: &WriteShare) {
        let mut outcome = self.outcome.borrow_mut();
        if outcome.is_none() {
            *outcome = Some(result);
        }
        drop(outcome);
        share.ahead_done.notify_all();
    }

    fn error(&self) -> Option<io::Error> {
        match &*self.outcome.borrow() {
            Some(Err(e)) => Some(clone_io_error(e)),
            _ => None,
        }
    }
}

/// The writes of one sync, in stages run one after the other.
pub struct SyncJob<B> {
    stages: Vec<Vec<(u64, Rc<B>)>>,
    /// Writes taken ahead of this seal: they must all land before its
    /// fdatasync.
    ahead: Vec<Rc<AheadWrite<B>>>,
    /// The logical end this job makes durable.
    pub end: u64,
    allocate_to: Option<u64>,
}

impl<B> SyncJob<B> {
    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(|s| s.is_empty()) && self.ahead.is_empty() && self.allocate_to.is_none()
    }
}

pub struct Appender<F: StorageFile> {
    config: AppenderConfig,
    /// File position of the first byte of `chain[0]`; page aligned.
    chain_pos: u64,
    /// `None` where a full buffer was taken to be written ahead.
    chain: Vec<Option<F::Buffer>>,
    /// `chain[0]` holds the partial page of the last seal (or of the file
    /// at open), whose other version a sync may be writing: only a seal
    /// writes it.
    front_shared: bool,
    /// Where in `chain` the next buffer to write ahead is.
    next_ahead: usize,
    /// Buffers of `chain` taken to be written ahead, not yet sealed.
    ahead: Vec<Rc<AheadWrite<F::Buffer>>>,
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
            front_shared: !tail.is_empty(),
            next_ahead: 0,
            ahead: Vec::new(),
            last_fill: 0,
            end: chain_pos,
            sealed_end: end,
            durable_end: end,
            unsynced: Vec::new(),
            allocated: file_bytes,
            pool: Vec::new(),
        };
        appender.copy_in(file, tail, <[u8]>::copy_from_slice);
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

    /// Bytes appended since the last seal and still in the chain: neither
    /// written ahead nor in a sync.
    pub fn unsealed_bytes(&self) -> u64 {
        self.end - self.sealed_end - (self.ahead.len() * self.config.chunk_bytes) as u64
    }

    /// Where the next buffer to write ahead is, if one may go now: full,
    /// not holding the last seal's partial page, inside reserved space, and
    /// under [`AHEAD_CHUNKS_MAX`].
    fn next_ahead_index(&self) -> Option<usize> {
        let i = self.next_ahead.max(usize::from(self.front_shared));
        let chunk = self.config.chunk_bytes;
        let full = i + 1 < self.chain.len() || (i + 1 == self.chain.len() && self.last_fill == chunk);
        let reserved = self.chain_pos + ((i + 1) * chunk) as u64 <= self.allocated;
        (self.ahead.len() < AHEAD_CHUNKS_MAX && full && reserved).then_some(i)
    }

    /// Whether every write ahead taken since the last seal has ended.
    pub fn ahead_settled(&self) -> bool {
        all_done(&self.ahead)
    }

    /// Whether [`take_ahead`](Self::take_ahead) has a buffer to give.
    pub fn has_ahead(&self) -> bool {
        self.next_ahead_index().is_some()
    }

    /// Takes the next full buffer to be written ahead of the next seal; the
    /// caller writes it and records the outcome in the returned entry,
    /// which the next seal waits for.
    pub fn take_ahead(&mut self) -> Option<Rc<AheadWrite<F::Buffer>>> {
        let i = self.next_ahead_index()?;
        let buf = self.chain[i].take().expect("a buffer is taken once");
        self.next_ahead = i + 1;
        let entry = Rc::new(AheadWrite {
            pos: self.chain_pos + (i * self.config.chunk_bytes) as u64,
            buf: Rc::new(buf),
            outcome: RefCell::new(None),
        });
        self.ahead.push(entry.clone());
        Some(entry)
    }

    pub fn append(&mut self, file: &F, bytes: &[u8]) {
        self.copy_in(file, bytes, <[u8]>::copy_from_slice);
    }

    /// Appends `bytes` and feeds them to `crc` in the same pass: each piece
    /// is checksummed, then copied while it is still in the CPU's cache, so
    /// the source is read from memory once; the copy streams past the cache
    /// (`copy`), since the buffers are written to the disk and not read.
    pub fn append_hashed(&mut self, file: &F, bytes: &[u8], crc: &mut crc32fast::Hasher) {
        for piece in bytes.chunks(HASHED_PIECE_BYTES) {
            crc.update(piece);
            self.copy_in(file, piece, crate::copy::copy);
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
            let buf = self.chain[i].as_mut().expect("unsealed bytes are in the chain");
            buf.as_mut_slice()[span].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
    }

    fn copy_in(&mut self, file: &F, mut bytes: &[u8], copy: fn(&mut [u8], &[u8])) {
        while !bytes.is_empty() {
            if self.chain.is_empty() || self.last_fill == self.config.chunk_bytes {
                let buf = self
                    .pool
                    .pop()
                    .unwrap_or_else(|| file.alloc_buffer(self.config.chunk_bytes));
                self.chain.push(Some(buf));
                self.last_fill = 0;
            }
            let buf = self
                .chain
                .last_mut()
                .and_then(Option::as_mut)
                .expect("the last buffer is never full, so never written ahead");
            let room = buf.as_slice().len() - self.last_fill;
            let n = room.min(bytes.len());
            copy(&mut buf.as_mut_slice()[self.last_fill..self.last_fill + n], &bytes[..n]);
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
        for (i, slot) in chain.into_iter().enumerate() {
            let Some(mut buf) = slot else {
                // Written ahead (full, so never the partial last page).
                pos += self.config.chunk_bytes as u64;
                continue;
            };
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
        assert!(pos == align_up(self.end) || last_index.is_none());
        // Start the next chain at the partial last page.
        self.chain_pos = align_down(self.end);
        self.front_shared = carried.is_some();
        self.next_ahead = 0;
        let ahead = std::mem::take(&mut self.ahead);
        self.last_fill = 0;
        let resume_end = self.end;
        self.end = self.chain_pos;
        if let Some(tail) = carried {
            self.copy_in(file, &tail, <[u8]>::copy_from_slice);
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
            ahead,
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
                let ahead = job
                    .ahead
                    .into_iter()
                    .filter_map(|a| Rc::try_unwrap(a).ok())
                    .map(|a| (a.pos, a.buf));
                for (_, buf) in job.stages.into_iter().flatten().chain(ahead) {
                    if self.pool.len() < self.config.pooled_chunks_max
                        && let Ok(buf) = Rc::try_unwrap(buf)
                        && buf.as_slice().len() == self.config.chunk_bytes
                    {
                        self.pool.push(buf);
                    }
                }
            }
            Err(_) => {
                // Keep every write for the next attempt, in seal order; the
                // writes ahead too (a failed fdatasync may have lost them).
                // They may be in flight still: the same bytes again.
                assert!(self.unsynced.is_empty(), "only one job runs at a time");
                let ahead: Vec<_> = job.ahead.iter().map(|a| (a.pos, a.buf.clone())).collect();
                self.unsynced = job
                    .stages
                    .into_iter()
                    .chain([ahead])
                    .filter(|s| !s.is_empty())
                    .collect();
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

/// Runs a job: reserves space, writes, waits for the writes ahead of it,
/// fdatasyncs. Its writes take slots of `share` when given (a file written
/// ahead must give the share its writes ahead use). Touches no appender
/// state, so the caller holds no borrow across it.
pub async fn run_job<F: StorageFile>(file: &F, job: &SyncJob<F::Buffer>, share: Option<&WriteShare>) -> io::Result<()> {
    if let Some(to) = job.allocate_to {
        file.allocate(to).await?;
    }
    for stage in &job.stages {
        let writes: Vec<_> = stage
            .iter()
            .map(|(pos, buf)| async move {
                let _slot = match share {
                    Some(share) => Some(share.slots.acquire().await),
                    None => None,
                };
                write_all_at(file, buf, *pos).await
            })
            .collect();
        for r in join_bounded(writes, WRITES_IN_FLIGHT_MAX).await {
            r?;
        }
    }
    if !job.ahead.is_empty() {
        let share = share.expect("writes ahead are told of through a share");
        share.until_ahead(|| all_done(&job.ahead)).await;
        if let Some(e) = job.ahead.iter().find_map(|a| a.error()) {
            return Err(e);
        }
    }
    if !job.is_empty() {
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
            run_job(&file, &job, None).await.unwrap();
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
    fn writes_ahead_take_full_buffers_past_the_shared_page_and_the_seal_waits_for_them() {
        block_on(async {
            let (file, config) = page_chunks().await;
            let share = WriteShare::new();
            // Data ends mid-page: the first buffer holds a page the last
            // sync wrote in another version, so only a seal writes it.
            let tail = vec![7u8; 100];
            file.write_at(Rc::new(padded(&file, &tail)), 0).await.unwrap();
            let mut a = Appender::new(&file, config, 100, &tail, 4 * ALIGN as u64);
            let payload: Vec<u8> = (0..5 * ALIGN as u32).map(|i| (i * 13 + 1) as u8).collect();
            a.append(&file, &payload);
            // Pages 1 to 3 are full and reserved; page 4 is past the
            // reserved space, and page 5 is the partial last one.
            let unsealed = a.unsealed_bytes();
            let taken: Vec<_> = std::iter::from_fn(|| a.take_ahead()).collect();
            assert_eq!(taken.iter().map(|t| t.pos).collect::<Vec<_>>(), [4096, 8192, 12288]);
            assert_eq!(a.unsealed_bytes(), unsealed - 3 * ALIGN as u64);
            assert!(!a.ahead_settled());
            let job = a.seal(&file);
            let staged: Vec<u64> = job.stages.iter().flatten().map(|(pos, _)| *pos).collect();
            assert_eq!(staged, [0, 16384, 20480]);
            // The seal's sync ends only after the writes ahead do.
            let mut sync = Box::pin(run_job(&file, &job, Some(&share)));
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            assert!(sync.as_mut().poll(&mut cx).is_pending());
            for t in &taken {
                let r = write_all_at(&file, &t.buf, t.pos).await;
                t.record(r, &share);
            }
            sync.await.unwrap();
            a.finish(job, &Ok(()));
            assert_eq!(a.durable_end(), 100 + payload.len() as u64);
            let written = file.read_at(0, a.end() as usize).await.unwrap();
            assert_eq!(&written[..100], &tail[..]);
            assert_eq!(&written[100..], &payload[..]);
        });
    }

    #[test]
    fn a_failed_write_ahead_fails_its_sync_and_the_next_writes_it_again() {
        block_on(async {
            let (file, config) = page_chunks().await;
            let share = WriteShare::new();
            let mut a = Appender::new(&file, config, 0, &[], 8 * ALIGN as u64);
            a.append(&file, &[5u8; 2 * ALIGN + 10]);
            // With no shared page, the first buffer may go ahead too.
            let first = a.take_ahead().expect("a full buffer");
            let second = a.take_ahead().expect("a full buffer");
            assert!(a.take_ahead().is_none());
            first.record(Ok(()), &share);
            second.record(Err(io::Error::from_raw_os_error(28)), &share);
            let job = a.seal(&file);
            let err = run_job(&file, &job, Some(&share)).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(28), "the write's own error");
            a.finish(job, &Err(err));
            assert_eq!(a.durable_end(), 0);
            a.append(&file, &[6u8; 10]);
            let retry = a.seal(&file);
            let staged: Vec<u64> = retry.stages.iter().flatten().map(|(pos, _)| *pos).collect();
            assert_eq!(
                staged,
                [8192, 0, 4096, 8192],
                "the failed seal's page, its writes ahead, then the new page"
            );
            run_job(&file, &retry, Some(&share)).await.unwrap();
            a.finish(retry, &Ok(()));
            let written = file.read_at(0, a.end() as usize).await.unwrap();
            assert!(written[..2 * ALIGN + 10].iter().all(|b| *b == 5));
            assert!(written[2 * ALIGN + 10..].iter().all(|b| *b == 6));
        });
    }

    /// `bytes` zero-padded to whole pages in a buffer of `file`'s.
    fn padded<F: StorageFile>(file: &F, bytes: &[u8]) -> F::Buffer {
        let mut buf = file.alloc_buffer(align_up(bytes.len() as u64) as usize);
        buf.as_mut_slice().fill(0);
        buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        buf
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

//! The partition log: an append-only sequence of segments owned by one shard.
//!
//! Concurrency model: all methods take `&self` and may be called from many
//! tasks of the owning shard. State lives in a `RefCell` that is never
//! borrowed across an await. Operations that do I/O on shared state (sync,
//! roll, checkpoint, retention, truncation, close) hold `io_lock`, a FIFO
//! async mutex, so they run one at a time; those that write the indexes or
//! the checkpoint, or change the segments, also hold `checkpoint_lock`
//! (taken second). A checkpoint that falls due while a flusher runs is
//! written by the flusher under `checkpoint_lock` alone, so that syncs go
//! on while it is written. Appends copy into the write
//! buffer without waiting, unless they must roll a segment, retry after a
//! disk fault, or wait for space in the write buffer.
//!
//! A sync outlives its caller: the broker drops a request's future when the
//! request times out or its client goes away, and a sync dropped part way
//! would skip its sealed bytes while later syncs call the log durable past
//! them. So the sync's I/O lives in the log (`sync_in_flight`), and the
//! next holder of `io_lock` finishes it before anything else.
//!
//! Group commit: a task that wants offset `o` durable waits for `io_lock`;
//! whoever holds it syncs everything appended so far, so the waiters behind
//! it usually find their offset durable when their turn comes.
//!
//! Invariants (checked by `check_invariants` in tests, and after open and
//! truncation):
//! - `start_offset <= durable_offset <= end_offset`;
//! - segments are contiguous: each segment's `next_offset` is the next
//!   segment's base; the last segment is the active one;
//! - every byte below a segment's durable end is a valid frame on disk;
//! - reads never return data at or past `durable_offset`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::appender::{AheadWrite, Appender, SyncJob, WRITES_IN_FLIGHT_MAX, WriteShare, run_job};
use crate::batch::BatchHeader;
use crate::cache::{BatchCache, CacheLogId};
use crate::checkpoint::{Checkpoint, SegmentCheckpoint};
use crate::config::LogConfig;
use crate::error::{Result, StorageError};
use crate::frame::{CRC_FIELD, FRAME_HEADER_BYTES, FrameError, FrameHeader};
use crate::index::{NewEntries, OFFSET_ENTRY_BYTES, SegmentIndex, TIME_ENTRY_BYTES};
use crate::io::{ALIGN, FileSystem, StorageFile, align_up, clone_io_error, read_file, write_all_at, write_file_atomic};
use crate::local_sync::{LocalMutex, LocalMutexGuard, LocalNotify};
use crate::offset::Offset;
use crate::segment::{
    DELETED_SUFFIX, FREE_SUFFIX, FrameCursor, LOG_SUFFIX, OFFSET_INDEX_SUFFIX, SEGMENT_SUFFIXES, Segment,
    TIME_INDEX_SUFFIX, parse_segment_name, read_tail_page, scan_frames, segment_file,
};
use crate::served::{ASSIGNED_HEAD_BYTES, ServedBatch};

const CHECKPOINT_FILE: &str = "checkpoint";
/// Smallest read from disk; reads near each other share one I/O.
const READ_CHUNK_BYTES_MIN: usize = 64 << 10;
/// Largest read from disk; a single larger frame is read whole.
const READ_CHUNK_BYTES_MAX: usize = 4 << 20;
/// Index appenders hold little; their buffers stay small.
const INDEX_CHUNK_BYTES: usize = 16 << 10;

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    pub log_start_offset: Offset,
}

/// A batch found by timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampHit {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    /// The whole stored batch, for finding the record within it.
    pub batch: ServedBatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Byte budget for the batches returned.
    pub bytes_max: usize,
    /// Return no batch starting at or past this offset (it is further capped
    /// at the durable offset).
    pub upper: Offset,
    /// Return the first batch even if it alone exceeds `bytes_max`.
    pub min_one: bool,
}

/// What one segment's part of a read got from the disk.
struct DiskRead {
    batches: Vec<ServedBatch>,
    /// The offset after them (past a sealed segment's end when it read to it).
    next: Offset,
    /// It stopped at a frame that does not fit the budget or starts past
    /// `upper`: the read is done.
    stopped: bool,
}

/// Sizes and offsets at a moment, for metrics and admin APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    pub start_offset: Offset,
    pub end_offset: Offset,
    pub durable_offset: Offset,
    pub segment_count: usize,
    pub size_bytes: u64,
    /// Successful fdatasyncs of segment data since the log was opened.
    pub sync_count: u64,
    /// Checkpoints that failed since the log was opened (the data stays
    /// durable; recovery would scan further back).
    pub checkpoint_failures: u64,
    /// Full buffers written ahead of the sync that covered them.
    pub writes_ahead: u64,
}

/// The writer side of the active (last) segment.
struct ActiveWriter<F: StorageFile> {
    log: Appender<F>,
    offset_index: Appender<F>,
    offset_index_file: Rc<F>,
    time_index: Appender<F>,
    time_index_file: Rc<F>,
}

struct State<F: StorageFile> {
    config: LogConfig,
    start_offset: Offset,
    end_offset: Offset,
    durable_offset: Offset,
    /// Largest timestamp among durable frames of the active segment.
    durable_max_timestamp: i64,
    segments: BTreeMap<Offset, Segment<F>>,
    writer: ActiveWriter<F>,
    /// A roll or truncation is in progress: appends wait for it.
    appends_paused: bool,
    /// The last sync failed; appends retry it before going on.
    write_error: Option<StorageError>,
    bytes_since_checkpoint: u64,
    sync_count: u64,
    checkpoint_failures: u64,
    writes_ahead: u64,
    /// Tasks running `flush_until_closed`.
    flushers: u32,
    /// Stamped into each appended batch's partition leader epoch.
    leader_epoch: i32,
    closed: bool,
    /// The bound of the deleted segment's file kept for reuse
    /// (`{bound}.free`): every frame in it holds offsets below the bound.
    free_file: Option<Offset>,
}

impl<F: StorageFile> State<F> {
    fn active(&self) -> &Segment<F> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment<F> {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    /// Enough was synced since the last checkpoint to write another.
    fn checkpoint_due(&self) -> bool {
        self.bytes_since_checkpoint >= self.config.checkpoint_interval_bytes
    }

    fn needs_roll(&self, frame_bytes: u64, now_ms: i64) -> bool {
        let active = self.active();
        !active.is_empty()
            && (active.end + frame_bytes > self.config.segment_bytes
                || now_ms.saturating_sub(active.opened_ms) >= self.config.segment_ms)
    }

    fn check_invariants(&self) {
        assert!(self.start_offset <= self.durable_offset, "start past durable");
        assert!(self.durable_offset <= self.end_offset, "durable past end");
        let mut expected: Option<Offset> = None;
        for (base, seg) in &self.segments {
            assert_eq!(*base, seg.base);
            if let Some(e) = expected {
                assert_eq!(e, seg.base, "segments are not contiguous");
            }
            assert!(seg.next_offset >= seg.base);
            expected = Some(seg.next_offset);
        }
        assert_eq!(expected, Some(self.end_offset), "active segment does not end the log");
        assert_eq!(self.writer.log.end(), self.active().end);
    }
}

/// Closes the log if dropped before `done` is set: a truncation stopped
/// between cutting the kept segment's files and moving the log's state to
/// match would leave the log serving from files that no longer hold it.
struct CutInProgress<'a, S: FileSystem> {
    log: &'a Log<S>,
    done: bool,
}

impl<S: FileSystem> Drop for CutInProgress<'_, S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        error!(dir = %self.log.dir.display(), "truncation stopped part way: log closed until reopened");
        self.log.mark_closed();
    }
}

/// Where a truncation cuts the log, for the checkpoint written before it.
struct CheckpointCut {
    /// Base of the segment that keeps the cut.
    keep: Offset,
    /// File position of the cut in that segment.
    position: u64,
    next_offset: Offset,
    /// Largest timestamp of the frames below the cut.
    max_timestamp: i64,
}

/// The writes and fdatasync of one sealed job; it gives the job back.
type SyncIo<F> = Pin<Box<dyn Future<Output = (SyncJob<<F as StorageFile>::Buffer>, std::io::Result<()>)>>>;

/// A sync under way, with what its success makes durable.
struct SyncInFlight<F: StorageFile> {
    io: SyncIo<F>,
    path: PathBuf,
    end_offset: Offset,
    max_timestamp: i64,
    synced_bytes: u64,
}

pub struct Log<S: FileSystem> {
    fs: S,
    dir: PathBuf,
    cache: BatchCache,
    cache_id: CacheLogId,
    io_lock: LocalMutex,
    /// Held while the index files or the checkpoint are written, and by
    /// everything that changes the segments or the active writer (roll,
    /// truncation, retention, close), which take it after `io_lock`. A
    /// background checkpoint holds only this one, so syncs go on during it.
    checkpoint_lock: LocalMutex,
    /// Notified when the write buffer goes from empty to not, a checkpoint
    /// falls due, and on close.
    pending_notify: LocalNotify,
    /// Notified after each seal and each finished sync: a full write buffer
    /// has room again.
    sealed_notify: LocalNotify,
    /// Notified when the durable offset moves (either way: truncation) and
    /// on close.
    durable_notify: LocalNotify,
    /// Notified when an append fills a buffer that may be written ahead.
    ahead_notify: LocalNotify,
    /// The device depth the active file's writes share, and word of writes
    /// ahead that end.
    write_share: Rc<WriteShare>,
    state: RefCell<State<S::File>>,
    /// The sync being run under `io_lock`, kept here rather than in its
    /// caller's future so that it survives the caller (see `sync_locked`).
    sync_in_flight: RefCell<Option<SyncInFlight<S::File>>>,
}

impl<S: FileSystem> Drop for Log<S> {
    fn drop(&mut self) {
        self.cache.unregister(self.cache_id);
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |e| StorageError::io(op, path, e)
}

impl<S: FileSystem> Log<S> {
    /// Opens the log in `dir`, creating it if empty, and recovers it: scans
    /// each segment from its checkpointed end, cuts at the first torn or
    /// corrupt frame, drops everything after a cut, rebuilds missing or
    /// invalid indexes, and writes a fresh checkpoint.
    pub async fn open(fs: S, dir: PathBuf, config: LogConfig, cache: BatchCache, now_ms: i64) -> Result<Log<S>> {
        config.validate();
        fs.create_dir_all(&dir).await.map_err(io_err("create dir", &dir))?;
        let names = fs.list_dir(&dir).await.map_err(io_err("list", &dir))?;
        // Unfinished atomic writes, and deleted files not yet unlinked.
        for name in names
            .iter()
            .filter(|n| n.ends_with(".tmp") || n.ends_with(DELETED_SUFFIX))
        {
            let p = dir.join(name);
            fs.remove(&p).await.map_err(io_err("remove", &p))?;
        }
        let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_segment_name(n, LOG_SUFFIX)).collect();
        bases.sort();
        // One file kept for reuse at most: the one of the newest segment.
        let mut free: Vec<Offset> = names
            .iter()
            .filter_map(|n| parse_segment_name(n, FREE_SUFFIX))
            .collect();
        free.sort();
        let free_file = if config.recycle_segments { free.pop() } else { None };
        for bound in free {
            let p = segment_file(&dir, bound, FREE_SUFFIX);
            fs.remove(&p).await.map_err(io_err("remove", &p))?;
        }
        let checkpoint_path = dir.join(CHECKPOINT_FILE);
        let checkpoint = read_file(&fs, &checkpoint_path)
            .await
            .map_err(io_err("read", &checkpoint_path))?
            .and_then(|b| Checkpoint::decode(&b));
        if checkpoint.is_none() && !bases.is_empty() {
            warn!(dir = %dir.display(), "no valid checkpoint: recovering every segment from its start");
        }
        let checkpointed: HashMap<i64, SegmentCheckpoint> = checkpoint
            .iter()
            .flat_map(|c| c.segments.iter().map(|s| (s.base_offset, s.clone())))
            .collect();
        let mut start_offset = Offset(checkpoint.as_ref().map_or(0, |c| c.log_start_offset));

        let mut segments: BTreeMap<Offset, Segment<S::File>> = BTreeMap::new();
        // Segments before the first one the checkpoint names are leftovers
        // of retention or DeleteRecords (a checkpoint stops naming segments
        // before their files go) that a crash or a failure kept: they go
        // before the others are checked for gaps. A successor of theirs
        // may be gone already, and that gap must not cut the live segments
        // after it. (A stray file among the live ones, a failed roll's, is
        // left to the gap check, which drops it alone.)
        let first_named = checkpoint
            .as_ref()
            .and_then(|c| c.segments.first())
            .map(|s| Offset(s.base_offset));
        let live_from = first_named.map_or(0, |first| bases.partition_point(|b| *b < first));
        let mut doomed: Vec<Offset> = bases.drain(..live_from).collect();
        let mut expected: Option<Offset> = None;
        for &base in &bases {
            if expected.is_some_and(|e| e != base) {
                // Everything after a cut or a gap is unreachable: a corrupt
                // frame ends the log.
                doomed.push(base);
                continue;
            }
            let seg = recover_segment(&fs, &dir, base, checkpointed.get(&base.0), &config, now_ms).await?;
            expected = Some(seg.next_offset);
            segments.insert(base, seg);
        }
        // Whole segments below the start are leftovers of retention or
        // DeleteRecords that a crash kept from being removed.
        let below_start: Vec<Offset> = segments
            .iter()
            .filter(|(_, s)| s.next_offset <= start_offset)
            .map(|(b, _)| *b)
            .collect();
        for base in below_start {
            if segments.len() > 1 {
                segments.remove(&base);
                doomed.push(base);
            }
        }
        for base in &doomed {
            warn!(dir = %dir.display(), base = base.0, "removing segment after a cut or below the log start");
            remove_segment_files(&fs, &dir, *base).await?;
        }
        if segments.is_empty() {
            let seg = create_segment(&fs, &dir, start_offset, None, &config, now_ms).await?;
            segments.insert(start_offset, seg);
        }
        let first_base = *segments.keys().next().expect("at least one segment");
        let end_offset = segments.values().next_back().expect("at least one segment").next_offset;
        start_offset = start_offset.max(first_base).min(end_offset);

        // Sealed segments whose index grew during recovery get their index
        // files rewritten, so the checkpoint can count on them.
        let last_base = *segments.keys().next_back().expect("at least one segment");
        for seg in segments.values_mut().filter(|s| s.base != last_base) {
            persist_full_index(&fs, &dir, seg).await?;
        }
        let writer = {
            let active = segments.get_mut(&last_base).expect("last segment exists");
            activate(&fs, &dir, active, &config).await?
        };
        let durable_max_timestamp = segments[&last_base].max_timestamp();
        let cache_id = cache.register();
        let log = Log {
            fs,
            dir,
            cache,
            cache_id,
            io_lock: LocalMutex::new(),
            checkpoint_lock: LocalMutex::new(),
            pending_notify: LocalNotify::default(),
            sealed_notify: LocalNotify::default(),
            durable_notify: LocalNotify::default(),
            ahead_notify: LocalNotify::default(),
            write_share: WriteShare::new(),
            sync_in_flight: RefCell::new(None),
            state: RefCell::new(State {
                config,
                start_offset,
                end_offset,
                durable_offset: end_offset,
                durable_max_timestamp,
                segments,
                writer,
                appends_paused: false,
                write_error: None,
                bytes_since_checkpoint: 0,
                sync_count: 0,
                checkpoint_failures: 0,
                writes_ahead: 0,
                flushers: 0,
                leader_epoch: 0,
                closed: false,
                free_file,
            }),
        };
        log.state.borrow().check_invariants();
        {
            let _guards = log.lock_all().await;
            log.checkpoint_locked().await?;
        }
        info!(
            dir = %log.dir.display(),
            start = start_offset.0,
            end = end_offset.0,
            segments = log.state.borrow().segments.len(),
            "log opened"
        );
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn start_offset(&self) -> Offset {
        self.state.borrow().start_offset
    }

    /// The offset the next append gets (the log end offset).
    pub fn end_offset(&self) -> Offset {
        self.state.borrow().end_offset
    }

    /// Every offset below this is durable.
    pub fn durable_offset(&self) -> Offset {
        self.state.borrow().durable_offset
    }

    /// The leader epoch stamped into batches appended from now on.
    pub fn set_leader_epoch(&self, epoch: i32) {
        self.state.borrow_mut().leader_epoch = epoch;
    }

    pub fn config(&self) -> LogConfig {
        self.state.borrow().config
    }

    /// Applies new settings; they govern the next roll, retention pass and
    /// sync. Segment size changes never rewrite existing segments.
    pub fn set_config(&self, config: LogConfig) {
        config.validate();
        self.state.borrow_mut().config = config;
    }

    /// The largest record timestamp in the log (durable or not), or
    /// `i64::MIN` when it is empty.
    pub fn max_timestamp(&self) -> i64 {
        let st = self.state.borrow();
        st.segments
            .values()
            .filter(|s| s.next_offset > st.start_offset)
            .map(|s| s.max_timestamp())
            .max()
            .unwrap_or(i64::MIN)
    }

    pub fn stats(&self) -> LogStats {
        let st = self.state.borrow();
        LogStats {
            start_offset: st.start_offset,
            end_offset: st.end_offset,
            durable_offset: st.durable_offset,
            segment_count: st.segments.len(),
            size_bytes: st.segments.values().map(|s| s.end).sum(),
            sync_count: st.sync_count,
            checkpoint_failures: st.checkpoint_failures,
            writes_ahead: st.writes_ahead,
        }
    }

    /// Bytes appended and not yet durable.
    pub fn pending_bytes(&self) -> u64 {
        self.state.borrow().writer.log.pending_bytes()
    }

    /// Waits until `ready` holds, the log closes, or `stop` is set (whoever
    /// sets it notifies `pending_notify`). Everything `ready` looks at
    /// notifies `pending_notify` when it changes.
    async fn wait_for(&self, ready: impl Fn(&State<S::File>) -> bool, stop: &Cell<bool>) {
        loop {
            let listener = {
                let st = self.state.borrow();
                if st.closed || stop.get() || ready(&st) {
                    return;
                }
                self.pending_notify.listen()
            };
            listener.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Completes the next time the durable offset moves, or the log closes.
    /// Take it before checking the offset, so that no change is missed.
    pub fn durable_changed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.durable_notify.listen()
    }

    /// Makes appended data durable in the background until the log closes
    /// (`Ok`) or a sync fails (`Err`; the caller backs off and runs it
    /// again). While it runs, appends that find the write buffer full wait
    /// for its next sync instead of syncing themselves, so appending and
    /// writing overlap; full buffers are written ahead of the next sync,
    /// so the device keeps working while a sync drains and fdatasyncs; and
    /// checkpoints that fall due are written beside the syncs, which go on
    /// meanwhile, so the disk keeps taking data. Run it to its end: writes
    /// ahead it has in flight are finished before it returns.
    pub async fn flush_until_closed(&self) -> Result<()> {
        struct Registration<'a, S: FileSystem>(&'a Log<S>);
        impl<S: FileSystem> Drop for Registration<'_, S> {
            fn drop(&mut self) {
                self.0.state.borrow_mut().flushers -= 1;
                // Appends waiting on this flusher must not wait forever.
                self.0.sealed_notify.notify_all();
            }
        }
        self.state.borrow_mut().flushers += 1;
        let _registration = Registration(self);
        // A failed sync stops the checkpoint loop too, but only between
        // checkpoints: one dropped part way would leave its index writes
        // sealed and never finished.
        let stop = Cell::new(false);
        let syncs = async {
            let result = loop {
                self.wait_for(|st| st.writer.log.pending_bytes() > 0, &stop).await;
                if self.is_closed() {
                    break Ok(());
                }
                if let Err(e) = self.sync().await {
                    break Err(e);
                }
            };
            stop.set(true);
            self.pending_notify.notify_all();
            self.ahead_notify.notify_all();
            result
        };
        let checkpoints = async {
            // After a failed checkpoint (a full disk, say) the next try
            // waits for the next sync, instead of failing again at once.
            // (Counted in syncs, not in bytes since the last checkpoint:
            // a roll's or a retention's checkpoint lowers those.)
            let mut failed_at_sync: Option<u64> = None;
            loop {
                self.wait_for(
                    |st| st.checkpoint_due() && failed_at_sync.is_none_or(|n| st.sync_count > n),
                    &stop,
                )
                .await;
                if self.is_closed() || stop.get() {
                    return;
                }
                let failed = self.checkpoint_if_due().await;
                failed_at_sync = failed.then(|| self.state.borrow().sync_count);
            }
        };
        let ahead = self.write_ahead_until(&stop);
        futures_lite::future::zip(futures_lite::future::zip(syncs, checkpoints), ahead)
            .await
            .0
            .0
    }

    /// The flusher's writes ahead: takes full buffers from the write buffer
    /// as appends fill them (none while appends are paused) and writes
    /// them, up to the device depth, until the log closes or `stop` is set;
    /// then finishes those in flight.
    async fn write_ahead_until(&self, stop: &Cell<bool>) {
        let mut in_flight: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
        loop {
            let ending = {
                let st = self.state.borrow();
                st.closed || stop.get()
            };
            while !ending && in_flight.len() < WRITES_IN_FLIGHT_MAX {
                let taken = {
                    let mut st = self.state.borrow_mut();
                    // Paused, the writer is about to be cut or replaced:
                    // nothing more goes ahead of it (see `truncate_to`).
                    if st.write_error.is_some() || st.appends_paused {
                        None
                    } else {
                        let taken = st.writer.log.take_ahead();
                        st.writes_ahead += u64::from(taken.is_some());
                        taken.map(|entry| (st.active().file.clone(), entry))
                    }
                };
                let Some((file, entry)) = taken else {
                    break;
                };
                // The write buffer has room again.
                self.sealed_notify.notify_all();
                in_flight.push(Box::pin(write_ahead(file, entry, self.write_share.clone())));
            }
            if ending && in_flight.is_empty() {
                return;
            }
            // Until a write ends, a buffer fills, or the flusher stops.
            let filled = self.ahead_notify.listen();
            let woken = self.pending_notify.listen();
            let mut filled = std::pin::pin!(filled);
            let mut woken = std::pin::pin!(woken);
            std::future::poll_fn(|cx| {
                let before = in_flight.len();
                in_flight.retain_mut(|w| w.as_mut().poll(cx).is_pending());
                if in_flight.len() < before
                    || (!ending && (filled.as_mut().poll(cx).is_ready() || woken.as_mut().poll(cx).is_ready()))
                {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// Appends one record batch (magic v2, as a producer sent it), assigning
    /// its offsets. Returns as soon as the batch is in the write buffer; use
    /// [`wait_durable`](Self::wait_durable) for durability.
    pub async fn append(&self, batch: Bytes, now_ms: i64) -> Result<AppendInfo> {
        let header = BatchHeader::parse(&batch)?;
        let frame_bytes = (FRAME_HEADER_BYTES + batch.len()) as u64;
        loop {
            let wait_for_flusher = {
                let mut st = self.state.borrow_mut();
                if st.closed {
                    return Err(StorageError::Closed);
                }
                if frame_bytes > st.config.segment_bytes {
                    return Err(StorageError::BatchTooLarge {
                        batch_bytes: batch.len(),
                        segment_bytes: st.config.segment_bytes,
                    });
                }
                let unsealed = st.writer.log.unsealed_bytes();
                let full = unsealed > 0 && unsealed + frame_bytes > st.config.write_buffer_bytes_max;
                if !st.appends_paused && st.write_error.is_none() && !full && !st.needs_roll(frame_bytes, now_ms) {
                    return Ok(self.append_now(&mut st, batch, header));
                }
                // A full buffer with a flusher running: wait for its next
                // seal rather than syncing here, so that appending and
                // writing overlap.
                (full && st.flushers > 0 && st.write_error.is_none()).then(|| self.sealed_notify.listen())
            };
            if let Some(sealed) = wait_for_flusher {
                sealed.await;
                continue;
            }
            // Slow path: one of roll, retry or backpressure, under the lock.
            let _guard = self.io_lock.lock().await;
            let (failed, roll, full) = {
                let st = self.state.borrow();
                if st.closed {
                    return Err(StorageError::Closed);
                }
                let unsealed = st.writer.log.unsealed_bytes();
                (
                    st.write_error.is_some(),
                    st.needs_roll(frame_bytes, now_ms),
                    unsealed > 0 && unsealed + frame_bytes > st.config.write_buffer_bytes_max,
                )
            };
            if failed || full {
                self.sync_locked().await?;
            }
            if roll {
                self.roll_locked(now_ms).await?;
            }
            let mut st = self.state.borrow_mut();
            if st.write_error.is_none() && !st.needs_roll(frame_bytes, now_ms) {
                return Ok(self.append_now(&mut st, batch, header));
            }
        }
    }

    fn append_now(&self, st: &mut State<S::File>, batch: Bytes, mut header: BatchHeader) -> AppendInfo {
        let base = st.end_offset;
        header.base_offset = base;
        let leader_epoch = st.leader_epoch;
        // The producer's bytes stay as they are (the cache serves them with
        // the assigned head); the assigned head goes to the disk.
        let served = ServedBatch::new(base, leader_epoch, batch);
        let head = served.head();
        let rest = &served.raw()[ASSIGNED_HEAD_BYTES..];
        let (mut frame, frame_bytes, mut crc) = FrameHeader::begin(&header);

        let State { segments, writer, .. } = st;
        let active = segments.values_mut().next_back().expect("active segment");
        let position = active.end;
        let was_idle = writer.log.pending_bytes() == 0;
        let had_ahead = writer.log.has_ahead();
        {
            // The payload is checksummed as it is copied; the CRC goes into
            // the header appended just before it.
            let file = active.file.clone();
            writer.log.append(&file, &frame_bytes);
            writer.log.append_hashed(&file, &head, &mut crc);
            writer.log.append_hashed(&file, rest, &mut crc);
            frame.crc = crc.finalize();
            writer
                .log
                .patch(position + CRC_FIELD.start as u64, &frame.crc.to_le_bytes());
        }
        let NewEntries { offset, time } = active.index.add_frame(position, base, header.max_timestamp);
        if let Some(e) = offset {
            writer.offset_index.append(&writer.offset_index_file, &e.encode());
        }
        if let Some(e) = time {
            writer.time_index.append(&writer.time_index_file, &e.encode());
        }
        active.end = writer.log.end();
        active.next_offset = frame.next_offset();
        st.end_offset = frame.next_offset();
        self.cache.insert(self.cache_id, base, leader_epoch, served.into_raw());
        if was_idle {
            self.pending_notify.notify_all();
        }
        if !had_ahead && st.writer.log.has_ahead() {
            self.ahead_notify.notify_all();
        }
        AppendInfo {
            base_offset: base,
            last_offset: frame.last_offset(),
            max_timestamp: header.max_timestamp,
            log_start_offset: st.start_offset,
        }
    }

    /// Makes everything appended so far durable; returns the durable offset.
    pub async fn sync(&self) -> Result<Offset> {
        loop {
            let target = self.end_offset();
            match self.wait_durable(target).await {
                // A truncation cut the end while this waited: sync up to
                // the new one.
                Err(StorageError::OffsetOutOfRange { .. }) => continue,
                r => r?,
            }
            return Ok(self.durable_offset());
        }
    }

    /// Waits until every offset below `offset` is durable, syncing if no one
    /// else is. Concurrent callers share syncs (group commit). Fails with
    /// `OffsetOutOfRange` when a truncation removes what it waits for.
    pub async fn wait_durable(&self, offset: Offset) -> Result<()> {
        loop {
            {
                let st = self.state.borrow();
                if st.durable_offset >= offset {
                    return Ok(());
                }
                if st.closed {
                    return Err(StorageError::Closed);
                }
                if offset > st.end_offset {
                    return Err(StorageError::OffsetOutOfRange {
                        requested: offset,
                        start: st.start_offset,
                        end: st.end_offset,
                    });
                }
            }
            {
                let _guard = self.io_lock.lock().await;
                if self.state.borrow().durable_offset >= offset {
                    return Ok(());
                }
                self.sync_locked().await?;
            }
            if self.state.borrow().flushers == 0 {
                self.checkpoint_if_due().await;
            }
        }
    }

    /// Both locks, in their order.
    async fn lock_all(&self) -> (LocalMutexGuard, LocalMutexGuard) {
        let io = self.io_lock.lock().await;
        (io, self.checkpoint_lock.lock().await)
    }

    /// Writes a checkpoint if enough was synced since the last one, and
    /// returns whether one was due and failed. Runs beside syncs (it holds
    /// `checkpoint_lock` only): a checkpoint writes two index files and the
    /// checkpoint file, and syncs each and the directory, 10-50 ms under
    /// load, which acks=all appends should not wait for.
    async fn checkpoint_if_due(&self) -> bool {
        if !self.state.borrow().checkpoint_due() {
            return false;
        }
        let _guard = self.checkpoint_lock.lock().await;
        let due = {
            let st = self.state.borrow();
            st.checkpoint_due() && !st.closed
        };
        // The data is durable either way; a failed checkpoint only means
        // a longer recovery scan, and a later one is tried.
        if due && let Err(e) = self.checkpoint_locked().await {
            warn!(dir = %self.dir.display(), error = %e, "checkpoint failed");
            self.state.borrow_mut().checkpoint_failures += 1;
            return true;
        }
        false
    }

    /// Writes and fdatasyncs the write buffer. Caller holds `io_lock`.
    async fn sync_locked(&self) -> Result<()> {
        // A sync whose caller went away (a request timed out, a client left)
        // is finished first: its writes may be in flight, and skipping its
        // bytes would leave a hole that later syncs call durable.
        if let Some(result) = self.finish_sync_in_flight().await {
            result?;
        }
        let (job, file, path, end_offset, max_timestamp) = {
            let mut st = self.state.borrow_mut();
            if st.closed {
                return Err(StorageError::Closed);
            }
            let active = st.active();
            let (file, path, max_ts) = (active.file.clone(), active.path.clone(), active.max_timestamp());
            let end_offset = st.end_offset;
            let job = st.writer.log.seal(&file);
            (job, file, path, end_offset, max_ts)
        };
        self.sealed_notify.notify_all();
        if job.is_empty() {
            let mut st = self.state.borrow_mut();
            st.durable_offset = st.durable_offset.max(end_offset);
            st.durable_max_timestamp = max_timestamp;
            st.writer.log.finish(job, &Ok(()));
            return Ok(());
        }
        let synced_bytes = job.end - self.state.borrow().writer.log.durable_end();
        let share = self.write_share.clone();
        let io: SyncIo<S::File> = Box::pin(async move {
            let result = run_job(file.as_ref(), &job, Some(&share)).await;
            (job, result)
        });
        *self.sync_in_flight.borrow_mut() = Some(SyncInFlight {
            io,
            path,
            end_offset,
            max_timestamp,
            synced_bytes,
        });
        self.finish_sync_in_flight()
            .await
            .expect("the sync just stored is in flight")
    }

    /// Drives the sync in flight, if any, to its end and records its
    /// outcome, in the same poll that sees it end, so that no cancellation
    /// falls between the two: a caller dropped part way leaves the sync in
    /// `sync_in_flight` for the next holder of `io_lock`. Caller holds
    /// `io_lock`.
    async fn finish_sync_in_flight(&self) -> Option<Result<()>> {
        std::future::poll_fn(|cx| {
            let mut slot = self.sync_in_flight.borrow_mut();
            let Some(in_flight) = slot.as_mut() else {
                return Poll::Ready(None);
            };
            let Poll::Ready((job, result)) = in_flight.io.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            let done = slot.take().expect("polled just above");
            drop(slot);
            Poll::Ready(Some(self.record_sync(done, job, result)))
        })
        .await
    }

    /// What a finished sync changes. No await: see `finish_sync_in_flight`.
    fn record_sync(
        &self,
        done: SyncInFlight<S::File>,
        job: SyncJob<<S::File as StorageFile>::Buffer>,
        result: std::io::Result<()>,
    ) -> Result<()> {
        // Waiters for room retry now, whatever the outcome.
        self.sealed_notify.notify_all();
        let mut st = self.state.borrow_mut();
        st.writer.log.finish(job, &result);
        match &result {
            Ok(()) => {
                st.sync_count += 1;
                if done.end_offset > st.durable_offset {
                    self.durable_notify.notify_all();
                }
                st.durable_offset = st.durable_offset.max(done.end_offset);
                st.durable_max_timestamp = done.max_timestamp;
                if let Some(e) = st.write_error.take() {
                    info!(dir = %self.dir.display(), error = %e, "writes recovered");
                }
                st.bytes_since_checkpoint += done.synced_bytes;
                if st.checkpoint_due() && st.flushers > 0 {
                    // The flusher writes it, beside the next syncs.
                    self.pending_notify.notify_all();
                }
                Ok(())
            }
            Err(e) => {
                let err = StorageError::io("sync", &done.path, clone_io_error(e));
                warn!(dir = %self.dir.display(), error = %err, "sync failed; appends wait for a retry");
                st.write_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Seals the active segment and starts a new one at the end offset.
    /// Caller holds `io_lock`.
    async fn roll_locked(&self, now_ms: i64) -> Result<()> {
        let _paused = self.pause_appends();
        self.roll_inner(now_ms).await
    }

    /// Sends appends to the slow path (where they wait for `io_lock`) until
    /// the returned guard drops, however the holder ends: a roll or
    /// truncation dropped part way must not leave every later append on
    /// the slow path.
    fn pause_appends(&self) -> impl Drop + '_ {
        struct Paused<'a, S: FileSystem>(&'a Log<S>);
        impl<S: FileSystem> Drop for Paused<'_, S> {
            fn drop(&mut self) {
                self.0.state.borrow_mut().appends_paused = false;
                // Buffers filled before the pause may go ahead again.
                self.0.ahead_notify.notify_all();
            }
        }
        self.state.borrow_mut().appends_paused = true;
        Paused(self)
    }

    async fn roll_inner(&self, now_ms: i64) -> Result<()> {
        self.sync_locked().await?;
        let _checkpoint_guard = self.checkpoint_lock.lock().await;
        self.sync_indexes_locked().await?;
        let (config, new_base, old_file, old_end) = {
            let st = self.state.borrow();
            let active = st.active();
            (st.config, st.end_offset, active.file.clone(), active.end)
        };
        // A kept file holds frames below its bound only, so a segment based
        // at or past the bound never takes one of them for its own (see
        // `scan_frames`).
        let free = {
            let mut st = self.state.borrow_mut();
            st.free_file.take_if(|bound| *bound <= new_base)
        };
        let new_segment = match create_segment(&self.fs, &self.dir, new_base, free, &config, now_ms).await {
            Ok(segment) => segment,
            Err(e) => {
                // Not renamed yet, the kept file stays kept.
                if let Some(bound) = free
                    && self.fs.exists(&segment_file(&self.dir, bound, FREE_SUFFIX)).await
                {
                    self.state.borrow_mut().free_file = Some(bound);
                }
                return Err(e);
            }
        };
        let new_writer = new_writer(&self.fs, &self.dir, &new_segment, &config, 0, 0).await?;
        // Give back the preallocated space past the sealed data.
        if let Err(e) = old_file.truncate(align_up(old_end)).await {
            warn!(dir = %self.dir.display(), error = %e, "could not trim a sealed segment");
        }
        let old_writer = {
            let mut st = self.state.borrow_mut();
            let old = std::mem::replace(&mut st.writer, new_writer);
            st.segments.insert(new_base, new_segment);
            st.durable_max_timestamp = i64::MIN;
            old
        };
        close_writer(old_writer).await;
        self.checkpoint_locked().await
    }

    /// Makes the active segment's index entries durable. Caller holds
    /// `checkpoint_lock`.
    async fn sync_indexes_locked(&self) -> Result<()> {
        let (offset_job, offset_file, time_job, time_file, counts) = {
            let mut st = self.state.borrow_mut();
            let counts = {
                let a = st.active();
                (
                    a.index.offset_entries().len() as u32,
                    a.index.time_entries().len() as u32,
                )
            };
            let w = &mut st.writer;
            let offset_file = w.offset_index_file.clone();
            let time_file = w.time_index_file.clone();
            let offset_job = w.offset_index.seal(&offset_file);
            let time_job = w.time_index.seal(&time_file);
            (offset_job, offset_file, time_job, time_file, counts)
        };
        let r1 = run_job(offset_file.as_ref(), &offset_job, None).await;
        let r2 = run_job(time_file.as_ref(), &time_job, None).await;
        let mut st = self.state.borrow_mut();
        st.writer.offset_index.finish(offset_job, &r1);
        st.writer.time_index.finish(time_job, &r2);
        let path = st.active().path.clone();
        r1.map_err(io_err("sync index", &path))?;
        r2.map_err(io_err("sync time index", &path))?;
        let active = st.active_mut();
        active.persisted_offset_entries = counts.0;
        active.persisted_time_entries = counts.1;
        Ok(())
    }

    /// Writes the checkpoint: every segment up to what is durable now.
    /// Caller holds `checkpoint_lock` (and `io_lock` unless it is a background checkpoint).
    async fn checkpoint_locked(&self) -> Result<()> {
        self.write_checkpoint_locked(None).await
    }

    /// Writes the checkpoint, or with `cut`, one that names the log as a
    /// truncation will leave it: no segment after the kept one, and the
    /// kept one only up to the cut, which holds before the cut is made as
    /// well as after. Caller holds what `checkpoint_locked` needs.
    async fn write_checkpoint_locked(&self, cut: Option<&CheckpointCut>) -> Result<()> {
        // A closed log's state may no longer match its files (a truncation
        // stopped part way): it must not be written down.
        self.fail_if_closed()?;
        self.sync_indexes_locked().await?;
        let (checkpoint, covered_bytes) = {
            let st = self.state.borrow();
            let last = st.active().base;
            let segments = st
                .segments
                .values()
                .filter(|s| cut.is_none_or(|c| s.base <= c.keep))
                .map(|s| match cut.filter(|c| c.keep == s.base) {
                    Some(c) => segment_checkpoint(s, c.position, c.next_offset, c.max_timestamp),
                    // Only durable frames.
                    None if s.base == last => segment_checkpoint(
                        s,
                        st.writer.log.durable_end(),
                        st.durable_offset,
                        st.durable_max_timestamp,
                    ),
                    None => segment_checkpoint(s, s.end, s.next_offset, s.max_timestamp()),
                })
                .collect();
            (
                Checkpoint {
                    log_start_offset: cut.map_or(st.start_offset, |c| st.start_offset.min(c.next_offset)).0,
                    segments,
                },
                st.bytes_since_checkpoint,
            )
        };
        let path = self.dir.join(CHECKPOINT_FILE);
        write_file_atomic(&self.fs, &path, &checkpoint.encode())
            .await
            .map_err(io_err("write checkpoint", &path))?;
        // Syncs that ran while it was written count towards the next one.
        let mut st = self.state.borrow_mut();
        st.bytes_since_checkpoint = st.bytes_since_checkpoint.saturating_sub(covered_bytes);
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `from`.
    /// `from` equal to the end offset gives nothing; outside
    /// `[start_offset, end_offset]` is `OffsetOutOfRange`.
    pub async fn read(&self, from: Offset, limits: ReadLimits) -> Result<Vec<ServedBatch>> {
        let upper = {
            let st = self.state.borrow();
            if st.closed {
                return Err(StorageError::Closed);
            }
            if from < st.start_offset || from > st.end_offset {
                return Err(StorageError::OffsetOutOfRange {
                    requested: from,
                    start: st.start_offset,
                    end: st.end_offset,
                });
            }
            limits.upper.min(st.durable_offset)
        };
        let mut out: Vec<ServedBatch> = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        // With `min_one`, the first batch comes even with no budget at all.
        while next < upper && (bytes < limits.bytes_max || (limits.min_one && out.is_empty())) {
            let min_one = limits.min_one && out.is_empty();
            let left = limits.bytes_max.saturating_sub(bytes);
            let hits = self.cache.read(self.cache_id, next, upper, left, min_one);
            let hit = !hits.batches.is_empty();
            if let Some(last) = hits.batches.last() {
                next = last.next_offset();
                bytes += hits.batches.iter().map(|b| b.len()).sum::<usize>();
                out.extend(hits.batches);
            }
            if hits.budget_reached {
                break; // the next batch is cached and does not fit
            }
            if hit {
                continue;
            }
            let read = self.read_from_disk(next, upper, left, min_one).await?;
            bytes += read.batches.iter().map(|b| b.len()).sum::<usize>();
            out.extend(read.batches);
            if read.stopped || read.next == next {
                break; // the next batch does not fit, or is past `upper`
            }
            next = read.next;
        }
        Ok(out)
    }

    /// One segment's worth of a read.
    async fn read_from_disk(&self, from: Offset, upper: Offset, bytes_max: usize, min_one: bool) -> Result<DiskRead> {
        let (file, path, pos, readable_end, segment_next, index_interval) = {
            let st = self.state.borrow();
            let Some((_, seg)) = st.segments.range(..=from).next_back() else {
                return Ok(DiskRead {
                    batches: Vec::new(),
                    next: from,
                    stopped: false,
                });
            };
            let readable_end = if seg.base == st.active().base {
                st.writer.log.durable_end()
            } else {
                seg.end
            };
            (
                seg.file.clone(),
                seg.path.clone(),
                seg.index.position_for_offset(from),
                readable_end,
                seg.next_offset,
                st.config.index_interval_bytes,
            )
        };
        // What returning `bytes_max` takes: the frames before `from` since
        // the index entry, the payloads, their headers (a 64th covers frames
        // of 3 KiB and more; for smaller ones a refill reads the rest), and
        // the header of the frame that no longer fits.
        let read_budget = (bytes_max as u64)
            .saturating_add(bytes_max as u64 / 64)
            .saturating_add(index_interval + (ALIGN + FRAME_HEADER_BYTES) as u64);
        let chunk_bytes = usize::try_from(read_budget)
            .unwrap_or(usize::MAX)
            .clamp(READ_CHUNK_BYTES_MIN, READ_CHUNK_BYTES_MAX);
        let mut cursor = FrameCursor::new(file.as_ref(), pos, readable_end, chunk_bytes).with_read_budget(read_budget);
        let mut out = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        while !cursor.at_limit() {
            let at = cursor.position();
            let header = cursor
                .header()
                .await
                .map_err(io_err("read", &path))?
                .map_err(|reason| corrupt(&path, at, reason))?;
            if header.last_offset() >= next {
                let payload_bytes = header.payload_bytes as usize;
                if header.base_offset() >= upper || (bytes + payload_bytes > bytes_max && !(min_one && out.is_empty()))
                {
                    return Ok(DiskRead {
                        batches: out,
                        next,
                        stopped: true,
                    });
                }
                let payload = cursor
                    .payload(&header)
                    .await
                    .map_err(io_err("read", &path))?
                    .map_err(|reason| corrupt(&path, at, reason))?;
                out.push(served_from_disk(header.base_offset(), payload));
                bytes += payload_bytes;
                next = header.next_offset();
            }
            cursor.advance(&header);
        }
        // Read to the end of what is readable: a sealed segment is done, and
        // the reader moves on to the next one.
        Ok(DiskRead {
            batches: out,
            next: next.max(segment_next.min(upper)),
            stopped: false,
        })
    }

    /// The first durable batch at or after the log start whose max timestamp
    /// is at least `timestamp`, or `None` if there is none.
    pub async fn find_by_timestamp(&self, timestamp: i64) -> Result<Option<TimestampHit>> {
        let candidates: Vec<(Rc<S::File>, PathBuf, u64, u64)> = {
            let st = self.state.borrow();
            let active_base = st.active().base;
            st.segments
                .values()
                .filter(|s| s.next_offset > st.start_offset && s.max_timestamp() >= timestamp)
                .map(|s| {
                    let end = if s.base == active_base {
                        st.writer.log.durable_end()
                    } else {
                        s.end
                    };
                    (
                        s.file.clone(),
                        s.path.clone(),
                        s.index.position_for_timestamp(timestamp),
                        end,
                    )
                })
                .collect()
        };
        let (start, durable) = (self.start_offset(), self.durable_offset());
        for (file, path, pos, end) in candidates {
            let mut cursor = FrameCursor::new(file.as_ref(), pos, end, READ_CHUNK_BYTES_MIN);
            while !cursor.at_limit() {
                let at = cursor.position();
                let header = cursor
                    .header()
                    .await
                    .map_err(io_err("read", &path))?
                    .map_err(|reason| corrupt(&path, at, reason))?;
                if header.base_offset() >= durable {
                    break;
                }
                if header.max_timestamp >= timestamp && header.last_offset() >= start {
                    let batch = cursor
                        .payload(&header)
                        .await
                        .map_err(io_err("read", &path))?
                        .map_err(|reason| corrupt(&path, at, reason))?;
                    return Ok(Some(TimestampHit {
                        base_offset: header.base_offset(),
                        last_offset: header.last_offset(),
                        max_timestamp: header.max_timestamp,
                        batch: served_from_disk(header.base_offset(), batch),
                    }));
                }
                cursor.advance(&header);
            }
        }
        Ok(None)
    }

    /// Deletes old segments past `retention.ms` (by their newest record's
    /// timestamp) or beyond `retention.bytes`, oldest first, and whole
    /// segments below the log start. The active segment is rolled first when
    /// it alone has expired. Returns the number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let (deleted, unlink) = self.enforce_retention_locked(now_ms).await?;
        self.unlink(unlink).await;
        Ok(deleted)
    }

    /// `enforce_retention` up to the files' unlinking: returns how many
    /// segments went and the files to unlink.
    async fn enforce_retention_locked(&self, now_ms: i64) -> Result<(usize, Vec<PathBuf>)> {
        // Not both locks yet: a roll takes the checkpoint lock itself.
        let _guard = self.io_lock.lock().await;
        self.fail_if_closed()?;
        let active_expired = {
            let st = self.state.borrow();
            let active = st.active();
            st.config.retention_ms >= 0
                && !active.is_empty()
                && active.max_timestamp() < now_ms.saturating_sub(st.config.retention_ms)
        };
        if active_expired {
            self.roll_locked(now_ms).await?;
        }
        let _checkpoint_guard = self.checkpoint_lock.lock().await;
        let doomed: Vec<Offset> = {
            let st = self.state.borrow();
            let cfg = st.config;
            let mut total: i64 = st.segments.values().map(|s| s.end as i64).sum();
            let active_base = st.active().base;
            let mut doomed = Vec::new();
            for s in st.segments.values().filter(|s| s.base != active_base) {
                let by_time = cfg.retention_ms >= 0 && s.max_timestamp() < now_ms.saturating_sub(cfg.retention_ms);
                let by_size = cfg.retention_bytes >= 0 && total - s.end as i64 >= cfg.retention_bytes;
                let below_start = s.next_offset <= st.start_offset;
                if !(by_time || by_size || below_start) {
                    break;
                }
                total -= s.end as i64;
                doomed.push(s.base);
            }
            doomed
        };
        if doomed.is_empty() {
            return Ok((0, Vec::new()));
        }
        let unlink = self.drop_segments_locked(&doomed).await?;
        Ok((doomed.len(), unlink))
    }

    fn fail_if_closed(&self) -> Result<()> {
        if self.is_closed() {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Closes the log: every later call fails with `Closed`, and every task
    /// waiting on it (appenders, durable waits, the flusher) wakes to see it.
    fn mark_closed(&self) {
        self.state.borrow_mut().closed = true;
        for notify in [
            &self.pending_notify,
            &self.durable_notify,
            &self.sealed_notify,
            &self.ahead_notify,
        ] {
            notify.notify_all();
        }
    }

    /// Renames away the files of the dropped segment at `base`, returning
    /// them for `unlink`. Caller holds both locks, and syncs the directory.
    async fn retire_segment_files(&self, base: Offset) -> Result<Vec<PathBuf>> {
        let mut retired = Vec::new();
        for suffix in SEGMENT_SUFFIXES {
            retired.extend(self.retire(segment_file(&self.dir, base, suffix)).await?);
        }
        Ok(retired)
    }

    /// Unlinks files that `drop_segments_locked` renamed away, holding no
    /// lock: on a file system that discards freed blocks, unlinking a
    /// written segment takes long (170 ms for 1 GiB on this project's test
    /// machine), and the log's syncs must not wait for it. A crash before
    /// it leaves names that the next open removes.
    async fn unlink(&self, paths: Vec<PathBuf>) {
        for p in paths {
            match self.fs.remove(&p).await {
                // The log's directory went meanwhile (DeleteTopics).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %p.display(), error = %e, "could not unlink a deleted segment's file"),
                Ok(()) => {}
            }
        }
    }

    /// Renames `path`, if it exists, to its deleted name, and returns that
    /// name (to be unlinked once the locks are released). If the rename
    /// fails (a full directory, say), unlinks it at once instead: a dropped
    /// segment's file left under its name could be taken for a live one.
    async fn retire(&self, path: PathBuf) -> Result<Option<PathBuf>> {
        if !self.fs.exists(&path).await {
            return Ok(None);
        }
        let mut to = path.clone().into_os_string();
        to.push(DELETED_SUFFIX);
        let to = PathBuf::from(to);
        match self.fs.rename(&path, &to).await {
            Ok(()) => Ok(Some(to)),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not rename a deleted file away: unlinking it now");
                self.fs.remove(&path).await.map_err(io_err("remove", &path))?;
                Ok(None)
            }
        }
    }

    /// Removes leading segments: first the checkpoint stops naming them,
    /// then their files are renamed away (the newest one's log file kept
    /// for reuse), and the names made durable. Returns the renamed files,
    /// for the caller to unlink once it has released both locks, which it
    /// holds.
    async fn drop_segments_locked(&self, doomed: &[Offset]) -> Result<Vec<PathBuf>> {
        let removed: Vec<Segment<S::File>> = {
            let mut st = self.state.borrow_mut();
            let removed: Vec<_> = doomed.iter().filter_map(|b| st.segments.remove(b)).collect();
            let first = *st.segments.keys().next().expect("the active segment is never dropped");
            st.start_offset = st.start_offset.max(first);
            removed
        };
        let new_start = self.start_offset();
        self.cache.remove_below(self.cache_id, new_start);
        if let Err(e) = self.checkpoint_locked().await {
            // The files stay until a checkpoint stops naming them; kept in
            // the log, below its start, they go with the next retention.
            let mut st = self.state.borrow_mut();
            st.segments.extend(removed.into_iter().map(|s| (s.base, s)));
            return Err(e);
        }
        let recycle = self.config().recycle_segments;
        let newest = removed.last().map(|s| s.base);
        let mut unlink = Vec::new();
        for seg in removed {
            info!(dir = %self.dir.display(), base = seg.base.0, "deleting segment");
            let (base, bound) = (seg.base, seg.next_offset);
            // A read in flight still holds the file: a new segment written
            // into it could hand that read the new bytes for the old.
            let unread = Rc::strong_count(&seg.file) == 1;
            drop(seg);
            if recycle && unread && Some(base) == newest {
                // If it cannot be kept, the file is deleted like the others.
                match self.keep_free_file(base, bound).await {
                    Ok(replaced) => unlink.extend(replaced),
                    Err(e) => warn!(dir = %self.dir.display(), error = %e, "could not keep a deleted segment's file"),
                }
            }
            unlink.extend(self.retire_segment_files(base).await?);
        }
        let unwanted = if recycle {
            None
        } else {
            self.state.borrow_mut().free_file.take()
        };
        if let Some(bound) = unwanted {
            unlink.extend(self.retire(segment_file(&self.dir, bound, FREE_SUFFIX)).await?);
        }
        self.fs
            .sync_dir(&self.dir)
            .await
            .map_err(io_err("sync dir", &self.dir))?;
        Ok(unlink)
    }

    /// Keeps the log file of the deleted segment at `base`, whose frames
    /// all lie below `bound`, for a later segment to be written into, in
    /// place of the file kept before, which it renames away and returns.
    /// Caller holds both locks, and syncs the directory.
    async fn keep_free_file(&self, base: Offset, bound: Offset) -> Result<Option<PathBuf>> {
        let from = segment_file(&self.dir, base, LOG_SUFFIX);
        let to = segment_file(&self.dir, bound, FREE_SUFFIX);
        self.fs.rename(&from, &to).await.map_err(io_err("rename", &from))?;
        let before = self.state.borrow_mut().free_file.replace(bound);
        let Some(old) = before.filter(|old| *old != bound) else {
            return Ok(None);
        };
        // Left behind, the older file goes at the next open.
        match self.retire(segment_file(&self.dir, old, FREE_SUFFIX)).await {
            Ok(retired) => Ok(retired),
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "could not delete a kept file");
                Ok(None)
            }
        }
    }

    /// Moves the log start forward (DeleteRecords): offsets below it are no
    /// longer readable, and whole segments below it are deleted. Durable on
    /// return. `offset` may not pass the end offset.
    pub async fn advance_start(&self, offset: Offset) -> Result<Offset> {
        let (start, unlink) = self.advance_start_locked(offset).await?;
        self.unlink(unlink).await;
        Ok(start)
    }

    /// `advance_start` up to the files' unlinking: returns the new start
    /// and the files to unlink.
    async fn advance_start_locked(&self, offset: Offset) -> Result<(Offset, Vec<PathBuf>)> {
        let _guards = self.lock_all().await;
        self.fail_if_closed()?;
        {
            let st = self.state.borrow();
            if offset > st.end_offset || offset < Offset::ZERO {
                return Err(StorageError::OffsetOutOfRange {
                    requested: offset,
                    start: st.start_offset,
                    end: st.end_offset,
                });
            }
            if offset <= st.start_offset {
                return Ok((st.start_offset, Vec::new()));
            }
        }
        // The checkpoint may only name a start that recovery will find
        // durable data up to.
        if self.durable_offset() < offset {
            self.sync_locked().await?;
        }
        let doomed: Vec<Offset> = {
            let mut st = self.state.borrow_mut();
            st.start_offset = offset;
            let active_base = st.active().base;
            st.segments
                .values()
                .filter(|s| s.base != active_base && s.next_offset <= offset)
                .map(|s| s.base)
                .collect()
        };
        let unlink = if doomed.is_empty() {
            self.cache.remove_below(self.cache_id, offset);
            self.checkpoint_locked().await?;
            Vec::new()
        } else {
            self.drop_segments_locked(&doomed).await?
        };
        Ok((self.start_offset(), unlink))
    }

    /// Drops every batch holding an offset at or past `offset`; the log then
    /// ends with the last batch wholly below it. Durable on return. Failing
    /// or dropped part way, it may close the log (see `CutInProgress`); a
    /// crash part way leaves it whole or cut.
    pub async fn truncate_to(&self, offset: Offset) -> Result<()> {
        let _guards = self.lock_all().await;
        if offset >= self.end_offset() {
            return Ok(());
        }
        self.sync_locked().await?;
        let _paused = self.pause_appends();
        // Writes ahead taken since that sync must land before the cut:
        // one landing after would put old bytes past it. Paused, the
        // flusher takes no more. (The flusher that took them finishes them
        // before it returns.)
        self.write_share
            .until_ahead(|| self.state.borrow().writer.log.ahead_settled())
            .await;
        let (result, unlink) = self.truncate_inner(offset).await?;
        drop(_paused);
        drop(_guards);
        self.unlink(unlink).await;
        result
    }

    /// The cut, with both locks held and appends paused. Returns the
    /// checkpoint's outcome and the files to unlink (whatever that outcome).
    async fn truncate_inner(&self, offset: Offset) -> Result<(Result<()>, Vec<PathBuf>)> {
        // The segment that keeps the cut: the last one starting below the
        // offset (or the first, which the log always keeps).
        let (keep, doomed, file, path, index, end, opened_ms) = {
            let st = self.state.borrow();
            let first = *st.segments.keys().next().expect("one segment");
            let keep = st.segments.range(..offset).next_back().map_or(first, |(b, _)| *b);
            let doomed: Vec<Offset> = st.segments.keys().filter(|b| **b > keep).copied().collect();
            let seg = &st.segments[&keep];
            (
                keep,
                doomed,
                seg.file.clone(),
                seg.path.clone(),
                seg.index.clone(),
                seg.end,
                seg.opened_ms,
            )
        };
        let (cut_pos, cut_offset, cut_max_ts) = find_cut(file.as_ref(), &path, end, keep, offset).await?;
        // Before the file changes, the checkpoint stops vouching for what
        // follows the cut: recovery trusts a checkpointed segment's bytes
        // up to its end without reading them, and a crash after the cut
        // would find zeroes there, or new frames.
        self.write_checkpoint_locked(Some(&CheckpointCut {
            keep,
            position: cut_pos,
            next_offset: cut_offset,
            max_timestamp: cut_max_ts,
        }))
        .await?;
        let mut index = index;
        index.truncate(cut_pos, cut_max_ts);
        let mut seg = Segment {
            base: keep,
            file,
            path,
            end: cut_pos,
            next_offset: cut_offset,
            index,
            persisted_offset_entries: 0,
            persisted_time_entries: 0,
            opened_ms,
        };
        let config = self.config();
        // From here until the state follows the files, an error or a drop
        // (the caller giving up) closes the log: reopened, it recovers
        // whole or cut.
        let mut cutting = CutInProgress { log: self, done: false };
        let writer = activate(&self.fs, &self.dir, &mut seg, &config).await?;
        let removed: Vec<Segment<S::File>> = {
            let mut st = self.state.borrow_mut();
            let removed = doomed.iter().filter_map(|b| st.segments.remove(b)).collect();
            st.segments.insert(keep, seg);
            st.writer = writer;
            st.end_offset = cut_offset;
            st.durable_offset = cut_offset;
            st.start_offset = st.start_offset.min(cut_offset);
            st.durable_max_timestamp = cut_max_ts;
            st.write_error = None;
            st.check_invariants();
            removed
        };
        cutting.done = true;
        self.durable_notify.notify_all();
        self.cache.remove_from(self.cache_id, cut_offset);
        // The dropped segments' names go before the checkpoint that stops
        // naming them is written: a later segment whose base is the cut
        // offset would otherwise continue the kept one at the next open,
        // and bring back what was truncated.
        let mut unlink = Vec::new();
        for seg in removed {
            let base = seg.base;
            drop(seg);
            unlink.extend(self.retire_segment_files(base).await?);
        }
        self.fs
            .sync_dir(&self.dir)
            .await
            .map_err(io_err("sync dir", &self.dir))?;
        Ok((self.checkpoint_locked().await, unlink))
    }

    /// Syncs and checkpoints; further calls fail with `Closed`. Files close
    /// when the log is dropped.
    pub async fn close(&self) -> Result<()> {
        let _guards = self.lock_all().await;
        if self.state.borrow().closed {
            return Ok(());
        }
        self.sync_locked().await?;
        self.checkpoint_locked().await?;
        // Give back the space reserved past the data, and cut a reused
        // file's old bytes there, which the next open would scan as a torn
        // frame.
        let (file, end) = {
            let st = self.state.borrow();
            (st.active().file.clone(), st.active().end)
        };
        if let Err(e) = file.truncate(align_up(end)).await {
            warn!(dir = %self.dir.display(), error = %e, "could not trim the active segment");
        }
        self.mark_closed();
        Ok(())
    }

    /// Closes the log and deletes its directory (DeleteTopics).
    pub async fn remove(&self) -> Result<()> {
        let _guards = self.lock_all().await;
        self.mark_closed();
        self.cache.remove_from(self.cache_id, Offset(i64::MIN));
        self.fs
            .remove_dir_all(&self.dir)
            .await
            .map_err(io_err("remove dir", &self.dir))
    }

    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let st = self.state.borrow();
        if !st.closed {
            st.check_invariants();
        }
    }
}

fn corrupt(path: &Path, position: u64, reason: FrameError) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    }
}

/// A batch read back from a frame: its stored head is the assigned one.
fn served_from_disk(base_offset: Offset, payload: Bytes) -> ServedBatch {
    let epoch = i32::from_be_bytes([payload[12], payload[13], payload[14], payload[15]]);
    ServedBatch::new(base_offset, epoch, payload)
}

/// Position, offset and largest earlier timestamp of the first frame in a
/// segment (based at `base`, data up to `end`) that holds an offset at or
/// past `offset`; the end of the segment if none does.
async fn find_cut<F: StorageFile>(
    file: &F,
    path: &Path,
    end: u64,
    base: Offset,
    offset: Offset,
) -> Result<(u64, Offset, i64)> {
    // The largest timestamp before the cut is not stored per frame, so walk
    // the headers from the start: truncation is rare and bounded by a segment.
    let mut cursor = FrameCursor::new(file, 0, end, crate::segment::SCAN_CHUNK_BYTES);
    let mut max_ts = i64::MIN;
    let mut next = base;
    while !cursor.at_limit() {
        let at = cursor.position();
        let header = cursor
            .header()
            .await
            .map_err(io_err("read", path))?
            .map_err(|reason| corrupt(path, at, reason))?;
        if header.last_offset() >= offset {
            return Ok((at, header.base_offset(), max_ts));
        }
        max_ts = max_ts.max(header.max_timestamp);
        next = header.next_offset();
        cursor.advance(&header);
    }
    Ok((end, next, max_ts))
}

async fn recover_segment<S: FileSystem>(
    fs: &S,
    dir: &Path,
    base: Offset,
    checkpointed: Option<&SegmentCheckpoint>,
    config: &LogConfig,
    now_ms: i64,
) -> Result<Segment<S::File>> {
    let path = segment_file(dir, base, LOG_SUFFIX);
    let file = fs.open(&path, false).await.map_err(io_err("open", &path))?;
    let size = file.size().await.map_err(io_err("stat", &path))?;
    let mut resumed = None;
    if let Some(cp) = checkpointed.filter(|cp| cp.end <= size) {
        let offset_bytes = read_index_prefix(
            fs,
            dir,
            base,
            OFFSET_INDEX_SUFFIX,
            cp.offset_index_entries as usize * OFFSET_ENTRY_BYTES,
        )
        .await?;
        let time_bytes = read_index_prefix(
            fs,
            dir,
            base,
            TIME_INDEX_SUFFIX,
            cp.time_index_entries as usize * TIME_ENTRY_BYTES,
        )
        .await?;
        if let (Some(o), Some(t)) = (offset_bytes, time_bytes)
            && let Some(index) = SegmentIndex::load(base, config.index_interval_bytes, &o, &t, cp.end, cp.max_timestamp)
        {
            resumed = Some((
                index,
                cp.end,
                Offset(cp.next_offset),
                cp.offset_index_entries,
                cp.time_index_entries,
            ));
        } else {
            warn!(path = %path.display(), "index missing or invalid: rebuilding it from the log");
        }
    }
    let (mut index, from, next, persisted_offsets, persisted_times) =
        resumed.unwrap_or_else(|| (SegmentIndex::new(base, config.index_interval_bytes), 0, base, 0, 0));
    let outcome = scan_frames(&file, from, next, size, &mut index)
        .await
        .map_err(io_err("scan", &path))?;
    if let Some(defect) = outcome.defect {
        warn!(
            path = %path.display(),
            position = outcome.end,
            %defect,
            "log cut at a torn or corrupt frame (or at the old bytes of a reused file)"
        );
    }
    Ok(Segment {
        base,
        file: Rc::new(file),
        path,
        end: outcome.end,
        next_offset: outcome.next_offset,
        persisted_offset_entries: persisted_offsets.min(index.offset_entries().len() as u32),
        persisted_time_entries: persisted_times.min(index.time_entries().len() as u32),
        index,
        opened_ms: now_ms,
    })
}

/// The first `bytes` of an index file; `None` if it is missing or shorter.
async fn read_index_prefix<S: FileSystem>(
    fs: &S,
    dir: &Path,
    base: Offset,
    suffix: &str,
    bytes: usize,
) -> Result<Option<Bytes>> {
    if bytes == 0 {
        return Ok(Some(Bytes::new()));
    }
    let path = segment_file(dir, base, suffix);
    if !fs.exists(&path).await {
        return Ok(None);
    }
    let file = fs.open(&path, false).await.map_err(io_err("open index", &path))?;
    let read = file.read_at(0, bytes).await;
    let _ = file.close().await;
    let prefix = read.map_err(io_err("read index", &path))?;
    Ok((prefix.len() == bytes).then_some(prefix))
}

/// What a checkpoint says of `seg` up to file position `end`: the index
/// entries the files hold that point below it.
fn segment_checkpoint<F: StorageFile>(
    seg: &Segment<F>,
    end: u64,
    next_offset: Offset,
    max_timestamp: i64,
) -> SegmentCheckpoint {
    let offsets = seg
        .index
        .offset_entries()
        .partition_point(|e| u64::from(e.position) < end) as u32;
    let times = seg
        .index
        .time_entries()
        .partition_point(|e| u64::from(e.position) < end) as u32;
    SegmentCheckpoint {
        base_offset: seg.base.0,
        end,
        next_offset: next_offset.0,
        max_timestamp,
        offset_index_entries: offsets.min(seg.persisted_offset_entries),
        time_index_entries: times.min(seg.persisted_time_entries),
    }
}

/// Creates the files of a new segment based at `base`, its log file the
/// kept file of bound `free` if given (whose old frames, all below the
/// bound, stay until overwritten), else an empty one.
async fn create_segment<S: FileSystem>(
    fs: &S,
    dir: &Path,
    base: Offset,
    free: Option<Offset>,
    config: &LogConfig,
    now_ms: i64,
) -> Result<Segment<S::File>> {
    let path = segment_file(dir, base, LOG_SUFFIX);
    if let Some(bound) = free {
        debug_assert!(bound <= base);
        let from = segment_file(dir, bound, FREE_SUFFIX);
        fs.rename(&from, &path).await.map_err(io_err("rename", &from))?;
    }
    let file = fs.open(&path, true).await.map_err(io_err("create", &path))?;
    if free.is_none() && file.size().await.map_err(io_err("stat", &path))? > 0 {
        // A file of that name may survive from before a truncation: start
        // empty, durably, or a crash could bring its old frames back.
        file.truncate(0).await.map_err(io_err("truncate", &path))?;
        file.sync_data().await.map_err(io_err("sync", &path))?;
    }
    for suffix in [OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let p = segment_file(dir, base, suffix);
        let f = fs.open(&p, true).await.map_err(io_err("create", &p))?;
        f.truncate(0).await.map_err(io_err("truncate", &p))?;
        f.close().await.map_err(io_err("close", &p))?;
    }
    fs.sync_dir(dir).await.map_err(io_err("sync dir", dir))?;
    Ok(Segment {
        base,
        file: Rc::new(file),
        path,
        end: 0,
        next_offset: base,
        index: SegmentIndex::new(base, config.index_interval_bytes),
        persisted_offset_entries: 0,
        persisted_time_entries: 0,
        opened_ms: now_ms,
    })
}

/// Opens the index files of a segment for appending after `offset_bytes` and
/// `time_bytes` already in them.
async fn new_writer<S: FileSystem>(
    fs: &S,
    dir: &Path,
    seg: &Segment<S::File>,
    config: &LogConfig,
    offset_bytes: u64,
    time_bytes: u64,
) -> Result<ActiveWriter<S::File>> {
    let index_config = crate::appender::AppenderConfig {
        chunk_bytes: INDEX_CHUNK_BYTES,
        pooled_chunks_max: 1,
        preallocate_bytes: INDEX_CHUNK_BYTES as u64,
    };
    let open_index = |suffix: &'static str| {
        let p = segment_file(dir, seg.base, suffix);
        async move {
            let f = fs.open(&p, true).await.map_err(io_err("open index", &p))?;
            let size = f.size().await.map_err(io_err("stat", &p))?;
            Ok::<_, StorageError>((f, size, p))
        }
    };
    let (offset_file, offset_size, offset_path) = open_index(OFFSET_INDEX_SUFFIX).await?;
    let (time_file, time_size, time_path) = open_index(TIME_INDEX_SUFFIX).await?;
    let offset_tail = read_tail_page(&offset_file, offset_bytes)
        .await
        .map_err(io_err("read index", &offset_path))?;
    let time_tail = read_tail_page(&time_file, time_bytes)
        .await
        .map_err(io_err("read index", &time_path))?;
    let tail = read_tail_page(seg.file.as_ref(), seg.end)
        .await
        .map_err(io_err("read", &seg.path))?;
    let file_size = seg.file.size().await.map_err(io_err("stat", &seg.path))?;
    Ok(ActiveWriter {
        log: Appender::new(seg.file.as_ref(), config.appender, seg.end, &tail, file_size),
        offset_index: Appender::new(&offset_file, index_config, offset_bytes, &offset_tail, offset_size),
        offset_index_file: Rc::new(offset_file),
        time_index: Appender::new(&time_file, index_config, time_bytes, &time_tail, time_size),
        time_index_file: Rc::new(time_file),
    })
}

/// Makes `seg` the active segment: removes every byte after its valid data
/// (torn frames, stale frames from before a truncation, preallocated space),
/// rewrites its index files from memory, and returns its writer.
async fn activate<S: FileSystem>(
    fs: &S,
    dir: &Path,
    seg: &mut Segment<S::File>,
    config: &LogConfig,
) -> Result<ActiveWriter<S::File>> {
    let path = seg.path.clone();
    let file = seg.file.clone();
    file.truncate(align_up(seg.end))
        .await
        .map_err(io_err("truncate", &path))?;
    // Rewrite the index files with exactly the in-memory entries.
    let offset_bytes: Vec<u8> = seg.index.offset_entries().iter().flat_map(|e| e.encode()).collect();
    let time_bytes: Vec<u8> = seg.index.time_entries().iter().flat_map(|e| e.encode()).collect();
    for suffix in [OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let p = segment_file(dir, seg.base, suffix);
        let f = fs.open(&p, true).await.map_err(io_err("open index", &p))?;
        f.truncate(0).await.map_err(io_err("truncate index", &p))?;
        f.close().await.map_err(io_err("close index", &p))?;
    }
    let mut writer = new_writer(fs, dir, seg, config, 0, 0).await?;
    writer.offset_index.append(&writer.offset_index_file, &offset_bytes);
    writer.time_index.append(&writer.time_index_file, &time_bytes);
    // Zero the rest of the last page and make the cut durable.
    let job = writer.log.seal(file.as_ref());
    let result = run_job(file.as_ref(), &job, None).await;
    writer.log.finish(job, &result);
    result.map_err(io_err("sync", &path))?;
    file.sync_data().await.map_err(io_err("sync", &path))?;
    for (w, f, p) in [
        (
            &mut writer.offset_index,
            writer.offset_index_file.clone(),
            OFFSET_INDEX_SUFFIX,
        ),
        (
            &mut writer.time_index,
            writer.time_index_file.clone(),
            TIME_INDEX_SUFFIX,
        ),
    ] {
        let job = w.seal(f.as_ref());
        let result = run_job(f.as_ref(), &job, None).await;
        w.finish(job, &result);
        result.map_err(io_err("sync index", &segment_file(dir, seg.base, p)))?;
    }
    fs.sync_dir(dir).await.map_err(io_err("sync dir", dir))?;
    seg.persisted_offset_entries = seg.index.offset_entries().len() as u32;
    seg.persisted_time_entries = seg.index.time_entries().len() as u32;
    Ok(writer)
}

/// Rewrites a sealed segment's index files if memory holds more entries than
/// they do.
async fn persist_full_index<S: FileSystem>(fs: &S, dir: &Path, seg: &mut Segment<S::File>) -> Result<()> {
    let offsets = seg.index.offset_entries();
    let times = seg.index.time_entries();
    if seg.persisted_offset_entries as usize == offsets.len() && seg.persisted_time_entries as usize == times.len() {
        return Ok(());
    }
    let offset_bytes: Vec<u8> = offsets.iter().flat_map(|e| e.encode()).collect();
    let time_bytes: Vec<u8> = times.iter().flat_map(|e| e.encode()).collect();
    for (suffix, bytes) in [(OFFSET_INDEX_SUFFIX, offset_bytes), (TIME_INDEX_SUFFIX, time_bytes)] {
        let p = segment_file(dir, seg.base, suffix);
        write_file_atomic(fs, &p, &bytes)
            .await
            .map_err(io_err("write index", &p))?;
    }
    seg.persisted_offset_entries = offsets.len() as u32;
    seg.persisted_time_entries = times.len() as u32;
    Ok(())
}

/// Writes one buffer ahead of the sync that will cover it, in one of the
/// file's write slots, and records how it ended. Dropped before it ends
/// (even unpolled), it records the write as failed, so that the sync
/// waiting for it writes it again instead of waiting forever.
fn write_ahead<F: StorageFile>(
    file: Rc<F>,
    entry: Rc<AheadWrite<F::Buffer>>,
    share: Rc<WriteShare>,
) -> impl Future<Output = ()> {
    struct Abandoned<B>(Rc<AheadWrite<B>>, Rc<WriteShare>);
    impl<B> Drop for Abandoned<B> {
        fn drop(&mut self) {
            if !self.0.is_done() {
                self.0
                    .record(Err(std::io::Error::other("write ahead abandoned")), &self.1);
            }
        }
    }
    let guard = Abandoned(entry, share);
    async move {
        let Abandoned(entry, share) = &guard;
        let _slot = share.slots.acquire().await;
        let result = write_all_at(file.as_ref(), &entry.buf, entry.pos).await;
        entry.record(result, share);
    }
}

/// Trims the index files of a writer that is done to their data (giving
/// back preallocated space) and closes them.
async fn close_writer<F: StorageFile>(writer: ActiveWriter<F>) {
    let ActiveWriter {
        offset_index,
        offset_index_file,
        time_index,
        time_index_file,
        ..
    } = writer;
    for (appender, file) in [(offset_index, offset_index_file), (time_index, time_index_file)] {
        let _ = file.truncate(align_up(appender.end())).await;
        if let Ok(f) = Rc::try_unwrap(file) {
            let _ = f.close().await;
        }
    }
}

async fn remove_segment_files<S: FileSystem>(fs: &S, dir: &Path, base: Offset) -> Result<()> {
    for suffix in SEGMENT_SUFFIXES {
        let p = segment_file(dir, base, suffix);
        if fs.exists(&p).await {
            fs.remove(&p).await.map_err(io_err("remove", &p))?;
        }
    }
    fs.sync_dir(dir).await.map_err(io_err("sync dir", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appender::AppenderConfig;
    use crate::batch::build_batch;
    use crate::io::sim::{SimFaults, SimFileSystem};
    use crate::testing::block_on;

    const T0: i64 = 1_700_000_000_000;

    /// A log that falls due for a checkpoint every 4 KiB synced.
    async fn open_small_checkpoints(fs: SimFileSystem) -> Log<SimFileSystem> {
        let config = LogConfig {
            checkpoint_interval_bytes: 4096,
            appender: AppenderConfig {
                chunk_bytes: 8192,
                pooled_chunks_max: 4,
                preallocate_bytes: 32768,
            },
            ..LogConfig::default()
        };
        Log::open(fs, PathBuf::from("/data/t-0"), config, BatchCache::new(1 << 20), T0)
            .await
            .unwrap()
    }

    /// Appends a batch of `records` of `value_bytes` each, and waits until
    /// someone else (the flusher) has made it durable.
    async fn append_until_durable(log: &Log<SimFileSystem>, records: i32, value_bytes: usize) {
        let info = log
            .append(Bytes::from(build_batch(records, value_bytes, T0)), T0)
            .await
            .unwrap();
        loop {
            let changed = log.durable_changed();
            if log.durable_offset() > info.last_offset {
                return;
            }
            changed.await;
        }
    }

    /// Lets the other tasks run for a while.
    async fn settle() {
        for _ in 0..200 {
            futures_lite::future::yield_now().await;
        }
    }

    #[test]
    fn a_failed_checkpoint_is_tried_again_after_the_next_sync_not_at_once() {
        block_on(async {
            // Every write and sync yields once, so that a checkpoint loop
            // retrying at once would spin beside the test, not hang it.
            let faults = SimFaults {
                yield_ppm: 1_000_000,
                ..SimFaults::default()
            };
            let fs = SimFileSystem::new(6, faults);
            let log = open_small_checkpoints(fs.clone()).await;
            let body = async {
                append_until_durable(&log, 1, 500).await;
                // The segment has its space reserved; a new file, as a
                // checkpoint writes, finds the disk full.
                fs.set_capacity(Some(fs.used_bytes()));
                append_until_durable(&log, 4, 2000).await;
                settle().await;
                assert_eq!(log.stats().checkpoint_failures, 1);
                append_until_durable(&log, 1, 500).await;
                settle().await;
                assert_eq!(log.stats().checkpoint_failures, 2, "tried again after the sync");
                fs.set_capacity(None);
                append_until_durable(&log, 1, 500).await;
                settle().await;
                assert!(!log.state.borrow().checkpoint_due(), "written once there was room");
                assert_eq!(log.stats().checkpoint_failures, 2);
                log.close().await.unwrap();
            };
            let (flushed, ()) = futures_lite::future::zip(log.flush_until_closed(), body).await;
            flushed.unwrap();
        });
    }

    /// One-page write buffers, so that a few appends fill buffers the
    /// flusher may write ahead.
    fn page_buffers_config() -> LogConfig {
        LogConfig {
            appender: AppenderConfig {
                chunk_bytes: ALIGN,
                pooled_chunks_max: 4,
                preallocate_bytes: 1 << 20,
            },
            ..LogConfig::default()
        }
    }

    #[test]
    fn truncations_beside_a_flusher_writing_ahead_keep_every_batch_whole() {
        // Before, a truncation that cut the end while the flusher's sync
        // waited for it tripped an assertion in the flusher.
        let writes_ahead = block_on(async {
            // Slow writes, so that writes ahead are in flight when the
            // truncation comes.
            let faults = SimFaults {
                yield_ppm: 1_000_000,
                yields_max: 30,
                ..SimFaults::default()
            };
            let fs = SimFileSystem::new(9, faults);
            let config = page_buffers_config();
            let dir = PathBuf::from("/data/t-0");
            let log = Log::open(fs.clone(), dir.clone(), config, BatchCache::new(1 << 20), T0)
                .await
                .unwrap();
            let stop = Cell::new(false);
            let appender = async {
                while !stop.get() {
                    log.append(Bytes::from(build_batch(4, 1500, T0)), T0).await.unwrap();
                    futures_lite::future::yield_now().await;
                }
            };
            let body = async {
                append_until_durable(&log, 1, 100).await;
                for _ in 0..20 {
                    settle().await;
                    let cut = log.end_offset().0 / 2;
                    log.truncate_to(Offset(cut.max(1))).await.unwrap();
                }
                stop.set(true);
                settle().await;
                log.sync().await.unwrap();
                log.close().await.unwrap();
            };
            let (flushed, ((), ())) =
                futures_lite::future::zip(log.flush_until_closed(), futures_lite::future::zip(appender, body)).await;
            flushed.unwrap();
            let end = log.end_offset();
            let writes_ahead = log.stats().writes_ahead;
            drop(log);
            // Every batch reads back whole: none was overwritten by a write
            // ahead that landed after the cut.
            fs.set_faults(SimFaults::default());
            let log = Log::open(fs, dir, config, BatchCache::new(0), T0).await.unwrap();
            assert_eq!(log.end_offset(), end);
            let mut next = Offset(0);
            while next < end {
                let limits = ReadLimits {
                    bytes_max: 1 << 20,
                    upper: end,
                    min_one: true,
                };
                let batches = log.read(next, limits).await.unwrap();
                next = batches.last().expect("a batch").next_offset();
            }
            writes_ahead
        });
        assert!(writes_ahead > 0, "the run wrote ahead");
    }

    #[test]
    fn nothing_goes_ahead_while_appends_are_paused() {
        block_on(async {
            let config = page_buffers_config();
            let log = Log::open(
                SimFileSystem::reliable(3),
                PathBuf::from("/data/t-0"),
                config,
                BatchCache::new(1 << 20),
                T0,
            )
            .await
            .unwrap();
            // Reserve space, then fill pages that may go ahead.
            log.append(Bytes::from(build_batch(1, 100, T0)), T0).await.unwrap();
            log.sync().await.unwrap();
            for _ in 0..4 {
                log.append(Bytes::from(build_batch(4, 1500, T0)), T0).await.unwrap();
            }
            // Held, the lock keeps the flusher's syncs from sealing them.
            let io = log.io_lock.lock().await;
            let paused = log.pause_appends();
            let body = async {
                settle().await;
                assert_eq!(log.stats().writes_ahead, 0, "nothing ahead while paused");
                drop(paused);
                settle().await;
                assert!(log.stats().writes_ahead > 0, "the pause's end lets them go");
                drop(io);
                log.close().await.unwrap();
            };
            let (flushed, ()) = futures_lite::future::zip(log.flush_until_closed(), body).await;
            flushed.unwrap();
        });
    }

    #[test]
    fn a_roll_dropped_part_way_lets_appends_take_the_fast_path_again() {
        block_on(async {
            let log = open_small_checkpoints(SimFileSystem::reliable(6)).await;
            log.append(Bytes::from(build_batch(2, 100, T0)), T0).await.unwrap();
            // The roll waits for the checkpoint lock after its sync; the
            // request that ran it goes away then.
            let held = log.checkpoint_lock.lock().await;
            {
                let roll = std::pin::pin!(log.roll_locked(T0));
                assert!(futures_lite::future::poll_once(roll).await.is_none());
                assert!(log.state.borrow().appends_paused);
            }
            assert!(!log.state.borrow().appends_paused);
            drop(held);
            log.append(Bytes::from(build_batch(2, 100, T0)), T0).await.unwrap();
            log.close().await.unwrap();
        });
    }

    #[test]
    fn the_flusher_keeps_syncing_while_its_checkpoint_waits() {
        block_on(async {
            let log = open_small_checkpoints(SimFileSystem::reliable(5)).await;
            let body = async {
                // Holding the checkpoint lock stands for a checkpoint whose
                // writes and syncs are slow.
                let held = log.checkpoint_lock.lock().await;
                append_until_durable(&log, 4, 2000).await;
                assert!(log.state.borrow().checkpoint_due());
                // The flusher's checkpoint now waits for the lock; its syncs
                // must not (before, they waited behind it: a deadlock here).
                append_until_durable(&log, 4, 2000).await;
                assert!(
                    log.state.borrow().checkpoint_due(),
                    "no checkpoint was written meanwhile"
                );
                drop(held);
                // Released, the checkpoint is written, covering both batches.
                settle().await;
                assert!(!log.state.borrow().checkpoint_due());
                assert_eq!(log.state.borrow().bytes_since_checkpoint, 0);
                log.close().await.unwrap();
            };
            let (flushed, ()) = futures_lite::future::zip(log.flush_until_closed(), body).await;
            flushed.unwrap();
        });
    }
}

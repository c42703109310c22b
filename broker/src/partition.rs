//! A partition as its owning shard holds it: the log, the topic settings
//! that apply to it, its producers' state, and its background flusher.
//!
//! Producer state (idempotence, transactions) is kept in memory, snapshotted
//! to `producers.json` now and then (once the log is durable up to the
//! snapshot's offset), and rebuilt on open from the snapshot and the log
//! after it.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_protocol::ResponseError;
use sluice_storage::batch::{BatchHeader, MarkerType, encode_marker, marker_type};
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::io::{read_file, write_file_atomic};
use sluice_storage::local_sync::LocalMutex;
use sluice_storage::{BatchCache, Log, Offset, StorageError};
use tracing::{info, warn};
use uuid::Uuid;

use crate::metadata::partition_dir;
use crate::producer_state::{ProducerStates, Verdict};
use crate::runtime;
use crate::topic_config::{TopicSettings, log_config};

const PRODUCER_SNAPSHOT_FILE: &str = "producers.json";
const PRODUCER_SNAPSHOT_FORMAT: u32 = 1;
/// Producer batches appended between producer-state snapshots.
const SNAPSHOT_INTERVAL_PRODUCER_BATCHES: u64 = 1000;
/// Bytes appended between producer-state snapshots, whoever wrote them: the
/// replay on open reads at most about this much.
const SNAPSHOT_INTERVAL_BYTES: u64 = 256 << 20;
/// A producer idle this long is forgotten (Kafka's `producer.id.expiration.ms`).
const PRODUCER_EXPIRATION_MS: i64 = 86_400_000;

#[derive(Serialize, Deserialize)]
struct ProducerSnapshot {
    format: u32,
    /// Every batch below this offset is in `state`.
    next_offset: i64,
    state: ProducerStates,
}

/// How a produced batch fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// A retry of a batch already appended: nothing was written.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub enum AppendError {
    Rejected(ResponseError),
    Storage(StorageError),
}

/// Wait after a failed background sync before trying again.
const FLUSH_RETRY_DELAY: Duration = Duration::from_millis(100);

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    pub log: Log<DmaFileSystem>,
    settings: RefCell<TopicSettings>,
    fs: DmaFileSystem,
    dir: PathBuf,
    producers: RefCell<ProducerStates>,
    /// Appends run one at a time, in arrival order: a producer's pipelined
    /// batches see each other's effects, and no batch overtakes one that
    /// waits for room.
    append_lock: LocalMutex,
    producer_batches_since_snapshot: Cell<u64>,
    bytes_since_snapshot: Cell<u64>,
    snapshotting: Cell<bool>,
}

impl Partition {
    pub async fn open(
        fs: &DmaFileSystem,
        cache: &BatchCache,
        data_dir: &std::path::Path,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        settings: TopicSettings,
    ) -> sluice_storage::Result<Rc<Partition>> {
        let dir = partition_dir(data_dir, topic, index);
        let log = Log::open(
            fs.clone(),
            dir.clone(),
            log_config(&settings),
            cache.clone(),
            runtime::now_ms(),
        )
        .await?;
        let (producers, replayed) = load_producer_state(fs, &dir, &log).await?;
        if replayed > 0 || producers.producer_count() > 0 {
            info!(
                topic,
                partition = index,
                producers = producers.producer_count(),
                replayed_batches = replayed,
                "producer state loaded"
            );
        }
        let partition = Rc::new(Partition {
            topic: topic.into(),
            topic_id,
            index,
            log,
            settings: RefCell::new(settings),
            fs: fs.clone(),
            dir,
            producers: RefCell::new(producers),
            append_lock: LocalMutex::new(),
            producer_batches_since_snapshot: Cell::new(0),
            bytes_since_snapshot: Cell::new(0),
            snapshotting: Cell::new(false),
        });
        partition.start_flusher();
        Ok(partition)
    }

    /// Appends a checked batch (magic 2, CRC verified). A producer's batch is
    /// checked against its sequence and epoch first; a retried duplicate is
    /// answered with its original offsets.
    pub async fn append(self: &Rc<Self>, batch: Bytes, header: BatchHeader) -> Result<Appended, AppendError> {
        if header.is_control() {
            return Err(AppendError::Rejected(ResponseError::InvalidRecord));
        }
        let batch_bytes = batch.len() as u64;
        // Every append takes the lock (FIFO): one waiting for room in a full
        // write buffer keeps its place, so a connection's batches to this
        // partition land in the order its requests came.
        let _guard = self.append_lock.lock().await;
        if header.producer_id < 0 {
            let info = self
                .log
                .append(batch, runtime::now_ms())
                .await
                .map_err(AppendError::Storage)?;
            self.note_appended(batch_bytes, false);
            return Ok(Appended {
                base_offset: info.base_offset,
                last_offset: info.last_offset,
                duplicate: false,
            });
        }
        let verdict = self.producers.borrow().check(&header);
        match verdict {
            Verdict::Reject(e) => Err(AppendError::Rejected(e)),
            Verdict::Duplicate { base_offset } => Ok(Appended {
                base_offset: Offset(base_offset),
                last_offset: Offset(base_offset + i64::from(header.last_offset_delta)),
                duplicate: true,
            }),
            Verdict::Append => {
                let now = runtime::now_ms();
                let info = self.log.append(batch, now).await.map_err(AppendError::Storage)?;
                let mut assigned = header;
                assigned.base_offset = info.base_offset;
                self.producers.borrow_mut().apply(&assigned, None, now);
                self.note_appended(batch_bytes, true);
                Ok(Appended {
                    base_offset: info.base_offset,
                    last_offset: info.last_offset,
                    duplicate: false,
                })
            }
        }
    }

    /// Writes a transaction marker for `producer_id`; returns the offset
    /// after it (wait for it to be durable with `log.wait_durable`).
    pub async fn write_marker(
        self: &Rc<Self>,
        producer_id: i64,
        producer_epoch: i16,
        marker: MarkerType,
        coordinator_epoch: i32,
    ) -> Result<Offset, StorageError> {
        let _guard = self.append_lock.lock().await;
        let now = runtime::now_ms();
        let batch = encode_marker(producer_id, producer_epoch, marker, coordinator_epoch, now);
        let mut header = BatchHeader::parse(&batch).expect("a marker we built parses");
        let info = self.log.append(Bytes::from(batch), now).await?;
        header.base_offset = info.base_offset;
        self.producers.borrow_mut().apply(&header, Some(marker), now);
        self.note_appended(header.batch_bytes as u64, true);
        Ok(info.last_offset.plus(1))
    }

    /// The last stable offset: below it, every transaction is decided.
    pub fn last_stable_offset(&self) -> Offset {
        let hw = self.high_watermark();
        match self.producers.borrow().first_unstable_offset() {
            Some(first) => Offset(first).min(hw),
            None => hw,
        }
    }

    /// Aborted transactions with data in `[from, to)`: (producer id, first
    /// offset).
    pub fn aborted_in(&self, from: Offset, to: Offset) -> Vec<(i64, i64)> {
        self.producers.borrow().aborted_in(from.0, to.0)
    }

    fn note_appended(self: &Rc<Self>, bytes: u64, by_producer: bool) {
        self.bytes_since_snapshot.set(self.bytes_since_snapshot.get() + bytes);
        if by_producer {
            self.producer_batches_since_snapshot
                .set(self.producer_batches_since_snapshot.get() + 1);
        }
        let due = self.producer_batches_since_snapshot.get() >= SNAPSHOT_INTERVAL_PRODUCER_BATCHES
            || self.bytes_since_snapshot.get() >= SNAPSHOT_INTERVAL_BYTES;
        if due && !self.snapshotting.get() {
            let me = self.clone();
            runtime::spawn_detached(async move {
                if let Err(e) = me.snapshot_producers().await {
                    warn!(topic = %me.topic, partition = me.index, error = %e, "producer state snapshot failed");
                }
            });
        }
    }

    /// Writes the producer state as of now, once the log is durable that far.
    pub async fn snapshot_producers(&self) -> Result<(), StorageError> {
        if self.snapshotting.replace(true) {
            return Ok(());
        }
        let result = async {
            let (state, at) = {
                let mut producers = self.producers.borrow_mut();
                producers.expire(runtime::now_ms(), PRODUCER_EXPIRATION_MS, self.log.start_offset().0);
                (producers.clone(), self.log.end_offset())
            };
            self.producer_batches_since_snapshot.set(0);
            self.bytes_since_snapshot.set(0);
            self.log.wait_durable(at).await?;
            let path = self.dir.join(PRODUCER_SNAPSHOT_FILE);
            let file = ProducerSnapshot {
                format: PRODUCER_SNAPSHOT_FORMAT,
                next_offset: at.0,
                state,
            };
            let json = serde_json::to_vec(&file).expect("plain data serializes");
            write_file_atomic(&self.fs, &path, &json)
                .await
                .map_err(|e| StorageError::io("write producer snapshot", &path, e))
        }
        .await;
        self.snapshotting.set(false);
        result
    }

    /// Keeps appended data flowing to the disk until the log closes, so that
    /// acks=0/1 data becomes durable (and visible) within a sync or two.
    fn start_flusher(self: &Rc<Self>) {
        let me = self.clone();
        runtime::spawn_detached(async move {
            loop {
                match me.log.flush_until_closed().await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(topic = %me.topic, partition = me.index, error = %e, "background sync failed; retrying");
                        runtime::sleep(FLUSH_RETRY_DELAY).await;
                    }
                }
            }
        });
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings.borrow().clone()
    }

    pub fn apply_settings(&self, settings: TopicSettings) {
        self.log.set_config(log_config(&settings));
        *self.settings.borrow_mut() = settings;
    }

    /// Everything below is durable and may be served: Sluice's high
    /// watermark on a single node.
    pub fn high_watermark(&self) -> Offset {
        self.log.durable_offset()
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log.start_offset()
    }
}

/// The snapshot, then every batch after it up to the durable end: returns
/// the state and how many batches were replayed.
async fn load_producer_state(
    fs: &DmaFileSystem,
    dir: &std::path::Path,
    log: &Log<DmaFileSystem>,
) -> Result<(ProducerStates, u64), StorageError> {
    let path = dir.join(PRODUCER_SNAPSHOT_FILE);
    let mut state = ProducerStates::default();
    let mut from = log.start_offset();
    if let Some(bytes) = read_file(fs, &path)
        .await
        .map_err(|e| StorageError::io("read producer snapshot", &path, e))?
    {
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        match serde_json::from_slice::<ProducerSnapshot>(&bytes[..end]) {
            Ok(s) if s.format == PRODUCER_SNAPSHOT_FORMAT && s.next_offset <= log.durable_offset().0 => {
                state = s.state;
                state.reindex();
                from = from.max(Offset(s.next_offset));
            }
            _ => warn!(path = %path.display(), "producer snapshot unusable: rebuilding from the whole log"),
        }
    }
    let mut replayed = 0u64;
    crate::kvlog::replay(log, from, |served| {
        let Ok(mut header) = BatchHeader::parse(served.raw()) else {
            return;
        };
        header.base_offset = served.base_offset();
        let marker = if header.is_control() {
            marker_type(served.raw())
        } else {
            None
        };
        state.apply(&header, marker, header.max_timestamp);
        replayed += 1;
    })
    .await?;
    Ok((state, replayed))
}

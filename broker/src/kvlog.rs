//! A durable key-value map on a storage `Log`, with snapshots: the store
//! under both coordinators (groups and transactions).
//!
//! Every change is a record whose key and value are the map's key and
//! value (a null value deletes), appended to the log as an uncompressed v2
//! batch. The log keeps its own copy of the map, changed in the same step
//! as each append, so the copy is always exactly the records below the log's
//! end. After enough bytes, that copy as of log offset X is written to
//! `snapshot.json` (once the log is durable up to X) and the log start moves
//! to X, deleting whole older segments. Opening loads the snapshot and
//! replays only the records after it: recovery time follows the map's size,
//! not the number of changes ever made.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_storage::batch::{RecordData, decode_uncompressed, encode_batch};
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::io::{read_file, write_file_atomic};
use sluice_storage::{BatchCache, Log, LogConfig, Offset, ReadLimits, ServedBatch, StorageError};
use tracing::{info, warn};

const SNAPSHOT_FORMAT: u32 = 1;
const SNAPSHOT_FILE: &str = "snapshot.json";
/// Wait after a failed background sync before trying again.
const FLUSH_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
/// Bytes read at a time when replaying.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// The map: keys and values as the caller serialized them.
pub type KvMap = BTreeMap<String, String>;

/// A change: set `key` to `value`, or delete it (`None`).
pub type KvChange = (String, Option<String>);

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    /// Every record below this offset is in `entries`.
    next_offset: i64,
    entries: KvMap,
}

/// Segment size from the snapshot interval: small, so a snapshot soon
/// leaves whole segments behind it to delete.
pub fn segment_bytes_for(snapshot_interval_bytes: u64) -> u64 {
    (4 * snapshot_interval_bytes).max(1 << 20)
}

pub struct KvLog {
    /// The map as of the log's end offset: every record appended, durable
    /// or not (a snapshot waits for durability before it is written).
    map: RefCell<KvMap>,
    dir: PathBuf,
    fs: DmaFileSystem,
    pub log: Log<DmaFileSystem>,
    bytes_since_snapshot: Cell<u64>,
    snapshot_interval_bytes: u64,
    snapshotting: Cell<bool>,
    /// Snapshots written since opening.
    snapshots_written: Cell<u64>,
    /// Records replayed when opening: what followed the snapshot.
    pub replayed_on_open: u64,
}

impl KvLog {
    /// Opens the log in `dir` and loads the map: the snapshot, then the
    /// records after it. Returns the map loaded, for the caller's own state.
    pub async fn open(
        fs: &DmaFileSystem,
        cache: &BatchCache,
        dir: PathBuf,
        snapshot_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<(Rc<KvLog>, KvMap), StorageError> {
        let segment_bytes = segment_bytes_for(snapshot_interval_bytes);
        let mut config = LogConfig {
            segment_bytes,
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        config.appender.preallocate_bytes = segment_bytes;
        let log = Log::open(fs.clone(), dir.clone(), config, cache.clone(), now_ms).await?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let mut map = KvMap::new();
        let mut from = log.start_offset();
        let mut stale_snapshot = false;
        if let Some(bytes) = read_file(fs, &snapshot_path)
            .await
            .map_err(|e| StorageError::io("read snapshot", &snapshot_path, e))?
        {
            let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            match serde_json::from_slice::<SnapshotFile>(&bytes[..end]) {
                Ok(s) if s.format == SNAPSHOT_FORMAT => {
                    map = s.entries;
                    from = from.max(Offset(s.next_offset));
                    // Recovery cut the log below the snapshot (a corrupt
                    // tail): new records will take offsets the snapshot
                    // claims to cover, so it is rewritten as of the end.
                    if s.next_offset > log.durable_offset().0 {
                        warn!(path = %snapshot_path.display(), "log ends before its snapshot: rewriting the snapshot");
                        stale_snapshot = true;
                    }
                }
                _ => warn!(path = %snapshot_path.display(), "snapshot unreadable: replaying the whole log"),
            }
        }
        let mut replayed = 0u64;
        replay(&log, from, |batch| {
            for record in decode_uncompressed(&batch.to_bytes()).unwrap_or_default() {
                let Some(key) = record.key.and_then(|k| String::from_utf8(k).ok()) else {
                    continue;
                };
                match record.value.and_then(|v| String::from_utf8(v).ok()) {
                    Some(v) => map.insert(key, v),
                    None => map.remove(&key),
                };
                replayed += 1;
            }
        })
        .await?;
        let kv = Rc::new(KvLog {
            map: RefCell::new(map.clone()),
            dir,
            fs: fs.clone(),
            log,
            bytes_since_snapshot: Cell::new(0),
            snapshot_interval_bytes,
            snapshotting: Cell::new(false),
            snapshots_written: Cell::new(0),
            replayed_on_open: replayed,
        });
        if stale_snapshot {
            kv.snapshot(map.clone(), kv.log.end_offset()).await?;
        }
        // Keeps appended records flowing to the disk until the log closes.
        let flusher = kv.clone();
        crate::runtime::spawn_detached(async move {
            while let Err(e) = flusher.log.flush_until_closed().await {
                warn!(dir = %flusher.dir.display(), error = %e, "sync failed; retrying");
                crate::runtime::sleep(FLUSH_RETRY_DELAY).await;
            }
        });
        Ok((kv, map))
    }

    /// Appends changes as one batch; returns the offset after them. Not
    /// durable yet: see [`wait_durable`](Self::wait_durable). Starts a
    /// snapshot when one is due.
    pub async fn append(self: &Rc<Self>, changes: &[KvChange], now_ms: i64) -> Result<Offset, StorageError> {
        assert!(!changes.is_empty());
        let records: Vec<RecordData> = changes
            .iter()
            .map(|(k, v)| RecordData {
                key: Some(k.clone().into_bytes()),
                value: v.clone().map(String::into_bytes),
                headers: Vec::new(),
            })
            .collect();
        let batch = encode_batch(&records, now_ms);
        self.bytes_since_snapshot
            .set(self.bytes_since_snapshot.get() + batch.len() as u64);
        let info = self.log.append(Bytes::from(batch), now_ms).await?;
        let end = info.last_offset.plus(1);
        // No await between the append and this: the map and the log's end
        // move together, whichever appends run concurrently.
        {
            let mut map = self.map.borrow_mut();
            for (k, v) in changes {
                match v {
                    Some(v) => map.insert(k.clone(), v.clone()),
                    None => map.remove(k),
                };
            }
        }
        if self.snapshot_due() {
            let map = self.map.borrow().clone();
            let at = self.log.end_offset();
            let me = self.clone();
            crate::runtime::spawn_detached(async move {
                match me.snapshot(map, at).await {
                    Ok(()) => info!(dir = %me.dir.display(), offset = at.0, "snapshot written"),
                    Err(e) => warn!(dir = %me.dir.display(), error = %e, "snapshot failed"),
                }
            });
        }
        Ok(end)
    }

    pub async fn wait_durable(&self, offset: Offset) -> Result<(), StorageError> {
        self.log.wait_durable(offset).await
    }

    fn snapshot_due(&self) -> bool {
        !self.snapshotting.get() && self.bytes_since_snapshot.get() >= self.snapshot_interval_bytes
    }

    /// Writes `map` (the whole map as of `at`, the log's end offset when it
    /// was taken) as the snapshot, then drops the log before it.
    async fn snapshot(&self, map: KvMap, at: Offset) -> Result<(), StorageError> {
        if self.snapshotting.replace(true) {
            return Ok(());
        }
        let result = async {
            self.log.wait_durable(at).await?;
            let path = self.dir.join(SNAPSHOT_FILE);
            let file = SnapshotFile {
                format: SNAPSHOT_FORMAT,
                next_offset: at.0,
                entries: map,
            };
            let json = serde_json::to_vec(&file).expect("strings serialize");
            write_file_atomic(&self.fs, &path, &json)
                .await
                .map_err(|e| StorageError::io("write snapshot", &path, e))?;
            self.bytes_since_snapshot.set(0);
            self.log.advance_start(at).await?;
            self.snapshots_written.set(self.snapshots_written.get() + 1);
            Ok(())
        }
        .await;
        self.snapshotting.set(false);
        result
    }
}

/// Calls `f` on every batch of `log` from `from` up to its durable end, in
/// order, reading `REPLAY_READ_BYTES` at a time: how state kept beside a
/// log (a key-value map, producer state) is rebuilt after its snapshot.
pub async fn replay(
    log: &Log<DmaFileSystem>,
    from: Offset,
    mut f: impl FnMut(&ServedBatch),
) -> Result<(), StorageError> {
    let end = log.durable_offset();
    let mut next = from.min(end);
    while next < end {
        let limits = ReadLimits {
            bytes_max: REPLAY_READ_BYTES,
            upper: end,
            min_one: true,
        };
        let batches = log.read(next, limits).await?;
        let Some(last) = batches.last() else { break };
        next = last.next_offset();
        batches.iter().for_each(&mut f);
        glommio::yield_if_needed().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `test` on a fresh executor with the real filesystem, a cache,
    /// and the directory for a new log (removed afterwards).
    fn on_executor<T, F>(test: T)
    where
        T: FnOnce(DmaFileSystem, BatchCache, PathBuf) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + 'static,
    {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kv");
        glommio::LocalExecutorBuilder::default()
            .spawn(move || test(DmaFileSystem::new(), BatchCache::new(1 << 20), dir))
            .unwrap()
            .join()
            .unwrap();
    }

    /// Many changes, snapshots along the way, a reopen: the map comes back
    /// whole, only what followed the last snapshot is replayed, and old
    /// segments are gone.
    #[test]
    fn snapshots_bound_what_a_reopen_replays() {
        on_executor(|fs, cache, dir| async move {
            let interval = 64 << 10;
            let (kv, _) = KvLog::open(&fs, &cache, dir.clone(), interval, 0).await.unwrap();
            let mut map = KvMap::new();
            let changes = 20_000u64;
            for i in 0..changes {
                let key = format!("key-{}", i % 97);
                let change: KvChange = if i % 11 == 0 {
                    (key, None)
                } else {
                    (key, Some(format!("value-{i}")))
                };
                match &change.1 {
                    Some(v) => map.insert(change.0.clone(), v.clone()),
                    None => map.remove(&change.0),
                };
                let end = kv.append(&[change], 0).await.unwrap();
                kv.wait_durable(end).await.unwrap();
                // Lets a snapshot started by the append finish.
                glommio::yield_if_needed().await;
            }
            // The last snapshot in flight completes before the close.
            while kv.snapshotting.get() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(*kv.map.borrow(), map);
            let snapshots = kv.snapshots_written.get();
            assert!(snapshots > 10, "{snapshots} snapshots");
            kv.log.close().await.unwrap();
            let (reopened, loaded) = KvLog::open(&fs, &cache, dir, interval, 0).await.unwrap();
            assert_eq!(loaded, map);
            assert!(
                reopened.replayed_on_open < changes / 10,
                "replayed {} of {changes} records",
                reopened.replayed_on_open
            );
            let segment_bytes = segment_bytes_for(interval);
            assert!(
                reopened.log.stats().size_bytes <= 2 * segment_bytes,
                "{:?}",
                reopened.log.stats()
            );
        });
    }

    /// A log cut below its snapshot (as recovery cuts a corrupt tail): the
    /// snapshot is rewritten on open, so what is appended next is replayed
    /// on the open after.
    #[test]
    fn a_log_cut_below_its_snapshot_loses_no_later_record() {
        on_executor(|fs, cache, dir| async move {
            let interval = 16 << 20; // no automatic snapshot in this test
            let (kv, _) = KvLog::open(&fs, &cache, dir.clone(), interval, 0).await.unwrap();
            for i in 0..10 {
                let end = kv.append(&[(format!("k{i}"), Some("v".into()))], 0).await.unwrap();
                kv.wait_durable(end).await.unwrap();
            }
            let map = kv.map.borrow().clone();
            kv.snapshot(map, kv.log.end_offset()).await.unwrap();
            // The log loses its last records but the snapshot stays.
            kv.log.truncate_to(Offset(4)).await.unwrap();
            kv.log.close().await.unwrap();
            let (kv, loaded) = KvLog::open(&fs, &cache, dir.clone(), interval, 0).await.unwrap();
            assert_eq!(loaded.len(), 10, "the snapshot still holds every key");
            let end = kv.append(&[("after".into(), Some("cut".into()))], 0).await.unwrap();
            kv.wait_durable(end).await.unwrap();
            kv.log.close().await.unwrap();
            let (_, loaded) = KvLog::open(&fs, &cache, dir, interval, 0).await.unwrap();
            assert_eq!(loaded.get("after").map(String::as_str), Some("cut"));
            assert_eq!(loaded.len(), 11);
        });
    }

    /// Appends from many tasks at once, snapshots starting in between: a
    /// snapshot is the map as of its offset exactly, so a reopen finds
    /// every acknowledged change.
    #[test]
    fn concurrent_appends_across_snapshots_lose_nothing() {
        on_executor(|fs, cache, dir| async move {
            let interval = 16 << 10;
            let (kv, _) = KvLog::open(&fs, &cache, dir.clone(), interval, 0).await.unwrap();
            let tasks: Vec<_> = (0..64)
                .map(|t| {
                    let kv = kv.clone();
                    glommio::spawn_local(async move {
                        for i in 0..100 {
                            let end = kv
                                .append(&[(format!("t{t}-k{i}"), Some(format!("v{i}")))], 0)
                                .await
                                .unwrap();
                            kv.wait_durable(end).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            while kv.snapshotting.get() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(
                kv.snapshots_written.get() > 3,
                "{} snapshots",
                kv.snapshots_written.get()
            );
            kv.log.close().await.unwrap();
            let (_, loaded) = KvLog::open(&fs, &cache, dir, interval, 0).await.unwrap();
            assert_eq!(loaded.len(), 64 * 100);
            assert_eq!(loaded.get("t63-k99").map(String::as_str), Some("v99"));
        });
    }
}

//! Durable group state: Sluice's counterpart of `__consumer_offsets`.
//!
//! Groups hash to one of `GROUP_LOG_PARTITIONS` group logs (a fixed number,
//! so the mapping survives a change of shard count); each log is a storage
//! `Log` in `<data-dir>/groups/<n>`, owned by the shard `shard_of` assigns.
//! Records are uncompressed v2 batches whose key and value are JSON:
//!
//! - offset commit: key `{"k":"o","g":group,"t":topic,"p":partition}`, value
//!   `{"offset","leader_epoch","metadata","commit_ms"}`, or null to delete;
//! - group metadata: key `{"k":"g","g":group}`, value the group's membership
//!   (generation, protocol, leader, members with their subscriptions and
//!   assignments), or null for a deleted group.
//!
//! Snapshots bound recovery: after enough writes, the whole state of the log
//! at offset X is written atomically to `snapshot.json` (once the log is
//! durable up to X), and the log's start moves to X, deleting whole older
//! segments. Opening loads the snapshot and replays only what follows it, so
//! restart time follows the current state, not the commits ever made.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_storage::batch::{RecordData, decode_uncompressed, encode_batch};
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::io::{read_file, write_file_atomic};
use sluice_storage::{BatchCache, Log, LogConfig, Offset, ReadLimits, StorageError};
use tracing::{info, warn};

use super::state::{GroupSnapshot, MemberSnapshot};

/// Group logs in a cluster (Kafka's `offsets.topic.num.partitions`).
pub const GROUP_LOG_PARTITIONS: i32 = 16;
/// Bytes written to a group log between snapshots.
pub const SNAPSHOT_INTERVAL_BYTES: u64 = 16 << 20;
/// Segment size of group logs, from their snapshot interval: small, so a
/// snapshot soon leaves whole segments behind it to delete.
fn group_log_segment_bytes(snapshot_interval_bytes: u64) -> u64 {
    (4 * snapshot_interval_bytes).max(1 << 20)
}
const SNAPSHOT_FORMAT: u32 = 1;

/// The group log a group lives in.
pub fn group_log_of(group_id: &str) -> i32 {
    (crc32c::crc32c(group_id.as_bytes()) % GROUP_LOG_PARTITIONS as u32) as i32
}

/// A committed offset as the group coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum RecordKey {
    #[serde(rename = "o")]
    Offset { g: String, t: String, p: i32 },
    #[serde(rename = "g")]
    Group { g: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberRecord {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    protocol_type: Option<String>,
    generation: i32,
    protocol: Option<String>,
    leader: Option<String>,
    members: Vec<MemberRecord>,
}

impl GroupRecord {
    pub fn from_snapshot(s: &GroupSnapshot) -> GroupRecord {
        GroupRecord {
            protocol_type: s.protocol_type.clone(),
            generation: s.generation,
            protocol: s.protocol.clone(),
            leader: s.leader.clone(),
            members: s
                .members
                .iter()
                .map(|m| MemberRecord {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols.iter().map(|(n, b)| (n.clone(), b.to_vec())).collect(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    pub fn into_snapshot(self) -> GroupSnapshot {
        GroupSnapshot {
            protocol_type: self.protocol_type,
            generation: self.generation,
            protocol: self.protocol,
            leader: self.leader,
            members: self
                .members
                .into_iter()
                .map(|m| MemberSnapshot {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols: m.protocols.into_iter().map(|(n, b)| (n, Bytes::from(b))).collect(),
                    assignment: Bytes::from(m.assignment),
                })
                .collect(),
        }
    }
}

/// A change to the durable state.
#[derive(Debug, Clone)]
pub enum Change {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        committed: Option<CommittedOffset>,
    },
    Group {
        group: String,
        record: Option<GroupRecord>,
    },
}

/// Everything a group log holds, as loaded.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LogState {
    pub groups: BTreeMap<String, GroupRecord>,
    pub offsets: BTreeMap<String, BTreeMap<String, BTreeMap<i32, CommittedOffset>>>,
}

impl LogState {
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Offset {
                group,
                topic,
                partition,
                committed,
            } => match committed {
                Some(c) => {
                    self.offsets
                        .entry(group.clone())
                        .or_default()
                        .entry(topic.clone())
                        .or_default()
                        .insert(*partition, c.clone());
                }
                None => {
                    if let Some(topics) = self.offsets.get_mut(group) {
                        if let Some(parts) = topics.get_mut(topic) {
                            parts.remove(partition);
                            if parts.is_empty() {
                                topics.remove(topic);
                            }
                        }
                        if topics.is_empty() {
                            self.offsets.remove(group);
                        }
                    }
                }
            },
            Change::Group { group, record } => match record {
                Some(r) => {
                    self.groups.insert(group.clone(), r.clone());
                }
                None => {
                    self.groups.remove(group);
                }
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    /// Every record below this offset is in `state`.
    next_offset: i64,
    state: LogState,
}

fn encode_change(change: &Change) -> RecordData {
    let (key, value) = match change {
        Change::Offset {
            group,
            topic,
            partition,
            committed,
        } => (
            RecordKey::Offset {
                g: group.clone(),
                t: topic.clone(),
                p: *partition,
            },
            committed
                .as_ref()
                .map(|c| serde_json::to_vec(c).expect("plain data serializes")),
        ),
        Change::Group { group, record } => (
            RecordKey::Group { g: group.clone() },
            record
                .as_ref()
                .map(|r| serde_json::to_vec(r).expect("plain data serializes")),
        ),
    };
    RecordData {
        key: Some(serde_json::to_vec(&key).expect("plain data serializes")),
        value,
        headers: Vec::new(),
    }
}

fn decode_change(key: &[u8], value: Option<&[u8]>) -> Option<Change> {
    let key: RecordKey = serde_json::from_slice(key).ok()?;
    Some(match key {
        RecordKey::Offset { g, t, p } => Change::Offset {
            group: g,
            topic: t,
            partition: p,
            committed: match value {
                Some(v) => Some(serde_json::from_slice(v).ok()?),
                None => None,
            },
        },
        RecordKey::Group { g } => Change::Group {
            group: g,
            record: match value {
                Some(v) => Some(serde_json::from_slice(v).ok()?),
                None => None,
            },
        },
    })
}

pub fn group_log_dir(data_dir: &Path, index: i32) -> PathBuf {
    data_dir.join("groups").join(index.to_string())
}

/// One group log and its snapshot.
pub struct GroupLog {
    pub index: i32,
    dir: PathBuf,
    fs: DmaFileSystem,
    pub log: Log<DmaFileSystem>,
    bytes_since_snapshot: Cell<u64>,
    snapshot_interval_bytes: u64,
    snapshotting: Cell<bool>,
    /// Records replayed when opening: what followed the snapshot.
    pub replayed_on_open: u64,
}

impl GroupLog {
    /// Opens the log and loads its state: the snapshot, then the records
    /// after it.
    pub async fn open(
        fs: &DmaFileSystem,
        cache: &BatchCache,
        data_dir: &Path,
        index: i32,
        snapshot_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<(GroupLog, LogState), StorageError> {
        let dir = group_log_dir(data_dir, index);
        let segment_bytes = group_log_segment_bytes(snapshot_interval_bytes);
        let mut config = LogConfig {
            segment_bytes,
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        config.appender.preallocate_bytes = segment_bytes;
        let log = Log::open(fs.clone(), dir.clone(), config, cache.clone(), now_ms).await?;
        let snapshot_path = dir.join("snapshot.json");
        let mut state = LogState::default();
        let mut from = log.start_offset();
        if let Some(bytes) = read_file(fs, &snapshot_path)
            .await
            .map_err(|e| StorageError::io("read snapshot", &snapshot_path, e))?
        {
            let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            match serde_json::from_slice::<SnapshotFile>(&bytes[..end]) {
                Ok(s) if s.format == SNAPSHOT_FORMAT => {
                    state = s.state;
                    from = from.max(Offset(s.next_offset));
                }
                _ => warn!(path = %snapshot_path.display(), "group snapshot unreadable: replaying the whole log"),
            }
        }
        let mut replayed = 0u64;
        let end = log.durable_offset();
        let mut next = from.min(end);
        while next < end {
            let batches = log
                .read(
                    next,
                    ReadLimits {
                        bytes_max: 4 << 20,
                        upper: end,
                        min_one: true,
                    },
                )
                .await?;
            let Some(last) = batches.last() else { break };
            next = last.next_offset();
            for batch in &batches {
                let bytes = batch.to_bytes();
                for record in decode_uncompressed(&bytes).unwrap_or_default() {
                    if let Some(change) = record
                        .key
                        .as_deref()
                        .and_then(|k| decode_change(k, record.value.as_deref()))
                    {
                        state.apply(&change);
                        replayed += 1;
                    }
                }
            }
        }
        info!(
            group_log = index,
            groups = state.groups.len(),
            replayed_records = replayed,
            "group log loaded"
        );
        Ok((
            GroupLog {
                index,
                dir,
                fs: fs.clone(),
                log,
                bytes_since_snapshot: Cell::new(0),
                snapshot_interval_bytes,
                snapshotting: Cell::new(false),
                replayed_on_open: replayed,
            },
            state,
        ))
    }

    /// Appends changes as one batch; returns the offset after them. Not
    /// durable yet: see [`wait_durable`](Self::wait_durable).
    pub async fn append(&self, changes: &[Change], now_ms: i64) -> Result<Offset, StorageError> {
        assert!(!changes.is_empty());
        let records: Vec<RecordData> = changes.iter().map(encode_change).collect();
        let batch = encode_batch(&records, now_ms);
        self.bytes_since_snapshot
            .set(self.bytes_since_snapshot.get() + batch.len() as u64);
        let info = self.log.append(Bytes::from(batch), now_ms).await?;
        Ok(info.last_offset.plus(1))
    }

    pub async fn wait_durable(&self, offset: Offset) -> Result<(), StorageError> {
        self.log.wait_durable(offset).await
    }

    pub fn snapshot_due(&self) -> bool {
        !self.snapshotting.get() && self.bytes_since_snapshot.get() >= self.snapshot_interval_bytes
    }

    /// Writes `state` (the whole state as of `at`, the log's end offset when
    /// it was taken) as the snapshot, then drops the log before it.
    pub async fn snapshot(&self, state: LogState, at: Offset) -> Result<(), StorageError> {
        if self.snapshotting.replace(true) {
            return Ok(());
        }
        let result = async {
            self.log.wait_durable(at).await?;
            let path = self.dir.join("snapshot.json");
            let file = SnapshotFile {
                format: SNAPSHOT_FORMAT,
                next_offset: at.0,
                state,
            };
            let json = serde_json::to_vec(&file).expect("plain data serializes");
            write_file_atomic(&self.fs, &path, &json)
                .await
                .map_err(|e| StorageError::io("write snapshot", &path, e))?;
            self.bytes_since_snapshot.set(0);
            self.log.advance_start(at).await?;
            Ok(())
        }
        .await;
        self.snapshotting.set(false);
        result
    }
}

/// One group's membership record (if any) and committed offsets.
pub type StoredGroup = (Option<GroupRecord>, BTreeMap<(String, i32), CommittedOffset>);

/// Groups' state grouped by group, as the coordinator rebuilds it.
pub fn split_state(state: LogState) -> HashMap<String, StoredGroup> {
    let mut out: HashMap<String, StoredGroup> = HashMap::new();
    for (g, record) in state.groups {
        out.entry(g).or_default().0 = Some(record);
    }
    for (g, topics) in state.offsets {
        let entry = out.entry(g).or_default();
        for (t, parts) in topics {
            for (p, c) in parts {
                entry.1.insert((t.clone(), p), c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_records() {
        let changes = vec![
            Change::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3,
                committed: Some(CommittedOffset {
                    offset: 42,
                    leader_epoch: 0,
                    metadata: Some("meta".into()),
                    commit_ms: 7,
                }),
            },
            Change::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 4,
                committed: None,
            },
            Change::Group {
                group: "g".into(),
                record: None,
            },
        ];
        let mut direct = LogState::default();
        let mut decoded = LogState::default();
        for c in &changes {
            direct.apply(c);
            let r = encode_change(c);
            let back = decode_change(r.key.as_deref().unwrap(), r.value.as_deref()).unwrap();
            decoded.apply(&back);
        }
        assert_eq!(
            serde_json::to_string(&direct).unwrap(),
            serde_json::to_string(&decoded).unwrap()
        );
        assert_eq!(decoded.offsets["g"]["t"][&3].metadata.as_deref(), Some("meta"));
        assert!(decode_change(b"not json", None).is_none());
    }

    /// Many commits, snapshots along the way, a reopen: the state comes
    /// back whole, and only what followed the last snapshot is replayed.
    #[test]
    fn snapshots_bound_what_a_reopen_replays() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let fs = DmaFileSystem::new();
                let cache = BatchCache::new(1 << 20);
                let interval = 64 << 10;
                let (log, _) = GroupLog::open(&fs, &cache, &data_dir, 3, interval, 0).await.unwrap();
                let mut state = LogState::default();
                let commits = 20_000u64;
                let mut snapshots = 0;
                for i in 0..commits {
                    let change = Change::Offset {
                        group: format!("g{}", i % 7),
                        topic: "t".into(),
                        partition: (i % 13) as i32,
                        committed: Some(CommittedOffset {
                            offset: i as i64,
                            leader_epoch: 0,
                            metadata: Some(format!("m{i}")),
                            commit_ms: 0,
                        }),
                    };
                    state.apply(&change);
                    let end = log.append(&[change], 0).await.unwrap();
                    if log.snapshot_due() {
                        log.snapshot(state.clone(), end).await.unwrap();
                        snapshots += 1;
                    }
                }
                log.log.close().await.unwrap();
                assert!(snapshots > 10, "{snapshots} snapshots");
                let (reopened, loaded) = GroupLog::open(&fs, &cache, &data_dir, 3, interval, 0).await.unwrap();
                assert_eq!(
                    serde_json::to_string(&loaded).unwrap(),
                    serde_json::to_string(&state).unwrap()
                );
                // One interval's worth of records at most, not all 20k.
                assert!(
                    reopened.replayed_on_open < commits / 10,
                    "replayed {} of {commits} records",
                    reopened.replayed_on_open
                );
                // And old segments went: at most the active one and the one
                // the last snapshot falls in remain.
                let segment_bytes = group_log_segment_bytes(interval);
                assert!(
                    reopened.log.stats().size_bytes <= 2 * segment_bytes,
                    "{:?}",
                    reopened.log.stats()
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn groups_spread_over_the_logs() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let p = group_log_of(&format!("group-{i}"));
            assert!((0..GROUP_LOG_PARTITIONS).contains(&p));
            seen.insert(p);
        }
        assert_eq!(seen.len() as i32, GROUP_LOG_PARTITIONS);
    }
}

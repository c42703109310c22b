//! Durable group state: Sluice's counterpart of `__consumer_offsets`.
//!
//! Groups hash to one of `GROUP_LOG_PARTITIONS` group logs (a fixed number,
//! so the mapping survives a change of shard count); each is a `KvLog` in
//! `<data-dir>/groups/<n>`, owned by the shard `shard_of` assigns. Keys and
//! values are JSON:
//!
//! - offset commit: key `{"k":"o","g":group,"t":topic,"p":partition}`, value
//!   `{"offset","leader_epoch","metadata","commit_ms"}`;
//! - group metadata: key `{"k":"g","g":group}`, value the group's membership
//!   (generation, protocol, leader, members with their subscriptions and
//!   assignments);
//! - an offset committed inside a transaction, pending its outcome: key
//!   `{"k":"po","g":group,"pid":producer,"t":topic,"p":partition}`, value as
//!   for an offset commit.
//!
//! A deleted key is a record with a null value. Snapshots (see `kvlog`)
//! bound recovery to the current state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::{BatchCache, Offset, StorageError};
use tracing::{info, warn};

use super::state::{GroupSnapshot, MemberSnapshot};
use crate::kvlog::{KvChange, KvLog, KvMap};

/// Group logs in a cluster (Kafka's `offsets.topic.num.partitions`).
pub const GROUP_LOG_PARTITIONS: i32 = 16;
/// Bytes written to a group log between snapshots.
pub const SNAPSHOT_INTERVAL_BYTES: u64 = 16 << 20;
/// The group log a group lives in.
pub fn group_log_of(group_id: &str) -> i32 {
    (sluice_storage::batch::crc32c(group_id.as_bytes()) % GROUP_LOG_PARTITIONS as u32) as i32
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
    #[serde(rename = "po")]
    Pending { g: String, pid: i64, t: String, p: i32 },
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
    /// An offset committed in producer `producer_id`'s open transaction.
    Pending {
        group: String,
        producer_id: i64,
        topic: String,
        partition: i32,
        committed: Option<CommittedOffset>,
    },
}

/// Committed offsets: topic -> partition -> offset.
pub type TopicOffsets = BTreeMap<String, BTreeMap<i32, CommittedOffset>>;

/// Everything a group log holds, as loaded.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LogState {
    pub groups: BTreeMap<String, GroupRecord>,
    /// group -> its offsets
    pub offsets: BTreeMap<String, TopicOffsets>,
    /// group -> producer id -> offsets pending in its transaction
    #[serde(default)]
    pub pending: BTreeMap<String, BTreeMap<i64, TopicOffsets>>,
}

impl LogState {
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Offset {
                group,
                topic,
                partition,
                committed,
            } => {
                let topics = self.offsets.entry(group.clone()).or_default();
                set_offset(topics, topic, *partition, committed);
                if topics.is_empty() {
                    self.offsets.remove(group);
                }
            }
            Change::Group { group, record } => match record {
                Some(r) => {
                    self.groups.insert(group.clone(), r.clone());
                }
                None => {
                    self.groups.remove(group);
                }
            },
            Change::Pending {
                group,
                producer_id,
                topic,
                partition,
                committed,
            } => {
                let producers = self.pending.entry(group.clone()).or_default();
                let topics = producers.entry(*producer_id).or_default();
                set_offset(topics, topic, *partition, committed);
                if topics.is_empty() {
                    producers.remove(producer_id);
                }
                if producers.is_empty() {
                    self.pending.remove(group);
                }
            }
        }
    }
}

/// Sets (Some) or removes (None) one partition's offset, dropping a topic
/// left with none; the callers drop the maps above it the same way.
fn set_offset(topics: &mut TopicOffsets, topic: &str, partition: i32, committed: &Option<CommittedOffset>) {
    let parts = topics.entry(topic.to_string()).or_default();
    match committed {
        Some(c) => {
            parts.insert(partition, c.clone());
        }
        None => {
            parts.remove(&partition);
        }
    }
    if parts.is_empty() {
        topics.remove(topic);
    }
}

fn encode_change(change: &Change) -> KvChange {
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
                .map(|c| serde_json::to_string(c).expect("plain data serializes")),
        ),
        Change::Group { group, record } => (
            RecordKey::Group { g: group.clone() },
            record
                .as_ref()
                .map(|r| serde_json::to_string(r).expect("plain data serializes")),
        ),
        Change::Pending {
            group,
            producer_id,
            topic,
            partition,
            committed,
        } => (
            RecordKey::Pending {
                g: group.clone(),
                pid: *producer_id,
                t: topic.clone(),
                p: *partition,
            },
            committed
                .as_ref()
                .map(|c| serde_json::to_string(c).expect("plain data serializes")),
        ),
    };
    (serde_json::to_string(&key).expect("plain data serializes"), value)
}

fn decode_change(key: &str, value: Option<&str>) -> Option<Change> {
    let key: RecordKey = serde_json::from_str(key).ok()?;
    Some(match key {
        RecordKey::Offset { g, t, p } => Change::Offset {
            group: g,
            topic: t,
            partition: p,
            committed: match value {
                Some(v) => Some(serde_json::from_str(v).ok()?),
                None => None,
            },
        },
        RecordKey::Group { g } => Change::Group {
            group: g,
            record: match value {
                Some(v) => Some(serde_json::from_str(v).ok()?),
                None => None,
            },
        },
        RecordKey::Pending { g, pid, t, p } => Change::Pending {
            group: g,
            producer_id: pid,
            topic: t,
            partition: p,
            committed: match value {
                Some(v) => Some(serde_json::from_str(v).ok()?),
                None => None,
            },
        },
    })
}

impl LogState {
    fn from_map(map: KvMap) -> LogState {
        let mut state = LogState::default();
        for (k, v) in &map {
            match decode_change(k, Some(v)) {
                Some(change) => state.apply(&change),
                None => warn!(key = %k, "unreadable group record ignored"),
            }
        }
        state
    }

    #[cfg(test)]
    fn to_map(&self) -> KvMap {
        let mut map = KvMap::new();
        let mut put = |c: Change| {
            let (k, v) = encode_change(&c);
            if let Some(v) = v {
                map.insert(k, v);
            }
        };
        for (g, r) in &self.groups {
            put(Change::Group {
                group: g.clone(),
                record: Some(r.clone()),
            });
        }
        for (g, topics) in &self.offsets {
            for (t, parts) in topics {
                for (p, c) in parts {
                    put(Change::Offset {
                        group: g.clone(),
                        topic: t.clone(),
                        partition: *p,
                        committed: Some(c.clone()),
                    });
                }
            }
        }
        for (g, producers) in &self.pending {
            for (pid, topics) in producers {
                for (t, parts) in topics {
                    for (p, c) in parts {
                        put(Change::Pending {
                            group: g.clone(),
                            producer_id: *pid,
                            topic: t.clone(),
                            partition: *p,
                            committed: Some(c.clone()),
                        });
                    }
                }
            }
        }
        map
    }
}

pub fn group_log_dir(data_dir: &Path, index: i32) -> PathBuf {
    data_dir.join("groups").join(index.to_string())
}

/// One group log.
pub struct GroupLog {
    pub index: i32,
    pub kv: std::rc::Rc<KvLog>,
}

impl GroupLog {
    /// Opens the log and loads its state.
    pub async fn open(
        fs: &DmaFileSystem,
        cache: &BatchCache,
        data_dir: &Path,
        index: i32,
        snapshot_interval_bytes: u64,
        now_ms: i64,
    ) -> Result<(GroupLog, LogState), StorageError> {
        let (kv, map) = KvLog::open(
            fs,
            cache,
            group_log_dir(data_dir, index),
            snapshot_interval_bytes,
            now_ms,
        )
        .await?;
        let state = LogState::from_map(map);
        info!(
            group_log = index,
            groups = state.groups.len(),
            replayed_records = kv.replayed_on_open,
            "group log loaded"
        );
        Ok((GroupLog { index, kv }, state))
    }

    /// Appends changes as one batch; returns the offset after them.
    pub async fn append(&self, changes: &[Change], now_ms: i64) -> Result<Offset, StorageError> {
        let kv: Vec<KvChange> = changes.iter().map(encode_change).collect();
        self.kv.append(&kv, now_ms).await
    }

    pub async fn wait_durable(&self, offset: Offset) -> Result<(), StorageError> {
        self.kv.wait_durable(offset).await
    }
}

/// Offsets committed in open transactions: producer id -> partition -> offset.
pub type PendingOffsets = BTreeMap<i64, BTreeMap<(String, i32), CommittedOffset>>;

/// One group's membership record (if any), committed offsets, and offsets
/// pending in transactions.
pub type StoredGroup = (
    Option<GroupRecord>,
    BTreeMap<(String, i32), CommittedOffset>,
    PendingOffsets,
);

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
    for (g, producers) in state.pending {
        let entry = out.entry(g).or_default();
        for (pid, topics) in producers {
            for (t, parts) in topics {
                for (p, c) in parts {
                    entry.2.entry(pid).or_default().insert((t.clone(), p), c);
                }
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
            Change::Pending {
                group: "g".into(),
                producer_id: 9,
                topic: "t".into(),
                partition: 1,
                committed: Some(CommittedOffset {
                    offset: 5,
                    leader_epoch: -1,
                    metadata: None,
                    commit_ms: 1,
                }),
            },
        ];
        let mut direct = LogState::default();
        let mut decoded = LogState::default();
        for c in &changes {
            direct.apply(c);
            let (k, v) = encode_change(c);
            let back = decode_change(&k, v.as_deref()).unwrap();
            decoded.apply(&back);
        }
        // And through a whole map.
        let again = LogState::from_map(direct.to_map());
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&direct).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&direct).unwrap(),
            serde_json::to_string(&decoded).unwrap()
        );
        assert_eq!(decoded.offsets["g"]["t"][&3].metadata.as_deref(), Some("meta"));
        assert_eq!(decoded.pending["g"][&9]["t"][&1].offset, 5);
        assert!(decode_change("not json", None).is_none());
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

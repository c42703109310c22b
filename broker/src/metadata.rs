//! Cluster metadata: topics, their ids, partition counts and settings.
//!
//! Shard 0 (the controller) changes it, persists it, and sends every shard
//! the new snapshot, which each keeps as its own read-only copy, stamped
//! with a revision. Readers never lock: they hold an `Arc` to a snapshot
//! that never changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Topic names as Kafka allows them.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Kafka's rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be {name:?}"));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!("topic name is longer than {TOPIC_NAME_BYTES_MAX} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name contains {c:?}: only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    /// The topic's own settings (overrides of the broker's defaults).
    pub configs: BTreeMap<String, String>,
}

/// One revision of the metadata.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetadata {
    pub revision: u64,
    pub cluster_id: String,
    /// The first producer id not yet handed out (as loaded; the controller
    /// keeps the live value).
    pub producer_id_next: i64,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub topic_ids: HashMap<Uuid, String>,
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicMeta>> {
        self.topic_ids.get(id).and_then(|n| self.topics.get(n))
    }

    /// The next revision with `topics` replaced.
    pub fn with_topics(&self, topics: BTreeMap<String, Arc<TopicMeta>>) -> ClusterMetadata {
        let topic_ids = topics.values().map(|t| (t.id, t.name.clone())).collect();
        ClusterMetadata {
            revision: self.revision + 1,
            cluster_id: self.cluster_id.clone(),
            producer_id_next: self.producer_id_next,
            topics,
            topic_ids,
        }
    }
}

/// Which shard owns a partition. Stable for a given shard count: partitions
/// of a topic go round-robin over the shards from a start picked by the
/// topic's name.
pub fn shard_of(topic: &str, partition: i32, shard_count: usize) -> usize {
    assert!(shard_count > 0 && partition >= 0);
    let start = sluice_storage::batch::crc32c(topic.as_bytes()) as u64;
    ((start + partition as u64) % shard_count as u64) as usize
}

/// The directory of a partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join("topics").join(format!("{topic}-{partition}"))
}

/// How metadata is stored: `<data-dir>/cluster/metadata.json`, written
/// atomically.
#[derive(Debug, Serialize, Deserialize)]
pub struct MetadataFile {
    pub format_version: u32,
    pub revision: u64,
    pub cluster_id: String,
    pub node_id: i32,
    /// Producer ids below this may have been handed out: never reuse them.
    #[serde(default)]
    pub producer_id_next: i64,
    pub topics: Vec<TopicMeta>,
}

pub const METADATA_FORMAT_VERSION: u32 = 1;

pub fn metadata_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("metadata.json")
}

impl MetadataFile {
    pub fn from_metadata(m: &ClusterMetadata, node_id: i32, producer_id_next: i64) -> MetadataFile {
        MetadataFile {
            format_version: METADATA_FORMAT_VERSION,
            revision: m.revision,
            cluster_id: m.cluster_id.clone(),
            node_id,
            producer_id_next,
            topics: m.topics.values().map(|t| (**t).clone()).collect(),
        }
    }

    pub fn into_metadata(self) -> ClusterMetadata {
        let topics: BTreeMap<String, Arc<TopicMeta>> =
            self.topics.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect();
        let topic_ids = topics.values().map(|t| (t.id, t.name.clone())).collect();
        ClusterMetadata {
            revision: self.revision,
            cluster_id: self.cluster_id,
            producer_id_next: self.producer_id_next,
            topics,
            topic_ids,
        }
    }

    pub fn parse(bytes: &[u8]) -> anyhow::Result<MetadataFile> {
        // The file is page-padded with zeroes by the atomic writer.
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let file: MetadataFile = serde_json::from_slice(&bytes[..end]).context("metadata.json is not valid")?;
        anyhow::ensure!(
            file.format_version == METADATA_FORMAT_VERSION,
            "metadata.json has format version {}, this broker reads {}",
            file.format_version,
            METADATA_FORMAT_VERSION
        );
        Ok(file)
    }
}

/// A new cluster id: 16 random bytes, URL-safe base64 without padding (22
/// characters), as Kafka makes them.
pub fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = Uuid::new_v4().into_bytes();
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "A_b-c", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "ünï", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placement_is_stable_and_spreads_partitions() {
        let shards: Vec<usize> = (0..8).map(|p| shard_of("orders", p, 4)).collect();
        assert_eq!(shards, (0..8).map(|p| shard_of("orders", p, 4)).collect::<Vec<_>>());
        for s in 0..4 {
            assert_eq!(shards.iter().filter(|x| **x == s).count(), 2);
        }
        assert_eq!(shard_of("orders", 3, 1), 0);
    }

    #[test]
    fn metadata_file_round_trips_through_padding() {
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".into(), "1000".into());
        let topic = TopicMeta {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: 3,
            configs,
        };
        let m = ClusterMetadata {
            cluster_id: new_cluster_id(),
            ..Default::default()
        }
        .with_topics([("t".to_string(), Arc::new(topic.clone()))].into());
        let mut bytes = serde_json::to_vec(&MetadataFile::from_metadata(&m, 1, 5000)).unwrap();
        bytes.resize(4096, 0);
        let back = MetadataFile::parse(&bytes).unwrap().into_metadata();
        assert_eq!(back.revision, 1);
        assert_eq!(back.producer_id_next, 5000);
        assert_eq!(back.topic_by_id(&topic.id).map(|t| &**t), Some(&topic));
        assert_eq!(m.cluster_id.len(), 22);
    }
}

//! The controller, on shard 0: the only place metadata changes. Each change
//! is validated against the current revision, persisted, and applied on
//! every shard before the request that made it is answered, so a client
//! that created a topic can use it on any connection at once.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use sluice_protocol::ResponseError;
use sluice_storage::io::{FileSystem, write_file_atomic};
use sluice_storage::local_sync::LocalMutex;
use tracing::info;
use uuid::Uuid;

use crate::error::ApiError;
use crate::metadata::{ClusterMetadata, MetadataFile, TopicMeta, metadata_path, validate_topic_name};
use crate::shard::Shard;
use crate::topic_config::validate_setting;

/// Partitions one topic may have; a guard against a typo creating millions.
pub const TOPIC_PARTITIONS_MAX: i32 = 100_000;

/// A topic to create, as a client asked for it.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    /// Manual replica assignment: partition index -> broker ids.
    pub assignments: Vec<(i32, Vec<i32>)>,
    pub configs: Vec<(String, Option<String>)>,
}

/// How a config change applies to a topic's settings.
#[derive(Debug, Clone)]
pub enum ConfigChange {
    /// AlterConfigs: the topic's settings become exactly these.
    Replace(Vec<(String, Option<String>)>),
    /// IncrementalAlterConfigs: (name, op, value); op 0 SET, 1 DELETE,
    /// 2 APPEND, 3 SUBTRACT.
    Incremental(Vec<(String, i8, Option<String>)>),
}

pub struct Controller {
    lock: LocalMutex,
    /// The first producer id not yet handed out, as persisted.
    producer_id_next: std::cell::Cell<i64>,
}

/// Producer ids a shard takes from the controller at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

impl Default for Controller {
    fn default() -> Self {
        Controller::new()
    }
}

fn invalid_config(e: anyhow::Error) -> ApiError {
    ApiError::new(ResponseError::InvalidConfig, e.to_string())
}

impl Controller {
    pub fn new() -> Controller {
        Controller {
            lock: LocalMutex::new(),
            producer_id_next: std::cell::Cell::new(0),
        }
    }

    /// At start, the value loaded from the metadata file.
    pub fn set_producer_id_next(&self, next: i64) {
        self.producer_id_next.set(next);
    }

    pub fn producer_id_next(&self) -> i64 {
        self.producer_id_next.get()
    }

    /// Hands out `[start, start + PRODUCER_ID_BLOCK)`, durably: the ids are
    /// never handed out again, even after a crash.
    pub async fn allocate_producer_ids(&self, shard: &Rc<Shard>) -> anyhow::Result<(i64, i64)> {
        let _guard = self.lock.lock().await;
        let start = self.producer_id_next.get();
        let end = start.checked_add(PRODUCER_ID_BLOCK).context("producer ids exhausted")?;
        self.producer_id_next.set(end);
        if let Err(e) = persist(shard, &shard.metadata()).await {
            self.producer_id_next.set(start);
            return Err(e);
        }
        Ok((start, end))
    }

    /// Creates topics; one result per request entry, in order.
    pub async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        requests: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<Arc<TopicMeta>, ApiError>> {
        let _guard = self.lock.lock().await;
        let current = shard.metadata();
        let mut topics = current.topics.clone();
        let defaults = &shard.config.topic_defaults;
        let names: Vec<&str> = requests.iter().map(|r| r.name.as_str()).collect();
        let mut results = Vec::with_capacity(requests.len());
        for request in &requests {
            let result = (|| {
                validate_topic_name(&request.name)
                    .map_err(|m| ApiError::new(ResponseError::InvalidTopicException, m))?;
                if names.iter().filter(|n| **n == request.name).count() > 1 {
                    return Err(ApiError::new(
                        ResponseError::InvalidRequest,
                        "topic named twice in one request",
                    ));
                }
                if topics.contains_key(&request.name) {
                    return Err(ApiError::new(
                        ResponseError::TopicAlreadyExists,
                        format!("topic {} already exists", request.name),
                    ));
                }
                let partitions = if request.assignments.is_empty() {
                    let replication = match request.replication_factor {
                        -1 => shard.config.topic_defaults.replication_factor,
                        r => r,
                    };
                    if replication != 1 {
                        return Err(ApiError::new(
                            ResponseError::InvalidReplicationFactor,
                            format!("replication factor {replication} is not possible with 1 broker"),
                        ));
                    }
                    match request.partitions {
                        -1 => defaults.num_partitions,
                        p if (1..=TOPIC_PARTITIONS_MAX).contains(&p) => p,
                        p => {
                            return Err(ApiError::new(
                                ResponseError::InvalidPartitions,
                                format!("{p} partitions: a topic has 1 to {TOPIC_PARTITIONS_MAX}"),
                            ));
                        }
                    }
                } else {
                    if request.partitions != -1 || request.replication_factor != -1 {
                        return Err(ApiError::new(
                            ResponseError::InvalidRequest,
                            "give either assignments or partition count and replication factor",
                        ));
                    }
                    check_assignments(&request.assignments, 0, shard.config.node_id)?;
                    request.assignments.len() as i32
                };
                let mut configs = BTreeMap::new();
                for (name, value) in &request.configs {
                    let Some(value) = value else {
                        return Err(ApiError::new(
                            ResponseError::InvalidConfig,
                            format!("{name} has no value"),
                        ));
                    };
                    validate_setting(name, value).map_err(invalid_config)?;
                    configs.insert(name.clone(), value.clone());
                }
                Ok(Arc::new(TopicMeta {
                    name: request.name.clone(),
                    id: Uuid::new_v4(),
                    partitions,
                    configs,
                }))
            })();
            if let Ok(topic) = &result {
                topics.insert(topic.name.clone(), topic.clone());
            }
            results.push(result);
        }
        let created = results.iter().any(|r| r.is_ok());
        if !validate_only && created {
            if let Err(e) = self.commit(shard, topics).await {
                let error = ApiError::new(ResponseError::UnknownServerError, format!("{e:#}"));
                return results.into_iter().map(|r| r.and(Err(error.clone()))).collect();
            }
            for topic in results.iter().flatten() {
                info!(topic = %topic.name, partitions = topic.partitions, id = %topic.id, "topic created");
            }
        }
        results
    }

    /// Deletes topics by name; one result per entry.
    pub async fn delete_topics(&self, shard: &Rc<Shard>, names: Vec<String>) -> Vec<Result<Uuid, ApiError>> {
        let _guard = self.lock.lock().await;
        let mut topics = shard.metadata().topics.clone();
        let results: Vec<_> = names
            .iter()
            .map(|name| match topics.remove(name) {
                Some(t) => Ok(t.id),
                None => Err(ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("no topic named {name}"),
                )),
            })
            .collect();
        if results.iter().any(|r| r.is_ok()) {
            if let Err(e) = self.commit(shard, topics).await {
                let error = ApiError::new(ResponseError::UnknownServerError, format!("{e:#}"));
                return results.into_iter().map(|r| r.and(Err(error.clone()))).collect();
            }
            for (name, r) in names.iter().zip(&results) {
                if r.is_ok() {
                    info!(topic = %name, "topic deleted");
                }
            }
        }
        results
    }

    /// Raises partition counts: (topic, new total, assignments of the new
    /// partitions).
    pub async fn create_partitions(
        &self,
        shard: &Rc<Shard>,
        requests: Vec<(String, i32, Vec<Vec<i32>>)>,
        validate_only: bool,
    ) -> Vec<Result<(), ApiError>> {
        let _guard = self.lock.lock().await;
        let mut topics = shard.metadata().topics.clone();
        let mut results = Vec::with_capacity(requests.len());
        for (name, count, assignments) in &requests {
            let result = (|| {
                let Some(topic) = topics.get(name) else {
                    return Err(ApiError::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("no topic named {name}"),
                    ));
                };
                if *count <= topic.partitions {
                    return Err(ApiError::new(
                        ResponseError::InvalidPartitions,
                        format!(
                            "topic {name} has {} partitions; the new count must be larger",
                            topic.partitions
                        ),
                    ));
                }
                if *count > TOPIC_PARTITIONS_MAX {
                    return Err(ApiError::new(
                        ResponseError::InvalidPartitions,
                        format!("a topic has at most {TOPIC_PARTITIONS_MAX} partitions"),
                    ));
                }
                if !assignments.is_empty() {
                    if assignments.len() as i32 != count - topic.partitions {
                        return Err(ApiError::new(
                            ResponseError::InvalidReplicaAssignment,
                            "one assignment per new partition is needed",
                        ));
                    }
                    let indexed: Vec<(i32, Vec<i32>)> = assignments
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (topic.partitions + i as i32, a.clone()))
                        .collect();
                    check_assignments(&indexed, topic.partitions, shard.config.node_id)?;
                }
                let mut grown = (**topic).clone();
                grown.partitions = *count;
                Ok(Arc::new(grown))
            })();
            results.push(result.map(|t| {
                topics.insert(t.name.clone(), t);
            }));
        }
        if !validate_only
            && results.iter().any(|r| r.is_ok())
            && let Err(e) = self.commit(shard, topics).await
        {
            let error = ApiError::new(ResponseError::UnknownServerError, format!("{e:#}"));
            return results.into_iter().map(|r| r.and(Err(error.clone()))).collect();
        }
        results
    }

    /// Changes topic settings; one result per entry.
    pub async fn alter_topic_configs(
        &self,
        shard: &Rc<Shard>,
        changes: Vec<(String, ConfigChange)>,
        validate_only: bool,
    ) -> Vec<Result<(), ApiError>> {
        let _guard = self.lock.lock().await;
        let mut topics = shard.metadata().topics.clone();
        let mut results = Vec::with_capacity(changes.len());
        for (name, change) in &changes {
            let result = (|| {
                let Some(topic) = topics.get(name) else {
                    return Err(ApiError::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("no topic named {name}"),
                    ));
                };
                let mut configs = match change {
                    ConfigChange::Replace(_) => BTreeMap::new(),
                    ConfigChange::Incremental(_) => topic.configs.clone(),
                };
                match change {
                    ConfigChange::Replace(entries) => {
                        for (key, value) in entries {
                            let Some(value) = value else { continue };
                            validate_setting(key, value).map_err(invalid_config)?;
                            configs.insert(key.clone(), value.clone());
                        }
                    }
                    ConfigChange::Incremental(ops) => {
                        for (key, op, value) in ops {
                            apply_incremental(&mut configs, key, *op, value.as_deref())?;
                        }
                    }
                }
                let mut changed = (**topic).clone();
                changed.configs = configs;
                Ok(Arc::new(changed))
            })();
            results.push(result.map(|t| {
                topics.insert(t.name.clone(), t);
            }));
        }
        if !validate_only
            && results.iter().any(|r| r.is_ok())
            && let Err(e) = self.commit(shard, topics).await
        {
            let error = ApiError::new(ResponseError::UnknownServerError, format!("{e:#}"));
            return results.into_iter().map(|r| r.and(Err(error.clone()))).collect();
        }
        results
    }

    /// Persists the next revision, then applies it on every shard.
    async fn commit(&self, shard: &Rc<Shard>, topics: BTreeMap<String, Arc<TopicMeta>>) -> anyhow::Result<()> {
        assert!(
            self.lock.is_locked(),
            "metadata changes are made under the controller lock"
        );
        let next = Arc::new(shard.metadata().with_topics(topics));
        persist(shard, &next).await?;
        broadcast(shard, next).await
    }
}

fn check_assignments(assignments: &[(i32, Vec<i32>)], first_index: i32, node_id: i32) -> Result<(), ApiError> {
    for (i, (index, replicas)) in assignments.iter().enumerate() {
        if *index != first_index + i as i32 {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                "assignments must cover consecutive partitions",
            ));
        }
        if replicas.as_slice() != [node_id] {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!("partition {index}: the only replica can be broker {node_id}"),
            ));
        }
    }
    Ok(())
}

fn apply_incremental(
    configs: &mut BTreeMap<String, String>,
    key: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), ApiError> {
    match op {
        0 => {
            let value =
                value.ok_or_else(|| ApiError::new(ResponseError::InvalidConfig, format!("SET {key} needs a value")))?;
            validate_setting(key, value).map_err(invalid_config)?;
            configs.insert(key.to_string(), value.to_string());
        }
        1 => {
            if crate::topic_config::topic_key(key).is_none() {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!("unknown topic setting {key}"),
                ));
            }
            configs.remove(key);
        }
        2 | 3 => {
            // Only list settings take APPEND/SUBTRACT; cleanup.policy is the
            // one list, and only "delete" is supported.
            let key_info = crate::topic_config::topic_key(key)
                .ok_or_else(|| ApiError::new(ResponseError::InvalidConfig, format!("unknown topic setting {key}")))?;
            if key_info.config_type != crate::topic_config::ConfigType::List {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!("{key} is not a list: APPEND and SUBTRACT do not apply"),
                ));
            }
            let value = value.unwrap_or("");
            let mut items: Vec<String> = configs
                .get(key)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_else(|| vec!["delete".to_string()]);
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if op == 2 {
                    if !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    }
                } else {
                    items.retain(|i| i != item);
                }
            }
            let joined = items.join(",");
            validate_setting(key, &joined).map_err(invalid_config)?;
            configs.insert(key.to_string(), joined);
        }
        other => {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                format!("unknown config operation {other}"),
            ));
        }
    }
    Ok(())
}

/// Writes the metadata file atomically.
pub async fn persist(shard: &Shard, metadata: &ClusterMetadata) -> anyhow::Result<()> {
    let path = metadata_path(&shard.config.data_dir);
    let dir = path.parent().expect("metadata file has a directory");
    shard
        .fs
        .create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let producer_id_next = shard.controller().producer_id_next();
    let json = serde_json::to_vec_pretty(&MetadataFile::from_metadata(
        metadata,
        shard.config.node_id,
        producer_id_next,
    ))?;
    write_file_atomic(&shard.fs, &path, &json)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

/// Applies a revision on every shard, waiting for all.
pub async fn broadcast(shard: &Rc<Shard>, next: Arc<ClusterMetadata>) -> anyhow::Result<()> {
    let applies: Vec<_> = (0..shard.count)
        .map(|target| {
            let next = next.clone();
            shard.invoke_on(target, move |s| async move { s.apply_metadata(next).await })
        })
        .collect();
    for r in sluice_storage::local_sync::join_bounded(applies, shard.count).await {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_operations() {
        let mut c = BTreeMap::new();
        apply_incremental(&mut c, "retention.ms", 0, Some("1000")).unwrap();
        assert_eq!(c.get("retention.ms").map(String::as_str), Some("1000"));
        assert!(apply_incremental(&mut c, "retention.ms", 0, Some("x")).is_err());
        apply_incremental(&mut c, "retention.ms", 1, None).unwrap();
        assert!(c.is_empty());
        apply_incremental(&mut c, "cleanup.policy", 2, Some("delete")).unwrap();
        assert_eq!(c.get("cleanup.policy").map(String::as_str), Some("delete"));
        assert!(apply_incremental(&mut c, "cleanup.policy", 2, Some("compact")).is_err());
        assert!(apply_incremental(&mut c, "retention.ms", 2, Some("1")).is_err());
        assert!(apply_incremental(&mut c, "retention.ms", 9, Some("1")).is_err());
    }

    #[test]
    fn assignments_must_name_this_broker_in_order() {
        assert!(check_assignments(&[(0, vec![1]), (1, vec![1])], 0, 1).is_ok());
        assert!(check_assignments(&[(0, vec![2])], 0, 1).is_err());
        assert!(check_assignments(&[(1, vec![1])], 0, 1).is_err());
        assert!(check_assignments(&[(0, vec![1, 1])], 0, 1).is_err());
    }
}

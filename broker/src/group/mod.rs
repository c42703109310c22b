//! The group coordinator: consumer groups and committed offsets.
//!
//! Each group lives on one shard: the owner of its group log
//! (`store::group_log_of`). Requests about a group, arriving on any
//! connection, are run there with `Shard::invoke_on`. The membership
//! protocol is `state::Group`; what must survive a restart (offset commits,
//! each completed assignment, emptied or deleted groups) is written to the
//! group log and acknowledged only once durable.

pub mod state;
pub mod store;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_protocol::ResponseError;
use sluice_storage::StorageError;
use tracing::warn;

use self::state::{Group, GroupLimits, GroupState, JoinOutcome, JoinRequest, Step, SyncOutcome};
use self::store::{Change, CommittedOffset, GroupLog, GroupRecord, PendingOffsets, group_log_of, split_state};
use crate::error::storage_error_code;
use crate::metadata::{ClusterMetadata, shard_of};
use crate::runtime;

/// The placement name of the group logs: group log `n` lives where a
/// partition `n` of this topic would.
pub const GROUP_LOGS_TOPIC: &str = "__consumer_offsets";
/// Longest commit metadata string (Kafka's `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// How often sessions and rebalance deadlines are checked.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Which shard coordinates a group.
pub fn coordinator_shard(group_id: &str, shard_count: usize) -> usize {
    shard_of(GROUP_LOGS_TOPIC, group_log_of(group_id), shard_count)
}

struct Entry {
    group: Group,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Offsets committed in open transactions, by producer id.
    pending: PendingOffsets,
}

impl Entry {
    fn new(group_id: &str) -> Entry {
        Entry {
            group: Group::new(group_id),
            offsets: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Applies a change of a committed or pending offset; returns the change
    /// that undoes it. (Membership changes live in `group`.)
    fn apply(&mut self, change: &Change) -> Change {
        let mut undo = change.clone();
        match (change, &mut undo) {
            (
                Change::Offset {
                    topic,
                    partition,
                    committed,
                    ..
                },
                Change::Offset {
                    committed: previous, ..
                },
            ) => {
                let key = (topic.clone(), *partition);
                *previous = match committed {
                    Some(c) => self.offsets.insert(key, c.clone()),
                    None => self.offsets.remove(&key),
                };
            }
            (
                Change::Pending {
                    producer_id,
                    topic,
                    partition,
                    committed,
                    ..
                },
                Change::Pending {
                    committed: previous, ..
                },
            ) => {
                let key = (topic.clone(), *partition);
                let parts = self.pending.entry(*producer_id).or_default();
                *previous = match committed {
                    Some(c) => parts.insert(key, c.clone()),
                    None => parts.remove(&key),
                };
                if parts.is_empty() {
                    self.pending.remove(producer_id);
                }
            }
            _ => unreachable!("only offset changes are applied to an entry"),
        }
        undo
    }
}

/// A group as DescribeGroups shows it.
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: bytes::Bytes,
    pub assignment: bytes::Bytes,
}

/// The coordinator's part of one shard.
pub struct GroupCoordinator {
    limits: GroupLimits,
    logs: RefCell<HashMap<i32, Rc<GroupLog>>>,
    groups: RefCell<HashMap<String, Entry>>,
}

pub struct CommitPart {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

impl GroupCoordinator {
    pub fn new(limits: GroupLimits) -> GroupCoordinator {
        GroupCoordinator {
            limits,
            logs: RefCell::new(HashMap::new()),
            groups: RefCell::new(HashMap::new()),
        }
    }

    /// Opens the group logs this shard owns and loads their groups.
    pub async fn open(&self, shard: &crate::shard::Shard) -> Result<(), StorageError> {
        let now = Instant::now();
        for index in 0..store::GROUP_LOG_PARTITIONS {
            if shard_of(GROUP_LOGS_TOPIC, index, shard.count) != shard.id {
                continue;
            }
            let (log, state) = GroupLog::open(
                &shard.fs,
                &shard.cache,
                &shard.config.data_dir,
                index,
                store::SNAPSHOT_INTERVAL_BYTES,
                runtime::now_ms(),
            )
            .await?;
            let log = Rc::new(log);
            let mut groups = self.groups.borrow_mut();
            for (id, (record, offsets, pending)) in split_state(state) {
                let group = match record {
                    Some(r) => Group::restore(&id, r.into_snapshot(), now),
                    None => Group::new(&id),
                };
                groups.insert(
                    id,
                    Entry {
                        group,
                        offsets,
                        pending,
                    },
                );
            }
            self.logs.borrow_mut().insert(index, log);
        }
        Ok(())
    }

    pub async fn close(&self) {
        let logs: Vec<Rc<GroupLog>> = self.logs.borrow().values().cloned().collect();
        for log in logs {
            if let Err(e) = log.kv.log.close().await {
                warn!(group_log = log.index, error = %e, "could not close a group log cleanly");
            }
        }
    }

    fn log_of(&self, group_id: &str) -> Rc<GroupLog> {
        let index = group_log_of(group_id);
        self.logs
            .borrow()
            .get(&index)
            .cloned()
            .unwrap_or_else(|| panic!("group log {index} is not on this shard: routed to the wrong shard"))
    }

    /// Writes changes (already applied in memory) and waits until durable.
    async fn write(&self, group_id: &str, changes: Vec<Change>) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        let log = self.log_of(group_id);
        let end = log.append(&changes, runtime::now_ms()).await?;
        log.wait_durable(end).await
    }

    fn group_change(&self, group_id: &str) -> Change {
        let groups = self.groups.borrow();
        Change::Group {
            group: group_id.to_string(),
            record: groups
                .get(group_id)
                .map(|e| GroupRecord::from_snapshot(&e.group.snapshot())),
        }
    }

    pub async fn join(&self, group_id: &str, request: JoinRequest) -> JoinOutcome {
        if group_id.is_empty() {
            return JoinOutcome::error(ResponseError::InvalidGroupId, &request.member_id);
        }
        let step = {
            let mut groups = self.groups.borrow_mut();
            let entry = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Entry::new(group_id));
            entry.group.join(request.clone(), Instant::now(), &self.limits)
        };
        match step {
            Step::Now(o) => o,
            Step::Later(rx) => rx
                .await
                .unwrap_or_else(|_| JoinOutcome::error(ResponseError::CoordinatorNotAvailable, &request.member_id)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, bytes::Bytes)>,
    ) -> SyncOutcome {
        let (step, persist) = {
            let mut groups = self.groups.borrow_mut();
            let Some(entry) = groups.get_mut(group_id) else {
                return SyncOutcome::error(ResponseError::UnknownMemberId);
            };
            entry.group.sync(
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
            )
        };
        if persist {
            let change = self.group_change(group_id);
            let result = self.write(group_id, vec![change]).await;
            if let Err(e) = &result {
                storage_error_code("persist group assignment", e);
            }
            if let Some(entry) = self.groups.borrow_mut().get_mut(group_id) {
                entry
                    .group
                    .finish_sync(generation, result.is_ok(), Instant::now(), &self.limits);
            }
        }
        match step {
            Step::Now(o) => o,
            Step::Later(rx) => rx
                .await
                .unwrap_or_else(|_| SyncOutcome::error(ResponseError::CoordinatorNotAvailable)),
        }
    }

    pub fn heartbeat(&self, group_id: &str, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        let mut groups = self.groups.borrow_mut();
        match groups.get_mut(group_id) {
            Some(e) => e.group.heartbeat(member_id, instance_id, generation, Instant::now()),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup: one error code per leaving member.
    pub async fn leave(&self, group_id: &str, members: Vec<(String, Option<String>)>) -> Vec<i16> {
        let (codes, emptied) = {
            let mut groups = self.groups.borrow_mut();
            let Some(e) = groups.get_mut(group_id) else {
                return vec![ResponseError::UnknownMemberId.code(); members.len()];
            };
            let now = Instant::now();
            let was_empty = e.group.state == GroupState::Empty;
            let codes: Vec<i16> = members
                .iter()
                .map(|(m, i)| e.group.leave(m, i.as_deref(), now, &self.limits).0)
                .collect();
            (codes, !was_empty && e.group.state == GroupState::Empty)
        };
        if emptied {
            let change = self.group_change(group_id);
            if let Err(e) = self.write(group_id, vec![change]).await {
                storage_error_code("persist empty group", &e);
            }
        }
        codes
    }

    /// OffsetCommit: one error code per part. `topic_partitions` says how
    /// many partitions a topic has (None: no such topic).
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        parts: Vec<CommitPart>,
        topic_partitions: impl Fn(&str) -> Option<i32>,
    ) -> Vec<i16> {
        if group_id.is_empty() {
            return vec![ResponseError::InvalidGroupId.code(); parts.len()];
        }
        let (codes, changes) = {
            let mut groups = self.groups.borrow_mut();
            if !groups.contains_key(group_id) {
                if generation >= 0 {
                    return vec![ResponseError::IllegalGeneration.code(); parts.len()];
                }
                groups.insert(group_id.to_string(), Entry::new(group_id));
            }
            let entry = groups.get_mut(group_id).expect("inserted above");
            if let Err(e) = entry.group.check_commit(member_id, instance_id, generation) {
                return vec![e.code(); parts.len()];
            }
            accept_commits(&parts, topic_partitions, |p, committed| Change::Offset {
                group: group_id.to_string(),
                topic: p.topic.clone(),
                partition: p.partition,
                committed: Some(committed),
            })
        };
        self.write_commits(group_id, changes, codes, "commit offsets").await
    }

    /// TxnOffsetCommit: offsets committed inside producer `producer_id`'s
    /// transaction, pending until its commit (or abort) marker.
    #[allow(clippy::too_many_arguments)]
    pub async fn txn_commit(
        &self,
        group_id: &str,
        producer_id: i64,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        parts: Vec<CommitPart>,
        topic_partitions: impl Fn(&str) -> Option<i32>,
    ) -> Vec<i16> {
        if group_id.is_empty() {
            return vec![ResponseError::InvalidGroupId.code(); parts.len()];
        }
        let (codes, changes) = {
            let mut groups = self.groups.borrow_mut();
            let entry = groups
                .entry(group_id.to_string())
                .or_insert_with(|| Entry::new(group_id));
            // From v3 the consumer's membership comes along and is checked,
            // so a zombie member cannot commit for its old generation.
            if (generation >= 0 || !member_id.is_empty())
                && let Err(e) = entry.group.check_commit(member_id, instance_id, generation)
            {
                return vec![e.code(); parts.len()];
            }
            accept_commits(&parts, topic_partitions, |p, committed| Change::Pending {
                group: group_id.to_string(),
                producer_id,
                topic: p.topic.clone(),
                partition: p.partition,
                committed: Some(committed),
            })
        };
        self.write_commits(group_id, changes, codes, "commit transactional offsets")
            .await
    }

    /// Makes accepted commits durable (see `write_offsets`); a storage
    /// fault becomes every accepted part's code.
    async fn write_commits(
        &self,
        group_id: &str,
        changes: Vec<Change>,
        mut codes: Vec<i16>,
        context: &str,
    ) -> Vec<i16> {
        if let Err(e) = self.write_offsets(group_id, changes).await {
            let code = storage_error_code(context, &e);
            for c in codes.iter_mut().filter(|c| **c == 0) {
                *c = code;
            }
        }
        codes
    }

    /// A transaction that committed offsets for the group ended: its pending
    /// offsets become committed (or are dropped, on abort). Durable on return.
    pub async fn complete_txn(&self, group_id: &str, producer_id: i64, commit: bool) -> Result<(), StorageError> {
        let changes: Vec<Change> = {
            let groups = self.groups.borrow();
            let Some(pending) = groups.get(group_id).and_then(|e| e.pending.get(&producer_id)) else {
                return Ok(());
            };
            let mut changes = Vec::with_capacity(pending.len() * 2);
            for ((t, p), c) in pending {
                changes.push(Change::Pending {
                    group: group_id.to_string(),
                    producer_id,
                    topic: t.clone(),
                    partition: *p,
                    committed: None,
                });
                if commit {
                    changes.push(Change::Offset {
                        group: group_id.to_string(),
                        topic: t.clone(),
                        partition: *p,
                        committed: Some(c.clone()),
                    });
                }
            }
            changes
        };
        // On failure they stay pending, as the log says: the coordinator
        // retries, and finds them here to complete them.
        self.write_offsets(group_id, changes).await
    }

    /// Applies offset changes to a group's entry and writes them; if the
    /// write fails, undoes them, so memory never shows what is not durable.
    /// The entry must exist.
    async fn write_offsets(&self, group_id: &str, changes: Vec<Change>) -> Result<(), StorageError> {
        let undo: Vec<Change> = {
            let mut groups = self.groups.borrow_mut();
            let entry = groups
                .get_mut(group_id)
                .expect("offsets change only in an existing group");
            changes.iter().map(|c| entry.apply(c)).collect()
        };
        let result = self.write(group_id, changes).await;
        if result.is_err()
            && let Some(entry) = self.groups.borrow_mut().get_mut(group_id)
        {
            for c in undo.iter().rev() {
                entry.apply(c);
            }
        }
        result
    }

    /// Whether any of the partitions has an offset pending in an open
    /// transaction (OffsetFetch's `require_stable`).
    pub fn has_pending(&self, group_id: &str, partitions: &[(String, i32)]) -> Vec<bool> {
        let groups = self.groups.borrow();
        let pending = groups.get(group_id).map(|e| &e.pending);
        partitions
            .iter()
            .map(|tp| pending.is_some_and(|p| p.values().any(|parts| parts.contains_key(tp))))
            .collect()
    }

    /// OffsetFetch: the committed offsets of the asked partitions, or of all
    /// the group has when `topics` is None.
    pub fn fetch(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        let groups = self.groups.borrow();
        let offsets = groups.get(group_id).map(|e| &e.offsets);
        match topics {
            Some(topics) => topics
                .into_iter()
                .flat_map(|(t, parts)| {
                    parts.into_iter().map(move |p| {
                        let c = offsets.and_then(|o| o.get(&(t.clone(), p))).cloned();
                        (t.clone(), p, c)
                    })
                })
                .collect(),
            None => offsets
                .map(|o| o.iter().map(|((t, p), c)| (t.clone(), *p, Some(c.clone()))).collect())
                .unwrap_or_default(),
        }
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.borrow();
        let e = groups.get(group_id)?;
        let g = &e.group;
        let protocol = g.protocol.clone().unwrap_or_default();
        let stable = matches!(g.state, GroupState::Stable);
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable || g.state == GroupState::CompletingRebalance {
                protocol.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        bytes::Bytes::new()
                    },
                })
                .collect(),
        })
    }

    /// (group id, protocol type, state) of every group on this shard.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups
            .borrow()
            .iter()
            .filter(|(_, e)| e.group.state != GroupState::Dead)
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.group.protocol_type.clone().unwrap_or_default(),
                    e.group.state,
                )
            })
            .collect()
    }

    /// DeleteGroups for one group: an error code.
    pub async fn delete(&self, group_id: &str) -> i16 {
        let changes = {
            let mut groups = self.groups.borrow_mut();
            let Some(e) = groups.get_mut(group_id) else {
                return ResponseError::GroupIdNotFound.code();
            };
            if !e.group.is_empty() {
                return ResponseError::NonEmptyGroup.code();
            }
            let mut changes: Vec<Change> = e
                .offsets
                .keys()
                .map(|(t, p)| Change::Offset {
                    group: group_id.to_string(),
                    topic: t.clone(),
                    partition: *p,
                    committed: None,
                })
                .collect();
            changes.extend(e.pending.iter().flat_map(|(pid, parts)| {
                parts.keys().map(move |(t, p)| Change::Pending {
                    group: group_id.to_string(),
                    producer_id: *pid,
                    topic: t.clone(),
                    partition: *p,
                    committed: None,
                })
            }));
            changes.push(Change::Group {
                group: group_id.to_string(),
                record: None,
            });
            e.group.kill();
            groups.remove(group_id);
            changes
        };
        match self.write(group_id, changes).await {
            Ok(()) => 0,
            Err(e) => storage_error_code("delete group", &e),
        }
    }

    /// OffsetDelete: a group error code and one code per partition.
    pub async fn delete_offsets(&self, group_id: &str, parts: Vec<(String, i32)>) -> (i16, Vec<i16>) {
        let (codes, changes) = {
            let mut groups = self.groups.borrow_mut();
            let Some(e) = groups.get_mut(group_id) else {
                return (ResponseError::GroupIdNotFound.code(), vec![0; parts.len()]);
            };
            let subscribed = e.group.subscribed_topics();
            if !e.group.is_empty() && subscribed.is_none() {
                return (ResponseError::NonEmptyGroup.code(), vec![0; parts.len()]);
            }
            let mut codes = Vec::with_capacity(parts.len());
            let mut changes = Vec::new();
            for (t, p) in &parts {
                if !e.group.is_empty() && subscribed.as_ref().is_some_and(|s| s.contains(t)) {
                    codes.push(ResponseError::GroupSubscribedToTopic.code());
                    continue;
                }
                codes.push(0);
                if e.offsets.contains_key(&(t.clone(), *p)) {
                    changes.push(Change::Offset {
                        group: group_id.to_string(),
                        topic: t.clone(),
                        partition: *p,
                        committed: None,
                    });
                }
            }
            (codes, changes)
        };
        match self.write_offsets(group_id, changes).await {
            Ok(()) => (0, codes),
            Err(e) => (storage_error_code("delete offsets", &e), codes),
        }
    }

    /// Session expiry and rebalance deadlines; groups that became Empty are
    /// persisted as such.
    pub async fn tick(&self) {
        let now = Instant::now();
        let emptied: Vec<String> = {
            let mut groups = self.groups.borrow_mut();
            groups
                .iter_mut()
                .filter_map(|(id, e)| e.group.tick(now, &self.limits).then(|| id.clone()))
                .collect()
        };
        for id in emptied {
            let change = self.group_change(&id);
            if let Err(e) = self.write(&id, vec![change]).await {
                storage_error_code("persist empty group", &e);
            }
        }
    }

    /// Forgets committed offsets of topics that no longer exist.
    pub async fn purge_deleted_topics(&self, metadata: &ClusterMetadata) {
        let doomed: Vec<(String, Vec<Change>)> = {
            let groups = self.groups.borrow();
            groups
                .iter()
                .filter_map(|(id, e)| {
                    let gone: Vec<(String, i32)> = e
                        .offsets
                        .keys()
                        .filter(|(t, p)| metadata.topic(t).is_none_or(|m| *p >= m.partitions))
                        .cloned()
                        .collect();
                    if gone.is_empty() {
                        return None;
                    }
                    let changes = gone
                        .into_iter()
                        .map(|(t, p)| Change::Offset {
                            group: id.clone(),
                            topic: t,
                            partition: p,
                            committed: None,
                        })
                        .collect();
                    Some((id.clone(), changes))
                })
                .collect()
        };
        for (id, changes) in doomed {
            if let Err(e) = self.write_offsets(&id, changes).await {
                storage_error_code("purge offsets of deleted topics", &e);
            }
        }
    }
}

/// Checks each commit part (metadata size, the partition exists); each
/// accepted one goes to `accept`, which records it and returns its change.
/// Returns one code per part and the changes.
fn accept_commits(
    parts: &[CommitPart],
    topic_partitions: impl Fn(&str) -> Option<i32>,
    mut accept: impl FnMut(&CommitPart, CommittedOffset) -> Change,
) -> (Vec<i16>, Vec<Change>) {
    let now_ms = runtime::now_ms();
    let mut codes = vec![0i16; parts.len()];
    let mut changes = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        if p.metadata.as_ref().is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX) {
            codes[i] = ResponseError::OffsetMetadataTooLarge.code();
            continue;
        }
        if !topic_partitions(&p.topic).is_some_and(|n| (0..n).contains(&p.partition)) {
            codes[i] = ResponseError::UnknownTopicOrPartition.code();
            continue;
        }
        let committed = CommittedOffset {
            offset: p.offset,
            leader_epoch: p.leader_epoch,
            metadata: p.metadata.clone(),
            commit_ms: now_ms,
        };
        changes.push(accept(p, committed));
    }
    (codes, changes)
}

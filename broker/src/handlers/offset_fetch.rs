//! OffsetFetch (v1-v9): committed offsets of a group (v8+: of several
//! groups), for the asked partitions or, with null topics, all of them.
//! Partitions without a commit get offset -1. With `require_stable` (v7+,
//! sent by read_committed consumers), a partition with an offset pending in
//! an open transaction answers UNSTABLE_OFFSET_COMMIT, and the client asks
//! again.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use sluice_protocol::kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::on_group_shard;
use crate::group::store::CommittedOffset;
use crate::shard::Shard;

/// A partition's committed offset, or the error code it answers.
type Fetched = Result<Option<CommittedOffset>, i16>;
type Offsets = Vec<(String, i32, Fetched)>;
type TopicOffsets = Vec<(String, Vec<(i32, Fetched)>)>;

async fn fetch_group(
    shard: &Rc<Shard>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Option<Offsets> {
    let gid = group_id.clone();
    on_group_shard(shard, &group_id, move |s| async move {
        let offsets = s.groups.fetch(&gid, topics);
        let unstable = if require_stable {
            let tps: Vec<(String, i32)> = offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
            s.groups.has_pending(&gid, &tps)
        } else {
            vec![false; offsets.len()]
        };
        offsets
            .into_iter()
            .zip(unstable)
            .map(|((t, p, c), unstable)| {
                let fetched = if unstable {
                    Err(ResponseError::UnstableOffsetCommit.code())
                } else {
                    Ok(c)
                };
                (t, p, fetched)
            })
            .collect()
    })
    .await
}

/// Topics in the order first seen, each with its partitions.
fn by_topic(offsets: Offsets) -> TopicOffsets {
    let mut out: TopicOffsets = Vec::new();
    for (t, p, c) in offsets {
        match out.iter_mut().find(|(name, _)| *name == t) {
            Some((_, parts)) => parts.push((p, c)),
            None => out.push((t, vec![(p, c)])),
        }
    }
    out
}

pub async fn handle(shard: &Rc<Shard>, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for g in request.groups {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let result = fetch_group(shard, g.group_id.0.to_string(), topics, request.require_stable).await;
            let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
            match result {
                Some(offsets) => {
                    out.topics = by_topic(offsets)
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, c)| {
                                            let (error_code, offset, epoch, metadata) = fields(c);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_error_code(error_code)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(metadata)
                                        })
                                        .collect(),
                                )
                        })
                        .collect()
                }
                None => out.error_code = ResponseError::CoordinatorNotAvailable.code(),
            }
            groups.push(out);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = request.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let group: GroupId = request.group_id;
    let mut response = OffsetFetchResponse::default();
    let require_stable = version >= 7 && request.require_stable;
    match fetch_group(shard, group.0.to_string(), topics, require_stable).await {
        Some(offsets) => {
            response.topics = by_topic(offsets)
                .into_iter()
                .map(|(t, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c)| {
                                    let (error_code, offset, epoch, metadata) = fields(c);
                                    let mut part = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(error_code)
                                        .with_committed_offset(offset)
                                        .with_metadata(metadata);
                                    if version >= 5 {
                                        part.committed_leader_epoch = epoch;
                                    }
                                    part
                                })
                                .collect(),
                        )
                })
                .collect()
        }
        None if version >= 2 => response.error_code = ResponseError::CoordinatorNotAvailable.code(),
        None => {}
    }
    response
}

/// Error code, offset, leader epoch and metadata of a commit, or "none"
/// (0, -1, -1, ""), or an error with no offset.
fn fields(c: Fetched) -> (i16, i64, i32, Option<StrBytes>) {
    match c {
        Ok(Some(c)) => (
            0,
            c.offset,
            c.leader_epoch,
            Some(StrBytes::from_string(c.metadata.unwrap_or_default())),
        ),
        Ok(None) => (0, -1, -1, Some(StrBytes::default())),
        Err(code) => (code, -1, -1, Some(StrBytes::default())),
    }
}

//! ListOffsets (v1-v7): per partition, the earliest offset (-2), the latest
//! (-1: the high watermark), the record with the largest timestamp (-3), or
//! the first record whose timestamp is at or after a given time. Lookups by
//! time use the log's time index to find the batch, then read its records.
//! With isolation level read_committed (v2+), "latest" is the last stable
//! offset, and nothing at or past it is found by time.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use sluice_protocol::kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use sluice_protocol::records;

use crate::error::storage_error_code;
use crate::shard::Shard;

pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;
pub const MAX_TIMESTAMP: i64 = -3;

struct Query {
    slot: (usize, usize),
    topic: String,
    partition: i32,
    timestamp: i64,
    read_committed: bool,
}

struct Answer {
    slot: (usize, usize),
    error_code: i16,
    offset: i64,
    timestamp: i64,
}

pub async fn handle(shard: &Rc<Shard>, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let metadata = shard.metadata();
    let mut response = ListOffsetsResponse::default();
    let mut by_owner: BTreeMap<usize, Vec<Query>> = BTreeMap::new();
    let mut answers = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let found = metadata.topic(&topic.name);
        let mut out = ListOffsetsTopicResponse::default().with_name(topic.name.clone());
        for (pi, p) in topic.partitions.iter().enumerate() {
            out.partitions.push(
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_leader_epoch(if version >= 4 {
                        super::offset_for_leader_epoch::LEADER_EPOCH
                    } else {
                        -1
                    }),
            );
            match found {
                Some(t) if (0..t.partitions).contains(&p.partition_index) => {
                    by_owner
                        .entry(shard.owner_of(&t.name, p.partition_index))
                        .or_default()
                        .push(Query {
                            slot: (ti, pi),
                            topic: t.name.clone(),
                            partition: p.partition_index,
                            timestamp: p.timestamp,
                            read_committed: version >= 2 && request.isolation_level == 1,
                        });
                }
                _ => answers.push(Answer {
                    slot: (ti, pi),
                    error_code: ResponseError::UnknownTopicOrPartition.code(),
                    offset: -1,
                    timestamp: -1,
                }),
            }
        }
        response.topics.push(out);
    }
    let calls: Vec<_> = by_owner
        .into_iter()
        .map(|(owner, queries)| {
            let slots: Vec<_> = queries.iter().map(|q| q.slot).collect();
            let call = shard.invoke_on(owner, move |s| async move { answer_on_owner(&s, queries).await });
            async move {
                call.await.unwrap_or_else(|_| {
                    slots
                        .into_iter()
                        .map(|slot| Answer {
                            slot,
                            error_code: ResponseError::NotLeaderOrFollower.code(),
                            offset: -1,
                            timestamp: -1,
                        })
                        .collect()
                })
            }
        })
        .collect();
    for a in sluice_storage::local_sync::join_bounded(calls, shard.count).await {
        answers.extend(a);
    }
    for a in answers {
        let p = &mut response.topics[a.slot.0].partitions[a.slot.1];
        p.error_code = a.error_code;
        p.offset = a.offset;
        p.timestamp = a.timestamp;
    }
    response
}

async fn answer_on_owner(shard: &Rc<Shard>, queries: Vec<Query>) -> Vec<Answer> {
    let mut out = Vec::with_capacity(queries.len());
    for q in queries {
        let answer = |error_code, offset, timestamp| Answer {
            slot: q.slot,
            error_code,
            offset,
            timestamp,
        };
        let Some(p) = shard.partition(&q.topic, q.partition) else {
            out.push(answer(ResponseError::NotLeaderOrFollower.code(), -1, -1));
            continue;
        };
        let start = p.log_start_offset().0;
        let latest = if q.read_committed {
            p.last_stable_offset().0
        } else {
            p.high_watermark().0
        };
        let found = match q.timestamp {
            EARLIEST => Ok(Some((start, -1))),
            LATEST => Ok(Some((latest, -1))),
            MAX_TIMESTAMP => find(&p, p.log.max_timestamp(), start, true).await,
            t if t >= 0 => find(&p, t, start, false).await,
            // -4 and -5 (tiered storage) are not served before v8.
            _ => Err(ResponseError::InvalidRequest.code()),
        };
        out.push(match found {
            Ok(Some((offset, _))) if (q.timestamp == MAX_TIMESTAMP || q.timestamp >= 0) && offset >= latest => {
                answer(0, -1, -1)
            }
            Ok(Some((offset, ts))) => answer(0, offset, ts),
            Ok(None) => answer(0, -1, -1),
            Err(code) => answer(code, -1, -1),
        });
    }
    out
}

/// The first record at or after `timestamp` (or, for `max`, the first with
/// exactly the largest timestamp), as (offset, timestamp).
async fn find(
    p: &crate::partition::Partition,
    timestamp: i64,
    start: i64,
    max: bool,
) -> Result<Option<(i64, i64)>, i16> {
    if timestamp == i64::MIN {
        return Ok(None);
    }
    let hit = p
        .log
        .find_by_timestamp(timestamp)
        .await
        .map_err(|e| storage_error_code("list offsets", &e))?;
    let Some(hit) = hit else { return Ok(None) };
    let bytes = hit.batch.to_bytes();
    let point = if max {
        records::max_timestamp(bytes, start)
    } else {
        records::first_at_or_after(bytes, timestamp, start)
    };
    match point {
        Ok(Some(r)) => Ok(Some((r.offset, r.timestamp))),
        // The batch's max timestamp qualified it, so a record should
        // qualify too; if not (a timestamp-less batch), the batch start is
        // the honest answer.
        Ok(None) => Ok(Some((hit.base_offset.0.max(start), hit.max_timestamp))),
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "cannot decode a stored batch");
            Err(ResponseError::CorruptMessage.code())
        }
    }
}

//! DeleteRecords (v0-v2): moves a partition's log start forward; offset -1
//! means the high watermark. Offsets below the new start are no longer
//! served, and whole segments below it are deleted. Durable on answer.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use sluice_protocol::kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use sluice_storage::Offset;

use crate::error::storage_error_code;
use crate::shard::Shard;

/// One partition to trim: its place in the response, the partition, the
/// requested new start.
type Ask = ((usize, usize), String, i32, i64);

pub async fn handle(shard: &Rc<Shard>, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let metadata = shard.metadata();
    let mut response = DeleteRecordsResponse::default();
    let mut by_owner: BTreeMap<usize, Vec<Ask>> = BTreeMap::new();
    let mut answers: Vec<((usize, usize), i16, i64)> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let found = metadata.topic(&topic.name);
        let mut out = DeleteRecordsTopicResult::default().with_name(topic.name.clone());
        for (pi, p) in topic.partitions.iter().enumerate() {
            out.partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1),
            );
            match found {
                Some(t) if (0..t.partitions).contains(&p.partition_index) => by_owner
                    .entry(shard.owner_of(&t.name, p.partition_index))
                    .or_default()
                    .push(((ti, pi), t.name.clone(), p.partition_index, p.offset)),
                _ => answers.push(((ti, pi), ResponseError::UnknownTopicOrPartition.code(), -1)),
            }
        }
        response.topics.push(out);
    }
    let calls: Vec<_> = by_owner
        .into_iter()
        .map(|(owner, asks)| {
            let slots: Vec<_> = asks.iter().map(|a| a.0).collect();
            let call = shard.invoke_on(owner, move |s| async move {
                let mut out = Vec::new();
                for (slot, topic, index, offset) in asks {
                    let Some(p) = s.partition(&topic, index) else {
                        out.push((slot, ResponseError::NotLeaderOrFollower.code(), -1));
                        continue;
                    };
                    let target = if offset == -1 {
                        p.high_watermark()
                    } else {
                        Offset(offset)
                    };
                    if target > p.high_watermark() || target.0 < 0 {
                        out.push((slot, ResponseError::OffsetOutOfRange.code(), p.log_start_offset().0));
                        continue;
                    }
                    match p.log.advance_start(target).await {
                        Ok(start) => out.push((slot, 0, start.0)),
                        Err(e) => out.push((slot, storage_error_code("delete records", &e), -1)),
                    }
                }
                out
            });
            async move {
                call.await.unwrap_or_else(|_| {
                    slots
                        .into_iter()
                        .map(|slot| (slot, ResponseError::NotLeaderOrFollower.code(), -1))
                        .collect()
                })
            }
        })
        .collect();
    for a in sluice_storage::local_sync::join_bounded(calls, shard.count).await {
        answers.extend(a);
    }
    for ((ti, pi), code, low) in answers {
        let p = &mut response.topics[ti].partitions[pi];
        p.error_code = code;
        p.low_watermark = low;
    }
    response
}

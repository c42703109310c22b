//! OffsetForLeaderEpoch (v2-v4): the end offset of a leader epoch, which
//! clients use to detect log truncation after a leader change. On a single
//! node every partition has had one leader, at epoch `LEADER_EPOCH`, since
//! it was created: the end of that epoch is the log end offset; a later
//! epoch is unknown (UNKNOWN_LEADER_EPOCH when claimed as current, an
//! undefined answer when asked about), an earlier one never existed.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use sluice_protocol::kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_storage::local_sync::join_bounded;

use crate::shard::Shard;

/// The leader epoch of every partition on a single node.
pub const LEADER_EPOCH: i32 = 0;
/// Kafka's answer for an epoch it has no end offset for.
const UNDEFINED_EPOCH: i32 = -1;
const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// One partition asked about (epoch `LEADER_EPOCH`): its place in the
/// response, the topic and the partition.
type Ask = ((usize, usize), String, i32);

pub async fn handle(shard: &Rc<Shard>, request: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let metadata = shard.metadata();
    let mut response = OffsetForLeaderEpochResponse::default();
    let mut by_owner: BTreeMap<usize, Vec<Ask>> = BTreeMap::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let found = metadata.topic(&topic.topic);
        let mut out = OffsetForLeaderTopicResult::default().with_topic(topic.topic.clone());
        for (pi, p) in topic.partitions.iter().enumerate() {
            let mut answer = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(UNDEFINED_EPOCH)
                .with_end_offset(UNDEFINED_EPOCH_OFFSET);
            match found {
                Some(t) if (0..t.partitions).contains(&p.partition) => {
                    if p.current_leader_epoch > LEADER_EPOCH {
                        answer.error_code = ResponseError::UnknownLeaderEpoch.code();
                    } else if p.leader_epoch == LEADER_EPOCH {
                        by_owner.entry(shard.owner_of(&t.name, p.partition)).or_default().push((
                            (ti, pi),
                            t.name.clone(),
                            p.partition,
                        ));
                    }
                }
                _ => answer.error_code = ResponseError::UnknownTopicOrPartition.code(),
            }
            out.partitions.push(answer);
        }
        response.topics.push(out);
    }
    let calls: Vec<_> = by_owner
        .into_iter()
        .map(|(owner, asks)| {
            let slots: Vec<(usize, usize)> = asks.iter().map(|(slot, _, _)| *slot).collect();
            let call = shard.invoke_on(owner, move |s| async move {
                asks.into_iter()
                    .map(|(slot, topic, partition)| match s.partition(&topic, partition) {
                        Some(p) => (slot, 0, p.log.end_offset().0),
                        None => (slot, ResponseError::NotLeaderOrFollower.code(), UNDEFINED_EPOCH_OFFSET),
                    })
                    .collect::<Vec<_>>()
            });
            async move {
                // An owner gone (the broker stopping) is not "no such
                // epoch", which clients would read as a truncated log.
                call.await.unwrap_or_else(|_| {
                    slots
                        .into_iter()
                        .map(|slot| (slot, ResponseError::NotLeaderOrFollower.code(), UNDEFINED_EPOCH_OFFSET))
                        .collect()
                })
            }
        })
        .collect();
    for answers in join_bounded(calls, shard.count).await {
        for ((ti, pi), error_code, end_offset) in answers {
            let p = &mut response.topics[ti].partitions[pi];
            p.error_code = error_code;
            if error_code == 0 {
                p.leader_epoch = LEADER_EPOCH;
                p.end_offset = end_offset;
            }
        }
    }
    response
}

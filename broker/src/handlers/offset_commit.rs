//! OffsetCommit (v2-v9): from group members (generation and member id
//! checked) or from consumers outside any group (generation -1). Each
//! commit is acknowledged once durable; metadata strings round-trip.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use sluice_protocol::kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::on_group_shard;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let parts = commit_parts!(request.topics);
    let count = parts.len();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id_or_member_epoch;
    let gid = group_id.clone();
    let codes = on_group_shard(shard, &group_id, move |s| async move {
        let metadata = s.metadata();
        s.groups
            .commit(&gid, &member_id, instance_id.as_deref(), generation, parts, |t| {
                metadata.topic(t).map(|m| m.partitions)
            })
            .await
    })
    .await
    .unwrap_or_else(|| vec![ResponseError::CoordinatorNotAvailable.code(); count]);
    let topics = commit_response_topics!(
        request.topics,
        codes,
        OffsetCommitResponseTopic,
        OffsetCommitResponsePartition
    );
    OffsetCommitResponse::default().with_topics(topics)
}

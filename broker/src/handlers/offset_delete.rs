//! OffsetDelete (v0): forgets committed offsets of a group, except for
//! topics its live members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC).

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use sluice_protocol::kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::on_group_shard;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    let parts: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let count = parts.len();
    let gid = group_id.clone();
    let (error, codes) = on_group_shard(shard, &group_id, move |s| async move {
        s.groups.delete_offsets(&gid, parts).await
    })
    .await
    .unwrap_or((ResponseError::CoordinatorNotAvailable.code(), vec![0; count]));
    let topics = commit_response_topics!(
        request.topics,
        codes,
        OffsetDeleteResponseTopic,
        OffsetDeleteResponsePartition
    );
    OffsetDeleteResponse::default()
        .with_error_code(error)
        .with_topics(topics)
}

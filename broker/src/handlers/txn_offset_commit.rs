//! TxnOffsetCommit (v0-v3): a transactional producer commits a consumer
//! group's offsets inside its transaction. They stay pending, invisible to
//! OffsetFetch, until the transaction's marker makes them committed (or
//! drops them, on abort). From v3 the consumer's generation and member id
//! are checked, so a zombie cannot commit.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use sluice_protocol::kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::on_group_shard;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    let parts = commit_parts!(request.topics);
    let count = parts.len();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id;
    let producer_id = request.producer_id.0;
    let gid = group_id.clone();
    let codes = on_group_shard(shard, &group_id, move |s| async move {
        let metadata = s.metadata();
        s.groups
            .txn_commit(
                &gid,
                producer_id,
                &member_id,
                instance_id.as_deref(),
                generation,
                parts,
                |t| metadata.topic(t).map(|m| m.partitions),
            )
            .await
    })
    .await
    .unwrap_or_else(|| vec![ResponseError::CoordinatorNotAvailable.code(); count]);
    let topics = commit_response_topics!(
        request.topics,
        codes,
        TxnOffsetCommitResponseTopic,
        TxnOffsetCommitResponsePartition
    );
    TxnOffsetCommitResponse::default().with_topics(topics)
}

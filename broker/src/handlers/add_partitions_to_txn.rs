//! AddPartitionsToTxn (v0-v3): the partitions a transactional producer is
//! about to write join its open transaction, durably, before it writes.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use sluice_protocol::kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use super::{fenced_for_version, on_txn_shard};
use crate::shard::Shard;

const PRODUCER_FENCED_MIN_VERSION: i16 = 2;

pub async fn handle(shard: &Rc<Shard>, request: AddPartitionsToTxnRequest, version: i16) -> AddPartitionsToTxnResponse {
    let id = request.v3_and_below_transactional_id.0.to_string();
    let parts: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect();
    let count = parts.len();
    let (pid, epoch) = (request.v3_and_below_producer_id.0, request.v3_and_below_producer_epoch);
    let tid = id.clone();
    let codes = on_txn_shard(shard, &id, move |s| async move {
        s.txns.add_partitions(&s, &tid, pid, epoch, parts).await
    })
    .await
    .unwrap_or_else(|| vec![ResponseError::CoordinatorNotAvailable.code(); count]);
    let mut codes = codes.into_iter();
    let results = request
        .v3_and_below_topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = codes.next().expect("one code per partition");
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(fenced_for_version(code, version, PRODUCER_FENCED_MIN_VERSION))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name)
                .with_results_by_partition(partitions)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

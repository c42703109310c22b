//! DescribeTransactions (v0): each transactional id's state, producer,
//! timeout, start time and partitions, from the shard that coordinates it.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use sluice_protocol::kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::on_txn_shard;
use crate::shard::Shard;
use crate::txn::state::TxnMeta;

pub async fn handle(shard: &Rc<Shard>, request: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(request.transactional_ids.len());
    for id in request.transactional_ids {
        let key = id.0.to_string();
        let k = key.clone();
        let found: Option<Option<TxnMeta>> =
            on_txn_shard(shard, &key, move |s| async move { s.txns.describe(&k) }).await;
        states.push(match found {
            None => TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
            Some(None) => TransactionState::default()
                .with_transactional_id(id)
                .with_error_code(ResponseError::TransactionalIdNotFound.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
            Some(Some(meta)) => describe(id, &meta),
        });
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

fn describe(id: TransactionalId, meta: &TxnMeta) -> TransactionState {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in &meta.partitions {
        by_topic.entry(t).or_default().push(*p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(t, partitions)| {
            TopicData::default()
                .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                .with_partitions(partitions)
        })
        .collect();
    TransactionState::default()
        .with_transactional_id(id)
        .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
        .with_transaction_timeout_ms(meta.timeout_ms)
        .with_transaction_start_time_ms(meta.start_ms)
        .with_producer_id(ProducerId(meta.producer_id))
        .with_producer_epoch(meta.producer_epoch)
        .with_topics(topics)
}

//! ListTransactions (v0-v1): the transactional ids of every shard, filtered
//! by state, by producer id, and (v1) by how long they have been running.

use std::rc::Rc;

use sluice_protocol::kafka_protocol::messages::list_transactions_response::TransactionState;
use sluice_protocol::kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use sluice_storage::local_sync::join_bounded;

use crate::runtime;
use crate::shard::Shard;
use crate::txn::state::TxnState;

const STATES: [TxnState; 6] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
];

pub async fn handle(shard: &Rc<Shard>, request: ListTransactionsRequest, version: i16) -> ListTransactionsResponse {
    let unknown_state_filters: Vec<StrBytes> = request
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.name() == f.as_str()))
        .cloned()
        .collect();
    // As Kafka: a duration filter keeps only ids whose transaction started
    // longer ago than it; -1 (and v0) means no filter.
    let min_duration_ms = if version >= 1 { request.duration_filter } else { -1 };
    let now = runtime::now_ms();
    let calls: Vec<_> = (0..shard.count)
        .map(|target| shard.invoke_on(target, |s| async move { s.txns.list() }))
        .collect();
    let mut states = Vec::new();
    for listed in join_bounded(calls, shard.count).await.into_iter().flatten() {
        for (id, meta) in listed {
            if !request.state_filters.is_empty()
                && !request.state_filters.iter().any(|f| f.as_str() == meta.state.name())
            {
                continue;
            }
            if !request.producer_id_filters.is_empty()
                && !request.producer_id_filters.contains(&ProducerId(meta.producer_id))
            {
                continue;
            }
            if min_duration_ms >= 0 && now - meta.start_ms <= min_duration_ms {
                continue;
            }
            states.push(
                TransactionState::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_transaction_state(StrBytes::from_static_str(meta.state.name())),
            );
        }
    }
    states.sort_by(|a, b| a.transactional_id.0.cmp(&b.transactional_id.0));
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown_state_filters)
        .with_transaction_states(states)
}

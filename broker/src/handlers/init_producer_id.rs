//! InitProducerId (v0-v4): a producer id for an idempotent producer (fresh
//! each time, durably never reused), or the id and a bumped epoch for a
//! transactional id from its coordinator, fencing earlier incarnations.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tracing::warn;

use super::{fenced_for_version, on_txn_shard};
use crate::shard::Shard;

/// From this version on, clients understand PRODUCER_FENCED.
const PRODUCER_FENCED_MIN_VERSION: i16 = 4;

pub async fn handle(shard: &Rc<Shard>, request: InitProducerIdRequest, version: i16) -> InitProducerIdResponse {
    let result = match request.transactional_id.as_ref().map(|t| t.0.to_string()) {
        None => match shard.new_producer_id().await {
            Ok(pid) => Ok((pid, 0)),
            Err(e) => {
                warn!(error = %e, "could not allocate a producer id");
                Err(ResponseError::CoordinatorNotAvailable)
            }
        },
        Some(id) if id.is_empty() => Err(ResponseError::InvalidRequest),
        Some(id) => {
            let hint =
                (version >= 3 && request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
            let timeout_ms = request.transaction_timeout_ms;
            let tid = id.clone();
            on_txn_shard(shard, &id, move |s| async move {
                s.txns.init_producer_id(&s, &tid, timeout_ms, hint).await
            })
            .await
            .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
        }
    };
    match result {
        Ok((pid, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch),
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(fenced_for_version(e.code(), version, PRODUCER_FENCED_MIN_VERSION))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

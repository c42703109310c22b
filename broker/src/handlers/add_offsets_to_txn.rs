//! AddOffsetsToTxn (v0-v3): a consumer group's offsets join the open
//! transaction; the producer then commits them with TxnOffsetCommit.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::{fenced_for_version, on_txn_shard};
use crate::shard::Shard;

const PRODUCER_FENCED_MIN_VERSION: i16 = 2;

pub async fn handle(shard: &Rc<Shard>, request: AddOffsetsToTxnRequest, version: i16) -> AddOffsetsToTxnResponse {
    let id = request.transactional_id.0.to_string();
    let group = request.group_id.0.to_string();
    let code = if group.is_empty() {
        ResponseError::InvalidGroupId.code()
    } else {
        let (pid, epoch) = (request.producer_id.0, request.producer_epoch);
        let tid = id.clone();
        on_txn_shard(shard, &id, move |s| async move {
            s.txns.add_offsets(&tid, pid, epoch, &group).await
        })
        .await
        .unwrap_or(ResponseError::CoordinatorNotAvailable.code())
    };
    AddOffsetsToTxnResponse::default().with_error_code(fenced_for_version(code, version, PRODUCER_FENCED_MIN_VERSION))
}

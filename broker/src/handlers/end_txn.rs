//! EndTxn (v0-v3): commit or abort. Answered once the decision and every
//! marker it needs are durable.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::{fenced_for_version, on_txn_shard};
use crate::shard::Shard;

const PRODUCER_FENCED_MIN_VERSION: i16 = 2;

pub async fn handle(shard: &Rc<Shard>, request: EndTxnRequest, version: i16) -> EndTxnResponse {
    let id = request.transactional_id.0.to_string();
    let (pid, epoch, commit) = (request.producer_id.0, request.producer_epoch, request.committed);
    let tid = id.clone();
    let code = on_txn_shard(shard, &id, move |s| async move {
        s.txns.end_txn(&s, &tid, pid, epoch, commit).await
    })
    .await
    .unwrap_or(ResponseError::CoordinatorNotAvailable.code());
    EndTxnResponse::default().with_error_code(fenced_for_version(code, version, PRODUCER_FENCED_MIN_VERSION))
}

//! SyncGroup (v0-v5): members wait for the leader's assignment; the leader's
//! is persisted before anyone gets theirs.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::on_group_shard;
use crate::group::state::SyncOutcome;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.as_ref().map(|s| s.to_string());
    let protocol_type = request.protocol_type.as_ref().map(|s| s.to_string());
    let protocol_name = request.protocol_name.as_ref().map(|s| s.to_string());
    let assignments: Vec<(String, bytes::Bytes)> = request
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let generation = request.generation_id;
    let gid = group_id.clone();
    let outcome = on_group_shard(shard, &group_id, move |s| async move {
        let stopped = async {
            s.stopped().await;
            SyncOutcome::error(ResponseError::NotCoordinator)
        };
        let sync = s.groups.sync(
            &gid,
            &member_id,
            instance_id.as_deref(),
            generation,
            protocol_type.as_deref(),
            protocol_name.as_deref(),
            assignments,
        );
        futures_lite::future::or(sync, stopped).await
    })
    .await
    .unwrap_or_else(|| SyncOutcome::error(ResponseError::CoordinatorNotAvailable));
    let mut response = SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_assignment(outcome.assignment);
    if version >= 5 {
        response.protocol_type = outcome.protocol_type.map(StrBytes::from_string);
        response.protocol_name = outcome.protocol_name.map(StrBytes::from_string);
    }
    response
}

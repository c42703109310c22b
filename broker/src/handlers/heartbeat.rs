//! Heartbeat (v0-v4): keeps a member's session; REBALANCE_IN_PROGRESS tells
//! it to rejoin.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::on_group_shard;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id;
    let gid = group_id.clone();
    let code = on_group_shard(shard, &group_id, move |s| async move {
        s.groups.heartbeat(&gid, &member_id, instance_id.as_deref(), generation)
    })
    .await
    .unwrap_or(ResponseError::CoordinatorNotAvailable.code());
    HeartbeatResponse::default().with_error_code(code)
}

//! LeaveGroup (v0-v5): one member (v0-v2) or several by id or instance id
//! (v3+); the rest of the group rebalances.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::leave_group_response::MemberResponse;
use sluice_protocol::kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::on_group_shard;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let count = leaving.len();
    let asked = leaving.clone();
    let gid = group_id.clone();
    let codes = on_group_shard(
        shard,
        &group_id,
        move |s| async move { s.groups.leave(&gid, leaving).await },
    )
    .await
    .unwrap_or_else(|| vec![ResponseError::CoordinatorNotAvailable.code(); count]);
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes[0]);
    }
    LeaveGroupResponse::default().with_members(
        asked
            .into_iter()
            .zip(codes)
            .map(|((m, i), code)| {
                MemberResponse::default()
                    .with_member_id(m.into())
                    .with_group_instance_id(i.map(Into::into))
                    .with_error_code(code)
            })
            .collect(),
    )
}

//! JoinGroup (v0-v9), run on the group's coordinating shard. The answer
//! waits until the rebalance completes (every member rejoined, or the
//! rebalance timeout passed).

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use sluice_protocol::kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::{RequestContext, on_group_shard};
use crate::group::state::{JoinOutcome, JoinRequest};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    ctx: &RequestContext,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: ctx.client_id.clone(),
        client_host: format!("/{}", ctx.peer.ip()),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        version,
    };
    let member_id = join.member_id.clone();
    let gid = group_id.clone();
    let outcome = on_group_shard(shard, &group_id, move |s| async move {
        // A join may wait minutes for a rebalance; a stopping broker answers
        // NOT_COORDINATOR instead, and the client finds it again.
        let member = join.member_id.clone();
        futures_lite::future::or(s.groups.join(&gid, join), async {
            s.stopped().await;
            JoinOutcome::error(ResponseError::NotCoordinator, &member)
        })
        .await
    })
    .await
    .unwrap_or_else(|| JoinOutcome::error(ResponseError::CoordinatorNotAvailable, &member_id));
    let mut response = JoinGroupResponse::default()
        .with_error_code(outcome.error)
        .with_generation_id(outcome.generation)
        .with_protocol_name(outcome.protocol_name.map(StrBytes::from_string))
        .with_leader(StrBytes::from_string(outcome.leader))
        .with_member_id(StrBytes::from_string(outcome.member_id))
        .with_members(
            outcome
                .members
                .into_iter()
                .map(|m| {
                    let mut member = JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_metadata(m.metadata);
                    if version >= 5 {
                        member.group_instance_id = m.instance_id.map(StrBytes::from_string);
                    }
                    member
                })
                .collect(),
        );
    if version >= 7 {
        response.protocol_type = outcome.protocol_type.map(StrBytes::from_string);
    }
    if version >= 9 {
        response.skip_assignment = outcome.skip_assignment;
    }
    if version < 7 && response.protocol_name.is_none() {
        // Not nullable before v7.
        response.protocol_name = Some(StrBytes::default());
    }
    response
}

//! DescribeGroups (v0-v5): state, protocol and members of each group. An
//! unknown group is described as Dead, as Kafka does.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use sluice_protocol::kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::on_group_shard;
use crate::shard::Shard;

/// Operations on a group, as an authorized-operations bitfield: READ,
/// DELETE, DESCRIBE (no authorization in Sluice: all allowed).
const GROUP_OPERATIONS_ALL: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub async fn handle(shard: &Rc<Shard>, request: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let mut out = Vec::with_capacity(request.groups.len());
    for group in request.groups {
        let id = group.0.to_string();
        let gid = id.clone();
        let described = on_group_shard(shard, &id, move |s| async move {
            s.groups.describe(&gid).map(|d| {
                let members: Vec<_> = d
                    .members
                    .into_iter()
                    .map(|m| {
                        (
                            m.member_id,
                            m.instance_id,
                            m.client_id,
                            m.client_host,
                            m.metadata,
                            m.assignment,
                        )
                    })
                    .collect();
                (d.state.name(), d.protocol_type, d.protocol, members)
            })
        })
        .await;
        let mut g = DescribedGroup::default().with_group_id(group);
        if version >= 3 {
            g.authorized_operations = if request.include_authorized_operations {
                GROUP_OPERATIONS_ALL
            } else {
                i32::MIN
            };
        }
        match described {
            None => g.error_code = ResponseError::CoordinatorNotAvailable.code(),
            Some(None) => g.group_state = StrBytes::from_static_str("Dead"),
            Some(Some((state, protocol_type, protocol, members))) => {
                g.group_state = StrBytes::from_static_str(state);
                g.protocol_type = StrBytes::from_string(protocol_type);
                g.protocol_data = StrBytes::from_string(protocol);
                g.members = members
                    .into_iter()
                    .map(
                        |(member_id, instance_id, client_id, client_host, metadata, assignment)| {
                            let mut m = DescribedGroupMember::default()
                                .with_member_id(StrBytes::from_string(member_id))
                                .with_client_id(StrBytes::from_string(client_id))
                                .with_client_host(StrBytes::from_string(client_host))
                                .with_member_metadata(metadata)
                                .with_member_assignment(assignment);
                            if version >= 4 {
                                m.group_instance_id = instance_id.map(StrBytes::from_string);
                            }
                            m
                        },
                    )
                    .collect();
            }
        }
        out.push(g);
    }
    DescribeGroupsResponse::default().with_groups(out)
}

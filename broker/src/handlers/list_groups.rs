//! ListGroups (v0-v5): the groups of every shard, filtered by state (v4+)
//! and type (v5: only "classic" groups exist).

use std::rc::Rc;

use sluice_protocol::kafka_protocol::messages::list_groups_response::ListedGroup;
use sluice_protocol::kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let calls: Vec<_> = (0..shard.count)
        .map(|target| shard.invoke_on(target, |s| async move { s.groups.list() }))
        .collect();
    let states: Vec<String> = request.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = request.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let mut groups = Vec::new();
    for listed in sluice_storage::local_sync::join_bounded(calls, shard.count)
        .await
        .into_iter()
        .flatten()
    {
        for (id, protocol_type, state) in listed {
            if !states.is_empty() && !states.contains(&state.name().to_lowercase()) {
                continue;
            }
            if !types.is_empty() && !types.iter().any(|t| t == "classic") {
                continue;
            }
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(id)))
                .with_protocol_type(StrBytes::from_string(protocol_type));
            if version >= 4 {
                g.group_state = StrBytes::from_static_str(state.name());
            }
            if version >= 5 {
                g.group_type = StrBytes::from_static_str("classic");
            }
            groups.push(g);
        }
    }
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    ListGroupsResponse::default().with_groups(groups)
}

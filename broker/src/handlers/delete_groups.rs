//! DeleteGroups (v0-v2): only groups without members; their committed
//! offsets go with them.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use sluice_protocol::kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::on_group_shard;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group in request.groups_names {
        let id = group.0.to_string();
        let gid = id.clone();
        let code = on_group_shard(shard, &id, move |s| async move { s.groups.delete(&gid).await })
            .await
            .unwrap_or(ResponseError::CoordinatorNotAvailable.code());
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

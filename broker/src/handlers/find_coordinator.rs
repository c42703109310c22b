//! FindCoordinator (v0-v5): on a single node, every group's (and every
//! transactional id's) coordinator is this broker. From v4 several keys are
//! answered at once.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::find_coordinator_response::Coordinator;
use sluice_protocol::kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::shard::Shard;

/// Key types: consumer group, transactional id.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn handle(shard: &Rc<Shard>, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let c = &shard.config;
    let host = StrBytes::from_string(c.advertised_host.clone());
    let supported = matches!(request.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    let error = if supported {
        0
    } else {
        ResponseError::InvalidRequest.code()
    };
    let message = (!supported).then(|| StrBytes::from_string(format!("unknown key type {}", request.key_type)));
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut out = Coordinator::default()
                    .with_key(key)
                    .with_error_code(error)
                    .with_error_message(message.clone());
                if supported {
                    out = out
                        .with_node_id(BrokerId(c.node_id))
                        .with_host(host.clone())
                        .with_port(c.advertised_port);
                }
                out
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let mut response = FindCoordinatorResponse::default().with_error_code(error);
    if version >= 1 {
        response.error_message = message;
    }
    if supported {
        response = response
            .with_node_id(BrokerId(c.node_id))
            .with_host(host)
            .with_port(c.advertised_port);
    }
    response
}

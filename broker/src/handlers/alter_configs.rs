//! AlterConfigs (v0-v2: a topic's settings become exactly those given) and
//! IncrementalAlterConfigs (v0-v1: SET, DELETE, APPEND, SUBTRACT per
//! setting). Topic settings only; broker settings are static.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    alter_configs_response, incremental_alter_configs_response,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::on_controller;
use crate::controller::ConfigChange;
use crate::error::ApiError;
use crate::shard::Shard;

/// Sends the topic changes to the controller; other resources get an error.
async fn alter(
    shard: &Rc<Shard>,
    resources: Vec<(i8, String, ConfigChange)>,
    validate_only: bool,
) -> Vec<Result<(), ApiError>> {
    let mut results: Vec<Option<Result<(), ApiError>>> = vec![None; resources.len()];
    let mut topic_changes = Vec::new();
    let mut topic_positions = Vec::new();
    for (i, (kind, name, change)) in resources.into_iter().enumerate() {
        match kind {
            RESOURCE_TOPIC => {
                topic_positions.push(i);
                topic_changes.push((name, change));
            }
            RESOURCE_BROKER => {
                results[i] = Some(Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    "broker settings are static in Sluice: set them by flag, environment or config file",
                )))
            }
            other => {
                results[i] = Some(Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} has no settings in Sluice"),
                )))
            }
        }
    }
    if !topic_changes.is_empty() {
        let count = topic_changes.len();
        let topic_results = on_controller(shard, move |s| async move {
            s.controller()
                .alter_topic_configs(&s, topic_changes, validate_only)
                .await
        })
        .await
        .unwrap_or_else(|| vec![Err(ApiError::code(ResponseError::NotController)); count]);
        for (pos, r) in topic_positions.into_iter().zip(topic_results) {
            results[pos] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every resource answered"))
        .collect()
}

pub async fn handle_alter(shard: &Rc<Shard>, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources = request
        .resources
        .iter()
        .map(|r| {
            let entries = r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect();
            (
                r.resource_type,
                r.resource_name.to_string(),
                ConfigChange::Replace(entries),
            )
        })
        .collect();
    let results = alter(shard, resources, request.validate_only).await;
    let mut response = AlterConfigsResponse::default();
    for (r, result) in request.resources.into_iter().zip(results) {
        let mut out = alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        if let Err(e) = result {
            out.error_code = e.code;
            out.error_message = e.message.map(StrBytes::from_string);
        }
        response.responses.push(out);
    }
    response
}

pub async fn handle_incremental(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = request
        .resources
        .iter()
        .map(|r| {
            let ops = r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect();
            (
                r.resource_type,
                r.resource_name.to_string(),
                ConfigChange::Incremental(ops),
            )
        })
        .collect();
    let results = alter(shard, resources, request.validate_only).await;
    let mut response = IncrementalAlterConfigsResponse::default();
    for (r, result) in request.resources.into_iter().zip(results) {
        let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        if let Err(e) = result {
            out.error_code = e.code;
            out.error_message = e.message.map(StrBytes::from_string);
        }
        response.responses.push(out);
    }
    response
}

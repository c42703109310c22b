//! CreatePartitions (v0-v3): raises a topic's partition count.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use sluice_protocol::kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::on_controller;
use crate::error::ApiError;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let asks: Vec<(String, i32, Vec<Vec<i32>>)> = request
        .topics
        .iter()
        .map(|t| {
            let assignments = t
                .assignments
                .iter()
                .flatten()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect();
            (t.name.0.to_string(), t.count, assignments)
        })
        .collect();
    let validate_only = request.validate_only;
    let count = asks.len();
    let results = on_controller(shard, move |s| async move {
        s.controller().create_partitions(&s, asks, validate_only).await
    })
    .await
    .unwrap_or_else(|| vec![Err(ApiError::code(ResponseError::NotController)); count]);
    let mut response = CreatePartitionsResponse::default();
    for (t, r) in request.topics.into_iter().zip(results) {
        let mut out = CreatePartitionsTopicResult::default().with_name(t.name);
        if let Err(e) = r {
            out.error_code = e.code;
            out.error_message = e.message.map(StrBytes::from_string);
        }
        response.results.push(out);
    }
    response
}

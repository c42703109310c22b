//! CreateTopics (v2-v7): validated and created by the controller, which
//! answers once every shard has opened the new partitions.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use sluice_protocol::kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::on_controller;
use crate::controller::NewTopic;
use crate::error::ApiError;
use crate::shard::Shard;
use crate::topic_config::describe_topic;

pub async fn handle(shard: &Rc<Shard>, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let topics: Vec<NewTopic> = request
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.0.to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| (a.partition_index, a.broker_ids.iter().map(|b| b.0).collect()))
                .collect(),
            configs: t
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let validate_only = request.validate_only;
    let count = topics.len();
    let results = on_controller(shard, move |s| async move {
        s.controller().create_topics(&s, topics, validate_only).await
    })
    .await
    .unwrap_or_else(|| vec![Err(ApiError::code(ResponseError::NotController)); count]);
    let defaults = &shard.config.topic_defaults;
    let mut response = CreateTopicsResponse::default();
    let mut answered = std::collections::HashSet::new();
    for (requested, result) in request.topics.into_iter().zip(results) {
        // A name given twice gets one answer (INVALID_REQUEST), as in
        // Kafka; clients refuse a response naming a topic twice.
        if !answered.insert(requested.name.0.to_string()) {
            continue;
        }
        let mut out = CreatableTopicResult::default().with_name(requested.name);
        match result {
            Ok(topic) => {
                if version >= 7 {
                    out.topic_id = topic.id;
                }
                if version >= 5 {
                    out.num_partitions = topic.partitions;
                    out.replication_factor = 1;
                    out.configs = Some(
                        describe_topic(defaults, &topic.configs)
                            .into_iter()
                            .map(|c| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_string(c.name))
                                    .with_value(Some(StrBytes::from_string(c.value)))
                                    .with_read_only(c.read_only)
                                    .with_config_source(c.source as i8)
                            })
                            .collect(),
                    );
                }
            }
            Err(e) => {
                out.error_code = e.code;
                out.error_message = e.message.map(StrBytes::from_string);
            }
        }
        response.topics.push(out);
    }
    response
}

//! DeleteTopics (v1-v6): by name, or by topic id from v6. The controller
//! removes the topic from the metadata; each owning shard closes the
//! partitions' logs and deletes their files before the answer goes out.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use sluice_protocol::kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::on_controller;
use crate::error::ApiError;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let metadata = shard.metadata();
    // (name as asked, id as asked, resolved name)
    let asked: Vec<(Option<TopicName>, Uuid, Option<String>)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| {
                let resolved = match &t.name {
                    Some(n) => Some(n.0.to_string()),
                    None => metadata.topic_by_id(&t.topic_id).map(|m| m.name.clone()),
                };
                (t.name.clone(), t.topic_id, resolved)
            })
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.clone()), Uuid::nil(), Some(n.0.to_string())))
            .collect()
    };
    let names: Vec<String> = asked.iter().filter_map(|(_, _, n)| n.clone()).collect();
    let count = names.len();
    let mut results = on_controller(
        shard,
        move |s| async move { s.controller().delete_topics(&s, names).await },
    )
    .await
    .unwrap_or_else(|| vec![Err(ApiError::code(ResponseError::NotController)); count])
    .into_iter();
    let mut response = DeleteTopicsResponse::default();
    for (name, id, resolved) in asked {
        let mut out = DeletableTopicResult::default()
            .with_name(name.or_else(|| resolved.clone().map(|n| TopicName(StrBytes::from_string(n)))));
        if version >= 6 {
            out.topic_id = id;
        }
        let result = match resolved {
            Some(_) => results.next().expect("one result per resolved name"),
            None => Err(ApiError::code(ResponseError::UnknownTopicId)),
        };
        match result {
            Ok(deleted_id) => {
                if version >= 6 {
                    out.topic_id = deleted_id;
                }
            }
            Err(e) => {
                out.error_code = e.code;
                if version >= 5 {
                    out.error_message = e.message.map(StrBytes::from_string);
                }
            }
        }
        response.responses.push(out);
    }
    response
}

//! Metadata (v0-v12): brokers, the cluster id, topics and their partitions.
//! Topics asked for that do not exist are created with the broker's
//! defaults when the client allows it (v4+; always in v0-v3) and
//! `auto.create.topics.enable` is on, as in Kafka.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use sluice_protocol::kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{CLUSTER_OPERATIONS_ALL, TOPIC_OPERATIONS_ALL, on_controller};
use crate::controller::NewTopic;
use crate::metadata::{TopicMeta, validate_topic_name};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: MetadataRequest, version: i16) -> MetadataResponse {
    let node = BrokerId(shard.config.node_id);
    let mut metadata = shard.metadata();
    // Which topics, by name; None means all. In v0 an empty list means all.
    let wanted: Option<Vec<(Option<String>, Uuid)>> = match &request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let allow_create = (version < 4 || request.allow_auto_topic_creation) && shard.config.topic_defaults.auto_create;
    if let (Some(wanted), true) = (&wanted, allow_create) {
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|(name, _)| name.clone())
            .filter(|n| metadata.topic(n).is_none() && validate_topic_name(n).is_ok())
            .collect();
        if !missing.is_empty() {
            let requests = missing
                .into_iter()
                .map(|name| NewTopic {
                    name,
                    partitions: -1,
                    replication_factor: -1,
                    assignments: Vec::new(),
                    configs: Vec::new(),
                })
                .collect();
            // Another connection may create the same topic first; either
            // way the topic exists afterwards, and errors show below.
            on_controller(shard, move |s| async move {
                s.controller().create_topics(&s, requests, false).await
            })
            .await;
            metadata = shard.metadata();
        }
    }
    let describe = |t: &TopicMeta| {
        let partitions = (0..t.partitions)
            .map(|p| {
                MetadataResponsePartition::default()
                    .with_partition_index(p)
                    .with_leader_id(node)
                    .with_leader_epoch(if version >= 7 {
                        super::offset_for_leader_epoch::LEADER_EPOCH
                    } else {
                        -1
                    })
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
            .with_topic_id(if version >= 10 { t.id } else { Uuid::nil() })
            .with_partitions(partitions)
            .with_topic_authorized_operations(if request.include_topic_authorized_operations {
                TOPIC_OPERATIONS_ALL
            } else {
                i32::MIN
            })
    };
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => metadata.topics.values().map(|t| describe(t)).collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => metadata.topic(n),
                    None => metadata.topic_by_id(&id),
                };
                match found {
                    Some(t) => describe(t),
                    None => {
                        let error = match &name {
                            Some(n) if validate_topic_name(n).is_err() => ResponseError::InvalidTopicException,
                            Some(_) => ResponseError::UnknownTopicOrPartition,
                            None => ResponseError::UnknownTopicId,
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(error.code())
                            .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                            .with_topic_id(if version >= 10 { id } else { Uuid::nil() })
                    }
                }
            })
            .collect(),
    };
    let broker = MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(StrBytes::from_string(shard.config.advertised_host.clone()))
        .with_port(shard.config.advertised_port);
    let mut response = MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_topics(topics);
    if version >= 1 {
        response.controller_id = node;
    }
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(metadata.cluster_id.clone()));
    }
    if (8..=10).contains(&version) && request.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS_ALL;
    }
    response
}

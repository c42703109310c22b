//! DescribeConfigs (v1-v4) for topics (resource type 2) and the broker
//! (type 4): every setting with its value, where the value comes from, and
//! (when asked) its synonyms and documentation.

use std::rc::Rc;

use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use sluice_protocol::kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::shard::Shard;
use crate::topic_config::{ConfigType, DescribedSetting, describe_broker, describe_topic};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

pub fn handle(shard: &Rc<Shard>, request: DescribeConfigsRequest, version: i16) -> DescribeConfigsResponse {
    let metadata = shard.metadata();
    let c = &shard.config;
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let name = resource.resource_name.to_string();
        let mut out = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let settings: Result<Vec<DescribedSetting>, (ResponseError, String)> = match resource.resource_type {
            RESOURCE_TOPIC => match metadata.topic(&name) {
                Some(t) => Ok(describe_topic(&c.topic_defaults, &t.configs)),
                None => Err((ResponseError::UnknownTopicOrPartition, format!("no topic named {name}"))),
            },
            RESOURCE_BROKER if name.is_empty() || name == c.node_id.to_string() => {
                let extra = [
                    ("broker.id", c.node_id.to_string(), "1", ConfigType::Int),
                    ("node.id", c.node_id.to_string(), "1", ConfigType::Int),
                    (
                        "num.partitions",
                        c.topic_defaults.num_partitions.to_string(),
                        "1",
                        ConfigType::Int,
                    ),
                    (
                        "default.replication.factor",
                        c.topic_defaults.replication_factor.to_string(),
                        "1",
                        ConfigType::Int,
                    ),
                    (
                        "auto.create.topics.enable",
                        c.topic_defaults.auto_create.to_string(),
                        "true",
                        ConfigType::Boolean,
                    ),
                    (
                        "socket.request.max.bytes",
                        c.request_bytes_max.to_string(),
                        "104857600",
                        ConfigType::Int,
                    ),
                    (
                        "fetch.max.bytes",
                        c.fetch_bytes_max.to_string(),
                        "57671680",
                        ConfigType::Int,
                    ),
                ];
                Ok(describe_broker(&c.topic_defaults, &extra))
            }
            RESOURCE_BROKER => Err((
                ResponseError::InvalidRequest,
                format!("this broker is node {}, not {name}", c.node_id),
            )),
            other => Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} is not described by Sluice"),
            )),
        };
        match settings {
            Ok(settings) => {
                for s in settings {
                    if let Some(keys) = &resource.configuration_keys
                        && !keys.iter().any(|k| k.as_str() == s.name)
                    {
                        continue;
                    }
                    let mut entry = DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_string(s.name.clone()))
                        .with_value(Some(StrBytes::from_string(s.value.clone())))
                        .with_read_only(s.read_only)
                        .with_config_source(s.source as i8);
                    if request.include_synonyms {
                        entry.synonyms = s
                            .synonyms
                            .iter()
                            .map(|(n, v, src)| {
                                DescribeConfigsSynonym::default()
                                    .with_name(StrBytes::from_string(n.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                                    .with_source(*src as i8)
                            })
                            .collect();
                    }
                    if version >= 3 {
                        entry.config_type = s.config_type as i8;
                        if request.include_documentation {
                            entry.documentation = Some(StrBytes::from_static_str(s.doc));
                        }
                    }
                    out.configs.push(entry);
                }
            }
            Err((error, message)) => {
                out.error_code = error.code();
                out.error_message = Some(StrBytes::from_string(message));
            }
        }
        response.results.push(out);
    }
    response
}

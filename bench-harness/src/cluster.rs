//! What a run needs to know of the cluster before it starts: the topic
//! (created if asked), its partitions and their leaders, and offsets.

use std::time::Duration;

use anyhow::{Context, bail};
use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::create_topics_request::CreatableTopic;
use sluice_protocol::kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use sluice_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use sluice_protocol::kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::connection::Connection;

/// How many times to ask for metadata while a new topic's partitions get
/// leaders, and how long to wait between asks.
const LEADER_WAIT_ATTEMPTS_MAX: u32 = 100;
const LEADER_WAIT_INTERVAL: Duration = Duration::from_millis(100);

/// How long the broker may take to create a topic.
const CREATE_TOPIC_TIMEOUT_MS: i32 = 30_000;

/// ListOffsets' special timestamps.
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const LATEST_TIMESTAMP: i64 = -1;

/// A topic's partitions and the address of each one's leader. Plain data,
/// so it crosses executors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub topic: String,
    pub partitions: Vec<PartitionLeader>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLeader {
    pub partition: i32,
    pub leader_addr: String,
}

impl TopicLayout {
    /// The partitions worker `worker` of `worker_count` serves: every
    /// `worker_count`-th, so that each partition has exactly one worker.
    pub fn share(&self, worker: usize, worker_count: usize) -> Vec<PartitionLeader> {
        assert!(worker < worker_count);
        self.partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| i % worker_count == worker)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Creates `topic` with `partitions`; a topic that exists already is kept
/// (the run says so if its partition count differs).
pub async fn create_topic(conn: &mut Connection, topic: &str, partitions: i32) -> anyhow::Result<()> {
    // -1 asks for the broker's default replication factor, which needs
    // CreateTopics v4; before that, 1.
    let replication_factor = if conn.versions().get(ApiKey::CreateTopics)? >= 4 {
        -1
    } else {
        1
    };
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(CREATE_TOPIC_TIMEOUT_MS)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor),
        ]);
    let response: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, &request).await?;
    for t in &response.topics {
        match t.error_code {
            0 => {}
            code if code == ResponseError::TopicAlreadyExists.code() => {}
            code => bail!(
                "creating topic {topic}: error {code} {}",
                t.error_message.as_deref().unwrap_or("")
            ),
        }
    }
    Ok(())
}

/// The topic's partitions and leaders, waiting (bounded) until every
/// partition has one, as a just-created topic may not yet.
pub async fn describe_topic(conn: &mut Connection, topic: &str) -> anyhow::Result<TopicLayout> {
    let mut last_problem = String::new();
    for _ in 0..LEADER_WAIT_ATTEMPTS_MAX {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
            ]))
            .with_allow_auto_topic_creation(false);
        let response: MetadataResponse = conn.call(ApiKey::Metadata, &request).await?;
        match layout_of(&response, topic) {
            Ok(layout) => return Ok(layout),
            Err(problem) => last_problem = problem,
        }
        glommio::timer::sleep(LEADER_WAIT_INTERVAL).await;
    }
    bail!("topic {topic}: {last_problem}")
}

/// The layout a metadata response gives, or what is still missing.
pub fn layout_of(response: &MetadataResponse, topic: &str) -> Result<TopicLayout, String> {
    let Some(t) = response
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Err("not in the metadata".to_string());
    };
    if t.error_code != 0 {
        return Err(format!("metadata error {}", t.error_code));
    }
    if t.partitions.is_empty() {
        return Err("no partitions".to_string());
    }
    let mut partitions = Vec::with_capacity(t.partitions.len());
    for p in &t.partitions {
        let leader = response
            .brokers
            .iter()
            .find(|b| b.node_id == p.leader_id && p.leader_id != BrokerId(-1));
        match leader {
            Some(b) if p.error_code == 0 => partitions.push(PartitionLeader {
                partition: p.partition_index,
                leader_addr: format!("{}:{}", b.host.as_str(), b.port),
            }),
            _ => return Err(format!("partition {} has no leader yet", p.partition_index)),
        }
    }
    partitions.sort_by_key(|p| p.partition);
    Ok(TopicLayout {
        topic: topic.to_string(),
        partitions,
    })
}

/// The offset of each of `partitions` at `timestamp` (`EARLIEST_TIMESTAMP`,
/// `LATEST_TIMESTAMP`), asked of their leader `conn`.
pub async fn list_offsets(
    conn: &mut Connection,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_current_leader_epoch(-1)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                ),
        ]);
    let response: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, &request).await?;
    let mut offsets = Vec::with_capacity(partitions.len());
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                bail!("ListOffsets of {topic}/{}: error {}", p.partition_index, p.error_code);
            }
            offsets.push((p.partition_index, p.offset));
        }
    }
    if offsets.len() != partitions.len() {
        bail!(
            "ListOffsets of {topic} answered {} of {} partitions",
            offsets.len(),
            partitions.len()
        );
    }
    Ok(offsets)
}

/// Connects to `bootstrap`, creates the topic if asked, and describes it.
pub async fn prepare_topic(
    bootstrap: &str,
    topic: &str,
    create_partitions: Option<i32>,
) -> anyhow::Result<TopicLayout> {
    let mut conn = Connection::connect(bootstrap, 1)
        .await
        .with_context(|| format!("bootstrap broker {bootstrap}"))?;
    if let Some(partitions) = create_partitions {
        create_topic(&mut conn, topic, partitions).await?;
    }
    let layout = describe_topic(&mut conn, topic).await?;
    if let Some(partitions) = create_partitions
        && layout.partitions.len() != partitions as usize
    {
        eprintln!(
            "note: topic {topic} exists with {} partitions, not {partitions}; using it as it is",
            layout.partitions.len()
        );
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };

    fn metadata(leaders: &[i32]) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("127.0.0.1"))
                    .with_port(9092),
            ])
            .with_topics(vec![
                MetadataResponseTopic::default()
                    .with_name(Some(topic_name("t")))
                    .with_partitions(
                        leaders
                            .iter()
                            .enumerate()
                            .rev()
                            .map(|(i, &l)| {
                                MetadataResponsePartition::default()
                                    .with_partition_index(i as i32)
                                    .with_leader_id(BrokerId(l))
                            })
                            .collect(),
                    ),
            ])
    }

    #[test]
    fn layout_lists_partitions_in_order_with_their_leader_address() {
        let layout = layout_of(&metadata(&[1, 1, 1]), "t").expect("complete");
        assert_eq!(
            layout.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(layout.partitions.iter().all(|p| p.leader_addr == "127.0.0.1:9092"));
        assert_eq!(layout.share(1, 2), vec![layout.partitions[1].clone()]);
        assert_eq!(layout.share(0, 2).len(), 2);
    }

    #[test]
    fn layout_waits_for_leaders_and_for_the_topic() {
        assert!(layout_of(&metadata(&[1, -1]), "t").is_err());
        assert!(layout_of(&metadata(&[1]), "other").is_err());
        assert!(layout_of(&metadata(&[]), "t").is_err());
    }
}

//! One handler per Kafka API, each serving the version range in
//! `sluice_protocol::api::SERVED_APIS`; this module routes to them.

/// The parts of an OffsetCommit or TxnOffsetCommit request (their topics
/// have the same fields under different types), in request order.
macro_rules! commit_parts {
    ($topics:expr) => {
        $topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| crate::group::CommitPart {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                })
            })
            .collect::<Vec<crate::group::CommitPart>>()
    };
}

/// The response topics of an OffsetCommit, TxnOffsetCommit or
/// OffsetDelete: each requested partition with its code from `codes` (one
/// per partition), in request order.
macro_rules! commit_response_topics {
    ($topics:expr, $codes:expr, $topic:ty, $partition:ty) => {{
        let mut codes = $codes.into_iter();
        $topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        <$partition>::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(codes.next().expect("one code per partition"))
                    })
                    .collect();
                <$topic>::default().with_name(t.name).with_partitions(partitions)
            })
            .collect()
    }};
}

mod add_offsets_to_txn;
mod add_partitions_to_txn;
mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_transactions;
mod end_txn;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_transactions;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sync_group;
mod txn_offset_commit;

use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::fetch_frame::encode_fetch_response;
use sluice_protocol::kafka_protocol::messages::ApiKey;
use sluice_protocol::kafka_protocol::protocol::Encodable;
use sluice_protocol::request::{DecodedRequest, Request};
use sluice_protocol::response::{encode_produce_response, encode_response};
use tracing::error;

use crate::shard::Shard;

/// What a handled request leads to.
pub enum Outcome {
    Respond(Bytes),
    /// A frame in pieces, written in order (records passed through
    /// uncopied).
    RespondChain(Vec<Bytes>),
    /// acks=0 produce: Kafka sends nothing back.
    NoResponse,
    /// Something went wrong that only closing the connection can answer.
    Close,
}

fn respond<T: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &T) -> Outcome {
    match encode_response(api, version, correlation_id, body) {
        Ok(bytes) => Outcome::Respond(bytes),
        Err(e) => {
            error!(error = %e, "cannot encode a response; closing the connection");
            Outcome::Close
        }
    }
}

/// Who sent a request.
pub struct RequestContext {
    pub peer: std::net::SocketAddr,
    pub client_id: String,
}

pub async fn handle(shard: Rc<Shard>, request: DecodedRequest, peer: std::net::SocketAddr) -> Outcome {
    let ctx = RequestContext {
        peer,
        client_id: request
            .header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
    };
    let correlation_id = request.header.correlation_id;
    let version = request.api_version;
    let api = request.api_key;
    match request.request {
        Request::ApiVersions(_) => respond(api, version, correlation_id, &api_versions::handle()),
        Request::Metadata(r) => respond(
            api,
            version,
            correlation_id,
            &metadata::handle(&shard, r, version).await,
        ),
        Request::Produce(r) => match produce::handle(&shard, r, version).await {
            Some(body) => match encode_produce_response(version, correlation_id, &body) {
                Ok(bytes) => Outcome::Respond(bytes),
                Err(e) => {
                    error!(error = %e, "cannot encode a produce response");
                    Outcome::Close
                }
            },
            None => Outcome::NoResponse,
        },
        Request::Fetch(r) => {
            let (body, records) = fetch::handle(&shard, r, version).await;
            match encode_fetch_response(version, correlation_id, &body, &records) {
                Ok(parts) => Outcome::RespondChain(parts),
                Err(e) => {
                    error!(error = %e, "cannot encode a fetch response; closing the connection");
                    Outcome::Close
                }
            }
        }
        Request::ListOffsets(r) => respond(
            api,
            version,
            correlation_id,
            &list_offsets::handle(&shard, r, version).await,
        ),
        Request::CreateTopics(r) => respond(
            api,
            version,
            correlation_id,
            &create_topics::handle(&shard, r, version).await,
        ),
        Request::DeleteTopics(r) => respond(
            api,
            version,
            correlation_id,
            &delete_topics::handle(&shard, r, version).await,
        ),
        Request::CreatePartitions(r) => respond(
            api,
            version,
            correlation_id,
            &create_partitions::handle(&shard, r).await,
        ),
        Request::DescribeConfigs(r) => respond(
            api,
            version,
            correlation_id,
            &describe_configs::handle(&shard, r, version),
        ),
        Request::AlterConfigs(r) => respond(
            api,
            version,
            correlation_id,
            &alter_configs::handle_alter(&shard, r).await,
        ),
        Request::IncrementalAlterConfigs(r) => respond(
            api,
            version,
            correlation_id,
            &alter_configs::handle_incremental(&shard, r).await,
        ),
        Request::DeleteRecords(r) => respond(api, version, correlation_id, &delete_records::handle(&shard, r).await),
        Request::DescribeCluster(r) => respond(api, version, correlation_id, &describe_cluster::handle(&shard, r)),
        Request::FindCoordinator(r) => respond(
            api,
            version,
            correlation_id,
            &find_coordinator::handle(&shard, r, version),
        ),
        Request::JoinGroup(r) => respond(
            api,
            version,
            correlation_id,
            &join_group::handle(&shard, r, version, &ctx).await,
        ),
        Request::SyncGroup(r) => respond(
            api,
            version,
            correlation_id,
            &sync_group::handle(&shard, r, version).await,
        ),
        Request::Heartbeat(r) => respond(api, version, correlation_id, &heartbeat::handle(&shard, r).await),
        Request::LeaveGroup(r) => respond(
            api,
            version,
            correlation_id,
            &leave_group::handle(&shard, r, version).await,
        ),
        Request::OffsetCommit(r) => respond(api, version, correlation_id, &offset_commit::handle(&shard, r).await),
        Request::OffsetFetch(r) => respond(
            api,
            version,
            correlation_id,
            &offset_fetch::handle(&shard, r, version).await,
        ),
        Request::ListGroups(r) => respond(
            api,
            version,
            correlation_id,
            &list_groups::handle(&shard, r, version).await,
        ),
        Request::DescribeGroups(r) => respond(
            api,
            version,
            correlation_id,
            &describe_groups::handle(&shard, r, version).await,
        ),
        Request::DeleteGroups(r) => respond(api, version, correlation_id, &delete_groups::handle(&shard, r).await),
        Request::OffsetDelete(r) => respond(api, version, correlation_id, &offset_delete::handle(&shard, r).await),
        Request::InitProducerId(r) => respond(
            api,
            version,
            correlation_id,
            &init_producer_id::handle(&shard, r, version).await,
        ),
        Request::AddPartitionsToTxn(r) => respond(
            api,
            version,
            correlation_id,
            &add_partitions_to_txn::handle(&shard, r, version).await,
        ),
        Request::AddOffsetsToTxn(r) => respond(
            api,
            version,
            correlation_id,
            &add_offsets_to_txn::handle(&shard, r, version).await,
        ),
        Request::EndTxn(r) => respond(api, version, correlation_id, &end_txn::handle(&shard, r, version).await),
        Request::TxnOffsetCommit(r) => respond(
            api,
            version,
            correlation_id,
            &txn_offset_commit::handle(&shard, r).await,
        ),
        Request::DescribeTransactions(r) => respond(
            api,
            version,
            correlation_id,
            &describe_transactions::handle(&shard, r).await,
        ),
        Request::OffsetForLeaderEpoch(r) => respond(
            api,
            version,
            correlation_id,
            &offset_for_leader_epoch::handle(&shard, r).await,
        ),
        Request::ListTransactions(r) => respond(
            api,
            version,
            correlation_id,
            &list_transactions::handle(&shard, r, version).await,
        ),
    }
}

/// Runs `f` on the controller (shard 0) and returns its result. A stopped
/// controller means the broker is going down.
pub async fn on_controller<R, F, Fut>(shard: &Rc<Shard>, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    shard.invoke_on(0, f).await.ok()
}

/// Runs `f` on the shard that coordinates `group_id`. `None` if that
/// shard is gone (the broker is stopping).
pub async fn on_group_shard<R, F, Fut>(shard: &Rc<Shard>, group_id: &str, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let target = crate::group::coordinator_shard(group_id, shard.count);
    shard.invoke_on(target, f).await.ok()
}

/// Runs `f` on the shard that coordinates `transactional_id`. `None` if
/// that shard is gone (the broker is stopping).
pub async fn on_txn_shard<R, F, Fut>(shard: &Rc<Shard>, transactional_id: &str, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let target = crate::txn::coordinator_shard(transactional_id, shard.count);
    shard.invoke_on(target, f).await.ok()
}

/// PRODUCER_FENCED as clients of `version` understand it: older versions
/// (below `fenced_min_version`) know only INVALID_PRODUCER_EPOCH.
pub fn fenced_for_version(code: i16, version: i16, fenced_min_version: i16) -> i16 {
    use sluice_protocol::ResponseError;
    if code == ResponseError::ProducerFenced.code() && version < fenced_min_version {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// All topic operations a client may do, as an authorized-operations
/// bitfield (Sluice has no authorization: everything is allowed).
pub const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// All cluster operations, likewise.
pub const CLUSTER_OPERATIONS_ALL: i32 =
    (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

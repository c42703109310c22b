//! One handler per Kafka API, each serving the version range in
//! `sluice_protocol::api::SERVED_APIS`; this module routes to them.

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod fetch;
mod list_offsets;
mod metadata;
mod produce;

use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::kafka_protocol::messages::ApiKey;
use sluice_protocol::kafka_protocol::protocol::Encodable;
use sluice_protocol::request::{DecodedRequest, Request};
use sluice_protocol::response::{encode_produce_response, encode_response};
use tracing::error;

use crate::shard::Shard;

/// What a handled request leads to.
pub enum Outcome {
    Respond(Bytes),
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

pub async fn handle(shard: Rc<Shard>, request: DecodedRequest) -> Outcome {
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
        Request::Fetch(r) => respond(api, version, correlation_id, &fetch::handle(&shard, r, version).await),
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

/// All topic operations a client may do, as an authorized-operations
/// bitfield (Sluice has no authorization: everything is allowed).
pub const TOPIC_OPERATIONS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// All cluster operations, likewise.
pub const CLUSTER_OPERATIONS_ALL: i32 =
    (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

//! DescribeCluster (v0-v1): the cluster id, the controller and the brokers.

use std::rc::Rc;

use sluice_protocol::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use sluice_protocol::kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use super::CLUSTER_OPERATIONS_ALL;
use crate::shard::Shard;

pub fn handle(shard: &Rc<Shard>, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let c = &shard.config;
    let node = BrokerId(c.node_id);
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(shard.metadata().cluster_id.clone()))
        .with_controller_id(node)
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(node)
                .with_host(StrBytes::from_string(c.advertised_host.clone()))
                .with_port(c.advertised_port),
        ])
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS_ALL
        } else {
            i32::MIN
        })
}

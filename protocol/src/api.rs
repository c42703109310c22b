//! The APIs this broker serves and their version ranges: one table, from
//! which ApiVersions is answered and requests are admitted. A version is in
//! the table only if every field of it is served.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedApi {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn served(key: ApiKey, min: i16, max: i16) -> ServedApi {
    ServedApi { key, min, max }
}

/// Produce is advertised from v0: librdkafka stops compressing when the
/// minimum is higher. Versions 0-2 carry old message formats, which are
/// refused per partition (see `legacy_produce`).
pub const SERVED_APIS: &[ServedApi] = &[
    served(ApiKey::Produce, 0, 11),
    served(ApiKey::Fetch, 4, 16),
    served(ApiKey::ListOffsets, 1, 7),
    served(ApiKey::Metadata, 0, 12),
    served(ApiKey::ApiVersions, 0, 4),
    served(ApiKey::CreateTopics, 2, 7),
    served(ApiKey::DeleteTopics, 1, 6),
    served(ApiKey::CreatePartitions, 0, 3),
    served(ApiKey::DescribeConfigs, 1, 4),
    served(ApiKey::AlterConfigs, 0, 2),
    served(ApiKey::IncrementalAlterConfigs, 0, 1),
    served(ApiKey::DeleteRecords, 0, 2),
    served(ApiKey::DescribeCluster, 0, 1),
    served(ApiKey::FindCoordinator, 0, 5),
    served(ApiKey::JoinGroup, 0, 9),
    served(ApiKey::SyncGroup, 0, 5),
    served(ApiKey::Heartbeat, 0, 4),
    served(ApiKey::LeaveGroup, 0, 5),
    served(ApiKey::OffsetCommit, 2, 9),
    served(ApiKey::OffsetFetch, 1, 9),
    served(ApiKey::ListGroups, 0, 5),
    served(ApiKey::DescribeGroups, 0, 5),
    served(ApiKey::DeleteGroups, 0, 2),
    served(ApiKey::OffsetDelete, 0, 0),
    served(ApiKey::InitProducerId, 0, 4),
    served(ApiKey::AddPartitionsToTxn, 0, 3),
    served(ApiKey::AddOffsetsToTxn, 0, 3),
    served(ApiKey::EndTxn, 0, 3),
    served(ApiKey::TxnOffsetCommit, 0, 3),
    served(ApiKey::DescribeTransactions, 0, 0),
    served(ApiKey::ListTransactions, 0, 1),
    served(ApiKey::OffsetForLeaderEpoch, 2, 4),
];

/// The served range of an api key, if it is served at all.
pub fn served_versions(api_key: i16) -> Option<ServedApi> {
    SERVED_APIS.iter().copied().find(|a| a.key as i16 == api_key)
}

pub fn is_served(api_key: i16, api_version: i16) -> bool {
    served_versions(api_key).is_some_and(|a| (a.min..=a.max).contains(&api_version))
}

/// The ApiVersions response listing every served API, with `error_code`.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SERVED_APIS
        .iter()
        .map(|a| {
            ApiVersion::default()
                .with_api_key(a.key as i16)
                .with_min_version(a.min)
                .with_max_version(a.max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
    use kafka_protocol::protocol::Message;

    #[test]
    fn every_served_range_is_within_what_the_codec_supports() {
        for a in SERVED_APIS {
            let codec = a.key.valid_versions();
            let min = if a.key == ApiKey::Produce { 3 } else { a.min };
            assert!(
                codec.min <= min && a.max <= codec.max,
                "{:?} {}..{} outside {:?}",
                a.key,
                a.min,
                a.max,
                codec
            );
            assert!(a.min <= a.max);
        }
        // Produce below v3 is decoded by hand.
        assert_eq!(ProduceRequest::VERSIONS.min, 3);
        assert_eq!(ProduceResponse::VERSIONS.min, 3);
    }

    #[test]
    fn produce_is_advertised_from_v0() {
        assert_eq!(served_versions(ApiKey::Produce as i16).map(|a| a.min), Some(0));
        assert!(is_served(ApiKey::Produce as i16, 0));
        assert!(!is_served(ApiKey::Fetch as i16, 3));
        assert!(!is_served(999, 0));
    }
}

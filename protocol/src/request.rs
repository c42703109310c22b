//! Decoding a request frame into a typed request. Decoding never panics and
//! never allocates by a length read off the wire (see the vendored codec's
//! patches); anything it cannot decode is an error the connection acts on.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use crate::api::is_served;
use crate::header::peek_preamble;
use crate::legacy_produce;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    Metadata(MetadataRequest),
    ApiVersions(ApiVersionsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DeleteRecords(DeleteRecordsRequest),
    DescribeCluster(DescribeClusterRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    OffsetDelete(OffsetDeleteRequest),
    InitProducerId(InitProducerIdRequest),
    AddPartitionsToTxn(AddPartitionsToTxnRequest),
    AddOffsetsToTxn(AddOffsetsToTxnRequest),
    EndTxn(EndTxnRequest),
    TxnOffsetCommit(TxnOffsetCommitRequest),
    DescribeTransactions(DescribeTransactionsRequest),
    ListTransactions(ListTransactionsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRequest {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub api_version: i16,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("api {api_key} version {api_version} is not served")]
    UnsupportedVersion { api_key: i16, api_version: i16 },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed { api: ApiKey, version: i16, reason: String },
}

fn decode_body<T: Decodable>(
    api: ApiKey,
    version: i16,
    body: &mut Bytes,
    wrap: fn(T) -> Request,
) -> Result<Request, DecodeError> {
    T::decode(body, version).map(wrap).map_err(|e| DecodeError::Malformed {
        api,
        version,
        reason: e.to_string(),
    })
}

/// Decodes a whole frame (without its size prefix).
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    let preamble = peek_preamble(&frame).ok_or(DecodeError::Truncated(frame.len()))?;
    let api = ApiKey::try_from(preamble.api_key).map_err(|_| DecodeError::UnknownApiKey(preamble.api_key))?;
    let version = preamble.api_version;
    if !is_served(preamble.api_key, version) {
        return Err(DecodeError::UnsupportedVersion {
            api_key: preamble.api_key,
            api_version: version,
        });
    }
    let mut body = frame;
    let malformed = |reason: String| DecodeError::Malformed { api, version, reason };
    let header =
        RequestHeader::decode(&mut body, api.request_header_version(version)).map_err(|e| malformed(e.to_string()))?;
    let request = match api {
        ApiKey::Produce if legacy_produce::LEGACY_VERSIONS.contains(&version) => legacy_produce::decode(&mut body)
            .map(Request::Produce)
            .ok_or_else(|| malformed("bad v0-v2 produce body".into()))?,
        ApiKey::Produce => decode_body(api, version, &mut body, Request::Produce)?,
        ApiKey::Fetch => decode_body(api, version, &mut body, Request::Fetch)?,
        ApiKey::ListOffsets => decode_body(api, version, &mut body, Request::ListOffsets)?,
        ApiKey::Metadata => decode_body(api, version, &mut body, Request::Metadata)?,
        ApiKey::ApiVersions => decode_body(api, version, &mut body, Request::ApiVersions)?,
        ApiKey::CreateTopics => decode_body(api, version, &mut body, Request::CreateTopics)?,
        ApiKey::DeleteTopics => decode_body(api, version, &mut body, Request::DeleteTopics)?,
        ApiKey::CreatePartitions => decode_body(api, version, &mut body, Request::CreatePartitions)?,
        ApiKey::DescribeConfigs => decode_body(api, version, &mut body, Request::DescribeConfigs)?,
        ApiKey::AlterConfigs => decode_body(api, version, &mut body, Request::AlterConfigs)?,
        ApiKey::IncrementalAlterConfigs => decode_body(api, version, &mut body, Request::IncrementalAlterConfigs)?,
        ApiKey::DeleteRecords => decode_body(api, version, &mut body, Request::DeleteRecords)?,
        ApiKey::DescribeCluster => decode_body(api, version, &mut body, Request::DescribeCluster)?,
        ApiKey::FindCoordinator => decode_body(api, version, &mut body, Request::FindCoordinator)?,
        ApiKey::JoinGroup => decode_body(api, version, &mut body, Request::JoinGroup)?,
        ApiKey::SyncGroup => decode_body(api, version, &mut body, Request::SyncGroup)?,
        ApiKey::Heartbeat => decode_body(api, version, &mut body, Request::Heartbeat)?,
        ApiKey::LeaveGroup => decode_body(api, version, &mut body, Request::LeaveGroup)?,
        ApiKey::OffsetCommit => decode_body(api, version, &mut body, Request::OffsetCommit)?,
        ApiKey::OffsetFetch => decode_body(api, version, &mut body, Request::OffsetFetch)?,
        ApiKey::ListGroups => decode_body(api, version, &mut body, Request::ListGroups)?,
        ApiKey::DescribeGroups => decode_body(api, version, &mut body, Request::DescribeGroups)?,
        ApiKey::DeleteGroups => decode_body(api, version, &mut body, Request::DeleteGroups)?,
        ApiKey::OffsetDelete => decode_body(api, version, &mut body, Request::OffsetDelete)?,
        ApiKey::InitProducerId => decode_body(api, version, &mut body, Request::InitProducerId)?,
        ApiKey::AddPartitionsToTxn => decode_body(api, version, &mut body, Request::AddPartitionsToTxn)?,
        ApiKey::AddOffsetsToTxn => decode_body(api, version, &mut body, Request::AddOffsetsToTxn)?,
        ApiKey::EndTxn => decode_body(api, version, &mut body, Request::EndTxn)?,
        ApiKey::TxnOffsetCommit => decode_body(api, version, &mut body, Request::TxnOffsetCommit)?,
        ApiKey::DescribeTransactions => decode_body(api, version, &mut body, Request::DescribeTransactions)?,
        ApiKey::ListTransactions => decode_body(api, version, &mut body, Request::ListTransactions)?,
        ApiKey::OffsetForLeaderEpoch => decode_body(api, version, &mut body, Request::OffsetForLeaderEpoch)?,
        _ => {
            return Err(DecodeError::UnsupportedVersion {
                api_key: preamble.api_key,
                api_version: version,
            });
        }
    };
    Ok(DecodedRequest {
        header,
        api_key: api,
        api_version: version,
        request,
    })
}

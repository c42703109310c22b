//! The client side of the Kafka wire protocol: request frames out, response
//! frames in, and the versions both sides speak. Pure: no I/O.
//!
//! Codecs are `kafka-protocol`'s, through `sluice-protocol`, so the harness
//! speaks exactly the protocol any Kafka client does and loads any
//! Kafka-compatible broker.

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use sluice_protocol::frame::SIZE_PREFIX_BYTES;
use sluice_protocol::kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader};
use sluice_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// How the harness names itself to brokers.
pub const CLIENT_ID: &str = "sluice-bench";

/// Largest response frame accepted: above the largest fetch the harness asks
/// for (`FETCH_BYTES_MAX` in `consumer`), so a bigger frame means a broken
/// stream, not a big answer.
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// The versions the harness can speak of each API it uses: the highest it
/// shares with a broker is used. Capped where a later version changes what
/// the harness would have to send (Fetch 13 names topics by id; Metadata 10
/// adds topic ids; Produce 10+ and CreateTopics 6+ add nothing it needs).
pub const WANTED_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::Metadata, 1, 9),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::CreateTopics, 2, 5),
];

/// ApiVersions is sent at this version first; a broker that does not know
/// it answers in v0 with UNSUPPORTED_VERSION, and the harness asks again at v0.
pub const API_VERSIONS_VERSION: i16 = 3;

/// The Kafka error code for an API version a broker does not serve.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The version chosen for each API of [`WANTED_VERSIONS`] a broker serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    chosen: Vec<(ApiKey, i16)>,
}

impl Versions {
    /// The highest version of each wanted API that both sides speak.
    pub fn negotiate(response: &ApiVersionsResponse) -> Versions {
        let mut chosen = Vec::new();
        for &(api, ours_min, ours_max) in WANTED_VERSIONS {
            let theirs = response.api_keys.iter().find(|k| k.api_key == api as i16);
            if let Some(k) = theirs {
                let version = ours_max.min(k.max_version);
                if version >= ours_min.max(k.min_version) {
                    chosen.push((api, version));
                }
            }
        }
        Versions { chosen }
    }

    pub fn get(&self, api: ApiKey) -> anyhow::Result<i16> {
        match self.chosen.iter().find(|(a, _)| *a == api) {
            Some(&(_, v)) => Ok(v),
            None => bail!("the broker serves no version of {api:?} this harness speaks"),
        }
    }
}

/// A whole request frame: size prefix, request header, body.
pub fn encode_request<T: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &T) -> anyhow::Result<Bytes> {
    let header_version = api.request_header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let size = header.compute_size(header_version)? + body.compute_size(version)?;
    let mut out = BytesMut::with_capacity(SIZE_PREFIX_BYTES + size);
    out.put_i32(i32::try_from(size).context("request too large for a frame")?);
    header.encode(&mut out, header_version)?;
    body.encode(&mut out, version)?;
    assert_eq!(
        out.len(),
        SIZE_PREFIX_BYTES + size,
        "encoded size matches computed size"
    );
    Ok(out.freeze())
}

/// The response header version for `api` at `version`. ApiVersions answers
/// always use v0, so that a client can read them before it knows versions.
pub fn response_header_version(api: ApiKey, version: i16) -> i16 {
    if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    }
}

/// Reads the response header off the front of `frame` (size prefix already
/// removed), leaving the body; returns the correlation id.
pub fn decode_response_header(api: ApiKey, version: i16, frame: &mut Bytes) -> anyhow::Result<i32> {
    let header = ResponseHeader::decode(frame, response_header_version(api, version))
        .with_context(|| format!("decoding the header of a {api:?} v{version} response"))?;
    Ok(header.correlation_id)
}

/// Decodes a response body (header already read).
pub fn decode_body<T: Decodable>(api: ApiKey, version: i16, mut body: Bytes) -> anyhow::Result<T> {
    T::decode(&mut body, version).with_context(|| format!("decoding a {api:?} v{version} response"))
}

/// Decodes an ApiVersions body, which a broker that refused our version
/// encodes at v0.
pub fn decode_api_versions(version: i16, body: Bytes) -> anyhow::Result<ApiVersionsResponse> {
    match decode_body::<ApiVersionsResponse>(ApiKey::ApiVersions, version, body.clone()) {
        Ok(r) if r.error_code != UNSUPPORTED_VERSION => Ok(r),
        _ => decode_body(ApiKey::ApiVersions, 0, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::kafka_protocol::messages::api_versions_response::ApiVersion;
    use sluice_protocol::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use sluice_protocol::kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
    use sluice_protocol::kafka_protocol::protocol::decode_request_header_from_buffer;

    fn api_versions(keys: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            keys.iter()
                .map(|&(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
    }

    #[test]
    fn negotiation_picks_the_highest_shared_version_and_skips_disjoint_ranges() {
        let v = Versions::negotiate(&api_versions(&[
            (ApiKey::Produce, 0, 11),
            (ApiKey::Fetch, 4, 8),
            (ApiKey::Metadata, 10, 12),
        ]));
        assert_eq!(v.get(ApiKey::Produce).ok(), Some(9));
        assert_eq!(v.get(ApiKey::Fetch).ok(), Some(8));
        assert!(v.get(ApiKey::Metadata).is_err(), "10..12 does not meet 1..9");
        assert!(v.get(ApiKey::ListOffsets).is_err(), "not served at all");
    }

    #[test]
    fn every_request_version_round_trips_through_the_broker_side_decoder() {
        let records = Bytes::from_static(b"opaque batch bytes");
        let body = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(7)
                            .with_records(Some(records.clone())),
                    ]),
            ]);
        for version in 3..=9 {
            let frame = encode_request(ApiKey::Produce, version, 42, &body).expect("encodes");
            let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(size + SIZE_PREFIX_BYTES, frame.len());
            let mut rest = frame.slice(SIZE_PREFIX_BYTES..);
            let header = decode_request_header_from_buffer(&mut rest).expect("header decodes");
            assert_eq!(header.request_api_key, ApiKey::Produce as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 42);
            assert_eq!(header.client_id.as_deref(), Some(CLIENT_ID));
            let decoded = ProduceRequest::decode(&mut rest, version).expect("body decodes");
            assert_eq!(decoded, body, "v{version}");
        }
    }

    #[test]
    fn response_headers_are_read_at_the_right_version() {
        // Produce v9 is flexible (header v1, with tagged fields); v8 is not.
        for (version, header_version) in [(8i16, 0i16), (9, 1)] {
            assert_eq!(response_header_version(ApiKey::Produce, version), header_version);
            let mut frame = BytesMut::new();
            ResponseHeader::default()
                .with_correlation_id(7)
                .encode(&mut frame, header_version)
                .expect("encodes");
            ProduceResponse::default().encode(&mut frame, version).expect("encodes");
            let mut frame = frame.freeze();
            assert_eq!(
                decode_response_header(ApiKey::Produce, version, &mut frame).ok(),
                Some(7)
            );
            let body: ProduceResponse = decode_body(ApiKey::Produce, version, frame).expect("decodes");
            assert!(body.responses.is_empty());
        }
        // ApiVersions v3 is flexible but its response header is always v0.
        assert_eq!(response_header_version(ApiKey::ApiVersions, 3), 0);
    }

    #[test]
    fn api_versions_refusal_in_v0_is_read_as_v0() {
        let refusal = api_versions(&[(ApiKey::Produce, 3, 9)]).with_error_code(UNSUPPORTED_VERSION);
        let mut body = BytesMut::new();
        refusal.encode(&mut body, 0).expect("encodes");
        let decoded = decode_api_versions(API_VERSIONS_VERSION, body.freeze()).expect("decodes");
        assert_eq!(decoded.error_code, UNSUPPORTED_VERSION);
        assert_eq!(decoded.api_keys.len(), 1);
    }
}

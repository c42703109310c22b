//! A Produce request frame whose record batches are not copied.
//!
//! The generic encoder copies every partition's records into one buffer:
//! for a produce request that is the whole payload, copied once more before
//! the socket copies it again. Here the frame is a [`FrameChain`]: each
//! partition's batches are passed through as the shared buffer they are.
//!
//! Every field except `records` is still encoded by kafka-protocol, as in
//! `fetch_frame`: the request, each topic and each partition are encoded
//! with what follows them left empty (no topics, no partitions, null
//! records), and those empty markers are replaced by the real contents. The
//! result is byte for byte what the generic encoder would produce (tested
//! for every version).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::frame_chain::{FrameChain, empty_last_field_bytes, put_array_len, put_nullable_len, put_unsigned_varint};
use crate::response::EncodeError;

/// The Produce versions encoded here: v3 (the first with v2 record batches)
/// to v12 (v13 names topics by id).
pub const VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

/// A whole Produce request frame for `version`: size prefix, request header
/// (with `correlation_id` and `client_id`), and `body`, its records shared.
pub fn encode_produce_request(
    version: i16,
    correlation_id: i32,
    client_id: Option<StrBytes>,
    body: &ProduceRequest,
) -> Result<Vec<Bytes>, EncodeError> {
    let error = |reason: String| EncodeError {
        api: ApiKey::Produce,
        version,
        reason,
    };
    if !VERSIONS.contains(&version) {
        return Err(error(format!("version outside {VERSIONS:?}")));
    }
    let flexible = version >= 9;
    // Each struct is encoded with its topics, partitions or records left
    // empty, and the empty field dropped.
    let empty = empty_last_field_bytes(flexible);
    if !body.unknown_tagged_fields.is_empty() {
        return Err(error("request tagged fields are not encoded here".into()));
    }
    let mut out = FrameChain::for_frame();
    let mut scratch = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id);
    let header_version = ApiKey::Produce.request_header_version(version);
    out.put_encoded(&mut scratch, 0, |b| header.encode(b, header_version))
        .map_err(error)?;
    let fields = ProduceRequest::default()
        .with_transactional_id(body.transactional_id.clone())
        .with_acks(body.acks)
        .with_timeout_ms(body.timeout_ms);
    out.put_encoded(&mut scratch, empty, |b| fields.encode(b, version))
        .map_err(error)?;
    put_array_len(&mut out, body.topic_data.len(), flexible).map_err(error)?;
    for topic in &body.topic_data {
        if !topic.unknown_tagged_fields.is_empty() {
            return Err(error("topic tagged fields are not encoded here".into()));
        }
        let fields = TopicProduceData::default()
            .with_name(topic.name.clone())
            .with_topic_id(topic.topic_id);
        out.put_encoded(&mut scratch, empty, |b| fields.encode(b, version))
            .map_err(error)?;
        put_array_len(&mut out, topic.partition_data.len(), flexible).map_err(error)?;
        for partition in &topic.partition_data {
            if !partition.unknown_tagged_fields.is_empty() {
                return Err(error("partition tagged fields are not encoded here".into()));
            }
            let fields = PartitionProduceData::default().with_index(partition.index);
            out.put_encoded(&mut scratch, empty, |b| fields.encode(b, version))
                .map_err(error)?;
            let records = partition.records.as_ref();
            put_nullable_len(&mut out, records.map(Bytes::len), flexible).map_err(error)?;
            if let Some(r) = records {
                out.put_bytes(r.clone());
            }
            if flexible {
                put_unsigned_varint(&mut out, 0);
            }
        }
        if flexible {
            put_unsigned_varint(&mut out, 0);
        }
    }
    if flexible {
        put_unsigned_varint(&mut out, 0);
    }
    out.finish_frame().map_err(error)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{TopicName, TransactionalId};

    use super::*;
    use crate::frame::SIZE_PREFIX_BYTES;
    use crate::frame_chain::{SHARED_PIECE_MIN_BYTES, test_records as records};

    fn sample(transactional: bool) -> ProduceRequest {
        let sizes: [Option<usize>; 5] = [Some(100), None, Some(0), Some(70_000), Some(SHARED_PIECE_MIN_BYTES)];
        let mut request = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000);
        if transactional {
            request.transactional_id = Some(TransactionalId(StrBytes::from_static_str("txn-a")));
        }
        for t in 0..2 {
            let mut topic =
                TopicProduceData::default().with_name(TopicName(StrBytes::from_string(format!("topic-{t}"))));
            for (i, size) in sizes.iter().enumerate() {
                let p = PartitionProduceData::default()
                    .with_index(i as i32)
                    .with_records(size.map(|n| records(n, (t * 10 + i) as u8)));
                topic.partition_data.push(p);
            }
            request.topic_data.push(topic);
        }
        request
    }

    /// The generic encoding of the same frame.
    fn generic(version: i16, correlation_id: i32, body: &ProduceRequest) -> Vec<u8> {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("client")));
        let header_version = ApiKey::Produce.request_header_version(version);
        let mut out = BytesMut::new();
        out.extend_from_slice(&[0u8; SIZE_PREFIX_BYTES]);
        header.encode(&mut out, header_version).unwrap();
        body.encode(&mut out, version).unwrap();
        let size = (out.len() - SIZE_PREFIX_BYTES) as i32;
        out[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
        out.to_vec()
    }

    #[test]
    fn chained_frames_equal_the_generic_encoding_in_every_version() {
        for version in VERSIONS {
            for transactional in [false, true] {
                let request = sample(transactional);
                let client = Some(StrBytes::from_static_str("client"));
                let parts = encode_produce_request(version, 77, client, &request).unwrap();
                let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
                assert_eq!(joined, generic(version, 77, &request), "version {version}");
                // The large records were passed through, not copied.
                let big = request.topic_data[1].partition_data[3].records.as_ref().unwrap();
                assert!(parts.iter().any(|p| p.as_ptr() == big.as_ptr()), "version {version}");
            }
        }
    }

    #[test]
    fn versions_outside_the_range_and_tagged_fields_are_refused() {
        let request = sample(false);
        assert!(encode_produce_request(2, 1, None, &request).is_err());
        assert!(encode_produce_request(13, 1, None, &request).is_err());
        let tagged = request.clone().with_unknown_tagged_field(0, Bytes::from_static(b"x"));
        assert!(encode_produce_request(9, 1, None, &tagged).is_err());
    }
}

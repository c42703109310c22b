//! A Fetch response frame whose record batches are not copied.
//!
//! The generic encoder copies every partition's records into one buffer: for
//! a fetch response that is the whole payload, copied once more, into a
//! freshly allocated (and, when large, freshly zeroed) buffer. Here the frame
//! is a chain of buffers instead: the small fields are encoded into a buffer
//! as usual, and each large piece of records is passed through as the shared
//! buffer it already is (the log's cache, or what a disk read returned), to
//! be written to the socket in order.
//!
//! Every field except `records` is still encoded by kafka-protocol: each
//! partition is encoded with null records, and the null marker is replaced
//! by the records' length and the records. The result is byte for byte what
//! the generic encoder would produce (tested for every version).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::frame_chain::FrameChain;
use crate::frame_chain::{empty_last_field_bytes, put_array_len, put_nullable_len, put_unsigned_varint};
use crate::response::EncodeError;

/// A partition's records, written into a frame.
pub trait RecordsSource {
    /// Bytes the records take on the wire.
    fn records_len(&self) -> usize;
    /// Appends exactly `records_len()` bytes.
    fn put_records(&self, out: &mut FrameChain);
}

impl RecordsSource for Bytes {
    fn records_len(&self) -> usize {
        self.len()
    }

    fn put_records(&self, out: &mut FrameChain) {
        out.put_bytes(self.clone());
    }
}

/// A whole Fetch response frame for `version`: the fields of `body` (whose
/// partitions' `records` are ignored) with the records of `records`, one
/// per partition in the order of `body`'s topics and partitions (`None`:
/// null records).
pub fn encode_fetch_response<R: RecordsSource>(
    version: i16,
    correlation_id: i32,
    body: &FetchResponse,
    records: &[Option<R>],
) -> Result<Vec<Bytes>, EncodeError> {
    let error = |reason: String| EncodeError {
        api: ApiKey::Fetch,
        version,
        reason,
    };
    if !(4..=16).contains(&version) {
        return Err(error("version outside 4-16".into()));
    }
    let partitions: usize = body.responses.iter().map(|t| t.partitions.len()).sum();
    if partitions != records.len() {
        return Err(error(format!("{} records for {partitions} partitions", records.len())));
    }
    let flexible = version >= 12;
    if !body.unknown_tagged_fields.is_empty() || !body.node_endpoints.is_empty() {
        return Err(error("top-level tagged fields are not encoded here".into()));
    }
    let mut out = FrameChain::for_frame();
    let mut scratch = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = ApiKey::Fetch.response_header_version(version);
    out.put_encoded(&mut scratch, 0, |b| header.encode(b, header_version))
        .map_err(error)?;
    out.put_slice(&body.throttle_time_ms.to_be_bytes());
    if version >= 7 {
        out.put_slice(&body.error_code.to_be_bytes());
        out.put_slice(&body.session_id.to_be_bytes());
    } else if body.session_id != 0 {
        return Err(error("session id set before v7".into()));
    }
    put_array_len(&mut out, body.responses.len(), flexible).map_err(error)?;
    let mut records = records.iter();
    for topic in &body.responses {
        if !topic.unknown_tagged_fields.is_empty() {
            return Err(error("topic tagged fields are not encoded here".into()));
        }
        if version >= 13 {
            out.put_slice(topic.topic_id.as_bytes());
        } else {
            let name = topic.topic.0.as_bytes();
            if flexible {
                put_unsigned_varint(&mut out, name.len() as u32 + 1);
            } else {
                let len = i16::try_from(name.len()).map_err(|_| error("topic name too long".into()))?;
                out.put_slice(&len.to_be_bytes());
            }
            out.put_slice(name);
        }
        put_array_len(&mut out, topic.partitions.len(), flexible).map_err(error)?;
        for partition in &topic.partitions {
            let source = records.next().expect("counted above");
            put_partition(&mut out, &mut scratch, partition, source.as_ref(), version).map_err(error)?;
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

fn put_partition<R: RecordsSource>(
    out: &mut FrameChain,
    scratch: &mut BytesMut,
    partition: &PartitionData,
    records: Option<&R>,
    version: i16,
) -> Result<(), String> {
    let flexible = version >= 12;
    if flexible
        && (!partition.unknown_tagged_fields.is_empty()
            || partition.diverging_epoch != Default::default()
            || partition.current_leader != Default::default()
            || partition.snapshot_id != Default::default())
    {
        return Err("partition tagged fields are not encoded here".into());
    }
    // Every field before the records, as the generic encoder writes them:
    // encode with null records, then drop the null marker (and the empty
    // tagged-field count after it, in flexible versions).
    let mut fields = partition.clone();
    fields.records = None;
    out.put_encoded(scratch, empty_last_field_bytes(flexible), |b| fields.encode(b, version))?;
    put_nullable_len(out, records.map(|r| r.records_len()), flexible)?;
    if let Some(r) = records {
        let before = out.len();
        r.put_records(out);
        assert_eq!(
            out.len() - before,
            r.records_len(),
            "a records source wrote other than its length"
        );
    }
    if flexible {
        put_unsigned_varint(out, 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse};
    use kafka_protocol::messages::{ProducerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::frame_chain::{SHARED_PIECE_MIN_BYTES, test_records as records};
    use crate::response::encode_response;

    fn sample(version: i16) -> (FetchResponse, Vec<Option<Bytes>>) {
        let sizes: [Option<usize>; 5] = [Some(100), None, Some(0), Some(70_000), Some(SHARED_PIECE_MIN_BYTES)];
        let mut response = FetchResponse::default().with_throttle_time_ms(3);
        if version >= 7 {
            response = response.with_error_code(0).with_session_id(0);
        }
        let mut all = Vec::new();
        for t in 0..2 {
            let mut topic = FetchableTopicResponse::default();
            if version >= 13 {
                topic.topic_id = uuid::Uuid::from_u128(0x1234_5678 + t as u128);
            } else {
                topic.topic = TopicName(StrBytes::from_string(format!("topic-{t}")));
            }
            for (i, size) in sizes.iter().enumerate() {
                let r = size.map(|n| records(n, (t * 10 + i) as u8));
                let mut p = PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_error_code(if i == 1 { 1 } else { 0 })
                    .with_high_watermark(1000 + i as i64)
                    .with_last_stable_offset(900 + i as i64)
                    .with_records(r.clone());
                if version >= 5 {
                    p.log_start_offset = 7;
                }
                if i % 2 == 0 {
                    p.aborted_transactions = Some(vec![
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(5))
                            .with_first_offset(42),
                    ]);
                }
                topic.partitions.push(p);
                all.push(r);
            }
            response.responses.push(topic);
        }
        (response, all)
    }

    #[test]
    fn chained_frames_equal_the_generic_encoding_in_every_version() {
        for version in 4..=16 {
            let (response, records) = sample(version);
            let expected = encode_response(ApiKey::Fetch, version, 77, &response).unwrap();
            let parts = encode_fetch_response(version, 77, &response, &records).unwrap();
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, expected.to_vec(), "version {version}");
            // The large records were passed through, not copied.
            assert!(parts.iter().any(|p| p.len() == 70_000), "version {version}");
        }
    }

    #[test]
    fn record_counts_and_tagged_fields_are_checked() {
        let (response, mut records) = sample(12);
        records.pop();
        assert!(encode_fetch_response(12, 1, &response, &records).is_err());
        assert!(encode_fetch_response::<Bytes>(3, 1, &FetchResponse::default(), &[]).is_err());
    }
}

//! Produce v0-v2, which the generated codec does not cover. Clients only send
//! them to brokers that advertise nothing newer; Sluice advertises them so
//! that librdkafka keeps compressing (it stops when the advertised minimum is
//! above 0). The body carries message sets of magic 0 or 1, which the broker
//! refuses per partition, so only the shape needs decoding here.
//!
//! Request v0-v2: `acks i16, timeout_ms i32, [topic string, [partition i32,
//! records bytes]]`. Response: `[topic string, [partition i32, error_code
//! i16, base_offset i64, (v2) log_append_time_ms i64]], (v1+)
//! throttle_time_ms i32`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

pub const LEGACY_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

fn get_i16(b: &mut Bytes) -> Option<i16> {
    (b.remaining() >= 2).then(|| b.get_i16())
}

fn get_i32(b: &mut Bytes) -> Option<i32> {
    (b.remaining() >= 4).then(|| b.get_i32())
}

fn get_string(b: &mut Bytes) -> Option<StrBytes> {
    let len = get_i16(b)?;
    if len < 0 || b.remaining() < len as usize {
        return None;
    }
    StrBytes::from_utf8(b.split_to(len as usize)).ok()
}

/// Decodes a v0-v2 body into the generated request type; `None` if malformed.
pub fn decode(body: &mut Bytes) -> Option<ProduceRequest> {
    let acks = get_i16(body)?;
    let timeout_ms = get_i32(body)?;
    let topic_count = get_i32(body)?;
    let mut topics = Vec::new();
    for _ in 0..topic_count.max(0) {
        let name = get_string(body)?;
        let partition_count = get_i32(body)?;
        let mut partitions = Vec::new();
        for _ in 0..partition_count.max(0) {
            let index = get_i32(body)?;
            let len = get_i32(body)?;
            let records = match len {
                -1 => None,
                n if n >= 0 && body.remaining() >= n as usize => Some(body.split_to(n as usize)),
                _ => return None,
            };
            partitions.push(PartitionProduceData::default().with_index(index).with_records(records));
        }
        topics.push(
            TopicProduceData::default()
                .with_name(TopicName(name))
                .with_partition_data(partitions),
        );
    }
    Some(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(topics),
    )
}

/// Encodes the response body for `version` (0-2).
pub fn encode_response(response: &ProduceResponse, version: i16, out: &mut BytesMut) {
    assert!(LEGACY_VERSIONS.contains(&version));
    out.put_i32(response.responses.len() as i32);
    for topic in &response.responses {
        let name = topic.name.0.as_bytes();
        out.put_i16(name.len() as i16);
        out.put_slice(name);
        out.put_i32(topic.partition_responses.len() as i32);
        for p in &topic.partition_responses {
            out.put_i32(p.index);
            out.put_i16(p.error_code);
            out.put_i64(p.base_offset);
            if version >= 2 {
                out.put_i64(p.log_append_time_ms);
            }
        }
    }
    if version >= 1 {
        out.put_i32(response.throttle_time_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};

    #[test]
    fn decodes_a_v2_body_and_refuses_truncations() {
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(1500);
        b.put_i32(1);
        b.put_i16(3);
        b.put_slice(b"abc");
        b.put_i32(1);
        b.put_i32(7);
        b.put_i32(2);
        b.put_slice(&[9, 9]);
        let full = b.freeze();
        let req = decode(&mut full.clone()).unwrap();
        assert_eq!(req.acks, 1);
        assert_eq!(req.timeout_ms, 1500);
        assert_eq!(&*req.topic_data[0].name.0, "abc");
        assert_eq!(req.topic_data[0].partition_data[0].index, 7);
        assert_eq!(
            req.topic_data[0].partition_data[0].records.as_deref(),
            Some(&[9u8, 9][..])
        );
        for cut in 0..full.len() {
            assert!(decode(&mut full.slice(..cut)).is_none(), "accepted a body cut at {cut}");
        }
    }

    #[test]
    fn encodes_each_version_with_its_fields() {
        let resp = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(0)
                        .with_error_code(2)
                        .with_base_offset(-1),
                ]),
        ]);
        let lens: Vec<usize> = (0..=2)
            .map(|v| {
                let mut out = BytesMut::new();
                encode_response(&resp, v, &mut out);
                out.len()
            })
            .collect();
        // v0: 4 + (2+1) + 4 + (4+2+8); v1 adds throttle (4); v2 adds append time (8).
        assert_eq!(lens, vec![25, 29, 37]);
    }
}

//! A bounded fuzz run on stable Rust, part of the test suite: valid request
//! frames of every served API and version, mutated at random (bit flips,
//! overwritten lengths, truncations, junk), fed to the decoder. The run
//! passes if nothing panics and no allocation is larger than a limit: the
//! decoder must never size a buffer by a length it has not seen the bytes
//! for. `SLUICE_FUZZ_ITERATIONS` sets the length of the run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use sluice_protocol::api::SERVED_APIS;
use sluice_protocol::fuzz_support::{decode_frame, decode_stream};
use sluice_protocol::kafka_protocol::messages::*;
use sluice_protocol::kafka_protocol::protocol::{Encodable, StrBytes};

/// The largest single allocation made while fuzzing.
struct Tracking;
static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// No frame here is over a few KiB; 16 MiB leaves room for the largest
/// legitimate buffer and none for one sized by a hostile count.
const ALLOCATION_BYTES_MAX: usize = 16 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A plausible request body for `key` at `version`, with arrays filled in
/// so that mutations land on counts and lengths.
fn sample_body(key: ApiKey, version: i16) -> Option<BytesMut> {
    let mut b = BytesMut::new();
    let batch = bytes::Bytes::from(vec![0u8; 70]);
    let ok = match key {
        ApiKey::Produce if version >= 3 => ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(topic("t"))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch)),
                    ]),
            ])
            .encode(&mut b, version),
        ApiKey::Produce => {
            // v0-2 by hand: acks, timeout, one topic, one partition.
            b.extend_from_slice(&[
                0, 1, 0, 0, 3, 232, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4,
            ]);
            Ok(())
        }
        ApiKey::Fetch => FetchRequest::default()
            .with_max_wait_ms(100)
            .with_topics(vec![
                fetch_request::FetchTopic::default()
                    .with_topic(if version < 13 { topic("t") } else { Default::default() })
                    .with_partitions(vec![
                        fetch_request::FetchPartition::default().with_partition_max_bytes(1 << 20),
                    ]),
            ])
            .encode(&mut b, version),
        ApiKey::Metadata => MetadataRequest::default()
            .with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(topic("t"))),
            ]))
            .encode(&mut b, version),
        ApiKey::ListOffsets => ListOffsetsRequest::default()
            .with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1),
                    ]),
            ])
            .encode(&mut b, version),
        ApiKey::ApiVersions => ApiVersionsRequest::default().encode(&mut b, version),
        ApiKey::CreateTopics => CreateTopicsRequest::default()
            .with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(topic("t"))
                    .with_num_partitions(3)
                    .with_configs(vec![
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_value(Some(StrBytes::from_static_str("1000"))),
                    ]),
            ])
            .encode(&mut b, version),
        ApiKey::DeleteTopics => DeleteTopicsRequest::default()
            .with_topic_names(if version < 6 { vec![topic("t")] } else { vec![] })
            .with_topics(if version >= 6 {
                vec![delete_topics_request::DeleteTopicState::default().with_name(Some(topic("t")))]
            } else {
                vec![]
            })
            .encode(&mut b, version),
        ApiKey::CreatePartitions => CreatePartitionsRequest::default()
            .with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(topic("t"))
                    .with_count(4),
            ])
            .encode(&mut b, version),
        ApiKey::DescribeConfigs => DescribeConfigsRequest::default()
            .with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
            ])
            .encode(&mut b, version),
        ApiKey::AlterConfigs => AlterConfigsRequest::default()
            .with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
            ])
            .encode(&mut b, version),
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::default()
            .with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
            ])
            .encode(&mut b, version),
        ApiKey::DeleteRecords => DeleteRecordsRequest::default()
            .with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default().with_offset(5),
                    ]),
            ])
            .encode(&mut b, version),
        ApiKey::DescribeCluster => DescribeClusterRequest::default().encode(&mut b, version),
        _ => return None,
    };
    ok.ok().map(|_| b)
}

/// Valid frames (header and body, no size prefix) for every served API at
/// every served version.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for api in SERVED_APIS {
        for version in api.min..=api.max {
            let Some(body) = sample_body(api.key, version) else {
                continue;
            };
            let header_version = api.key.request_header_version(version);
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(api.key as i16)
                .with_request_api_version(version)
                .with_correlation_id(7)
                .with_client_id(Some(StrBytes::from_static_str("fuzz")))
                .encode(&mut frame, header_version)
                .expect("header encodes");
            frame.extend_from_slice(&body);
            out.push(frame.to_vec());
        }
    }
    out
}

fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = frame.len().max(1);
        match rng.below(6) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = frame.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                // An extreme count or length over four bytes.
                let value: u32 = [0x7fff_ffff, 0xffff_ffff, 0x8000_0000, 0x0000_ffff, 0x00ff_ffff][rng.below(5)];
                let i = rng.below(len);
                for (k, byte) in value.to_be_bytes().iter().enumerate() {
                    if let Some(b) = frame.get_mut(i + k) {
                        *b = *byte;
                    }
                }
            }
            2 => frame.truncate(rng.below(len)),
            3 => {
                for _ in 0..rng.below(16) {
                    frame.push(rng.next() as u8);
                }
            }
            4 => {
                // A varint of maximal length (compact lengths in flexible
                // versions).
                let i = rng.below(len);
                for k in 0..5 {
                    if let Some(b) = frame.get_mut(i + k) {
                        *b = if k < 4 { 0xff } else { 0x0f };
                    }
                }
            }
            _ => {
                let i = rng.below(len);
                if let Some(b) = frame.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
}

#[test]
fn seeds_decode() {
    for frame in seeds() {
        sluice_protocol::request::decode_request(bytes::Bytes::from(frame.clone()))
            .unwrap_or_else(|e| panic!("seed {:?} does not decode: {e}", &frame[..4]));
    }
}

#[test]
fn mutated_requests_never_panic_or_over_allocate() {
    let iterations: usize = std::env::var("SLUICE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seeds = seeds();
    assert!(seeds.len() > 50, "too few seeds: {}", seeds.len());
    let mut rng = Rng(0x5eed_1234);
    let mut stream = Vec::new();
    for i in 0..iterations {
        let mut frame = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut frame);
        decode_frame(&frame);
        // Also as a stream: size prefix (sometimes wrong) then the frame.
        stream.clear();
        let size = if rng.below(8) == 0 {
            rng.next() as i32
        } else {
            frame.len() as i32
        };
        stream.extend_from_slice(&size.to_be_bytes());
        stream.extend_from_slice(&frame);
        decode_stream(&stream);
        let largest = LARGEST_ALLOCATION.load(Ordering::Relaxed);
        assert!(
            largest <= ALLOCATION_BYTES_MAX,
            "iteration {i}: an allocation of {largest} bytes"
        );
    }
}

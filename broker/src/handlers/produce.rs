//! Produce (v0-v11). Each partition's batches go to the shard that owns it.
//! There, every batch is checked (magic 2, CRC-32C, `max.message.bytes`)
//! before any of the partition's batches is appended; batches are appended
//! exactly as received, only offsets assigned. acks=all answers once the
//! batches are durable; acks=1 once appended; acks=0 not at all.

use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::ResponseError;
use sluice_protocol::kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use sluice_protocol::kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use sluice_protocol::kafka_protocol::protocol::StrBytes;
use sluice_storage::Offset;
use sluice_storage::batch::{BatchError, BatchHeader, split_batches, verify_crc};

use crate::error::storage_error_code;
use crate::partition::AppendError;
use crate::runtime;
use crate::shard::Shard;

/// One partition's part of a request, sent to its owner.
struct ProducePart {
    /// Position in the response: (topic, partition) indexes.
    slot: (usize, usize),
    topic: String,
    partition: i32,
    records: Option<Bytes>,
}

#[derive(Debug, Clone)]
struct PartResult {
    slot: (usize, usize),
    error_code: i16,
    error_message: Option<String>,
    base_offset: i64,
    log_start_offset: i64,
}

impl PartResult {
    fn error(slot: (usize, usize), error: ResponseError, message: Option<String>) -> PartResult {
        PartResult {
            slot,
            error_code: error.code(),
            error_message: message,
            base_offset: -1,
            log_start_offset: -1,
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, request: ProduceRequest, version: i16) -> Option<ProduceResponse> {
    let acks = request.acks;
    let metadata = shard.metadata();
    let mut response = ProduceResponse::default();
    let mut results: Vec<PartResult> = Vec::new();
    let mut by_owner: Vec<Vec<ProducePart>> = (0..shard.count).map(|_| Vec::new()).collect();
    for (ti, topic) in request.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        let known = metadata.topic(&name).cloned();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for (pi, p) in topic.partition_data.into_iter().enumerate() {
            partitions.push(PartitionProduceResponse::default().with_index(p.index));
            let slot = (ti, pi);
            if !matches!(acks, -1..=1) {
                results.push(PartResult::error(
                    slot,
                    ResponseError::InvalidRequiredAcks,
                    Some(format!("acks {acks}")),
                ));
                continue;
            }
            match &known {
                Some(t) if (0..t.partitions).contains(&p.index) => {
                    by_owner[shard.owner_of(&name, p.index)].push(ProducePart {
                        slot,
                        topic: name.clone(),
                        partition: p.index,
                        records: p.records,
                    });
                }
                _ => results.push(PartResult::error(slot, ResponseError::UnknownTopicOrPartition, None)),
            }
        }
        response.responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
    let timeout = runtime::client_wait(i64::from(request.timeout_ms));
    let calls: Vec<_> = by_owner
        .into_iter()
        .enumerate()
        .filter(|(_, parts)| !parts.is_empty())
        .map(|(owner, parts)| {
            let slots: Vec<(usize, usize)> = parts.iter().map(|p| p.slot).collect();
            let call = shard.invoke_on(owner, move |s| async move {
                produce_on_owner(&s, parts, acks, timeout).await
            });
            async move {
                call.await.unwrap_or_else(|_| {
                    slots
                        .into_iter()
                        .map(|slot| PartResult::error(slot, ResponseError::NotLeaderOrFollower, None))
                        .collect()
                })
            }
        })
        .collect();
    for owned in sluice_storage::local_sync::join_bounded(calls, shard.count).await {
        results.extend(owned);
    }
    if acks == 0 {
        return None;
    }
    for r in results {
        let p = &mut response.responses[r.slot.0].partition_responses[r.slot.1];
        p.error_code = r.error_code;
        p.base_offset = r.base_offset;
        if version >= 5 {
            p.log_start_offset = r.log_start_offset;
        }
        if version >= 8 {
            p.error_message = r.error_message.map(StrBytes::from_string);
        }
    }
    Some(response)
}

/// Runs on the owning shard: checks and appends each part in order, then
/// (acks=all) waits until they are durable.
async fn produce_on_owner(
    shard: &Rc<Shard>,
    parts: Vec<ProducePart>,
    acks: i16,
    timeout: std::time::Duration,
) -> Vec<PartResult> {
    let mut results = Vec::with_capacity(parts.len());
    let mut waits = Vec::new();
    for part in parts {
        let slot = part.slot;
        let Some(partition) = shard.partition(&part.topic, part.partition) else {
            results.push(PartResult::error(slot, ResponseError::NotLeaderOrFollower, None));
            continue;
        };
        let max_message_bytes = partition.settings().max_message_bytes;
        let batches = match check_batches(part.records, max_message_bytes) {
            Ok(b) => b,
            Err((error, message)) => {
                results.push(PartResult::error(slot, error, Some(message)));
                continue;
            }
        };
        let mut first: Option<Offset> = None;
        let mut last = Offset(0);
        let mut failed = None;
        for (batch, header) in batches {
            match partition.append(batch, header).await {
                Ok(appended) => {
                    first.get_or_insert(appended.base_offset);
                    last = last.max(appended.last_offset);
                }
                Err(AppendError::Rejected(e)) => {
                    failed = Some(e.code());
                    break;
                }
                Err(AppendError::Storage(e)) => {
                    failed = Some(storage_error_code(
                        &format!("append to {}-{}", part.topic, part.partition),
                        &e,
                    ));
                    break;
                }
            }
        }
        match (failed, first) {
            (Some(code), _) => results.push(PartResult {
                slot,
                error_code: code,
                error_message: None,
                base_offset: -1,
                log_start_offset: -1,
            }),
            (None, Some(base)) => {
                if acks == -1 {
                    waits.push((results.len(), partition.clone(), last.plus(1)));
                }
                results.push(PartResult {
                    slot,
                    error_code: 0,
                    error_message: None,
                    base_offset: base.0,
                    log_start_offset: partition.log_start_offset().0,
                });
            }
            (None, None) => unreachable!("check_batches returns at least one batch"),
        }
    }
    if !waits.is_empty() {
        let durable = waits.iter().map(|(i, p, offset)| {
            let (i, p, offset) = (*i, p.clone(), *offset);
            async move { (i, runtime::timeout(timeout, p.log.wait_durable(offset)).await) }
        });
        for (i, outcome) in sluice_storage::local_sync::join_bounded(durable.collect(), waits.len()).await {
            let r = &mut results[i];
            match outcome {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    r.error_code = storage_error_code("durable append", &e);
                    r.base_offset = -1;
                }
                None => {
                    r.error_code = ResponseError::RequestTimedOut.code();
                    r.error_message = Some("not durable within the request's timeout".into());
                }
            }
        }
    }
    results
}

/// Splits a partition's records into batches and checks each; any bad batch
/// fails the whole partition, before anything is appended.
fn check_batches(
    records: Option<Bytes>,
    max_message_bytes: i64,
) -> Result<Vec<(Bytes, BatchHeader)>, (ResponseError, String)> {
    let records = records.unwrap_or_default();
    if records.is_empty() {
        return Err((ResponseError::CorruptMessage, "no record batch".into()));
    }
    // Every message format keeps its magic byte at 16: old formats are
    // named as such even when shorter than a v2 batch header.
    if let Some(&magic) = records.get(16)
        && magic != 2
    {
        return Err((
            ResponseError::UnsupportedForMessageFormat,
            format!("message format magic {magic}: only magic 2 is supported"),
        ));
    }
    let (ranges, consumed) = split_batches(&records);
    if consumed != records.len() || ranges.is_empty() {
        return Err((
            ResponseError::CorruptMessage,
            format!(
                "records end with {} bytes that are not a whole batch",
                records.len() - consumed
            ),
        ));
    }
    let mut batches = Vec::with_capacity(ranges.len());
    for range in ranges {
        let batch = records.slice(range);
        if batch.len() as i64 > max_message_bytes {
            return Err((
                ResponseError::MessageTooLarge,
                format!(
                    "batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                    batch.len()
                ),
            ));
        }
        let header = match BatchHeader::parse(&batch) {
            Ok(h) => h,
            Err(BatchError::UnsupportedMagic { magic }) => {
                return Err((
                    ResponseError::UnsupportedForMessageFormat,
                    format!("record batch magic {magic}: only magic 2 is supported"),
                ));
            }
            Err(e) => return Err((ResponseError::CorruptMessage, e.to_string())),
        };
        verify_crc(&batch).map_err(|e| (ResponseError::CorruptMessage, e.to_string()))?;
        if header.is_control() {
            return Err((
                ResponseError::InvalidRecord,
                "clients may not write control batches".into(),
            ));
        }
        batches.push((batch, header));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::batch::build_batch;

    #[test]
    fn batches_are_checked_before_any_is_accepted() {
        let a = build_batch(2, 10, 0);
        let b = build_batch(1, 10, 0);
        let mut two = a.clone();
        two.extend_from_slice(&b);
        assert_eq!(check_batches(Some(Bytes::from(two.clone())), 1 << 20).unwrap().len(), 2);
        let code = |r: Result<Vec<(Bytes, BatchHeader)>, (ResponseError, String)>| r.unwrap_err().0;
        assert_eq!(code(check_batches(None, 1 << 20)), ResponseError::CorruptMessage);
        assert_eq!(
            code(check_batches(Some(Bytes::from(two.clone())), 50)),
            ResponseError::MessageTooLarge
        );
        let mut bad_crc = two.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert_eq!(
            code(check_batches(Some(Bytes::from(bad_crc)), 1 << 20)),
            ResponseError::CorruptMessage
        );
        let mut magic1 = a.clone();
        magic1[16] = 1;
        assert_eq!(
            code(check_batches(Some(Bytes::from(magic1)), 1 << 20)),
            ResponseError::UnsupportedForMessageFormat
        );
        let short_magic1 = {
            let mut m = vec![0u8; 36];
            m[16] = 1;
            m
        };
        assert_eq!(
            code(check_batches(Some(Bytes::from(short_magic1)), 1 << 20)),
            ResponseError::UnsupportedForMessageFormat
        );
        let mut trailing = a.clone();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            code(check_batches(Some(Bytes::from(trailing)), 1 << 20)),
            ResponseError::CorruptMessage
        );
    }
}

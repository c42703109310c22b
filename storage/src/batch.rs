//! The Kafka record batch (magic v2) header: the only part of a batch the log
//! reads. Payload records stay opaque bytes, stored and served as received.
//!
//! Layout (big-endian, offsets in bytes):
//!
//! ```text
//!  0 base_offset i64        27 base_timestamp i64
//!  8 batch_length i32       35 max_timestamp i64
//! 12 leader_epoch i32       43 producer_id i64
//! 16 magic i8               51 producer_epoch i16
//! 17 crc u32 (CRC-32C)      53 base_sequence i32
//! 21 attributes i16         57 record_count i32
//! 23 last_offset_delta i32  61 records...
//! ```
//!
//! The CRC-32C covers `attributes` to the end of the batch, so the log may
//! rewrite `base_offset` and `leader_epoch` without touching it.

use crate::offset::Offset;

/// Size of the fixed batch header; a batch is at least this long.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `batch_length` counts the bytes after itself.
const BATCH_LENGTH_END: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LEADER_EPOCH_AT: usize = 12;

/// The record batch magic this broker stores. Older message formats are rejected.
pub const MAGIC_V2: i8 = 2;

/// Attribute bits (Kafka `RecordBatch.attributes`).
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
pub const ATTR_TIMESTAMP_LOG_APPEND: i16 = 0x08;
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
pub const ATTR_CONTROL: i16 = 0x20;

/// Why a byte string is not one valid record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {bytes} bytes is shorter than the {BATCH_HEADER_BYTES}-byte header")]
    TooShort { bytes: usize },
    #[error("batch_length {declared} does not match the {actual} bytes given")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("unsupported record batch magic {magic}")]
    UnsupportedMagic { magic: i8 },
    #[error("CRC-32C mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("record_count {record_count} is inconsistent with last_offset_delta {last_offset_delta}")]
    InconsistentCount { record_count: i32, last_offset_delta: i32 },
}

/// The header fields of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub batch_bytes: usize,
    pub leader_epoch: i32,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses and checks the header of `bytes`, which must hold exactly one
    /// batch. The CRC is not verified here: see [`verify_crc`].
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        // The magic byte sits at the same place in every message format, so
        // an old-format message, shorter than a v2 header, is still named
        // for what it is.
        if let Some(&magic) = bytes.get(MAGIC_AT)
            && magic as i8 != MAGIC_V2
        {
            return Err(BatchError::UnsupportedMagic { magic: magic as i8 });
        }
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort { bytes: bytes.len() });
        }
        let batch_length = i64::from(be_i32(bytes, 8));
        if batch_length + BATCH_LENGTH_END as i64 != bytes.len() as i64 {
            return Err(BatchError::LengthMismatch {
                declared: batch_length,
                actual: bytes.len(),
            });
        }
        let header = BatchHeader {
            base_offset: Offset(be_i64(bytes, 0)),
            batch_bytes: bytes.len(),
            leader_epoch: be_i32(bytes, LEADER_EPOCH_AT),
            crc: be_u32(bytes, CRC_AT),
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            record_count: be_i32(bytes, 57),
        };
        // Producers always number records 0..count inside a batch; a batch
        // that says otherwise would make offsets and record count disagree.
        if header.record_count < 1
            || header.last_offset_delta < 0
            || i64::from(header.last_offset_delta) + 1 != i64::from(header.record_count)
        {
            return Err(BatchError::InconsistentCount {
                record_count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    /// Offset of the last record, once `base_offset` is assigned.
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + i64::from(self.last_offset_delta))
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }
}

/// CRC-32C (Castagnoli), as Kafka's record batches carry it.
///
/// Through crc-fast, which folds with VPCLMULQDQ (or PCLMULQDQ) where the CPU
/// has it: on this project's benchmark machine 53-57 GB/s on 16 KiB-1 MiB
/// inputs, against 22-28 GB/s for the crc32c crate's SSE4.2 loop, and every
/// produced byte passes through it once.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Checks the batch's CRC-32C (Castagnoli), which covers `attributes` to the end.
pub fn verify_crc(bytes: &[u8]) -> Result<(), BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::TooShort { bytes: bytes.len() });
    }
    let expected = be_u32(bytes, CRC_AT);
    let actual = crc32c(&bytes[ATTRIBUTES_AT..]);
    if expected != actual {
        return Err(BatchError::CrcMismatch { expected, actual });
    }
    Ok(())
}

/// Writes the batch's CRC-32C; used by whoever builds batches (tests, bench).
pub fn write_crc(bytes: &mut [u8]) {
    assert!(bytes.len() >= BATCH_HEADER_BYTES);
    let crc = crc32c(&bytes[ATTRIBUTES_AT..]);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Stores the base offset the log assigned; the CRC does not cover it.
pub fn set_base_offset(bytes: &mut [u8], base_offset: Offset) {
    assert!(bytes.len() >= BATCH_HEADER_BYTES);
    bytes[0..8].copy_from_slice(&base_offset.0.to_be_bytes());
}

/// Stores the partition leader epoch; the CRC does not cover it.
pub fn set_leader_epoch(bytes: &mut [u8], epoch: i32) {
    assert!(bytes.len() >= BATCH_HEADER_BYTES);
    bytes[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Splits a byte string holding several concatenated batches (a produce
/// request's records, a fetch response's records) into batch-sized slices.
/// Stops at the first length that does not fit; returns the bytes consumed.
pub fn split_batches(bytes: &[u8]) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut ranges = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= BATCH_LENGTH_END {
        let batch_length = i64::from(be_i32(bytes, pos + 8));
        let total = batch_length + BATCH_LENGTH_END as i64;
        if total < BATCH_HEADER_BYTES as i64 || total > (bytes.len() - pos) as i64 {
            break;
        }
        let end = pos + total as usize;
        ranges.push(pos..end);
        pos = end;
    }
    (ranges, pos)
}

/// Big-endian i16 at `at`.
pub fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian i32 at `at`.
pub fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Big-endian i64 at `at`.
pub fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// A record to encode: key, value, headers; offset and timestamp deltas
/// follow its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordData {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Who writes a batch, and how: producer id, epoch, first sequence, and
/// the transactional and control attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWriter {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
    pub control: bool,
}

impl BatchWriter {
    /// A batch of no producer: not idempotent, not transactional.
    pub const NONE: BatchWriter = BatchWriter {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        transactional: false,
        control: false,
    };
}

/// Encodes an uncompressed v2 batch of `records` at `timestamp_ms`, base
/// offset 0, no producer id. Used for Sluice's own internal logs, tests and
/// benchmarks.
pub fn encode_batch(records: &[RecordData], timestamp_ms: i64) -> Vec<u8> {
    encode_batch_as(records, timestamp_ms, BatchWriter::NONE)
}

/// Encodes an uncompressed v2 batch written by `writer`.
pub fn encode_batch_as(records: &[RecordData], timestamp_ms: i64, writer: BatchWriter) -> Vec<u8> {
    assert!(!records.is_empty());
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut rec = Vec::new();
        rec.push(0u8); // record attributes
        put_varint(&mut rec, 0); // timestamp delta
        put_varint(&mut rec, i as i64); // offset delta
        put_bytes(&mut rec, r.key.as_deref());
        put_bytes(&mut rec, r.value.as_deref());
        put_varint(&mut rec, r.headers.len() as i64);
        for (name, value) in &r.headers {
            put_bytes(&mut rec, Some(name.as_bytes()));
            put_bytes(&mut rec, value.as_deref());
        }
        put_varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let count = records.len() as i32;
    let total = BATCH_HEADER_BYTES + body.len();
    let mut attributes = 0i16;
    if writer.transactional {
        attributes |= ATTR_TRANSACTIONAL;
    }
    if writer.control {
        attributes |= ATTR_CONTROL;
    }
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((total - BATCH_LENGTH_END) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&writer.producer_id.to_be_bytes());
    b.extend_from_slice(&writer.producer_epoch.to_be_bytes());
    b.extend_from_slice(&writer.base_sequence.to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&body);
    assert_eq!(b.len(), total);
    write_crc(&mut b);
    b
}

/// What a transaction marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerType {
    Abort,
    Commit,
}

/// A transaction marker: a control batch of one record whose key is
/// (version 0, type: 0 abort, 1 commit) and whose value is (version 0,
/// coordinator epoch), written by the transaction's producer.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: MarkerType,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let kind: i16 = match marker {
        MarkerType::Abort => 0,
        MarkerType::Commit => 1,
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = RecordData {
        key: Some(key),
        value: Some(value),
        headers: Vec::new(),
    };
    encode_batch_as(
        &[record],
        timestamp_ms,
        BatchWriter {
            producer_id,
            producer_epoch,
            base_sequence: -1,
            transactional: true,
            control: true,
        },
    )
}

/// The marker type of a control batch; `None` for anything else (or a
/// control record type other than a transaction marker).
pub fn marker_type(batch: &[u8]) -> Option<MarkerType> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() {
        return None;
    }
    let records = decode_uncompressed(batch)?;
    let key = records.first()?.key.as_ref()?;
    match i16::from_be_bytes([*key.get(2)?, *key.get(3)?]) {
        0 => Some(MarkerType::Abort),
        1 => Some(MarkerType::Commit),
        _ => None,
    }
}

/// The sequence number `count` records after `sequence`, wrapping at
/// `i32::MAX` as Kafka's producers do.
pub fn sequence_after(sequence: i32, count: i32) -> i32 {
    ((i64::from(sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Builds a syntactically valid batch with `record_count` records of opaque
/// payload; used by tests and benchmarks that need batches without a Kafka
/// client. The records are real v2 records (varint framed) so clients could
/// decode them.
pub fn build_batch(record_count: i32, value_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    assert!(record_count >= 1);
    let records: Vec<RecordData> = (0..record_count)
        .map(|i| RecordData {
            key: None,
            value: Some(vec![(i % 251) as u8; value_bytes]),
            headers: Vec::new(),
        })
        .collect();
    encode_batch(&records, timestamp_ms)
}

/// A record decoded from an uncompressed batch: its absolute offset, key
/// and value (headers skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: Offset,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Decodes the records of an uncompressed batch (with its base offset
/// assigned). `None` for a compressed or malformed batch.
pub fn decode_uncompressed(batch: &[u8]) -> Option<Vec<DecodedRecord>> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.compression() != 0 {
        return None;
    }
    let mut pos = BATCH_HEADER_BYTES;
    let mut out = Vec::with_capacity((header.record_count as usize).min(batch.len()));
    for _ in 0..header.record_count {
        let len = get_varint(batch, &mut pos)?;
        let end = pos.checked_add(usize::try_from(len).ok()?)?;
        if end > batch.len() {
            return None;
        }
        let rec = &batch[pos..end];
        let mut p = 1usize; // attributes
        get_varint(rec, &mut p)?; // timestamp delta
        let delta = get_varint(rec, &mut p)?;
        let key = get_bytes(rec, &mut p)?;
        let value = get_bytes(rec, &mut p)?;
        out.push(DecodedRecord {
            offset: header.base_offset.plus(delta.max(0)),
            key,
            value,
        });
        pos = end;
    }
    Some(out)
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// A zigzag varint (Kafka records) at `*pos`, advancing it; None if cut short.
pub fn get_varint(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    None
}

fn get_bytes(b: &[u8], pos: &mut usize) -> Option<Option<Vec<u8>>> {
    let len = get_varint(b, pos)?;
    if len < 0 {
        return Some(None);
    }
    let end = pos.checked_add(usize::try_from(len).ok()?)?;
    let bytes = b.get(*pos..end)?.to_vec();
    *pos = end;
    Some(Some(bytes))
}

/// Appends `value` as a zigzag varint (Kafka records).
pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value, and a bitwise reference over a long
        // input (the folded path). Coordinator partitions hash ids with
        // it, so it must never change.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let long: Vec<u8> = (0..100_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut bitwise = !0u32;
        for &b in &long {
            bitwise ^= b as u32;
            for _ in 0..8 {
                bitwise = (bitwise >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(bitwise & 1));
            }
        }
        assert_eq!(crc32c(&long), !bitwise);
    }

    #[test]
    fn built_batch_parses_and_verifies() {
        let b = build_batch(3, 10, 1_700_000_000_000);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1_700_000_000_000);
        assert_eq!(h.batch_bytes, b.len());
        verify_crc(&b).unwrap();
    }

    #[test]
    fn base_offset_and_epoch_do_not_change_the_crc() {
        let mut b = build_batch(1, 5, 7);
        set_base_offset(&mut b, Offset(1234));
        set_leader_epoch(&mut b, 9);
        verify_crc(&b).unwrap();
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset, Offset(1234));
        assert_eq!(h.leader_epoch, 9);
        assert_eq!(h.last_offset(), Offset(1234));
    }

    #[test]
    fn rejects_malformed_batches() {
        let good = build_batch(2, 4, 0);
        let check = |bytes: &[u8], expected: BatchError| {
            assert_eq!(BatchHeader::parse(bytes), Err(expected));
        };
        check(&good[..10], BatchError::TooShort { bytes: 10 });
        check(
            &good[..good.len() - 1],
            BatchError::LengthMismatch {
                declared: (good.len() - 12) as i64,
                actual: good.len() - 1,
            },
        );
        let mut magic1 = good.clone();
        magic1[MAGIC_AT] = 1;
        check(&magic1, BatchError::UnsupportedMagic { magic: 1 });
        let mut count = good.clone();
        count[57..61].copy_from_slice(&5i32.to_be_bytes());
        check(
            &count,
            BatchError::InconsistentCount {
                record_count: 5,
                last_offset_delta: 1,
            },
        );
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(verify_crc(&flipped), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn split_batches_stops_at_a_partial_batch() {
        let a = build_batch(1, 3, 0);
        let b = build_batch(2, 3, 0);
        let mut joined = a.clone();
        joined.extend_from_slice(&b);
        joined.extend_from_slice(&a[..20]);
        let (ranges, consumed) = split_batches(&joined);
        assert_eq!(ranges, vec![0..a.len(), a.len()..a.len() + b.len()]);
        assert_eq!(consumed, a.len() + b.len());
    }

    #[test]
    fn encoded_records_decode_back() {
        let records = vec![
            RecordData {
                key: Some(b"k1".to_vec()),
                value: Some(b"v1".to_vec()),
                headers: vec![("h".into(), Some(b"x".to_vec()))],
            },
            RecordData {
                key: None,
                value: None,
                headers: vec![],
            },
        ];
        let mut b = encode_batch(&records, 5);
        set_base_offset(&mut b, Offset(40));
        verify_crc(&b).unwrap();
        let got = decode_uncompressed(&b).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].offset, Offset(40));
        assert_eq!(got[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(got[1].offset, Offset(41));
        assert_eq!(got[1].value, None);
        for cut in 61..b.len() {
            let mut t = b[..cut].to_vec();
            let len = (t.len() - 12) as i32;
            t[8..12].copy_from_slice(&len.to_be_bytes());
            let _ = decode_uncompressed(&t);
        }
    }

    #[test]
    fn markers_say_what_they_are() {
        for (marker, epoch) in [(MarkerType::Commit, 3), (MarkerType::Abort, 0)] {
            let b = encode_marker(77, epoch, marker, 5, 1000);
            verify_crc(&b).unwrap();
            let h = BatchHeader::parse(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (77, epoch));
            assert_eq!(marker_type(&b), Some(marker));
        }
        assert_eq!(marker_type(&build_batch(1, 5, 0)), None);
        assert_eq!(sequence_after(5, 3), 8);
        assert_eq!(sequence_after(i32::MAX, 1), 0);
        assert_eq!(sequence_after(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn split_batches_never_panics_on_garbage() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let (ranges, consumed) = split_batches(&junk);
            assert!(consumed <= junk.len());
            for r in ranges {
                assert!(r.end <= junk.len());
            }
        }
    }
}

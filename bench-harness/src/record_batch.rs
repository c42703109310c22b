//! Kafka v2 record batches as the harness writes and reads them. Pure: no I/O.
//!
//! Each record's value starts with its stamp: the time, in microseconds on
//! the harness's clock (see `clock`), at which the record was meant to be
//! sent. Producers measure latency from it (kept beside the batch), and
//! consumers read it back for end-to-end latency.
//!
//! Batch layout (big-endian): base_offset i64, batch_length i32,
//! leader_epoch i32, magic i8, crc u32 (CRC-32C of attributes..end),
//! attributes i16, last_offset_delta i32, base_timestamp i64,
//! max_timestamp i64, producer_id i64, producer_epoch i16, base_sequence
//! i32, record_count i32, then the records, each varint-framed.

use bytes::Bytes;
pub use sluice_storage::batch::BATCH_HEADER_BYTES;
use sluice_storage::batch::{
    ATTR_COMPRESSION_MASK, ATTR_CONTROL, MAGIC_V2, be_i16, be_i32, be_i64, get_varint, put_varint, write_crc,
};

/// Bytes at the front of each value that hold the stamp.
pub const STAMP_BYTES: usize = 8;
/// A record's framing around its value, at most: length, attributes, two
/// deltas, null key, value length, header count, each a varint.
pub const RECORD_OVERHEAD_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 1 + 5 + 1;

const BATCH_LENGTH_END: usize = 12;
const MAGIC_AT: usize = 16;
const ATTRIBUTES_AT: usize = 21;
/// Filler for the rest of each value: not zeros, so that a broker or disk
/// that special-cases zero pages is not flattered.
const VALUE_FILL_BYTE: u8 = 0x5a;

/// Builds one uncompressed batch, record by record.
pub struct BatchBuilder {
    bytes: Vec<u8>,
    record_count: i32,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl BatchBuilder {
    pub fn new(capacity_bytes: usize) -> BatchBuilder {
        let mut bytes = Vec::with_capacity(capacity_bytes.max(BATCH_HEADER_BYTES));
        bytes.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            bytes,
            record_count: 0,
            base_timestamp_ms: 0,
            max_timestamp_ms: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    #[cfg(test)]
    pub fn record_count(&self) -> usize {
        self.record_count as usize
    }

    /// Bytes of the batch so far, header included.
    #[cfg(test)]
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Whether a record of `value_bytes` still fits within `batch_bytes_max`.
    /// An empty batch always takes one record, however large.
    pub fn fits(&self, value_bytes: usize, batch_bytes_max: usize) -> bool {
        self.is_empty() || self.bytes.len() + value_bytes + RECORD_OVERHEAD_BYTES_MAX <= batch_bytes_max
    }

    /// Appends a record with a `value_bytes`-byte value starting with
    /// `stamp_us`, created at `timestamp_ms`.
    pub fn push(&mut self, value_bytes: usize, stamp_us: u64, timestamp_ms: i64) {
        assert!(value_bytes >= STAMP_BYTES, "a value holds at least its stamp");
        if self.record_count == 0 {
            self.base_timestamp_ms = timestamp_ms;
            self.max_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let timestamp_delta = timestamp_ms - self.base_timestamp_ms;
        let offset_delta = i64::from(self.record_count);
        let body_bytes = 1
            + varint_bytes(timestamp_delta)
            + varint_bytes(offset_delta)
            + varint_bytes(-1)
            + varint_bytes(value_bytes as i64)
            + value_bytes
            + varint_bytes(0);
        put_varint(&mut self.bytes, body_bytes as i64);
        let body_start = self.bytes.len();
        self.bytes.push(0); // record attributes
        put_varint(&mut self.bytes, timestamp_delta);
        put_varint(&mut self.bytes, offset_delta);
        put_varint(&mut self.bytes, -1); // null key
        put_varint(&mut self.bytes, value_bytes as i64);
        self.bytes.extend_from_slice(&stamp_us.to_be_bytes());
        self.bytes
            .resize(self.bytes.len() + value_bytes - STAMP_BYTES, VALUE_FILL_BYTE);
        put_varint(&mut self.bytes, 0); // no headers
        debug_assert_eq!(self.bytes.len() - body_start, body_bytes);
        self.record_count += 1;
    }

    /// The finished batch: header filled in, CRC-32C written. The builder is
    /// left empty for the next batch.
    pub fn finish(&mut self) -> Bytes {
        assert!(self.record_count > 0, "a batch holds at least one record");
        let total = self.bytes.len();
        let b = &mut self.bytes;
        b[0..8].copy_from_slice(&0i64.to_be_bytes());
        b[8..12].copy_from_slice(&((total - BATCH_LENGTH_END) as i32).to_be_bytes());
        b[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // leader epoch: the broker's to set
        b[MAGIC_AT] = MAGIC_V2 as u8;
        b[ATTRIBUTES_AT..23].copy_from_slice(&0i16.to_be_bytes());
        b[23..27].copy_from_slice(&(self.record_count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&self.base_timestamp_ms.to_be_bytes());
        b[35..43].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // no producer id
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        b[57..61].copy_from_slice(&self.record_count.to_be_bytes());
        write_crc(b);
        let capacity = b.capacity();
        let done = std::mem::replace(b, Vec::with_capacity(capacity));
        self.bytes.resize(BATCH_HEADER_BYTES, 0);
        self.record_count = 0;
        Bytes::from(done)
    }
}

/// What reading the batches of one fetched partition found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadSummary {
    /// The offset after the last whole batch, if there was one.
    pub next_offset: Option<i64>,
    /// Records in whole data batches (control batches excluded).
    pub record_count: u64,
    /// Bytes of those records' values (of the whole batch, for a
    /// compressed one): the payload, as producers count it.
    pub value_bytes: u64,
    /// Bytes of whole batches.
    pub batch_bytes: u64,
}

/// Why fetched bytes could not be read as batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("record batch magic {0} is not v2")]
    UnsupportedMagic(i8),
    #[error("malformed record at byte {0}")]
    MalformedRecord(usize),
}

/// Reads the batches in a fetched partition's `records`, calling `on_stamp`
/// with the stamp of every record of an uncompressed data batch. A partial
/// batch at the end (a broker may cut the last one at the size limit) is
/// ignored. CRCs are not checked: the broker checked them on produce, and
/// the consumer must not be the bottleneck.
pub fn read_batches(records: &[u8], mut on_stamp: impl FnMut(u64)) -> Result<ReadSummary, ReadError> {
    let mut summary = ReadSummary::default();
    let mut pos = 0usize;
    while records.len() - pos >= BATCH_HEADER_BYTES {
        let batch_length = be_i32(records, pos + 8);
        let total = i64::from(batch_length) + BATCH_LENGTH_END as i64;
        if total < BATCH_HEADER_BYTES as i64 || total > (records.len() - pos) as i64 {
            break;
        }
        let end = pos + total as usize;
        let batch = &records[pos..end];
        let magic = batch[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(ReadError::UnsupportedMagic(magic));
        }
        let attributes = be_i16(batch, ATTRIBUTES_AT);
        let base_offset = be_i64(batch, 0);
        let last_offset_delta = be_i32(batch, 23);
        let record_count = be_i32(batch, 57).max(0) as u64;
        summary.next_offset = Some(base_offset + i64::from(last_offset_delta) + 1);
        summary.batch_bytes += total as u64;
        if attributes & ATTR_CONTROL == 0 {
            summary.record_count += record_count;
            if attributes & ATTR_COMPRESSION_MASK == 0 {
                summary.value_bytes += read_stamps(batch, record_count, pos, &mut on_stamp)?;
            } else {
                summary.value_bytes += total as u64;
            }
        }
        pos = end;
    }
    Ok(summary)
}

/// Calls `on_stamp` for each record's stamp; returns the bytes of the values.
fn read_stamps(
    batch: &[u8],
    record_count: u64,
    batch_at: usize,
    on_stamp: &mut impl FnMut(u64),
) -> Result<u64, ReadError> {
    let mut pos = BATCH_HEADER_BYTES;
    let mut value_bytes_total = 0u64;
    for _ in 0..record_count {
        let malformed = |p: usize| ReadError::MalformedRecord(batch_at + p);
        let length = get_varint(batch, &mut pos).ok_or(malformed(pos))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= batch.len())
            .ok_or(malformed(pos))?;
        let record = &batch[pos..end];
        let mut p = 1usize; // attributes
        get_varint(record, &mut p).ok_or(malformed(pos))?; // timestamp delta
        get_varint(record, &mut p).ok_or(malformed(pos))?; // offset delta
        let key_bytes = get_varint(record, &mut p).ok_or(malformed(pos))?;
        if key_bytes > 0 {
            p += key_bytes as usize;
        }
        let value_bytes = get_varint(record, &mut p).ok_or(malformed(pos))?;
        value_bytes_total += value_bytes.max(0) as u64;
        if value_bytes >= STAMP_BYTES as i64
            && let Some(stamp) = record.get(p..p + STAMP_BYTES)
        {
            on_stamp(u64::from_be_bytes(stamp.try_into().expect("8 bytes")));
        }
        pos = end;
    }
    Ok(value_bytes_total)
}

fn varint_bytes(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::kafka_protocol::records::RecordBatchDecoder;

    fn batch_of(stamps: &[u64], value_bytes: usize) -> Bytes {
        let mut b = BatchBuilder::new(4096);
        for (i, &s) in stamps.iter().enumerate() {
            b.push(value_bytes, s, 1_700_000_000_000 + i as i64);
        }
        b.finish()
    }

    #[test]
    fn varint_sizes_match_their_encoding() {
        for v in [0i64, 1, -1, 63, 64, -64, -65, 8191, 8192, 1 << 40, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_bytes(v), "{v}");
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos), Some(v));
        }
    }

    #[test]
    fn built_batches_decode_with_a_real_kafka_decoder() {
        let stamps = [11u64, 22, 33];
        let mut bytes = batch_of(&stamps, 100);
        let set = RecordBatchDecoder::decode(&mut bytes).expect("kafka-protocol decodes it and checks its CRC");
        assert_eq!(set.records.len(), 3);
        for (i, r) in set.records.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.timestamp, 1_700_000_000_000 + i as i64);
            assert!(r.key.is_none());
            let value = r.value.as_ref().expect("a value");
            assert_eq!(value.len(), 100);
            assert_eq!(&value[..8], &stamps[i].to_be_bytes());
        }
    }

    #[test]
    fn the_reader_finds_every_stamp_and_the_next_offset() {
        let first = batch_of(&[1, 2], 8);
        let mut second = batch_of(&[3, 4, 5], 1024).to_vec();
        second[0..8].copy_from_slice(&10i64.to_be_bytes()); // base offset as a broker assigns it
        let mut fetched = first.to_vec();
        fetched.extend_from_slice(&second);
        // A partial batch at the end, as a size-limited fetch returns it.
        fetched.extend_from_slice(&first[..30]);
        let mut stamps = Vec::new();
        let summary = read_batches(&fetched, |s| stamps.push(s)).expect("reads");
        assert_eq!(stamps, vec![1, 2, 3, 4, 5]);
        assert_eq!(summary.record_count, 5);
        assert_eq!(summary.value_bytes, 2 * 8 + 3 * 1024);
        assert_eq!(summary.next_offset, Some(13));
        assert_eq!(summary.batch_bytes, (first.len() + second.len()) as u64);
        assert_eq!(read_batches(&[], |_| ()).expect("reads"), ReadSummary::default());
    }

    #[test]
    fn fits_keeps_batches_within_their_limit() {
        let mut b = BatchBuilder::new(0);
        let limit = 4096;
        while b.fits(1000, limit) {
            b.push(1000, 0, 0);
        }
        // 61 header bytes + 3 records of 1008 bytes leave less than a value
        // and the largest framing a record can need.
        assert_eq!(b.record_count(), 3);
        assert!(b.len_bytes() <= limit);
        let len_bytes = b.len_bytes();
        let batch = b.finish();
        assert_eq!(batch.len(), len_bytes);
        assert!(b.is_empty() && b.len_bytes() == BATCH_HEADER_BYTES);
    }

    #[test]
    fn other_magics_are_refused() {
        let mut bytes = batch_of(&[1], 8).to_vec();
        bytes[MAGIC_AT] = 1;
        assert_eq!(read_batches(&bytes, |_| ()), Err(ReadError::UnsupportedMagic(1)));
    }
}

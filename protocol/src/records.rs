//! Record-level reads of a stored batch, for the few places a broker must
//! look inside one (ListOffsets by timestamp). Decompression goes through
//! the vendored codec's size-capped decompressors.

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

/// A record's offset and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPoint {
    pub offset: i64,
    pub timestamp: i64,
}

fn decode(batch: Bytes) -> Result<Vec<RecordPoint>, String> {
    let mut buf = batch;
    let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| e.to_string())?;
    Ok(set
        .records
        .iter()
        .map(|r| RecordPoint {
            offset: r.offset,
            timestamp: r.timestamp,
        })
        .collect())
}

/// The first record of `batch` at or after `offset_min` whose timestamp is
/// at least `timestamp`.
pub fn first_at_or_after(batch: Bytes, timestamp: i64, offset_min: i64) -> Result<Option<RecordPoint>, String> {
    Ok(decode(batch)?
        .into_iter()
        .find(|r| r.timestamp >= timestamp && r.offset >= offset_min))
}

/// The first record of `batch` with the largest timestamp, at or after
/// `offset_min`.
pub fn max_timestamp(batch: Bytes, offset_min: i64) -> Result<Option<RecordPoint>, String> {
    let records = decode(batch)?;
    let mut best: Option<RecordPoint> = None;
    for r in records.into_iter().filter(|r| r.offset >= offset_min) {
        if best.is_none_or(|b| r.timestamp > b.timestamp) {
            best = Some(r);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn batch(compression: Compression) -> Bytes {
        let records: Vec<Record> = [(10, 100), (11, 300), (12, 200)]
            .iter()
            .enumerate()
            .map(|(i, (offset, ts))| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: *offset,
                sequence: i as i32,
                timestamp: *ts,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn finds_records_by_timestamp_in_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(c);
            let at = |ts, min| first_at_or_after(b.clone(), ts, min).unwrap().map(|r| r.offset);
            assert_eq!(at(150, 0), Some(11), "{c:?}");
            assert_eq!(at(100, 0), Some(10));
            assert_eq!(at(100, 11), Some(11));
            assert_eq!(at(301, 0), None);
            assert_eq!(
                max_timestamp(b.clone(), 0).unwrap(),
                Some(RecordPoint {
                    offset: 11,
                    timestamp: 300
                })
            );
        }
        assert!(first_at_or_after(Bytes::from_static(&[1, 2, 3]), 0, 0).is_err());
    }
}

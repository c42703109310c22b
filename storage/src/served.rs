//! A batch as the log serves it.
//!
//! The log never rewrites a producer's bytes in memory: it assigns the base
//! offset and leader epoch on the way to the disk, and the cache keeps the
//! bytes exactly as received. A [`ServedBatch`] therefore carries the true
//! base offset and epoch beside the bytes, whose first 16 bytes may still
//! hold what the producer sent. Whoever puts a batch on the wire writes
//! [`head`](ServedBatch::head) and then [`tail`](ServedBatch::tail): no copy
//! of the payload is ever made to serve it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::offset::Offset;

/// Bytes at the start of a batch that the log assigns: base offset (8),
/// batch length (4, unchanged), partition leader epoch (4).
pub const ASSIGNED_HEAD_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBatch {
    base_offset: Offset,
    leader_epoch: i32,
    bytes: Bytes,
}

impl ServedBatch {
    pub(crate) fn new(base_offset: Offset, leader_epoch: i32, bytes: Bytes) -> ServedBatch {
        assert!(bytes.len() >= crate::batch::BATCH_HEADER_BYTES);
        ServedBatch {
            base_offset,
            leader_epoch,
            bytes,
        }
    }

    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    pub fn last_offset(&self) -> Offset {
        let delta = i32::from_be_bytes([self.bytes[23], self.bytes[24], self.bytes[25], self.bytes[26]]);
        self.base_offset.plus(i64::from(delta))
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// Size of the batch on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The first 16 bytes as served: assigned base offset, length, epoch.
    pub fn head(&self) -> [u8; ASSIGNED_HEAD_BYTES] {
        let mut head = [0u8; ASSIGNED_HEAD_BYTES];
        head[0..8].copy_from_slice(&self.base_offset.0.to_be_bytes());
        head[8..12].copy_from_slice(&self.bytes[8..12]);
        head[12..16].copy_from_slice(&self.leader_epoch.to_be_bytes());
        head
    }

    /// Everything after the head, shared with the stored bytes.
    pub fn tail(&self) -> Bytes {
        self.bytes.slice(ASSIGNED_HEAD_BYTES..)
    }

    /// The raw bytes, whose head may be stale (see `raw`), given up.
    pub(crate) fn into_raw(self) -> Bytes {
        self.bytes
    }

    /// The raw bytes whose head may be stale; for callers that only read
    /// fields past the head (attributes, timestamps, producer id).
    pub fn raw(&self) -> &Bytes {
        &self.bytes
    }

    /// The batch exactly as served, as one buffer. Free when the stored
    /// bytes already carry the assigned head (batches read from disk);
    /// otherwise one copy.
    pub fn to_bytes(&self) -> Bytes {
        let head = self.head();
        if self.bytes[..ASSIGNED_HEAD_BYTES] == head {
            return self.bytes.clone();
        }
        let mut out = BytesMut::with_capacity(self.bytes.len());
        self.write_to(&mut out);
        out.freeze()
    }

    /// Appends the batch as served to `out`.
    pub fn write_to(&self, out: &mut impl BufMut) {
        out.put_slice(&self.head());
        out.put_slice(&self.bytes[ASSIGNED_HEAD_BYTES..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchHeader, build_batch, verify_crc};

    #[test]
    fn served_bytes_carry_the_assigned_offset_and_epoch_and_a_valid_crc() {
        let raw = Bytes::from(build_batch(3, 10, 5));
        let served = ServedBatch::new(Offset(77), 4, raw.clone());
        let bytes = served.to_bytes();
        let h = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(h.base_offset, Offset(77));
        assert_eq!(h.leader_epoch, 4);
        assert_eq!(served.last_offset(), Offset(79));
        verify_crc(&bytes).unwrap();
        assert_eq!(&bytes[16..], &raw[16..]);
        // Already-patched bytes are served without a copy.
        let again = ServedBatch::new(Offset(77), 4, bytes.clone());
        assert_eq!(again.to_bytes().as_ptr(), bytes.as_ptr());
    }
}

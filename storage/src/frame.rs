//! The on-disk frame: a fixed 48-byte header archived with rkyv, followed by
//! the Kafka batch bytes exactly as stored. Byte layout in `docs/FORMAT.md`.
//!
//! Headers are read in place from the bytes that came off the disk (rkyv
//! access, no decode step). The frame CRC (CRC-32/ISO-HDLC via `crc32fast`)
//! covers the 44 header bytes before it and the payload, so recovery can tell a
//! whole frame from a torn or corrupt one.

use rkyv::{Archive, Serialize, rancor, ser::writer::Buffer};

use crate::batch::BatchHeader;
use crate::offset::Offset;

/// "SLCF" read as a little-endian u32: marks the start of every frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SLCF");
/// Bumped whenever the header layout changes.
pub const FRAME_VERSION: u16 = 1;
pub const FRAME_HEADER_BYTES: usize = 48;
/// Bytes of the header covered by the CRC (everything before the CRC field).
const CRC_COVERED_HEADER_BYTES: usize = FRAME_HEADER_BYTES - 4;
/// Where the CRC sits in a frame header's bytes.
pub const CRC_FIELD: std::ops::Range<usize> = CRC_COVERED_HEADER_BYTES..FRAME_HEADER_BYTES;

#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FrameHeader {
    pub magic: u32,
    pub version: u16,
    /// Reserved, zero.
    pub flags: u16,
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub record_count: i32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub payload_bytes: u32,
    pub crc: u32,
}

const _: () = assert!(std::mem::size_of::<ArchivedFrameHeader>() == FRAME_HEADER_BYTES);
const _: () = assert!(std::mem::align_of::<ArchivedFrameHeader>() == 1);

/// Why the bytes at a position are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("fewer than {FRAME_HEADER_BYTES} bytes left for a header")]
    Truncated,
    #[error("no frame magic (zeroed or foreign bytes)")]
    BadMagic,
    #[error("unknown frame version {0}")]
    BadVersion(u16),
    #[error("header fields are inconsistent")]
    BadHeader,
    #[error("payload of {payload_bytes} bytes runs past the end of the data")]
    PayloadTruncated { payload_bytes: u32 },
    #[error("frame CRC mismatch")]
    CrcMismatch,
}

impl FrameHeader {
    /// The header of the frame of a batch whose base offset has been
    /// assigned, and its archived bytes; the payload is `head` followed by
    /// `rest` (see [`crate::served`]).
    pub fn for_batch(batch: &BatchHeader, head: &[u8], rest: &[u8]) -> (FrameHeader, [u8; FRAME_HEADER_BYTES]) {
        assert_eq!(batch.batch_bytes, head.len() + rest.len());
        let (mut header, mut bytes, mut crc) = FrameHeader::begin(batch);
        crc.update(head);
        crc.update(rest);
        header.crc = crc.finalize();
        bytes[CRC_FIELD].copy_from_slice(&header.crc.to_le_bytes());
        debug_assert_eq!(header.crc, frame_crc(&bytes, &[head, rest]));
        (header, bytes)
    }

    /// The header of a batch's frame with its CRC still zero, its archived
    /// bytes, and the CRC so far (over the header's covered bytes): the
    /// caller feeds it the payload, in order, as it copies it (one pass over
    /// the payload, not two), then puts the result in the [`CRC_FIELD`]
    /// bytes.
    pub fn begin(batch: &BatchHeader) -> (FrameHeader, [u8; FRAME_HEADER_BYTES], crc32fast::Hasher) {
        let payload_bytes = batch.batch_bytes;
        let header = FrameHeader {
            magic: FRAME_MAGIC,
            version: FRAME_VERSION,
            flags: 0,
            base_offset: batch.base_offset.0,
            last_offset_delta: batch.last_offset_delta,
            record_count: batch.record_count,
            first_timestamp: batch.base_timestamp,
            max_timestamp: batch.max_timestamp,
            payload_bytes: u32::try_from(payload_bytes).expect("batch larger than 4 GiB"),
            crc: 0,
        };
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        header.write_to(&mut bytes);
        debug_assert_eq!(&bytes[CRC_FIELD], &[0; 4], "the CRC is the last field");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..CRC_COVERED_HEADER_BYTES]);
        (header, bytes, crc)
    }

    /// Archives the header into exactly [`FRAME_HEADER_BYTES`] bytes.
    pub fn write_to(&self, out: &mut [u8; FRAME_HEADER_BYTES]) {
        let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, Buffer::from(&mut out[..]))
            .expect("a 48-byte frame header always fits its buffer");
        assert_eq!(written.len(), FRAME_HEADER_BYTES);
    }

    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes as usize
    }

    pub fn base_offset(&self) -> Offset {
        Offset(self.base_offset)
    }

    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset + i64::from(self.last_offset_delta))
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }
}

/// A frame header viewed in place, with the checks that need no payload.
pub fn access_header(bytes: &[u8]) -> Result<&ArchivedFrameHeader, FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated);
    }
    let header = rkyv::access::<ArchivedFrameHeader, rancor::Failure>(&bytes[..FRAME_HEADER_BYTES])
        .map_err(|_| FrameError::BadHeader)?;
    if header.magic.to_native() != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let version = header.version.to_native();
    if version != FRAME_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let delta = header.last_offset_delta.to_native();
    let count = header.record_count.to_native();
    if header.base_offset.to_native() < 0 || delta < 0 || count < 1 || header.flags.to_native() != 0 {
        return Err(FrameError::BadHeader);
    }
    Ok(header)
}

impl ArchivedFrameHeader {
    /// The native-endian copy, for callers that keep it.
    pub fn to_native(&self) -> FrameHeader {
        FrameHeader {
            magic: self.magic.to_native(),
            version: self.version.to_native(),
            flags: self.flags.to_native(),
            base_offset: self.base_offset.to_native(),
            last_offset_delta: self.last_offset_delta.to_native(),
            record_count: self.record_count.to_native(),
            first_timestamp: self.first_timestamp.to_native(),
            max_timestamp: self.max_timestamp.to_native(),
            payload_bytes: self.payload_bytes.to_native(),
            crc: self.crc.to_native(),
        }
    }
}

/// Parses the frame at the start of `bytes` and checks its CRC. Returns the
/// header; the payload is `bytes[FRAME_HEADER_BYTES..header.frame_bytes()]`.
pub fn parse_frame(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = access_header(bytes)?.to_native();
    let end = header.frame_bytes();
    if bytes.len() < end {
        return Err(FrameError::PayloadTruncated {
            payload_bytes: header.payload_bytes,
        });
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end];
    if frame_crc(&bytes[..FRAME_HEADER_BYTES], &[payload]) != header.crc {
        return Err(FrameError::CrcMismatch);
    }
    Ok(header)
}

fn frame_crc(header_bytes: &[u8], payload: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_bytes[..CRC_COVERED_HEADER_BYTES]);
    for part in payload {
        hasher.update(part);
    }
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchHeader, build_batch, set_base_offset};

    fn frame(base: i64) -> Vec<u8> {
        let mut batch = build_batch(4, 16, 1_000);
        set_base_offset(&mut batch, Offset(base));
        let (header, _) = FrameHeader::for_batch(&BatchHeader::parse(&batch).unwrap(), &batch[..16], &batch[16..]);
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        header.write_to(&mut bytes);
        let mut out = bytes.to_vec();
        out.extend_from_slice(&batch);
        out
    }

    #[test]
    fn frame_round_trips_in_place() {
        let f = frame(42);
        let h = parse_frame(&f).unwrap();
        assert_eq!(h.base_offset(), Offset(42));
        assert_eq!(h.last_offset(), Offset(45));
        assert_eq!(h.frame_bytes(), f.len());
        assert_eq!(h.first_timestamp, 1_000);
        // The archived bytes are little-endian and in declaration order: the
        // layout docs/FORMAT.md promises.
        assert_eq!(&f[0..4], b"SLCF");
        assert_eq!(&f[4..6], &FRAME_VERSION.to_le_bytes());
        assert_eq!(&f[8..16], &42i64.to_le_bytes());
        assert_eq!(&f[40..44], &(h.payload_bytes).to_le_bytes());
        assert_eq!(&f[44..48], &h.crc.to_le_bytes());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let f = frame(7);
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(parse_frame(&g).is_err(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn zeroes_and_short_input_are_not_frames() {
        assert_eq!(parse_frame(&[0u8; 100]), Err(FrameError::BadMagic));
        assert_eq!(parse_frame(&[0u8; 10]), Err(FrameError::Truncated));
        let f = frame(1);
        assert!(matches!(
            parse_frame(&f[..f.len() - 1]),
            Err(FrameError::PayloadTruncated { .. })
        ));
    }
}

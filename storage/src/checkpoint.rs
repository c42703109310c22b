//! The partition checkpoint: a manifest of the log's segments up to a point
//! known to be durable and valid, so that recovery only has to scan what was
//! written after it.
//!
//! File layout: `magic "SLCK" | version u16 | reserved u16 | body_bytes u32 |
//! crc32 u32 | body`, little-endian, where the body is the rkyv archive of
//! [`Checkpoint`] and the CRC (crc32fast) covers it. Written atomically
//! (temporary file, fdatasync, rename, directory sync).

use rkyv::{Archive, Deserialize, Serialize, rancor};

const MAGIC: [u8; 4] = *b"SLCK";
const VERSION: u16 = 1;
const PREAMBLE_BYTES: usize = 16;
/// A checkpoint larger than this is refused as corrupt (about 250k segments).
const BODY_BYTES_MAX: usize = 16 << 20;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SegmentCheckpoint {
    pub base_offset: i64,
    /// Bytes of valid, durable frames at the start of the segment file.
    pub end: u64,
    /// Offset after the last frame in `..end`.
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub offset_index_entries: u32,
    pub time_index_entries: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_start_offset: i64,
    pub segments: Vec<SegmentCheckpoint>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let body = rkyv::to_bytes::<rancor::Error>(self).expect("serializing plain data cannot fail");
        let mut out = Vec::with_capacity(PREAMBLE_BYTES + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// `None` for anything but an intact checkpoint of this version; the
    /// caller then recovers without one. Trailing bytes (page padding) are
    /// ignored.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() < PREAMBLE_BYTES || bytes[0..4] != MAGIC {
            return None;
        }
        if u16::from_le_bytes([bytes[4], bytes[5]]) != VERSION || bytes[6..8] != [0, 0] {
            return None;
        }
        let body_bytes = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if body_bytes > BODY_BYTES_MAX || bytes.len() < PREAMBLE_BYTES + body_bytes {
            return None;
        }
        let body = &bytes[PREAMBLE_BYTES..PREAMBLE_BYTES + body_bytes];
        if crc32fast::hash(body) != crc {
            return None;
        }
        let archived = rkyv::access::<ArchivedCheckpoint, rancor::Failure>(body).ok()?;
        let checkpoint: Checkpoint = rkyv::deserialize::<Checkpoint, rancor::Failure>(archived).ok()?;
        let ordered = checkpoint
            .segments
            .windows(2)
            .all(|w| w[0].base_offset < w[1].base_offset && w[0].next_offset <= w[1].base_offset);
        let sane = checkpoint
            .segments
            .iter()
            .all(|s| s.base_offset >= 0 && s.next_offset >= s.base_offset);
        (ordered && sane).then_some(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            log_start_offset: 5,
            segments: vec![
                SegmentCheckpoint {
                    base_offset: 0,
                    end: 4096,
                    next_offset: 100,
                    max_timestamp: 77,
                    offset_index_entries: 3,
                    time_index_entries: 2,
                },
                SegmentCheckpoint {
                    base_offset: 100,
                    end: 10,
                    next_offset: 101,
                    max_timestamp: 78,
                    offset_index_entries: 0,
                    time_index_entries: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trips_with_padding() {
        let mut bytes = sample().encode();
        bytes.resize(4096, 0);
        assert_eq!(Checkpoint::decode(&bytes), Some(sample()));
    }

    #[test]
    fn any_damage_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_eq!(Checkpoint::decode(&b), None, "flip at byte {i} accepted");
        }
        assert_eq!(Checkpoint::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Checkpoint::decode(&[]), None);
    }
}

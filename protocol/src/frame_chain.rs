//! A frame as a chain of buffers: small fields encoded into a buffer as
//! usual, large pieces (record batches) passed through as the shared
//! buffers they already are, to be written to the socket in order. The
//! Fetch responses of the broker and the Produce requests of the harness
//! are built this way, so that their batches are not copied once more.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::SIZE_PREFIX_BYTES;

/// Pieces of records at least this large are passed through, not copied:
/// below it a copy costs less than another write to the socket.
pub const SHARED_PIECE_MIN_BYTES: usize = 16 << 10;

/// A frame under construction: encoded bytes and shared pieces, in order.
#[derive(Debug, Default)]
pub struct FrameChain {
    parts: Vec<Bytes>,
    current: BytesMut,
    len: usize,
}

impl FrameChain {
    fn new() -> FrameChain {
        FrameChain::default()
    }

    /// Appends a copy of `bytes`.
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.current.put_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `bytes`, shared rather than copied when large.
    pub fn put_bytes(&mut self, bytes: Bytes) {
        if bytes.len() < SHARED_PIECE_MIN_BYTES {
            self.put_slice(&bytes);
            return;
        }
        if !self.current.is_empty() {
            self.parts.push(self.current.split().freeze());
        }
        self.len += bytes.len();
        self.parts.push(bytes);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends what `encode` writes into `scratch` (cleared first), less
    /// its last `drop_tail` bytes: a struct encoded by kafka-protocol with
    /// its last field left empty (see [`empty_last_field_bytes`]), for the
    /// caller to put the real field there.
    pub(crate) fn put_encoded(
        &mut self,
        scratch: &mut BytesMut,
        drop_tail: usize,
        encode: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
    ) -> Result<(), String> {
        scratch.clear();
        encode(scratch).map_err(|e| e.to_string())?;
        self.put_slice(&scratch[..scratch.len() - drop_tail]);
        Ok(())
    }

    /// A chain for a whole frame: it starts with the size prefix, which
    /// [`finish_frame`](Self::finish_frame) fills in.
    pub fn for_frame() -> FrameChain {
        let mut chain = FrameChain::new();
        chain.put_slice(&[0u8; SIZE_PREFIX_BYTES]);
        chain
    }

    /// The pieces of a chain from [`for_frame`](Self::for_frame), its size
    /// prefix holding the length of the rest.
    pub fn finish_frame(self) -> Result<Vec<Bytes>, String> {
        let size = self.len - SIZE_PREFIX_BYTES;
        let size = i32::try_from(size).map_err(|_| format!("{size} bytes is too large for a frame"))?;
        let mut parts = self.finish();
        let mut first = BytesMut::from(std::mem::take(&mut parts[0]));
        first[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
        parts[0] = first.freeze();
        Ok(parts)
    }

    /// The pieces, to be written one after the other.
    fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.parts.push(self.current.split().freeze());
        }
        self.parts
    }
}

/// Bytes kafka-protocol writes for an empty array or null bytes as the
/// last field of a struct, with (flexible versions) the struct's empty
/// tagged-field count after it: a 4-byte length, or a 1-byte compact
/// length and a 1-byte count.
pub(crate) fn empty_last_field_bytes(flexible: bool) -> usize {
    if flexible { 2 } else { 4 }
}

pub(crate) fn put_unsigned_varint(out: &mut FrameChain, mut v: u32) {
    let mut buf = [0u8; 5];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.put_slice(&buf[..=n]);
}

pub(crate) fn put_array_len(out: &mut FrameChain, len: usize, flexible: bool) -> Result<(), String> {
    let len = u32::try_from(len).map_err(|_| "array too long".to_string())?;
    if flexible {
        put_unsigned_varint(out, len + 1);
    } else {
        out.put_slice(&(len as i32).to_be_bytes());
    }
    Ok(())
}

/// The length in front of (compact) nullable bytes: `None` for null.
pub(crate) fn put_nullable_len(out: &mut FrameChain, len: Option<usize>, flexible: bool) -> Result<(), String> {
    let Some(len) = len else {
        if flexible {
            put_unsigned_varint(out, 0);
        } else {
            out.put_slice(&(-1i32).to_be_bytes());
        }
        return Ok(());
    };
    let len = i32::try_from(len).map_err(|_| "records too large".to_string())?;
    if flexible {
        put_unsigned_varint(out, len as u32 + 1);
    } else {
        out.put_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Bytes of `len` that differ with `seed`, as records in tests.
#[cfg(test)]
pub(crate) fn test_records(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_are_copied_and_large_ones_shared() {
        let mut chain = FrameChain::new();
        chain.put_slice(b"abc");
        chain.put_bytes(Bytes::from_static(b"small"));
        let big = Bytes::from(vec![7u8; SHARED_PIECE_MIN_BYTES]);
        chain.put_bytes(big.clone());
        chain.put_slice(b"z");
        assert_eq!(chain.len(), 3 + 5 + big.len() + 1);
        let parts = chain.finish();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[0][..], b"abcsmall");
        assert_eq!(parts[1].as_ptr(), big.as_ptr());
        assert_eq!(&parts[2][..], b"z");
    }
}

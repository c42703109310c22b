//! Size-prefixed framing: every Kafka request and response is an `int32`
//! size followed by that many bytes.

use bytes::{Buf, BytesMut};

pub const SIZE_PREFIX_BYTES: usize = 4;

/// `socket.request.max.bytes`' default: the largest request a broker reads.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("negative frame size {0}")]
    NegativeSize(i32),
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
}

/// The size of the frame starting `buf` (prefix excluded), once its prefix
/// has arrived; checked against `max_bytes` before anything is allocated.
pub fn frame_size(buf: &[u8], max_bytes: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < SIZE_PREFIX_BYTES {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::NegativeSize(size));
    }
    let size = size as usize;
    if size > max_bytes {
        return Err(FrameError::TooLarge { size, max: max_bytes });
    }
    Ok(Some(size))
}

/// Splits a whole frame (without its prefix) off the front of `buf`, if one
/// has arrived.
pub fn split_frame(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<BytesMut>, FrameError> {
    let Some(size) = frame_size(buf, max_bytes)? else {
        return Ok(None);
    };
    if buf.len() < SIZE_PREFIX_BYTES + size {
        return Ok(None);
    }
    buf.advance(SIZE_PREFIX_BYTES);
    Ok(Some(buf.split_to(size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], max: usize, expected: Result<Option<&[u8]>, FrameError>, rest: usize) {
        let mut buf = BytesMut::from(input);
        let got = split_frame(&mut buf, max);
        assert_eq!(
            got.as_ref().map(|o| o.as_ref().map(|b| &b[..])),
            expected.as_ref().map(|o| *o)
        );
        assert_eq!(buf.len(), rest);
    }

    #[test]
    fn frames_split_only_when_whole_and_within_limits() {
        check(&[0, 0], 10, Ok(None), 2);
        check(&[0, 0, 0, 3, 1, 2], 10, Ok(None), 6);
        check(&[0, 0, 0, 3, 1, 2, 3, 9], 10, Ok(Some(&[1, 2, 3])), 1);
        check(&[0, 0, 0, 0], 10, Ok(Some(&[])), 0);
        check(&[0xff, 0xff, 0xff, 0xfe], 10, Err(FrameError::NegativeSize(-2)), 4);
        check(&[0, 0, 0, 11], 10, Err(FrameError::TooLarge { size: 11, max: 10 }), 4);
    }
}

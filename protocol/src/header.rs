//! The fixed start of every request: api key, api version, correlation id.
//! Read without decoding the rest, so that even a request this broker cannot
//! decode can be answered or logged with its correlation id.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPreamble {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// The preamble of a request frame; `None` when the frame is too short to
/// hold one.
pub fn peek_preamble(frame: &[u8]) -> Option<RequestPreamble> {
    if frame.len() < 8 {
        return None;
    }
    Some(RequestPreamble {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_preamble_and_refuses_short_frames() {
        let frame = [0, 18, 0, 3, 0, 0, 1, 0, 0xff];
        assert_eq!(
            peek_preamble(&frame),
            Some(RequestPreamble {
                api_key: 18,
                api_version: 3,
                correlation_id: 256
            })
        );
        assert_eq!(peek_preamble(&frame[..7]), None);
    }
}

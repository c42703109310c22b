//! What the fuzz targets run: everything the broker does with untrusted
//! request bytes before its handlers, on arbitrary input. Shared by the
//! libFuzzer target (`fuzz/`) and the bounded run in the test suite.

use bytes::{Bytes, BytesMut};

use crate::frame::{REQUEST_BYTES_MAX_DEFAULT, split_frame};
use crate::records;
use crate::request::{Request, decode_request};

/// Splits `data` into frames as a connection would and decodes each
/// request; for produce requests, also walks the record batches. Must never
/// panic, whatever `data` holds.
pub fn decode_stream(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, REQUEST_BYTES_MAX_DEFAULT) {
        if let Ok(request) = decode_request(frame.freeze())
            && let Request::Produce(produce) = request.request
        {
            for topic in produce.topic_data {
                for partition in topic.partition_data {
                    if let Some(records) = partition.records {
                        let _ = records::first_at_or_after(records, 0, 0);
                    }
                }
            }
        }
    }
}

/// Decodes `data` as one frame body (no size prefix).
pub fn decode_frame(data: &[u8]) {
    let _ = decode_request(Bytes::copy_from_slice(data));
}

//! Arbitrary bytes as a client's request stream: framing, header and body
//! decoding of every served API, and record batches inside produce requests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_protocol::fuzz_support::decode_stream(data);
    sluice_protocol::fuzz_support::decode_frame(data);
});

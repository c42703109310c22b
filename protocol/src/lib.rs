//! The Kafka wire protocol as Sluice speaks it: framing, request decoding,
//! response encoding, the served API versions, and record-level helpers.
//!
//! Pure: no I/O, no runtime. Decoding never panics on any input and never
//! allocates by a length it has not seen the bytes for (the codec is
//! kafka-protocol, vendored with allocation clamps).

pub mod api;
pub mod fetch_frame;
pub mod frame;
pub mod frame_chain;
#[doc(hidden)]
pub mod fuzz_support;
pub mod header;
pub mod legacy_produce;
pub mod produce_frame;
pub mod records;
pub mod request;
pub mod response;

pub use kafka_protocol;
pub use kafka_protocol::ResponseError;

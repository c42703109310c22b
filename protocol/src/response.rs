//! Encoding a response: size prefix, response header, body.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::frame::SIZE_PREFIX_BYTES;
use crate::legacy_produce;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode {api:?} v{version} response: {reason}")]
pub struct EncodeError {
    pub api: ApiKey,
    pub version: i16,
    pub reason: String,
}

/// A whole response frame for `api` at `version`.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, EncodeError> {
    let error = |e: anyhow::Error| EncodeError {
        api,
        version,
        reason: e.to_string(),
    };
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header.compute_size(header_version).map_err(error)? + body.compute_size(version).map_err(error)?;
    let mut out = BytesMut::with_capacity(SIZE_PREFIX_BYTES + size);
    out.put_i32(i32::try_from(size).map_err(|_| EncodeError {
        api,
        version,
        reason: format!("{size} bytes is too large for a frame"),
    })?);
    header.encode(&mut out, header_version).map_err(error)?;
    body.encode(&mut out, version).map_err(error)?;
    debug_assert_eq!(out.len(), SIZE_PREFIX_BYTES + size);
    Ok(out.freeze())
}

/// A produce response frame, for any served version (0-2 encoded by hand).
pub fn encode_produce_response(
    version: i16,
    correlation_id: i32,
    body: &ProduceResponse,
) -> Result<Bytes, EncodeError> {
    if !legacy_produce::LEGACY_VERSIONS.contains(&version) {
        return encode_response(ApiKey::Produce, version, correlation_id, body);
    }
    let mut out = BytesMut::new();
    out.put_i32(0); // size, filled below
    out.put_i32(correlation_id); // response header v0
    legacy_produce::encode_response(body, version, &mut out);
    let size = (out.len() - SIZE_PREFIX_BYTES) as i32;
    out[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(out.freeze())
}

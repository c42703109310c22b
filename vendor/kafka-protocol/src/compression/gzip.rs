use std::io::{Read, Write};

use anyhow::{Context, Result};
use bytes::buf::{Buf, BufMut};
use bytes::{Bytes, BytesMut};
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::protocol::buf::{ByteBuf, ByteBufMut};

use super::{Compressor, Decompressor};

/// Gzip compression algorithm. See [Kafka's broker configuration](https://kafka.apache.org/documentation/#brokerconfigs_compression.type)
/// for more information.
pub struct Gzip;

impl<B: ByteBufMut> Compressor<B> for Gzip {
    type BufMut = BytesMut;
    fn compress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::BufMut) -> Result<R>,
    {
        // Write uncompressed bytes into a temporary buffer
        let mut tmp = BytesMut::new();
        let res = f(&mut tmp)?;

        // Compress directly into the target buffer
        let mut e = GzEncoder::new(buf.writer(), Compression::default());
        e.write_all(&tmp).context("Failed to compress gzip")?;
        e.finish().context("Failed to compress gzip")?;

        Ok(res)
    }
}

impl<B: ByteBuf> Decompressor<B> for Gzip {
    type Buf = Bytes;
    fn decompress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::Buf) -> Result<R>,
    {
        // Sluice patch: read through a limit instead of writing all output.
        let mut tmp = Vec::new();
        let compressed = buf.copy_to_bytes(buf.remaining());
        flate2::read::GzDecoder::new(compressed.reader())
            .take(super::DECOMPRESSED_BYTES_MAX as u64 + 1)
            .read_to_end(&mut tmp)
            .context("Failed to decompress gzip")?;
        super::check_decompressed_len(tmp.len())?;
        let tmp = BytesMut::from(&tmp[..]);

        f(&mut tmp.into())
    }
}

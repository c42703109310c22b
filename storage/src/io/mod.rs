//! The file I/O the log does, as a parameter.
//!
//! The log is generic over [`FileSystem`], so the same code runs on the real
//! disk ([`dma::DmaFileSystem`], glommio direct I/O over io_uring) and on
//! [`sim::SimFileSystem`], an in-memory disk that injects torn writes, short
//! writes, bit flips, EIO and ENOSPC from a seed, and can simulate a crash.
//!
//! Contract shared by both implementations:
//! - writes are whole [`ALIGN`]-byte pages at [`ALIGN`]-aligned positions;
//! - data written but not followed by a successful `sync_data` may be lost,
//!   torn or reordered by a crash; after `sync_data` succeeds it is durable;
//! - creating, renaming and removing names is durable after `sync_dir`;
//! - futures are `!Send`: each file belongs to the one shard that opened it.

pub mod dma;
pub mod sim;
pub mod workers;

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

/// Direct I/O alignment: positions and lengths of every write.
pub const ALIGN: usize = 4096;

pub fn align_down(v: u64) -> u64 {
    v & !(ALIGN as u64 - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + ALIGN as u64 - 1)
}

/// A buffer a file can write from (a DMA buffer on the real disk).
pub trait IoBuffer: 'static {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// Shortens the buffer to `len` bytes (a multiple of [`ALIGN`]), so that
    /// a write of it writes only those.
    fn trim_to(&mut self, len: usize);
}

#[allow(async_fn_in_trait)]
pub trait FileSystem: 'static {
    type File: StorageFile;

    /// Opens a file for reading and writing, creating it when `create`.
    async fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir` (files only), unsorted.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    async fn exists(&self, path: &Path) -> bool;
}

#[allow(async_fn_in_trait)]
pub trait StorageFile: 'static {
    type Buffer: IoBuffer;

    /// A buffer of `len` bytes, `len` a multiple of [`ALIGN`]. Its contents
    /// are unspecified: writers fill or zero every byte they write.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes the whole of `buf` at `pos`, a multiple of [`ALIGN`]. May write
    /// less (a short write); returns the bytes written.
    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at `pos`, fewer at the end of the file. The
    /// bytes are copied once out of the I/O buffer into a `Bytes` that can be
    /// sliced and handed to other shards.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    async fn sync_data(&self) -> io::Result<()>;
    /// Reserves space so that writes up to `len` need no allocation.
    async fn allocate(&self, len: u64) -> io::Result<()>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    async fn close(self) -> io::Result<()>;
}

/// Writes `bytes` to `path` so that after a crash `path` holds either its old
/// content or exactly `bytes`: temporary file, sync, rename, sync directory.
/// The stored form is padded to [`ALIGN`]; callers frame their own length.
pub async fn write_file_atomic<S: FileSystem>(fs: &S, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_path(path);
    let file = fs.open(&tmp, true).await?;
    let padded = (align_up(bytes.len() as u64) as usize).max(ALIGN);
    let mut buf = file.alloc_buffer(padded);
    buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
    buf.as_mut_slice()[bytes.len()..].fill(0);
    let buf = Rc::new(buf);
    let result = async {
        file.truncate(0).await?;
        write_all_at(&file, &buf, 0).await?;
        file.sync_data().await
    }
    .await;
    let closed = file.close().await;
    result?;
    closed?;
    fs.rename(&tmp, path).await?;
    fs.sync_dir(dir).await
}

/// A copy of an I/O error (they are not `Clone`) for a second reporter: the
/// OS error code when there is one, else the kind and message.
pub fn clone_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Reads a whole small file; `None` when it does not exist.
pub async fn read_file<S: FileSystem>(fs: &S, path: &Path) -> io::Result<Option<Bytes>> {
    if !fs.exists(path).await {
        return Ok(None);
    }
    let file = fs.open(path, false).await?;
    let result = async {
        let size = file.size().await?;
        file.read_at(0, size as usize).await
    }
    .await;
    file.close().await?;
    result.map(Some)
}

/// Retries short writes until all of `buf` is at `pos`. A write that makes no
/// progress is an error, never a loop.
pub async fn write_all_at<F: StorageFile>(file: &F, buf: &Rc<F::Buffer>, pos: u64) -> io::Result<()> {
    let len = buf.as_slice().len();
    assert_eq!(len % ALIGN, 0);
    assert_eq!(pos % ALIGN as u64, 0);
    let mut done = 0usize;
    let mut attempts_left = WRITE_ATTEMPTS_MAX;
    while done < len {
        // A short write can end mid-page; continue from the page it ended in
        // by rewriting the whole page, since direct I/O writes whole pages.
        let from = align_down(done as u64) as usize;
        let written = if from == 0 {
            file.write_at(buf.clone(), pos).await?
        } else {
            // Copy the rest into a fresh buffer: the trait writes from the
            // start of a buffer.
            let mut rest = file.alloc_buffer(len - from);
            rest.as_mut_slice().copy_from_slice(&buf.as_slice()[from..len]);
            file.write_at(Rc::new(rest), pos + from as u64).await?
        };
        let reached = from + written;
        if reached <= done {
            attempts_left -= 1;
            if attempts_left == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("write made no progress at position {}", pos + done as u64),
                ));
            }
        }
        done = done.max(reached);
    }
    Ok(())
}

/// Consecutive writes that made no progress before giving up.
const WRITE_ATTEMPTS_MAX: u32 = 4;

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_down(0), 0);
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_down(4096), 4096);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}

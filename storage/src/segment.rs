//! A segment: one log file of frames, its two index files, and what is known
//! about it in memory. Files are named by the segment's base offset:
//! `00000000000000000042.log`, `.index`, `.timeindex`. A deleted segment's
//! log file kept for reuse is named by its bound, the offset its frames all
//! lie below: `00000000000000000042.free`.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use crate::config::SEGMENT_BYTES_MAX;
use crate::frame::{FRAME_HEADER_BYTES, FrameError, FrameHeader, access_header, parse_frame};
use crate::index::SegmentIndex;
use crate::io::{ALIGN, StorageFile, align_down};
use crate::offset::Offset;

pub const LOG_SUFFIX: &str = "log";
pub const OFFSET_INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// The files of one segment.
pub const SEGMENT_SUFFIXES: [&str; 3] = [LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX];
/// A deleted segment's log file, kept to write a later segment into.
pub const FREE_SUFFIX: &str = "free";
/// Appended to the name of a deleted file until it is unlinked, which
/// happens outside the log's locks.
pub const DELETED_SUFFIX: &str = ".deleted";

/// Bytes read at a time when scanning a segment.
pub const SCAN_CHUNK_BYTES: usize = 1 << 20;

pub fn segment_file(dir: &Path, base: Offset, suffix: &str) -> PathBuf {
    dir.join(format!("{:020}.{suffix}", base.0))
}

/// The base offset named by a segment file name, if it is one with `suffix`.
pub fn parse_segment_name(name: &str, suffix: &str) -> Option<Offset> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse::<i64>().ok().map(Offset)
}

pub struct Segment<F: StorageFile> {
    pub base: Offset,
    pub file: Rc<F>,
    pub path: PathBuf,
    /// Bytes of frames in the file (for the active segment, including bytes
    /// not yet durable).
    pub end: u64,
    /// Offset after the last frame.
    pub next_offset: Offset,
    pub index: SegmentIndex,
    /// Index entries durable in the index files.
    pub persisted_offset_entries: u32,
    pub persisted_time_entries: u32,
    /// When the segment started taking appends (for `segment.ms`).
    pub opened_ms: i64,
}

impl<F: StorageFile> Segment<F> {
    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base
    }

    pub fn max_timestamp(&self) -> i64 {
        self.index.max_timestamp()
    }
}

/// Smallest refill once a cursor's read budget is spent: frames much smaller
/// than this still share I/Os.
const REFILL_BYTES_MIN: u64 = 64 << 10;

/// Walks the frames of a segment file from a position, reading in chunks so
/// that many frames share one I/O. Payloads come back as slices of the chunk.
pub struct FrameCursor<'a, F: StorageFile> {
    file: &'a F,
    pos: u64,
    limit: u64,
    chunk: Bytes,
    chunk_pos: u64,
    chunk_bytes: usize,
    /// Bytes the caller expects to need from here on; once read, a refill
    /// reads what is asked for, at least `REFILL_BYTES_MIN`, not a whole
    /// chunk.
    read_budget: u64,
}

impl<'a, F: StorageFile> FrameCursor<'a, F> {
    /// A cursor at `pos` that never reads at or past `limit`.
    pub fn new(file: &'a F, pos: u64, limit: u64, chunk_bytes: usize) -> FrameCursor<'a, F> {
        assert!(chunk_bytes >= FRAME_HEADER_BYTES);
        FrameCursor {
            file,
            pos,
            limit,
            chunk: Bytes::new(),
            chunk_pos: 0,
            chunk_bytes,
            read_budget: u64::MAX,
        }
    }

    /// Caps the chunked reads at about `bytes` in all: past them, a frame
    /// or header that crosses the end of the chunk comes in a refill of
    /// `REFILL_BYTES_MIN` (or of the frame, if larger). For a reader that
    /// stops at a byte budget, so that the header or frame just past its
    /// budget does not cost a whole chunk.
    pub fn with_read_budget(mut self, bytes: u64) -> FrameCursor<'a, F> {
        self.read_budget = bytes;
        self
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn at_limit(&self) -> bool {
        self.pos >= self.limit
    }

    fn has(&self, len: u64) -> bool {
        self.pos >= self.chunk_pos && self.pos + len <= self.chunk_pos + self.chunk.len() as u64
    }

    /// Makes `[pos, pos + len)` available; false if that passes the limit or
    /// the file.
    async fn ensure(&mut self, len: u64) -> io::Result<bool> {
        if self.pos + len > self.limit {
            // Still load what is there, so the caller can tell zeroes (a
            // clean end) from the start of a cut-off frame.
            let rest = self.limit.saturating_sub(self.pos);
            let needed = rest.min(FRAME_HEADER_BYTES as u64);
            if rest > 0 && !self.has(needed) {
                self.refill(needed).await?;
            }
            return Ok(false);
        }
        if self.has(len) {
            return Ok(true);
        }
        self.refill(len).await?;
        Ok(self.has(len))
    }

    /// Replaces the chunk with one read from the page holding the cursor
    /// that holds at least the `len` bytes from the cursor (if the limit
    /// allows), and a chunk's worth while the read budget lasts.
    async fn refill(&mut self, len: u64) -> io::Result<()> {
        let chunk_pos = align_down(self.pos);
        let chunk = (self.chunk_bytes as u64).min(self.read_budget.max(REFILL_BYTES_MIN));
        let want = (self.pos - chunk_pos + len).max(chunk);
        let read_len = want.min(self.limit - chunk_pos);
        self.chunk_pos = chunk_pos;
        self.chunk = self.file.read_at(chunk_pos, read_len as usize).await?;
        self.read_budget = self.read_budget.saturating_sub(read_len);
        Ok(())
    }

    /// The header of the frame at the cursor, shape-checked (not CRC).
    pub async fn header(&mut self) -> io::Result<Result<FrameHeader, FrameError>> {
        if !self.ensure(FRAME_HEADER_BYTES as u64).await? {
            return Ok(Err(FrameError::Truncated));
        }
        let at = (self.pos - self.chunk_pos) as usize;
        Ok(access_header(&self.chunk[at..]).map(|h| h.to_native()))
    }

    /// True when the bytes at the cursor are zeroes: the clean end of data
    /// in a preallocated or page-padded file.
    pub fn zeroes_at_cursor(&self) -> bool {
        if !self.has(1) {
            return self.pos >= self.limit;
        }
        let at = (self.pos - self.chunk_pos) as usize;
        let end = (at + FRAME_HEADER_BYTES).min(self.chunk.len());
        self.chunk[at..end].iter().all(|b| *b == 0)
    }

    /// The payload of the frame at the cursor, after checking the whole
    /// frame's CRC.
    pub async fn payload(&mut self, header: &FrameHeader) -> io::Result<Result<Bytes, FrameError>> {
        let frame_bytes = header.frame_bytes() as u64;
        let truncated = FrameError::PayloadTruncated {
            payload_bytes: header.payload_bytes,
        };
        if frame_bytes > SEGMENT_BYTES_MAX || !self.ensure(frame_bytes).await? {
            return Ok(Err(truncated));
        }
        let at = (self.pos - self.chunk_pos) as usize;
        let frame = self.chunk.slice(at..at + frame_bytes as usize);
        Ok(parse_frame(&frame).map(|_| frame.slice(FRAME_HEADER_BYTES..)))
    }

    pub fn advance(&mut self, header: &FrameHeader) {
        self.pos += header.frame_bytes() as u64;
    }
}

/// Where a scan stopped and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Position after the last valid frame.
    pub end: u64,
    pub next_offset: Offset,
    /// What was found at `end`: `None` for zeroes or the end of the file (a
    /// clean end), else the defect that cut the scan.
    pub defect: Option<FrameError>,
}

/// Reads frames from `from` while each is whole, passes its CRC and carries
/// the expected next offset, adding each to `index`. Never reads past
/// `limit`. Frames already known good (before `from`) are not read.
pub async fn scan_frames<F: StorageFile>(
    file: &F,
    from: u64,
    expected_next: Offset,
    limit: u64,
    index: &mut SegmentIndex,
) -> io::Result<ScanOutcome> {
    let mut cursor = FrameCursor::new(file, from, limit, SCAN_CHUNK_BYTES);
    let mut next = expected_next;
    let stop = |cursor: &FrameCursor<'_, F>, next: Offset, defect: FrameError| {
        let clean = cursor.zeroes_at_cursor() && matches!(defect, FrameError::BadMagic | FrameError::Truncated);
        ScanOutcome {
            end: cursor.position(),
            next_offset: next,
            defect: (!clean).then_some(defect),
        }
    };
    loop {
        let header = match cursor.header().await? {
            Ok(h) => h,
            Err(defect) => return Ok(stop(&cursor, next, defect)),
        };
        if let Err(defect) = cursor.payload(&header).await? {
            return Ok(stop(&cursor, next, defect));
        }
        if header.base_offset() != next {
            // A whole, valid frame with the wrong offset: stale bytes from
            // before a truncation, or a frame of another log. Not ours.
            return Ok(stop(&cursor, next, FrameError::BadHeader));
        }
        index.add_frame(cursor.position(), header.base_offset(), header.max_timestamp);
        cursor.advance(&header);
        next = header.next_offset();
    }
}

/// The bytes of the partial page that ends at `end` (empty when aligned).
pub async fn read_tail_page<F: StorageFile>(file: &F, end: u64) -> io::Result<Bytes> {
    let page = align_down(end);
    let tail = file.read_at(page, (end - page) as usize).await?;
    if tail.len() as u64 != end - page {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "file ends before its last valid frame ({} of {} bytes)",
                tail.len(),
                end - page
            ),
        ));
    }
    debug_assert!(tail.len() < ALIGN);
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let dir = Path::new("/data/t-0");
        let p = segment_file(dir, Offset(42), LOG_SUFFIX);
        assert_eq!(p, Path::new("/data/t-0/00000000000000000042.log"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name, LOG_SUFFIX), Some(Offset(42)));
        assert_eq!(parse_segment_name(name, OFFSET_INDEX_SUFFIX), None);
        assert_eq!(parse_segment_name("42.log", LOG_SUFFIX), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log", LOG_SUFFIX), None);
    }
}

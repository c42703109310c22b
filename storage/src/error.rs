//! Storage errors. A client's mistake (a bad batch, an offset out of range)
//! and an operating fault (disk full, EIO, corruption) are separate variants,
//! so the broker can map each to its Kafka error code and log faults.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::BatchError;
use crate::frame::FrameError;
use crate::offset::Offset;

const ENOSPC: i32 = 28;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("no space left on the device ({op} {path})")]
    NoSpace { op: &'static str, path: PathBuf },
    #[error("I/O error in {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: Arc<io::Error>,
    },
    #[error("corrupt frame in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: FrameError,
    },
    #[error("offset {requested} is outside the log's range [{start}, {end}]")]
    OffsetOutOfRange {
        requested: Offset,
        start: Offset,
        end: Offset,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {batch_bytes} bytes is larger than a segment ({segment_bytes} bytes)")]
    BatchTooLarge { batch_bytes: usize, segment_bytes: u64 },
    #[error("the log is closed")]
    Closed,
}

impl StorageError {
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> StorageError {
        if source.raw_os_error() == Some(ENOSPC) {
            StorageError::NoSpace {
                op,
                path: path.to_path_buf(),
            }
        } else {
            StorageError::Io {
                op,
                path: path.to_path_buf(),
                source: Arc::new(source),
            }
        }
    }

    /// An operating fault of the disk, as opposed to a caller's mistake.
    pub fn is_disk_fault(&self) -> bool {
        matches!(
            self,
            StorageError::NoSpace { .. } | StorageError::Io { .. } | StorageError::Corrupt { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

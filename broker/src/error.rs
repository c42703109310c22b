//! A client-facing error: a Kafka error code and, where the API carries
//! one, a message.

use sluice_protocol::ResponseError;
use sluice_storage::StorageError;
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: i16,
    pub message: Option<String>,
}

impl ApiError {
    pub fn new(error: ResponseError, message: impl Into<String>) -> ApiError {
        ApiError {
            code: error.code(),
            message: Some(message.into()),
        }
    }

    pub fn code(error: ResponseError) -> ApiError {
        ApiError {
            code: error.code(),
            message: None,
        }
    }
}

/// The error code for a storage error. Disk faults are logged here: the
/// client sees KAFKA_STORAGE_ERROR, the operator sees why.
pub fn storage_error_code(context: &str, e: &StorageError) -> i16 {
    match e {
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        StorageError::InvalidBatch(_) => ResponseError::CorruptMessage.code(),
        StorageError::BatchTooLarge { .. } => ResponseError::RecordListTooLarge.code(),
        StorageError::Closed => ResponseError::NotLeaderOrFollower.code(),
        StorageError::NoSpace { .. } | StorageError::Io { .. } | StorageError::Corrupt { .. } => {
            warn!(context, error = %e, "storage fault");
            ResponseError::KafkaStorageError.code()
        }
    }
}

//! Sluice's storage engine: the partition log.
//!
//! A [`Log`] is an append-only sequence of segments in one directory, owned
//! by one shard. Kafka record batches are stored byte for byte behind a small
//! rkyv-archived frame header ([`frame`]), written with page-aligned direct
//! I/O ([`appender`]), made durable by fdatasync shared among concurrent
//! appenders (group commit), indexed sparsely by offset and timestamp
//! ([`index`]), and recovered after a crash from the last [`checkpoint`].
//!
//! File I/O is a parameter ([`io::FileSystem`]): the same log runs on the
//! real disk ([`io::dma`]) and on a simulated, fault-injecting one
//! ([`io::sim`]).

pub mod appender;
pub mod batch;
pub mod cache;
pub mod checkpoint;
pub mod config;
mod copy;
pub mod error;
pub mod frame;
pub mod index;
pub mod io;
pub mod local_sync;
pub mod log;
pub mod offset;
pub mod segment;
pub mod served;
pub mod testing;

pub use cache::{BatchCache, CacheRead};
pub use config::LogConfig;
pub use error::{Result, StorageError};
pub use log::{AppendInfo, Log, LogStats, ReadLimits, TimestampHit};
pub use offset::Offset;
pub use served::ServedBatch;

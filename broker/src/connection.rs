//! One client connection: frames in, responses out, in request order.
//!
//! The reader splits frames off the socket, takes the frame's size from the
//! shard's request-bytes budget before reading its body (so a shard never
//! holds more than `queued.max.request.bytes` of requests), decodes it and
//! starts its handler as a task. Handlers run concurrently (pipelining); the
//! writer awaits them in the order the requests came and writes each
//! response. Requests start in arrival order, so a connection's produce
//! requests to one partition append in order.
//!
//! Bad input closes only this connection, with a log line: a frame over the
//! size limit, a negative size, a truncated header, an unknown api key, an
//! unsupported version (except ApiVersions, which is answered in v0 with
//! UNSUPPORTED_VERSION so the client can downgrade), or a body that does not
//! decode. A handler that panics closes the connection too; the shard lives.
//! Requests already started when a connection closes still run to their
//! end; only their responses are dropped.

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_lite::FutureExt;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;
use sluice_protocol::ResponseError;
use sluice_protocol::api::api_versions_response;
use sluice_protocol::frame::{FrameError, SIZE_PREFIX_BYTES, frame_size, split_frame};
use sluice_protocol::header::peek_preamble;
use sluice_protocol::kafka_protocol::messages::ApiKey;
use sluice_protocol::request::{DecodeError, decode_request};
use sluice_protocol::response::encode_response;
use sluice_storage::local_sync::LocalNotify;
use tracing::{debug, error, warn};

use crate::handlers::{self, Outcome};
use crate::recv_buffers::{self, OWN_BUFFER_FRAME_BYTES};
use crate::runtime;
use crate::shard::Shard;

/// Most bytes read from the socket at a time into the shared read buffer.
/// Small requests are split off a buffer of this size and may be kept (in
/// the batch cache) as slices of it, so it is kept modest; a frame of
/// `OWN_BUFFER_FRAME_BYTES` or more is read into a pooled buffer of its own.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Free room below which the read buffer grows before a read.
const READ_ROOM_MIN_BYTES: usize = 16 << 10;

/// A request being handled, in the writer's queue.
struct Pending {
    outcome: glommio::Task<Outcome>,
    /// The request's share of the shard's budget, returned when its
    /// response has been written.
    _budget: StaticPermit,
}

/// Why reading stopped.
enum ReadEnd {
    Eof,
    Stopping,
    WriterGone,
    Lost(std::io::Error),
    Bad(String),
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (queue_tx, queue_rx) = local_channel::new_bounded::<Pending>(shard.config.inflight_requests_per_connection_max);
    let writer_gone = Rc::new((Cell::new(false), LocalNotify::default()));
    let writer_task = runtime::spawn(write_responses(writer, queue_rx, peer, writer_gone.clone()));
    let end = read_requests(&shard, &mut reader, &queue_tx, peer, &writer_gone).await;
    match end {
        ReadEnd::Bad(reason) => warn!(%peer, %reason, "closing connection after bad input"),
        ReadEnd::Eof => debug!(%peer, "client closed the connection"),
        ReadEnd::Stopping => debug!(%peer, "closing connection: broker stopping"),
        ReadEnd::WriterGone => debug!(%peer, "connection lost while writing"),
        ReadEnd::Lost(e) => debug!(%peer, error = %e, "connection lost"),
    }
    // Responses already queued still go out; then the socket closes.
    drop(queue_tx);
    writer_task.await;
}

async fn read_requests(
    shard: &Rc<Shard>,
    reader: &mut (impl futures_lite::io::AsyncRead + Unpin),
    queue: &local_channel::LocalSender<Pending>,
    peer: SocketAddr,
    writer_gone: &Rc<(Cell<bool>, LocalNotify)>,
) -> ReadEnd {
    let max = shard.config.request_bytes_max;
    // Frames are read straight into this buffer and split off it, so a
    // request's bytes are never copied in user space: a large frame's room
    // is reserved whole once its size is known.
    let mut buf = ReadBuffer::new(READ_CHUNK_BYTES);
    // Budget taken for the frame being read, before its body arrives.
    let mut reserved: Option<(usize, StaticPermit)> = None;
    loop {
        // Dispatch every whole frame in the buffer.
        loop {
            let size = match frame_size(&buf.bytes, max) {
                Ok(Some(size)) => size,
                Ok(None) => break,
                Err(e @ FrameError::NegativeSize(_)) | Err(e @ FrameError::TooLarge { .. }) => {
                    return ReadEnd::Bad(e.to_string());
                }
            };
            if reserved.as_ref().is_none_or(|(s, _)| *s != size) {
                // Wait for budget before holding (or reading) the frame.
                let permit = match shard.request_bytes.acquire_static_permit(size.max(1) as u64).await {
                    Ok(p) => p,
                    Err(_) => return ReadEnd::Stopping,
                };
                reserved = Some((size, permit));
            }
            let frame = match split_frame(&mut buf.bytes, max) {
                Ok(Some(frame)) => frame.freeze(),
                _ if size >= OWN_BUFFER_FRAME_BYTES => {
                    match read_own_frame(shard, reader, &mut buf, size, writer_gone).await {
                        Ok(frame) => frame,
                        Err(end) => return end,
                    }
                }
                _ => {
                    buf.reserve(SIZE_PREFIX_BYTES + size - buf.bytes.len());
                    break;
                }
            };
            let (_, budget) = reserved.take().expect("budget was reserved above");
            if let Err(reason) = dispatch(shard, frame, budget, queue, peer).await {
                return ReadEnd::Bad(reason);
            }
        }
        if shard.is_stopping() {
            return ReadEnd::Stopping;
        }
        if buf.bytes.capacity() - buf.bytes.len() < READ_ROOM_MIN_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let read = read_some(shard, reader, buf.room(READ_CHUNK_BYTES), writer_gone).await;
        buf.filled(match &read {
            Some(Ok(n)) => *n,
            _ => 0,
        });
        if let Err(end) = read_end(read, writer_gone) {
            return end;
        }
    }
}

/// Reads the frame of `size` bytes whose start is in `buf` into a pooled
/// buffer of its own, so that its memory is neither new nor zeroed for it
/// (see `recv_buffers`); `buf` is left empty.
async fn read_own_frame(
    shard: &Rc<Shard>,
    reader: &mut (impl futures_lite::io::AsyncRead + Unpin),
    buf: &mut ReadBuffer,
    size: usize,
    writer_gone: &Rc<(Cell<bool>, LocalNotify)>,
) -> Result<Bytes, ReadEnd> {
    let mut own = recv_buffers::take(size);
    let have = buf.bytes.len() - SIZE_PREFIX_BYTES;
    assert!(have < size, "a whole frame is split off the read buffer");
    own[..have].copy_from_slice(&buf.bytes[SIZE_PREFIX_BYTES..]);
    buf.clear();
    let mut filled = have;
    while filled < size {
        let read = read_some(shard, reader, &mut own[filled..size], writer_gone).await;
        filled += read_end(read, writer_gone)?;
    }
    Ok(recv_buffers::freeze(own, size))
}

/// Reads into `room`, unless the broker stops or the connection's writer
/// goes first (`None`).
async fn read_some(
    shard: &Rc<Shard>,
    reader: &mut (impl futures_lite::io::AsyncRead + Unpin),
    room: &mut [u8],
    writer_gone: &Rc<(Cell<bool>, LocalNotify)>,
) -> Option<std::io::Result<usize>> {
    futures_lite::future::or(async { Some(reader.read(room).await) }, async {
        futures_lite::future::or(shard.stopped(), async {
            while !writer_gone.0.get() {
                writer_gone.1.listen().await;
            }
        })
        .await;
        None
    })
    .await
}

/// The bytes a read got, or why reading ends.
fn read_end(
    read: Option<std::io::Result<usize>>,
    writer_gone: &Rc<(Cell<bool>, LocalNotify)>,
) -> Result<usize, ReadEnd> {
    match read {
        None if writer_gone.0.get() => Err(ReadEnd::WriterGone),
        None => Err(ReadEnd::Stopping),
        Some(Ok(0)) => Err(ReadEnd::Eof),
        Some(Ok(n)) => Ok(n),
        Some(Err(e)) => Err(ReadEnd::Lost(e)),
    }
}

/// The reader's buffer: frames are split off its front, the socket reads
/// into the room after its end. That room must be initialized memory to
/// read into; zeroing it for every read would cost a pass over every byte
/// received, so the buffer remembers how much past its end is initialized
/// already (zeroed or read into earlier, never handed out), as long as the
/// allocation stays the same.
struct ReadBuffer {
    bytes: BytesMut,
    /// Bytes past `bytes.len()` that are initialized.
    initialized: usize,
    /// Bytes of the room handed out by `room`, awaiting `filled`.
    lent: usize,
}

impl ReadBuffer {
    fn new(capacity: usize) -> ReadBuffer {
        ReadBuffer {
            bytes: BytesMut::with_capacity(capacity),
            initialized: 0,
            lent: 0,
        }
    }

    fn spare_start(&self) -> usize {
        self.bytes.as_ptr() as usize + self.bytes.len()
    }

    /// Makes room for `additional` bytes after the end.
    fn reserve(&mut self, additional: usize) {
        let before = self.spare_start();
        self.bytes.reserve(additional);
        if self.spare_start() != before {
            // Moved: what follows the end is new memory.
            self.initialized = 0;
        }
    }

    /// Up to `most` bytes of room after the end, to read into.
    fn room(&mut self, most: usize) -> &mut [u8] {
        let start = self.bytes.len();
        let room = (self.bytes.capacity() - start).min(most);
        let known = self.initialized.min(room);
        // SAFETY: the `known` bytes after the end are within capacity and
        // initialized (see `initialized`), so they may become part of the
        // buffer as they are; `resize` zeroes the rest.
        unsafe { self.bytes.set_len(start + known) };
        self.bytes.resize(start + room, 0);
        self.initialized = self.initialized.max(room);
        self.lent = room;
        &mut self.bytes[start..]
    }

    /// Empties the buffer; what it held becomes initialized room.
    fn clear(&mut self) {
        assert_eq!(self.lent, 0);
        self.initialized += self.bytes.len();
        self.bytes.clear();
    }

    /// Keeps the first `n` bytes of the room last lent; the rest stays
    /// initialized room.
    fn filled(&mut self, n: usize) {
        assert!(n <= self.lent);
        let start = self.bytes.len() - self.lent;
        self.bytes.truncate(start + n);
        self.initialized -= n;
        self.lent = 0;
    }
}

/// Decodes a frame and queues its handling. An error means: close.
async fn dispatch(
    shard: &Rc<Shard>,
    frame: Bytes,
    budget: StaticPermit,
    queue: &local_channel::LocalSender<Pending>,
    peer: SocketAddr,
) -> Result<(), String> {
    let outcome: glommio::Task<Outcome> = match decode_request(frame.clone()) {
        Ok(request) => {
            let shard = shard.clone();
            let api = request.api_key;
            runtime::spawn(async move {
                match AssertUnwindSafe(handlers::handle(shard, request, peer))
                    .catch_unwind()
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        error!(%peer, ?api, "request handler panicked; closing the connection");
                        Outcome::Close
                    }
                }
            })
        }
        Err(DecodeError::UnsupportedVersion { api_key, api_version }) if api_key == ApiKey::ApiVersions as i16 => {
            // Answer in v0 with the supported ranges so the client can pick.
            let correlation_id = peek_preamble(&frame).map_or(0, |p| p.correlation_id);
            debug!(%peer, api_version, "ApiVersions of an unsupported version: answering in v0");
            let body = api_versions_response(ResponseError::UnsupportedVersion.code());
            let bytes = encode_response(ApiKey::ApiVersions, 0, correlation_id, &body).map_err(|e| e.to_string())?;
            runtime::spawn(async move { Outcome::Respond(bytes) })
        }
        Err(e) => return Err(e.to_string()),
    };
    queue
        .send(Pending {
            outcome,
            _budget: budget,
        })
        .await
        .map_err(|_| "the connection's writer stopped".to_string())
}

async fn write_responses(
    mut writer: impl futures_lite::io::AsyncWrite + Unpin,
    queue: local_channel::LocalReceiver<Pending>,
    peer: SocketAddr,
    gone: Rc<(Cell<bool>, LocalNotify)>,
) {
    while let Some(pending) = queue.recv().await {
        match pending.outcome.await {
            Outcome::Respond(bytes) => {
                if let Err(e) = writer.write_all(&bytes).await {
                    debug!(%peer, error = %e, "write failed");
                    break;
                }
            }
            Outcome::RespondChain(parts) => {
                let mut failed = None;
                for part in &parts {
                    if let Err(e) = writer.write_all(part).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    debug!(%peer, error = %e, "write failed");
                    break;
                }
            }
            Outcome::NoResponse => {}
            Outcome::Close => break,
        }
    }
    let _ = writer.close().await;
    gone.0.set(true);
    gone.1.notify_all();
    // No more responses, but requests already started run to their end,
    // as Kafka's do: dropping a handler part way would cancel whatever it
    // was doing (an append, a sync, a group change). The connection's task
    // lives until they finish, so that the broker's stop waits for them.
    while let Some(pending) = queue.recv().await {
        let _ = pending.outcome.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleared_read_buffer_reads_over_what_it_held() {
        let mut buf = ReadBuffer::new(64);
        let room = buf.room(10);
        room.copy_from_slice(b"0123456789");
        buf.filled(6);
        buf.clear();
        assert!(buf.bytes.is_empty());
        assert_eq!(buf.initialized, 10);
        assert_eq!(buf.room(12), b"0123456789\0\0");
    }

    #[test]
    fn read_room_is_zeroed_once_and_frames_split_off_the_front() {
        let mut buf = ReadBuffer::new(64);
        let room = buf.room(16);
        assert_eq!(room, &[0u8; 16][..]);
        room[..6].copy_from_slice(b"abcdef");
        room[6..10].copy_from_slice(b"XXXX");
        buf.filled(6);
        assert_eq!(&buf.bytes[..], b"abcdef");
        assert_eq!(buf.initialized, 10);
        // What a read left past the end is reused as it is, not zeroed.
        let room = buf.room(8);
        assert_eq!(&room[..4], b"XXXX");
        assert_eq!(&room[4..], &[0u8; 4][..]);
        room[..2].copy_from_slice(b"gh");
        buf.filled(2);
        let frame = buf.bytes.split_to(3).freeze();
        assert_eq!(&frame[..], b"abc");
        assert_eq!(&buf.bytes[..], b"defgh");
        // Splitting the front keeps the room after the end.
        assert_eq!(buf.initialized, 8);
        // A reserve that moves the data starts from new memory.
        drop(frame);
        buf.reserve(1 << 20);
        assert_eq!(buf.initialized, 0);
        assert_eq!(&buf.bytes[..], b"defgh");
        let room = buf.room(4);
        assert_eq!(room, &[0u8; 4][..]);
        buf.filled(0);
        assert_eq!(&buf.bytes[..], b"defgh");
    }
}

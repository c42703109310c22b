//! One pipelined connection to a broker, on the current glommio executor.
//!
//! The owner writes requests (`send`) and gets a `Reply` for each; a reader
//! task reads response frames and hands each to the oldest pending request,
//! checking its correlation id: Kafka brokers answer a connection's requests
//! in order. At most `in_flight_max` requests wait for answers; `send`
//! waits for a slot beyond that, which is how load stops growing when the
//! broker falls behind.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use sluice_protocol::frame::{SIZE_PREFIX_BYTES, frame_size, split_frame};
use sluice_protocol::kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ProduceRequest};
use sluice_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_protocol::produce_frame::encode_produce_request;

use crate::wire::{self, API_VERSIONS_VERSION, RESPONSE_BYTES_MAX, Versions};

/// Bytes asked of the socket per read. Large enough that a fetch response
/// of many megabytes takes few reads; responses are split off the buffer.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Buffers one sendmsg(2) passes at most; a longer frame takes more calls.
const PARTS_PER_WRITE_MAX: usize = 64;

/// How long a connection attempt may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests a connection keeps in flight unless told otherwise.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 8;

struct Pending {
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    reply: oneshot::Sender<anyhow::Result<Bytes>>,
}

/// State the owner and the reader task share, on one executor.
#[derive(Default)]
struct Shared {
    pending: RefCell<VecDeque<Pending>>,
    /// Why the connection is unusable, once it is.
    failure: RefCell<Option<String>>,
    /// The owner, waiting for a free slot.
    slot_waiter: Cell<Option<Waker>>,
}

impl Shared {
    fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    fn fail(&self, reason: String) {
        if self.failure.borrow().is_none() {
            *self.failure.borrow_mut() = Some(reason.clone());
        }
        let pending: Vec<Pending> = self.pending.borrow_mut().drain(..).collect();
        for p in pending {
            let _ = p.reply.send(Err(anyhow!("connection failed: {reason}")));
        }
        if let Some(w) = self.slot_waiter.take() {
            w.wake();
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        match &*self.failure.borrow() {
            Some(reason) => bail!("connection failed: {reason}"),
            None => Ok(()),
        }
    }
}

/// The answer to one request, once it arrives: the response body, header
/// read and checked.
pub struct Reply(oneshot::Receiver<anyhow::Result<Bytes>>);

impl Reply {
    pub async fn wait(self) -> anyhow::Result<Bytes> {
        self.0
            .await
            .map_err(|_| anyhow!("connection closed before the response"))?
    }
}

pub struct Connection {
    addr: String,
    writer: WriteHalf<TcpStream>,
    /// The socket under `writer`, for vectored writes.
    fd: RawFd,
    shared: Rc<Shared>,
    next_correlation_id: i32,
    in_flight_max: usize,
    versions: Versions,
    /// Cancelled when the connection is dropped.
    _reader: glommio::Task<()>,
}

impl Connection {
    /// Connects to `addr` (HOST:PORT) and agrees API versions with it.
    pub async fn connect(addr: &str, in_flight_max: usize) -> anyhow::Result<Connection> {
        assert!(in_flight_max >= 1);
        let socket_addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
        let stream = TcpStream::connect_timeout(socket_addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| anyhow!("connecting to {addr}: {e}"))?;
        // Requests are written whole; Nagle would only hold back the last
        // segment of each.
        stream
            .set_nodelay(true)
            .map_err(|e| anyhow!("setting TCP_NODELAY: {e}"))?;
        let fd = stream.as_raw_fd();
        let (reader, writer) = futures_lite::io::split(stream);
        let shared = Rc::new(Shared::default());
        let reader = glommio::spawn_local({
            let shared = shared.clone();
            async move {
                let reason = match read_responses(reader, &shared).await {
                    Ok(()) => "closed by the broker".to_string(),
                    Err(e) => format!("{e:#}"),
                };
                shared.fail(reason);
            }
        });
        let mut connection = Connection {
            addr: addr.to_string(),
            writer,
            fd,
            shared,
            next_correlation_id: 0,
            in_flight_max,
            versions: Versions::default(),
            _reader: reader,
        };
        connection.versions = connection.api_versions().await?;
        Ok(connection)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    pub fn has_slot(&self) -> bool {
        self.in_flight() < self.in_flight_max
    }

    /// Ready when a request slot is free or the connection failed; else
    /// wakes `cx` when one of those happens.
    pub fn poll_slot(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.has_slot() || self.shared.failure.borrow().is_some() {
            Poll::Ready(())
        } else {
            self.shared.slot_waiter.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }

    /// Completes when a request slot is free, or the connection failed.
    pub fn slot_free(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_slot(cx))
    }

    async fn send_at<T: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &T,
        expects_response: bool,
    ) -> anyhow::Result<Reply> {
        self.send_frame(api, version, expects_response, |correlation_id| {
            Ok(vec![wire::encode_request(api, version, correlation_id, body)?])
        })
        .await
    }

    /// Writes a Produce request with its batches shared, not copied into
    /// one frame (see `sluice_protocol::produce_frame`).
    pub async fn send_produce(&mut self, body: &ProduceRequest, expects_response: bool) -> anyhow::Result<Reply> {
        let version = self.versions.get(ApiKey::Produce)?;
        self.send_frame(ApiKey::Produce, version, expects_response, |correlation_id| {
            let client_id = Some(StrBytes::from_static_str(wire::CLIENT_ID));
            Ok(encode_produce_request(version, correlation_id, client_id, body)?)
        })
        .await
    }

    /// Waits for a slot, then writes the frame `encode` makes for the next
    /// correlation id. With `expects_response` false (produce with acks=0),
    /// the reply completes when the request is written.
    async fn send_frame(
        &mut self,
        api: ApiKey,
        version: i16,
        expects_response: bool,
        encode: impl FnOnce(i32) -> anyhow::Result<Vec<Bytes>>,
    ) -> anyhow::Result<Reply> {
        self.shared.check()?;
        if !self.has_slot() {
            self.slot_free().await;
            self.shared.check()?;
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode(correlation_id)?;
        let (tx, rx) = oneshot::channel();
        let done = if expects_response {
            self.shared.pending.borrow_mut().push_back(Pending {
                correlation_id,
                api,
                version,
                reply: tx,
            });
            None
        } else {
            Some(tx)
        };
        if let Err(e) = write_parts(&mut self.writer, self.fd, &frame).await {
            let reason = format!("writing to {}: {e}", self.addr);
            self.shared.fail(reason.clone());
            bail!(reason);
        }
        if let Some(tx) = done {
            let _ = tx.send(Ok(Bytes::new()));
        }
        Ok(Reply(rx))
    }

    /// Sends a request and decodes its response.
    pub async fn call<T: Encodable, R: Decodable>(&mut self, api: ApiKey, body: &T) -> anyhow::Result<R> {
        let version = self.versions.get(api)?;
        let reply = self.send_at(api, version, body, true).await?;
        wire::decode_body(api, version, reply.wait().await?)
    }

    async fn api_versions(&mut self) -> anyhow::Result<Versions> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(wire::CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let reply = self
            .send_at(ApiKey::ApiVersions, API_VERSIONS_VERSION, &request, true)
            .await?;
        let mut response = wire::decode_api_versions(API_VERSIONS_VERSION, reply.wait().await?)?;
        if response.error_code == wire::UNSUPPORTED_VERSION {
            let reply = self
                .send_at(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default(), true)
                .await?;
            response = wire::decode_api_versions(0, reply.wait().await?)?;
        }
        if response.error_code != 0 {
            bail!("{} refused ApiVersions with error {}", self.addr, response.error_code);
        }
        Ok(Versions::negotiate(&response))
    }
}

/// Writes `parts` in order, in as few sendmsg(2) calls as the socket takes
/// (one, unless it is full). Like the stream's own writes, they do not
/// block (MSG_DONTWAIT); when the socket is full, the stream's write waits
/// for room and writes the next piece, then sendmsg goes on.
async fn write_parts(writer: &mut WriteHalf<TcpStream>, fd: RawFd, parts: &[Bytes]) -> io::Result<()> {
    let (mut part, mut at) = (0usize, 0usize);
    while part < parts.len() {
        let iov: Vec<libc::iovec> = std::iter::once(&parts[part][at..])
            .chain(parts[part + 1..].iter().map(|p| &p[..]))
            .take(PARTS_PER_WRITE_MAX)
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: an all-zero msghdr is valid (no address, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        // SAFETY: each iovec points into a part that `parts` keeps alive
        // for the call, and sendmsg only reads them; `iov` and `msg` outlive
        // the call.
        let written = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        let mut n = if written >= 0 {
            written as usize
        } else {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => writer.write(&parts[part][at..]).await?,
                _ => return Err(e),
            }
        };
        if n == 0 && !parts[part][at..].is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while part < parts.len() && n >= parts[part].len() - at {
            n -= parts[part].len() - at;
            (part, at) = (part + 1, 0);
        }
        at += n;
    }
    Ok(())
}

async fn read_responses(mut reader: ReadHalf<TcpStream>, shared: &Shared) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Reads land here, zeroed once, then are appended to `buf`: cheaper
    // than zeroing fresh space in `buf` for every read.
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        while let Some(frame) = split_frame(&mut buf, RESPONSE_BYTES_MAX)? {
            deliver(shared, frame.freeze())?;
        }
        // Room for a large response whole, once its size is known, rather
        // than growing (and copying) the buffer as it arrives.
        if let Ok(Some(size)) = frame_size(&buf, RESPONSE_BYTES_MAX) {
            buf.reserve((SIZE_PREFIX_BYTES + size).saturating_sub(buf.len()));
        }
        let n = reader.read(&mut chunk).await.context("reading from the broker")?;
        if n == 0 {
            if shared.in_flight() > 0 {
                bail!("the broker closed the connection with requests in flight");
            }
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn deliver(shared: &Shared, mut frame: Bytes) -> anyhow::Result<()> {
    let Some(pending) = shared.pending.borrow_mut().pop_front() else {
        bail!("a response arrived with no request in flight");
    };
    let correlation_id = wire::decode_response_header(pending.api, pending.version, &mut frame)?;
    if correlation_id != pending.correlation_id {
        bail!(
            "response correlation id {correlation_id} answers no request (expected {})",
            pending.correlation_id
        );
    }
    // The receiver may be gone (its task was cancelled); that is not an error.
    let _ = pending.reply.send(Ok(frame));
    if let Some(w) = shared.slot_waiter.take() {
        w.wake();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// More parts than one sendmsg takes, empty ones among them, and more
    /// bytes than the socket holds, read slowly: every byte arrives, in order.
    #[test]
    fn parts_are_written_whole_and_in_order_when_the_socket_fills() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let parts: Vec<Bytes> = (0..(3 * PARTS_PER_WRITE_MAX))
            .map(|i| match i % 5 {
                0 => Bytes::new(),
                1 => Bytes::from(vec![i as u8; 3]),
                _ => Bytes::from((0..(100_000 + i)).map(|j| (i * 7 + j) as u8).collect::<Vec<_>>()),
            })
            .collect();
        let expected: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let reader = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                std::thread::sleep(Duration::from_millis(1));
                match socket.read(&mut chunk).unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        glommio::LocalExecutor::default().run(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let fd = stream.as_raw_fd();
            let (_reader, mut writer) = futures_lite::io::split(stream);
            write_parts(&mut writer, fd, &parts).await.unwrap();
            writer.close().await.unwrap();
        });
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }
}

//! Shard liveness: a thread outside the shards pings each one over a socket
//! pair and reports a shard that stops answering.
//!
//! A shard answers a ping only by running: its executor must wake, poll the
//! reading task, and go back to sleep. So an unanswered ping means the shard
//! is stalled (a task that never yields, a blocking call) or asleep through a
//! wakeup it was owed. The second has been seen: a shard that slept through
//! the completion of its own I/O at start-up, once in about a thousand starts
//! (glommio sleeps on its main io_uring, linked to a second ring through
//! which timers and cross-thread wakeups arrive). The ping is a receive on
//! the main ring itself, so its completion wakes a shard asleep that way;
//! the shard then finds everything else that completed meanwhile. A ping
//! every second bounds such a sleep to a second, and a shard that still
//! does not answer is logged as stalled, and again when it answers.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use tracing::{info, warn};

/// How often each shard is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the shard is reported stalled.
pub const STALL_REPORT_AFTER: Duration = Duration::from_secs(5);

/// The pinging thread. Dropping it stops the thread.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stalls: Arc<AtomicU64>,
}

/// A shard's end of its ping socket: [`serve`](Self::serve) it on the shard.
pub struct PingReceiver {
    socket: OwnedFd,
    answered: Arc<AtomicU64>,
}

impl PingReceiver {
    /// Answers pings from a task on the current executor until the returned
    /// task is dropped (which closes the socket: the watchdog then stops
    /// watching this shard) or the watchdog is gone.
    #[must_use = "dropping the task stops answering pings"]
    pub fn serve(self) -> glommio::Task<()> {
        let Self { socket, answered } = self;
        // SAFETY: the descriptor is an open, connected Unix stream socket that
        // nothing else owns; glommio's stream takes it over and closes it.
        let mut stream =
            unsafe { <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd()) };
        glommio::spawn_local(async move {
            let mut buf = [0u8; 16];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answered.fetch_add(n as u64, Ordering::Release);
                    }
                }
            }
        })
    }
}

/// What the watchdog knows of one shard.
struct Pinged {
    socket: UnixStream,
    answered: Arc<AtomicU64>,
    sent: u64,
    /// When the oldest unanswered ping went out.
    waiting_since: Option<Instant>,
    reported: bool,
    gone: bool,
}

impl Watchdog {
    /// Starts pinging `shards` shards; returns one receiver per shard, in
    /// shard order.
    pub fn start(
        shards: usize,
        interval: Duration,
        report_after: Duration,
    ) -> std::io::Result<(Watchdog, Vec<PingReceiver>)> {
        let mut pinged = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (ours, theirs) = UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            theirs.set_nonblocking(true)?;
            let answered = Arc::new(AtomicU64::new(0));
            receivers.push(PingReceiver {
                socket: OwnedFd::from(theirs),
                answered: answered.clone(),
            });
            pinged.push(Pinged {
                socket: ours,
                answered,
                sent: 0,
                waiting_since: None,
                reported: false,
                gone: false,
            });
        }
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let stalls = Arc::new(AtomicU64::new(0));
        let counted = stalls.clone();
        let thread = std::thread::Builder::new().name("watchdog".into()).spawn(move || {
            // Stops on a message or when the sender is dropped.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                let now = Instant::now();
                for (shard, p) in pinged.iter_mut().enumerate() {
                    if check(shard, p, now, report_after) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })?;
        Ok((
            Watchdog {
                stop: Some(stop_tx),
                thread: Some(thread),
                stalls,
            },
            receivers,
        ))
    }

    /// Stalls reported so far.
    pub fn stalls_reported(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One round for one shard: notes a closed socket (the shard has stopped),
/// reports a ping unanswered for `report_after`, and sends the next ping
/// once the last is answered. True if it reported a new stall.
fn check(shard: usize, p: &mut Pinged, now: Instant, report_after: Duration) -> bool {
    if p.gone {
        return false;
    }
    let mut probe = [0u8; 1];
    match (&p.socket).read(&mut probe) {
        // The shard's end is closed: its executor has finished.
        Ok(0) => {
            p.gone = true;
            return false;
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(_) => {
            p.gone = true;
            return false;
        }
    }
    let answered = p.answered.load(Ordering::Acquire);
    if answered >= p.sent {
        if let Some(since) = p.waiting_since.take()
            && p.reported
        {
            info!(
                shard,
                stalled_ms = since.elapsed().as_millis() as u64,
                "shard answers pings again"
            );
        }
        p.reported = false;
        match (&p.socket).write(&[1]) {
            Ok(1) => {
                p.sent += 1;
                p.waiting_since = Some(now);
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => p.gone = true,
        }
        return false;
    }
    let waited = p.waiting_since.map_or(Duration::ZERO, |s| now.duration_since(s));
    if waited >= report_after && !p.reported {
        p.reported = true;
        warn!(
            shard,
            waited_ms = waited.as_millis() as u64,
            "shard has not answered a ping: stalled, or asleep through a wakeup"
        );
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    const INTERVAL: Duration = Duration::from_millis(10);

    /// Runs `body` on a fresh executor that serves `receiver`.
    fn shard<F: std::future::Future<Output = ()> + 'static>(
        receiver: PingReceiver,
        body: impl FnOnce() -> F + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            LocalExecutorBuilder::default()
                .make()
                .expect("executor")
                .run(async move {
                    let _pings = receiver.serve();
                    body().await;
                })
        })
    }

    #[test]
    fn a_running_shard_answers_every_ping_and_is_never_reported() {
        let (dog, mut receivers) = Watchdog::start(1, INTERVAL, Duration::from_secs(5)).unwrap();
        let answered = receivers[0].answered.clone();
        // The shard only sleeps: nothing but the pings wakes it.
        let t = shard(receivers.remove(0), || {
            glommio::timer::sleep(Duration::from_millis(600))
        });
        t.join().unwrap();
        assert!(answered.load(Ordering::Acquire) >= 3, "pings were answered");
        assert_eq!(dog.stalls_reported(), 0);
    }

    #[test]
    fn a_shard_blocked_past_the_limit_is_reported_then_answers_again() {
        let (dog, mut receivers) = Watchdog::start(1, INTERVAL, Duration::from_millis(150)).unwrap();
        let answered = receivers[0].answered.clone();
        let t = shard(receivers.remove(0), move || async move {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            // Blocks the executor's thread: no task runs, no ping is read.
            std::thread::sleep(Duration::from_millis(1000));
            let resumed_at = answered.load(Ordering::Acquire);
            glommio::timer::sleep(Duration::from_millis(200)).await;
            assert!(
                answered.load(Ordering::Acquire) > resumed_at,
                "answers again after the stall"
            );
        });
        t.join().unwrap();
        // A loaded machine may delay the shard past the limit elsewhere too;
        // the blocked second is reported at least once.
        assert!(dog.stalls_reported() >= 1, "the stall was reported");
    }

    #[test]
    fn a_finished_shard_is_not_reported() {
        let (dog, mut receivers) = Watchdog::start(1, INTERVAL, Duration::from_millis(300)).unwrap();
        let t = shard(receivers.remove(0), || glommio::timer::sleep(Duration::from_millis(50)));
        t.join().unwrap();
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(dog.stalls_reported(), 0);
    }
}

//! The live status line: elapsed time, rate and current p99 on one line of
//! stderr, redrawn every second, only when stderr is a terminal (logs and
//! CI output stay clean).

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::latency::new_latency_histogram;

/// How often workers report and the line is redrawn.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Updates queued for the status line; workers drop interval updates
/// rather than wait when it is full.
const UPDATES_QUEUED_MAX: usize = 1024;

pub enum Update {
    /// What one worker did since its last update.
    Interval {
        records: u64,
        bytes: u64,
        latency: Histogram<u64>,
    },
    /// The worker finished (sent also when it fails or panics).
    Done,
}

/// Sends `Done` when dropped, so the status loop ends even when a worker
/// panics.
pub struct DoneGuard {
    pub updates: SyncSender<Update>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.updates.send(Update::Done);
    }
}

pub fn channel() -> (SyncSender<Update>, Receiver<Update>) {
    sync_channel(UPDATES_QUEUED_MAX)
}

/// Whether the status line is drawn: only on a terminal.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// Receives updates until every worker is done, drawing the line if
/// `draw`. `label` names what the rate counts ("produced", "consumed").
pub fn run_status_line(updates: &Receiver<Update>, worker_count: usize, draw: bool, label: &str) {
    let started = Instant::now();
    let mut done = 0usize;
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut latency = new_latency_histogram();
    let mut last_draw = Instant::now();
    while done < worker_count {
        match updates.recv_timeout(PROGRESS_INTERVAL / 4) {
            Ok(Update::Done) => done += 1,
            Ok(Update::Interval {
                records: r,
                bytes: b,
                latency: l,
            }) => {
                records += r;
                bytes += b;
                latency.add(&l).expect("histograms share their bounds");
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let since = last_draw.elapsed();
        if draw && since >= PROGRESS_INTERVAL {
            let s = since.as_secs_f64();
            let p99 = if latency.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3} ms", latency.value_at_quantile(0.99) as f64 / 1e3)
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[K[{:>6.1} s] {label} {:>9.0} records/s {:>8.1} MB/s   p99 {p99}",
                started.elapsed().as_secs_f64(),
                records as f64 / s,
                bytes as f64 / s / 1e6,
            );
            let _ = err.flush();
            records = 0;
            bytes = 0;
            latency.reset();
            last_draw = Instant::now();
        }
    }
    if draw {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}

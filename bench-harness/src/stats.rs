//! What each worker counts during a run, and how the counts of all workers
//! are merged into one result.

use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::latency::{new_latency_histogram, record_us};
use crate::progress::Update;

/// The timeline of a run, the same on every executor: all start together
/// after a warmup, then measure for a fixed duration.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When load starts (the open-loop schedule counts from here).
    pub start: Instant,
    /// End of warmup: latencies and throughput count from here.
    pub measure_from: Instant,
    /// End of the run: no record is meant to be sent at or after this.
    pub measure_until: Instant,
}

impl Schedule {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Schedule {
        Schedule {
            start,
            measure_from: start + warmup,
            measure_until: start + warmup + duration,
        }
    }

    /// Seconds in the per-second timeline.
    pub fn second_count(&self) -> usize {
        (self.measure_until - self.measure_from).as_secs_f64().ceil() as usize
    }
}

/// Records and payload bytes counted in one second of the measured window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondCounts {
    pub records: u64,
    pub bytes: u64,
}

/// Counts kept by one worker (producer or consumer) on its executor.
pub struct WorkerStats {
    schedule: Schedule,
    measure_from_us: u64,
    measure_until_us: u64,
    /// Latency of records meant to be sent inside the measured window.
    latency: Histogram<u64>,
    /// Records and bytes completed (acked or consumed) inside the window.
    records: u64,
    bytes: u64,
    /// Records completed at any time, warmup and drain included.
    records_total: u64,
    timeline: Vec<SecondCounts>,
    /// Records the broker refused, by Kafka error code.
    errors: Vec<(i16, u64)>,
    /// The first failure that was not a Kafka error code (a broken
    /// connection), for the report.
    first_failure: Option<String>,
    /// Since the last progress update: for the live status line.
    interval_latency: Histogram<u64>,
    interval_records: u64,
    interval_bytes: u64,
}

impl WorkerStats {
    pub fn new(schedule: Schedule) -> WorkerStats {
        WorkerStats {
            schedule,
            measure_from_us: crate::clock::us_at(schedule.measure_from),
            measure_until_us: crate::clock::us_at(schedule.measure_until),
            latency: new_latency_histogram(),
            records: 0,
            bytes: 0,
            records_total: 0,
            timeline: vec![SecondCounts::default(); schedule.second_count()],
            errors: Vec::new(),
            first_failure: None,
            interval_latency: new_latency_histogram(),
            interval_records: 0,
            interval_bytes: 0,
        }
    }

    /// One record, meant to be sent at `stamp_us`, done at `done_us` (both
    /// on the harness clock). Counted only if it was meant for the window.
    pub fn record_latency(&mut self, stamp_us: u64, done_us: u64) {
        let latency_us = done_us.saturating_sub(stamp_us);
        record_us(&mut self.interval_latency, latency_us);
        if (self.measure_from_us..self.measure_until_us).contains(&stamp_us) {
            record_us(&mut self.latency, latency_us);
        }
    }

    /// `records` of `bytes` payload completed at `done`: throughput counts
    /// what completes inside the window.
    pub fn count_done(&mut self, done: Instant, records: u64, bytes: u64) {
        self.interval_records += records;
        self.interval_bytes += bytes;
        self.records_total += records;
        if done < self.schedule.measure_from || done >= self.schedule.measure_until {
            return;
        }
        self.records += records;
        self.bytes += bytes;
        let second = (done - self.schedule.measure_from).as_secs() as usize;
        if let Some(s) = self.timeline.get_mut(second) {
            s.records += records;
            s.bytes += bytes;
        }
    }

    pub fn count_error(&mut self, code: i16, records: u64) {
        match self.errors.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += records,
            None => self.errors.push((code, records)),
        }
    }

    pub fn note_failure(&mut self, failure: String) {
        if self.first_failure.is_none() {
            self.first_failure = Some(failure);
        }
    }

    /// Sends what happened since the last call to the status line; dropped
    /// if the status line is behind (it is only a view).
    pub fn send_progress(&mut self, progress: &SyncSender<Update>) {
        let latency = std::mem::replace(&mut self.interval_latency, new_latency_histogram());
        let update = Update::Interval {
            records: std::mem::take(&mut self.interval_records),
            bytes: std::mem::take(&mut self.interval_bytes),
            latency,
        };
        let _ = progress.try_send(update);
    }

    pub fn finish(self, unacked_records: u64) -> WorkerResult {
        WorkerResult {
            latency: self.latency,
            records: self.records,
            bytes: self.bytes,
            records_total: self.records_total,
            timeline: self.timeline,
            errors: self.errors,
            first_failure: self.first_failure,
            unacked_records,
        }
    }
}

/// What a worker hands back across executors at the end of a run.
#[derive(Debug, Clone)]
pub struct WorkerResult {
    pub latency: Histogram<u64>,
    pub records: u64,
    pub bytes: u64,
    /// Records completed at any time, warmup and drain included: for a
    /// producer, every record the broker acknowledged.
    pub records_total: u64,
    pub timeline: Vec<SecondCounts>,
    pub errors: Vec<(i16, u64)>,
    pub first_failure: Option<String>,
    /// Records sent but never answered before the drain timeout.
    pub unacked_records: u64,
}

impl WorkerResult {
    pub fn empty(seconds: usize) -> WorkerResult {
        WorkerResult {
            latency: new_latency_histogram(),
            records: 0,
            bytes: 0,
            records_total: 0,
            timeline: vec![SecondCounts::default(); seconds],
            errors: Vec::new(),
            first_failure: None,
            unacked_records: 0,
        }
    }

    pub fn merge(&mut self, other: &WorkerResult) {
        self.latency.add(&other.latency).expect("histograms share their bounds");
        self.records += other.records;
        self.bytes += other.bytes;
        self.records_total += other.records_total;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), SecondCounts::default());
        }
        for (s, o) in self.timeline.iter_mut().zip(&other.timeline) {
            s.records += o.records;
            s.bytes += o.bytes;
        }
        for &(code, n) in &other.errors {
            match self.errors.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => self.errors.push((code, n)),
            }
        }
        self.unacked_records += other.unacked_records;
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&other.first_failure);
        }
    }

    pub fn error_records(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_measured_window_counts() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Duration::from_secs(1), Duration::from_secs(2));
        let mut stats = WorkerStats::new(schedule);
        let us = crate::clock::us_at;
        // Meant during warmup: not in the histogram.
        stats.record_latency(us(start), us(start) + 500);
        // Meant inside the window, whenever it completes.
        stats.record_latency(us(schedule.measure_from), us(schedule.measure_until) + 10_000);
        stats.count_done(start, 5, 500);
        stats.count_done(schedule.measure_from + Duration::from_millis(1500), 3, 300);
        stats.count_done(schedule.measure_until, 7, 700);
        stats.count_error(6, 2);
        stats.count_error(6, 1);
        let r = stats.finish(4);
        assert_eq!(r.latency.len(), 1);
        assert!(r.latency.max() >= 1_000_000);
        assert_eq!((r.records, r.bytes, r.records_total), (3, 300, 15));
        assert_eq!(
            r.timeline,
            vec![SecondCounts::default(), SecondCounts { records: 3, bytes: 300 }]
        );
        assert_eq!(r.errors, vec![(6, 3)]);
        let mut total = WorkerResult::empty(0);
        total.merge(&r);
        total.merge(&r);
        assert_eq!((total.records, total.error_records(), total.unacked_records), (6, 6, 8));
        assert_eq!(total.timeline[1].records, 6);
        assert_eq!(total.latency.len(), 2);
    }
}

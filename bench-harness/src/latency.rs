//! Latency recording and the summary every subcommand reports.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Records latencies in microseconds, 1 µs to 100 s, 3 significant digits.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        LatencyRecorder {
            histogram: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 100_000_000);
        self.histogram.record(us).expect("value within bounds");
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        LatencySummary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// Percentiles in microseconds; the JSON shape `docs/BENCHMARKS.md` documents.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl LatencySummary {
    /// "p50 / p99 / p99.9" in milliseconds, for tables.
    pub fn short(&self) -> String {
        format!(
            "{:.3} / {:.3} / {:.3} ms",
            self.p50 as f64 / 1e3,
            self.p99 as f64 / 1e3,
            self.p999 as f64 / 1e3
        )
    }
}

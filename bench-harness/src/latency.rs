//! Latency recording and the summary every subcommand reports.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in microseconds (100 s); longer ones are
/// recorded as this, so a stall never loses a sample.
pub const LATENCY_US_MAX: u64 = 100_000_000;

/// Points of the percentile distribution kept in a report: enough to redraw
/// the usual HdrHistogram plot (5 per halving of the tail, to 1 in 10^7).
pub const DISTRIBUTION_POINTS_MAX: usize = 200;

/// Iteration steps per halving of the distance to 100%, as HdrHistogram's
/// own percentile output does.
const DISTRIBUTION_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A histogram of latencies in microseconds, 1 µs to 100 s, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

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
            histogram: new_latency_histogram(),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.histogram.record(us).expect("value within bounds");
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.histogram)
    }

    pub fn merge(&mut self, other: &Histogram<u64>) {
        self.histogram.add(other).expect("histograms share their bounds");
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }
}

/// Records one latency in microseconds, clamped into the histogram's range.
pub fn record_us(histogram: &mut Histogram<u64>, latency_us: u64) {
    histogram.saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
}

/// Percentiles in microseconds; the JSON shape `docs/BENCHMARKS.md` documents.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
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
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
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

    /// "p50 / p99 / p99.9" in milliseconds, for tables.
    pub fn short(&self) -> String {
        format!(
            "{:.3} / {:.3} / {:.3} ms",
            self.p50 as f64 / 1e3,
            self.p99 as f64 / 1e3,
            self.p999 as f64 / 1e3
        )
    }

    /// Every reported percentile in milliseconds, for the terminal summary.
    pub fn line(&self) -> String {
        let ms = |us: u64| us as f64 / 1e3;
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3} ms  ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.p9999),
            ms(self.max),
            self.count
        )
    }
}

/// A latency in a load report: the summary, flattened, plus the percentile
/// distribution that `sluice-bench plot` redraws.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyReport {
    #[serde(flatten)]
    pub summary: LatencySummary,
    /// `[percentile, latency_us]` pairs, percentile in 0..100, ascending;
    /// the value at each is the latency that percentile of samples is at or
    /// below.
    pub distribution: Vec<(f64, u64)>,
}

impl LatencyReport {
    pub fn of(h: &Histogram<u64>) -> LatencyReport {
        LatencyReport {
            summary: LatencySummary::of(h),
            distribution: distribution(h),
        }
    }
}

/// The percentile distribution of `h` as HdrHistogram prints it: steps that
/// halve the distance to 100%, each with the highest value at or below it.
/// The last point (100%) is the max, which a 1/(1-p) axis cannot place, so
/// it is left to `max`.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, u64)> = Vec::new();
    for v in h.iter_quantiles(DISTRIBUTION_TICKS_PER_HALF_DISTANCE) {
        let percentile = v.quantile_iterated_to() * 100.0;
        if percentile >= 100.0 || points.len() >= DISTRIBUTION_POINTS_MAX {
            break;
        }
        let value = h.highest_equivalent(v.value_iterated_to());
        // Several steps can land in one bucket; keep the last of each
        // percentile so the curve never steps back.
        match points.last_mut() {
            Some(last) if last.0 == percentile => last.1 = value,
            _ => points.push((percentile, value)),
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_rises_to_the_tail_and_stops_short_of_100_percent() {
        let mut h = new_latency_histogram();
        for us in 1..=100_000u64 {
            record_us(&mut h, us);
        }
        let d = distribution(&h);
        assert!(d.len() > 20 && d.len() <= DISTRIBUTION_POINTS_MAX);
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(d.iter().all(|&(p, _)| (0.0..100.0).contains(&p)));
        // The 50% point is about the median of 1..=100000.
        let (_, p50) = d.iter().copied().find(|&(p, _)| p >= 50.0).expect("a 50% point");
        assert!((49_900..=50_100).contains(&p50), "p50 {p50}");
        // The top bucket (64 values wide at 3 significant digits) holds the
        // last 0.064% of samples, so the curve reaches past 99.9% before 100%.
        assert!(d.last().expect("points").0 > 99.9);
    }

    #[test]
    fn empty_histogram_has_no_distribution() {
        assert!(distribution(&new_latency_histogram()).is_empty());
        let r = LatencyReport::of(&new_latency_histogram());
        assert_eq!(r.summary.count, 0);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut h = new_latency_histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= LATENCY_US_MAX);
    }
}

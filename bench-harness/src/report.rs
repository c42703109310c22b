//! The result of a load run: what `--json` writes, what `plot` and
//! `report` read back, and the summary printed at the end. The schema is
//! documented in `docs/BENCHMARKS.md`; keep the two in step.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::latency::LatencyReport;
use crate::stats::WorkerResult;

/// Bumped when a key changes meaning or goes away (adding keys is not a change).
pub const SCHEMA_VERSION: u32 = 1;

/// How a run was set up: its flags, resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct RunConfig {
    pub brokers: String,
    pub topic: String,
    pub partitions: usize,
    pub record_bytes: usize,
    /// "0", "1" or "all"; absent for consume.
    pub acks: Option<String>,
    pub producers: usize,
    pub consumers: usize,
    pub batch_bytes: usize,
    pub linger_ms: f64,
    pub in_flight: usize,
    /// Connections from each producer to each leader.
    pub connections: usize,
    /// Total records/s asked for (open loop); absent for the closed loop.
    pub rate_records_s: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub cpuset: String,
}

/// One second of the measured window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SecondReport {
    pub records_s: f64,
    pub mb_s: f64,
}

/// Throughput of what was consumed, in an e2e run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsumeReport {
    pub records: u64,
    pub bytes: u64,
    /// Records received at any time of the run, warmup and catch-up included.
    #[serde(default)]
    pub records_total: u64,
    pub throughput_records_s: f64,
    pub throughput_mb_s: f64,
    pub per_second: Vec<SecondReport>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ErrorCount {
    /// Kafka error code; -1 for a request that failed as a whole.
    pub code: i16,
    pub records: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub schema_version: u32,
    /// "produce", "consume" or "e2e".
    pub kind: String,
    /// Names the run in plots and tables (`--label`, else kind and rate).
    pub label: String,
    /// The command line that ran it.
    pub command: String,
    pub unix_time_s: u64,
    pub config: RunConfig,
    /// Records and payload bytes (record values) completed inside the
    /// measured window: acknowledged for produce and e2e, received for
    /// consume.
    pub records: u64,
    pub bytes: u64,
    /// Records completed at any time of the run, warmup and the final
    /// drain included: for produce and e2e, every record the broker
    /// acknowledged, so a topic produced by one run holds exactly this many.
    #[serde(default)]
    pub records_total: u64,
    pub throughput_records_s: f64,
    /// Megabytes (10^6 bytes) of payload per second.
    pub throughput_mb_s: f64,
    /// The same, second by second, so that stalls show.
    pub per_second: Vec<SecondReport>,
    /// From each record's intended send time to its acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_latency_us: Option<LatencyReport>,
    /// From each record's intended send time to its arrival at a consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_latency_us: Option<LatencyReport>,
    /// What the consumers of an e2e run received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume: Option<ConsumeReport>,
    #[serde(default)]
    pub errors: Vec<ErrorCount>,
    #[serde(default)]
    pub error_records: u64,
    /// Records sent whose answer never came before the drain timeout.
    #[serde(default)]
    pub unacked_records: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

/// Throughput figures of a merged result over `seconds` of window.
pub struct Throughput {
    pub records_s: f64,
    pub mb_s: f64,
    pub per_second: Vec<SecondReport>,
}

impl Throughput {
    pub fn of(result: &WorkerResult, seconds: f64) -> Throughput {
        let seconds = seconds.max(1e-9);
        Throughput {
            records_s: result.records as f64 / seconds,
            mb_s: result.bytes as f64 / seconds / 1e6,
            per_second: result
                .timeline
                .iter()
                .map(|s| SecondReport {
                    records_s: s.records as f64,
                    mb_s: s.bytes as f64 / 1e6,
                })
                .collect(),
        }
    }
}

impl RunReport {
    pub fn read(path: &Path) -> anyhow::Result<RunReport> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a sluice-bench run report", path.display()))
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The summary printed at the end of a run.
    pub fn print_summary(&self) {
        let c = &self.config;
        let mut setup = vec![format!("topic {} ({} partitions)", c.topic, c.partitions)];
        if c.producers > 0 {
            let load = match c.rate_records_s {
                Some(r) => format!("open loop at {r:.0} records/s"),
                None => "closed loop".to_string(),
            };
            setup.push(format!(
                "{} producer(s) of {}-byte records, acks={}, {load}",
                c.producers,
                c.record_bytes,
                c.acks.as_deref().unwrap_or("?")
            ));
        }
        if c.consumers > 0 {
            setup.push(format!("{} consumer(s)", c.consumers));
        }
        println!();
        println!("{} on {}: {}", self.label, c.brokers, setup.join(", "));
        println!(
            "measured {:.0} s after {:.0} s of warmup; cpuset {}",
            c.duration_s, c.warmup_s, c.cpuset
        );
        let verb = if self.kind == "consume" { "consumed" } else { "acked" };
        println!(
            "throughput   {:>10.1} MB/s  {:>12.0} records/s  ({} records {verb} in the window, {} in all)",
            self.throughput_mb_s, self.throughput_records_s, self.records, self.records_total
        );
        print_per_second(&self.per_second);
        if let Some(l) = &self.produce_latency_us {
            println!("produce latency  {}", l.summary.line());
        }
        if let Some(consume) = &self.consume {
            println!(
                "consumed     {:>10.1} MB/s  {:>12.0} records/s  ({} records)",
                consume.throughput_mb_s, consume.throughput_records_s, consume.records
            );
        }
        if let Some(l) = &self.e2e_latency_us {
            println!("e2e latency      {}", l.summary.line());
        }
        if self.error_records > 0 || self.unacked_records > 0 {
            let codes: Vec<String> = self
                .errors
                .iter()
                .map(|e| format!("{}x{}", e.code, e.records))
                .collect();
            println!(
                "errors: {} records refused (code x records: {}), {} never answered",
                self.error_records,
                codes.join(" "),
                self.unacked_records
            );
        }
        if let Some(f) = &self.first_failure {
            println!("first failure: {f}");
        }
    }
}

fn print_per_second(seconds: &[SecondReport]) {
    if seconds.is_empty() {
        return;
    }
    let min = seconds.iter().map(|s| s.mb_s).fold(f64::INFINITY, f64::min);
    let max = seconds.iter().map(|s| s.mb_s).fold(0.0, f64::max);
    println!("per second   MB/s, min {min:.1} max {max:.1}:");
    for row in seconds.chunks(10) {
        let cells: Vec<String> = row.iter().map(|s| format!("{:>7.1}", s.mb_s)).collect();
        println!("  {}", cells.join(" "));
    }
}

pub fn unix_time_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The command line, as typed (arguments with spaces quoted).
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.contains(' ') || a.is_empty() {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::latency::{new_latency_histogram, record_us};

    /// A report as a produce or e2e run writes it, for tests.
    pub fn sample_report(kind: &str, label: &str, scale_us: u64) -> RunReport {
        let mut h = new_latency_histogram();
        for i in 1..=10_000u64 {
            record_us(&mut h, i * scale_us / 100);
        }
        let latency = LatencyReport::of(&h);
        RunReport {
            schema_version: SCHEMA_VERSION,
            kind: kind.to_string(),
            label: label.to_string(),
            command: "sluice-bench produce".to_string(),
            unix_time_s: 0,
            config: RunConfig::default(),
            records: 1000,
            bytes: 1_024_000,
            records_total: 1200,
            throughput_records_s: 100.0,
            throughput_mb_s: 0.1024,
            per_second: vec![SecondReport {
                records_s: 100.0,
                mb_s: 0.1024,
            }],
            produce_latency_us: Some(latency.clone()),
            e2e_latency_us: (kind == "e2e").then_some(latency),
            consume: None,
            errors: Vec::new(),
            error_records: 0,
            unacked_records: 0,
            first_failure: None,
        }
    }

    #[test]
    fn json_has_the_documented_keys_and_reads_back() {
        let report = sample_report("e2e", "run", 1000);
        let value = serde_json::to_value(&report).expect("serializes");
        for key in [
            "throughput_mb_s",
            "throughput_records_s",
            "produce_latency_us",
            "e2e_latency_us",
            "per_second",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        for latency in ["produce_latency_us", "e2e_latency_us"] {
            let l = &value[latency];
            for key in ["p50", "p90", "p99", "p999", "p9999", "max", "count", "distribution"] {
                assert!(l.get(key).is_some(), "{latency} lacks {key}");
            }
            assert!(l["p50"].as_u64().expect("a number") <= l["p99"].as_u64().expect("a number"));
            let first = &l["distribution"][0];
            assert!(first[0].is_f64() && first[1].is_u64(), "points are [percentile, us]");
        }
        let back: RunReport = serde_json::from_value(value).expect("reads back");
        assert_eq!(back, report);
    }

    #[test]
    fn a_produce_report_has_no_e2e_key() {
        let value = serde_json::to_value(sample_report("produce", "p", 1000)).expect("serializes");
        assert!(value.get("e2e_latency_us").is_none());
        assert!(value.get("produce_latency_us").is_some());
    }
}

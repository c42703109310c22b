//! `sluice-bench`: load and latency measurement for Sluice and any
//! Kafka-compatible broker. Subcommands and the JSON they write are
//! documented in `docs/BENCHMARKS.md`.

mod clock;
mod cluster;
mod connection;
mod consumer;
mod cpuset;
mod latency;
mod limits;
mod load;
mod plot;
mod producer;
mod progress;
mod record_batch;
mod report;
mod stats;
mod storage_bench;
mod wire;

use clap::{Parser, Subcommand};

// Per-thread heaps without trimming back to the OS: no page faults in
// steady state, and no cross-thread locking in a thread-per-core program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load and latency measurement for Sluice and any Kafka-compatible broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce to a topic, as fast as the broker takes it (closed loop) or
    /// at a fixed --rate (open loop), and measure throughput and the
    /// latency from each record's send time to its acknowledgement.
    Produce(load::ProduceArgs),
    /// Read a topic from the start through to its end, or from the tail
    /// for the duration, at full speed.
    Consume(load::ConsumeArgs),
    /// Produce and consume together: end-to-end latency from the send time
    /// stamped in each record to its arrival at a consumer.
    E2e(load::E2eArgs),
    /// This machine's ceilings: loopback TCP throughput between the given
    /// CPUs, O_DIRECT write bandwidth and write+fdatasync latency of a disk.
    Limits(limits::LimitsArgs),
    /// The storage engine against this disk's raw limits: O_DIRECT write
    /// bandwidth and write+fdatasync latency, then the log's append
    /// throughput and durable-append latency as ratios to them.
    Storage(storage_bench::StorageArgs),
    /// Draw the latency percentile distributions of several runs (their
    /// --json files) on one SVG chart.
    Plot(plot::PlotArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Produce(args) => load::produce(args).map(drop),
        Command::Consume(args) => load::consume(args).map(drop),
        Command::E2e(args) => load::e2e(args).map(drop),
        Command::Limits(args) => limits::run(args).map(drop),
        Command::Storage(args) => storage_bench::run(args),
        Command::Plot(args) => plot::run(args),
    }
}

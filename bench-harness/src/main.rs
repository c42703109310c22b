//! `sluice-bench`: load and latency measurement for Sluice.

mod latency;
mod storage_bench;

use clap::{Parser, Subcommand};

// Per-thread heaps without trimming back to the OS: no page faults in
// steady state, and no cross-thread locking in a thread-per-core program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Load and latency measurement for Sluice")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The storage engine against this disk's raw limits: O_DIRECT write
    /// bandwidth and write+fdatasync latency, then the log's append
    /// throughput and durable-append latency as ratios to them.
    Storage(storage_bench::StorageArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Storage(args) => storage_bench::run(args),
    }
}

//! `sluice`: the broker binary.

mod config;
mod connection;
mod controller;
mod cpuset;
mod error;
mod faults;
mod group;
mod handlers;
mod kvlog;
mod memory;
mod metadata;
mod partition;
mod producer_state;
mod recv_buffers;
mod runtime;
mod server;
mod shard;
mod topic_config;
mod txn;
mod watchdog;

use tracing_subscriber::EnvFilter;

// Per-thread heaps, no lock between shards; told at start to keep freed
// memory mapped (`memory::keep_freed_memory`), so that the steady state
// takes no page faults (glibc malloc trims and re-faults).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match config::BrokerConfig::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::exit(2);
        }
    };
    memory::keep_freed_memory();
    if let Err(e) = server::run(config) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

//! `sluice`: the broker binary.

mod config;
mod connection;
mod controller;
mod cpuset;
mod error;
mod faults;
mod group;
mod handlers;
mod io_workers;
mod kvlog;
mod metadata;
mod partition;
mod producer_state;
mod runtime;
mod server;
mod shard;
mod topic_config;
mod txn;
mod watchdog;

use tracing_subscriber::EnvFilter;

// Per-thread heaps: no lock between shards. Freed memory stays mapped for
// `ALLOCATOR_PURGE_DELAY_MS`, so that steady traffic reuses it instead of
// faulting in pages the kernel must zero (glibc malloc trims and
// re-faults; mimalloc's own default gives memory back after 10 ms).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long freed memory stays mapped before it goes back to the system.
/// Request buffers live as long as the batch cache holds them (about half a
/// second at full speed), so with mimalloc's 10 ms each new one faulted in
/// fresh pages: at maximum produce throughput, 1 s instead gave 1685-2016
/// against 1374-1688 MB/s with 8% less CPU per run (six alternating pairs,
/// docs/PERFORMANCE.md).
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 1000;
/// mimalloc v3's `mi_option_purge_delay` (include/mimalloc.h), which
/// libmimalloc-sys does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default for it, checked before setting: another value means
/// the option moved (a different mimalloc) or `MIMALLOC_PURGE_DELAY` set it.
const MI_PURGE_DELAY_DEFAULT_MS: std::ffi::c_long = 10;

/// Sets how long freed memory stays mapped, unless `MIMALLOC_PURGE_DELAY`
/// chose already; returns the delay in force.
fn set_allocator_purge_delay() -> std::ffi::c_long {
    // SAFETY: reading and setting a mimalloc option; both take a plain
    // option number and value and touch no Rust memory.
    let current = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    if current == MI_PURGE_DELAY_DEFAULT_MS && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
        return ALLOCATOR_PURGE_DELAY_MS;
    }
    current
}

fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let purge_delay_ms = set_allocator_purge_delay();
    if purge_delay_ms != ALLOCATOR_PURGE_DELAY_MS {
        tracing::info!(
            purge_delay_ms,
            "freed memory goes back to the system after mimalloc's delay, not Sluice's"
        );
    }
    let config = match config::BrokerConfig::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = server::run(config) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_stays_mapped_for_the_chosen_delay() {
        assert_eq!(set_allocator_purge_delay(), ALLOCATOR_PURGE_DELAY_MS);
        // SAFETY: as in `set_allocator_purge_delay`.
        let now = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(now, ALLOCATOR_PURGE_DELAY_MS);
    }
}

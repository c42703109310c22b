//! The shards' memory: faulted in before they serve, and kept.
//!
//! Memory the process has never touched costs a page fault and a zeroing
//! by the kernel on first use. On a virtual machine whose host backs guest
//! memory lazily, the host faults and zeroes it too. On the test VM that is
//! 0.47 GB/s, against 16 GB/s for memory touched before. A shard holds up
//! to its batch cache, its pool of request buffers, the requests in flight
//! and its write buffers; until it has allocated all of that once, request
//! after request lands in fresh memory. A broker just started took
//! 0.2-0.9 GB/s for its first seconds, with 89% of its CPU in
//! `clear_page_erms`. The backlog that built up showed as hundreds of
//! milliseconds of produce latency at half the maximum rate
//! (docs/PERFORMANCE.md, stops 22 and 23).
//!
//! So each shard faults in `memory.prefault.bytes` before it opens its
//! logs, and the allocator is told to keep what is freed. Left to itself,
//! mimalloc gives freed memory back to the OS after a second, and the next
//! allocation faults it in again. The process then holds its high-water
//! mark, which the named limits bound, as a broker that owns its machine
//! does (Redpanda takes its memory at start too).

use std::time::{Duration, Instant};

/// mimalloc's `mi_option_purge_delay`, which the crate does not name (its
/// index in the enum of mimalloc v3, the crate's default, and of v2 too; a
/// test below pins it by its default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The pieces the prefault allocates. Once freed, mimalloc reuses memory
/// in pieces this size for allocations of any size; memory of pieces of
/// 32 MiB, it reused for a third of what pieces of 2 MiB served (the test
/// below fails with them).
const PIECE_BYTES: usize = 2 << 20;

/// Tells the allocator never to give freed memory back to the OS, for the
/// whole process.
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Allocates `bytes` on the calling thread, writes to each of its pages and
/// frees it again, so that the allocator holds it ready (with
/// [`keep_freed_memory`]). mimalloc v3 returns freed pages to arenas the
/// threads share, so what one shard faulted in may serve another: the
/// shards' prefaults make one pool. Yields to the executor between pieces.
/// Returns how long it took.
pub async fn prefault(bytes: usize) -> Duration {
    let started = Instant::now();
    let pieces = bytes.div_ceil(PIECE_BYTES);
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(pieces);
    for _ in 0..pieces {
        held.push(touched(PIECE_BYTES));
        glommio::yield_if_needed().await;
    }
    drop(held);
    started.elapsed()
}

/// An allocation of `bytes` with each of its pages written to.
fn touched(bytes: usize) -> Vec<u8> {
    let mut piece: Vec<u8> = Vec::with_capacity(bytes);
    let ptr = piece.as_mut_ptr();
    for offset in (0..bytes).step_by(4096) {
        // SAFETY: inside the capacity just allocated. A volatile write, so
        // that the store, and its fault, are not optimized away.
        unsafe { std::ptr::write_volatile(ptr.add(offset), 0) };
    }
    piece
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page faults this thread has taken.
    fn thread_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    #[test]
    fn prefaulted_memory_is_reused_for_request_sized_allocations_without_faults() {
        // The option's default (1000 ms in mimalloc v3) tells it apart from
        // its neighbours in the enum (a deprecated one, and numa nodes 0).
        // No other test sets it.
        // SAFETY: reads an allocator option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000, "option {MI_OPTION_PURGE_DELAY}");
        keep_freed_memory();
        // A transparent huge page counts as one fault, as a 4 KiB page
        // does: with them off, faults count pages.
        // SAFETY: sets a flag of this process.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
        // On a thread of its own, as a shard's. Other tests' threads may
        // take some of what it faulted in.
        std::thread::spawn(|| {
            let before = thread_faults();
            glommio::LocalExecutor::default().run(prefault(128 << 20));
            let prefaulted = thread_faults() - before;
            // Past the purge delay mimalloc would have had: without
            // `keep_freed_memory` the allocations below took three quarters
            // of the prefault's faults, and with it 6-17%.
            std::thread::sleep(Duration::from_millis(1100));
            // Request buffers, DMA buffers and batches of many sizes, FIFO
            // with 96 MiB live, 512 MiB in all, as the batch cache lets go.
            let sizes = [80 << 10, 300 << 10, 1 << 20, 2 << 20, 5 << 20, 128 << 10, 4 << 20, 1000];
            let before = thread_faults();
            let mut live = std::collections::VecDeque::new();
            let (mut live_bytes, mut written) = (0usize, 0usize);
            for size in sizes.iter().cycle() {
                if written >= 512 << 20 {
                    break;
                }
                live.push_back(touched(*size));
                live_bytes += size;
                written += size;
                while live_bytes > 96 << 20 {
                    live_bytes -= live.pop_front().expect("live").capacity();
                }
            }
            let reused = thread_faults() - before;
            assert!(
                reused * 4 < prefaulted,
                "{reused} faults serving from {prefaulted} faults' worth of prefaulted memory"
            );
        })
        .join()
        .unwrap();
    }
}

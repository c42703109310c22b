//! Where the kernel runs a shard's blocking file operations.
//!
//! io_uring cannot run every operation without blocking: fdatasync, and
//! direct writes that ext4 cannot start at once, go to the kernel's io-wq
//! worker threads of the submitting thread. The second are a log's writes
//! over both written and preallocated (unwritten) blocks, as each sync's
//! first write is: it rewrites the last sync's partial page, then goes on
//! into fresh space (docs/PERFORMANCE.md, "Which writes block").
//!
//! Those workers start with the affinity of the thread that made them, so
//! a shard pinned to a CPU has its syncs run on that same CPU, queued
//! behind its own work. Under load the shard's CPU is busy, and each sync
//! waits for it: measured at 640 MB/s of acks=all produce on one shard, a
//! partition's write and fdatasync took twice as long at the median with
//! the workers on the shard's CPU as on another (docs/PERFORMANCE.md).
//! `--io-cpuset` lets them run elsewhere.
//!
//! The affinity is set with IORING_REGISTER_IOWQ_AFF, which applies to the
//! calling thread's workers (for rings without SQPOLL, which glommio does
//! not use) whatever ring it is called on; glommio does not expose its
//! rings, so a one-entry ring of our own carries the call.
//!
//! How many of those workers may run at once is the other setting. The
//! kernel caps a thread's workers for blocking file work ("bounded" work)
//! at the smaller of 4 per CPU and the entries of the first ring the
//! thread made; a glommio shard gets 2. Its partitions' fdatasyncs then
//! ran two at a time, each waiting for the ones queued before it. At
//! 700 MB/s of acks=all produce on one shard, 32 workers against 2 cut the
//! produce p50 from 4.0-7.8 ms to 1.7-3.6 ms (docs/PERFORMANCE.md).
//!
//! The broker's shards and `sluice-bench limits` (which measures the disk
//! the way a shard's partitions meet it) both raise it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// io-wq workers a shard may have running blocking file work (its
/// partitions' fdatasyncs and writes into new space) at once; the kernel's
/// default for a glommio thread is 2.
pub const BOUNDED_WORKERS_PER_SHARD: u32 = 32;

/// `IORING_REGISTER_IOWQ_AFF` from `<linux/io_uring.h>`.
const IORING_REGISTER_IOWQ_AFF: libc::c_uint = 17;
/// `IORING_REGISTER_IOWQ_MAX_WORKERS` from `<linux/io_uring.h>`.
const IORING_REGISTER_IOWQ_MAX_WORKERS: libc::c_uint = 19;
/// `struct io_uring_params` is 120 bytes; zeroed, it asks for defaults.
const IO_URING_PARAMS_BYTES: usize = 120;

/// Lets the io-wq workers of the calling thread run only on `cpus`. Call
/// it on a shard's thread before its first blocking file operation:
/// workers already running keep the affinity they had.
pub fn set_for_current_thread(cpus: &[usize]) -> io::Result<()> {
    assert!(!cpus.is_empty());
    // SAFETY: cpu_set_t is plain bits; zeroed it is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} out of range"),
            ));
        }
        // SAFETY: `cpu` is within the set, checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes from `set`,
    // which lives across the call.
    unsafe {
        register(
            &one_entry_ring()?,
            IORING_REGISTER_IOWQ_AFF,
            (&raw mut set).cast(),
            std::mem::size_of::<libc::cpu_set_t>() as libc::c_uint,
        )
    }
}

/// Lets the calling thread have up to `count` io-wq workers for blocking
/// file work (fdatasync, writes that allocate) at once; 0 leaves the
/// limit as it is. Returns the limit before the call and after it (the
/// kernel clamps it to RLIMIT_NPROC).
pub fn set_bounded_max_for_current_thread(count: u32) -> io::Result<(u32, u32)> {
    let ring = one_entry_ring()?;
    // [bounded, unbounded]; 0 leaves that one unchanged. The kernel writes
    // back the limits as they were, so a second call with zeros reads them.
    let mut counts = [count, 0u32];
    // SAFETY: the kernel reads and writes the two u32s of `counts`, which
    // live across the call.
    unsafe { register(&ring, IORING_REGISTER_IOWQ_MAX_WORKERS, counts.as_mut_ptr().cast(), 2)? };
    let was = counts[0];
    let mut now = [0u32; 2];
    // SAFETY: as above, for `now`.
    unsafe { register(&ring, IORING_REGISTER_IOWQ_MAX_WORKERS, now.as_mut_ptr().cast(), 2)? };
    Ok((was, now[0]))
}

/// io_uring_register on `ring`.
///
/// # Safety
/// `arg` must point to what `opcode` reads (and writes), `nr_args` of it,
/// valid for the call.
unsafe fn register(
    ring: &OwnedFd,
    opcode: libc::c_uint,
    arg: *mut libc::c_void,
    nr_args: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: the ring fd is open for the call; `arg` is the caller's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            std::os::fd::AsRawFd::as_raw_fd(ring),
            opcode,
            arg,
            nr_args,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A ring of one entry, closed on drop. Creating it also gives the calling
/// thread its io-wq, if it had none yet.
fn one_entry_ring() -> io::Result<OwnedFd> {
    let mut params = [0u8; IO_URING_PARAMS_BYTES];
    // SAFETY: io_uring_setup reads and writes `params`, a buffer of the
    // size of struct io_uring_params that lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1 as libc::c_uint, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: io_uring_setup returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs that the io workers of thread `tid` may run on, one list
    /// per worker (they are named `iou-wrk-TID`).
    fn worker_cpus(tid: i32) -> Vec<String> {
        let mut lists = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() != format!("iou-wrk-{tid}") {
                continue;
            }
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                lists.push(line["Cpus_allowed_list:".len()..].trim().to_string());
            }
        }
        lists
    }

    #[test]
    fn a_pinned_shards_syncs_run_on_the_io_cpus() {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        // On one CPU there is nowhere else to go; the call must still work.
        let (shard_cpu, io_cpu) = if online >= 2 { (0, 1) } else { (0, 0) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(shard_cpu))
            .spawn(move || async move {
                set_for_current_thread(&[io_cpu]).unwrap();
                // fdatasync never completes inline: an io worker runs it.
                let file = glommio::io::DmaFile::create(&path).await.unwrap();
                let mut buf = file.alloc_dma_buffer(4096);
                buf.as_bytes_mut().fill(7);
                file.write_at(buf, 0).await.unwrap();
                file.fdatasync().await.unwrap();
                // SAFETY: gettid has no preconditions.
                let workers = worker_cpus(unsafe { libc::gettid() });
                file.close().await.unwrap();
                assert!(!workers.is_empty(), "the sync ran on an io worker");
                for cpus in workers {
                    assert_eq!(cpus, io_cpu.to_string());
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn the_bounded_worker_limit_is_raised_for_the_calling_thread() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async move {
                let (before, same) = set_bounded_max_for_current_thread(0).unwrap();
                assert!(before > 0);
                assert_eq!(same, before, "0 changes nothing");
                // (The kernel clamps the limit to RLIMIT_NPROC: one more
                // than before is within it anywhere this runs.)
                assert_eq!(
                    set_bounded_max_for_current_thread(before + 1).unwrap(),
                    (before, before + 1)
                );
                // Read back: 0 changes nothing and returns the limit.
                assert_eq!(set_bounded_max_for_current_thread(0).unwrap().0, before + 1);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_cpu_outside_the_machine_is_refused() {
        let err = set_for_current_thread(&[libc::CPU_SETSIZE as usize]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

//! `sluice-bench storage`: the log against the disk's own limits, measured in
//! one run on one pinned glommio executor.
//!
//! (a) raw limits, through the same direct-I/O file layer the log uses:
//!     sequential write bandwidth with the log's write size and writes in
//!     flight, into a preallocated file; and write+fdatasync latency at the
//!     size a durable append of each batch size writes.
//! (b) the log: append throughput (appends as fast as they are accepted,
//!     durable at the end) and durable-append latency (append, wait until
//!     durable, one at a time), each as a ratio to (a).

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use glommio::{LocalExecutorBuilder, Placement};
use serde::Serialize;
use sluice_storage::appender::WRITES_IN_FLIGHT_MAX;
use sluice_storage::batch::build_batch;
use sluice_storage::frame::FRAME_HEADER_BYTES;
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::io::workers::{self, BOUNDED_WORKERS_PER_SHARD, set_bounded_max_for_current_thread};
use sluice_storage::io::{FileSystem, IoBuffer, StorageFile, align_up, write_all_at};
use sluice_storage::local_sync::join_bounded;
use sluice_storage::{BatchCache, Log, LogConfig};

use crate::latency::{LatencyRecorder, LatencySummary};

/// glommio's registered DMA buffer pool: enough for a full write buffer, so
/// writes use fixed buffers and steady appends allocate nothing.
pub(crate) const IO_MEMORY_BYTES: usize = 64 << 20;

#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Directory on the disk to measure; files are created and removed.
    #[arg(long)]
    dir: PathBuf,
    /// Bytes written by each throughput run.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Durable writes timed by each latency run.
    #[arg(long, default_value_t = 3000)]
    samples: u64,
    /// Batch sizes to measure, in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [1024usize, 65536])]
    batch_bytes: Vec<usize>,
    /// Rounds, each measuring raw then log; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Logs the throughput run appends to in turn, each with its own
    /// flusher, as a shard holds its partitions (1 to 64, `LOGS_MAX`). The
    /// goal's ratio is for one log.
    #[arg(long, default_value_t = 1)]
    logs: usize,
    /// CPU to pin the executor to (unpinned if not given).
    #[arg(long)]
    cpu: Option<usize>,
    /// CPUs for the kernel's io workers, which run the executor's
    /// fdatasyncs and space reservations: the broker's `--io-cpuset`. By
    /// default they share the executor's CPU and wait for it.
    #[arg(long)]
    io_cpuset: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct StorageReport {
    /// CPUs of the io workers (`--io-cpuset`); absent, the executor's.
    io_cpus: Option<Vec<usize>>,
    /// Logs the throughput runs appended to in turn (`--logs`).
    logs: usize,
    write_bytes: usize,
    writes_in_flight: usize,
    rounds: usize,
    batches: Vec<BatchReport>,
}

#[derive(Debug, Serialize)]
struct BatchReport {
    batch_bytes: usize,
    /// Bytes one durable append of this batch writes (frame, page-padded).
    durable_write_bytes: usize,
    /// Medians over the rounds; each round measures raw then log.
    raw_write_bandwidth_mb_s: f64,
    log_throughput_mb_s: f64,
    log_throughput_records_s: f64,
    /// Share of the throughput run the executor's thread was on a CPU
    /// (median over the rounds): near 1, the log is bound by that CPU, not
    /// by the disk. Absent where the thread CPU clock is missing.
    log_executor_busy: Option<f64>,
    /// Median of the per-round ratios log / raw.
    throughput_ratio: f64,
    throughput_ratios: Vec<f64>,
    raw_sync_latency_us: LatencySummary,
    durable_append_latency_us: LatencySummary,
    p99_ratio: f64,
    p999_ratio: f64,
}

pub fn run(args: StorageArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let placement = match args.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let io_cpus = args.io_cpuset.as_deref().map(crate::cpuset::parse).transpose()?;
    if io_cpus.as_ref().is_some_and(Vec::is_empty) {
        bail!("--io-cpuset names no CPU");
    }
    if !(1..=LOGS_MAX).contains(&args.logs) {
        bail!("--logs must be 1 to {LOGS_MAX}");
    }
    let job_args = args.clone();
    let report = LocalExecutorBuilder::new(placement)
        .name("sluice-bench-storage")
        .io_memory(IO_MEMORY_BYTES)
        .spin_before_park(SPIN_BEFORE_PARK)
        .spawn(move || async move {
            raise_io_worker_limit();
            if let Some(cpus) = &io_cpus {
                workers::set_for_current_thread(cpus)
                    .with_context(|| format!("placing the io workers on CPUs {cpus:?}"))?;
            }
            measure(&job_args, io_cpus).await
        })
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("executor failed: {e:?}"))??;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Raises the calling executor's limit of io workers for blocking file
/// work as a broker's shard does, before its first file operation, so that
/// fdatasyncs do not queue behind the kernel's default of two workers.
pub(crate) fn raise_io_worker_limit() {
    if let Err(e) = set_bounded_max_for_current_thread(BOUNDED_WORKERS_PER_SHARD) {
        eprintln!("cannot raise the io worker limit ({e}); fdatasyncs may queue");
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn measure(args: &StorageArgs, io_cpus: Option<Vec<usize>>) -> anyhow::Result<StorageReport> {
    let fs = DmaFileSystem::new();
    let config = LogConfig::default();
    let write_bytes = config.appender.chunk_bytes;
    let rounds = args.rounds.max(1);
    let mut batches = Vec::new();
    for &batch_bytes in &args.batch_bytes {
        if batch_bytes < 128 {
            bail!("batch size {batch_bytes} is too small for a record batch");
        }
        let durable_write_bytes = align_up((FRAME_HEADER_BYTES + batch_bytes) as u64) as usize;
        let (mut raw_bw, mut log_mb_s, mut log_records_s, mut ratios) = (vec![], vec![], vec![], vec![]);
        let mut busy = vec![];
        let mut raw_sync = LatencyRecorder::new();
        let mut durable = LatencyRecorder::new();
        // Alternate raw and log in each round, so that the disk's drift
        // (large on shared or virtual disks) hits both alike.
        for round in 1..=rounds {
            eprintln!(
                "{batch_bytes}-byte batches, round {round}/{rounds}: raw bandwidth, log throughput, raw and log latency..."
            );
            let raw = raw_write_bandwidth(&fs, &args.dir, write_bytes, args.bytes).await?;
            let (mb_s, records_s, executor_busy) =
                log_throughput(&fs, &args.dir, batch_bytes, args.bytes, args.logs, config).await?;
            busy.extend(executor_busy);
            raw_bw.push(raw);
            log_mb_s.push(mb_s);
            log_records_s.push(records_s);
            ratios.push(mb_s / raw);
            let samples = args.samples.div_ceil(rounds as u64);
            raw_sync_latency(&fs, &args.dir, durable_write_bytes, samples, &mut raw_sync).await?;
            log_durable_latency(&fs, &args.dir, batch_bytes, samples, config, &mut durable).await?;
        }
        let (raw_sync, durable) = (raw_sync.summary(), durable.summary());
        batches.push(BatchReport {
            batch_bytes,
            durable_write_bytes,
            raw_write_bandwidth_mb_s: median(&raw_bw),
            log_throughput_mb_s: median(&log_mb_s),
            log_throughput_records_s: median(&log_records_s),
            log_executor_busy: (!busy.is_empty()).then(|| median(&busy)),
            throughput_ratio: median(&ratios),
            throughput_ratios: ratios,
            raw_sync_latency_us: raw_sync,
            durable_append_latency_us: durable,
            p99_ratio: durable.p99 as f64 / raw_sync.p99.max(1) as f64,
            p999_ratio: durable.p999 as f64 / raw_sync.p999.max(1) as f64,
        });
    }
    Ok(StorageReport {
        io_cpus,
        logs: args.logs,
        write_bytes,
        writes_in_flight: WRITES_IN_FLIGHT_MAX,
        rounds,
        batches,
    })
}

fn print_report(r: &StorageReport) {
    println!();
    println!(
        "raw disk: sequential O_DIRECT writes of {} KiB, {} in flight; medians of {} alternating rounds",
        r.write_bytes >> 10,
        r.writes_in_flight,
        r.rounds
    );
    match &r.io_cpus {
        Some(cpus) => println!("io workers (fdatasync, fallocate) on CPUs {cpus:?}"),
        None => println!("io workers (fdatasync, fallocate) on the executor's CPU"),
    }
    let goal = if r.logs == 1 {
        "goal >= 0.90".to_string()
    } else {
        println!("throughput runs append to {} logs in turn; raw writes one file", r.logs);
        format!("{} logs; the goal is for one", r.logs)
    };
    for b in &r.batches {
        println!();
        println!(
            "{}-byte batches (a durable append writes {} bytes)",
            b.batch_bytes, b.durable_write_bytes
        );
        println!("  raw write bandwidth   {:>9.0} MB/s", b.raw_write_bandwidth_mb_s);
        let ratios: Vec<String> = b.throughput_ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  append throughput     {:>9.0} MB/s  {:>10.0} batches/s   {:.2} of raw (rounds: {}; {goal})",
            b.log_throughput_mb_s,
            b.log_throughput_records_s,
            b.throughput_ratio,
            ratios.join(" ")
        );
        if let Some(busy) = b.log_executor_busy {
            println!("  executor on a CPU     {:>8.0}% of the throughput run", busy * 100.0);
        }
        println!(
            "  raw write+fdatasync   p50/p99/p99.9 {}",
            b.raw_sync_latency_us.short()
        );
        println!(
            "  durable append        p50/p99/p99.9 {}   p99 {:.2}x raw (goal <= 1.5x), p99.9 {:.2}x",
            b.durable_append_latency_us.short(),
            b.p99_ratio,
            b.p999_ratio
        );
    }
}

/// A scratch file that is removed however the measurement ends.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn raw_write_bandwidth(
    fs: &DmaFileSystem,
    dir: &Path,
    write_bytes: usize,
    total: u64,
) -> anyhow::Result<f64> {
    let path = dir.join("raw-bandwidth.dat");
    let _scratch = Scratch(path.clone());
    let file = fs.open(&path, true).await?;
    let writes = total.div_ceil(write_bytes as u64);
    file.allocate(writes * write_bytes as u64).await?;
    let buf = pattern_buffer(&file, write_bytes);
    let started = Instant::now();
    let mut next = 0u64;
    while next < writes {
        let end = (next + WRITES_IN_FLIGHT_MAX as u64).min(writes);
        write_copies(&file, &buf, next..end).await?;
        next = end;
    }
    file.sync_data().await?;
    let elapsed = started.elapsed();
    file.close().await?;
    Ok((writes * write_bytes as u64) as f64 / elapsed.as_secs_f64() / 1e6)
}

pub(crate) async fn raw_sync_latency(
    fs: &DmaFileSystem,
    dir: &Path,
    write_bytes: usize,
    samples: u64,
    recorder: &mut LatencyRecorder,
) -> anyhow::Result<()> {
    let path = dir.join("raw-latency.dat");
    let _scratch = Scratch(path.clone());
    let file = fs.open(&path, true).await?;
    file.allocate(samples * write_bytes as u64).await?;
    file.sync_data().await?;
    let buf = pattern_buffer(&file, write_bytes);
    for i in 0..samples {
        let started = Instant::now();
        write_all_at(&file, &buf, i * write_bytes as u64).await?;
        file.sync_data().await?;
        recorder.record(started.elapsed());
    }
    file.close().await?;
    Ok(())
}

/// A DMA buffer of `bytes` for `file`, filled with a fixed pattern: what
/// the raw measurements write.
pub(crate) fn pattern_buffer<F: StorageFile>(file: &F, bytes: usize) -> Rc<F::Buffer> {
    let mut buf = file.alloc_buffer(bytes);
    buf.as_mut_slice().fill(0x5a);
    Rc::new(buf)
}

/// Writes `buf` at each of the positions `writes` numbers (write `i` at
/// `i` buffer lengths), up to the log's writes in flight at once.
pub(crate) async fn write_copies<F: StorageFile>(file: &F, buf: &Rc<F::Buffer>, writes: Range<u64>) -> io::Result<()> {
    let len = buf.as_slice().len() as u64;
    let writes: Vec<_> = writes.map(|i| write_all_at(file, buf, i * len)).collect();
    for r in join_bounded(writes, WRITES_IN_FLIGHT_MAX).await {
        r?;
    }
    Ok(())
}

/// A batch of one record whose encoded size is `batch_bytes`.
fn batch_of(batch_bytes: usize) -> Bytes {
    // Record overhead around the value is 8 bytes for these sizes.
    let mut value = batch_bytes.saturating_sub(sluice_storage::batch::BATCH_HEADER_BYTES + 8);
    loop {
        let b = build_batch(1, value, now_ms());
        if b.len() <= batch_bytes || value == 0 {
            return Bytes::from(b);
        }
        value -= 1;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends `total` bytes of `batch_bytes` batches to `logs` logs in turn,
/// each with a flusher syncing whatever is pending while appends go on (as
/// in the broker, so the disk and the appender work at the same time).
/// Returns MB/s, batches/s and the executor's share of a CPU.
async fn log_throughput(
    fs: &DmaFileSystem,
    dir: &Path,
    batch_bytes: usize,
    total: u64,
    logs: usize,
    config: LogConfig,
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    // One cache for all the logs, as a shard's partitions share one.
    let cache = BatchCache::new(64 << 20);
    let mut opened = Vec::with_capacity(logs);
    for i in 0..logs {
        let log_dir = dir.join(format!("log-throughput-{batch_bytes}-{i}"));
        let scratch = Scratch(log_dir.clone());
        let log = Rc::new(Log::open(fs.clone(), log_dir, config, cache.clone(), now_ms()).await?);
        let flusher = glommio::spawn_local({
            let log = log.clone();
            async move { log.flush_until_closed().await }
        });
        opened.push((log, flusher, scratch));
    }
    let batch = batch_of(batch_bytes);
    let count = (total / batch.len() as u64).max(1);
    let now = now_ms();
    let started = Instant::now();
    let cpu_before = thread_cpu_time();
    let mut since_turn = 0;
    for (_, (log, _, _)) in (0..count).zip(opened.iter().cycle()) {
        log.append(batch.clone(), now).await?;
        since_turn += batch.len();
        if since_turn >= REACTOR_TURN_BYTES {
            since_turn = 0;
            reactor_turn().await;
        }
    }
    for (log, _, _) in &opened {
        log.sync().await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let busy = cpu_before
        .zip(thread_cpu_time())
        .map(|(before, after)| (after - before).as_secs_f64() / elapsed);
    let appended: i64 = opened.iter().map(|(log, _, _)| log.durable_offset().0).sum();
    assert_eq!(appended, count as i64);
    for (log, flusher, scratch) in opened {
        log.close().await?;
        flusher.await?;
        drop(scratch);
    }
    Ok((
        (count * batch.len() as u64) as f64 / elapsed / 1e6,
        count as f64 / elapsed,
        busy,
    ))
}

/// Time the calling thread has spent on a CPU, up to now
/// (CLOCK_THREAD_CPUTIME_ID); `None` if the clock is missing.
fn thread_cpu_time() -> Option<std::time::Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: fills the timespec it is given.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (r == 0).then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Most logs `--logs` may name: each holds up to its write buffer (16 MiB)
/// and the buffers ahead of it in memory.
const LOGS_MAX: usize = 64;

/// Bytes the throughput run appends between turns of the reactor: one
/// write of the log's, the size of a large produce request.
const REACTOR_TURN_BYTES: usize = 256 << 10;

/// How long the executor polls its rings, once it has nothing to run,
/// before it sleeps in the kernel. Long enough for [`reactor_turn`]'s
/// 1 µs timer to expire while polling. A sleep arms the timer in the
/// kernel and wakes by interrupt, 8-9 µs of kernel time in this VM
/// (`io_timeout` was 15% of the 1 KiB phase's samples). The broker pays
/// that only when a shard is idle; the benchmark would pay it on every
/// turn it forces. Short enough that idle waits (a raw write, an fdatasync)
/// still sleep almost at once.
const SPIN_BEFORE_PARK: std::time::Duration = std::time::Duration::from_micros(5);

/// Lets the executor poll its rings once. glommio submits queued I/O, and
/// reaps completions, only between runs of its task queues: when every task
/// waits, or its preempt timer fires (100 ms). An appender that never waits
/// would keep the flusher's writes from reaching the disk while it copies;
/// in the broker, appends come from request tasks that wait on their
/// sockets between requests, so the rings turn anyway. A 1 µs timer is
/// still pending when first polled, so this task waits for about one turn
/// (polling, not sleeping: [`SPIN_BEFORE_PARK`]).
async fn reactor_turn() {
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
}

async fn log_durable_latency(
    fs: &DmaFileSystem,
    dir: &Path,
    batch_bytes: usize,
    samples: u64,
    config: LogConfig,
    recorder: &mut LatencyRecorder,
) -> anyhow::Result<()> {
    let log_dir = dir.join(format!("log-latency-{batch_bytes}"));
    let _scratch = Scratch(log_dir.clone());
    let log = Log::open(fs.clone(), log_dir, config, BatchCache::new(64 << 20), now_ms()).await?;
    let batch = batch_of(batch_bytes);
    let now = now_ms();
    for _ in 0..samples {
        let started = Instant::now();
        let info = log.append(batch.clone(), now).await?;
        log.wait_durable(info.last_offset.plus(1)).await?;
        recorder.record(started.elapsed());
    }
    log.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_cpu_clock_counts_this_threads_work_and_not_its_sleep() {
        let before = thread_cpu_time().expect("a thread CPU clock");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let slept = thread_cpu_time().expect("a thread CPU clock") - before;
        assert!(slept < std::time::Duration::from_millis(100), "{slept:?} while asleep");
        let mut x = 0u64;
        while thread_cpu_time().expect("a thread CPU clock") - before < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
}

//! `sluice-bench limits`: this machine's ceilings, measured the way the
//! broker would meet them, so broker figures can be read as ratios:
//!
//! - loopback TCP throughput between two glommio executors, the receiver
//!   on the broker's CPU and the sender on the harness's;
//! - sequential O_DIRECT write bandwidth of the data directory's disk, and
//!   write+fdatasync latency there (the raw measurements of `storage`);
//! - the same disk's write bandwidth as a shard's partitions meet it under
//!   acks=all: several files written at once, each in cycles of writes then
//!   an fdatasync. Not part of the ceiling; it says how much of the gap
//!   between a broker and the ceiling is the disk's own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Args;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::LocalExecutorBuilder;
use glommio::net::{TcpListener, TcpStream};
use serde::{Deserialize, Serialize};
use sluice_storage::LogConfig;
use sluice_storage::appender::WRITES_IN_FLIGHT_MAX;
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::io::{FileSystem, StorageFile};
use sluice_storage::local_sync::join_bounded;

use crate::cpuset;
use crate::latency::{LatencyRecorder, LatencyReport};
use crate::load::run_on_executor;
use crate::storage_bench::{
    IO_MEMORY_BYTES, Scratch, median, pattern_buffer, raise_io_worker_limit, raw_sync_latency, raw_write_bandwidth,
    write_copies,
};

/// Bytes per write on the sending side: large, as a batching producer's.
const TCP_WRITE_BYTES: usize = 1 << 20;
const TCP_READ_BYTES: usize = 1 << 20;

#[derive(Args, Debug, Clone)]
pub struct LimitsArgs {
    /// Two CPUs: the broker's (TCP receiver, disk) then the harness's (TCP
    /// sender). One CPU: both there. `none`: unpinned.
    #[arg(long, default_value = "none")]
    cpuset: String,
    /// A directory on the disk the broker writes to; scratch files are
    /// created and removed.
    #[arg(long)]
    data_dir: PathBuf,
    /// Rounds of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each TCP round.
    #[arg(long, default_value_t = 3.0)]
    tcp_seconds: f64,
    /// Bytes written by each disk bandwidth round.
    #[arg(long, default_value_t = 1 << 30)]
    disk_bytes: u64,
    /// write+fdatasync samples, over all rounds.
    #[arg(long, default_value_t = 3000)]
    sync_samples: u64,
    /// Bytes of each write+fdatasync sample: one page, what a small durable
    /// append writes.
    #[arg(long, default_value_t = 4096)]
    sync_write_bytes: usize,
    /// Files written at once by the partition-shaped disk measurement: the
    /// partitions a shard syncs (the benchmark suite's 16).
    #[arg(long, default_value_t = 16)]
    files: usize,
    /// Bytes each of those files writes between two of its fdatasyncs
    /// (rounded up to whole writes of the log's size).
    #[arg(long, default_value_t = 1 << 20)]
    file_sync_bytes: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LimitsReport {
    pub cpuset: String,
    pub rounds: usize,
    /// Loopback TCP, one connection, MB (10^6 bytes) per second: median and rounds.
    pub loopback_tcp_mb_s: f64,
    pub loopback_tcp_rounds_mb_s: Vec<f64>,
    pub disk_dir: String,
    /// Sequential O_DIRECT writes of `disk_write_bytes`, `disk_writes_in_flight` at a time.
    pub disk_write_mb_s: f64,
    pub disk_write_rounds_mb_s: Vec<f64>,
    pub disk_write_bytes: usize,
    pub disk_writes_in_flight: usize,
    /// write of `disk_sync_write_bytes` then fdatasync, one at a time.
    pub disk_sync_write_bytes: usize,
    pub disk_sync_latency_us: LatencyReport,
    /// `disk_files` files written at once, each in cycles of
    /// `disk_file_sync_bytes` (writes as above) then an fdatasync.
    pub disk_files: usize,
    pub disk_file_sync_bytes: usize,
    pub disk_files_write_mb_s: f64,
    pub disk_files_write_rounds_mb_s: Vec<f64>,
    /// min(loopback TCP, disk write): what a broker could at best sustain.
    pub ceiling_mb_s: f64,
}

pub fn run(args: LimitsArgs) -> anyhow::Result<LimitsReport> {
    let cpus = cpuset::parse(&args.cpuset)?;
    let rounds = args.rounds.max(1);
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let tcp_duration = Duration::from_secs_f64(args.tcp_seconds.max(0.1));
    let write_bytes = LogConfig::default().appender.chunk_bytes;
    let mut tcp_rounds = Vec::new();
    let mut disk_rounds = Vec::new();
    let mut files_rounds = Vec::new();
    let mut sync = LatencyRecorder::new();
    // Whole writes per cycle, so that the size reported is the size written.
    let (files, file_sync_bytes) = (
        args.files.max(1),
        args.file_sync_bytes.max(1).next_multiple_of(write_bytes),
    );
    for round in 1..=rounds {
        eprintln!(
            "limits, round {round}/{rounds}: loopback TCP, disk bandwidth, write+fdatasync latency, {files} files with syncs..."
        );
        tcp_rounds.push(loopback_tcp(&cpus, tcp_duration)?);
        let (dir, disk_bytes, samples) = (
            args.data_dir.clone(),
            args.disk_bytes,
            args.sync_samples.div_ceil(rounds as u64),
        );
        let sync_write_bytes = args.sync_write_bytes;
        let (bandwidth, recorder, files_bandwidth) = LocalExecutorBuilder::new(cpuset::placement(&cpus, 0))
            .name("sluice-bench-limits-disk")
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                raise_io_worker_limit();
                let fs = DmaFileSystem::new();
                let bandwidth = raw_write_bandwidth(&fs, &dir, write_bytes, disk_bytes).await?;
                let mut recorder = LatencyRecorder::new();
                raw_sync_latency(&fs, &dir, sync_write_bytes, samples, &mut recorder).await?;
                let files_bandwidth =
                    synced_files_bandwidth(&fs, &dir, files, write_bytes, file_sync_bytes, disk_bytes).await?;
                anyhow::Ok((bandwidth, recorder.histogram().clone(), files_bandwidth))
            })
            .map_err(|e| anyhow!("starting the disk executor: {e}"))?
            .join()
            .map_err(|e| anyhow!("disk executor failed: {e:?}"))??;
        disk_rounds.push(bandwidth);
        files_rounds.push(files_bandwidth);
        sync.merge(&recorder);
    }
    let (tcp, disk) = (median(&tcp_rounds), median(&disk_rounds));
    let report = LimitsReport {
        cpuset: args.cpuset.clone(),
        rounds,
        loopback_tcp_mb_s: tcp,
        loopback_tcp_rounds_mb_s: tcp_rounds,
        disk_dir: args.data_dir.display().to_string(),
        disk_write_mb_s: disk,
        disk_write_rounds_mb_s: disk_rounds,
        disk_write_bytes: write_bytes,
        disk_writes_in_flight: WRITES_IN_FLIGHT_MAX,
        disk_sync_write_bytes: args.sync_write_bytes,
        disk_sync_latency_us: LatencyReport::of(sync.histogram()),
        disk_files: files,
        disk_file_sync_bytes: file_sync_bytes,
        disk_files_write_mb_s: median(&files_rounds),
        disk_files_write_rounds_mb_s: files_rounds,
        ceiling_mb_s: tcp.min(disk),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(report)
}

fn print_report(r: &LimitsReport) {
    let rounds = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
    println!();
    println!("limits (cpuset {}, medians of {} rounds)", r.cpuset, r.rounds);
    println!(
        "  loopback TCP          {:>8.0} MB/s  (rounds {})",
        r.loopback_tcp_mb_s,
        rounds(&r.loopback_tcp_rounds_mb_s)
    );
    println!(
        "  disk write            {:>8.0} MB/s  (rounds {}; O_DIRECT, {} KiB writes, {} in flight, {})",
        r.disk_write_mb_s,
        rounds(&r.disk_write_rounds_mb_s),
        r.disk_write_bytes >> 10,
        r.disk_writes_in_flight,
        r.disk_dir
    );
    println!(
        "  write+fdatasync       {} B: {}",
        r.disk_sync_write_bytes,
        r.disk_sync_latency_us.summary.line()
    );
    println!(
        "  {:>2} files with syncs   {:>8.0} MB/s  (rounds {}; each {} KiB of writes then fdatasync, all at once)",
        r.disk_files,
        r.disk_files_write_mb_s,
        rounds(&r.disk_files_write_rounds_mb_s),
        r.disk_file_sync_bytes >> 10
    );
    println!(
        "  ceiling               {:>8.0} MB/s  (the lower of loopback TCP and disk write)",
        r.ceiling_mb_s
    );
}

/// MB/s of `files` files written at once into fresh preallocated space,
/// `total` bytes in all, each in cycles of `cycle_bytes` (writes of
/// `write_bytes`, up to the log's writes in flight per file) then an
/// fdatasync: how a shard's partitions meet the disk under acks=all, each
/// partition's flusher writing and syncing its own file, with no broker.
async fn synced_files_bandwidth(
    fs: &DmaFileSystem,
    dir: &Path,
    files: usize,
    write_bytes: usize,
    cycle_bytes: usize,
    total: u64,
) -> anyhow::Result<f64> {
    let writes_per_cycle = cycle_bytes.div_ceil(write_bytes) as u64;
    let cycle_bytes = writes_per_cycle * write_bytes as u64;
    let cycles = (total / files as u64 / cycle_bytes).max(1);
    let mut opened = Vec::with_capacity(files);
    for i in 0..files {
        let path = dir.join(format!("synced-files-{i}.dat"));
        let scratch = Scratch(path.clone());
        let file = fs.open(&path, true).await?;
        file.allocate(cycles * cycle_bytes).await?;
        opened.push((file, scratch));
    }
    let buf = pattern_buffer(&opened[0].0, write_bytes);
    let started = Instant::now();
    let streams: Vec<_> = opened
        .iter()
        .map(|(file, _)| {
            let buf = &buf;
            async move {
                for cycle in 0..cycles {
                    let first = cycle * writes_per_cycle;
                    write_copies(file, buf, first..first + writes_per_cycle).await?;
                    file.sync_data().await?;
                }
                std::io::Result::Ok(())
            }
        })
        .collect();
    for r in join_bounded(streams, files).await {
        r?;
    }
    let elapsed = started.elapsed();
    for (file, scratch) in opened {
        file.close().await?;
        drop(scratch);
    }
    Ok((files as u64 * cycles * cycle_bytes) as f64 / elapsed.as_secs_f64() / 1e6)
}

/// MB/s through one loopback connection: a receiver on the first CPU, a
/// sender on the second, for `duration`.
fn loopback_tcp(cpus: &[usize], duration: Duration) -> anyhow::Result<f64> {
    let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel::<std::net::SocketAddr>(1);
    let receiver = LocalExecutorBuilder::new(cpuset::placement(cpus, 0))
        .name("sluice-bench-limits-rx")
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| anyhow!("binding a loopback port: {e}"))?;
            addr_tx
                .send(listener.local_addr().map_err(|e| anyhow!("listener address: {e}"))?)
                .map_err(|_| anyhow!("the sender is gone"))?;
            let mut stream = listener.accept().await.map_err(|e| anyhow!("accepting: {e}"))?;
            let mut buf = vec![0u8; TCP_READ_BYTES];
            let mut bytes = 0u64;
            let mut started = None;
            loop {
                let n = stream.read(&mut buf).await.context("reading")?;
                if n == 0 {
                    break;
                }
                started.get_or_insert_with(Instant::now);
                bytes += n as u64;
            }
            let elapsed = started.map_or(0.0, |s: Instant| s.elapsed().as_secs_f64());
            anyhow::Ok(bytes as f64 / elapsed.max(1e-9) / 1e6)
        })
        .map_err(|e| anyhow!("starting the receiver: {e}"))?;
    let addr = addr_rx.recv().map_err(|_| anyhow!("the receiver failed to listen"))?;
    run_on_executor(
        "sluice-bench-limits-tx",
        cpuset::placement(cpus, 1),
        move || async move {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| anyhow!("connecting to {addr}: {e}"))?;
            let buf = vec![0x5au8; TCP_WRITE_BYTES];
            let until = Instant::now() + duration;
            while Instant::now() < until {
                stream.write_all(&buf).await.context("writing")?;
            }
            stream.close().await.context("closing")?;
            anyhow::Ok(())
        },
    )?;
    receiver.join().map_err(|e| anyhow!("receiver failed: {e:?}"))?
}

//! The load subcommands, `produce`, `consume` and `e2e`: set up the topic,
//! start one pinned executor per producer and consumer, start them
//! together, show progress, merge what they measured and report it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::cluster::{self, TopicLayout};
use crate::connection::IN_FLIGHT_MAX_DEFAULT;
use crate::consumer::{self, ConsumerConfig, StartAt};
use crate::latency::LatencyReport;
use crate::producer::{self, ProducerConfig};
use crate::progress::{self, DoneGuard, Update};
use crate::record_batch::STAMP_BYTES;
use crate::report::{
    ConsumeReport, ErrorCount, RunConfig, RunReport, SCHEMA_VERSION, Throughput, command_line, unix_time_s,
};
use crate::stats::{Schedule, WorkerResult};
use crate::{cpuset, plot};

/// Workers per run, producers and consumers together: a run is one
/// executor (one thread) per worker.
const WORKERS_MAX: usize = 256;

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Bootstrap broker(s), HOST:PORT, comma-separated; the first that
    /// answers is asked for the topic's leaders.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to load.
    #[arg(long)]
    pub topic: String,
    /// Partitions of the topic made by --create.
    #[arg(long, default_value_t = 16)]
    pub partitions: i32,
    /// Create the topic first (kept if it exists).
    #[arg(long)]
    pub create: bool,
    /// Seconds measured, after the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// CPUs for the harness's executors, round robin (`1`, `2-3`, `none`).
    #[arg(long, default_value = "none")]
    pub cpuset: String,
    /// Write the results as JSON (schema in docs/BENCHMARKS.md).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile distribution as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Name of this run in plots and tables.
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all")]
    All,
}

impl Acks {
    fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ProducerArgs {
    /// Bytes of each record's value (at least 8: the send-time stamp).
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,
    /// Producers, one executor each, partitions dealt among them.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Target size of each partition's batch.
    #[arg(long, default_value_t = 256 << 10)]
    pub batch_bytes: usize,
    /// How long a partly filled batch may wait for more records. 0: it goes
    /// as soon as a request slot is free.
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,
    /// Records per second over all producers, on a fixed schedule (open
    /// loop; latency counts from each record's slot). Unset: closed loop,
    /// as fast as the in-flight limit allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections from each producer to each leader, its partitions dealt
    /// among them (a broker serves one connection's requests in order, so
    /// more connections can overlap more of its work).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = IN_FLIGHT_MAX_DEFAULT)]
    pub in_flight: usize,
    /// Largest produce request.
    #[arg(long, default_value_t = 4 << 20)]
    pub request_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum From {
    /// The earliest offset; stops at the end offsets seen at the start.
    Start,
    /// The latest offset; reads what arrives during the run.
    Tail,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumerArgs {
    /// Consumers, one executor each, partitions dealt among them.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Bytes per fetch response.
    #[arg(long, default_value_t = 32 << 20)]
    pub fetch_bytes: usize,
    /// Bytes per partition in a fetch response.
    #[arg(long, default_value_t = 4 << 20)]
    pub partition_fetch_bytes: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Where to start reading.
    #[arg(long, value_enum, default_value_t = From::Start)]
    pub from: From,
}

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
}

/// The common start of a run: every worker connects, then all wait here,
/// and the first through takes the start time for all.
pub struct RunStart {
    barrier: Barrier,
    start: OnceLock<Instant>,
    warmup: Duration,
    duration: Duration,
}

impl RunStart {
    pub fn new(workers: usize, warmup: Duration, duration: Duration) -> RunStart {
        RunStart {
            barrier: Barrier::new(workers),
            start: OnceLock::new(),
            warmup,
            duration,
        }
    }

    /// Blocks the executor until every worker is here; nothing else on it
    /// has work yet (its connections are idle).
    pub fn wait(&self) -> Schedule {
        self.barrier.wait();
        let start = *self.start.get_or_init(Instant::now);
        Schedule::new(start, self.warmup, self.duration)
    }
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("--{what} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Runs `f` on a fresh executor at `placement` and waits for its result.
pub fn run_on_executor<T, F, Fut>(name: &str, placement: Placement, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    spawn_executor(name, placement, f)?
        .join()
        .map_err(|e| anyhow!("executor {name} failed: {e:?}"))?
}

fn spawn_executor<T, F, Fut>(
    name: &str,
    placement: Placement,
    f: F,
) -> anyhow::Result<ExecutorJoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    LocalExecutorBuilder::new(placement)
        .name(name)
        .spawn(f)
        .map_err(|e| anyhow!("starting executor {name}: {e}"))
}

/// Asks the bootstrap brokers, in order, for the topic (creating it if asked).
fn prepare(common: &CommonArgs, cpus: &[usize]) -> anyhow::Result<TopicLayout> {
    let mut last_error = None;
    for bootstrap in common.brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let (bootstrap, topic) = (bootstrap.to_string(), common.topic.clone());
        let create = common.create.then_some(common.partitions);
        let result = run_on_executor("sluice-bench-setup", cpuset::placement(cpus, 0), move || async move {
            cluster::prepare_topic(&bootstrap, &topic, create).await
        });
        match result {
            Ok(layout) => return Ok(layout),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("--brokers names no broker")))
}

fn producer_config(topic: &str, p: &ProducerArgs, producers: usize) -> anyhow::Result<ProducerConfig> {
    if p.record_size < STAMP_BYTES {
        bail!("--record-size must be at least {STAMP_BYTES} (each value carries its send time)");
    }
    if let Some(rate) = p.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of records per second");
    }
    if p.connections == 0 || p.in_flight == 0 || p.batch_bytes == 0 || p.request_bytes < p.batch_bytes {
        bail!("--connections, --in-flight and --batch-bytes must be positive, --request-bytes at least --batch-bytes");
    }
    Ok(ProducerConfig {
        topic: topic.to_string(),
        record_bytes: p.record_size,
        acks: p.acks.code(),
        batch_bytes: p.batch_bytes,
        linger: seconds(p.linger_ms / 1e3, "linger-ms")?,
        rate_records_s: p.rate.map(|r| r / producers as f64),
        in_flight_max: p.in_flight,
        connections: p.connections,
        request_bytes_max: p.request_bytes,
    })
}

/// What the workers of a run measured, merged by role.
struct Outcome {
    producers: WorkerResult,
    consumers: WorkerResult,
    measured_s: f64,
}

enum Role {
    Producer(ProducerConfig),
    Consumer(ConsumerConfig),
}

/// Starts every worker on its executor, shows progress until all finish,
/// and merges their results. Producers come first in `roles`, and
/// `producers_done` (if any) is set when the last producer has drained.
fn run_workers(
    layout: &TopicLayout,
    roles: Vec<(Role, usize, usize)>,
    cpus: &[usize],
    warmup: Duration,
    duration: Duration,
    producers_done: Option<Arc<AtomicBool>>,
    status_label: &str,
) -> anyhow::Result<Outcome> {
    if roles.len() > WORKERS_MAX {
        bail!("{} workers is more than {WORKERS_MAX}", roles.len());
    }
    let run_start = Arc::new(RunStart::new(roles.len(), warmup, duration));
    let (updates_tx, updates_rx) = progress::channel();
    let draw = progress::enabled();
    let mut handles = Vec::new();
    let producer_count = roles.iter().filter(|(r, _, _)| matches!(r, Role::Producer(_))).count();
    let producers_left = Arc::new(std::sync::atomic::AtomicUsize::new(producer_count));
    for (worker, (role, share, share_count)) in roles.into_iter().enumerate() {
        let partitions = layout.share(share, share_count);
        if partitions.is_empty() {
            bail!("more workers than the topic's {} partitions", layout.partitions.len());
        }
        let run_start = run_start.clone();
        let updates = updates_tx.clone();
        let progress_tx: Option<SyncSender<Update>> = draw.then(|| updates_tx.clone());
        let (producers_done, producers_left) = (producers_done.clone(), producers_left.clone());
        let (name, is_producer) = match &role {
            Role::Producer(_) => (format!("sluice-bench-producer-{share}"), true),
            Role::Consumer(_) => (format!("sluice-bench-consumer-{share}"), false),
        };
        let handle = spawn_executor(&name, cpuset::placement(cpus, worker), move || async move {
            let _done = DoneGuard { updates };
            let result = match role {
                Role::Producer(config) => producer::run(config, partitions, run_start, progress_tx).await,
                Role::Consumer(config) => consumer::run(config, partitions, run_start, progress_tx).await,
            };
            if is_producer
                && producers_left.fetch_sub(1, Ordering::AcqRel) == 1
                && let Some(done) = producers_done
            {
                done.store(true, Ordering::Release);
            }
            result
        })?;
        handles.push((is_producer, handle));
    }
    drop(updates_tx);
    progress::run_status_line(&updates_rx, handles.len(), draw, status_label);
    let seconds = Schedule::new(Instant::now(), warmup, duration).second_count();
    let mut outcome = Outcome {
        producers: WorkerResult::empty(seconds),
        consumers: WorkerResult::empty(seconds),
        measured_s: duration.as_secs_f64(),
    };
    let mut first_error = None;
    for (is_producer, handle) in handles {
        match handle
            .join()
            .map_err(|e| anyhow!("a worker panicked: {e:?}"))
            .and_then(|r| r)
        {
            Ok(result) if is_producer => outcome.producers.merge(&result),
            Ok(result) => outcome.consumers.merge(&result),
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

fn base_config(common: &CommonArgs, layout: &TopicLayout) -> RunConfig {
    RunConfig {
        brokers: common.brokers.clone(),
        topic: common.topic.clone(),
        partitions: layout.partitions.len(),
        warmup_s: common.warmup,
        duration_s: common.duration,
        cpuset: common.cpuset.clone(),
        ..RunConfig::default()
    }
}

fn with_producer(mut config: RunConfig, p: &ProducerArgs) -> RunConfig {
    config.record_bytes = p.record_size;
    config.acks = Some(p.acks.name().to_string());
    config.producers = p.producers;
    config.batch_bytes = p.batch_bytes;
    config.linger_ms = p.linger_ms;
    config.in_flight = p.in_flight;
    config.connections = p.connections;
    config.rate_records_s = p.rate;
    config
}

fn default_label(kind: &str, rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{kind} at {r:.0} records/s"),
        None => format!("{kind}, max"),
    }
}

fn report_from(kind: &str, label: String, config: RunConfig, main: &WorkerResult, measured_s: f64) -> RunReport {
    let throughput = Throughput::of(main, measured_s);
    RunReport {
        schema_version: SCHEMA_VERSION,
        kind: kind.to_string(),
        label,
        command: command_line(),
        unix_time_s: unix_time_s(),
        config,
        records: main.records,
        bytes: main.bytes,
        records_total: main.records_total,
        throughput_records_s: throughput.records_s,
        throughput_mb_s: throughput.mb_s,
        per_second: throughput.per_second,
        produce_latency_us: None,
        e2e_latency_us: None,
        consume: None,
        errors: main
            .errors
            .iter()
            .map(|&(code, records)| ErrorCount { code, records })
            .collect(),
        error_records: main.error_records(),
        unacked_records: main.unacked_records,
        first_failure: main.first_failure.clone(),
    }
}

/// Prints, writes and draws what `--json` and `--plot` ask for.
fn finish(report: &RunReport, common: &CommonArgs) -> anyhow::Result<()> {
    report.print_summary();
    if let Some(path) = &common.json {
        report.write(path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &common.plot {
        plot::write_plot(path, std::slice::from_ref(report), None)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub fn produce(args: ProduceArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let cpus = cpuset::parse(&common.cpuset)?;
    let (warmup, duration) = (seconds(common.warmup, "warmup")?, seconds(common.duration, "duration")?);
    let producers = args.producer.producers.max(1);
    let config = producer_config(&common.topic, &args.producer, producers)?;
    let layout = prepare(common, &cpus).context("preparing the topic")?;
    let roles = (0..producers)
        .map(|i| (Role::Producer(config.clone()), i, producers))
        .collect();
    let outcome = run_workers(&layout, roles, &cpus, warmup, duration, None, "produced")?;
    let label = common
        .label
        .clone()
        .unwrap_or_else(|| default_label("produce", args.producer.rate));
    let run_config = with_producer(base_config(common, &layout), &args.producer);
    let mut report = report_from("produce", label, run_config, &outcome.producers, outcome.measured_s);
    report.produce_latency_us = Some(LatencyReport::of(&outcome.producers.latency));
    finish(&report, common)?;
    Ok(report)
}

fn consumer_config(
    topic: &str,
    c: &ConsumerArgs,
    start_at: StartAt,
    stop_at_end: bool,
) -> anyhow::Result<ConsumerConfig> {
    if c.fetch_bytes == 0 || c.partition_fetch_bytes == 0 || c.fetch_bytes > consumer::FETCH_BYTES_MAX {
        bail!(
            "--fetch-bytes must be within 1..={} and --partition-fetch-bytes positive",
            consumer::FETCH_BYTES_MAX
        );
    }
    Ok(ConsumerConfig {
        topic: topic.to_string(),
        start_at,
        stop_at_end,
        producers_done: None,
        fetch_bytes: c.fetch_bytes,
        partition_fetch_bytes: c.partition_fetch_bytes,
    })
}

pub fn consume(args: ConsumeArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let cpus = cpuset::parse(&common.cpuset)?;
    let (warmup, duration) = (seconds(common.warmup, "warmup")?, seconds(common.duration, "duration")?);
    let consumers = args.consumer.consumers.max(1);
    let (start_at, stop_at_end) = match args.from {
        From::Start => (StartAt::Earliest, true),
        From::Tail => (StartAt::Latest, false),
    };
    let config = consumer_config(&common.topic, &args.consumer, start_at, stop_at_end)?;
    let layout = prepare(common, &cpus).context("preparing the topic")?;
    let roles = (0..consumers)
        .map(|i| (Role::Consumer(config.clone()), i, consumers))
        .collect();
    let started = Instant::now();
    let outcome = run_workers(&layout, roles, &cpus, warmup, duration, None, "consumed")?;
    // Reading a topic through may end before the duration: throughput is
    // over the time it took, less the warmup.
    let measured_s = (started.elapsed().as_secs_f64() - common.warmup).clamp(1e-3, outcome.measured_s);
    let label = common.label.clone().unwrap_or_else(|| "consume".to_string());
    let mut run_config = base_config(common, &layout);
    run_config.consumers = consumers;
    let mut report = report_from("consume", label, run_config, &outcome.consumers, measured_s);
    report.per_second.truncate(measured_s.ceil() as usize);
    // Records stamped by sluice-bench producers during the window (a
    // concurrent `produce`) give end-to-end latency; others are not counted.
    if !outcome.consumers.latency.is_empty() {
        report.e2e_latency_us = Some(LatencyReport::of(&outcome.consumers.latency));
    }
    finish(&report, common)?;
    Ok(report)
}

pub fn e2e(args: E2eArgs) -> anyhow::Result<RunReport> {
    let common = &args.common;
    let cpus = cpuset::parse(&common.cpuset)?;
    let (warmup, duration) = (seconds(common.warmup, "warmup")?, seconds(common.duration, "duration")?);
    let producers = args.producer.producers.max(1);
    let consumers = args.consumer.consumers.max(1);
    let producer = producer_config(&common.topic, &args.producer, producers)?;
    let producers_done = Arc::new(AtomicBool::new(false));
    let mut consumer = consumer_config(&common.topic, &args.consumer, StartAt::Latest, false)?;
    consumer.producers_done = Some(producers_done.clone());
    let layout = prepare(common, &cpus).context("preparing the topic")?;
    let mut roles: Vec<(Role, usize, usize)> = (0..producers)
        .map(|i| (Role::Producer(producer.clone()), i, producers))
        .collect();
    roles.extend((0..consumers).map(|i| (Role::Consumer(consumer.clone()), i, consumers)));
    let outcome = run_workers(
        &layout,
        roles,
        &cpus,
        warmup,
        duration,
        Some(producers_done),
        "produced+consumed",
    )?;
    let label = common
        .label
        .clone()
        .unwrap_or_else(|| default_label("e2e", args.producer.rate));
    let mut run_config = with_producer(base_config(common, &layout), &args.producer);
    run_config.consumers = consumers;
    let mut report = report_from("e2e", label, run_config, &outcome.producers, outcome.measured_s);
    report.produce_latency_us = Some(LatencyReport::of(&outcome.producers.latency));
    let consumed = Throughput::of(&outcome.consumers, outcome.measured_s);
    report.consume = Some(ConsumeReport {
        records: outcome.consumers.records,
        bytes: outcome.consumers.bytes,
        records_total: outcome.consumers.records_total,
        throughput_records_s: consumed.records_s,
        throughput_mb_s: consumed.mb_s,
        per_second: consumed.per_second,
    });
    report.e2e_latency_us = Some(LatencyReport::of(&outcome.consumers.latency));
    finish(&report, common)?;
    Ok(report)
}

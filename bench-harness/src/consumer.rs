//! A consumer: one per executor, owning a share of the partitions. For
//! each leader it keeps one fetch in flight (a broker answers a
//! connection's requests in order, so a second fetch would only wait
//! behind the first's long poll), reads every batch and, from each
//! record's stamp, the end-to-end latency.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use sluice_protocol::kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::clock;
use crate::cluster::{self, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, PartitionLeader};
use crate::connection::Connection;
use crate::load::RunStart;
use crate::progress::{PROGRESS_INTERVAL, Update};
use crate::record_batch::read_batches;
use crate::stats::{WorkerResult, WorkerStats};

/// Largest fetch response asked for; below `wire::RESPONSE_BYTES_MAX`.
pub const FETCH_BYTES_MAX: usize = 128 << 20;

/// How long a fetch waits at the broker for data before answering empty.
const FETCH_WAIT_MS: i32 = 500;

/// After the producers finish, how long consumers may take to catch up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub topic: String,
    pub start_at: StartAt,
    /// Stop once every partition reaches the end offset it had when the
    /// consumer started (reading a topic through).
    pub stop_at_end: bool,
    /// Set when the producers of an e2e run have finished and drained:
    /// then stop once caught up with the high watermark.
    pub producers_done: Option<Arc<AtomicBool>>,
    /// Bytes per fetch response and per partition in it.
    pub fetch_bytes: usize,
    pub partition_fetch_bytes: usize,
}

struct Position {
    partition: i32,
    offset: i64,
    /// Where `stop_at_end` stops.
    end_offset: i64,
    high_watermark: i64,
}

/// Runs one consumer until its stop condition or the end of the schedule
/// (plus `CATCH_UP_TIMEOUT` when following producers).
pub async fn run(
    config: ConsumerConfig,
    partitions: Vec<PartitionLeader>,
    run_start: Arc<RunStart>,
    progress: Option<SyncSender<Update>>,
) -> anyhow::Result<WorkerResult> {
    assert!(!partitions.is_empty(), "a consumer has at least one partition");
    let setup = connect(&config, &partitions).await;
    let schedule = run_start.wait();
    let links = setup?;
    let stats = Rc::new(RefCell::new(WorkerStats::new(schedule)));
    let _progress_task = progress.map(|tx| {
        let stats = stats.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(PROGRESS_INTERVAL).await;
                stats.borrow_mut().send_progress(&tx);
            }
        })
    });
    let deadline = match config.producers_done {
        Some(_) => schedule.measure_until + crate::producer::DRAIN_TIMEOUT + CATCH_UP_TIMEOUT,
        None => schedule.measure_until,
    };
    let tasks: Vec<_> = links
        .into_iter()
        .map(|(conn, positions)| {
            glommio::spawn_local(fetch_loop(config.clone(), conn, positions, stats.clone(), deadline))
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    drop(_progress_task);
    let stats = stats.replace(WorkerStats::new(schedule));
    Ok(stats.finish(0))
}

/// A connection per leader, with the start and end offsets of its partitions.
async fn connect(
    config: &ConsumerConfig,
    partitions: &[PartitionLeader],
) -> anyhow::Result<Vec<(Connection, Vec<Position>)>> {
    let mut links: Vec<(Connection, Vec<Position>)> = Vec::new();
    let mut leaders: Vec<&str> = partitions.iter().map(|p| p.leader_addr.as_str()).collect();
    leaders.dedup();
    leaders.sort();
    leaders.dedup();
    for leader in leaders {
        let mut conn = Connection::connect(leader, 1)
            .await
            .with_context(|| format!("leader {leader}"))?;
        conn.versions().get(ApiKey::Fetch)?;
        let ids: Vec<i32> = partitions
            .iter()
            .filter(|p| p.leader_addr == leader)
            .map(|p| p.partition)
            .collect();
        let latest = cluster::list_offsets(&mut conn, &config.topic, &ids, LATEST_TIMESTAMP).await?;
        let start = match config.start_at {
            StartAt::Latest => latest.clone(),
            StartAt::Earliest => cluster::list_offsets(&mut conn, &config.topic, &ids, EARLIEST_TIMESTAMP).await?,
        };
        let positions = ids
            .iter()
            .map(|&partition| {
                let find = |v: &[(i32, i64)]| v.iter().find(|(p, _)| *p == partition).map_or(0, |&(_, o)| o);
                Position {
                    partition,
                    offset: find(&start),
                    end_offset: find(&latest),
                    high_watermark: find(&latest),
                }
            })
            .collect();
        links.push((conn, positions));
    }
    Ok(links)
}

async fn fetch_loop(
    config: ConsumerConfig,
    mut conn: Connection,
    mut positions: Vec<Position>,
    stats: Rc<RefCell<WorkerStats>>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let topic = TopicName(StrBytes::from_string(config.topic.clone()));
    loop {
        if Instant::now() >= deadline {
            return Ok(());
        }
        if config.stop_at_end && positions.iter().all(|p| p.offset >= p.end_offset) {
            return Ok(());
        }
        // Read before the fetch: its high watermarks then include every
        // record the producers had acknowledged.
        let producers_done = config
            .producers_done
            .as_ref()
            .is_some_and(|d| d.load(Ordering::Acquire));
        let request = FetchRequest::default()
            .with_max_wait_ms(FETCH_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(config.fetch_bytes.min(FETCH_BYTES_MAX) as i32)
            .with_topics(vec![
                FetchTopic::default().with_topic(topic.clone()).with_partitions(
                    positions
                        .iter()
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p.partition)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(p.offset)
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(config.partition_fetch_bytes as i32)
                        })
                        .collect(),
                ),
            ]);
        let response: FetchResponse = conn.call(ApiKey::Fetch, &request).await?;
        let arrival = Instant::now();
        let arrival_us = clock::us_at(arrival);
        if response.error_code != 0 {
            bail!("fetch from {}: error {}", conn.addr(), response.error_code);
        }
        let mut stats = stats.borrow_mut();
        for t in &response.responses {
            for p in &t.partitions {
                let Some(position) = positions.iter_mut().find(|q| q.partition == p.partition_index) else {
                    continue;
                };
                if p.error_code != 0 {
                    bail!(
                        "fetch of {}/{} at offset {}: error {}",
                        config.topic,
                        p.partition_index,
                        position.offset,
                        p.error_code
                    );
                }
                position.high_watermark = p.high_watermark;
                let Some(records) = &p.records else { continue };
                let summary = read_batches(records, |stamp| stats.record_latency(stamp, arrival_us))
                    .with_context(|| format!("reading {}/{}", config.topic, p.partition_index))?;
                if let Some(next) = summary.next_offset {
                    position.offset = position.offset.max(next);
                }
                stats.count_done(arrival, summary.record_count, summary.value_bytes);
            }
        }
        if producers_done && positions.iter().all(|p| p.offset >= p.high_watermark) {
            return Ok(());
        }
    }
}

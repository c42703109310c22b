//! A producer: one per executor, owning a share of the partitions and a
//! connection to each of their leaders.
//!
//! Records are generated on a schedule (open loop, `--rate`) or as fast as
//! the in-flight limit allows (closed loop). Each record's value carries its
//! stamp: the time it was meant to be sent (open loop: its slot in the
//! schedule; closed loop: when it was generated). Latency is the time from
//! that stamp to the broker's acknowledgement, so time spent queued in the
//! client behind a slow broker counts, as wrk2 counts it.
//!
//! Batching follows Kafka's producer: the sticky partitioner fills one
//! partition's batch up to `batch_bytes`, then moves to the next partition;
//! a partly filled batch goes when it is `linger` old and a request slot is
//! free; a request carries at most one batch per partition (Kafka brokers
//! require it) and at most `request_bytes_max`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use sluice_protocol::kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use sluice_protocol::kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use sluice_protocol::kafka_protocol::protocol::StrBytes;

use crate::clock;
use crate::cluster::PartitionLeader;
use crate::connection::{Connection, Reply};
use crate::load::RunStart;
use crate::progress::{PROGRESS_INTERVAL, Update};
use crate::record_batch::{BatchBuilder, RECORD_OVERHEAD_BYTES_MAX};
use crate::stats::{Schedule, WorkerResult, WorkerStats};
use crate::wire;

/// Sealed batches waiting for a request slot, in bytes, per producer. In
/// the open loop, records due beyond it are generated later, still stamped
/// with their slot in the schedule, so the wait counts as latency and
/// memory stays bounded however long the broker stalls.
const READY_BYTES_MAX: usize = 64 << 20;

/// The open loop wakes at most this often to generate due records: finer
/// would cost a wakeup per record at high rates; coarser would add
/// client-side delay to every record (which the latency would include).
const OPEN_LOOP_TICK: Duration = Duration::from_micros(50);

/// How long the end of a run waits for answers to requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Kafka's produce `timeout_ms`: how long the broker may wait for acks=all.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub topic: String,
    /// Bytes of each record's value (stamp included).
    pub record_bytes: usize,
    /// 0, 1 or -1 (all).
    pub acks: i16,
    pub batch_bytes: usize,
    pub linger: Duration,
    /// This producer's share of the rate; `None` for the closed loop.
    pub rate_records_s: Option<f64>,
    pub in_flight_max: usize,
    /// Connections to each leader; its partitions are dealt among them.
    pub connections: usize,
    pub request_bytes_max: usize,
}

/// A sealed batch: its partition, its bytes and its records' stamps.
struct ReadyBatch {
    partition: i32,
    bytes: Bytes,
    stamps: Vec<u64>,
}

/// A connection to one leader and the sealed batches waiting to go to it.
struct Link {
    conn: Connection,
    ready: VecDeque<ReadyBatch>,
    ready_bytes: usize,
}

/// The batch being filled (sticky partitioner: one at a time).
struct OpenBatch {
    /// Position in the producer's partition list.
    position: usize,
    builder: BatchBuilder,
    stamps: Vec<u64>,
    created: Instant,
}

/// Runs one producer to the end of the schedule and drains it.
pub async fn run(
    config: ProducerConfig,
    partitions: Vec<PartitionLeader>,
    run_start: Arc<RunStart>,
    progress: Option<SyncSender<Update>>,
) -> anyhow::Result<WorkerResult> {
    assert!(!partitions.is_empty(), "a producer has at least one partition");
    // Connect before the common start; reach the start barrier even on
    // failure, so that the other workers are not left waiting.
    let connected = connect(&partitions, config.connections, config.in_flight_max).await;
    let schedule = run_start.wait();
    let (mut links, link_of) = connected?;
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
    let outstanding_records = Rc::new(Cell::new(0u64));
    let mut generator = Generator {
        config: &config,
        schedule,
        partitions: &partitions,
        link_of: &link_of,
        open: OpenBatch {
            position: 0,
            builder: BatchBuilder::new(config.batch_bytes + config.record_bytes + RECORD_OVERHEAD_BYTES_MAX),
            stamps: Vec::new(),
            created: schedule.start,
        },
        generated: 0,
        topic: TopicName(StrBytes::from_string(config.topic.clone())),
        stats: stats.clone(),
        outstanding_records: outstanding_records.clone(),
    };
    generator.run(&mut links).await?;
    drop(generator);
    // Drain: wait (bounded) for the answers to what was sent.
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    while outstanding_records.get() > 0 && Instant::now() < drain_until {
        glommio::timer::sleep(DRAIN_POLL_INTERVAL).await;
    }
    let unacked = outstanding_records.get();
    drop(links);
    // Answers still due after the drain timeout (counted as unacked) may
    // yet arrive; they land in a fresh, discarded copy.
    let stats = stats.replace(WorkerStats::new(schedule));
    Ok(stats.finish(unacked))
}

/// Up to `connections` connections to each leader, and the link each
/// partition's batches go by: a leader's partitions are dealt among its
/// connections, so each connection carries whole partitions and their
/// batches stay in order.
async fn connect(
    partitions: &[PartitionLeader],
    connections: usize,
    in_flight_max: usize,
) -> anyhow::Result<(Vec<Link>, Vec<usize>)> {
    assert!(connections >= 1);
    let link_plan = plan_links(partitions.iter().map(|p| p.leader_addr.as_str()), connections);
    let mut links: Vec<Link> = Vec::new();
    for (i, p) in partitions.iter().enumerate() {
        if link_plan[i] < links.len() {
            continue;
        }
        assert_eq!(link_plan[i], links.len(), "links are planned in order of first use");
        let conn = Connection::connect(&p.leader_addr, in_flight_max)
            .await
            .with_context(|| format!("leader of partition {}", p.partition))?;
        conn.versions().get(ApiKey::Produce)?;
        links.push(Link {
            conn,
            ready: VecDeque::new(),
            ready_bytes: 0,
        });
    }
    Ok((links, link_plan))
}

/// For partitions led by `leaders` (in order), the index of the link each
/// uses: the k-th partition of a leader goes by that leader's connection
/// k mod `connections`; links are numbered in order of first use.
fn plan_links<'a>(leaders: impl Iterator<Item = &'a str>, connections: usize) -> Vec<usize> {
    let mut seen: Vec<(&str, usize)> = Vec::new(); // leader, partitions so far
    let mut numbered: Vec<(&str, usize)> = Vec::new(); // (leader, connection) by link index
    let mut plan = Vec::new();
    for leader in leaders {
        let k = match seen.iter_mut().find(|(l, _)| *l == leader) {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                seen.push((leader, 1));
                0
            }
        };
        let key = (leader, k % connections);
        let link = match numbered.iter().position(|n| *n == key) {
            Some(i) => i,
            None => {
                numbered.push(key);
                numbered.len() - 1
            }
        };
        plan.push(link);
    }
    plan
}

struct Generator<'a> {
    config: &'a ProducerConfig,
    schedule: Schedule,
    partitions: &'a [PartitionLeader],
    link_of: &'a [usize],
    open: OpenBatch,
    /// Records generated so far; in the open loop, record `i` is meant to
    /// be sent at `start + i / rate`.
    generated: u64,
    topic: TopicName,
    stats: Rc<RefCell<WorkerStats>>,
    /// Records sent and not yet answered.
    outstanding_records: Rc<Cell<u64>>,
}

impl Generator<'_> {
    async fn run(&mut self, links: &mut [Link]) -> anyhow::Result<()> {
        let closed_loop_ready_bytes = self.config.request_bytes_max * links.len();
        loop {
            let now = Instant::now();
            let generating = now < self.schedule.measure_until;
            if generating {
                let due = match self.config.rate_records_s {
                    Some(rate) => ((now - self.schedule.start).as_secs_f64() * rate) as u64 + 1,
                    None => u64::MAX,
                };
                let ready_bytes_max = match self.config.rate_records_s {
                    Some(_) => READY_BYTES_MAX,
                    None => closed_loop_ready_bytes,
                };
                while self.generated < due && ready_bytes(links) < ready_bytes_max {
                    self.generate_one(now, links);
                }
            } else if !self.open.builder.is_empty() {
                self.seal(links);
            }
            // A lingering batch goes as soon as its leader can take it.
            if now >= self.open.created + self.config.linger && self.open_batch_may_go(links) {
                self.seal(links);
            }
            for link in links.iter_mut() {
                while link.conn.has_slot() && !link.ready.is_empty() {
                    self.send_request(link).await?;
                }
            }
            if !generating && self.open.builder.is_empty() && links.iter().all(|l| l.ready.is_empty()) {
                return Ok(());
            }
            self.wait(links, generating).await;
        }
    }

    /// Waits until there is something to do: a slot for waiting batches,
    /// the next due record, the open batch's linger, or the end of the run.
    async fn wait(&self, links: &[Link], generating: bool) {
        let now = Instant::now();
        let mut wake = if generating {
            self.schedule.measure_until
        } else {
            now + DRAIN_TIMEOUT
        };
        let ready_full = match self.config.rate_records_s {
            Some(_) => ready_bytes(links) >= READY_BYTES_MAX,
            None => ready_bytes(links) >= self.config.request_bytes_max * links.len(),
        };
        if generating && !ready_full {
            match self.config.rate_records_s {
                Some(rate) => {
                    let next_due = self.schedule.start + Duration::from_secs_f64(self.generated as f64 / rate);
                    wake = wake.min(next_due.max(now + OPEN_LOOP_TICK));
                }
                // The closed loop generates whenever it is below its target.
                None => return,
            }
        }
        let open_link = (!self.open.builder.is_empty()).then(|| self.link_of[self.open.position]);
        if self.open_batch_may_go(links) {
            wake = wake.min(self.open.created + self.config.linger);
        }
        if wake <= now {
            return;
        }
        let slot_for_work = std::future::poll_fn(|cx| {
            let mut ready = false;
            for (i, link) in links.iter().enumerate() {
                let has_work = !link.ready.is_empty() || open_link == Some(i);
                if has_work && link.conn.poll_slot(cx).is_ready() {
                    ready = true;
                }
            }
            if ready { Poll::Ready(()) } else { Poll::Pending }
        });
        futures_lite::future::or(slot_for_work, glommio::timer::sleep(wake - now)).await;
    }

    /// Whether the open batch (if any) would go out now were it sealed; see
    /// `lingering_batch_may_go`.
    fn open_batch_may_go(&self, links: &[Link]) -> bool {
        if self.open.builder.is_empty() {
            return false;
        }
        let link = &links[self.link_of[self.open.position]];
        lingering_batch_may_go(
            link.conn.has_slot(),
            link.ready.iter().map(|b| b.partition),
            self.partitions[self.open.position].partition,
        )
    }

    fn generate_one(&mut self, now: Instant, links: &mut [Link]) {
        let record_bytes = self.config.record_bytes;
        if !self.open.builder.fits(record_bytes, self.config.batch_bytes) {
            self.seal(links);
        }
        let stamp_us = match self.config.rate_records_s {
            Some(rate) => clock::us_at(self.schedule.start + Duration::from_secs_f64(self.generated as f64 / rate)),
            None => clock::us_at(now),
        };
        if self.open.builder.is_empty() {
            self.open.created = now;
        }
        self.open.builder.push(record_bytes, stamp_us, (stamp_us / 1000) as i64);
        self.open.stamps.push(stamp_us);
        self.generated += 1;
        // A full batch is ready at once, not when the next record comes.
        if !self.open.builder.fits(record_bytes, self.config.batch_bytes) {
            self.seal(links);
        }
    }

    /// Seals the open batch into its leader's ready queue and moves the
    /// sticky partitioner to the next partition.
    fn seal(&mut self, links: &mut [Link]) {
        assert!(!self.open.builder.is_empty());
        let position = self.open.position;
        let bytes = self.open.builder.finish();
        let link = &mut links[self.link_of[position]];
        link.ready_bytes += bytes.len();
        link.ready.push_back(ReadyBatch {
            partition: self.partitions[position].partition,
            bytes,
            stamps: std::mem::take(&mut self.open.stamps),
        });
        self.open.position = (position + 1) % self.partitions.len();
    }

    /// Sends the oldest ready batches of `link` in one request: one batch
    /// per partition at most, up to `request_bytes_max`.
    async fn send_request(&self, link: &mut Link) -> anyhow::Result<()> {
        let mut batches: Vec<ReadyBatch> = Vec::new();
        let mut request_bytes = 0usize;
        while let Some(front) = link.ready.front() {
            let repeats = batches.iter().any(|b| b.partition == front.partition);
            if repeats || (!batches.is_empty() && request_bytes + front.bytes.len() > self.config.request_bytes_max) {
                break;
            }
            let batch = link.ready.pop_front().expect("front exists");
            request_bytes += batch.bytes.len();
            batches.push(batch);
        }
        assert!(!batches.is_empty());
        link.ready_bytes -= request_bytes;
        let request = ProduceRequest::default()
            .with_acks(self.config.acks)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(self.topic.clone())
                    .with_partition_data(
                        batches
                            .iter()
                            .map(|b| {
                                PartitionProduceData::default()
                                    .with_index(b.partition)
                                    .with_records(Some(b.bytes.clone()))
                            })
                            .collect(),
                    ),
            ]);
        let expects_response = self.config.acks != 0;
        let version = link.conn.versions().get(ApiKey::Produce)?;
        let records: u64 = batches.iter().map(|b| b.stamps.len() as u64).sum();
        self.outstanding_records.set(self.outstanding_records.get() + records);
        let reply = link.conn.send_produce(&request, expects_response).await?;
        let completion = Completion {
            stats: self.stats.clone(),
            outstanding_records: self.outstanding_records.clone(),
            record_bytes: self.config.record_bytes as u64,
            version,
            expects_response,
        };
        // Drop the request (and its references to the batch bytes) before
        // waiting; the batches keep only their stamps.
        drop(request);
        let batches: Vec<(i32, Vec<u64>)> = batches.into_iter().map(|b| (b.partition, b.stamps)).collect();
        glommio::spawn_local(completion.run(reply, batches)).detach();
        Ok(())
    }
}

/// Whether a partly filled batch of `partition`, its linger over, may be
/// sealed: only if it would go in its link's next request, that is the link
/// has a free slot (`slot_free`) and no batch of the same partition is
/// among those waiting there (`waiting`). A request carries one batch per
/// partition, so a batch sealed behind another of its own partition waits
/// for a later request anyway. Sealed regardless, such batches would pile
/// up: every freed slot would seal one small batch onto the back of the
/// queue and send one from its front, so a queue built by a stall would
/// never drain, and its records' latency would grow with every stall. Left
/// open, the batch keeps filling, as Kafka's producer appends to a
/// partition's last batch, and the queue drains a full batch per request.
fn lingering_batch_may_go(slot_free: bool, mut waiting: impl Iterator<Item = i32>, partition: i32) -> bool {
    slot_free && waiting.all(|p| p != partition)
}

fn ready_bytes(links: &[Link]) -> usize {
    links.iter().map(|l| l.ready_bytes).sum()
}

/// Accounts for one request's answer.
struct Completion {
    stats: Rc<RefCell<WorkerStats>>,
    outstanding_records: Rc<Cell<u64>>,
    record_bytes: u64,
    version: i16,
    expects_response: bool,
}

/// Error code counted for records whose request failed as a whole (the
/// connection broke or the response did not decode).
pub const REQUEST_FAILED_CODE: i16 = -1;

impl Completion {
    async fn run(self, reply: Reply, batches: Vec<(i32, Vec<u64>)>) {
        let result = reply.wait().await;
        let done = Instant::now();
        let done_us = clock::us_at(done);
        let codes = result.and_then(|body| self.partition_codes(body));
        let mut stats = self.stats.borrow_mut();
        if let Err(e) = &codes {
            stats.note_failure(format!("produce request failed: {e:#}"));
        }
        for (partition, stamps) in &batches {
            let n = stamps.len() as u64;
            let code = match &codes {
                Ok(None) => 0,
                Ok(Some(codes)) => codes
                    .iter()
                    .find(|(p, _)| p == partition)
                    .map_or(REQUEST_FAILED_CODE, |(_, c)| *c),
                Err(_) => REQUEST_FAILED_CODE,
            };
            if code == 0 {
                for &stamp in stamps {
                    stats.record_latency(stamp, done_us);
                }
                stats.count_done(done, n, n * self.record_bytes);
            } else {
                stats.count_error(code, n);
            }
            self.outstanding_records.set(self.outstanding_records.get() - n);
        }
    }

    /// Each partition's error code in the response; `None` for acks=0,
    /// which has no response (every record counts as sent once written).
    fn partition_codes(&self, body: Bytes) -> anyhow::Result<Option<Vec<(i32, i16)>>> {
        if !self.expects_response {
            return Ok(None);
        }
        let response: ProduceResponse = wire::decode_body(ApiKey::Produce, self.version, body)?;
        Ok(Some(
            response
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| (p.index, p.error_code)))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{lingering_batch_may_go, plan_links};

    #[test]
    fn a_lingering_batch_goes_only_into_the_next_request() {
        // A free slot and nothing of its partition waiting: it goes.
        assert!(lingering_batch_may_go(true, [].into_iter(), 3));
        assert!(lingering_batch_may_go(true, [1, 2].into_iter(), 3));
        // No slot: it keeps filling.
        assert!(!lingering_batch_may_go(false, [].into_iter(), 3));
        // A batch of its partition waits ahead of it: sealing it would only
        // queue it behind that one, so it keeps filling.
        assert!(!lingering_batch_may_go(true, [1, 3].into_iter(), 3));
    }

    #[test]
    fn partitions_are_dealt_among_each_leaders_connections() {
        let leaders = ["a", "b", "a", "a", "b", "a"];
        assert_eq!(plan_links(leaders.iter().copied(), 1), vec![0, 1, 0, 0, 1, 0]);
        assert_eq!(plan_links(leaders.iter().copied(), 2), vec![0, 1, 2, 0, 3, 2]);
        assert_eq!(plan_links(leaders.iter().copied(), 8), vec![0, 1, 2, 3, 4, 5]);
    }
}

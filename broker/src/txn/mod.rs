//! The transaction coordinator.
//!
//! Transactional ids hash to one of `TXN_LOG_PARTITIONS` transaction logs
//! (each a `KvLog` in `<data-dir>/transactions/<n>`, key: the id, value: its
//! `TxnMeta` as JSON); each log and the transactions in it live on the shard
//! that owns it. Every change of a transaction's state is durable before
//! the next step:
//!
//! - EndTxn persists PrepareCommit/PrepareAbort, then writes a commit or
//!   abort marker to every partition of the transaction (on each owning
//!   shard, durably) and completes the group offsets committed in it, then
//!   persists CompleteCommit/CompleteAbort and answers;
//! - a transaction open past its timeout is aborted with the epoch bumped,
//!   which fences its producer; so is an open one when its id is
//!   re-initialized (a new producer with the same id fences the old);
//! - after a restart, a transaction found in a Prepare state is finished:
//!   never left hanging.

pub mod state;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use sluice_protocol::ResponseError;
use sluice_storage::StorageError;
use sluice_storage::batch::MarkerType;
use sluice_storage::local_sync::{LocalMutex, LocalMutexGuard, join_bounded};
use tracing::{info, warn};

use self::state::{EndStep, TxnMeta, TxnState};
use crate::kvlog::KvLog;
use crate::metadata::shard_of;
use crate::runtime;
use crate::shard::Shard;

/// The placement name of the transaction logs.
pub const TXN_LOGS_TOPIC: &str = "__transaction_state";
/// Transaction logs in a cluster (Kafka's `transaction.state.log.num.partitions`).
pub const TXN_LOG_PARTITIONS: i32 = 16;
/// Settings (`transaction.max.timeout.ms`,
/// `transactional.id.expiration.ms`).
#[derive(Debug, Clone, Copy)]
pub struct TxnLimits {
    /// Longest transaction timeout a producer may ask for.
    pub timeout_max_ms: i32,
    /// An id idle this long with nothing open is forgotten.
    pub id_expiration_ms: i64,
}
/// How often timeouts and unfinished decisions are checked.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes written to a transaction log between snapshots.
const SNAPSHOT_INTERVAL_BYTES: u64 = 16 << 20;
/// Shards written to at once when writing markers.
const MARKER_WRITES_IN_FLIGHT_MAX: usize = 16;

pub fn txn_log_of(transactional_id: &str) -> i32 {
    (sluice_storage::batch::crc32c(transactional_id.as_bytes()) % TXN_LOG_PARTITIONS as u32) as i32
}

/// Which shard coordinates a transactional id.
pub fn coordinator_shard(transactional_id: &str, shard_count: usize) -> usize {
    shard_of(TXN_LOGS_TOPIC, txn_log_of(transactional_id), shard_count)
}

pub struct TxnCoordinator {
    limits: TxnLimits,
    logs: RefCell<HashMap<i32, Rc<KvLog>>>,
    txns: RefCell<BTreeMap<String, TxnMeta>>,
    /// One lock per transactional id: its operations run one at a time.
    locks: RefCell<HashMap<String, LocalMutex>>,
}

fn storage_fault(context: &str, e: &StorageError) -> ResponseError {
    crate::error::storage_error_code(context, e);
    ResponseError::CoordinatorNotAvailable
}

impl TxnCoordinator {
    pub fn new(limits: TxnLimits) -> TxnCoordinator {
        TxnCoordinator {
            limits,
            logs: RefCell::new(HashMap::new()),
            txns: RefCell::new(BTreeMap::new()),
            locks: RefCell::new(HashMap::new()),
        }
    }

    /// Opens the transaction logs this shard owns and loads them.
    pub async fn open(&self, shard: &Shard) -> Result<(), StorageError> {
        for index in 0..TXN_LOG_PARTITIONS {
            if shard_of(TXN_LOGS_TOPIC, index, shard.count) != shard.id {
                continue;
            }
            let dir = shard.config.data_dir.join("transactions").join(index.to_string());
            let (kv, map) =
                KvLog::open(&shard.fs, &shard.cache, dir, SNAPSHOT_INTERVAL_BYTES, runtime::now_ms()).await?;
            let mut txns = self.txns.borrow_mut();
            for (id, value) in map {
                match serde_json::from_str::<TxnMeta>(&value) {
                    Ok(meta) => {
                        txns.insert(id, meta);
                    }
                    Err(e) => warn!(transactional_id = %id, error = %e, "unreadable transaction record ignored"),
                }
            }
            if kv.replayed_on_open > 0 {
                info!(
                    txn_log = index,
                    replayed_records = kv.replayed_on_open,
                    "transaction log loaded"
                );
            }
            self.logs.borrow_mut().insert(index, kv);
        }
        Ok(())
    }

    pub async fn close(&self) {
        let logs: Vec<Rc<KvLog>> = self.logs.borrow().values().cloned().collect();
        for log in logs {
            if let Err(e) = log.log.close().await {
                warn!(error = %e, "could not close a transaction log cleanly");
            }
        }
    }

    fn lock_for(&self, id: &str) -> LocalMutex {
        self.locks.borrow_mut().entry(id.to_string()).or_default().clone()
    }

    fn get(&self, id: &str) -> Option<TxnMeta> {
        self.txns.borrow().get(id).cloned()
    }

    /// Takes `id`'s lock and its state, once the caller is shown to be its
    /// current producer (id and epoch).
    async fn lock_producer(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(LocalMutexGuard, TxnMeta), ResponseError> {
        let guard = self.lock_for(id).lock().await;
        let meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        meta.check_producer(producer_id, epoch)?;
        Ok((guard, meta))
    }

    /// Makes `meta` the durable state of `id`. The state in memory changes
    /// only once the new one is durable: a step whose write failed is not
    /// acted on (a retry repeats it), so memory never runs ahead of what a
    /// restart would find. Caller holds the id's lock.
    async fn persist(&self, id: &str, meta: TxnMeta) -> Result<(), StorageError> {
        self.write(id, Some(meta)).await
    }

    /// Writes `id`'s new state (None: forgotten), then makes it the state
    /// in memory. Caller holds the id's lock.
    async fn write(&self, id: &str, meta: Option<TxnMeta>) -> Result<(), StorageError> {
        let index = txn_log_of(id);
        let log = self
            .logs
            .borrow()
            .get(&index)
            .cloned()
            .unwrap_or_else(|| panic!("transaction log {index} is not on this shard: routed to the wrong shard"));
        let value = meta
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("plain data serializes"));
        let end = log.append(&[(id.to_string(), value)], runtime::now_ms()).await?;
        log.wait_durable(end).await?;
        match meta {
            Some(meta) => {
                self.txns.borrow_mut().insert(id.to_string(), meta);
            }
            None => {
                self.txns.borrow_mut().remove(id);
            }
        }
        Ok(())
    }

    /// InitProducerId for a transactional id: a producer id and a new epoch
    /// (fencing any earlier incarnation, aborting what it left open).
    pub async fn init_producer_id(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        timeout_ms: i32,
        hint: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if timeout_ms <= 0 || timeout_ms > self.limits.timeout_max_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let now = runtime::now_ms();
        let Some(mut meta) = self.get(id) else {
            let pid = shard
                .new_producer_id()
                .await
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
            let meta = TxnMeta::new(pid, timeout_ms, now);
            self.persist(id, meta)
                .await
                .map_err(|e| storage_fault("init producer id", &e))?;
            info!(transactional_id = id, producer_id = pid, "transactional id registered");
            return Ok((pid, 0));
        };
        if let Some((pid, epoch)) = hint {
            if pid != meta.producer_id {
                return Err(ResponseError::ProducerFenced);
            }
            if epoch == meta.last_producer_epoch && meta.state == TxnState::Empty {
                // A retry of the InitProducerId that made the current epoch.
                return Ok((meta.producer_id, meta.producer_epoch));
            }
            if epoch != meta.producer_epoch {
                return Err(ResponseError::ProducerFenced);
            }
        }
        // Finish or abort what the previous incarnation left.
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                meta = self.finish(shard, id, meta).await?;
            }
            TxnState::Ongoing => {
                meta = self.abort_fencing(shard, id, meta).await?;
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {}
        }
        if meta.epoch_exhausted() {
            let pid = shard
                .new_producer_id()
                .await
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
            meta.producer_id = pid;
            meta.producer_epoch = 0;
            meta.last_producer_epoch = -1;
        } else {
            meta.last_producer_epoch = meta.producer_epoch;
            meta.producer_epoch += 1;
        }
        meta.state = TxnState::Empty;
        meta.partitions.clear();
        meta.groups.clear();
        meta.timeout_ms = timeout_ms;
        meta.last_update_ms = now;
        let answer = (meta.producer_id, meta.producer_epoch);
        self.persist(id, meta)
            .await
            .map_err(|e| storage_fault("init producer id", &e))?;
        Ok(answer)
    }

    /// AddPartitionsToTxn: one error code per partition, in order.
    pub async fn add_partitions(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Vec<i16> {
        let all = |e: ResponseError| vec![e.code(); partitions.len()];
        let (_guard, mut meta) = match self.lock_producer(id, producer_id, epoch).await {
            Ok(locked) => locked,
            Err(e) => return all(e),
        };
        let metadata = shard.metadata();
        let known = |(t, p): &(String, i32)| metadata.topic(t).is_some_and(|m| (0..m.partitions).contains(p));
        if !partitions.iter().all(known) {
            return partitions
                .iter()
                .map(|tp| {
                    if known(tp) {
                        ResponseError::OperationNotAttempted.code()
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    }
                })
                .collect();
        }
        if meta.state == TxnState::Ongoing && partitions.iter().all(|tp| meta.partitions.contains(tp)) {
            return vec![0; partitions.len()];
        }
        if let Err(e) = meta.add(&partitions, None, runtime::now_ms()) {
            return all(e);
        }
        match self.persist(id, meta).await {
            Ok(()) => vec![0; partitions.len()],
            Err(e) => all(storage_fault("add partitions to transaction", &e)),
        }
    }

    /// AddOffsetsToTxn: the group's offsets join the transaction.
    pub async fn add_offsets(&self, id: &str, producer_id: i64, epoch: i16, group: &str) -> i16 {
        let (_guard, mut meta) = match self.lock_producer(id, producer_id, epoch).await {
            Ok(locked) => locked,
            Err(e) => return e.code(),
        };
        if let Err(e) = meta.add(&[], Some(group), runtime::now_ms()) {
            return e.code();
        }
        match self.persist(id, meta).await {
            Ok(()) => 0,
            Err(e) => storage_fault("add offsets to transaction", &e).code(),
        }
    }

    /// EndTxn: commit or abort, markers written, before answering.
    pub async fn end_txn(&self, shard: &Rc<Shard>, id: &str, producer_id: i64, epoch: i16, commit: bool) -> i16 {
        let (_guard, mut meta) = match self.lock_producer(id, producer_id, epoch).await {
            Ok(locked) => locked,
            Err(e) => return e.code(),
        };
        match meta.end(commit) {
            Err(e) => e.code(),
            Ok(EndStep::AlreadyDone) => 0,
            Ok(EndStep::Finish) => match self.finish(shard, id, meta).await {
                Ok(_) => 0,
                Err(e) => e.code(),
            },
            Ok(EndStep::Prepare(prepare)) => {
                meta.state = prepare;
                meta.last_update_ms = runtime::now_ms();
                if let Err(e) = self.persist(id, meta.clone()).await {
                    return storage_fault("end transaction", &e).code();
                }
                crate::faults::crash_point(crate::faults::TXN_AFTER_PREPARE);
                match self.finish(shard, id, meta).await {
                    Ok(_) => 0,
                    Err(e) => e.code(),
                }
            }
        }
    }

    /// Aborts an open transaction with the epoch bumped (fencing its
    /// producer). Caller holds the id's lock.
    async fn abort_fencing(&self, shard: &Rc<Shard>, id: &str, mut meta: TxnMeta) -> Result<TxnMeta, ResponseError> {
        if !meta.epoch_exhausted() {
            meta.last_producer_epoch = meta.producer_epoch;
            meta.producer_epoch += 1;
        }
        meta.state = TxnState::PrepareAbort;
        meta.last_update_ms = runtime::now_ms();
        self.persist(id, meta.clone())
            .await
            .map_err(|e| storage_fault("abort transaction", &e))?;
        self.finish(shard, id, meta).await
    }

    /// Writes the markers of a Prepare state and persists its Complete
    /// state. Caller holds the id's lock.
    async fn finish(&self, shard: &Rc<Shard>, id: &str, mut meta: TxnMeta) -> Result<TxnMeta, ResponseError> {
        assert!(meta.state.is_prepare());
        let commit = meta.state == TxnState::PrepareCommit;
        let marker = if commit { MarkerType::Commit } else { MarkerType::Abort };
        let (pid, epoch) = (meta.producer_id, meta.producer_epoch);
        // Markers, per owning shard.
        let mut by_owner: BTreeMap<usize, Vec<(String, i32)>> = BTreeMap::new();
        for (t, p) in &meta.partitions {
            by_owner.entry(shard.owner_of(t, *p)).or_default().push((t.clone(), *p));
        }
        let writes: Vec<_> = by_owner
            .into_iter()
            .map(|(owner, parts)| {
                shard.invoke_on(owner, move |s| async move {
                    write_markers(&s, parts, pid, epoch, marker).await
                })
            })
            .collect();
        for r in join_bounded(writes, MARKER_WRITES_IN_FLIGHT_MAX).await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(transactional_id = id, error = %e, "writing transaction markers failed; will retry");
                    return Err(ResponseError::CoordinatorNotAvailable);
                }
                Err(_) => return Err(ResponseError::CoordinatorNotAvailable),
            }
        }
        // The group offsets committed in the transaction.
        for group in meta.groups.clone() {
            let target = crate::group::coordinator_shard(&group, shard.count);
            let g = group.clone();
            let done = shard
                .invoke_on(
                    target,
                    move |s| async move { s.groups.complete_txn(&g, pid, commit).await },
                )
                .await;
            if !matches!(done, Ok(Ok(()))) {
                warn!(transactional_id = id, group = %group, "completing transactional offsets failed; will retry");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
        }
        meta.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        meta.last_update_ms = runtime::now_ms();
        self.persist(id, meta.clone())
            .await
            .map_err(|e| storage_fault("complete transaction", &e))?;
        Ok(meta)
    }

    /// Aborts transactions open past their timeout and finishes decisions
    /// left unfinished (by a failure, or a crash before the restart).
    pub async fn tick(&self, shard: &Rc<Shard>) {
        let now = runtime::now_ms();
        self.expire_ids(now).await;
        let due: Vec<(String, bool)> = self
            .txns
            .borrow()
            .iter()
            .filter_map(|(id, m)| match m.state {
                TxnState::Ongoing if now.saturating_sub(m.start_ms) > i64::from(m.timeout_ms) => {
                    Some((id.clone(), true))
                }
                s if s.is_prepare() => Some((id.clone(), false)),
                _ => None,
            })
            .collect();
        for (id, timed_out) in due {
            let lock = self.lock_for(&id);
            let _guard = lock.lock().await;
            let Some(meta) = self.get(&id) else { continue };
            let result = if timed_out && meta.state == TxnState::Ongoing {
                info!(transactional_id = %id, "transaction timed out: aborting it and fencing its producer");
                self.abort_fencing(shard, &id, meta).await
            } else if meta.state.is_prepare() {
                self.finish(shard, &id, meta).await
            } else {
                continue;
            };
            if let Err(e) = result {
                warn!(transactional_id = %id, error = ?e, "could not complete a transaction; will retry");
            }
        }
    }

    /// Forgets ids idle past `transactional.id.expiration.ms` with no
    /// transaction open or being decided.
    async fn expire_ids(&self, now: i64) {
        let idle = |m: &TxnMeta| {
            matches!(
                m.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            ) && now.saturating_sub(m.last_update_ms) >= self.limits.id_expiration_ms
        };
        let expired: Vec<String> = self
            .txns
            .borrow()
            .iter()
            .filter(|(_, m)| idle(m))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            {
                let lock = self.lock_for(&id);
                let _guard = lock.lock().await;
                if !self.get(&id).is_some_and(|m| idle(&m)) {
                    continue;
                }
                match self.write(&id, None).await {
                    Ok(()) => info!(transactional_id = %id, "transactional id expired"),
                    Err(e) => {
                        warn!(transactional_id = %id, error = %e, "could not expire a transactional id; will retry")
                    }
                }
            }
            // Its lock goes too, unless a request holds or awaits it.
            let mut locks = self.locks.borrow_mut();
            if locks.get(&id).is_some_and(|l| !l.is_shared()) {
                locks.remove(&id);
            }
        }
    }

    pub fn describe(&self, id: &str) -> Option<TxnMeta> {
        self.get(id)
    }

    /// Every transactional id on this shard with its state.
    pub fn list(&self) -> Vec<(String, TxnMeta)> {
        self.txns.borrow().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// On a partition's owner: writes a marker to each partition and waits
/// until they are durable. A partition deleted since is skipped.
async fn write_markers(
    shard: &Rc<Shard>,
    parts: Vec<(String, i32)>,
    pid: i64,
    epoch: i16,
    marker: MarkerType,
) -> Result<(), String> {
    let mut waits = Vec::new();
    let metadata = shard.metadata();
    for (t, p) in parts {
        let Some(partition) = shard.partition(&t, p) else {
            // Deleted since: nothing to mark. Not open yet (a restart in
            // progress): the marker must still be written, so retry later.
            if metadata.topic(&t).is_some_and(|m| (0..m.partitions).contains(&p)) {
                return Err(format!("{t}-{p} is not open yet"));
            }
            continue;
        };
        let end = partition
            .write_marker(pid, epoch, marker, 0)
            .await
            .map_err(|e| format!("{t}-{p}: {e}"))?;
        waits.push((partition, end));
    }
    for (partition, end) in waits {
        partition
            .log
            .wait_durable(end)
            .await
            .map_err(|e| format!("{}-{}: {e}", partition.topic, partition.index))?;
    }
    Ok(())
}

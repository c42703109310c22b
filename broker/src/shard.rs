//! A shard: one pinned executor and everything it owns.
//!
//! A shard owns the partitions `metadata::shard_of` assigns it and alone
//! touches their logs. Other shards reach it only by message: a boxed task
//! that runs on this shard and replies over a oneshot channel
//! ([`Shard::invoke_on`]), sent over a bounded channel mesh. A shard's state
//! is `!Send` and lives in `Rc`s; nothing here takes a lock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use sluice_storage::BatchCache;
use sluice_storage::io::dma::DmaFileSystem;
use sluice_storage::local_sync::{LocalNotify, join_bounded};
use tracing::{info, warn};

use crate::config::BrokerConfig;
use crate::controller::Controller;
use crate::metadata::{ClusterMetadata, TopicMeta, partition_dir, shard_of};
use crate::partition::Partition;
use crate::runtime;
use crate::topic_config::effective;

pub type ShardId = usize;

/// Work sent to another shard: runs there, with that shard.
pub type ShardTask = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Cross-shard messages queued per pair of shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Partition logs opened or closed at once when metadata changes.
const PARTITION_OPENS_IN_FLIGHT_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {0} is not running")]
pub struct ShardUnavailable(pub ShardId);

pub struct Shard {
    pub id: ShardId,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    pub fs: DmaFileSystem,
    pub cache: BatchCache,
    metadata: RefCell<Arc<ClusterMetadata>>,
    /// Owned partitions: topic name -> partition index -> partition.
    partitions: RefCell<HashMap<String, BTreeMap<i32, Rc<Partition>>>>,
    senders: Senders<ShardTask>,
    controller: Option<Controller>,
    /// The consumer groups this shard coordinates.
    pub groups: crate::group::GroupCoordinator,
    /// The transactional ids this shard coordinates.
    pub txns: crate::txn::TxnCoordinator,
    /// Producer ids this shard may hand out: `[next, end)`.
    producer_ids: Cell<(i64, i64)>,
    /// Bytes of requests in flight on this shard (`queued.max.request.bytes`).
    pub request_bytes: Rc<Semaphore>,
    pub connections: Cell<usize>,
    ready: Cell<bool>,
    ready_notify: LocalNotify,
    stopping: Cell<bool>,
    stop_notify: LocalNotify,
    /// On shard 0: the shutdown barrier.
    barriers: crate::server::Barriers,
}

impl Shard {
    pub fn new(config: Arc<BrokerConfig>, senders: Senders<ShardTask>) -> Shard {
        let id = senders.peer_id();
        let count = config.shard_count();
        assert_eq!(senders.nr_consumers(), count, "mesh size differs from the shard count");
        Shard {
            id,
            count,
            fs: DmaFileSystem::new(),
            cache: BatchCache::new(config.batch_cache_bytes),
            metadata: RefCell::new(Arc::new(ClusterMetadata::default())),
            partitions: RefCell::new(HashMap::new()),
            senders,
            controller: (id == 0).then(Controller::new),
            groups: crate::group::GroupCoordinator::new(config.group_limits),
            txns: crate::txn::TxnCoordinator::new(config.txn_limits),
            producer_ids: Cell::new((0, 0)),
            request_bytes: Rc::new(Semaphore::new(config.queued_request_bytes_max as u64)),
            connections: Cell::new(0),
            ready: Cell::new(false),
            ready_notify: LocalNotify::default(),
            stopping: Cell::new(false),
            stop_notify: LocalNotify::default(),
            barriers: Default::default(),
            config,
        }
    }

    /// Runs every task other shards send here, each as its own task, in the
    /// order they arrive.
    pub fn serve_mesh(self: &Rc<Self>, mut receivers: Receivers<ShardTask>) {
        for (_, rx) in receivers.streams() {
            let shard = self.clone();
            runtime::spawn_detached(async move {
                while let Some(task) = rx.recv().await {
                    let work = std::panic::AssertUnwindSafe(task(shard.clone()));
                    runtime::spawn_detached(async move {
                        // A panic in forwarded work (a handler's owner-side
                        // part) fails that request, as in the handler
                        // itself, and leaves the shard running: the caller
                        // sees its answer channel dropped.
                        if futures_lite::FutureExt::catch_unwind(work).await.is_err() {
                            tracing::error!("forwarded work panicked; its request fails");
                        }
                    });
                }
            });
        }
    }

    /// Runs `f` on shard `target` and returns its result. Runs in place when
    /// `target` is this shard.
    pub async fn invoke_on<R, F, Fut>(self: &Rc<Self>, target: ShardId, f: F) -> Result<R, ShardUnavailable>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        let task: ShardTask = Box::new(move |shard| {
            Box::pin(async move {
                let _ = tx.send(f(shard).await);
            })
        });
        self.senders
            .send_to(target, task)
            .await
            .map_err(|_| ShardUnavailable(target))?;
        rx.await.map_err(|_| ShardUnavailable(target))
    }

    /// A producer id never handed out before, from this shard's block (a
    /// new block from the controller when it runs out).
    pub async fn new_producer_id(self: &Rc<Self>) -> anyhow::Result<i64> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        let (start, end) = self
            .invoke_on(0, |s| async move { s.controller().allocate_producer_ids(&s).await })
            .await??;
        // Another task of this shard may have refilled meanwhile; the newer
        // block wins and the other's rest is skipped, never reused.
        self.producer_ids.set((start + 1, end));
        Ok(start)
    }

    pub fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("only shard 0 is the controller")
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    pub fn owner_of(&self, topic: &str, partition: i32) -> ShardId {
        shard_of(topic, partition, self.count)
    }

    /// An owned partition.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(topic).and_then(|p| p.get(&index)).cloned()
    }

    pub fn owned_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .flat_map(|p| p.values().cloned())
            .collect()
    }

    /// Takes a new metadata revision: opens logs of new partitions this shard
    /// owns, removes those of deleted topics, applies changed settings.
    pub async fn apply_metadata(self: &Rc<Self>, next: Arc<ClusterMetadata>) {
        if next.revision < self.metadata.borrow().revision {
            return; // an older revision overtaken by a newer one
        }
        let defaults = &self.config.topic_defaults;
        // Partitions to drop: their topic is gone, was re-created under
        // another id, or (after a restart with fewer) no longer exists.
        let mut doomed: Vec<Rc<Partition>> = Vec::new();
        {
            let mut owned = self.partitions.borrow_mut();
            owned.retain(|name, parts| match next.topic(name) {
                Some(t) => {
                    let stale: Vec<i32> = parts
                        .iter()
                        .filter(|(i, p)| p.topic_id != t.id || **i >= t.partitions)
                        .map(|(i, _)| *i)
                        .collect();
                    for i in stale {
                        doomed.extend(parts.remove(&i));
                    }
                    !parts.is_empty()
                }
                None => {
                    doomed.extend(parts.values().cloned());
                    false
                }
            });
        }
        let removals: Vec<_> = doomed
            .into_iter()
            .map(|p| async move {
                info!(topic = %p.topic, partition = p.index, "deleting partition");
                if let Err(e) = p.log.remove().await {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "could not delete partition files");
                }
            })
            .collect();
        join_bounded(removals, PARTITION_OPENS_IN_FLIGHT_MAX).await;

        // Settings of kept partitions; partitions to open.
        let mut to_open: Vec<(Arc<TopicMeta>, i32)> = Vec::new();
        for topic in next.topics.values() {
            let settings = effective(defaults, &topic.configs);
            for index in 0..topic.partitions {
                if self.owner_of(&topic.name, index) != self.id {
                    continue;
                }
                match self.partition(&topic.name, index) {
                    Some(p) => {
                        if p.settings() != settings {
                            p.apply_settings(settings.clone());
                        }
                    }
                    None => to_open.push((topic.clone(), index)),
                }
            }
        }
        let opens: Vec<_> = to_open
            .into_iter()
            .map(|(topic, index)| {
                let shard = self.clone();
                async move {
                    let settings = effective(&shard.config.topic_defaults, &topic.configs);
                    let opened = Partition::open(
                        &shard.fs,
                        &shard.cache,
                        &shard.config.data_dir,
                        &topic.name,
                        topic.id,
                        index,
                        settings,
                    )
                    .await;
                    (topic, index, opened)
                }
            })
            .collect();
        for (topic, index, opened) in join_bounded(opens, PARTITION_OPENS_IN_FLIGHT_MAX).await {
            match opened {
                Ok(p) => {
                    self.partitions
                        .borrow_mut()
                        .entry(topic.name.clone())
                        .or_default()
                        .insert(index, p);
                }
                Err(e) => warn!(
                    topic = %topic.name,
                    partition = index,
                    dir = %partition_dir(&self.config.data_dir, &topic.name, index).display(),
                    error = %e,
                    "could not open partition; it stays offline"
                ),
            }
        }
        self.groups.purge_deleted_topics(&next).await;
        *self.metadata.borrow_mut() = next;
        if !self.ready.replace(true) {
            self.ready_notify.notify_all();
        }
    }

    /// Returns once the first metadata revision has been applied.
    /// Waits for the first metadata; false if the shard was told to stop
    /// first.
    pub async fn wait_ready(&self) -> bool {
        while !self.ready.get() {
            if self.stopping.get() {
                return false;
            }
            futures_lite::future::or(self.ready_notify.listen(), self.stopped()).await;
        }
        true
    }

    pub fn barriers(&self) -> &crate::server::Barriers {
        &self.barriers
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    pub fn begin_stop(&self) {
        if !self.stopping.replace(true) {
            self.stop_notify.notify_all();
        }
    }

    /// Completes when the shard starts stopping.
    pub async fn stopped(&self) {
        while !self.stopping.get() {
            self.stop_notify.listen().await;
        }
    }

    /// Syncs and closes every owned log.
    pub async fn close_partitions(&self) {
        let parts = self.owned_partitions();
        let closes: Vec<_> = parts
            .iter()
            .map(|p| async move {
                if let Err(e) = p.snapshot_producers().await {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "could not snapshot producer state");
                }
                if let Err(e) = p.log.close().await {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "could not close partition cleanly");
                }
            })
            .collect();
        join_bounded(closes, PARTITION_OPENS_IN_FLIGHT_MAX).await;
    }

    /// Group sessions and rebalance deadlines, until the shard stops.
    pub fn start_group_ticker(self: &Rc<Self>) {
        let shard = self.clone();
        runtime::spawn_detached(async move {
            while runtime::timeout(crate::group::TICK_INTERVAL, shard.stopped())
                .await
                .is_none()
            {
                shard.groups.tick().await;
            }
        });
    }

    /// Transaction timeouts and unfinished decisions, until the shard stops.
    pub fn start_txn_ticker(self: &Rc<Self>) {
        let shard = self.clone();
        runtime::spawn_detached(async move {
            while runtime::timeout(crate::txn::TICK_INTERVAL, shard.stopped())
                .await
                .is_none()
            {
                shard.txns.tick(&shard).await;
            }
        });
    }

    /// Retention, forever, at the configured interval.
    pub fn start_retention(self: &Rc<Self>) {
        let shard = self.clone();
        runtime::spawn_detached(async move {
            let interval = std::time::Duration::from_millis(shard.config.retention_check_interval_ms);
            loop {
                if runtime::timeout(interval, shard.stopped()).await.is_some() {
                    return;
                }
                for p in shard.owned_partitions() {
                    match p.log.enforce_retention(runtime::now_ms()).await {
                        Ok(0) => {}
                        Ok(n) => {
                            info!(topic = %p.topic, partition = p.index, segments = n, "retention deleted segments")
                        }
                        // Closed: the topic is going, or the log stopped for good.
                        Err(sluice_storage::StorageError::Closed) => {}
                        Err(e) => warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed"),
                    }
                    glommio::yield_if_needed().await;
                }
            }
        });
    }
}

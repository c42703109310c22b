//! Starting and stopping the broker.
//!
//! Start: lock the data directory, load (or create) the cluster metadata,
//! start one pinned executor per shard, each of which faults in its share
//! of memory (`memory.rs`), join them into a channel mesh. Shard
//! 0 persists the metadata and applies it on every shard (each opens the
//! logs it owns); only then does each shard bind the listen address
//! (SO_REUSEPORT: the kernel spreads connections over the shards) and
//! accept clients.
//!
//! Stop (SIGTERM or SIGINT): every shard stops accepting and stops reading
//! requests; requests in flight finish and their responses go out. When all
//! shards have drained (requests may span shards), each syncs and closes its
//! logs, and the process exits 0.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use glommio::{LocalExecutorBuilder, Placement};
use signal_hook::consts::{SIGINT, SIGTERM};
use sluice_storage::io::workers::BOUNDED_WORKERS_PER_SHARD;
use sluice_storage::local_sync::LocalNotify;
use tracing::{debug, error, info, warn};

use crate::config::BrokerConfig;
use crate::connection;
use crate::controller;
use crate::memory;
use crate::metadata::{ClusterMetadata, MetadataFile, metadata_path, new_cluster_id};
use crate::runtime;
use crate::shard::{MESH_CHANNEL_CAPACITY, Shard, ShardTask};
use crate::watchdog::{self, Watchdog};

/// glommio's registered DMA memory per shard: sized for a few partitions'
/// write buffers in flight; beyond it buffers come from the heap.
const IO_MEMORY_BYTES: usize = 64 << 20;
/// How long shards have to join the mesh at start.
const MESH_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shard waits at start for the others to open their logs.
const OPEN_BARRIER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a stopping shard waits for the others to drain before closing
/// its logs anyway (a shard that failed never arrives).
const DRAIN_BARRIER_TIMEOUT: Duration = Duration::from_secs(30);

/// Reports its shard as failed when dropped armed: on an error return, and
/// on a panic unwinding the shard's thread.
struct FailureReport(Option<(std::sync::mpsc::Sender<StopCause>, usize)>);

impl Drop for FailureReport {
    fn drop(&mut self) {
        if let Some((tx, shard)) = self.0.take() {
            let _ = tx.send(StopCause::ShardFailed(shard));
        }
    }
}

/// Why the broker stops.
enum StopCause {
    Signal(i32),
    ShardFailed(usize),
}

pub fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(config.data_dir.join("topics"))
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    std::fs::create_dir_all(config.data_dir.join("cluster"))?;
    let lock_path = config.data_dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.try_lock()
        .map_err(|_| anyhow::anyhow!("{} is in use by another broker", config.data_dir.display()))?;

    let metadata = load_metadata(&config)?;
    remove_orphan_partitions(&config, &metadata);
    info!(
        cluster_id = %metadata.cluster_id,
        node_id = config.node_id,
        topics = metadata.topics.len(),
        shards = config.shard_count(),
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        "starting"
    );

    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let mesh: MeshBuilder<ShardTask, _> = MeshBuilder::full(config.shard_count(), MESH_CHANNEL_CAPACITY);
    let mut stops = Vec::new();
    let mut handles = Vec::new();
    let (stop_cause_tx, stop_cause_rx) = std::sync::mpsc::channel::<StopCause>();
    let (watchdog, ping_receivers) = Watchdog::start(
        config.shard_count(),
        watchdog::PING_INTERVAL,
        watchdog::STALL_REPORT_AFTER,
    )
    .context("starting the watchdog")?;
    for ((index, cpu), pings) in config.shard_cpus.iter().copied().enumerate().zip(ping_receivers) {
        let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<()>();
        stops.push(stop_tx);
        let config = config.clone();
        let mesh = mesh.clone();
        let initial = (index == 0).then(|| metadata.clone());
        let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
        let failed = stop_cause_tx.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let _pings = pings.serve();
                // The others stop too when this shard fails or panics: a
                // broker missing a shard cannot serve its partitions.
                let mut guard = FailureReport(Some((failed, index)));
                // Before the shard's first file operation, so that every
                // io worker it gets is placed. The kernel may clamp the
                // worker limit (to RLIMIT_NPROC): what it took is logged.
                // Kernels before 5.15 lack the call and keep their default.
                match sluice_storage::io::workers::set_bounded_max_for_current_thread(BOUNDED_WORKERS_PER_SHARD) {
                    Ok((was, now)) => debug!(shard = index, was, now, "io worker limit"),
                    Err(e) => {
                        warn!(shard = index, error = %e, "cannot raise the io worker limit; fdatasyncs may queue")
                    }
                }
                if let Some(cpus) = &config.io_cpus {
                    sluice_storage::io::workers::set_for_current_thread(cpus)
                        .with_context(|| format!("placing shard {index}'s io workers on CPUs {cpus:?}"))?;
                }
                // Before the logs open, so that their buffers come from it.
                if config.memory_prefault_bytes > 0 {
                    let took = memory::prefault(config.memory_prefault_bytes).await;
                    info!(
                        shard = index,
                        bytes = config.memory_prefault_bytes,
                        ?took,
                        "memory faulted in"
                    );
                }
                let result = shard_main(config, mesh, initial, stop_rx).await;
                if result.is_ok() {
                    guard.0 = None;
                }
                result
            })
            .map_err(|e| anyhow::anyhow!("starting shard {index} on CPU {cpu:?}: {e}"));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Shards already started wait in the mesh join for this one.
                error!("{e:#}");
                std::process::exit(1);
            }
        }
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = stop_cause_tx.send(StopCause::Signal(signal));
            }
        })
        .context("starting the signal thread")?;
    std::thread::Builder::new()
        .name("stopper".into())
        .spawn(move || {
            match stop_cause_rx.recv() {
                Ok(StopCause::Signal(signal)) => info!(signal, "stopping"),
                Ok(StopCause::ShardFailed(shard)) => error!(shard, "a shard failed: stopping the others"),
                Err(_) => return,
            }
            for stop in stops {
                let _ = stop.send(());
            }
        })
        .context("starting the stopper thread")?;
    let mut failed = false;
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(shard = index, "shard failed: {e:#}");
                failed = true;
            }
            Err(e) => {
                error!(shard = index, "shard thread failed: {e:?}");
                failed = true;
            }
        }
    }
    let stalls = watchdog.stalls_reported();
    if stalls > 0 {
        warn!(stalls, "shards stalled during this run: see the watchdog's warnings");
    }
    drop(watchdog);
    drop(lock);
    if failed {
        anyhow::bail!("a shard failed");
    }
    info!("stopped");
    Ok(())
}

fn load_metadata(config: &BrokerConfig) -> anyhow::Result<ClusterMetadata> {
    let path = metadata_path(&config.data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let file = MetadataFile::parse(&bytes).with_context(|| format!("reading {}", path.display()))?;
            if file.node_id != config.node_id {
                anyhow::bail!(
                    "{} belongs to node {}, not node {} (--node-id)",
                    config.data_dir.display(),
                    file.node_id,
                    config.node_id
                );
            }
            Ok(file.into_metadata())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClusterMetadata {
            revision: 0,
            cluster_id: new_cluster_id(),
            ..Default::default()
        }),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Partition directories of topics that no longer exist: a delete that a
/// crash interrupted after the metadata changed.
fn remove_orphan_partitions(config: &BrokerConfig, metadata: &ClusterMetadata) {
    let Ok(entries) = std::fs::read_dir(config.data_dir.join("topics")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = name.rsplit_once('-').is_some_and(|(topic, p)| {
            p.parse::<i32>()
                .ok()
                .zip(metadata.topic(topic))
                .is_some_and(|(p, t)| p < t.partitions)
        });
        if !known {
            warn!(dir = %entry.path().display(), "removing the files of a deleted partition");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                warn!(dir = %entry.path().display(), error = %e, "could not remove");
            }
        }
    }
}

async fn shard_main(
    config: Arc<BrokerConfig>,
    mesh: MeshBuilder<ShardTask, glommio::channels::channel_mesh::Full>,
    initial: Option<ClusterMetadata>,
    stop: futures_channel::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let (senders, receivers) = runtime::timeout(MESH_JOIN_TIMEOUT, mesh.join())
        .await
        .context("shards did not all start")?
        .map_err(|_| anyhow::anyhow!("joining the shard mesh failed"))?;
    let shard = Rc::new(Shard::new(config.clone(), senders));
    shard.serve_mesh(receivers);
    {
        let shard = shard.clone();
        runtime::spawn_detached(async move {
            let _ = stop.await;
            shard.begin_stop();
        });
    }
    if let Some(initial) = initial {
        shard.controller().set_producer_id_next(initial.producer_id_next);
        let initial = Arc::new(initial);
        controller::persist(&shard, &initial).await?;
        controller::broadcast(&shard, initial).await?;
    }
    if !shard.wait_ready().await {
        info!(shard = shard.id, "stopped before the cluster metadata arrived");
        return Ok(());
    }
    shard.groups.open(&shard).await.context("opening the group logs")?;
    shard.groups.purge_deleted_topics(&shard.metadata()).await;
    shard.txns.open(&shard).await.context("opening the transaction logs")?;
    // Clients come only once every shard has its partitions and
    // coordinators open: a request forwarded to another shard finds them
    // there, and a transaction finished after a restart finds its
    // partitions.
    let opened = futures_lite::future::or(all_shards_reach(&shard, |b| &b.opened, OPEN_BARRIER_TIMEOUT), async {
        shard.stopped().await;
        false
    })
    .await;
    if !opened {
        if shard.is_stopping() {
            info!(shard = shard.id, "stopped before every shard had opened");
            shard.close_partitions().await;
            shard.groups.close().await;
            shard.txns.close().await;
            return Ok(());
        }
        anyhow::bail!("other shards did not finish opening");
    }
    shard.start_retention();
    shard.start_group_ticker();
    shard.start_txn_ticker();

    let listener = TcpListener::bind(config.listen).map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
    info!(shard = shard.id, listen = %config.listen, partitions = shard.owned_partitions().len(), "accepting clients");
    let gate = Gate::new();
    let per_shard_max = config.connections_max.div_ceil(shard.count);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopped().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                warn!(shard = shard.id, error = %e, "accept failed");
                runtime::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        if shard.connections.get() >= per_shard_max {
            warn!(shard = shard.id, %peer, limit = per_shard_max, "too many connections: closing a new one");
            drop(stream);
            continue;
        }
        shard.connections.set(shard.connections.get() + 1);
        let conn_shard = shard.clone();
        let spawned = gate.spawn(async move {
            connection::serve(conn_shard.clone(), stream, peer).await;
            conn_shard.connections.set(conn_shard.connections.get() - 1);
        });
        if let Ok(task) = spawned {
            task.detach();
        }
    }
    drop(listener);
    // In-flight requests finish; their responses go out.
    let _ = gate.close().await;
    // Every shard must have drained before logs close: a request drained
    // here may still append to a partition another shard owns.
    if !all_shards_reach(&shard, |b| &b.drained, DRAIN_BARRIER_TIMEOUT).await {
        warn!(
            shard = shard.id,
            "other shards did not all drain: closing the logs anyway"
        );
    }
    shard.close_partitions().await;
    shard.groups.close().await;
    shard.txns.close().await;
    info!(shard = shard.id, "shard stopped");
    Ok(())
}

/// A point every shard must reach before any goes on, kept on shard 0.
#[derive(Default)]
pub struct Barrier {
    arrived: Cell<usize>,
    notify: LocalNotify,
}

/// The barriers of a shard's life: all opened (before accepting clients),
/// all drained (before closing logs).
#[derive(Default)]
pub struct Barriers {
    pub opened: Barrier,
    pub drained: Barrier,
}

impl Barrier {
    /// Counts this call; completes once `count` calls have arrived.
    pub async fn arrive(&self, count: usize) {
        self.arrived.set(self.arrived.get() + 1);
        self.notify.notify_all();
        while self.arrived.get() < count {
            self.notify.listen().await;
        }
    }
}

/// Waits on shard 0's barrier `pick` until every shard has arrived, or
/// `timeout`. False if it gave up (a shard failed, or is gone).
async fn all_shards_reach(shard: &Rc<Shard>, pick: fn(&Barriers) -> &Barrier, timeout: Duration) -> bool {
    let arrived = runtime::timeout(
        timeout,
        shard.invoke_on(0, move |s| async move {
            assert_eq!(s.id, 0, "barriers live on shard 0");
            pick(s.barriers()).arrive(s.count).await
        }),
    )
    .await;
    matches!(arrived, Some(Ok(())))
}

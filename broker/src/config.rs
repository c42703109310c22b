//! Broker settings: command-line flags, each also settable by a `SLUICE_*`
//! environment variable and in a TOML file given by `--config`. A flag beats
//! its variable, which beats the file, which beats the default.
//!
//! Topic defaults keep Kafka's broker setting names (`log.segment.bytes`,
//! `num.partitions`...), so they read the same as in a Kafka `server.properties`.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{ArgAction, CommandFactory, Parser};

use crate::cpuset::parse_cpu_list;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a thread-per-core event broker that speaks the Kafka protocol",
    args_override_self = true
)]
pub struct Cli {
    /// TOML file with any of these settings, by their long names
    /// (`listen = "0.0.0.0:9092"`, `"log.segment.bytes" = 536870912`).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to accept Kafka clients on (HOST:PORT).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: String,

    /// Address clients are told to connect to (HOST:PORT) [default: the listen address].
    #[arg(long = "advertised-listener", env = "SLUICE_ADVERTISED_LISTENER")]
    pub advertised_listener: Option<String>,

    /// Directory for logs and cluster metadata.
    #[arg(long = "data-dir", env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    pub data_dir: PathBuf,

    /// Number of shards, one executor each [default: the CPUs in --cpuset, else every online CPU].
    #[arg(long, env = "SLUICE_CORES")]
    pub cores: Option<usize>,

    /// CPUs to pin shards to, shard i on the i-th CPU of the list, like `0-3,8`
    /// [default: shard i on online CPU i; `none` leaves shards unpinned].
    #[arg(long, env = "SLUICE_CPUSET")]
    pub cpuset: Option<String>,

    /// CPUs for the kernel threads that run each shard's blocking file
    /// operations (fdatasync, writes into new extents), like `2-3`
    /// [default: wherever the shard itself may run].
    #[arg(long = "io-cpuset", env = "SLUICE_IO_CPUSET")]
    pub io_cpuset: Option<String>,

    /// This broker's node id.
    #[arg(long = "node-id", env = "SLUICE_NODE_ID", default_value_t = 1)]
    pub node_id: i32,

    /// Largest request accepted; a bigger frame closes the connection.
    #[arg(
        long = "socket.request.max.bytes",
        env = "SLUICE_SOCKET_REQUEST_MAX_BYTES",
        default_value_t = 104_857_600
    )]
    pub socket_request_max_bytes: usize,

    /// Bytes of requests in flight per shard; connections stop being read beyond it.
    #[arg(
        long = "queued.max.request.bytes",
        env = "SLUICE_QUEUED_MAX_REQUEST_BYTES",
        default_value_t = 268_435_456
    )]
    pub queued_max_request_bytes: usize,

    /// Requests in flight per connection (pipelined); reading pauses beyond it.
    #[arg(
        long = "max.inflight.requests.per.connection",
        env = "SLUICE_MAX_INFLIGHT_REQUESTS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_inflight_requests_per_connection: usize,

    /// Client connections per broker; further ones are closed at once.
    #[arg(long = "max.connections", env = "SLUICE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest fetch response, whatever the client asks for.
    #[arg(
        long = "fetch.max.bytes",
        env = "SLUICE_FETCH_MAX_BYTES",
        default_value_t = 57_671_680
    )]
    pub fetch_max_bytes: usize,

    /// Cache of recently written batches, per shard, for consumers near the
    /// tail. Default: 512 MiB per shard, or less where the shards' caches
    /// would pass an eighth of the memory this process may use (the
    /// machine's, or its cgroups' limit if lower); at least 64 MiB.
    #[arg(long = "batch.cache.bytes", env = "SLUICE_BATCH_CACHE_BYTES")]
    pub batch_cache_bytes: Option<usize>,

    /// Memory each shard faults in before it serves, so that the first
    /// requests do not pay to fault in what the shard will hold (its batch
    /// cache, request buffers, requests in flight, write buffers). Freed
    /// memory is kept for reuse, so the process holds its high-water mark.
    /// Default: 1.5 GiB per shard, or less where the shards' share would
    /// pass a quarter of the memory this process may use. 0 turns it off.
    #[arg(long = "memory.prefault.bytes", env = "SLUICE_MEMORY_PREFAULT_BYTES")]
    pub memory_prefault_bytes: Option<usize>,

    /// How often retention runs.
    #[arg(
        long = "log.retention.check.interval.ms",
        env = "SLUICE_LOG_RETENTION_CHECK_INTERVAL_MS",
        default_value_t = 300_000
    )]
    pub log_retention_check_interval_ms: u64,

    /// Shortest session timeout a consumer group member may ask for.
    #[arg(
        long = "group.min.session.timeout.ms",
        env = "SLUICE_GROUP_MIN_SESSION_TIMEOUT_MS",
        default_value_t = 6000
    )]
    pub group_min_session_timeout_ms: u64,

    /// Longest session timeout a consumer group member may ask for.
    #[arg(
        long = "group.max.session.timeout.ms",
        env = "SLUICE_GROUP_MAX_SESSION_TIMEOUT_MS",
        default_value_t = 1_800_000
    )]
    pub group_max_session_timeout_ms: u64,

    /// How long a new group's first rebalance waits for more members.
    #[arg(
        long = "group.initial.rebalance.delay.ms",
        env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 3000
    )]
    pub group_initial_rebalance_delay_ms: u64,

    /// Members a consumer group may have.
    #[arg(long = "group.max.size", env = "SLUICE_GROUP_MAX_SIZE", default_value_t = 10_000)]
    pub group_max_size: usize,

    /// Longest transaction timeout a producer may ask for.
    #[arg(
        long = "transaction.max.timeout.ms",
        env = "SLUICE_TRANSACTION_MAX_TIMEOUT_MS",
        default_value_t = 900_000
    )]
    pub transaction_max_timeout_ms: u32,

    /// A transactional id with no transaction open and no activity for this
    /// long is forgotten.
    #[arg(
        long = "transactional.id.expiration.ms",
        env = "SLUICE_TRANSACTIONAL_ID_EXPIRATION_MS",
        default_value_t = 604_800_000
    )]
    pub transactional_id_expiration_ms: u64,

    /// Default partition count of new topics.
    #[arg(long = "num.partitions", env = "SLUICE_NUM_PARTITIONS", default_value_t = 1)]
    pub num_partitions: i32,

    /// Default replication factor of new topics (1 on a single node).
    #[arg(
        long = "default.replication.factor",
        env = "SLUICE_DEFAULT_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub default_replication_factor: i16,

    /// Create a topic when a client asks for its metadata and allows it.
    #[arg(long = "auto.create.topics.enable", env = "SLUICE_AUTO_CREATE_TOPICS_ENABLE", default_value_t = true, action = ArgAction::Set)]
    pub auto_create_topics_enable: bool,

    /// Default `segment.bytes`: segments roll at this size.
    #[arg(
        long = "log.segment.bytes",
        env = "SLUICE_LOG_SEGMENT_BYTES",
        default_value_t = 1_073_741_824
    )]
    pub log_segment_bytes: i64,

    /// Default `segment.ms`: segments roll at this age.
    #[arg(long = "log.roll.ms", env = "SLUICE_LOG_ROLL_MS", default_value_t = 604_800_000)]
    pub log_roll_ms: i64,

    /// Default `retention.ms` (-1: keep forever).
    #[arg(
        long = "log.retention.ms",
        env = "SLUICE_LOG_RETENTION_MS",
        default_value_t = 604_800_000
    )]
    pub log_retention_ms: i64,

    /// Default `retention.bytes` per partition (-1: no limit).
    #[arg(long = "log.retention.bytes", env = "SLUICE_LOG_RETENTION_BYTES", default_value_t = -1)]
    pub log_retention_bytes: i64,

    /// Keep the file of the newest segment retention or DeleteRecords
    /// deleted, per partition, and write the partition's next segment into
    /// it: overwriting written blocks costs the disk about half of writing
    /// fresh space. A partition then holds up to one segment more than its
    /// retention. Sluice's own setting.
    #[arg(long = "log.segment.recycle", env = "SLUICE_LOG_SEGMENT_RECYCLE", default_value_t = true, action = ArgAction::Set)]
    pub log_segment_recycle: bool,

    /// Default `index.interval.bytes`: bytes between sparse index entries.
    #[arg(
        long = "log.index.interval.bytes",
        env = "SLUICE_LOG_INDEX_INTERVAL_BYTES",
        default_value_t = 4096
    )]
    pub log_index_interval_bytes: i64,

    /// Default `max.message.bytes`: the largest record batch accepted.
    #[arg(
        long = "message.max.bytes",
        env = "SLUICE_MESSAGE_MAX_BYTES",
        default_value_t = 1_048_588
    )]
    pub message_max_bytes: i64,

    /// Default `cleanup.policy` (only `delete` is supported).
    #[arg(
        long = "log.cleanup.policy",
        env = "SLUICE_LOG_CLEANUP_POLICY",
        default_value = "delete"
    )]
    pub log_cleanup_policy: String,
}

/// Defaults for topic settings; a topic's own settings override them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDefaults {
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub auto_create: bool,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub index_interval_bytes: i64,
    pub max_message_bytes: i64,
    pub cleanup_policy: String,
    /// Deleted segments' files are written into again (not a topic config).
    pub recycle_segments: bool,
}

/// Validated settings, shared read-only by every shard.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
    /// One entry per shard: the CPU it is pinned to, if any.
    pub shard_cpus: Vec<Option<usize>>,
    /// CPUs for the shards' io_uring worker threads, if set.
    pub io_cpus: Option<Vec<usize>>,
    pub node_id: i32,
    pub request_bytes_max: usize,
    pub queued_request_bytes_max: usize,
    pub inflight_requests_per_connection_max: usize,
    pub connections_max: usize,
    pub fetch_bytes_max: usize,
    pub batch_cache_bytes: usize,
    pub memory_prefault_bytes: usize,
    pub retention_check_interval_ms: u64,
    pub topic_defaults: TopicDefaults,
    pub group_limits: crate::group::state::GroupLimits,
    pub txn_limits: crate::txn::TxnLimits,
}

impl BrokerConfig {
    pub fn shard_count(&self) -> usize {
        self.shard_cpus.len()
    }

    /// Reads flags, environment and the `--config` file.
    pub fn load() -> anyhow::Result<BrokerConfig> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let cli = Cli::parse_from(with_file_settings(args)?);
        BrokerConfig::from_cli(cli)
    }

    pub fn from_cli(cli: Cli) -> anyhow::Result<BrokerConfig> {
        let listen = resolve(&cli.listen).with_context(|| format!("--listen {}", cli.listen))?;
        let advertised = cli.advertised_listener.clone().unwrap_or_else(|| listen.to_string());
        let (host, port) = advertised
            .rsplit_once(':')
            .with_context(|| format!("--advertised-listener {advertised} is not HOST:PORT"))?;
        let advertised_port: u16 = port
            .parse()
            .with_context(|| format!("--advertised-listener {advertised}: bad port"))?;
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shard_cpus = match cli.cpuset.as_deref() {
            Some("none") => vec![None; cli.cores.unwrap_or(online).max(1)],
            Some(list) => {
                let cpus = parse_cpu_list(list).with_context(|| format!("--cpuset {list}"))?;
                let cores = cli.cores.unwrap_or(cpus.len());
                if cores == 0 || cores > cpus.len() {
                    bail!(
                        "--cores {cores} needs between 1 and {} CPUs from --cpuset {list}",
                        cpus.len()
                    );
                }
                cpus.into_iter().take(cores).map(Some).collect()
            }
            None => {
                let cores = cli.cores.unwrap_or(online);
                if cores == 0 {
                    bail!("--cores must be at least 1");
                }
                // More shards than CPUs would pin two to one core: leave
                // them to the scheduler instead.
                (0..cores).map(|i| (cores <= online).then_some(i)).collect()
            }
        };
        let io_cpus = cli
            .io_cpuset
            .as_deref()
            .map(|list| parse_cpu_list(list).with_context(|| format!("--io-cpuset {list}")))
            .transpose()?;
        let defaults = TopicDefaults {
            num_partitions: cli.num_partitions,
            replication_factor: cli.default_replication_factor,
            auto_create: cli.auto_create_topics_enable,
            segment_bytes: cli.log_segment_bytes,
            segment_ms: cli.log_roll_ms,
            retention_ms: cli.log_retention_ms,
            retention_bytes: cli.log_retention_bytes,
            index_interval_bytes: cli.log_index_interval_bytes,
            max_message_bytes: cli.message_max_bytes,
            cleanup_policy: cli.log_cleanup_policy.clone(),
            recycle_segments: cli.log_segment_recycle,
        };
        if defaults.num_partitions < 1 {
            bail!("num.partitions must be at least 1");
        }
        if defaults.replication_factor != 1 {
            bail!("default.replication.factor must be 1 on a single node");
        }
        crate::topic_config::validate_defaults(&defaults)?;
        if cli.socket_request_max_bytes < 1024 {
            bail!("socket.request.max.bytes must be at least 1024");
        }
        if cli.queued_max_request_bytes < cli.socket_request_max_bytes {
            bail!("queued.max.request.bytes must be at least socket.request.max.bytes");
        }
        if cli.group_min_session_timeout_ms > cli.group_max_session_timeout_ms {
            bail!("group.min.session.timeout.ms is above group.max.session.timeout.ms");
        }
        if cli.max_inflight_requests_per_connection == 0 || cli.max_connections == 0 {
            bail!("max.inflight.requests.per.connection and max.connections must be positive");
        }
        let shard_cpus_len = shard_cpus.len();
        // Read from /proc and the cgroup files once, for both defaults that
        // need it.
        let memory = (cli.batch_cache_bytes.is_none() || cli.memory_prefault_bytes.is_none())
            .then(usable_memory_bytes)
            .flatten();
        Ok(BrokerConfig {
            listen,
            advertised_host: host.to_string(),
            advertised_port: i32::from(advertised_port),
            data_dir: cli.data_dir,
            shard_cpus,
            io_cpus,
            node_id: cli.node_id,
            request_bytes_max: cli.socket_request_max_bytes,
            queued_request_bytes_max: cli.queued_max_request_bytes,
            inflight_requests_per_connection_max: cli.max_inflight_requests_per_connection,
            connections_max: cli.max_connections,
            fetch_bytes_max: cli.fetch_max_bytes.max(1024),
            batch_cache_bytes: cli
                .batch_cache_bytes
                .unwrap_or_else(|| default_batch_cache_bytes(memory, shard_cpus_len)),
            memory_prefault_bytes: cli
                .memory_prefault_bytes
                .unwrap_or_else(|| default_memory_prefault_bytes(memory, shard_cpus_len)),
            retention_check_interval_ms: cli.log_retention_check_interval_ms.max(100),
            topic_defaults: defaults,
            group_limits: crate::group::state::GroupLimits {
                session_timeout_min: std::time::Duration::from_millis(cli.group_min_session_timeout_ms),
                session_timeout_max: std::time::Duration::from_millis(cli.group_max_session_timeout_ms),
                initial_rebalance_delay: std::time::Duration::from_millis(cli.group_initial_rebalance_delay_ms),
                members_max: cli.group_max_size.max(1),
            },
            txn_limits: crate::txn::TxnLimits {
                timeout_max_ms: cli.transaction_max_timeout_ms.clamp(1, i32::MAX as u32) as i32,
                id_expiration_ms: cli.transactional_id_expiration_ms.min(i64::MAX as u64) as i64,
            },
        })
    }
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

/// Puts the `--config` file's settings before the real arguments, as flags,
/// except those whose environment variable is set (the variable wins).
fn with_file_settings(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let path = config_path(&args).or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from));
    let Some(path) = path else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    let mut settings = Vec::new();
    flatten("", &toml::Value::Table(table), &mut settings)?;
    let command = Cli::command();
    let mut out = vec![args.first().cloned().unwrap_or_else(|| "sluice".into())];
    for (key, value) in settings {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .with_context(|| format!("{}: unknown setting {key:?}", path.display()))?;
        if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            continue;
        }
        out.push(format!("--{key}={value}").into());
    }
    out.extend(args.into_iter().skip(1));
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(a) = iter.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// `a.b = 1` and `"a.b" = 1` both become `("a.b", "1")`.
fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.to_string(), i.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.to_string(), b.to_string())),
        toml::Value::Float(f) => out.push((prefix.to_string(), f.to_string())),
        other => bail!("setting {prefix}: unsupported value {other}"),
    }
    Ok(())
}

/// The default batch cache of each shard: `BATCH_CACHE_BYTES_DEFAULT`,
/// within an eighth of `memory` (if known) split among the shards, and at
/// least `BATCH_CACHE_BYTES_MIN`. Kafka serves the tail from the page cache,
/// which has all free memory; a consumer half a second behind a producer
/// writing 1 GB/s to a shard should still read from memory, not from the
/// disk, where its reads would compete with the producer's writes.
fn default_batch_cache_bytes(memory: Option<u64>, shards: usize) -> usize {
    let share = memory.map_or(u64::MAX, |m| m / 8 / shards.max(1) as u64);
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    share.clamp(BATCH_CACHE_BYTES_MIN, BATCH_CACHE_BYTES_DEFAULT)
}

const BATCH_CACHE_BYTES_DEFAULT: usize = 512 << 20;
const BATCH_CACHE_BYTES_MIN: usize = 64 << 20;

/// The default prefault of each shard: `MEMORY_PREFAULT_BYTES_DEFAULT`,
/// within a quarter of `memory` (if known) split among the shards. A shard
/// with the default limits serving half its maximum produce rate reached
/// 1.1 GB; faulting in 768 MiB left stalls of most of a second a few
/// seconds in, where it ran past that (docs/PERFORMANCE.md, stop 23).
fn default_memory_prefault_bytes(memory: Option<u64>, shards: usize) -> usize {
    let share = memory.map_or(u64::MAX, |m| m / 4 / shards.max(1) as u64);
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .min(MEMORY_PREFAULT_BYTES_DEFAULT)
}

const MEMORY_PREFAULT_BYTES_DEFAULT: usize = 1536 << 20;

/// Memory this process may use: the machine's, or the lowest limit of its
/// cgroup and the cgroups above it, if that is lower.
fn usable_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf reads system constants; no memory is touched.
    let (pages, page_bytes) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let machine = (pages > 0 && page_bytes > 0).then(|| pages as u64 * page_bytes as u64);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|membership| cgroup_memory_limit(&membership, |path| std::fs::read_to_string(path).ok()));
    machine.into_iter().chain(cgroup).min()
}

/// The lowest memory limit of this process's cgroup and the cgroups above
/// it, from `/proc/self/cgroup` (`membership`): `memory.max` under cgroup v2,
/// `memory.limit_in_bytes` under v1's memory controller (whose "no limit" is
/// a huge number, which the machine's size then undercuts). `read` reads a
/// file. Inside a cgroup namespace the path is `/`, and the namespace's root
/// holds the limit.
fn cgroup_memory_limit(membership: &str, read: impl Fn(&Path) -> Option<String>) -> Option<u64> {
    let (root, own, file) = membership
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers.split(',').any(|c| c == "memory").then_some((
                "/sys/fs/cgroup/memory",
                path,
                "memory.limit_in_bytes",
            ))
        })
        .or_else(|| {
            let path = membership.lines().find_map(|line| line.strip_prefix("0::"))?;
            Some(("/sys/fs/cgroup", path, "memory.max"))
        })?;
    Path::new(own.trim())
        .ancestors()
        .filter_map(|dir| read(&Path::new(root).join(dir.strip_prefix("/").unwrap_or(dir)).join(file)))
        .filter_map(|limit| limit.trim().parse::<u64>().ok())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> BrokerConfig {
        BrokerConfig::from_cli(Cli::parse_from(args)).unwrap()
    }

    #[test]
    fn the_batch_cache_defaults_to_512_mib_a_shard_within_an_eighth_of_memory() {
        const GIB: u64 = 1 << 30;
        assert_eq!(default_batch_cache_bytes(Some(24 * GIB), 2), 512 << 20);
        assert_eq!(default_batch_cache_bytes(Some(8 * GIB), 4), 256 << 20);
        assert_eq!(default_batch_cache_bytes(Some(GIB), 4), BATCH_CACHE_BYTES_MIN);
        assert_eq!(default_batch_cache_bytes(None, 1), BATCH_CACHE_BYTES_DEFAULT);
        let memory = usable_memory_bytes().expect("this machine's memory");
        let c = parse(&["sluice", "--cores", "1", "--cpuset", "none"]);
        let expected = (memory / 8).clamp(BATCH_CACHE_BYTES_MIN as u64, BATCH_CACHE_BYTES_DEFAULT as u64);
        assert_eq!(c.batch_cache_bytes as u64, expected);
        let c = parse(&["sluice", "--batch.cache.bytes", "1048576"]);
        assert_eq!(c.batch_cache_bytes, 1 << 20);
    }

    #[test]
    fn the_prefault_defaults_to_1_5_gib_a_shard_within_a_quarter_of_memory() {
        const GIB: u64 = 1 << 30;
        assert_eq!(default_memory_prefault_bytes(Some(24 * GIB), 2), 1536 << 20);
        assert_eq!(default_memory_prefault_bytes(Some(8 * GIB), 4), 512 << 20);
        assert_eq!(default_memory_prefault_bytes(Some(GIB), 2), 128 << 20);
        assert_eq!(default_memory_prefault_bytes(None, 1), MEMORY_PREFAULT_BYTES_DEFAULT);
        let memory = usable_memory_bytes().expect("this machine's memory");
        let c = parse(&["sluice", "--cores", "2", "--cpuset", "none"]);
        let expected = (memory / 8).min(MEMORY_PREFAULT_BYTES_DEFAULT as u64);
        assert_eq!(c.memory_prefault_bytes as u64, expected);
        let c = parse(&["sluice", "--memory.prefault.bytes", "0"]);
        assert_eq!(c.memory_prefault_bytes, 0);
    }

    /// A reader of files that holds only `files` (path, contents).
    fn fake_files(files: &'static [(&'static str, &'static str)]) -> impl Fn(&Path) -> Option<String> {
        move |path| {
            files
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, c)| c.to_string())
        }
    }

    #[test]
    fn the_memory_limit_is_the_lowest_of_the_cgroup_and_those_above_it() {
        let v2 = fake_files(&[
            ("/sys/fs/cgroup/system.slice/sluice.service/memory.max", "max\n"),
            ("/sys/fs/cgroup/system.slice/memory.max", "8589934592\n"),
            ("/sys/fs/cgroup/memory.max", "17179869184\n"),
        ]);
        assert_eq!(
            cgroup_memory_limit("0::/system.slice/sluice.service\n", &v2),
            Some(8 << 30)
        );
        assert_eq!(cgroup_memory_limit("0::/\n", &v2), Some(16 << 30));
        assert_eq!(cgroup_memory_limit("0::/other.slice\n", fake_files(&[])), None);
        // cgroup v1's memory controller, as on hosts in hybrid mode.
        let v1 = fake_files(&[
            (
                "/sys/fs/cgroup/memory/jobs/a/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            ("/sys/fs/cgroup/memory/jobs/memory.limit_in_bytes", "4294967296\n"),
        ]);
        assert_eq!(
            cgroup_memory_limit("5:devices:/\n4:memory:/jobs/a\n0::/\n", &v1),
            Some(4 << 30)
        );
        assert_eq!(cgroup_memory_limit("4:cpu,memory:/jobs/a\n", &v1), Some(4 << 30));
        assert_eq!(cgroup_memory_limit("4:cpu:/jobs/a\n", &v1), None);
    }

    #[test]
    fn defaults_describe_a_single_local_broker() {
        let c = parse(&["sluice"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!((c.advertised_host.as_str(), c.advertised_port), ("127.0.0.1", 9092));
        assert_eq!(c.data_dir, PathBuf::from("./sluice-data"));
        assert_eq!(c.topic_defaults.segment_bytes, 1 << 30);
        assert!(c.topic_defaults.auto_create);
        assert!(c.shard_count() >= 1);
    }

    #[test]
    fn cpuset_pins_shards_in_order() {
        let c = parse(&["sluice", "--cpuset", "0-1", "--cores", "2"]);
        assert_eq!(c.shard_cpus, vec![Some(0), Some(1)]);
        let c = parse(&["sluice", "--cpuset", "none", "--cores", "3"]);
        assert_eq!(c.shard_cpus, vec![None, None, None]);
        assert!(BrokerConfig::from_cli(Cli::parse_from(["sluice", "--cpuset", "0", "--cores", "2"])).is_err());
        assert_eq!(c.io_cpus, None);
        let c = parse(&["sluice", "--cpuset", "0", "--io-cpuset", "1-2"]);
        assert_eq!(c.io_cpus, Some(vec![1, 2]));
        assert!(BrokerConfig::from_cli(Cli::parse_from(["sluice", "--io-cpuset", "x"])).is_err());
    }

    #[test]
    fn dotted_kafka_names_and_booleans_parse() {
        let c = parse(&[
            "sluice",
            "--log.segment.bytes=1000000",
            "--auto.create.topics.enable=false",
            "--num.partitions",
            "8",
        ]);
        assert_eq!(c.topic_defaults.segment_bytes, 1_000_000);
        assert!(!c.topic_defaults.auto_create);
        assert_eq!(c.topic_defaults.num_partitions, 8);
    }

    #[test]
    fn file_settings_come_before_flags_and_nested_tables_flatten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:19092\"\n\"num.partitions\" = 3\n[log.segment]\nbytes = 2000000\n",
        )
        .unwrap();
        let args = vec![
            "sluice".into(),
            "--config".into(),
            path.clone().into(),
            "--num.partitions".into(),
            "5".into(),
        ];
        let cli = Cli::parse_from(with_file_settings(args).unwrap());
        let c = BrokerConfig::from_cli(cli).unwrap();
        assert_eq!(c.listen.port(), 19092);
        assert_eq!(c.topic_defaults.num_partitions, 5, "the flag wins over the file");
        assert_eq!(c.topic_defaults.segment_bytes, 2_000_000);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let args = vec!["sluice".into(), "--config".into(), path.into()];
        assert!(with_file_settings(args).is_err());
    }
}

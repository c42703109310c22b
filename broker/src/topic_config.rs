//! Topic settings: which keys exist, what values they take, how a topic's own
//! settings combine with the broker's defaults, and how they become a
//! storage `LogConfig`.

use std::collections::BTreeMap;

use anyhow::bail;
use sluice_storage::LogConfig;
use sluice_storage::config::SEGMENT_BYTES_MAX;

use crate::config::TopicDefaults;

/// Kafka's `DescribeConfigs` config types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// Kafka's `DescribeConfigs` config sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopic = 1,
    StaticBroker = 4,
    Default = 5,
}

pub struct TopicKey {
    pub name: &'static str,
    /// The broker setting that supplies the default.
    pub broker_name: &'static str,
    pub config_type: ConfigType,
    /// Fixed in Sluice: shown truthfully, not settable.
    pub read_only: bool,
    pub doc: &'static str,
}

const fn key(
    name: &'static str,
    broker_name: &'static str,
    config_type: ConfigType,
    read_only: bool,
    doc: &'static str,
) -> TopicKey {
    TopicKey {
        name,
        broker_name,
        config_type,
        read_only,
        doc,
    }
}

pub const TOPIC_KEYS: &[TopicKey] = &[
    key(
        "cleanup.policy",
        "log.cleanup.policy",
        ConfigType::List,
        false,
        "What happens to old segments: delete (compaction is not supported).",
    ),
    key(
        "retention.ms",
        "log.retention.ms",
        ConfigType::Long,
        false,
        "Segments whose newest record is older than this are deleted; -1 keeps them.",
    ),
    key(
        "retention.bytes",
        "log.retention.bytes",
        ConfigType::Long,
        false,
        "Oldest segments are deleted while a partition is larger than this; -1 means no limit.",
    ),
    key(
        "segment.bytes",
        "log.segment.bytes",
        ConfigType::Int,
        false,
        "A segment rolls before it passes this size.",
    ),
    key(
        "segment.ms",
        "log.roll.ms",
        ConfigType::Long,
        false,
        "A segment rolls once it has been open this long.",
    ),
    key(
        "max.message.bytes",
        "message.max.bytes",
        ConfigType::Int,
        false,
        "The largest record batch accepted.",
    ),
    key(
        "index.interval.bytes",
        "log.index.interval.bytes",
        ConfigType::Int,
        false,
        "Bytes between entries of the sparse offset and time indexes.",
    ),
    key(
        "compression.type",
        "compression.type",
        ConfigType::String,
        true,
        "Batches are stored as the producer compressed them.",
    ),
    key(
        "message.timestamp.type",
        "log.message.timestamp.type",
        ConfigType::String,
        true,
        "Record timestamps are the producer's (CreateTime).",
    ),
    key(
        "min.insync.replicas",
        "min.insync.replicas",
        ConfigType::Int,
        true,
        "A single node is its own in-sync replica set.",
    ),
    key(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        ConfigType::Boolean,
        true,
        "Not applicable to a single node.",
    ),
];

pub fn topic_key(name: &str) -> Option<&'static TopicKey> {
    TOPIC_KEYS.iter().find(|k| k.name == name)
}

/// The broker-side value of a key, as text.
fn default_value(key: &TopicKey, d: &TopicDefaults) -> String {
    match key.name {
        "cleanup.policy" => d.cleanup_policy.clone(),
        "retention.ms" => d.retention_ms.to_string(),
        "retention.bytes" => d.retention_bytes.to_string(),
        "segment.bytes" => d.segment_bytes.to_string(),
        "segment.ms" => d.segment_ms.to_string(),
        "max.message.bytes" => d.max_message_bytes.to_string(),
        "index.interval.bytes" => d.index_interval_bytes.to_string(),
        "compression.type" => "producer".into(),
        "message.timestamp.type" => "CreateTime".into(),
        "min.insync.replicas" => "1".into(),
        "unclean.leader.election.enable" => "false".into(),
        other => unreachable!("no default for {other}"),
    }
}

/// Built-in defaults, to tell a default from a value set at start-up.
fn builtin_default(name: &str) -> Option<&'static str> {
    Some(match name {
        "cleanup.policy" => "delete",
        "retention.ms" => "604800000",
        "retention.bytes" => "-1",
        "segment.bytes" => "1073741824",
        "segment.ms" => "604800000",
        "max.message.bytes" => "1048588",
        "index.interval.bytes" => "4096",
        _ => return None,
    })
}

fn parse_long(name: &str, value: &str, min: i64, max: i64) -> anyhow::Result<i64> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{name}: {value:?} is not a number"))?;
    if !(min..=max).contains(&v) {
        bail!("{name}: {v} is outside [{min}, {max}]");
    }
    Ok(v)
}

/// Checks one topic setting as a client would set it.
pub fn validate_setting(name: &str, value: &str) -> anyhow::Result<()> {
    let Some(key) = topic_key(name) else {
        bail!("unknown topic setting {name}");
    };
    if key.read_only {
        bail!("{name} cannot be changed in Sluice");
    }
    match name {
        "cleanup.policy" => {
            if value.split(',').map(str::trim).any(|p| p != "delete") {
                bail!("cleanup.policy: only \"delete\" is supported (compaction is not)");
            }
        }
        "retention.ms" | "retention.bytes" => {
            parse_long(name, value, -1, i64::MAX)?;
        }
        "segment.bytes" => {
            parse_long(name, value, 14, SEGMENT_BYTES_MAX as i64)?;
        }
        "segment.ms" => {
            parse_long(name, value, 1, i64::MAX)?;
        }
        "max.message.bytes" => {
            parse_long(name, value, 0, i32::MAX as i64)?;
        }
        "index.interval.bytes" => {
            parse_long(name, value, 0, i32::MAX as i64)?;
        }
        _ => unreachable!("every settable key is validated"),
    }
    Ok(())
}

/// Checks the broker's defaults at start-up.
pub fn validate_defaults(d: &TopicDefaults) -> anyhow::Result<()> {
    for key in TOPIC_KEYS.iter().filter(|k| !k.read_only) {
        validate_setting(key.name, &default_value(key, d)).map_err(|e| anyhow::anyhow!("{}: {e}", key.broker_name))?;
    }
    Ok(())
}

/// A topic's effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: i64,
    pub segment_ms: i64,
    pub max_message_bytes: i64,
    pub index_interval_bytes: i64,
    /// The broker's `log.segment.recycle` (no topic overrides it).
    pub recycle_segments: bool,
}

fn value_of<'a>(
    name: &str,
    overrides: &'a BTreeMap<String, String>,
    defaults: &TopicDefaults,
) -> std::borrow::Cow<'a, str> {
    match overrides.get(name) {
        Some(v) => std::borrow::Cow::Borrowed(v.as_str()),
        None => std::borrow::Cow::Owned(default_value(topic_key(name).expect("known key"), defaults)),
    }
}

/// Overrides were validated when set; a value that no longer parses falls
/// back to the default rather than failing a running broker.
pub fn effective(defaults: &TopicDefaults, overrides: &BTreeMap<String, String>) -> TopicSettings {
    let long = |name: &str, fallback: i64| value_of(name, overrides, defaults).trim().parse().unwrap_or(fallback);
    TopicSettings {
        retention_ms: long("retention.ms", defaults.retention_ms),
        retention_bytes: long("retention.bytes", defaults.retention_bytes),
        segment_bytes: long("segment.bytes", defaults.segment_bytes),
        segment_ms: long("segment.ms", defaults.segment_ms),
        max_message_bytes: long("max.message.bytes", defaults.max_message_bytes),
        index_interval_bytes: long("index.interval.bytes", defaults.index_interval_bytes),
        recycle_segments: defaults.recycle_segments,
    }
}

pub fn log_config(settings: &TopicSettings) -> LogConfig {
    let mut c = LogConfig {
        segment_bytes: (settings.segment_bytes.max(14) as u64).min(SEGMENT_BYTES_MAX),
        segment_ms: settings.segment_ms.max(1),
        retention_bytes: settings.retention_bytes,
        retention_ms: settings.retention_ms,
        index_interval_bytes: settings.index_interval_bytes.max(1) as u64,
        recycle_segments: settings.recycle_segments,
        ..LogConfig::default()
    };
    // Preallocate no more than a segment holds.
    c.appender.preallocate_bytes = c
        .appender
        .preallocate_bytes
        .min(c.segment_bytes.next_multiple_of(4096))
        .max(4096);
    c
}

/// One line of a DescribeConfigs answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedSetting {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
    pub read_only: bool,
    pub config_type: ConfigType,
    pub doc: &'static str,
    /// (name, value, source) of settings that supply this value, most
    /// specific first.
    pub synonyms: Vec<(String, String, ConfigSource)>,
}

fn broker_source(name: &str, value: &str) -> ConfigSource {
    match builtin_default(name) {
        Some(d) if d == value => ConfigSource::Default,
        None => ConfigSource::Default,
        Some(_) => ConfigSource::StaticBroker,
    }
}

/// Every topic setting of a topic, with where its value comes from.
pub fn describe_topic(defaults: &TopicDefaults, overrides: &BTreeMap<String, String>) -> Vec<DescribedSetting> {
    TOPIC_KEYS
        .iter()
        .map(|k| {
            let broker_value = default_value(k, defaults);
            let broker = (
                k.broker_name.to_string(),
                broker_value.clone(),
                broker_source(k.name, &broker_value),
            );
            let (value, source, synonyms) = match overrides.get(k.name) {
                Some(v) => (
                    v.clone(),
                    ConfigSource::DynamicTopic,
                    vec![(k.name.to_string(), v.clone(), ConfigSource::DynamicTopic), broker],
                ),
                None => (broker_value.clone(), broker.2, vec![broker]),
            };
            DescribedSetting {
                name: k.name.to_string(),
                value,
                source,
                read_only: k.read_only,
                config_type: k.config_type,
                doc: k.doc,
                synonyms,
            }
        })
        .collect()
}

/// The broker's own settings that clients may ask about; `extra` are
/// (name, value, built-in default, type).
pub fn describe_broker(
    defaults: &TopicDefaults,
    extra: &[(&'static str, String, &'static str, ConfigType)],
) -> Vec<DescribedSetting> {
    let mut out: Vec<DescribedSetting> = TOPIC_KEYS
        .iter()
        .map(|k| {
            let value = default_value(k, defaults);
            DescribedSetting {
                name: k.broker_name.to_string(),
                source: broker_source(k.name, &value),
                value,
                read_only: true,
                config_type: k.config_type,
                doc: k.doc,
                synonyms: Vec::new(),
            }
        })
        .collect();
    for (name, value, default, config_type) in extra {
        out.push(DescribedSetting {
            name: name.to_string(),
            value: value.clone(),
            source: if value == default {
                ConfigSource::Default
            } else {
                ConfigSource::StaticBroker
            },
            read_only: true,
            config_type: *config_type,
            doc: "",
            synonyms: Vec::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> TopicDefaults {
        TopicDefaults {
            num_partitions: 1,
            replication_factor: 1,
            auto_create: true,
            segment_bytes: 1 << 30,
            segment_ms: 604_800_000,
            retention_ms: 604_800_000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            cleanup_policy: "delete".into(),
            recycle_segments: true,
        }
    }

    #[test]
    fn settings_validate_like_kafka() {
        let check = |name: &str, value: &str, ok: bool| {
            assert_eq!(validate_setting(name, value).is_ok(), ok, "{name}={value}");
        };
        check("retention.ms", "-1", true);
        check("retention.ms", "-2", false);
        check("retention.ms", "soon", false);
        check("segment.bytes", "13", false);
        check("segment.bytes", "1048576", true);
        check("cleanup.policy", "delete", true);
        check("cleanup.policy", "compact", false);
        check("compression.type", "gzip", false);
        check("no.such.key", "1", false);
        validate_defaults(&defaults()).unwrap();
    }

    #[test]
    fn overrides_beat_defaults_and_reach_the_log_config() {
        let mut o = BTreeMap::new();
        o.insert("retention.bytes".to_string(), "1000".to_string());
        o.insert("segment.bytes".to_string(), "65536".to_string());
        let s = effective(&defaults(), &o);
        assert_eq!(s.retention_bytes, 1000);
        assert_eq!(s.retention_ms, 604_800_000);
        let lc = log_config(&s);
        assert_eq!(lc.segment_bytes, 65536);
        assert_eq!(lc.appender.preallocate_bytes, 65536);
        assert!(lc.recycle_segments);
        lc.validate();
        // The broker's recycling setting reaches every log.
        let mut d = defaults();
        d.recycle_segments = false;
        assert!(!log_config(&effective(&d, &o)).recycle_segments);
    }

    #[test]
    fn describe_marks_sources_and_synonyms() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        let mut d = defaults();
        d.segment_bytes = 1 << 20;
        let rows = describe_topic(&d, &o);
        let row = |n: &str| rows.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(row("retention.ms").source, ConfigSource::DynamicTopic);
        assert_eq!(row("retention.ms").synonyms.len(), 2);
        assert_eq!(row("segment.bytes").source, ConfigSource::StaticBroker);
        assert_eq!(row("retention.bytes").source, ConfigSource::Default);
        assert!(row("compression.type").read_only);
    }
}

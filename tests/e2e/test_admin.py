"""Topic and cluster administration through real admin clients:
confluent-kafka's AdminClient (librdkafka 2.16, newest API versions) and
kafka-python's KafkaAdminClient (older versions)."""

import fcntl
import os
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

REQUEST_TIMEOUT_S = 15
POLL_DEADLINE_S = 15
# ioctl reading a file's inode generation (linux/fs.h: _IOR('v', 1, long)).
FS_IOC_GETVERSION = 0x80087601


# ---------------------------------------------------------------- helpers


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def producer(broker, **conf):
    return Producer({"bootstrap.servers": broker.bootstrap, **conf})


def consumer(broker, **conf):
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            **conf,
        }
    )


def create(a, *topics, **kwargs):
    """Creates topics and waits; raises the first failure."""
    futures = a.create_topics(list(topics), request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    for f in futures.values():
        f.result(timeout=REQUEST_TIMEOUT_S)


def error_of(future):
    """The KafkaError a future failed with (fails the test if it succeeded)."""
    with pytest.raises(KafkaException) as info:
        future.result(timeout=REQUEST_TIMEOUT_S)
    return info.value.args[0]


def topic_names(a):
    return set(a.list_topics(timeout=REQUEST_TIMEOUT_S).topics)


def partition_count(a, topic):
    md = a.list_topics(topic=topic, timeout=REQUEST_TIMEOUT_S)
    t = md.topics[topic]
    assert t.error is None, t.error
    return len(t.partitions)


def describe_topic_configs(a, topic):
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return a.describe_configs([res], request_timeout=REQUEST_TIMEOUT_S)[res].result(timeout=REQUEST_TIMEOUT_S)


def produce_values(p, topic, values, partition=0, key=None):
    """Produces and waits for every delivery; returns the offsets."""
    offsets = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    for v in values:
        p.produce(topic, value=v, key=key, partition=partition, on_delivery=on_delivery)
    assert p.flush(REQUEST_TIMEOUT_S) == 0, "messages still in flight"
    assert not errors, errors
    return offsets


def consume(c, count, deadline_s=POLL_DEADLINE_S):
    """Polls until `count` messages arrived; consumer errors fail the test."""
    got = []
    deadline = time.time() + deadline_s
    while len(got) < count and time.time() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        got.append(msg)
    assert len(got) == count, f"got {len(got)} of {count} messages"
    return got


def wait_for(condition, what, deadline_s=POLL_DEADLINE_S):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def partition_dirs(broker, topic):
    topics_dir = broker.data_dir / "topics"
    if not topics_dir.exists():
        return []
    return sorted(
        p.name for p in topics_dir.iterdir() if p.name.rsplit("-", 1)[0] == topic and p.name.rsplit("-", 1)[1].isdigit()
    )


# ---------------------------------------------------------------- create topics


def test_create_topic_with_partitions_and_configs(broker):
    a = admin(broker)
    create(a, NewTopic("orders", 4, config={"retention.ms": "3600000", "segment.bytes": "1048576"}))

    assert partition_count(a, "orders") == 4
    md = a.list_topics(topic="orders", timeout=REQUEST_TIMEOUT_S).topics["orders"]
    for p in md.partitions.values():
        assert p.leader == 1 and list(p.replicas) == [1] and list(p.isrs) == [1]
    configs = describe_topic_configs(a, "orders")
    assert configs["retention.ms"].value == "3600000"
    assert configs["segment.bytes"].value == "1048576"
    assert partition_dirs(broker, "orders") == [f"orders-{i}" for i in range(4)]


def test_create_existing_topic_fails_with_topic_already_exists(broker):
    a = admin(broker)
    create(a, NewTopic("dup", 2))
    err = error_of(a.create_topics([NewTopic("dup", 3)])["dup"])
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS
    # The first creation stands.
    assert partition_count(a, "dup") == 2


@pytest.mark.parametrize(
    "topic, expected",
    [
        (NewTopic("zero-partitions", 0), KafkaError.INVALID_PARTITIONS),
        (NewTopic("three-replicas", 1, 3), KafkaError.INVALID_REPLICATION_FACTOR),
        (NewTopic("a b", 1), KafkaError.TOPIC_EXCEPTION),
        (NewTopic("x" * 250, 1), KafkaError.TOPIC_EXCEPTION),
        (NewTopic("compacted", 1, config={"cleanup.policy": "compact"}), KafkaError.INVALID_CONFIG),
        (NewTopic("bad-retention", 1, config={"retention.ms": "abc"}), KafkaError.INVALID_CONFIG),
    ],
    ids=["0-partitions", "replication-3", "space-in-name", "250-char-name", "compact", "retention-abc"],
)
def test_create_invalid_topic_fails_and_creates_nothing(broker, topic, expected):
    a = admin(broker)
    err = error_of(a.create_topics([topic])[topic.topic])
    assert err.code() == expected, err
    assert topic.topic not in topic_names(a)
    assert partition_dirs(broker, topic.topic) == []


def test_create_validate_only_creates_nothing(broker):
    a = admin(broker)
    create(a, NewTopic("dry-run", 3, config={"retention.ms": "1000"}), validate_only=True)
    assert "dry-run" not in topic_names(a)
    assert partition_dirs(broker, "dry-run") == []
    # A validate-only request still reports what a real one would refuse.
    err = error_of(a.create_topics([NewTopic("dry-run", 0)], validate_only=True)["dry-run"])
    assert err.code() == KafkaError.INVALID_PARTITIONS
    # And the name stays free for a real creation.
    create(a, NewTopic("dry-run", 3))
    assert partition_count(a, "dry-run") == 3


def test_create_many_topics_in_one_request(broker):
    a = admin(broker)
    names = [f"bulk-{i:02d}" for i in range(40)]
    futures = a.create_topics([NewTopic(n, 1 + i % 3) for i, n in enumerate(names)], request_timeout=REQUEST_TIMEOUT_S)
    for f in futures.values():
        f.result(timeout=REQUEST_TIMEOUT_S)
    md = a.list_topics(timeout=REQUEST_TIMEOUT_S)
    for i, n in enumerate(names):
        assert len(md.topics[n].partitions) == 1 + i % 3, n


def test_create_topics_mixed_request_fails_only_bad_ones(broker):
    a = admin(broker)
    create(a, NewTopic("exists", 1))
    futures = a.create_topics(
        [NewTopic("fresh", 2), NewTopic("exists", 1), NewTopic("bad name!", 1), NewTopic("none", 0)],
        request_timeout=REQUEST_TIMEOUT_S,
    )
    futures["fresh"].result(timeout=REQUEST_TIMEOUT_S)
    assert error_of(futures["exists"]).code() == KafkaError.TOPIC_ALREADY_EXISTS
    assert error_of(futures["bad name!"]).code() == KafkaError.TOPIC_EXCEPTION
    assert error_of(futures["none"]).code() == KafkaError.INVALID_PARTITIONS
    assert topic_names(a) == {"exists", "fresh"}


def test_create_same_topic_twice_in_one_request_is_invalid(broker):
    # Kafka's controller answers a duplicated name once, with INVALID_REQUEST,
    # and creates nothing under it. (librdkafka 2.16 crashes on that Kafka
    # response when asked to create a duplicated name, so this case is driven
    # with kafka-python, which shows the raw answer.)
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic as KpNewTopic

    from kafka.errors import InvalidRequestError

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=REQUEST_TIMEOUT_S * 1000)
    try:
        # kafka-python raises on any error in the response and quotes it.
        with pytest.raises(InvalidRequestError) as raised:
            a.create_topics([KpNewTopic("twice", 1, 1), KpNewTopic("twice", 2, 1), KpNewTopic("once", 1, 1)])
    finally:
        a.close()
    response = str(raised.value).split("failed with response", 1)[1]
    assert response.count("topic='twice'") == 1, response
    assert "topic='twice', error_code=42" in response
    assert "topic='once', error_code=0" in response
    assert topic_names(admin(broker)) == {"once"}


def test_kafka_python_admin_create_describe_delete(broker):
    from kafka.admin import ConfigResource as KpConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient
    from kafka.admin import NewTopic as KpNewTopic

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=REQUEST_TIMEOUT_S * 1000)
    try:
        resp = a.create_topics([KpNewTopic("kp-admin", 3, 1, topic_configs={"retention.ms": "12345"})])
        assert [(t[0], t[1]) for t in resp.topic_errors] == [("kp-admin", 0)]

        described = a.describe_topics(["kp-admin"])
        assert described[0]["error_code"] == 0
        assert sorted(p["partition"] for p in described[0]["partitions"]) == [0, 1, 2]

        [configs] = a.describe_configs([KpConfigResource(ConfigResourceType.TOPIC, "kp-admin")])
        [resource] = configs.resources
        assert resource[0] == 0, resource
        entries = {e[0]: e for e in resource[4]}
        assert entries["retention.ms"][1] == "12345"
        assert entries["cleanup.policy"][1] == "delete"

        resp = a.delete_topics(["kp-admin"])
        assert [(t[0], t[1]) for t in resp.topic_error_codes] == [("kp-admin", 0)]
    finally:
        a.close()
    assert "kp-admin" not in topic_names(admin(broker))


# ---------------------------------------------------------------- delete topics


def test_delete_topic_removes_metadata_and_data(broker):
    a = admin(broker)
    create(a, NewTopic("doomed", 2), NewTopic("survivor", 1))
    p = producer(broker)
    produce_values(p, "doomed", [b"m%d" % i for i in range(10)], partition=1)
    assert partition_dirs(broker, "doomed") == ["doomed-0", "doomed-1"]

    a.delete_topics(["doomed"], request_timeout=REQUEST_TIMEOUT_S)["doomed"].result(timeout=REQUEST_TIMEOUT_S)

    assert "doomed" not in topic_names(a)
    assert "survivor" in topic_names(a)
    wait_for(lambda: partition_dirs(broker, "doomed") == [], "doomed's partition directories to go")
    assert partition_dirs(broker, "survivor") == ["survivor-0"]


def test_delete_unknown_topic_fails_with_unknown_topic(broker):
    a = admin(broker)
    err = error_of(a.delete_topics(["never-was"], request_timeout=REQUEST_TIMEOUT_S)["never-was"])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_recreated_topic_starts_empty_at_offset_zero(broker):
    a = admin(broker)
    create(a, NewTopic("phoenix", 1))
    produce_values(producer(broker), "phoenix", [b"old-%d" % i for i in range(25)])
    a.delete_topics(["phoenix"])["phoenix"].result(timeout=REQUEST_TIMEOUT_S)
    wait_for(lambda: "phoenix" not in topic_names(a), "phoenix to leave metadata")

    create(a, NewTopic("phoenix", 1))
    offsets = produce_values(producer(broker), "phoenix", [b"new"])
    assert offsets == [0]
    c = consumer(broker, **{"auto.offset.reset": "earliest"})
    try:
        assert c.get_watermark_offsets(TopicPartition("phoenix", 0), timeout=REQUEST_TIMEOUT_S, cached=False) == (0, 1)
        c.assign([TopicPartition("phoenix", 0, 0)])
        [msg] = consume(c, 1)
        assert (msg.offset(), msg.value()) == (0, b"new")
    finally:
        c.close()


# ---------------------------------------------------------------- create partitions


def test_create_partitions_grows_topic(broker):
    a = admin(broker)
    create(a, NewTopic("growing", 2))
    a.create_partitions([NewPartitions("growing", 5)], request_timeout=REQUEST_TIMEOUT_S)["growing"].result(
        timeout=REQUEST_TIMEOUT_S
    )
    assert partition_count(a, "growing") == 5
    assert partition_dirs(broker, "growing") == [f"growing-{i}" for i in range(5)]

    p = producer(broker)
    # The producer learns of the new partitions from metadata.
    wait_for(lambda: len(p.list_topics("growing", timeout=5).topics["growing"].partitions) == 5, "5 partitions")
    assert produce_values(p, "growing", [b"to-4"], partition=4) == [0]
    c = consumer(broker)
    try:
        c.assign([TopicPartition("growing", 4, 0)])
        [msg] = consume(c, 1)
        assert (msg.partition(), msg.offset(), msg.value()) == (4, 0, b"to-4")
    finally:
        c.close()


@pytest.mark.parametrize("new_count", [2, 1], ids=["same-count", "shrink"])
def test_create_partitions_cannot_keep_or_shrink(broker, new_count):
    a = admin(broker)
    create(a, NewTopic("fixed", 2))
    err = error_of(a.create_partitions([NewPartitions("fixed", new_count)])["fixed"])
    assert err.code() == KafkaError.INVALID_PARTITIONS
    assert partition_count(a, "fixed") == 2


def test_create_partitions_of_unknown_topic_fails(broker):
    a = admin(broker)
    err = error_of(a.create_partitions([NewPartitions("ghost", 3)])["ghost"])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_create_partitions_validate_only_changes_nothing(broker):
    a = admin(broker)
    create(a, NewTopic("planned", 1))
    a.create_partitions([NewPartitions("planned", 4)], validate_only=True)["planned"].result(timeout=REQUEST_TIMEOUT_S)
    assert partition_count(a, "planned") == 1
    assert partition_dirs(broker, "planned") == ["planned-0"]


# ---------------------------------------------------------------- configs


def test_describe_topic_configs_reports_overrides_and_defaults(broker):
    a = admin(broker)
    create(a, NewTopic("configured", 1, config={"retention.ms": "60000", "max.message.bytes": "2000000"}))
    configs = describe_topic_configs(a, "configured")

    for name, value in [("retention.ms", "60000"), ("max.message.bytes", "2000000")]:
        entry = configs[name]
        assert entry.value == value
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        assert not entry.is_default and not entry.is_read_only

    defaults = {
        "retention.bytes": "-1",
        "segment.bytes": "1073741824",
        "segment.ms": "604800000",
        "cleanup.policy": "delete",
        "index.interval.bytes": "4096",
    }
    for name, value in defaults.items():
        entry = configs[name]
        assert entry.value == value, name
        assert entry.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name
        assert entry.is_default, name

    read_only = {
        "compression.type": "producer",
        "message.timestamp.type": "CreateTime",
        "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false",
    }
    for name, value in read_only.items():
        assert configs[name].value == value, name
        assert configs[name].is_read_only, name


@pytest.mark.broker_args("--log.retention.ms=123456", "--log.segment.bytes=2097152")
def test_topic_defaults_follow_broker_flags(broker):
    a = admin(broker)
    create(a, NewTopic("defaulted", 1))
    configs = describe_topic_configs(a, "defaulted")
    assert configs["retention.ms"].value == "123456"
    assert configs["segment.bytes"].value == "2097152"
    for name in ("retention.ms", "segment.bytes"):
        assert configs[name].source == ConfigSource.STATIC_BROKER_CONFIG.value, name
        assert not configs[name].is_default, name
    broker_res = ConfigResource(ConfigResource.Type.BROKER, "1")
    broker_configs = a.describe_configs([broker_res])[broker_res].result(timeout=REQUEST_TIMEOUT_S)
    assert broker_configs["log.retention.ms"].value == "123456"
    assert broker_configs["log.retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value


def test_describe_unknown_topic_configs_fails(broker):
    a = admin(broker)
    res = ConfigResource(ConfigResource.Type.TOPIC, "nope")
    err = error_of(a.describe_configs([res])[res])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_broker_configs(broker):
    a = admin(broker)
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    configs = a.describe_configs([res], request_timeout=REQUEST_TIMEOUT_S)[res].result(timeout=REQUEST_TIMEOUT_S)
    ids = {configs[name].value for name in ("node.id", "broker.id") if name in configs}
    assert ids == {"1"}, "node.id/broker.id missing or not 1"
    assert configs["num.partitions"].value == "1"
    assert configs["auto.create.topics.enable"].value == "true"
    assert configs["log.segment.bytes"].value == "1073741824"
    assert configs["log.retention.ms"].value == "604800000"
    assert configs["socket.request.max.bytes"].value == "104857600"
    for entry in configs.values():
        assert entry.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, entry.name


def test_incremental_alter_configs_set_then_delete(broker):
    a = admin(broker)
    create(a, NewTopic("tuned", 1, config={"segment.ms": "3600000"}))

    def alter(entry):
        res = ConfigResource(ConfigResource.Type.TOPIC, "tuned", incremental_configs=[entry])
        a.incremental_alter_configs([res], request_timeout=REQUEST_TIMEOUT_S)[res].result(timeout=REQUEST_TIMEOUT_S)

    alter(ConfigEntry("retention.ms", "5000", incremental_operation=AlterConfigOpType.SET))
    configs = describe_topic_configs(a, "tuned")
    assert configs["retention.ms"].value == "5000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.ms"].value == "3600000", "an incremental SET leaves other overrides alone"

    alter(ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE))
    configs = describe_topic_configs(a, "tuned")
    assert configs["retention.ms"].value == "604800000"
    assert configs["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.ms"].value == "3600000"


def test_incremental_alter_configs_refuses_invalid_value(broker):
    a = admin(broker)
    create(a, NewTopic("strict", 1))
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        "strict",
        incremental_configs=[ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)],
    )
    err = error_of(a.incremental_alter_configs([res])[res])
    assert err.code() == KafkaError.INVALID_CONFIG
    assert describe_topic_configs(a, "strict")["cleanup.policy"].value == "delete"


def test_incremental_alter_configs_refuses_unknown_name(broker):
    a = admin(broker)
    create(a, NewTopic("named", 1))
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        "named",
        incremental_configs=[ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)],
    )
    err = error_of(a.incremental_alter_configs([res])[res])
    assert err.code() == KafkaError.INVALID_CONFIG
    assert "no.such.config" not in describe_topic_configs(a, "named")


def test_incremental_alter_configs_of_unknown_topic_fails(broker):
    a = admin(broker)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        "ghost",
        incremental_configs=[ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)],
    )
    err = error_of(a.incremental_alter_configs([res])[res])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_legacy_alter_configs_replaces_all_overrides(broker):
    a = admin(broker)
    create(a, NewTopic("legacy", 1, config={"retention.ms": "5000", "retention.bytes": "1000000"}))
    res = ConfigResource(ConfigResource.Type.TOPIC, "legacy", set_config={"segment.ms": "7200000"})
    with pytest.warns(DeprecationWarning):
        futures = a.alter_configs([res], request_timeout=REQUEST_TIMEOUT_S)
    futures[res].result(timeout=REQUEST_TIMEOUT_S)

    configs = describe_topic_configs(a, "legacy")
    assert configs["segment.ms"].value == "7200000"
    assert configs["segment.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Overrides not named in a legacy AlterConfigs are dropped.
    assert configs["retention.ms"].value == "604800000"
    assert configs["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.bytes"].value == "-1"
    assert configs["retention.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


# ---------------------------------------------------------------- delete records, list offsets


def test_delete_records_moves_low_watermark(broker):
    a = admin(broker)
    create(a, NewTopic("trimmed", 1))
    p = producer(broker)
    assert produce_values(p, "trimmed", [b"%d" % i for i in range(100)]) == list(range(100))

    tp = TopicPartition("trimmed", 0, 40)
    deleted = a.delete_records([tp], request_timeout=REQUEST_TIMEOUT_S)[tp].result(timeout=REQUEST_TIMEOUT_S)
    assert deleted.low_watermark == 40

    c = consumer(broker, **{"auto.offset.reset": "earliest"})
    try:
        assert c.get_watermark_offsets(TopicPartition("trimmed", 0), timeout=REQUEST_TIMEOUT_S, cached=False) == (40, 100)
        earliest = a.list_offsets({TopicPartition("trimmed", 0): OffsetSpec.earliest()})
        assert earliest[TopicPartition("trimmed", 0)].result(timeout=REQUEST_TIMEOUT_S).offset == 40

        # Offset 10 is gone: the fetch gets OFFSET_OUT_OF_RANGE and the
        # consumer resets to the earliest offset left.
        c.assign([TopicPartition("trimmed", 0, 10)])
        msgs = consume(c, 60)
        assert [m.offset() for m in msgs] == list(range(40, 100))
        assert [m.value() for m in msgs] == [b"%d" % i for i in range(40, 100)]
    finally:
        c.close()

    # -1 deletes up to the high watermark.
    tp = TopicPartition("trimmed", 0, -1)
    deleted = a.delete_records([tp], request_timeout=REQUEST_TIMEOUT_S)[tp].result(timeout=REQUEST_TIMEOUT_S)
    assert deleted.low_watermark == 100
    c = consumer(broker)
    try:
        assert c.get_watermark_offsets(TopicPartition("trimmed", 0), timeout=REQUEST_TIMEOUT_S, cached=False) == (100, 100)
    finally:
        c.close()
    # The partition goes on from there.
    assert produce_values(p, "trimmed", [b"after"]) == [100]


def test_fetch_below_low_watermark_with_reset_error_reports_out_of_range(broker):
    a = admin(broker)
    create(a, NewTopic("strict-reset", 1))
    produce_values(producer(broker), "strict-reset", [b"%d" % i for i in range(20)])
    tp = TopicPartition("strict-reset", 0, 15)
    a.delete_records([tp])[tp].result(timeout=REQUEST_TIMEOUT_S)

    c = consumer(broker, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition("strict-reset", 0, 5)])
        deadline = time.time() + POLL_DEADLINE_S
        err = None
        while err is None and time.time() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            assert msg.error(), f"got a message at offset {msg.offset()} below the low watermark"
            err = msg.error()
        assert err is not None and err.code() == KafkaError._AUTO_OFFSET_RESET, err
        assert "out of range" in err.str().lower(), err.str()
    finally:
        c.close()


def test_delete_records_beyond_high_watermark_fails(broker):
    a = admin(broker)
    create(a, NewTopic("short", 1))
    produce_values(producer(broker), "short", [b"a", b"b"])
    tp = TopicPartition("short", 0, 50)
    err = error_of(a.delete_records([tp])[tp])
    assert err.code() == KafkaError.OFFSET_OUT_OF_RANGE


def test_low_watermark_survives_graceful_restart(broker):
    a = admin(broker)
    create(a, NewTopic("trim-kept", 1))
    produce_values(producer(broker), "trim-kept", [b"%d" % i for i in range(30)])
    tp = TopicPartition("trim-kept", 0, 12)
    assert a.delete_records([tp])[tp].result(timeout=REQUEST_TIMEOUT_S).low_watermark == 12
    broker.restart()
    c = consumer(broker, **{"auto.offset.reset": "earliest"})
    try:
        assert c.get_watermark_offsets(TopicPartition("trim-kept", 0), timeout=REQUEST_TIMEOUT_S, cached=False) == (12, 30)
        c.assign([TopicPartition("trim-kept", 0, 0)])
        msgs = consume(c, 18)
        assert [m.offset() for m in msgs] == list(range(12, 30))
    finally:
        c.close()


@pytest.mark.broker_args("--log.retention.check.interval.ms=100")
def test_retention_by_size_deletes_old_segments_and_new_ones_are_written_into_their_files(broker):
    """Size retention deletes whole old segments and moves the low
    watermark. The newest deleted segment's file is kept (`.free`) and a
    later segment is written into it: the same file (inode number and
    generation, which ext4 changes when it reuses a number) comes back as a
    `.log`.
    Across a graceful restart and a kill -9 the retained messages read back
    exactly, with none of the reused file's old ones among them."""
    a = admin(broker)
    create(a, NewTopic("rolling", 1, config={"segment.bytes": "65536", "retention.bytes": "196608"}))
    part_dir = broker.data_dir / "topics" / "rolling-0"
    p = producer(broker, **{"linger.ms": 5})
    values = []

    def produce_more(n):
        batch = [b"%06d:" % (len(values) + i) + bytes(1000) for i in range(n)]
        first = len(values)
        values.extend(batch)
        assert produce_values(p, "rolling", batch) == list(range(first, len(values)))

    def inodes(pattern):
        found = set()
        for f in part_dir.glob(pattern):
            try:
                with open(f, "rb") as fh:
                    generation = fcntl.ioctl(fh.fileno(), FS_IOC_GETVERSION, bytes(8))
                    found.add((os.fstat(fh.fileno()).st_ino, generation))
            except FileNotFoundError:
                pass  # deleted between the listing and the open
        return found

    kept = set()
    deadline = time.time() + 30
    while not kept and time.time() < deadline:
        produce_more(50)
        time.sleep(0.15)
        kept = inodes("*.free")
    assert kept, "retention kept no deleted segment's file"
    deadline = time.time() + 30
    while not (kept & inodes("*.log")) and time.time() < deadline:
        produce_more(20)
        kept |= inodes("*.free")
    assert kept & inodes("*.log"), "no new segment was written into a kept file"

    tp = TopicPartition("rolling", 0)
    for kill in (False, True):
        broker.restart(kill=kill)
        c = consumer(broker)
        try:
            low, high = c.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S, cached=False)
            assert high == len(values)
            assert 0 < low and high - low < 400, (low, high)
            c.assign([TopicPartition("rolling", 0, low)])
            msgs = consume(c, high - low)
            assert [(m.offset(), m.value()) for m in msgs] == [(o, values[o]) for o in range(low, high)]
        finally:
            c.close()


def test_list_offsets_earliest_latest_and_max_timestamp(broker):
    a = admin(broker)
    create(a, NewTopic("timed", 1))
    base_ms = int(time.time() * 1000) - 60_000
    # One batch whose largest timestamp is in the middle.
    stamps = [base_ms + d for d in (0, 10, 50, 20, 30)]
    p = producer(broker, **{"linger.ms": 100})
    for i, ts in enumerate(stamps):
        p.produce("timed", value=b"%d" % i, partition=0, timestamp=ts)
    assert p.flush(REQUEST_TIMEOUT_S) == 0

    tp = TopicPartition("timed", 0)

    def list_one(spec):
        return a.list_offsets({tp: spec}, request_timeout=REQUEST_TIMEOUT_S)[tp].result(timeout=REQUEST_TIMEOUT_S)

    assert list_one(OffsetSpec.earliest()).offset == 0
    assert list_one(OffsetSpec.latest()).offset == 5
    newest = list_one(OffsetSpec.max_timestamp())
    assert (newest.offset, newest.timestamp) == (2, base_ms + 50)
    # By timestamp: the first offset whose timestamp is >= the one asked for.
    by_time = list_one(OffsetSpec.for_timestamp(base_ms + 15))
    assert by_time.offset == 2
    assert list_one(OffsetSpec.for_timestamp(base_ms + 1_000_000)).offset == -1


def test_list_offsets_of_empty_partition(broker):
    a = admin(broker)
    create(a, NewTopic("empty", 1))
    tp = TopicPartition("empty", 0)
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
        assert a.list_offsets({tp: spec})[tp].result(timeout=REQUEST_TIMEOUT_S).offset == 0


# ---------------------------------------------------------------- cluster


def test_describe_cluster(broker):
    a = admin(broker)
    desc = a.describe_cluster(request_timeout=REQUEST_TIMEOUT_S).result(timeout=REQUEST_TIMEOUT_S)
    assert isinstance(desc.cluster_id, str) and len(desc.cluster_id) == 22
    assert [n.id for n in desc.nodes] == [1]
    assert (desc.nodes[0].host, desc.nodes[0].port) == ("127.0.0.1", broker.port)
    assert desc.controller is not None and desc.controller.id == 1

    md = a.list_topics(timeout=REQUEST_TIMEOUT_S)
    assert md.cluster_id == desc.cluster_id
    assert md.controller_id == 1
    assert list(md.brokers) == [1]


def test_cluster_id_survives_restart(broker):
    a = admin(broker)
    before = a.describe_cluster().result(timeout=REQUEST_TIMEOUT_S).cluster_id
    broker.restart()
    a = admin(broker)
    after = a.describe_cluster().result(timeout=REQUEST_TIMEOUT_S).cluster_id
    assert before == after


# ---------------------------------------------------------------- auto-create


def request_metadata_allowing_auto_create(broker, topic):
    """A producer's metadata request sets allow_auto_topic_creation."""
    p = producer(broker)
    return p.list_topics(topic=topic, timeout=REQUEST_TIMEOUT_S).topics[topic]


def test_metadata_for_unknown_topic_auto_creates_it(broker):
    request_metadata_allowing_auto_create(broker, "on-demand")
    a = admin(broker)
    wait_for(lambda: "on-demand" in topic_names(a), "on-demand to be auto-created")
    assert partition_count(a, "on-demand") == 1
    assert partition_dirs(broker, "on-demand") == ["on-demand-0"]


def test_metadata_not_allowing_auto_create_leaves_topic_unknown(broker):
    # A consumer's metadata requests set allow_auto_topic_creation=false
    # (librdkafka's allow.auto.create.topics defaults to false for consumers).
    c = consumer(broker)
    try:
        md = c.list_topics(topic="not-wanted", timeout=REQUEST_TIMEOUT_S).topics["not-wanted"]
    finally:
        c.close()
    assert md.error is not None and md.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert "not-wanted" not in topic_names(admin(broker))
    assert partition_dirs(broker, "not-wanted") == []


@pytest.mark.broker_args("--auto.create.topics.enable=false")
def test_auto_create_disabled(broker):
    t = request_metadata_allowing_auto_create(broker, "forbidden")
    assert t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    a = admin(broker)
    assert "forbidden" not in topic_names(a)
    assert partition_dirs(broker, "forbidden") == []
    # Explicit creation still works.
    create(a, NewTopic("forbidden", 1))
    assert partition_count(a, "forbidden") == 1


@pytest.mark.broker_args("--num.partitions=3")
def test_auto_created_topics_take_num_partitions(broker):
    request_metadata_allowing_auto_create(broker, "wide")
    a = admin(broker)
    wait_for(lambda: "wide" in topic_names(a), "wide to be auto-created")
    assert partition_count(a, "wide") == 3


# ---------------------------------------------------------------- restart


def snapshot(a):
    names = sorted(t for t in topic_names(a))
    described = a.describe_topics(TopicCollection(names), request_timeout=REQUEST_TIMEOUT_S)
    topics = {}
    for name, f in described.items():
        d = f.result(timeout=REQUEST_TIMEOUT_S)
        configs = {
            k: (v.value, v.source) for k, v in describe_topic_configs(a, name).items()
        }
        topics[name] = {"id": str(d.topic_id), "partitions": len(d.partitions), "configs": configs}
    return topics


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_topic_metadata_survives_restart(broker, kill):
    a = admin(broker)
    create(
        a,
        NewTopic("kept-a", 3, config={"retention.ms": "86400000", "segment.bytes": "2097152"}),
        NewTopic("kept-b", 1),
    )
    a.create_partitions([NewPartitions("kept-b", 2)])["kept-b"].result(timeout=REQUEST_TIMEOUT_S)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        "kept-b",
        incremental_configs=[ConfigEntry("retention.bytes", "5000000", incremental_operation=AlterConfigOpType.SET)],
    )
    a.incremental_alter_configs([res])[res].result(timeout=REQUEST_TIMEOUT_S)
    create(a, NewTopic("gone", 1))
    a.delete_topics(["gone"])["gone"].result(timeout=REQUEST_TIMEOUT_S)

    before = snapshot(a)
    assert set(before) == {"kept-a", "kept-b"}
    assert before["kept-a"]["partitions"] == 3 and before["kept-b"]["partitions"] == 2
    assert before["kept-b"]["configs"]["retention.bytes"][0] == "5000000"
    assert len({t["id"] for t in before.values()}) == 2

    broker.restart(kill=kill)

    after = snapshot(admin(broker))
    assert after == before

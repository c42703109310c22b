"""Real third-party clients against the broker: kcat (librdkafka 2.0.2),
kafka-python (older API versions) and confluent-kafka (librdkafka 2.16,
newest API versions), alone and writing for one another."""

import shutil
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

KCAT = shutil.which("kcat") or "/usr/bin/kcat"
REQUEST_TIMEOUT_S = 15
POLL_DEADLINE_S = 20
KCAT_TIMEOUT_S = 30

pytestmark = pytest.mark.skipif(shutil.which(KCAT) is None, reason="kcat is not installed")


# ---------------------------------------------------------------- helpers


def create_topic(broker, name, partitions=1):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(name, partitions)])[name].result(timeout=REQUEST_TIMEOUT_S)


def kcat(broker, *args, stdin=None):
    """Runs kcat against the broker; fails the test on a non-zero exit."""
    proc = subprocess.run(
        [KCAT, "-b", broker.bootstrap, *args],
        input=stdin,
        capture_output=True,
        timeout=KCAT_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"kcat {args} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode()


def messages(count, tag):
    """(key, value) pairs with no ':' or newline, so kcat can carry them."""
    return [(f"{tag}-k{i}".encode(), f"{tag}-value-{i}-{'x' * (i % 7)}".encode()) for i in range(count)]


# Writers: each puts (key, value) pairs on partition 0 of `topic` in order.


def write_confluent(broker, topic, pairs, **conf):
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", **conf})
    errors = []
    for k, v in pairs:
        p.produce(topic, key=k, value=v, partition=0, on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(REQUEST_TIMEOUT_S) == 0
    assert not errors, errors


def write_kafka_python(broker, topic, pairs, **conf):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", **conf)
    try:
        futures = [p.send(topic, key=k, value=v, partition=0) for k, v in pairs]
        p.flush(timeout=REQUEST_TIMEOUT_S)
        offsets = [f.get(timeout=REQUEST_TIMEOUT_S).offset for f in futures]
    finally:
        p.close(timeout=REQUEST_TIMEOUT_S)
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)


def write_kcat(broker, topic, pairs, *extra):
    lines = b"".join(k + b":" + v + b"\n" for k, v in pairs)
    kcat(broker, "-P", "-t", topic, "-p", "0", "-K:", *extra, stdin=lines)


# Readers: each returns [(offset, key, value)] of partition 0 from offset 0.


def read_confluent(broker, topic, count):
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    got = []
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.time() + POLL_DEADLINE_S
        while len(got) < count and time.time() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                continue
            got.append((msg.offset(), msg.key(), msg.value()))
    finally:
        c.close()
    return got


def read_kafka_python(broker, topic, count):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    got = []
    try:
        tp = KpTopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        deadline = time.time() + POLL_DEADLINE_S
        while len(got) < count and time.time() < deadline:
            for records in c.poll(timeout_ms=200).values():
                got.extend((r.offset, r.key, r.value) for r in records)
    finally:
        c.close()
    return got


def read_kcat(broker, topic, count):
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", str(count), "-e", "-f", "%o:%k:%s\n")
    got = []
    for line in out.splitlines():
        offset, key, value = line.split(":", 2)
        got.append((int(offset), key.encode(), value.encode()))
    return got


WRITERS = {"kafka-python": write_kafka_python, "confluent": write_confluent, "kcat": write_kcat}
READERS = {"kafka-python": read_kafka_python, "confluent": read_confluent, "kcat": read_kcat}


def expect(pairs, first_offset=0):
    return [(first_offset + i, k, v) for i, (k, v) in enumerate(pairs)]


# ---------------------------------------------------------------- kcat


def test_kcat_produces_keyed_lines_and_consumes_them_back(broker):
    create_topic(broker, "kcat-keys")
    kcat(broker, "-P", "-t", "kcat-keys", "-K:", stdin=b"alpha:one\nbeta:two\ngamma:three\n")
    out = kcat(broker, "-C", "-t", "kcat-keys", "-o", "beginning", "-e", "-f", "%k:%s\n")
    assert out.splitlines() == ["alpha:one", "beta:two", "gamma:three"]


def test_kcat_auto_creates_topic_on_produce(broker):
    kcat(broker, "-P", "-t", "kcat-auto", "-K:", stdin=b"k:v\n")
    out = kcat(broker, "-C", "-t", "kcat-auto", "-o", "beginning", "-e", "-f", "%p/%o %k=%s\n")
    assert out.splitlines() == ["0/0 k=v"]


def test_kcat_metadata_lists_topic_and_partitions(broker):
    create_topic(broker, "kcat-meta", partitions=3)
    out = kcat(broker, "-L")
    assert f"broker 1 at {broker.bootstrap}" in out
    assert 'topic "kcat-meta" with 3 partitions:' in out
    for p in range(3):
        assert f"partition {p}, leader 1, replicas: 1, isrs: 1" in out

    # ApiVersions negotiation is kcat's default; naming it changes nothing.
    one = kcat(broker, "-X", "api.version.request=true", "-L", "-t", "kcat-meta")
    assert "1 topics:" in one and 'topic "kcat-meta" with 3 partitions:' in one


def test_kcat_reads_from_offset_and_reports_end(broker):
    create_topic(broker, "kcat-offsets")
    write_confluent(broker, "kcat-offsets", messages(10, "m"))
    out = kcat(broker, "-C", "-t", "kcat-offsets", "-p", "0", "-o", "7", "-e", "-f", "%o %s\n")
    assert out.splitlines() == [f"{i} m-value-{i}-{'x' * (i % 7)}" for i in range(7, 10)]
    # A negative offset counts back from the end.
    out = kcat(broker, "-C", "-t", "kcat-offsets", "-p", "0", "-o", "-2", "-e", "-f", "%o\n")
    assert out.splitlines() == ["8", "9"]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kcat_compressed_produce_is_read_by_confluent(broker, codec):
    create_topic(broker, f"kcat-{codec}")
    pairs = messages(50, codec)
    write_kcat(broker, f"kcat-{codec}", pairs, "-z", codec)
    assert read_confluent(broker, f"kcat-{codec}", len(pairs)) == expect(pairs)


# ---------------------------------------------------------------- kafka-python


def kafka_python_codec_available(codec):
    import kafka.codec

    return {
        None: True,
        "gzip": kafka.codec.has_gzip(),
        "snappy": kafka.codec.has_snappy(),
        "lz4": kafka.codec.has_lz4(),
        "zstd": kafka.codec.has_zstd(),
    }[codec]


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"], ids=str)
def test_kafka_python_producer_and_consumer(broker, codec):
    if not kafka_python_codec_available(codec):
        pytest.skip(f"kafka-python has no {codec} library installed")
    topic = f"kp-{codec}"
    create_topic(broker, topic)
    pairs = messages(200, "kp")
    write_kafka_python(broker, topic, pairs, compression_type=codec, linger_ms=20)
    assert read_kafka_python(broker, topic, len(pairs)) == expect(pairs)
    # librdkafka decompresses what kafka-python compressed.
    assert read_confluent(broker, topic, len(pairs)) == expect(pairs)


def test_kafka_python_consumer_seeks_to_offset(broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    create_topic(broker, "kp-seek")
    write_confluent(broker, "kp-seek", messages(30, "s"))
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = KpTopicPartition("kp-seek", 0)
        c.assign([tp])
        assert c.end_offsets([tp]) == {tp: 30}
        assert c.beginning_offsets([tp]) == {tp: 0}
        c.seek(tp, 25)
        got = []
        deadline = time.time() + POLL_DEADLINE_S
        while len(got) < 5 and time.time() < deadline:
            for records in c.poll(timeout_ms=200).values():
                got.extend(r.offset for r in records)
        assert got == [25, 26, 27, 28, 29]
        assert c.position(tp) == 30
    finally:
        c.close()


def test_kafka_python_admin_creates_and_deletes_topics(broker):
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic as KpNewTopic

    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    confluent = AdminClient({"bootstrap.servers": broker.bootstrap})
    try:
        kp.create_topics([KpNewTopic("kp-made-1", 4, 1), KpNewTopic("kp-made-2", 1, 1)])
        md = confluent.list_topics(timeout=REQUEST_TIMEOUT_S)
        assert len(md.topics["kp-made-1"].partitions) == 4
        assert len(md.topics["kp-made-2"].partitions) == 1
        assert {"kp-made-1", "kp-made-2"} <= set(kp.list_topics())

        kp.delete_topics(["kp-made-1"])
        md = confluent.list_topics(timeout=REQUEST_TIMEOUT_S)
        assert "kp-made-1" not in md.topics and "kp-made-2" in md.topics
    finally:
        kp.close()


# ---------------------------------------------------------------- confluent-kafka


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_compressed_produce_is_read_by_kcat(broker, codec):
    topic = f"cf-{codec}"
    create_topic(broker, topic)
    pairs = messages(100, codec)
    write_confluent(broker, topic, pairs, **{"compression.type": codec, "linger.ms": 20})
    assert read_kcat(broker, topic, len(pairs)) == expect(pairs)


def test_confluent_headers_reach_kafka_python(broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    create_topic(broker, "cf-headers")
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("cf-headers", key=b"k", value=b"v", partition=0, headers=[("h1", b"one"), ("h2", b""), ("h1", b"again")])
    assert p.flush(REQUEST_TIMEOUT_S) == 0
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = KpTopicPartition("cf-headers", 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        deadline = time.time() + POLL_DEADLINE_S
        while not got and time.time() < deadline:
            for records in c.poll(timeout_ms=200).values():
                got.extend(records)
    finally:
        c.close()
    assert len(got) == 1
    assert list(got[0].headers) == [("h1", b"one"), ("h2", b""), ("h1", b"again")]


# ---------------------------------------------------------------- old and new clients together


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_client_reads_what_the_others_wrote(broker, writer):
    """kafka-python negotiates old API versions, kcat's librdkafka 2.0.2
    middling ones and confluent-kafka's librdkafka 2.16 the newest: every
    pair must agree on the bytes."""
    topic = f"mix-{writer}"
    create_topic(broker, topic)
    first = messages(40, writer)
    WRITERS[writer](broker, topic, first)
    for reader in sorted(READERS):
        if reader == writer:
            continue
        assert READERS[reader](broker, topic, len(first)) == expect(first), f"{writer} -> {reader}"

    # A second round appends after the first: offsets continue.
    second = messages(5, writer + "-again")
    WRITERS[writer](broker, topic, second)
    for reader in sorted(READERS):
        if reader == writer:
            continue
        got = READERS[reader](broker, topic, len(first) + len(second))
        assert got == expect(first) + expect(second, len(first)), f"{writer} -> {reader}"


IDEMPOTENT_WRITERS = {
    "kcat": lambda broker, topic, pairs: write_kcat(broker, topic, pairs, "-X", "enable.idempotence=true"),
    "kafka-python": lambda broker, topic, pairs: write_kafka_python(broker, topic, pairs, enable_idempotence=True),
    "confluent": lambda broker, topic, pairs: write_confluent(broker, topic, pairs, **{"enable.idempotence": True}),
}


@pytest.mark.parametrize("writer", sorted(IDEMPOTENT_WRITERS))
def test_idempotent_producer_of_each_client(broker, writer):
    """InitProducerId and sequence checks at the versions each client picks
    (librdkafka 2.0.2 and 2.16, kafka-python)."""
    topic = f"idempotent-{writer}"
    create_topic(broker, topic)
    pairs = messages(500, writer)
    IDEMPOTENT_WRITERS[writer](broker, topic, pairs)
    assert read_confluent(broker, topic, len(pairs)) == expect(pairs)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_offset_for_leader_epoch_answers_the_end_of_epoch_0(broker, version):
    """Clients validate their positions after a leader change with
    OffsetForLeaderEpoch; on one node every partition has been at epoch 0."""
    from kafka.protocol.offset_for_leader_epoch import OffsetForLeaderEpochRequest

    from kafka_helpers import admin_request

    request_class = OffsetForLeaderEpochRequest[version]
    if version >= 4:
        # kafka-python 2.3 declares v4 without marking it flexible (its
        # header would be v1): fix that here.
        response_class = type("Response_v4", (request_class.RESPONSE_TYPE,), {"FLEXIBLE_VERSION": True})
        request_class = type(
            "Request_v4", (request_class,), {"FLEXIBLE_VERSION": True, "RESPONSE_TYPE": response_class}
        )
    topic = f"epochs-v{version}"
    create_topic(broker, topic)
    write_confluent(broker, topic, messages(5, "epoch"))

    def ask(partition, current_epoch, epoch):
        fields = dict(topics=[(topic, [(partition, current_epoch, epoch)])])
        if version >= 3:
            fields["replica_id"] = -1
        if version >= 4:
            fields = dict(replica_id=-1, topics=[(topic, [(partition, current_epoch, epoch, {})], {})], tags={})
        response = admin_request(broker.bootstrap, request_class(**fields))
        (_, [answer, *_], *_), = response.topics
        return tuple(answer[:4])  # error_code, partition, leader_epoch, end_offset

    assert ask(0, 0, 0) == (0, 0, 0, 5)
    assert ask(0, -1, 0) == (0, 0, 0, 5), "current epoch -1 means: no check"
    assert ask(0, 0, 3) == (0, 0, -1, -1), "an epoch after the current one has no end yet"
    assert ask(0, 1, 0)[0] == 75  # UNKNOWN_LEADER_EPOCH: the client is ahead of us
    assert ask(7, 0, 0)[0] == 3  # UNKNOWN_TOPIC_OR_PARTITION

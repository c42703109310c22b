"""The data path end to end with real clients (confluent-kafka on librdkafka
2.16, and kcat on Debian's librdkafka 2.0.2): produce and fetch in every
codec, key placement, old and new clients on one topic, large messages,
ListOffsets by time, restarts in the middle of a produce stream, and fetch
long polls.

Retention and DeleteRecords are covered elsewhere.
"""

import json
import random
import subprocess
import time
import zlib

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, TopicPartition

from kafka_helpers import (
    DeliveryTracker,
    admin_request,
    consume_all,
    consume_to_watermarks,
    create_topic,
    flush,
    make_consumer,
    make_producer,
    poll_until,
    produce,
    stream_through_restart,
    watermarks,
)

MiB = 1024 * 1024


def now_ms():
    return int(time.time() * 1000)


# -- 1. every codec, byte-exact ------------------------------------------------

CODEC_MESSAGE_COUNT = 100_000
CODEC_PARTITION_COUNT = 8
CODEC_KEY_COUNT = 10_000


class CodecMessages:
    """A deterministic set of messages: message i has a key shared by a
    tenth of the keys' messages, a value naming i followed by 0..200 bytes
    mixing random and repetitive content, two headers and timestamp t0 + i."""

    def __init__(self, label, count, seed):
        rng = random.Random(seed)
        # Half random, half repetitive, so every codec has something to
        # compress and something it cannot.
        self.pool = rng.randbytes(32 * 1024) + (b"sluice-" * 4700)[: 32 * 1024]
        self.pool_len = len(self.pool)
        self.label = label.encode()
        self.count = count
        self.t0 = now_ms() - 3_600_000
        self.rng = random.Random(seed + 1)
        self.tails = [(self.rng.randrange(self.pool_len - 256), self.rng.randrange(201)) for _ in range(count)]

    def key(self, i):
        return b"key-%05d" % (i % CODEC_KEY_COUNT)

    def value(self, i):
        start, length = self.tails[i]
        return b"%s-%08d|" % (self.label, i) + self.pool[start : start + length]

    def headers(self, i):
        start, _ = self.tails[i]
        return [("seq", b"%d" % i), ("bin", self.pool[start + 3 : start + 3 + (i % 17)])]

    def timestamp(self, i):
        return self.t0 + i

    def index_of(self, value):
        prefix = value.split(b"|", 1)[0]
        label, _, i = prefix.rpartition(b"-")
        assert label == self.label, f"value from elsewhere: {value[:40]!r}"
        return int(i)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_codec_round_trips_100k_keyed_messages_byte_exact(broker, codec):
    topic = f"codec-{codec}"
    partitions = range(CODEC_PARTITION_COUNT)
    create_topic(broker.bootstrap, topic, CODEC_PARTITION_COUNT)
    msgs = CodecMessages(codec, CODEC_MESSAGE_COUNT, seed=zlib.crc32(codec.encode()))

    tracker = DeliveryTracker(identify=lambda m: m.value())
    producer = make_producer(broker.bootstrap, acks="all", linger_ms=5, compression_type=codec)
    for i in range(msgs.count):
        produce(
            producer,
            topic,
            key=msgs.key(i),
            value=msgs.value(i),
            headers=msgs.headers(i),
            timestamp=msgs.timestamp(i),
            on_delivery=tracker,
        )
        if i % 1000 == 0:
            producer.poll(0)
    flush(producer, 60)
    assert not tracker.failed, f"{len(tracker.failed)} failed deliveries, e.g. {next(iter(tracker.failed.values()))}"
    assert len(tracker.delivered) == msgs.count

    records = consume_all(broker.bootstrap, topic, partitions, msgs.count)

    seen = [False] * msgs.count
    last_index_per_key = {}
    for r in records:
        i = msgs.index_of(r.value)
        assert not seen[i], f"message {i} read twice (again at {r.partition}:{r.offset})"
        seen[i] = True
        assert r.value == msgs.value(i), f"message {i}: value differs"
        assert r.key == msgs.key(i), f"message {i}: key {r.key!r} != {msgs.key(i)!r}"
        assert r.headers == msgs.headers(i), f"message {i}: headers {r.headers!r} != {msgs.headers(i)!r}"
        assert (r.timestamp_type, r.timestamp) == (TIMESTAMP_CREATE_TIME, msgs.timestamp(i)), (
            f"message {i}: timestamp {(r.timestamp_type, r.timestamp)}"
        )
        assert (r.partition, r.offset) == tracker.delivered[r.value], (
            f"message {i} read at {r.partition}:{r.offset}, delivery report said {tracker.delivered[r.value]}"
        )
        # One producer, no errors: each key's messages keep their order.
        assert last_index_per_key.get(r.key, -1) < i, f"key {r.key!r} out of order at message {i}"
        last_index_per_key[r.key] = i
    missing = [i for i, s in enumerate(seen) if not s]
    assert not missing, f"{len(missing)} messages missing, e.g. {missing[:10]}"
    # Keys spread over the partitions.
    assert {r.partition for r in records} == set(partitions)


# -- 2. key placement ---------------------------------------------------------


def test_same_key_lands_in_same_partition_across_producer_instances(broker):
    topic = "keyed"
    partition_count = 8
    create_topic(broker.bootstrap, topic, partition_count)
    keys = [b"user-%d" % k for k in range(64)]

    placements = {}  # key -> set of partitions, over both producers
    for producer_no in range(2):
        tracker = DeliveryTracker(identify=lambda m: (m.key(), m.value()))
        producer = make_producer(broker.bootstrap)
        for round_no in range(3):
            for key in keys:
                produce(producer, topic, key=key, value=b"p%d-r%d" % (producer_no, round_no), on_delivery=tracker)
        flush(producer)
        assert not tracker.failed, tracker.failed
        assert len(tracker.delivered) == len(keys) * 3
        for (key, _), (partition, _) in tracker.delivered.items():
            placements.setdefault(key, set()).add(partition)
        del producer

    for key, parts in placements.items():
        assert len(parts) == 1, f"key {key!r} landed in partitions {sorted(parts)}"
        # librdkafka's default partitioner (consistent_random): CRC-32 of the
        # key modulo the partition count the broker reported.
        assert parts == {zlib.crc32(key) % partition_count}, f"key {key!r} in {parts}"
    used = set().union(*placements.values())
    assert len(used) >= 4, f"64 keys only used partitions {sorted(used)}"

    # What was read back sits where the delivery reports said.
    records = consume_all(broker.bootstrap, topic, range(partition_count), 2 * 3 * len(keys))
    for r in records:
        assert placements[r.key] == {r.partition}, f"key {r.key!r} read from partition {r.partition}"


# -- old and new clients on one topic ------------------------------------------


def kcat(*args, stdin=b""):
    """Runs Debian's kcat, built on librdkafka 2.0.2: older Produce and Fetch
    versions than the confluent-kafka wheel's."""
    result = subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=60)
    assert result.returncode == 0, f"kcat {args} exited {result.returncode}: {result.stderr.decode(errors='replace')}"
    return result.stdout


KCAT_MESSAGE_COUNT = 1000


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_old_and_new_librdkafka_read_each_others_messages(broker, codec):
    """kcat (librdkafka 2.0.2) and confluent-kafka (librdkafka 2.16) both
    write into one topic, then each reads all of it: both see every message,
    at the same partition and offset, keyed to the same partition."""
    topic = f"mixed-{codec}"
    partition_count = 4
    create_topic(broker.bootstrap, topic, partition_count)

    expected = {}  # value -> (key, headers)
    lines = []
    for i in range(KCAT_MESSAGE_COUNT):
        key, value = b"key-%d" % (i % 100), b"kcat-%s-%d-%s" % (codec.encode(), i, b"x" * (i % 50))
        lines.append(key + b":" + value + b"\n")
        expected[value] = (key, [("src", b"kcat")])
    kcat("-P", "-b", broker.bootstrap, "-t", topic, "-K", ":", "-H", "src=kcat",
         "-X", f"compression.codec={codec}", "-X", "acks=all", stdin=b"".join(lines))

    tracker = DeliveryTracker()
    producer = make_producer(broker.bootstrap, compression_type=codec)
    for i in range(KCAT_MESSAGE_COUNT):
        key, value = b"key-%d" % (i % 100), b"py-%s-%d-%s" % (codec.encode(), i, b"y" * (i % 50))
        produce(producer, topic, key=key, value=value, headers=[("src", b"py")], on_delivery=tracker)
        expected[value] = (key, [("src", b"py")])
    flush(producer)
    assert not tracker.failed, tracker.failed

    records = consume_all(broker.bootstrap, topic, range(partition_count), len(expected))
    assert {r.value for r in records} == set(expected)
    for r in records:
        assert (r.key, r.headers) == expected[r.value], f"{r.partition}:{r.offset} {r.key!r} {r.headers!r}"
        assert r.partition == zlib.crc32(r.key) % partition_count, f"key {r.key!r} in partition {r.partition}"

    out = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q",
               "-X", "check.crcs=true")
    seen_by_kcat = sorted(
        (m["partition"], m["offset"], m["key"].encode(), m["payload"].encode(), tuple(m["headers"]))
        for m in map(json.loads, out.decode().splitlines())
    )
    seen_by_confluent = sorted(
        (r.partition, r.offset, r.key, r.value, tuple(x for h in r.headers for x in (h[0], h[1].decode())))
        for r in records
    )
    assert seen_by_kcat == seen_by_confluent


# -- 3. large messages ---------------------------------------------------------

TOPIC_MAX_MESSAGE_BYTES = 2 * MiB


def test_one_mib_messages_round_trip_and_oversized_batch_is_rejected(broker):
    topic = "large"
    create_topic(broker.bootstrap, topic, 1, config={"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)})
    rng = random.Random(7)
    values = [rng.randbytes(MiB) for _ in range(20)]

    # The producer's own limit is far above the topic's, so that the broker
    # is the one to judge the oversized message below.
    producer_limit = 4 * TOPIC_MAX_MESSAGE_BYTES
    tracker = DeliveryTracker(identify=lambda m: m.key())
    producer = make_producer(broker.bootstrap, message_max_bytes=producer_limit)
    for n, value in enumerate(values):
        produce(producer, topic, key=b"big-%d" % n, value=value, on_delivery=tracker)
        producer.poll(0)
    flush(producer, 60)
    assert not tracker.failed, tracker.failed
    assert len(tracker.delivered) == len(values)

    # Default consumer fetch sizes: max.partition.fetch.bytes is 1 MiB, less
    # than one of these batches, so the broker must still return a batch
    # bigger than the partition limit for the consumer to make progress.
    records = consume_all(broker.bootstrap, topic, [0], len(values))
    for n, r in enumerate(records):
        assert r.key == b"big-%d" % n
        assert len(r.value) == MiB and r.value == values[n], f"message {n} differs"

    # Over the topic's max.message.bytes: refused by the broker.
    oversized = rng.randbytes(TOPIC_MAX_MESSAGE_BYTES + 1024)
    produce(producer, topic, key=b"too-big", value=oversized, on_delivery=tracker)
    flush(producer, 60)
    err = tracker.failed.get(b"too-big")
    assert err is not None, "an oversized message was accepted"
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"expected MESSAGE_TOO_LARGE, got {err}"

    # Nothing of it was appended, and the partition still takes messages.
    assert watermarks(broker.bootstrap, topic, [0])[0] == (0, len(values))
    produce(producer, topic, key=b"after", value=b"small", on_delivery=tracker)
    flush(producer)
    assert tracker.delivered[b"after"] == (0, len(values))


# With no batch cache every fetch reads the disk, where a shard reads the
# partitions a fetch's budget reaches all at once and cuts the results to
# the budget in partition order.
@pytest.mark.broker_args("--batch.cache.bytes=0")
def test_fetches_from_disk_within_small_budgets_return_every_message_in_order(broker):
    topic = "from-disk"
    partitions = list(range(8))
    create_topic(broker.bootstrap, topic, len(partitions))
    rng = random.Random(11)
    values = [b"%06d|" % i + rng.randbytes(rng.randrange(3000)) for i in range(4000)]
    tracker = DeliveryTracker()
    producer = make_producer(broker.bootstrap)
    for i, value in enumerate(values):
        produce(producer, topic, partition=i % len(partitions), value=value, on_delivery=tracker)
        producer.poll(0)
    flush(producer, 60)
    assert not tracker.failed, tracker.failed
    expected = [[v for i, v in enumerate(values) if i % len(partitions) == p] for p in partitions]

    # Budgets far below the data: the partition limits add up to more than
    # the response's, and batches of up to 1 MB exceed both.
    small = {"fetch_max_bytes": 40000, "max_partition_fetch_bytes": 9000, "message_max_bytes": 20000}
    for overrides in (small, {}):
        records = consume_all(broker.bootstrap, topic, partitions, len(values), **overrides)
        got = [[r.value for r in records if r.partition == p] for p in partitions]
        for p in partitions:
            assert got[p] == expected[p], f"partition {p} differs with {overrides or 'default budgets'}"

    # Empty partitions before one whose only batch is over both limits:
    # that batch is still the response's first, so it must come back.
    sparse = "from-disk-sparse"
    create_topic(broker.bootstrap, sparse, 8)
    big = rng.randbytes(30000)
    produce(producer, sparse, partition=7, value=big, on_delivery=tracker)
    flush(producer)
    assert not tracker.failed, tracker.failed
    # One Fetch naming the empty partitions first (clients may rotate the
    # order; this request does not).
    from kafka.protocol.fetch import FetchRequest

    request = FetchRequest[4](
        replica_id=-1,
        max_wait_time=100,
        min_bytes=1,
        max_bytes=small["fetch_max_bytes"],
        isolation_level=0,
        topics=[(sparse, [(p, 0, small["max_partition_fetch_bytes"]) for p in partitions])],
    )
    response = admin_request(broker.bootstrap, request)
    (topic_name, answers), = response.topics
    sizes = {p: len(records or b"") for p, error, _, _, _, records in answers if error == 0}
    assert topic_name == sparse and sorted(sizes) == partitions, response
    assert sizes[7] > len(big) and all(sizes[p] == 0 for p in partitions[:7]), sizes


# -- 4. ListOffsets by timestamp ------------------------------------------------

TIMES_MESSAGE_COUNT = 10
TIMES_STEP_MS = 1000


def test_offsets_for_times_finds_earliest_offset_at_or_after_timestamp(broker):
    """Partition 0 holds one record per batch, partition 1 all records in one
    uncompressed batch, partition 2 all in one lz4 batch: the answer is the
    record's offset in every case, not the batch's."""
    topic = "times"
    create_topic(broker.bootstrap, topic, 3)
    t0 = now_ms() - 600_000

    def ts(i):
        return t0 + i * TIMES_STEP_MS

    one_per_batch = make_producer(broker.bootstrap, linger_ms=0)
    for i in range(TIMES_MESSAGE_COUNT):
        produce(one_per_batch, topic, partition=0, value=b"m%d" % i, timestamp=ts(i))
        flush(one_per_batch)
    for partition, codec in ((1, "none"), (2, "lz4")):
        batching = make_producer(broker.bootstrap, linger_ms=1000, compression_type=codec)
        for i in range(TIMES_MESSAGE_COUNT):
            produce(batching, topic, partition=partition, value=b"m%d" % i, timestamp=ts(i))
        flush(batching)

    n = TIMES_MESSAGE_COUNT
    cases = [
        (t0 - 60_000, 0),  # before every record
        (ts(0), 0),  # exact hit, first
        (ts(3), 3),  # exact hit
        (ts(3) + 1, 4),  # between records: the next one
        (ts(7) - 1, 7),
        (ts(n - 1), n - 1),  # exact hit, last
        (ts(n - 1) + 1, -1),  # after every record: no such message
        (ts(n - 1) + 3_600_000, -1),
    ]
    consumer = make_consumer(broker.bootstrap)
    try:
        for partition in range(3):
            assert consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10) == (0, n)
            for target, expected in cases:
                [found] = consumer.offsets_for_times([TopicPartition(topic, partition, target)], timeout=10)
                assert found.error is None, found.error
                assert found.offset == expected, (
                    f"partition {partition}: timestamp t0+{target - t0}ms gave offset {found.offset}, "
                    f"expected {expected}"
                )
            # And the records found carry the timestamps they were sent with.
            records = consume_all(broker.bootstrap, topic, [partition], n)
            assert [r.timestamp for r in records] == [ts(i) for i in range(n)]
    finally:
        consumer.close()


# -- 5, 6. restarts in the middle of a produce stream ----------------------------

RESTART_MESSAGE_COUNT = 30_000
RESTART_PARTITION_COUNT = 4


def produce_through_restart(broker, kill):
    """Every value whose delivery report said success is read back after a
    restart in the middle of the stream."""
    topic = "restart-kill" if kill else "restart-graceful"
    partitions = range(RESTART_PARTITION_COUNT)
    create_topic(broker.bootstrap, topic, RESTART_PARTITION_COUNT)
    values = [b"msg-%06d" % i for i in range(RESTART_MESSAGE_COUNT)]
    tracker = stream_through_restart(broker, topic, values, kill)

    records = consume_to_watermarks(broker.bootstrap, topic, partitions, timeout_s=60)
    read = {r.value for r in records}
    missing = sorted(set(tracker.delivered) - read)
    assert not missing, (
        f"{len(missing)} acknowledged messages lost across the restart, e.g. {missing[:10]}"
    )
    strangers = read - set(values)
    assert not strangers, f"read values nobody produced, e.g. {sorted(strangers)[:5]}"


def test_graceful_restart_mid_stream_loses_no_acknowledged_message(broker):
    produce_through_restart(broker, kill=False)


def test_kill_9_mid_stream_loses_no_acknowledged_message(broker):
    produce_through_restart(broker, kill=True)


# -- 7. fetch: long poll, and from the middle of a batch --------------------------


def test_long_poll_fetch_receives_message_produced_while_waiting(broker):
    topic = "long-poll"
    create_topic(broker.bootstrap, topic, 1)
    consumer = make_consumer(broker.bootstrap, fetch_wait_max_ms=3000)
    try:
        # Offset 0 is the end of the empty partition.
        consumer.assign([TopicPartition(topic, 0, 0)])
        assert poll_until(consumer, lambda m: True, 1.0) is None, "empty partition returned a message"
        producer = make_producer(broker.bootstrap)
        produce(producer, topic, key=b"late", value=b"arrived while the consumer waited")
        flush(producer)
        msg = poll_until(consumer, lambda m: True, 20)
        assert msg is not None, "message produced during a long poll never reached the consumer"
        assert (msg.offset(), msg.key(), msg.value()) == (0, b"late", b"arrived while the consumer waited")
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_fetch_from_middle_of_batch_yields_records_from_that_offset(broker, codec):
    topic = f"mid-batch-{codec}"
    create_topic(broker.bootstrap, topic, 1)
    tracker = DeliveryTracker(identify=lambda m: m.value())
    # A long linger and a single flush: the ten records go in one batch.
    producer = make_producer(broker.bootstrap, linger_ms=1000, compression_type=codec)
    for i in range(10):
        produce(producer, topic, partition=0, key=b"k%d" % i, value=b"v%d" % i, on_delivery=tracker)
    flush(producer)
    assert sorted(tracker.delivered.values()) == [(0, i) for i in range(10)]

    records = consume_to_watermarks(broker.bootstrap, topic, [0], start_offset=5)
    assert [(r.offset, r.key, r.value) for r in records] == [(i, b"k%d" % i, b"v%d" % i) for i in range(5, 10)]

"""Client-side helpers shared by the end-to-end tests: creating topics,
producing with delivery tracking, producing through a broker restart, and
reading partitions back to their high watermarks with confluent-kafka
(librdkafka).

The consumers made here use assign() with explicit offsets and never
commit; group tests make their own.
"""

import threading
import time
from collections import namedtuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CLIENT_TIMEOUT_S = 30

# One consumed message, detached from librdkafka's Message object.
Record = namedtuple("Record", "partition offset key value headers timestamp_type timestamp")


def create_topic(bootstrap, topic, partitions, config=None, timeout_s=CLIENT_TIMEOUT_S):
    """Creates a topic through CreateTopics and waits until Metadata shows
    every partition with a leader."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new_topic = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})
    futures = admin.create_topics([new_topic], operation_timeout=timeout_s, request_timeout=timeout_s)
    futures[topic].result(timeout=timeout_s)
    wait_for_topic(admin, topic, partitions, timeout_s)


def wait_for_topic(admin, topic, partitions, timeout_s=CLIENT_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=5).topics.get(topic)
        last = md
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in md.partitions.values())
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"topic {topic} not ready with {partitions} partitions: {last}")


def make_producer(bootstrap, **overrides):
    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5}
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return Producer(config)


def make_consumer(bootstrap, **overrides):
    config = {
        "bootstrap.servers": bootstrap,
        # Required by confluent-kafka; offsets are only ever assigned,
        # never committed.
        "group.id": "e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A bad batch CRC must fail the test, not pass unnoticed.
        "check.crcs": True,
        # An out-of-range offset is a broker bug in these tests: surface it.
        "auto.offset.reset": "error",
    }
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return Consumer(config)


class DeliveryTracker:
    """Delivery callback that records every report, keyed by what the test
    chose as the message's identity (its value by default)."""

    def __init__(self, identify=lambda msg: msg.value()):
        self.identify = identify
        self.delivered = {}  # identity -> (partition, offset)
        self.failed = {}  # identity -> KafkaError
        self.reports = 0

    def __call__(self, err, msg):
        self.reports += 1
        ident = self.identify(msg)
        if err is None:
            self.delivered[ident] = (msg.partition(), msg.offset())
        else:
            self.failed[ident] = err


def produce(producer, topic, **kwargs):
    """Produces one message, serving delivery reports while the local queue
    is full instead of failing with BufferError."""
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            if time.monotonic() > deadline:
                raise
            producer.poll(0.05)


def flush(producer, timeout_s=CLIENT_TIMEOUT_S):
    remaining = producer.flush(timeout_s)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout_s}s"


def watermarks(bootstrap, topic, partitions):
    """{partition: (low, high)} as ListOffsets reports them."""
    consumer = make_consumer(bootstrap)
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=CLIENT_TIMEOUT_S)
            for p in partitions
        }
    finally:
        consumer.close()


def consume_to_watermarks(bootstrap, topic, partitions, timeout_s=60, start_offset=0, **consumer_overrides):
    """Reads every partition from start_offset up to the high watermark it
    has when the read starts. Returns the records in offset order per
    partition, partitions one after the other.

    Fails on any consumer error, on a gap or repeat in offsets, and when the
    watermarks are not reached before the deadline."""
    consumer = make_consumer(bootstrap, **consumer_overrides)
    try:
        high = {}
        for p in partitions:
            _, hw = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=CLIENT_TIMEOUT_S)
            high[p] = hw
        next_offset = {p: start_offset for p in partitions}
        by_partition = {p: [] for p in partitions}
        pending = {p for p in partitions if next_offset[p] < high[p]}
        if pending:
            consumer.assign([TopicPartition(topic, p, start_offset) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: at {next_offset}, high watermarks {high}"
            )
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                p = msg.partition()
                assert msg.offset() == next_offset[p], (
                    f"{topic}[{p}]: expected offset {next_offset[p]}, got {msg.offset()}"
                )
                next_offset[p] = msg.offset() + 1
                ts_type, ts = msg.timestamp()
                by_partition[p].append(
                    Record(p, msg.offset(), msg.key(), msg.value(), msg.headers(), ts_type, ts)
                )
                if next_offset[p] >= high[p]:
                    pending.discard(p)
        return [r for p in partitions for r in by_partition[p]]
    finally:
        consumer.close()


def consume_all(bootstrap, topic, partitions, expected_count, timeout_s=60, **consumer_overrides):
    """Reads every partition from offset 0 to its high watermark and checks
    that exactly expected_count records are there."""
    records = consume_to_watermarks(bootstrap, topic, partitions, timeout_s, **consumer_overrides)
    assert len(records) == expected_count, f"{topic}: read {len(records)} records, expected {expected_count}"
    return records


def poll_until(consumer, predicate, timeout_s):
    """Polls one message at a time until predicate(msg) holds; returns that
    message, or None at the deadline. Consumer errors other than
    partition EOF are raised."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(err)
        if predicate(msg):
            return msg
    return None


def wait_until(condition, timeout_s, interval_s=0.02, message="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")


RESTART_STEP_MESSAGES = 50


def stream_through_restart(broker, topic, values, kill, **producer_overrides):
    """Produces `values` with acks=all as a steady stream of small steps, and
    restarts the broker (kill -9 when `kill`) once a third of them is
    acknowledged while the stream goes on; the last third waits for the
    broker to be back. Returns the DeliveryTracker once every message has
    its delivery report, all successful."""
    tracker = DeliveryTracker(identify=lambda m: m.value())
    config = dict(
        acks="all",
        linger_ms=5,
        message_timeout_ms=90_000,
        retry_backoff_ms=50,
        retry_backoff_max_ms=500,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=500,
    )
    config.update(producer_overrides)
    producer = make_producer(broker.bootstrap, **config)
    count = len(values)
    restart_error = []
    restart_done = threading.Event()

    def restart():
        try:
            broker.restart(kill=kill)
        except BaseException as e:  # reported by the main thread
            restart_error.append(e)
        finally:
            restart_done.set()

    restarter = threading.Thread(target=restart)
    after_restart_from = 2 * count // 3
    sent = 0
    sent_at_restart = None
    sent_while_restarting = 0
    deadline = time.monotonic() + 120
    while sent < count:
        assert time.monotonic() < deadline, f"stream stalled at {sent} sent"
        if sent < after_restart_from or restart_done.is_set():
            for _ in range(RESTART_STEP_MESSAGES):
                produce(producer, topic, value=values[sent], on_delivery=tracker)
                sent += 1
                if restarter.is_alive():
                    sent_while_restarting += 1
                if sent == count:
                    break
        # Serves delivery reports and paces the stream: the restart happens
        # with requests in flight and messages queued behind them.
        producer.poll(0.005)
        if not restarter.is_alive() and not restart_done.is_set() and len(tracker.delivered) >= count // 3:
            sent_at_restart = sent
            restarter.start()
    restarter.join(120)
    assert restart_done.is_set(), "restart hung"
    assert not restart_error, f"restart failed: {restart_error[0]}"
    # Whether requests are in flight at the very moment of the stop depends
    # on timing; what is guaranteed is a stream that goes on while the
    # broker stops and comes back, with acknowledged messages on both sides.
    assert sent_at_restart and sent_while_restarting, "the restart did not happen in the middle of the stream"

    flush(producer, 120)
    assert tracker.reports == count
    # The broker came back within the producer's retry window, so nothing
    # should have failed at all.
    assert not tracker.failed, (
        f"{len(tracker.failed)} deliveries failed, e.g. {sorted(tracker.failed.items())[:5]}"
    )
    return tracker


def admin_request(bootstrap, request):
    """Sends one request with kafka-python's client and returns the decoded
    response."""
    from kafka.client_async import KafkaClient

    client = KafkaClient(bootstrap_servers=bootstrap, client_id="e2e-admin")
    try:
        node = client.least_loaded_node()
        assert client.await_ready(node, timeout_ms=CLIENT_TIMEOUT_S * 1000)
        future = client.send(node, request)
        client.poll(future=future, timeout_ms=CLIENT_TIMEOUT_S * 1000)
        assert future.succeeded(), f"request failed: {future.exception}"
        return future.value
    finally:
        client.close()

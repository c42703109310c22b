"""Consumer groups and committed offsets, with real clients."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# A short first-rebalance delay keeps tests quick; 6 s is Kafka's minimum
# session timeout, which the "killed consumer" test waits out.
GROUP_FLAGS = ("--group.initial.rebalance.delay.ms=300",)
SESSION_TIMEOUT_MS = 6000
HERE = Path(__file__).resolve().parent


def create_topic(bootstrap, name, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(15)


def produce_numbers(bootstrap, topic, count, start=0):
    """Produces values start..start+count as text, keyed; returns once all
    are acknowledged (acks=all)."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failed = []
    for i in range(start, start + count):
        p.produce(topic, key=str(i).encode(), value=str(i).encode(), on_delivery=lambda e, m: e and failed.append(e))
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not failed, failed[:3]


def group_consumer(bootstrap, group, **extra):
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": 500,
        "enable.auto.commit": False,
    }
    config.update(extra)
    return Consumer(config)


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_three_consumers_split_twelve_partitions_and_consume_everything_once(broker):
    topic = "orders12"
    create_topic(broker.bootstrap, topic, 12)
    total = 100_000
    produce_numbers(broker.bootstrap, topic, total)

    consumers = [group_consumer(broker.bootstrap, "split", **{"enable.auto.commit": True}) for _ in range(3)]
    for c in consumers:
        c.subscribe([topic])
    seen = []
    lock = threading.Lock()
    stop = threading.Event()
    assignments = [None] * 3

    def run(i):
        c = consumers[i]
        while not stop.is_set():
            for m in c.consume(500, 0.2):
                if m.error():
                    continue
                with lock:
                    seen.append(int(m.value()))
            assignments[i] = sorted(tp.partition for tp in c.assignment())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(seen) >= total, 90, f"{total} messages (have {len(seen)})")
    # Let assignments settle: all three members hold partitions.
    wait_for(lambda: all(a for a in assignments), 30, "every consumer to hold partitions")
    stop.set()
    for t in threads:
        t.join()
    for c in consumers:
        c.close()
    parts = [p for a in assignments for p in a]
    assert sorted(parts) == list(range(12)), f"assignments overlap or miss partitions: {assignments}"
    assert len(seen) == total, f"duplicates: {len(seen) - len(set(seen))}"
    assert sorted(seen) == list(range(total))


CHILD = r"""
import sys, time, json
from confluent_kafka import Consumer
bootstrap, group, topic = sys.argv[1:4]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": %d,
              "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"})
c.subscribe([topic])
while True:
    c.poll(0.2)
    print(json.dumps(sorted(tp.partition for tp in c.assignment())), flush=True)
""" % SESSION_TIMEOUT_MS


def spawn_child_consumer(bootstrap, group, topic):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, bootstrap, group, topic],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    latest = {"assignment": []}

    def pump():
        for line in proc.stdout:
            try:
                latest["assignment"] = json.loads(line)
            except ValueError:
                pass

    threading.Thread(target=pump, daemon=True).start()
    return proc, latest


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_a_killed_consumer_loses_its_partitions_to_the_others(broker):
    topic = "failover"
    create_topic(broker.bootstrap, topic, 6)
    children = [spawn_child_consumer(broker.bootstrap, "failover-group", topic) for _ in range(3)]
    try:
        def split_three_ways():
            parts = [tuple(c[1]["assignment"]) for c in children]
            return all(parts) and sorted(p for a in parts for p in a) == list(range(6))

        wait_for(split_three_ways, 60, "the three consumers to share the six partitions")
        victim, _ = children[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        survivors = children[1:]

        def survivors_have_everything():
            parts = [p for c in survivors for p in c[1]["assignment"]]
            return sorted(parts) == list(range(6))

        # The victim sends nothing more: only its session timeout can free
        # its partitions. Generous bound: timeout plus a rebalance.
        wait_for(survivors_have_everything, SESSION_TIMEOUT_MS / 1000 + 30, "the survivors to take over")
    finally:
        for proc, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def consume_count(consumer, count, timeout):
    got = []
    deadline = time.time() + timeout
    while len(got) < count and time.time() < deadline:
        for m in consumer.consume(1000, 0.5):
            if not m.error():
                got.append(int(m.value()))
    return got


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_a_restarted_consumer_resumes_from_its_commits(broker):
    topic = "resume"
    create_topic(broker.bootstrap, topic, 3)
    produce_numbers(broker.bootstrap, topic, 3000)
    c = group_consumer(broker.bootstrap, "resumers")
    c.subscribe([topic])
    first = consume_count(c, 1000, 60)
    assert len(first) >= 1000
    c.commit(asynchronous=False)
    c.close()
    c = group_consumer(broker.bootstrap, "resumers")
    c.subscribe([topic])
    rest = consume_count(c, 3000 - len(first), 60)
    # Nothing is read twice after a clean commit, nothing is missing.
    time.sleep(1)
    rest += [int(m.value()) for m in c.consume(1000, 1) if not m.error()]
    c.close()
    assert not set(first) & set(rest), "duplicates after a clean commit"
    assert sorted(first + rest) == list(range(3000))


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_acknowledged_commits_survive_kill_9(broker):
    topic = "durable-commits"
    create_topic(broker.bootstrap, topic, 4)
    produce_numbers(broker.bootstrap, topic, 400)
    c = group_consumer(broker.bootstrap, "durable")
    committed = {}
    offsets = [TopicPartition(topic, p, 10 * (p + 1)) for p in range(4)]
    for tp in c.commit(offsets=offsets, asynchronous=False):
        assert tp.error is None
        committed[tp.partition] = tp.offset
    # Commits with metadata, many times: the last one must win after a crash.
    for round in range(50):
        tps = [TopicPartition(topic, p, 20 + round + p, metadata=f"round-{round}") for p in range(4)]
        for tp in c.commit(offsets=tps, asynchronous=False):
            assert tp.error is None
            committed[tp.partition] = tp.offset
    c.close()
    broker.restart(kill=True)
    c = group_consumer(broker.bootstrap, "durable")
    got = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=20)
    c.close()
    assert {tp.partition: tp.offset for tp in got} == committed
    assert all(tp.metadata == "round-49" for tp in got)


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_kafka_python_group_and_commit_metadata_round_trip(broker):
    from kafka import KafkaConsumer, TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    topic = "kp-group"
    create_topic(broker.bootstrap, topic, 2)
    produce_numbers(broker.bootstrap, topic, 200)
    kc = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id="kp",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    got = []
    for m in kc:
        got.append(int(m.value))
        if len(got) == 200:
            break
    assert sorted(got) == list(range(200))
    tp = KTP(topic, 0)
    try:
        offset_meta = OffsetAndMetadata(7, "note from kafka-python", -1)
    except TypeError:  # older kafka-python: (offset, metadata)
        offset_meta = OffsetAndMetadata(7, "note from kafka-python")
    kc.commit({tp: offset_meta})
    back = kc.committed(tp, metadata=True)
    kc.close()
    assert back.offset == 7
    assert back.metadata == "note from kafka-python"


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_admin_lists_describes_groups_and_their_offsets(broker):
    topic = "viewed"
    create_topic(broker.bootstrap, topic, 2)
    produce_numbers(broker.bootstrap, topic, 100)
    c = group_consumer(broker.bootstrap, "viewers", **{"client.id": "viewer-client"})
    c.subscribe([topic])
    assert len(consume_count(c, 100, 60)) == 100
    c.commit(asynchronous=False)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_groups().result(15)
    assert "viewers" in {g.group_id for g in listed.valid}
    desc = admin.describe_consumer_groups(["viewers"])["viewers"].result(15)
    assert desc.group_id == "viewers"
    assert str(desc.state).endswith("STABLE")
    assert len(desc.members) == 1
    member = desc.members[0]
    assert member.client_id == "viewer-client"
    assert sorted(tp.partition for tp in member.assignment.topic_partitions) == [0, 1]
    from confluent_kafka import ConsumerGroupTopicPartitions
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("viewers")])["viewers"].result(15)
    by_partition = {tp.partition: tp.offset for tp in offsets.topic_partitions}
    assert sum(by_partition.values()) == 100
    c.close()
    # An empty group can be deleted; its offsets go with it.
    wait_for(
        lambda: str(admin.describe_consumer_groups(["viewers"])["viewers"].result(15).state).endswith("EMPTY"),
        30,
        "the group to empty",
    )
    admin.delete_consumer_groups(["viewers"])["viewers"].result(15)
    listed = admin.list_consumer_groups().result(15)
    assert "viewers" not in {g.group_id for g in listed.valid}


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_cooperative_sticky_consumers_share_partitions(broker):
    topic = "coop"
    create_topic(broker.bootstrap, topic, 4)
    produce_numbers(broker.bootstrap, topic, 2000)
    cfg = {"partition.assignment.strategy": "cooperative-sticky"}
    a = group_consumer(broker.bootstrap, "coop-group", **cfg)
    a.subscribe([topic])
    got = consume_count(a, 200, 60)
    b = group_consumer(broker.bootstrap, "coop-group", **cfg)
    b.subscribe([topic])
    # Both consumers are polled from this one thread: librdkafka can
    # deadlock when assignment() runs while another thread is in consume().
    deadline = time.time() + 60
    while time.time() < deadline:
        for c in (a, b):
            got.extend(int(m.value()) for m in c.consume(200, 0.2) if not m.error())
        if a.assignment() and b.assignment() and len(set(got)) >= 2000:
            break
    parts_a = {tp.partition for tp in a.assignment()}
    parts_b = {tp.partition for tp in b.assignment()}
    a.close()
    b.close()
    # The incremental protocol moves partitions without revoking the rest.
    assert parts_a and parts_b and not parts_a & parts_b and parts_a | parts_b == {0, 1, 2, 3}
    assert set(got) == set(range(2000))


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_static_member_restart_keeps_its_partitions(broker):
    topic = "static"
    create_topic(broker.bootstrap, topic, 4)
    cfg = {"group.instance.id": "instance-a"}
    a = group_consumer(broker.bootstrap, "static-group", **cfg)
    b = group_consumer(broker.bootstrap, "static-group", **{"group.instance.id": "instance-b"})
    a.subscribe([topic])
    b.subscribe([topic])
    def both_assigned():
        a.poll(0.1)
        b.poll(0.1)
        return a.assignment() and b.assignment()
    wait_for(both_assigned, 60, "both static members to be assigned")
    before_a = sorted(tp.partition for tp in a.assignment())
    before_b = sorted(tp.partition for tp in b.assignment())
    # A static member leaving does not send LeaveGroup: it comes back under
    # the same instance id within its session timeout, takes its old place,
    # and the group does not rebalance.
    a.close()
    a = group_consumer(broker.bootstrap, "static-group", **cfg)
    a.subscribe([topic])
    def returned():
        a.poll(0.1)
        b.poll(0.1)
        return bool(a.assignment())

    wait_for(returned, 60, "the static member to return")
    assert sorted(tp.partition for tp in a.assignment()) == before_a
    b.poll(0.5)
    assert sorted(tp.partition for tp in b.assignment()) == before_b
    a.close()
    b.close()


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_a_broker_with_a_rebalance_pending_stops_promptly(broker):
    # A joins and is never polled again, so it never rejoins: B's JoinGroup
    # waits on the rebalance (librdkafka's rebalance timeout is 5 minutes).
    topic = "pending"
    create_topic(broker.bootstrap, topic, 2)
    a = group_consumer(broker.bootstrap, "pending-group")
    a.subscribe([topic])
    wait_for(lambda: a.poll(0.1) is None and bool(a.assignment()), 60, "the first member's assignment")
    b = group_consumer(broker.bootstrap, "pending-group")
    b.subscribe([topic])
    for _ in range(10):
        b.poll(0.1)
    # SIGTERM must still end the process cleanly (stop() gives up, and the
    # test fails, if the process outlives the harness's stop deadline).
    assert broker.stop() == 0


@pytest.mark.broker_args(*GROUP_FLAGS)
def test_offsets_of_a_deleted_topic_are_cleaned_up(broker):
    from confluent_kafka import ConsumerGroupTopicPartitions

    create_topic(broker.bootstrap, "doomed", 2)
    create_topic(broker.bootstrap, "kept", 1)
    c = group_consumer(broker.bootstrap, "cleaner")
    tps = [TopicPartition("doomed", 0, 5), TopicPartition("doomed", 1, 6), TopicPartition("kept", 0, 7)]
    assert all(tp.error is None for tp in c.commit(offsets=tps, asynchronous=False))
    c.close()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_topics(["doomed"])["doomed"].result(15)

    def committed():
        got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("cleaner")])["cleaner"].result(15)
        return {(tp.topic, tp.partition): tp.offset for tp in got.topic_partitions}

    assert committed() == {("kept", 0): 7}
    # Also after a restart: the cleanup was durable.
    broker.restart(kill=True)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert committed() == {("kept", 0): 7}


def test_offset_delete_forgets_the_asked_partitions_only(broker):
    """OffsetDelete v0 (neither client's admin API has it: kafka-python's
    protocol classes, defined here)."""
    from kafka.protocol.api import Request, Response
    from kafka.protocol.types import Array, Int16, Int32, Schema, String

    from kafka_helpers import admin_request

    class OffsetDeleteResponse_v0(Response):
        API_KEY = 47
        API_VERSION = 0
        SCHEMA = Schema(
            ("error_code", Int16),
            ("throttle_time_ms", Int32),
            ("topics", Array(("name", String("utf-8")), ("partitions", Array(("partition_index", Int32), ("error_code", Int16))))),
        )

    class OffsetDeleteRequest_v0(Request):
        API_KEY = 47
        API_VERSION = 0
        RESPONSE_TYPE = OffsetDeleteResponse_v0
        SCHEMA = Schema(
            ("group_id", String("utf-8")),
            # A partition is a struct of one int32: on the wire, an int32.
            ("topics", Array(("name", String("utf-8")), ("partitions", Array(Int32)))),
        )

    topic, group = "offset-delete", "offset-delete-group"
    create_topic(broker.bootstrap, topic, 2)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)], asynchronous=False)
        response = admin_request(broker.bootstrap, OffsetDeleteRequest_v0(group_id=group, topics=[(topic, [0])]))
        assert response.error_code == 0
        assert [(t, [tuple(p) for p in ps]) for t, ps in response.topics] == [(topic, [(0, 0)])]
        left = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=30)
        assert [tp.offset for tp in left] == [-1001, 7]  # OFFSET_INVALID: none committed
    finally:
        consumer.close()
    unknown = admin_request(broker.bootstrap, OffsetDeleteRequest_v0(group_id="no-such-group", topics=[(topic, [0])]))
    assert unknown.error_code == 69  # GROUP_ID_NOT_FOUND

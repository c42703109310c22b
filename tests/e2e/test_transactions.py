"""Exactly-once with real clients: idempotent producers across a broker
crash, transactions (commit, abort, fencing, timeouts, restarts), the
read_committed view of them, and a consume-transform-produce loop that
crashes mid-transaction.

confluent-kafka (librdkafka 2.16) drives most of it; kafka-python's
transactional producer is checked too, and kafka-python's protocol classes
send DescribeTransactions and ListTransactions, which neither client's
admin API offers.
"""

import subprocess
import threading
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafka_helpers import (
    CLIENT_TIMEOUT_S,
    DeliveryTracker,
    admin_request,
    create_topic,
    flush,
    make_producer,
    produce,
    stream_through_restart,
    watermarks,
)

PARTITIONS = 4
HERE = Path(__file__).parent


def txn_producer(bootstrap, transactional_id, **overrides):
    producer = make_producer(bootstrap, transactional_id=transactional_id, **overrides)
    producer.init_transactions(CLIENT_TIMEOUT_S)
    return producer


def read_to_end(bootstrap, topic, partitions, isolation, timeout_s=60):
    """Every record of the partitions from offset 0 to the end that the
    isolation level lets the consumer see (the high watermark, or the last
    stable offset for read_committed). Returns {partition: [(offset, value)]}."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "e2e-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "check.crcs": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out = {p: [] for p in partitions}
        at_end = set()
        deadline = time.monotonic() + timeout_s
        while at_end != set(partitions):
            assert time.monotonic() < deadline, f"reading {topic} ({isolation}) did not reach the end"
            for msg in consumer.consume(num_messages=10000, timeout=0.5):
                err = msg.error()
                if err is None:
                    out[msg.partition()].append((msg.offset(), msg.value()))
                    at_end.discard(msg.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                else:
                    raise KafkaException(err)
        return out
    finally:
        consumer.close()


def values_of(by_partition):
    return [v for p in sorted(by_partition) for _, v in by_partition[p]]


def assert_offsets_increase(by_partition):
    for p, records in by_partition.items():
        offsets = [o for o, _ in records]
        assert offsets == sorted(set(offsets)), f"partition {p}: offsets out of order or repeated"


def produce_txn(producer, topic, values, tracker=None):
    """One transaction's records, round-robin over the partitions."""
    for i, v in enumerate(values):
        produce(producer, topic, partition=i % PARTITIONS, value=v, on_delivery=tracker)


# -- idempotent producer --------------------------------------------------------


def test_idempotent_producer_writes_every_record_once_across_kill_9(broker):
    topic = "idempotent-kill"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    count = 100_000
    values = [b"idem-%06d" % i for i in range(count)]
    stream_through_restart(broker, topic, values, kill=True, enable_idempotence=True)

    read = read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_uncommitted")
    seen = Counter(values_of(read))
    duplicated = sorted(v for v, n in seen.items() if n > 1)
    missing = sorted(set(values) - set(seen))
    assert not duplicated, f"{len(duplicated)} records written twice, e.g. {duplicated[:5]}"
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    assert len(seen) == count
    # Order within a partition is the order produced (idempotence keeps
    # retries in sequence).
    for p, records in read.items():
        mine = [v for _, v in records]
        assert mine == sorted(mine), f"partition {p} out of order"


# -- transactions ---------------------------------------------------------------


def test_commit_abort_commit_as_read_committed_and_read_uncommitted_see_it(broker):
    topic = "txn-cac"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = txn_producer(broker.bootstrap, "txn-cac")
    first = [b"first-%03d" % i for i in range(200)]
    aborted = [b"aborted-%03d" % i for i in range(200)]
    second = [b"second-%03d" % i for i in range(200)]
    for values, commit in ((first, True), (aborted, False), (second, True)):
        producer.begin_transaction()
        produce_txn(producer, topic, values)
        flush(producer)
        if commit:
            producer.commit_transaction(CLIENT_TIMEOUT_S)
        else:
            producer.abort_transaction(CLIENT_TIMEOUT_S)

    committed = read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_committed")
    assert_offsets_increase(committed)
    for p in range(PARTITIONS):
        expected = [v for i, v in enumerate(first) if i % PARTITIONS == p] + [
            v for i, v in enumerate(second) if i % PARTITIONS == p
        ]
        assert [v for _, v in committed[p]] == expected, f"partition {p}: read_committed view wrong"

    everything = read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_uncommitted")
    assert_offsets_increase(everything)
    for p in range(PARTITIONS):
        expected = [v for vs in (first, aborted, second) for i, v in enumerate(vs) if i % PARTITIONS == p]
        got = [v for _, v in everything[p]]
        # Data records only: the three control records per partition take
        # offsets but never reach the application.
        assert got == expected, f"partition {p}: read_uncommitted view wrong"
    ends = watermarks(broker.bootstrap, topic, range(PARTITIONS))
    for p, (_, high) in ends.items():
        expected = sum(1 for vs in (first, aborted, second) for i in range(len(vs)) if i % PARTITIONS == p)
        assert high == expected + 3, f"partition {p}: expected 3 markers after {expected} records, end {high}"


def test_open_transaction_holds_back_read_committed_until_commit(broker):
    topic = "txn-open"
    create_topic(broker.bootstrap, topic, 1)
    producer = txn_producer(broker.bootstrap, "txn-open")
    producer.begin_transaction()
    for i in range(10):
        produce(producer, topic, partition=0, value=b"in-txn-%d" % i)
    flush(producer)
    # A plain record after the open transaction's: held back too, since the
    # last stable offset stops at the transaction's first record.
    plain = make_producer(broker.bootstrap)
    produce(plain, topic, partition=0, value=b"plain")
    flush(plain)

    assert read_to_end(broker.bootstrap, topic, [0], "read_committed") == {0: []}
    uncommitted = read_to_end(broker.bootstrap, topic, [0], "read_uncommitted")
    assert len(uncommitted[0]) == 11

    # A read_committed consumer waiting at offset 0 gets everything once
    # the transaction commits.
    waiting = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "e2e-waiting",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        waiting.assign([TopicPartition(topic, 0, 0)])
        early = waiting.consume(num_messages=100, timeout=2)
        assert [m for m in early if m.error() is None] == [], "read_committed saw an open transaction"
        producer.commit_transaction(CLIENT_TIMEOUT_S)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 11 and time.monotonic() < deadline:
            got += [m.value() for m in waiting.consume(num_messages=100, timeout=0.5) if m.error() is None]
        assert got == [b"in-txn-%d" % i for i in range(10)] + [b"plain"]
    finally:
        waiting.close()


def test_second_producer_with_same_transactional_id_fences_the_first(broker):
    topic = "txn-fence"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    old = txn_producer(broker.bootstrap, "txn-fence")
    old.begin_transaction()
    produce_txn(old, topic, [b"zombie-%d" % i for i in range(20)])
    flush(old)

    new = txn_producer(broker.bootstrap, "txn-fence")
    # The old incarnation's open transaction was aborted, and it is fenced.
    with pytest.raises(KafkaException) as fenced:
        old.commit_transaction(CLIENT_TIMEOUT_S)
    assert fenced.value.args[0].fatal() or fenced.value.args[0].code() in (
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ), f"expected fencing, got {fenced.value}"

    new.begin_transaction()
    produce_txn(new, topic, [b"live-%d" % i for i in range(20)])
    flush(new)
    new.commit_transaction(CLIENT_TIMEOUT_S)
    committed = read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_committed")
    assert sorted(values_of(committed)) == sorted(b"live-%d" % i for i in range(20))


def test_abandoned_transaction_is_aborted_at_its_timeout_even_across_kill_9(broker):
    topic = "txn-timeout"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    abandoned = txn_producer(broker.bootstrap, "txn-timeout", transaction_timeout_ms=4000)
    abandoned.begin_transaction()
    produce_txn(abandoned, topic, [b"abandoned-%d" % i for i in range(20)])
    flush(abandoned)
    broker.restart(kill=True)

    # Held back until the coordinator, restarted, aborts it at its timeout.
    plain = make_producer(broker.bootstrap)
    for p in range(PARTITIONS):
        produce(plain, topic, partition=p, value=b"after-%d" % p)
    flush(plain)
    deadline = time.monotonic() + 30
    while True:
        seen = values_of(read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_committed"))
        if seen:
            break
        assert time.monotonic() < deadline, "the abandoned transaction was never aborted"
        time.sleep(0.5)
    assert sorted(seen) == sorted(b"after-%d" % p for p in range(PARTITIONS))


def test_transaction_commits_across_a_broker_kill_9(broker):
    topic = "txn-restart"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = txn_producer(
        broker.bootstrap,
        "txn-restart",
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=500,
        retry_backoff_ms=50,
    )
    producer.begin_transaction()
    tracker = DeliveryTracker()
    values = [b"survivor-%d" % i for i in range(40)]
    produce_txn(producer, topic, values, tracker)
    flush(producer)
    assert len(tracker.delivered) == len(values)
    broker.restart(kill=True)
    producer.commit_transaction(60)
    committed = read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_committed")
    assert sorted(values_of(committed)) == sorted(values)


# -- consume-transform-produce --------------------------------------------------


def run_loop(broker, crash_in_txn=0):
    cmd = [
        sys.executable,
        str(HERE / "txn_loop.py"),
        "--bootstrap", broker.bootstrap,
        "--input", "ctp-in",
        "--output", "ctp-out",
        "--partitions", str(PARTITIONS),
        "--group", "ctp-group",
        "--transactional-id", "ctp-loop",
        "--batch", "100",
        "--crash-in-txn", str(crash_in_txn),
    ]
    return subprocess.run(cmd, capture_output=True, timeout=180)


def test_consume_transform_produce_is_exactly_once_across_a_crash_of_the_loop(broker):
    count = 3000
    create_topic(broker.bootstrap, "ctp-in", PARTITIONS)
    create_topic(broker.bootstrap, "ctp-out", PARTITIONS)
    producer = make_producer(broker.bootstrap, enable_idempotence=True)
    inputs = [b"event-%05d" % i for i in range(count)]
    for i, v in enumerate(inputs):
        produce(producer, "ctp-in", partition=i % PARTITIONS, value=v)
    flush(producer)

    crashed = run_loop(broker, crash_in_txn=6)
    assert crashed.returncode == -9, f"the loop should have crashed: {crashed.returncode} {crashed.stderr[-2000:]}"
    committed_before_crash = crashed.stdout.decode().count("committed transaction")
    assert committed_before_crash == 5

    finished = run_loop(broker)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]

    out = read_to_end(broker.bootstrap, "ctp-out", range(PARTITIONS), "read_committed")
    got = Counter(values_of(out))
    expected = {b"out-" + v for v in inputs}
    duplicated = sorted(v for v, n in got.items() if n > 1)
    assert not duplicated, f"{len(duplicated)} outputs twice, e.g. {duplicated[:5]}"
    assert set(got) == expected, f"missing {len(expected - set(got))}, unexpected {len(set(got) - expected)}"
    # The crashed transaction's records are in the log, aborted.
    everything = values_of(read_to_end(broker.bootstrap, "ctp-out", range(PARTITIONS), "read_uncommitted"))
    assert len(everything) > count, "the crashed transaction left no records: the crash came too early"
    # Per partition, outputs keep the input order.
    for p, records in out.items():
        mine = [v for _, v in records]
        assert mine == sorted(mine), f"output partition {p} out of order"


# -- admin views and a second client ---------------------------------------------


def transaction_apis():
    """DescribeTransactions v0 and ListTransactions v1 in kafka-python's
    protocol classes (it has no admin API for them)."""
    from kafka.protocol.api import Request, Response
    from kafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

    class DescribeTransactionsResponse_v0(Response):
        API_KEY = 65
        API_VERSION = 0
        FLEXIBLE_VERSION = True
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            (
                "transaction_states",
                CompactArray(
                    ("error_code", Int16),
                    ("transactional_id", CompactString("utf-8")),
                    ("transaction_state", CompactString("utf-8")),
                    ("transaction_timeout_ms", Int32),
                    ("transaction_start_time_ms", Int64),
                    ("producer_id", Int64),
                    ("producer_epoch", Int16),
                    (
                        "topics",
                        CompactArray(
                            ("topic", CompactString("utf-8")),
                            ("partitions", CompactArray(Int32)),
                            ("_tagged_fields", TaggedFields),
                        ),
                    ),
                    ("_tagged_fields", TaggedFields),
                ),
            ),
            ("_tagged_fields", TaggedFields),
        )

    class DescribeTransactionsRequest_v0(Request):
        API_KEY = 65
        API_VERSION = 0
        FLEXIBLE_VERSION = True
        RESPONSE_TYPE = DescribeTransactionsResponse_v0
        SCHEMA = Schema(
            ("transactional_ids", CompactArray(CompactString("utf-8"))),
            ("_tagged_fields", TaggedFields),
        )

    class ListTransactionsResponse_v1(Response):
        API_KEY = 66
        API_VERSION = 1
        FLEXIBLE_VERSION = True
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            ("error_code", Int16),
            ("unknown_state_filters", CompactArray(CompactString("utf-8"))),
            (
                "transaction_states",
                CompactArray(
                    ("transactional_id", CompactString("utf-8")),
                    ("producer_id", Int64),
                    ("transaction_state", CompactString("utf-8")),
                    ("_tagged_fields", TaggedFields),
                ),
            ),
            ("_tagged_fields", TaggedFields),
        )

    class ListTransactionsRequest_v1(Request):
        API_KEY = 66
        API_VERSION = 1
        FLEXIBLE_VERSION = True
        RESPONSE_TYPE = ListTransactionsResponse_v1
        SCHEMA = Schema(
            ("state_filters", CompactArray(CompactString("utf-8"))),
            ("producer_id_filters", CompactArray(Int64)),
            ("duration_filter", Int64),
            ("_tagged_fields", TaggedFields),
        )

    return DescribeTransactionsRequest_v0, ListTransactionsRequest_v1


def describe(bootstrap, ids):
    describe_request, _ = transaction_apis()
    response = admin_request(bootstrap, describe_request(transactional_ids=ids, _tagged_fields={}))
    return {s[1]: s for s in response.transaction_states}


def list_transactions(bootstrap, states=(), duration_ms=-1):
    _, list_request = transaction_apis()
    response = admin_request(
        bootstrap,
        list_request(state_filters=list(states), producer_id_filters=[], duration_filter=duration_ms, _tagged_fields={}),
    )
    return response.unknown_state_filters, {s[0]: (s[1], s[2]) for s in response.transaction_states}


def test_describe_and_list_transactions_show_state_partitions_and_producer(broker):
    topic = "txn-admin"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = txn_producer(broker.bootstrap, "admin-txn", transaction_timeout_ms=45000)
    idle = txn_producer(broker.bootstrap, "admin-idle")
    producer.begin_transaction()
    produce(producer, topic, partition=1, value=b"a")
    produce(producer, topic, partition=3, value=b"b")
    flush(producer)

    states = describe(broker.bootstrap, ["admin-txn", "admin-idle", "nobody"])
    error, tid, state, timeout_ms, start_ms, pid, epoch, topics, _ = states["admin-txn"]
    assert (error, state, timeout_ms) == (0, "Ongoing", 45000)
    assert pid >= 0 and epoch >= 0 and start_ms > 0
    assert [(t[0], sorted(t[1])) for t in topics] == [(topic, [1, 3])]
    assert states["admin-idle"][2] == "Empty"
    assert states["nobody"][0] == 105  # TRANSACTIONAL_ID_NOT_FOUND

    unknown, listed = list_transactions(broker.bootstrap)
    assert unknown == [] and set(listed) == {"admin-txn", "admin-idle"}
    assert listed["admin-txn"] == (pid, "Ongoing")
    unknown, ongoing = list_transactions(broker.bootstrap, states=["Ongoing", "Sleeping"])
    assert unknown == ["Sleeping"] and set(ongoing) == {"admin-txn"}
    # Running longer than an hour: none.
    assert list_transactions(broker.bootstrap, states=["Ongoing"], duration_ms=3_600_000)[1] == {}

    producer.commit_transaction(CLIENT_TIMEOUT_S)
    assert describe(broker.bootstrap, ["admin-txn"])["admin-txn"][2] == "CompleteCommit"
    del idle


def test_kafka_python_transactional_producer_commits_and_aborts(broker):
    from kafka import KafkaProducer

    topic = "txn-kafka-python"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="kafka-python-txn")
    try:
        producer.init_transactions()
        for values, commit in (([b"kp-1", b"kp-2"], True), ([b"kp-x"], False), ([b"kp-3"], True)):
            producer.begin_transaction()
            for i, v in enumerate(values):
                producer.send(topic, value=v, partition=i % PARTITIONS)
            producer.flush()
            if commit:
                producer.commit_transaction()
            else:
                producer.abort_transaction()
    finally:
        producer.close()
    committed = values_of(read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_committed"))
    assert sorted(committed) == [b"kp-1", b"kp-2", b"kp-3"]
    everything = values_of(read_to_end(broker.bootstrap, topic, range(PARTITIONS), "read_uncommitted"))
    assert sorted(everything) == [b"kp-1", b"kp-2", b"kp-3", b"kp-x"]


def test_transaction_apis_at_their_lowest_versions(broker):
    """The whole protocol of a transaction at v0 of each API (the high ends
    are what librdkafka 2.16 uses in the tests above): offsets committed
    in a transaction stay invisible until EndTxn, and fencing reads as
    INVALID_PRODUCER_EPOCH to clients that predate PRODUCER_FENCED."""
    from kafka.protocol.add_offsets_to_txn import AddOffsetsToTxnRequest
    from kafka.protocol.add_partitions_to_txn import AddPartitionsToTxnRequest
    from kafka.protocol.commit import OffsetFetchRequest
    from kafka.protocol.end_txn import EndTxnRequest
    from kafka.protocol.find_coordinator import FindCoordinatorRequest
    from kafka.protocol.init_producer_id import InitProducerIdRequest
    from kafka.protocol.txn_offset_commit import TxnOffsetCommitRequest

    topic, group, tid = "txn-v0", "txn-v0-group", "txn-v0-id"
    create_topic(broker.bootstrap, topic, 2)

    def send(request):
        return admin_request(broker.bootstrap, request)

    found = send(FindCoordinatorRequest[1](coordinator_key=tid, coordinator_type=1))
    assert found.error_code == 0 and found.port == broker.port

    init = send(InitProducerIdRequest[0](transactional_id=tid, transaction_timeout_ms=60000))
    assert init.error_code == 0
    pid, epoch = init.producer_id, init.producer_epoch

    added = send(AddPartitionsToTxnRequest[0](transactional_id=tid, producer_id=pid, producer_epoch=epoch, topics=[(topic, [1])]))
    assert [(t, [tuple(p) for p in ps]) for t, ps in added.results] == [(topic, [(1, 0)])]
    offsets_added = send(AddOffsetsToTxnRequest[0](transactional_id=tid, producer_id=pid, producer_epoch=epoch, group_id=group))
    assert offsets_added.error_code == 0
    committed = send(
        TxnOffsetCommitRequest[0](
            transactional_id=tid,
            group_id=group,
            producer_id=pid,
            producer_epoch=epoch,
            topics=[(topic, [(0, 42, "in a transaction")])],
        )
    )
    assert [(t, [tuple(p) for p in ps]) for t, ps in committed.topics] == [(topic, [(0, 0)])]

    def fetch_offset():
        response = send(OffsetFetchRequest[1](consumer_group=group, topics=[(topic, [0])]))
        (_, [(_, offset, metadata, error)]), = response.topics
        assert error == 0
        return offset, metadata

    assert fetch_offset() == (-1, ""), "an offset pending in an open transaction is visible"
    ended = send(EndTxnRequest[0](transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=True))
    assert ended.error_code == 0
    assert fetch_offset() == (42, "in a transaction")
    # The commit marker is partition 1's only record.
    assert watermarks(broker.bootstrap, topic, [0, 1]) == {0: (0, 0), 1: (0, 1)}

    # A new incarnation fences the old one.
    again = send(InitProducerIdRequest[0](transactional_id=tid, transaction_timeout_ms=60000))
    assert (again.error_code, again.producer_id, again.producer_epoch) == (0, pid, epoch + 1)
    stale = send(AddPartitionsToTxnRequest[0](transactional_id=tid, producer_id=pid, producer_epoch=epoch, topics=[(topic, [0])]))
    assert [tuple(p) for p in stale.results[0][1]] == [(0, 47)]  # INVALID_PRODUCER_EPOCH
    stale_end = send(EndTxnRequest[0](transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=True))
    assert stale_end.error_code == 47  # INVALID_PRODUCER_EPOCH


def test_commit_decided_before_a_crash_is_completed_after_restart(tmp_path):
    """The broker dies (crash point SLUICE_CRASH_AT=txn-after-prepare) right
    after PrepareCommit is durable, before any marker: after a restart the
    commit is completed, markers and group offsets both, and the client's
    commit_transaction succeeds."""
    from conftest import Broker

    b = Broker(tmp_path / "data", tmp_path / "sluice.log", env={"SLUICE_CRASH_AT": "txn-after-prepare"})
    try:
        topic, group = "txn-crash", "txn-crash-group"
        create_topic(b.bootstrap, topic, PARTITIONS)
        producer = txn_producer(
            b.bootstrap, "txn-crash", reconnect_backoff_ms=50, reconnect_backoff_max_ms=500, retry_backoff_ms=50
        )
        producer.begin_transaction()
        values = [b"decided-%d" % i for i in range(40)]
        produce_txn(producer, topic, values)
        flush(producer)
        group_metadata = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group}).consumer_group_metadata()
        producer.send_offsets_to_transaction([TopicPartition(topic, 2, 17)], group_metadata, CLIENT_TIMEOUT_S)

        outcome = []
        committer = threading.Thread(target=lambda: outcome.append(commit_outcome(producer)))
        committer.start()
        assert b.proc.wait(timeout=CLIENT_TIMEOUT_S) != 0, "the broker should have crashed at the crash point"
        assert "crash point reached" in b.log_tail()
        del b.env["SLUICE_CRASH_AT"]
        b.start()
        committer.join(90)
        assert outcome == ["committed"], f"commit after the restart: {outcome}"

        committed = read_to_end(b.bootstrap, topic, range(PARTITIONS), "read_committed")
        assert sorted(values_of(committed)) == sorted(values)
        assert describe(b.bootstrap, ["txn-crash"])["txn-crash"][2] == "CompleteCommit"
        reader = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group})
        try:
            [tp] = reader.committed([TopicPartition(topic, 2)], timeout=CLIENT_TIMEOUT_S)
            assert tp.offset == 17
        finally:
            reader.close()
    finally:
        if b.alive():
            assert b.stop() == 0


def commit_outcome(producer):
    try:
        producer.commit_transaction(90)
        return "committed"
    except KafkaException as e:
        return f"failed: {e}"


@pytest.mark.broker_args("--transactional.id.expiration.ms", "1500", "--transaction.max.timeout.ms", "20000")
def test_idle_transactional_ids_expire_and_timeouts_are_capped(broker):
    topic = "txn-expire"
    create_topic(broker.bootstrap, topic, 1)
    producer = txn_producer(broker.bootstrap, "expiring", transaction_timeout_ms=10000)
    producer.begin_transaction()
    produce(producer, topic, partition=0, value=b"one")
    flush(producer)
    producer.commit_transaction(CLIENT_TIMEOUT_S)
    first_pid = describe(broker.bootstrap, ["expiring"])["expiring"][5]

    deadline = time.monotonic() + 30
    while describe(broker.bootstrap, ["expiring"])["expiring"][0] != 105:  # TRANSACTIONAL_ID_NOT_FOUND
        assert time.monotonic() < deadline, "an idle transactional id never expired"
        time.sleep(0.5)
    broker.restart()
    assert describe(broker.bootstrap, ["expiring"])["expiring"][0] == 105, "the expiry did not survive a restart"

    # The id starts over with a new producer id.
    again = txn_producer(broker.bootstrap, "expiring", transaction_timeout_ms=10000)
    again.begin_transaction()
    produce(again, topic, partition=0, value=b"two")
    flush(again)
    again.commit_transaction(CLIENT_TIMEOUT_S)
    assert describe(broker.bootstrap, ["expiring"])["expiring"][5] != first_pid

    # A timeout above transaction.max.timeout.ms is refused.
    with pytest.raises(KafkaException) as refused:
        txn_producer(broker.bootstrap, "too-long", transaction_timeout_ms=60000)
    assert "INVALID_TRANSACTION_TIMEOUT" in str(refused.value) or refused.value.args[0].code() == 50

"""The broker starts, serves a producer and a consumer, and stops cleanly."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import Broker


def test_produce_and_consume_one_message(broker):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce("smoke", key=b"k", value=b"hello")
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition("smoke", 0, 0)])
    msg = None
    for _ in range(20):
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            break
    c.close()
    assert msg is not None and msg.value() == b"hello" and msg.key() == b"k"


def resident_bytes(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_shards_fault_in_their_memory_before_serving_and_keep_it(tmp_path):
    """Each shard touches `memory.prefault.bytes` before it listens, and the
    allocator keeps it once freed: still resident after mimalloc's purge
    delay (a second) and after serving a little."""
    prefault = 256 << 20
    b = Broker(tmp_path / "data", tmp_path / "sluice.log", cores=2,
               env={"SLUICE_MEMORY_PREFAULT_BYTES": str(prefault)})
    try:
        log = b.log_path.read_text()
        assert log.count("memory faulted in") == 2, log
        time.sleep(1.5)
        resident = resident_bytes(b.proc.pid)
        assert resident >= 2 * prefault, resident
        p = Producer({"bootstrap.servers": b.bootstrap})
        for i in range(1000):
            p.produce("prefault", value=b"x" * 1000)
        assert p.flush(10) == 0
        assert resident_bytes(b.proc.pid) >= resident
    finally:
        assert b.stop() == 0

    # Without it, the broker holds far less.
    small = Broker(tmp_path / "data2", tmp_path / "sluice2.log", cores=2)
    try:
        assert "memory faulted in" not in small.log_path.read_text()
        assert resident_bytes(small.proc.pid) < prefault
    finally:
        assert small.stop() == 0

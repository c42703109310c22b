"""A full disk, for real: the broker's data directory on a small ext4
filesystem (a loop-mounted image). Produce until the disk is full; nothing
acknowledged is lost, the broker stops cleanly, refuses to start while it
cannot write (exiting rather than hanging), and works again once space is
freed.

Needs root and loop devices; skipped where mounting is not possible.
"""

import os
import shutil
import subprocess
import time

import pytest
from confluent_kafka import Producer

from conftest import Broker
from kafka_helpers import consume_to_watermarks, create_topic

IMAGE_BYTES = 600 << 20
FILLER_BYTES = 150 << 20


@pytest.fixture
def small_fs(tmp_path):
    image = tmp_path / "disk.img"
    mount = tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 unavailable: {made.stderr.decode()[-200:]}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {mounted.stderr.decode()[-200:]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(bootstrap, topic):
    """Produces more 1 KiB records with acks=all than the disk holds;
    returns the values acknowledged and how many deliveries failed."""
    acked, failed = [], []

    def report(err, msg):
        if err:
            failed.append(err)
        else:
            acked.append(msg.value())

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 5000}
    )
    for i in range(IMAGE_BYTES // 1024):
        while True:
            try:
                producer.produce(topic, value=b"%09d" % i + b"x" * 1015, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return acked, failed


def test_full_disk_loses_nothing_acknowledged_and_recovers_once_space_is_freed(small_fs, tmp_path):
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * FILLER_BYTES)
        os.fsync(f.fileno())
    data = small_fs / "data"
    b = Broker(data, tmp_path / "sluice.log")
    try:
        create_topic(b.bootstrap, "full", 2)
        acked, failed = fill(b.bootstrap, "full")
        assert acked, "nothing was acknowledged before the disk filled"
        assert failed, "every record was acknowledged: the disk never filled up"
        assert shutil.disk_usage(small_fs).free < 16 << 20, "the disk is not full"
        assert b.alive(), "the broker died of a full disk"
        assert b.stop() == 0, f"the broker did not stop cleanly on a full disk:\n{b.log_tail()}"

        # While nothing can be written, it refuses to start, and says so.
        with pytest.raises(RuntimeError, match="exited with"):
            b.start()
        assert "No space left on device" in b.log_tail()

        filler.unlink()
        b.start()
        records = consume_to_watermarks(b.bootstrap, "full", [0, 1], timeout_s=120)
        read = {r.value for r in records}
        lost = [v for v in acked if v not in read]
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:3]}"

        # Appends work again.
        producer = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
        producer.produce("full", value=b"after the disk was freed", partition=0)
        assert producer.flush(30) == 0
        tail = consume_to_watermarks(b.bootstrap, "full", [0], timeout_s=60)
        assert tail[-1].value == b"after the disk was freed"
    finally:
        if b.alive():
            b.stop()

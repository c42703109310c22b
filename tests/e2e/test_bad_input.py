"""The broker on the raw wire: hand-built Kafka frames, good and bad, on
plain sockets. Bad input costs the sender its connection and nobody else
anything. Also: configuration precedence and `sluice --help`."""

import random
import socket
import struct
import subprocess
import time
import zlib

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

import conftest

REQUEST_TIMEOUT_S = 15
CLOSE_DEADLINE_S = 5
POLL_DEADLINE_S = 15

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_API_VERSIONS = 18

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
UNSUPPORTED_VERSION = 35
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43


# ---------------------------------------------------------------- encoding


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def u32(v):
    return struct.pack(">I", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    b = s.encode()
    return i16(len(b)) + b


def nullable_string(s):
    return i16(-1) if s is None else string(s)


def kbytes(b):
    return i32(-1) if b is None else i32(len(b)) + b


def uvarint(v):
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(v):
    """Zig-zag signed varint (as records use), 64-bit."""
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s):
    b = s.encode()
    return uvarint(len(b) + 1) + b


def array(items):
    items = list(items)
    return i32(len(items)) + b"".join(items)


NO_TAGS = uvarint(0)


class Reader:
    """Parses a response body; every read checks its bounds."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        assert n >= 0 and self.pos + n <= len(self.data), f"read of {n} at {self.pos} past {len(self.data)} bytes"
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def i8(self):
        return self.unpack(">b")

    def i16(self):
        return self.unpack(">h")

    def i32(self):
        return self.unpack(">i")

    def i64(self):
        return self.unpack(">q")

    def uvarint(self):
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            assert shift < 64, "varint too long"

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def compact_string(self):
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def array(self, item):
        n = self.i32()
        return [] if n < 0 else [item(self) for _ in range(n)]

    def compact_array(self, item):
        n = self.uvarint()
        return [] if n == 0 else [item(self) for _ in range(n - 1)]

    def tagged_fields(self):
        fields = {}
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            fields[tag] = self.take(self.uvarint())
        return fields

    def done(self):
        return self.pos == len(self.data)


# ---------------------------------------------------------------- CRC-32C


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), reflected, as Kafka's record batches use."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_crc32c_matches_known_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


# ---------------------------------------------------------------- record batches


def record(offset_delta, timestamp_delta, key, value):
    body = (
        i8(0)  # attributes
        + varint(timestamp_delta)
        + varint(offset_delta)
        + (varint(-1) if key is None else varint(len(key)) + key)
        + (varint(-1) if value is None else varint(len(value)) + value)
        + varint(0)  # headers
    )
    return varint(len(body)) + body


def record_batch(pairs, base_timestamp_ms=None, corrupt_crc=False):
    """A magic-2 record batch holding (key, value) pairs, uncompressed."""
    base_timestamp_ms = base_timestamp_ms or int(time.time() * 1000)
    records = b"".join(record(i, 0, k, v) for i, (k, v) in enumerate(pairs))
    after_crc = (
        i16(0)  # attributes: no compression, CreateTime, not transactional
        + i32(len(pairs) - 1)  # last offset delta
        + i64(base_timestamp_ms)
        + i64(base_timestamp_ms)  # max timestamp
        + i64(-1)  # producer id
        + i16(-1)  # producer epoch
        + i32(-1)  # base sequence
        + i32(len(pairs))
        + records
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0x5A5A5A5A
    after_length = i32(-1) + i8(2) + u32(crc) + after_crc  # leader epoch, magic, crc
    return i64(0) + i32(len(after_length)) + after_length


def legacy_message_v1(key, value, timestamp_ms=None):
    """A magic-1 message set of one message (Kafka 0.10 format)."""
    timestamp_ms = timestamp_ms or int(time.time() * 1000)
    after_crc = i8(1) + i8(0) + i64(timestamp_ms) + kbytes(key) + kbytes(value)
    message = u32(zlib.crc32(after_crc)) + after_crc
    return i64(0) + i32(len(message)) + message


# ---------------------------------------------------------------- connection


class KafkaConnection:
    """One raw TCP connection speaking Kafka framing."""

    def __init__(self, broker, client_id="e2e-raw"):
        self.sock = socket.create_connection(("127.0.0.1", broker.port), timeout=REQUEST_TIMEOUT_S)
        self.client_id = client_id
        self.correlation_id = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, api_key, api_version, body, flexible=False):
        """Frames a request (header v1, or v2 when flexible); returns its correlation id."""
        self.correlation_id += 1
        header = i16(api_key) + i16(api_version) + i32(self.correlation_id) + nullable_string(self.client_id)
        if flexible:
            header += NO_TAGS
        payload = header + body
        self.sock.sendall(i32(len(payload)) + payload)
        return self.correlation_id

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def receive(self, flexible_header=False):
        """Reads one response; returns (correlation id, body Reader)."""
        size = struct.unpack(">i", self._recv_exact(4))[0]
        assert 4 <= size <= 64 * 1024 * 1024, f"response size {size}"
        r = Reader(self._recv_exact(size))
        correlation_id = r.i32()
        if flexible_header:
            r.tagged_fields()
        return correlation_id, r

    def request(self, api_key, api_version, body, flexible=False, flexible_response_header=None):
        sent = self.send(api_key, api_version, body, flexible)
        if flexible_response_header is None:
            flexible_response_header = flexible
        got, r = self.receive(flexible_response_header)
        assert got == sent, f"correlation id {got}, expected {sent}"
        return r

    def closed_by_peer(self, deadline_s=CLOSE_DEADLINE_S):
        """True once the broker closed the connection (EOF or reset); any
        bytes it sends before closing are read and dropped."""
        deadline = time.time() + deadline_s
        while time.time() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.time()))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False
        return False


# ---------------------------------------------------------------- ApiVersions


def api_versions_v0_body(r):
    error = r.i16()
    apis = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    return error, {k: (lo, hi) for k, lo, hi in apis}


# The ranges the broker is documented to serve (at least these).
DOCUMENTED_RANGES = {
    0: (0, 11),  # Produce
    1: (4, 16),  # Fetch
    2: (1, 7),  # ListOffsets
    3: (0, 12),  # Metadata
    18: (0, 4),  # ApiVersions
    19: (2, 7),  # CreateTopics
    20: (1, 6),  # DeleteTopics
    21: (0, 2),  # DeleteRecords
    32: (1, 4),  # DescribeConfigs
    33: (0, 2),  # AlterConfigs
    37: (0, 3),  # CreatePartitions
    44: (0, 1),  # IncrementalAlterConfigs
    60: (0, 1),  # DescribeCluster
}


def check_documented_ranges(apis):
    assert apis[API_PRODUCE] == (0, 11), "Produce must be advertised from v0 (librdkafka compression depends on it)"
    assert apis[API_FETCH] == (4, 16)
    for key, (lo, hi) in DOCUMENTED_RANGES.items():
        assert key in apis, f"api key {key} missing"
        got_lo, got_hi = apis[key]
        assert got_lo <= lo and got_hi >= hi, f"api key {key}: advertised {apis[key]}, documented {lo}-{hi}"
        assert got_lo <= got_hi


def test_api_versions_v0(broker):
    with KafkaConnection(broker) as conn:
        r = conn.request(API_API_VERSIONS, 0, b"")
        error, apis = api_versions_v0_body(r)
        assert r.done(), "trailing bytes in ApiVersions v0 response"
    assert error == NONE
    check_documented_ranges(apis)
    assert apis[API_PRODUCE][0] == 0
    assert apis[API_FETCH][0] == 4


def test_api_versions_v3_flexible(broker):
    body = compact_string("sluice-e2e") + compact_string("1.0") + NO_TAGS
    with KafkaConnection(broker) as conn:
        # ApiVersions responses keep header v0 (no tagged fields) in every version.
        r = conn.request(API_API_VERSIONS, 3, body, flexible=True, flexible_response_header=False)
        error = r.i16()
        apis = r.compact_array(lambda r: (r.i16(), r.i16(), r.i16(), r.tagged_fields())[:3])
        throttle_ms = r.i32()
        r.tagged_fields()
        assert r.done(), "trailing bytes in ApiVersions v3 response"
        v0_error, v0_apis = api_versions_v0_body(conn.request(API_API_VERSIONS, 0, b""))
    assert error == NONE and throttle_ms == 0
    apis = {k: (lo, hi) for k, lo, hi in apis}
    check_documented_ranges(apis)
    assert apis == v0_apis


def test_api_versions_unsupported_version_answers_v0_with_error(broker):
    with KafkaConnection(broker) as conn:
        # A client newer than the broker frames v99 as flexible; the broker
        # must still answer, in v0, so the client can pick a version.
        body = compact_string("future-client") + compact_string("99") + NO_TAGS
        r = conn.request(API_API_VERSIONS, 99, body, flexible=True, flexible_response_header=False)
        error, apis = api_versions_v0_body(r)
        assert r.done()
        assert error == UNSUPPORTED_VERSION
        check_documented_ranges(apis)
        # The connection stays usable for the downgraded request.
        error, _ = api_versions_v0_body(conn.request(API_API_VERSIONS, 0, b""))
        assert error == NONE


def test_pipelined_requests_are_answered_in_order(broker):
    with KafkaConnection(broker) as conn:
        sent = []
        for i in range(20):
            if i % 2:
                sent.append((conn.send(API_API_VERSIONS, 0, b""), "api_versions"))
            else:
                sent.append((conn.send(API_METADATA, 1, i32(0)), "metadata"))
        for correlation_id, kind in sent:
            got, r = conn.receive()
            assert got == correlation_id, f"response {got} came where {correlation_id} ({kind}) was due"


@pytest.mark.parametrize("version", [1, 2, 4])
def test_api_versions_other_versions(broker, version):
    flexible = version >= 3
    body = compact_string("sluice-e2e") + compact_string("1.0") + NO_TAGS if flexible else b""
    with KafkaConnection(broker) as conn:
        r = conn.request(API_API_VERSIONS, version, body, flexible=flexible, flexible_response_header=False)
        error = r.i16()
        if flexible:
            apis = r.compact_array(lambda r: (r.i16(), r.i16(), r.i16(), r.tagged_fields())[:3])
        else:
            apis = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
        throttle_ms = r.i32()
        if flexible:
            r.tagged_fields()
        assert r.done(), f"trailing bytes in ApiVersions v{version} response"
    assert error == NONE and throttle_ms == 0
    check_documented_ranges({k: (lo, hi) for k, lo, hi in apis})


# ---------------------------------------------------------------- Metadata at both ends of its range


def metadata_v0(conn, topics):
    r = conn.request(API_METADATA, 0, array(string(t) for t in topics))
    brokers = r.array(lambda r: (r.i32(), r.string(), r.i32()))

    def partition(r):
        error, index, leader = r.i16(), r.i32(), r.i32()
        replicas, isr = r.array(Reader.i32), r.array(Reader.i32)
        return index, (error, leader, replicas, isr)

    def topic(r):
        error, name = r.i16(), r.string()
        return name, (error, dict(r.array(partition)))

    topics = dict(r.array(topic))
    assert r.done(), "trailing bytes in Metadata v0 response"
    return brokers, topics


def metadata_v12(conn, topics, allow_auto_create):
    """topics: names, or None for all topics."""
    if topics is None:
        body = uvarint(0)
    else:
        body = uvarint(len(topics) + 1) + b"".join(b"\x00" * 16 + compact_string(t) + NO_TAGS for t in topics)
    body += i8(1 if allow_auto_create else 0) + i8(0) + NO_TAGS
    r = conn.request(API_METADATA, 12, body, flexible=True)
    assert r.i32() >= 0  # throttle
    brokers = r.compact_array(lambda r: (r.i32(), r.compact_string(), r.i32(), r.compact_string(), r.tagged_fields())[:3])
    cluster_id = r.compact_string()
    controller_id = r.i32()

    def partition(r):
        error, index, leader, epoch = r.i16(), r.i32(), r.i32(), r.i32()
        replicas, isr, offline = (r.compact_array(Reader.i32) for _ in range(3))
        r.tagged_fields()
        return index, (error, leader, replicas, isr, offline)

    def topic(r):
        error, name, topic_id, internal = r.i16(), r.compact_string(), r.take(16), r.i8()
        partitions = dict(r.compact_array(partition))
        r.i32()  # authorized operations
        r.tagged_fields()
        return name, (error, topic_id, internal, partitions)

    topics = dict(r.compact_array(topic))
    r.tagged_fields()
    assert r.done(), "trailing bytes in Metadata v12 response"
    return brokers, cluster_id, controller_id, topics


def test_metadata_v0_lowest_version(broker, raw_topic):
    with KafkaConnection(broker) as conn:
        brokers, topics = metadata_v0(conn, [raw_topic])
        assert brokers == [(1, "127.0.0.1", broker.port)]
        error, partitions = topics[raw_topic]
        assert error == NONE
        assert partitions == {0: (NONE, 1, [1], [1]), 1: (NONE, 1, [1], [1])}
        # In v0 an empty topic list means every topic.
        _, every = metadata_v0(conn, [])
        assert raw_topic in every


def test_metadata_v12_highest_version(broker, raw_topic):
    with KafkaConnection(broker) as conn:
        brokers, cluster_id, controller_id, topics = metadata_v12(conn, [raw_topic], allow_auto_create=False)
        assert brokers == [(1, "127.0.0.1", broker.port)]
        assert cluster_id is not None and len(cluster_id) == 22
        assert controller_id == 1
        error, topic_id, internal, partitions = topics[raw_topic]
        assert error == NONE and internal == 0
        assert topic_id != b"\x00" * 16
        assert sorted(partitions) == [0, 1]
        for p_error, leader, replicas, isr, offline in partitions.values():
            assert (p_error, leader, replicas, isr, offline) == (NONE, 1, [1], [1], [])
        # A null topic list means every topic.
        assert raw_topic in metadata_v12(conn, None, allow_auto_create=False)[3]


def test_metadata_allow_auto_topic_creation_flag_is_honoured(broker):
    with KafkaConnection(broker) as conn:
        topics = metadata_v12(conn, ["by-request"], allow_auto_create=False)[3]
        assert topics["by-request"][0] == UNKNOWN_TOPIC_OR_PARTITION
        assert "by-request" not in metadata_v12(conn, None, allow_auto_create=False)[3]

        topics = metadata_v12(conn, ["by-request"], allow_auto_create=True)[3]
        # Kafka answers the creating request with the topic itself (or
        # LEADER_NOT_AVAILABLE while it settles); either way it now exists.
        assert topics["by-request"][0] in (NONE, 5), topics["by-request"]
        deadline = time.time() + REQUEST_TIMEOUT_S
        while time.time() < deadline:
            error, _, _, partitions = metadata_v12(conn, ["by-request"], allow_auto_create=False)[3]["by-request"]
            if error == NONE and len(partitions) == 1:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("auto-created topic never showed up")


# ---------------------------------------------------------------- bad input on one connection


def frame(payload):
    return i32(len(payload)) + payload


def random_bytes(count, seed=20240611):
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(count))


def random_body_frame(api_key, api_version):
    """A well-formed header (v2, flexible) of a served request, then noise."""
    header = i16(api_key) + i16(api_version) + i32(7) + nullable_string("bad") + NO_TAGS
    return frame(header + random_bytes(300, seed=api_key))


BAD_FRAMES = {
    "negative-size": i32(-5) + b"\x00" * 16,
    "size-over-max": i32(2 * 1024 * 1024) + b"\x00" * 64,
    "truncated-header": frame(i16(API_API_VERSIONS) + i16(0) + b"\x01"),
    "unknown-api-key": frame(i16(9999) + i16(0) + i32(7) + nullable_string("bad")),
    "metadata-v99": frame(i16(API_METADATA) + i16(99) + i32(7) + nullable_string("bad") + i32(0)),
    "metadata-v1-2^31-1-topics": frame(i16(API_METADATA) + i16(1) + i32(7) + nullable_string("bad") + i32(2**31 - 1)),
    # Noise from the first byte; with this seed the first four claim a
    # positive size of 579983565, far over the limit.
    "random-bytes": random_bytes(4096, seed=1),
    "random-produce-v9-body": random_body_frame(API_PRODUCE, 9),
    "random-metadata-v12-body": random_body_frame(API_METADATA, 12),
}


def produce_and_consume(p, c, topic, value):
    delivered = []
    p.produce(topic, value=value, partition=0, on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert p.flush(REQUEST_TIMEOUT_S) == 0
    [(err, offset)] = delivered
    assert err is None, err
    deadline = time.time() + POLL_DEADLINE_S
    while time.time() < deadline:
        msg = c.poll(0.2)
        if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
            continue
        assert not msg.error(), msg.error()
        assert (msg.offset(), msg.value()) == (offset, value)
        return offset
    raise AssertionError(f"{value!r} was not consumed")


def wait_for_log(broker, text, deadline_s=CLOSE_DEADLINE_S):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if text in broker.log_path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.broker_args("--socket.request.max.bytes=1048576")
@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_closes_only_its_connection(broker, case):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("steady", 1)])["steady"].result(timeout=REQUEST_TIMEOUT_S)
    # Sessions opened before the garbage, which must not notice it.
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    bystander = KafkaConnection(broker, client_id="bystander")
    try:
        c.assign([TopicPartition("steady", 0, 0)])
        assert produce_and_consume(p, c, "steady", b"before") == 0
        assert api_versions_v0_body(bystander.request(API_API_VERSIONS, 0, b""))[0] == NONE
        assert "closing connection" not in broker.log_path.read_text(errors="replace")

        with KafkaConnection(broker, client_id="vandal") as vandal:
            vandal.send_raw(BAD_FRAMES[case])
            assert vandal.closed_by_peer(), f"broker kept the connection open after {case}"

        assert broker.alive(), broker.log_tail()
        assert wait_for_log(broker, "closing connection"), f"no log line about the closed connection:\n{broker.log_tail()}"
        assert produce_and_consume(p, c, "steady", b"after") == 1
        assert api_versions_v0_body(bystander.request(API_API_VERSIONS, 0, b""))[0] == NONE
        # And new connections are served.
        with KafkaConnection(broker) as fresh:
            assert api_versions_v0_body(fresh.request(API_API_VERSIONS, 0, b""))[0] == NONE
    finally:
        bystander.close()
        c.close()
        p.flush(1)


# ---------------------------------------------------------------- hand-built produce requests


def produce_v3(conn, topics, acks=-1, timeout_ms=10000):
    """topics: {name: {partition: records bytes}}; returns
    {(topic, partition): (error, base_offset)}."""
    body = nullable_string(None) + i16(acks) + i32(timeout_ms)
    body += array(
        string(name) + array(i32(index) + kbytes(records) for index, records in partitions.items())
        for name, partitions in topics.items()
    )
    r = conn.request(API_PRODUCE, 3, body)
    results = {}

    def partition(r, name):
        index, error, base_offset, _log_append_time = r.i32(), r.i16(), r.i64(), r.i64()
        results[(name, index)] = (error, base_offset)

    def topic(r):
        name = r.string()
        r.array(lambda r: partition(r, name))

    r.array(topic)
    assert r.i32() >= 0  # throttle time
    assert r.done(), "trailing bytes in Produce v3 response"
    return results


def high_watermark(broker, topic, partition):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=REQUEST_TIMEOUT_S, cached=False)[1]
    finally:
        c.close()


@pytest.fixture
def raw_topic(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("raw", 2)])["raw"].result(timeout=REQUEST_TIMEOUT_S)
    return "raw"


def test_hand_built_produce_is_stored_and_consumable(broker, raw_topic):
    pairs = [(b"k0", b"hello"), (None, b"no key"), (b"k2", b"")]
    with KafkaConnection(broker) as conn:
        assert produce_v3(conn, {raw_topic: {1: record_batch(pairs)}}) == {(raw_topic, 1): (NONE, 0)}
        assert produce_v3(conn, {raw_topic: {1: record_batch(pairs[:1])}}) == {(raw_topic, 1): (NONE, 3)}
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(raw_topic, 1, 0)])
        got = []
        deadline = time.time() + POLL_DEADLINE_S
        while len(got) < 4 and time.time() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                got.append((msg.offset(), msg.key(), msg.value()))
    finally:
        c.close()
    assert got == [(0, b"k0", b"hello"), (1, None, b"no key"), (2, b"k2", b""), (3, b"k0", b"hello")]


@pytest.mark.parametrize(
    "partition, records, expected",
    [
        pytest.param(0, lambda: record_batch([(b"k", b"v")], corrupt_crc=True), CORRUPT_MESSAGE, id="bad-crc"),
        # Sluice's documented answer to a magic-1 batch. (Kafka 2.5+ answers
        # INVALID_RECORD, 87, to it in a Produce v3+; older Kafka CORRUPT_MESSAGE.)
        # A magic-1 message can be shorter than a v2 batch header (61 bytes);
        # its magic byte, at the same place as in v2, still decides.
        pytest.param(0, lambda: legacy_message_v1(b"k", b"v"), UNSUPPORTED_FOR_MESSAGE_FORMAT, id="magic-1-short"),
        pytest.param(
            0, lambda: legacy_message_v1(b"key", b"v" * 100), UNSUPPORTED_FOR_MESSAGE_FORMAT, id="magic-1-long"
        ),
        pytest.param(7, lambda: record_batch([(b"k", b"v")]), UNKNOWN_TOPIC_OR_PARTITION, id="no-such-partition"),
    ],
)
def test_bad_produce_gets_per_partition_error(broker, raw_topic, partition, records, expected):
    with KafkaConnection(broker) as conn:
        result = produce_v3(conn, {raw_topic: {partition: records()}})
        assert list(result) == [(raw_topic, partition)]
        assert result[(raw_topic, partition)][0] == expected
        # The connection stays open and serves the next request.
        assert produce_v3(conn, {raw_topic: {1: record_batch([(b"k", b"ok")])}}) == {(raw_topic, 1): (NONE, 0)}
    assert high_watermark(broker, raw_topic, 0) == 0, "a refused batch was stored"
    assert broker.alive()


def test_produce_errors_are_per_partition_in_one_request(broker, raw_topic):
    with KafkaConnection(broker) as conn:
        result = produce_v3(
            conn,
            {
                raw_topic: {
                    0: record_batch([(b"a", b"good")]),
                    1: record_batch([(b"b", b"bad")], corrupt_crc=True),
                    9: record_batch([(b"c", b"nowhere")]),
                },
                "no-such-topic": {0: record_batch([(b"d", b"nowhere")])},
            },
        )
    assert {k: v[0] for k, v in result.items()} == {
        (raw_topic, 0): NONE,
        (raw_topic, 1): CORRUPT_MESSAGE,
        (raw_topic, 9): UNKNOWN_TOPIC_OR_PARTITION,
        ("no-such-topic", 0): UNKNOWN_TOPIC_OR_PARTITION,
    }
    assert result[(raw_topic, 0)][1] == 0
    assert high_watermark(broker, raw_topic, 0) == 1
    assert high_watermark(broker, raw_topic, 1) == 0


# ---------------------------------------------------------------- configuration precedence


@pytest.mark.parametrize(
    "use_env, use_flag, expected",
    [(False, False, 3), (True, False, 5), (True, True, 7)],
    ids=["config-file", "env-over-config", "flag-over-env"],
)
def test_config_precedence_flag_env_file(tmp_path, use_env, use_flag, expected):
    config = tmp_path / "sluice.toml"
    config.write_text('"num.partitions" = 3\n"log.retention.ms" = 3600000\n')
    extra = ["--config", str(config)]
    if use_flag:
        extra.append("--num.partitions=7")
    env = {"SLUICE_NUM_PARTITIONS": "5"} if use_env else {}
    broker = conftest.Broker(tmp_path / "data", tmp_path / "sluice.log", extra_args=extra, env=env)
    try:
        p = Producer({"bootstrap.servers": broker.bootstrap})
        # A producer's metadata request allows auto-creation.
        md = p.list_topics(topic="auto", timeout=REQUEST_TIMEOUT_S).topics["auto"]
        assert md.error is None, md.error
        assert len(md.partitions) == expected
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        assert len(admin.list_topics(timeout=REQUEST_TIMEOUT_S).topics["auto"].partitions) == expected
        # Settings the higher layers leave alone still come from the file.
        res = ConfigResource(ConfigResource.Type.TOPIC, "auto")
        configs = admin.describe_configs([res])[res].result(timeout=REQUEST_TIMEOUT_S)
        assert configs["retention.ms"].value == "3600000"
    finally:
        code = broker.stop()
    assert code == 0, broker.log_tail()


# ---------------------------------------------------------------- --help


def test_help_documents_flags_and_defaults():
    proc = subprocess.run([str(conftest.BIN), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for flag in ("--listen", "--data-dir", "--cores", "--cpuset", "--config", "--node-id", "--log.segment.bytes"):
        assert flag in out, f"{flag} not in --help"
    # Each option's text runs from its line up to the next option's.
    options = {}
    current = None
    for line in out.splitlines():
        words = line.split()
        if words and words[0].startswith("-"):
            current = next((w for w in words if w.startswith("--")), words[0])
            options[current] = ""
        if current and words:
            options[current] += " " + " ".join(words)
    assert "[default: 1073741824]" in options["--log.segment.bytes"]
    assert "[default: 127.0.0.1:9092]" in options["--listen"]
    assert "[default: 1]" in options["--num.partitions"]
    assert "[default: 104857600]" in options["--socket.request.max.bytes"]
    assert "SLUICE_LOG_SEGMENT_BYTES" in options["--log.segment.bytes"]

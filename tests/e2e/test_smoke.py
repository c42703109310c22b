"""The broker starts, serves a producer and a consumer, and stops cleanly."""

from confluent_kafka import Consumer, Producer, TopicPartition


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

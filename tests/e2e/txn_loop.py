"""A consume-transform-produce loop with exactly-once semantics, run as its
own process by test_transactions.py so that the test can crash it.

It reads the input topic in a consumer group with read_committed, writes
b"out-" + value to the same partition of the output topic, and commits
the consumed offsets in the same transaction (send_offsets_to_transaction).
With --crash-in-txn N it SIGKILLs itself inside its N-th transaction, after
that transaction's records were acknowledged and before its commit. Without
it, it stops once it has processed everything up to the end of the input
and committed. Prints one line per committed transaction.
"""

import argparse
import os
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--transactional-id", required=True)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--crash-in-txn", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "session.timeout.ms": 6000,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": args.transactional_id,
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    consumer.subscribe([args.input])
    at_end = set()
    txns = 0
    deadline = time.monotonic() + args.timeout
    while True:
        if time.monotonic() > deadline:
            sys.exit(f"loop timed out after {txns} transactions")
        msgs = consumer.consume(num_messages=args.batch, timeout=0.5)
        records = []
        for m in msgs:
            err = m.error()
            if err is None:
                records.append(m)
                at_end.discard(m.partition())
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
            else:
                raise KafkaException(err)
        if not records:
            if len(consumer.assignment()) == args.partitions and len(at_end) == args.partitions:
                break
            continue
        producer.begin_transaction()
        for m in records:
            producer.produce(args.output, key=m.key(), value=b"out-" + m.value(), partition=m.partition())
        txns += 1
        if txns == args.crash_in_txn:
            producer.flush(30)
            os.kill(os.getpid(), signal.SIGKILL)
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
        )
        producer.commit_transaction(30)
        print(f"committed transaction {txns} with {len(records)} records", flush=True)
    consumer.close()


if __name__ == "__main__":
    main()

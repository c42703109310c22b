"""sluice-bench against the real broker: its produce and e2e runs work, write
the documented JSON, and what it reports acknowledged is what the broker
holds. No timing is asserted: figures belong in docs/PERFORMANCE.md."""

import json
import subprocess

from conftest import BENCH_BIN
from kafka_helpers import consume_to_watermarks

LATENCY_KEYS = ("p50", "p90", "p99", "p999", "p9999", "max")
RUN_TIMEOUT_S = 120
PARTITIONS = 4
RECORD_BYTES = 200


def bench(*args):
    assert BENCH_BIN.exists(), f"{BENCH_BIN} is missing: run `cargo build --release --workspace` first"
    done = subprocess.run(
        [str(BENCH_BIN), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, f"sluice-bench {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    # Not a terminal: no live status line on stderr.
    assert "\r" not in done.stderr
    return done


def check_latency(report, key):
    latency = report[key]
    for k in LATENCY_KEYS:
        assert isinstance(latency[k], int), f"{key}.{k}: {latency}"
    assert latency["count"] > 0
    assert latency["p50"] <= latency["p99"] <= latency["p9999"] <= latency["max"]


def test_bench_produce_and_e2e_report_what_the_broker_holds(broker, tmp_path):
    produced = tmp_path / "produce.json"
    bench(
        "produce", "--brokers", broker.bootstrap, "--topic", "bench", "--create",
        "--partitions", str(PARTITIONS), "--record-size", str(RECORD_BYTES),
        "--acks", "all", "--rate", "2000", "--duration", "2", "--json", str(produced),
    )
    report = json.loads(produced.read_text())
    assert report["kind"] == "produce"
    assert report["throughput_records_s"] > 0 and report["throughput_mb_s"] > 0
    assert report["records"] > 0
    assert report["error_records"] == 0 and report["unacked_records"] == 0
    check_latency(report, "produce_latency_us")
    assert "e2e_latency_us" not in report

    records = consume_to_watermarks(broker.bootstrap, "bench", list(range(PARTITIONS)))
    assert len(records) == report["records_total"]
    assert all(len(r.value) == RECORD_BYTES for r in records)

    e2e = tmp_path / "e2e.json"
    bench(
        "e2e", "--brokers", broker.bootstrap, "--topic", "bench-e2e", "--create",
        "--partitions", str(PARTITIONS), "--record-size", str(RECORD_BYTES),
        "--rate", "2000", "--duration", "2", "--json", str(e2e),
    )
    report = json.loads(e2e.read_text())
    assert report["kind"] == "e2e"
    assert report["records"] > 0 and report["error_records"] == 0
    check_latency(report, "produce_latency_us")
    check_latency(report, "e2e_latency_us")
    # The consumers read from the tail while the producer ran, and caught up
    # with everything acknowledged before they stopped.
    assert report["consume"]["records_total"] == report["records_total"]


def test_limits_measures_the_disk_both_ways_and_leaves_its_scratch_files_behind_it(tmp_path):
    data_dir = tmp_path / "data"
    out = tmp_path / "limits.json"
    bench(
        "limits", "--data-dir", str(data_dir), "--rounds", "1", "--tcp-seconds", "0.2",
        "--disk-bytes", str(16 << 20), "--sync-samples", "20",
        "--files", "4", "--file-sync-bytes", str(1 << 20), "--json", str(out),
    )
    report = json.loads(out.read_text())
    assert report["disk_files"] == 4
    assert report["disk_file_sync_bytes"] == 1 << 20
    assert len(report["disk_files_write_rounds_mb_s"]) == 1
    assert report["disk_files_write_mb_s"] == report["disk_files_write_rounds_mb_s"][0] > 0
    assert report["disk_write_mb_s"] > 0 and report["loopback_tcp_mb_s"] > 0
    assert report["ceiling_mb_s"] == min(report["disk_write_mb_s"], report["loopback_tcp_mb_s"])
    check_latency(report, "disk_sync_latency_us")
    # Every scratch file it wrote to measure the disk is gone.
    assert list(data_dir.iterdir()) == []


def storage(scratch, out, *args):
    """Runs a small storage benchmark in `scratch` and returns its JSON
    report; every file it wrote is gone afterwards."""
    bench(
        "storage", "--dir", str(scratch), "--bytes", str(8 << 20), "--rounds", "1",
        "--json", str(out), *args,
    )
    assert list(scratch.iterdir()) == []
    return json.loads(out.read_text())


def storage_refuses(scratch, *args):
    """The stderr of a storage run that must fail at once."""
    done = subprocess.run(
        [str(BENCH_BIN), "storage", "--dir", str(scratch), *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode != 0
    return done.stderr


def test_storage_reports_the_log_against_the_disk_with_its_io_workers_where_asked(tmp_path):
    scratch = tmp_path / "scratch"
    report = storage(
        scratch, tmp_path / "storage.json",
        "--samples", "20", "--batch-bytes", "1024,65536", "--io-cpuset", "0",
    )
    assert report["io_cpus"] == [0]
    assert report["logs"] == 1
    assert [b["batch_bytes"] for b in report["batches"]] == [1024, 65536]
    for b in report["batches"]:
        assert b["log_throughput_mb_s"] > 0 and b["raw_write_bandwidth_mb_s"] > 0
        assert b["throughput_ratios"] == [b["throughput_ratio"]]
        assert b["durable_write_bytes"] % 4096 == 0 and b["durable_write_bytes"] > b["batch_bytes"]
        check_latency(b, "raw_sync_latency_us")
        check_latency(b, "durable_append_latency_us")
    # A CPU list that names none is refused, not run unplaced.
    assert "names no CPU" in storage_refuses(scratch, "--io-cpuset", "none")


def test_storage_appends_to_several_logs_in_turn_when_asked(tmp_path):
    scratch = tmp_path / "scratch"
    # storage() also checks that each of the four logs' directories is gone.
    report = storage(
        scratch, tmp_path / "storage.json", "--samples", "10", "--batch-bytes", "65536", "--logs", "4",
    )
    assert report["logs"] == 4
    [b] = report["batches"]
    assert b["log_throughput_mb_s"] > 0 and b["log_throughput_records_s"] > 0
    for logs in ("0", "65"):
        assert "--logs must be 1 to 64" in storage_refuses(scratch, "--logs", logs)

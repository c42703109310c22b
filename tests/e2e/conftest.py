"""Shared harness for end-to-end tests: starts the real `sluice` binary on a
free loopback port with a temporary data directory, and gives tests a
handle to restart or kill it.

The binary comes from $SLUICE_BIN (scripts/test sets it to the release
build), else target/release/sluice; the load generator `sluice-bench` from
$SLUICE_BENCH_BIN, else target/release/sluice-bench.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SLUICE_BIN", ROOT / "target" / "release" / "sluice"))
BENCH_BIN = Path(os.environ.get("SLUICE_BENCH_BIN", ROOT / "target" / "release" / "sluice-bench"))
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A running broker process."""

    def __init__(self, data_dir, log_path, extra_args=(), env=None, cores=2):
        self.port = free_port()
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("RUST_LOG", "info")
        # Each shard would fault in its memory share (up to 1.5 GiB) before
        # serving: seconds a start on this VM, for the suite's hundreds of
        # starts. test_smoke.py tests the prefault on its own.
        self.env.setdefault("SLUICE_MEMORY_PREFAULT_BYTES", "0")
        self.cores = cores
        self.proc = None
        self.start()

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def args(self):
        return [
            str(BIN),
            "--listen", self.bootstrap,
            "--data-dir", str(self.data_dir),
            "--cores", str(self.cores),
            "--cpuset", "none",
            *self.extra_args,
        ]

    def start(self):
        assert BIN.exists(), f"{BIN} is missing: run `cargo build --release` first"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log, env=self.env)
        log.close()
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._accepting():
                return
            time.sleep(0.05)
        raise RuntimeError(f"sluice did not start listening:\n{self.log_tail()}\n{self.thread_dump()}")

    def _accepting(self):
        # Every shard binds the port only once metadata is applied; a
        # connection that completes means the broker is serving.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self):
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"sluice did not stop on SIGTERM:\n{self.log_tail()}")

    def kill(self):
        """SIGKILL: no chance to sync or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, kill=False):
        """Stops (gracefully, or by SIGKILL) and starts again on the same
        port and data directory."""
        if kill:
            self.kill()
        else:
            code = self.stop()
            assert code == 0, f"graceful stop exited with {code}:\n{self.log_tail()}"
        self.start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def thread_dump(self):
        """Where each thread of a stuck broker is: its kernel state from
        /proc, and its stack from gdb when gdb is installed."""
        if self.proc is None or self.proc.poll() is not None:
            return "(not running)"
        out = []
        task_dir = Path(f"/proc/{self.proc.pid}/task")
        for task in sorted(task_dir.iterdir(), key=lambda p: int(p.name)):
            fields = {}
            for name in ("comm", "wchan", "syscall"):
                try:
                    fields[name] = (task / name).read_text(errors="replace").strip()
                except OSError as e:
                    fields[name] = f"? ({e.strerror})"
            out.append(f"thread {task.name} {fields['comm']}: wchan={fields['wchan']} syscall={fields['syscall']}")
        if shutil.which("gdb"):
            try:
                bt = subprocess.run(
                    ["gdb", "-p", str(self.proc.pid), "-batch", "-ex", "thread apply all bt"],
                    capture_output=True, text=True, timeout=60,
                )
                out.append(bt.stdout[-20000:])
            except subprocess.TimeoutExpired:
                out.append("(gdb timed out)")
        return "\n".join(out)

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@pytest.fixture
def broker(tmp_path, request):
    """A fresh broker per test. Extra flags: @pytest.mark.broker_args(...)."""
    marker = request.node.get_closest_marker("broker_args")
    extra = marker.args if marker else ()
    b = Broker(tmp_path / "data", tmp_path / "sluice.log", extra_args=extra)
    yield b
    alive = b.alive()
    if alive:
        code = b.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(f"--- sluice log tail ---\n{b.log_tail()}")
    if alive:
        assert code == 0, f"sluice exited with {code} on SIGTERM:\n{b.log_tail()}"
    # Logs preallocate their segments: a passed test's data would hold
    # gigabytes of disk for the rest of the run. A failed test's stays.
    if hasattr(request.node, "rep_call") and request.node.rep_call.passed:
        shutil.rmtree(b.data_dir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_configure(config):
    config.addinivalue_line("markers", "broker_args(*flags): extra command-line flags for the broker fixture")

"""Helpers the tests share: reading topics back, free ports, service processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from emostream import kafka
from emostream.settings import ROOT, Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_topic(
    settings: Settings,
    topic: str,
    until: Callable[[list[Any]], bool] | int,
    timeout: float = 30.0,
    settle: float = 0.0,
) -> list[Any]:
    """Records of ``topic`` from the beginning, until ``until(records)`` holds (or N records).

    ``settle`` keeps reading that long after the condition holds, to catch extras.
    Records come back as kafka-python ConsumerRecords (key str, value JSON or bytes).
    """
    if isinstance(until, int):
        wanted = until
        until = lambda records: len(records) >= wanted  # noqa: E731
    consumer = kafka.consumer(settings, topic, auto_offset_reset="earliest", consumer_timeout_ms=200)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    satisfied_at: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for partition_records in batch.values():
                records.extend(partition_records)
            if satisfied_at is None and until(records):
                satisfied_at = time.monotonic()
            if satisfied_at is not None and time.monotonic() - satisfied_at >= settle:
                return records
    finally:
        consumer.close()
    return records


def leader_of(settings: Settings, topic: str, partition: int = 0) -> int:
    """The broker id leading ``partition`` of ``topic``."""
    client = kafka.admin(settings)
    try:
        (described,) = client.describe_topics([topic])
    finally:
        client.close()
    return next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == partition)


def wait_http(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> requests.Response:
    """GET ``url`` until it answers (any status), or fail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} before {url} answered")
        try:
            return requests.get(url, timeout=2)
        except (requests.ConnectionError, requests.Timeout) as error:
            last_error = error
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s: {last_error}")


def wait_healthy(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """GET ``url`` (a /healthz) until it answers 200, or fail saying what it answered last."""
    deadline = time.monotonic() + timeout
    answer: requests.Response | None = None
    while time.monotonic() < deadline:
        answer = wait_http(url, max(0.1, deadline - time.monotonic()), process)
        if answer.status_code == 200:
            return
        time.sleep(0.2)
    status = "no answer" if answer is None else f"{answer.status_code} {answer.text[:200]}"
    raise TimeoutError(f"{url} was not healthy within {timeout:.0f} s: {status}")


class ServiceProcess:
    """One of the top-level scripts run as a child process with the given settings.

    ``root`` is the checkout whose scripts run: this one, or (for a benchmark's same-run
    baseline) a worktree of an earlier commit, whose scripts import their own ``emostream``.
    """

    def __init__(
        self,
        script: str,
        settings: Settings,
        log_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        root: Path = ROOT,
    ):
        self.script = script
        self.root = root
        self.log_path = log_dir / f"{Path(script).stem}-{int(time.time() * 1000)}.log"
        child_env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command(script, args),
            cwd=root,
            env=child_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def command(self, script: str, args: tuple[str, ...]) -> list[str]:
        """The child's command line: a top-level Python script, run by the tests' interpreter."""
        return [sys.executable, str(self.root / script), *args]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """Signal the whole process group and wait; SIGKILL when it does not exit."""
        if self.alive():
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(timeout=10, sig=signal.SIGKILL)


class MissingMetric(AssertionError):
    """A metric a test reads is not exposed at all (renamed, or never registered)."""


def metric_value(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in a Prometheus exposition.

    A sample that is not there fails the test, unless the caller says what its absence means
    (``default``): a labelled counter appears only once its label has been used.
    """
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    if default is None:
        raise MissingMetric(f"no sample {name}{labels or ''} in the metrics")
    return default


def metric_of(url: str, name: str, default: float | None = None, **labels: str) -> float:
    """One sample of the /metrics at ``url`` (see :func:`metric_value`)."""
    return metric_value(requests.get(url, timeout=5).text, name, default, **labels)

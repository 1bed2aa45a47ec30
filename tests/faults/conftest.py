"""The stack the fault tests break: every service a child process, ingest as a pool.

Ingest runs as ``bin/ingest-pool`` (two instances on one port with SO_REUSEPORT) in place
of a single ``app.py``, so killing one instance is a fault the clients can survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from emostream import kafka
from emostream.fanout.ops import ensure_fanout_topics
from emostream.settings import ROOT, Settings
from tests.conftest import unique_topics
from tests.faults.support import wait_for_topic_metadata
from tests.stack import Stack, stack_settings

POOL_INSTANCES = 2


class IngestPool:
    """``bin/ingest-pool`` as a child process."""

    def __init__(self, settings: Settings, log_dir: Path, instances: int = POOL_INSTANCES):
        self.settings = settings
        self.instances = instances
        self.log_path = log_dir / f"ingest-pool-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [str(ROOT / "bin" / "ingest-pool"), "--instances", str(instances)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    def instance_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Every instance is up and the shared port answers healthy."""
        import psutil

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ingest pool exited:\n{self.log()}")
            workers = [child.children() for child in psutil.Process(self.process.pid).children() if child.is_running()]
            if len(workers) == self.instances and all(workers):
                try:
                    if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.3)
        raise TimeoutError(f"the ingest pool was not ready within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 90.0) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


class FaultStack(Stack):
    """The whole stack with the ingest pool in place of app.py."""

    SERVICES = ("emoji_processor.py", "registration_app.py", "pubsub_service.py", "subscriber_manager.py")

    def __init__(self, settings: Settings, log_dir: Path):
        super().__init__(settings, log_dir)
        self.pool: IngestPool | None = None

    def start(self, timeout: float = 180.0) -> FaultStack:
        self.pool = IngestPool(self.settings, self.log_dir)
        for script in self.SERVICES:
            self.start_service(script)
        self.pool.wait_ready(timeout)
        self.wait_healthy(timeout)
        self.warm_up(timeout)  # through the pool, like every emoji of the tests
        return self

    def logs(self, tail: int = 40) -> str:
        pool = "" if self.pool is None else "----- ingest pool\n" + "\n".join(self.pool.log().splitlines()[-tail:])
        return super().logs(tail) + "\n" + pool

    def stop(self) -> None:
        super().stop()
        if self.pool is not None:
            self.pool.stop()


def fault_settings(base: Settings, state: Path, **changes) -> Settings:
    settings = stack_settings(
        unique_topics(base),
        clusters=1,
        subscribers_per_cluster=3,
        trigger_ms=500,
        checkpoint_dir=str(state / "checkpoint"),
        state_dir=str(state),
        **changes,
    )
    kafka.ensure_topics(settings)
    ensure_fanout_topics(settings)
    wait_for_topic_metadata(settings)
    return settings


@pytest.fixture(scope="module")
def fault_stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    state = tmp_path_factory.mktemp("faults")
    settings = fault_settings(base_settings, state)
    log_dir = state / "logs"
    log_dir.mkdir()
    stack = FaultStack(settings, log_dir)
    try:
        stack.start(timeout=240)
    except Exception:
        print(stack.logs())
        stack.stop()
        raise
    yield stack
    stack.stop()

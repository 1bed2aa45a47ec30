"""The stack the fault tests break: every service a child process, ingest as a pool.

Ingest runs as ``bin/ingest-pool`` (two instances on one port with SO_REUSEPORT) in place
of a single ``app.py``, so killing one instance is a fault the clients can survive.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import requests

from emostream.fanout.ops import ensure_fanout_topics
from emostream.settings import ROOT, Settings
from tests.harness.faults import wait_for_topic_metadata
from tests.harness.stack import Stack, unique_stack_settings
from tests.harness.support import ServiceProcess

POOL_INSTANCES = 2


class IngestPool(ServiceProcess):
    """``bin/ingest-pool`` as a child process."""

    def __init__(self, settings: Settings, log_dir: Path, instances: int = POOL_INSTANCES):
        self.settings = settings
        self.instances = instances
        super().__init__("bin/ingest-pool", settings, log_dir, "--instances", str(instances))

    def command(self, script: str, args: tuple[str, ...]) -> list[str]:
        return [str(ROOT / script), *args]  # a launcher that picks the project's interpreter itself

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
            workers = []
            for child in psutil.Process(self.process.pid).children():
                try:
                    workers.append(child.children())
                except psutil.NoSuchProcess:
                    continue  # gone since it was listed: a short-lived helper of the launcher's shell
            if len(workers) == self.instances and all(workers):
                try:
                    if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.3)
        raise TimeoutError(f"the ingest pool was not ready within {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 90.0, sig: int = signal.SIGTERM) -> int:
        # Longer than a single service: every instance flushes its buffer to Kafka first.
        return super().stop(timeout, sig)


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
    settings = unique_stack_settings(base, state, clusters=1, subscribers_per_cluster=3, trigger_ms=500, **changes)
    ensure_fanout_topics(settings)
    wait_for_topic_metadata(settings)
    return settings

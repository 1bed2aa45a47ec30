"""The whole EmoStream stack as child processes, for end-to-end tests and benchmarks."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from emostream import kafka
from emostream.settings import ROOT, Settings
from emostream.wire import now_ms
from tests.harness.senders import send_headers
from tests.harness.settings import unique_topics
from tests.harness.support import ServiceProcess, free_port, read_topic, wait_http

# The key in Stack.processes of a second processor that waits as the standby.
STANDBY_PROCESSOR = "emoji_processor.py (standby)"


def stack_settings(settings: Settings, clusters: int = 1, subscribers_per_cluster: int = 2, **changes) -> Settings:
    """Settings for a stack on free ports with a small topology."""
    defaults = dict(
        ingest_port=free_port(),
        registration_port=free_port(),
        processor_metrics_port=free_port(),
        processor_standby_metrics_port=free_port(),
        pubsub_metrics_port=free_port(),
        manager_port=free_port(),
        subscriber_base_port=0,
        clusters=clusters,
        subscribers_per_cluster=subscribers_per_cluster,
        ingest_workers=1,
        heartbeat_seconds=1.0,
        heartbeat_expiry_seconds=6.0,
    )
    return settings.replace(**(defaults | changes))


class Stack:
    """processor, ingest, registration, main publisher and subscriber manager (nodes, cluster publishers)."""

    SERVICES = ("emoji_processor.py", "app.py", "registration_app.py", "pubsub_service.py", "subscriber_manager.py")

    def __init__(self, settings: Settings, log_dir: Path, root: Path = ROOT):
        self.settings = settings
        self.log_dir = log_dir
        self.root = root  # the checkout whose services run (see ServiceProcess)
        self.processes: dict[str, ServiceProcess] = {}

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    @property
    def registration_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.registration_port}"

    def start_service(self, script: str, key: str | None = None) -> ServiceProcess:
        """Start ``script``, known in :attr:`processes` as ``key`` (default: the script)."""
        process = ServiceProcess(script, self.settings, self.log_dir, env=self.service_env(script), root=self.root)
        self.processes[key or script] = process
        return process

    def service_env(self, script: str) -> dict[str, str] | None:
        """Environment a service gets besides its settings."""
        return None

    def start_standby_processor(self) -> ServiceProcess:
        """A second processor on the same checkpoint: it waits as the standby (STANDBY_PROCESSOR)."""
        return self.start_service("emoji_processor.py", STANDBY_PROCESSOR)

    def start(self, timeout: float = 120.0) -> Stack:
        for script in self.SERVICES:
            self.start_service(script)
        self.wait_healthy(timeout)
        self.warm_up(timeout)
        return self

    def warm_up(self, timeout: float = 120.0) -> None:
        """One emoji through the whole pipeline: a fresh processor's first batches are slow."""
        event_id = "warmup"
        body = {
            "user_id": "warmup",
            "emoji_type": self.settings.emoji_types[0],
            "timestamp": now_ms(),
            "event_id": event_id,
        }
        answer = requests.post(
            f"{self.ingest_url}/emoji", json=body, headers=send_headers(self.settings, "warmup", event_id), timeout=10
        )
        answer.raise_for_status()
        records = read_topic(
            self.settings,
            self.settings.aggregate_topic,
            until=lambda got: any(isinstance(r.value, dict) and r.value.get("event_id") == event_id for r in got),
            timeout=timeout,
        )
        if not any(isinstance(r.value, dict) and r.value.get("event_id") == event_id for r in records):
            raise TimeoutError(f"no aggregate came out of the processor within {timeout:.0f} s:\n{self.logs()}")

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        s = self.settings
        ports = {
            "emoji_processor.py": s.processor_metrics_port,
            "app.py": s.ingest_port,
            "registration_app.py": s.registration_port,
            "pubsub_service.py": s.pubsub_metrics_port,
            "subscriber_manager.py": s.manager_port,
        }
        for script, port in ports.items():
            process = self.processes.get(script)
            if process is None:
                continue
            wait_http(
                f"http://127.0.0.1:{port}/healthz",
                timeout=max(1.0, deadline - time.monotonic()),
                process=process.process,
            )
        # Every initial subscriber node has announced itself.
        wanted = s.clusters * s.subscribers_per_cluster
        while time.monotonic() < deadline:
            nodes = requests.get(f"{self.registration_url}/subscribers", timeout=5).json()
            if nodes["live_nodes"] >= wanted:
                return
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {wanted} subscriber nodes announced themselves:\n{self.logs()}")

    def restart(self, script: str, sig: int = signal.SIGKILL) -> ServiceProcess:
        self.processes[script].stop(sig=sig, timeout=30)
        return self.start_service(script)

    def service_of(self, pid: int) -> str | None:
        """The key in :attr:`processes` of the running service whose process is ``pid``."""
        return next((key for key, process in self.processes.items() if process.pid == pid and process.alive()), None)

    def logs(self, tail: int = 40) -> str:
        parts = []
        for script, process in self.processes.items():
            lines = process.log().splitlines()[-tail:]
            parts.append(f"----- {script} (exit {process.process.poll()})\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        # Viewers' nodes go first so that nothing reconnects to a stopping stack; a standby
        # processor before the active one, so that it does not take over from it.
        for script in reversed(self.SERVICES):
            if script == "emoji_processor.py" and STANDBY_PROCESSOR in self.processes:
                self.processes.pop(STANDBY_PROCESSOR).stop(timeout=40)
            process = self.processes.get(script)
            if process is not None:
                process.stop(timeout=40)
        for process in self.processes.values():
            if process.alive():
                process.stop(timeout=40)


def unique_stack_settings(base: Settings, state: Path, **changes) -> Settings:
    """:func:`stack_settings` on topics of its own (created), keeping its state under ``state``."""
    settings = stack_settings(
        unique_topics(base), checkpoint_dir=str(state / "checkpoint"), state_dir=str(state), **changes
    )
    kafka.ensure_topics(settings)
    return settings


@contextmanager
def running_stack(
    settings: Settings,
    state: Path,
    timeout: float,
    kind: Callable[[Settings, Path], Stack] = Stack,
    ready: Callable[[Stack], None] | None = None,
) -> Iterator[Stack]:
    """A started ``kind`` of :class:`Stack` (logs in ``state``/logs), stopped at the end.

    ``ready`` runs after the start, as part of it: when either fails, the services' logs
    are printed and the stack is stopped before the error goes on.
    """
    log_dir = state / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = kind(settings, log_dir)
    try:
        stack.start(timeout=timeout)
        if ready is not None:
            ready(stack)
    except Exception:
        try:
            print(stack.logs())
        finally:  # even when the logs cannot be read, nothing it started is left running
            stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()

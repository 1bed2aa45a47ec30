"""One JVM daemon of a local cluster (a Spark master or worker, ZooKeeper, a legacy broker).

Its command runs from its home folder, where its log and pid file live; see
:class:`~emostream.devstack.jvmprocess.JvmProcess` for how it is started, watched and stopped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from emostream.devstack.jvmprocess import JvmProcess

HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """A problem an operator can act on; the message says what to do."""


@dataclass(frozen=True)
class Daemon(JvmProcess):
    """One long-running process with a pid file and a log under ``home``, run from ``home``.

    It runs in a session of its own, so stopping it signals its whole process group:
    a Spark worker's executors go with it.
    """

    error_type = ClusterError
    signal_group = True

    name: str
    home: Path
    command: tuple[str, ...]
    ports: tuple[int, ...]
    ready_line: str | None = None
    probe: Callable[[], bool] | None = field(default=None, compare=False)
    env: Mapping[str, str] = field(default_factory=dict, compare=False)
    host: str = HOST

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    def launch(self) -> tuple[subprocess.Popen, int]:
        self.refuse_taken_ports()
        self.home.mkdir(parents=True, exist_ok=True)
        return self.spawn(self.command, env=self.env, cwd=self.home)

"""Supervision of the long-running JVMs the local clusters are made of.

A :class:`JvmProcess` runs in a session of its own, its output appended to a log file and its
pid written to a pid file, so that a later command can find and stop it. It is ready once all
its ports listen and its readiness line, if it has one, has appeared in the part of the log
this start wrote. Only the standard library is used, so that a broker can be managed before
the virtualenv exists.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

log = logging.getLogger("emostream.devstack.jvmprocess")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


class JvmProcess:
    """One long-running JVM with a log file and a pid file.

    A subclass (a frozen dataclass) says what it is: ``name``, ``host``, ``ports``,
    ``log_file``, ``pid_file`` and ``launch()``, which prepares whatever the JVM needs and
    calls :meth:`spawn`; ``ready_line`` and ``probe`` add to the readiness test.
    """

    name: str
    host: str
    ports: tuple[int, ...]
    log_file: Path
    pid_file: Path
    ready_line: str | None = None
    probe: Callable[[], bool] | None = None
    error_type: ClassVar[type[Exception]] = RuntimeError
    # Signal the whole process group on stop, so that children (a Spark worker's executors) go too.
    signal_group: ClassVar[bool] = False
    taken_port_advice: ClassVar[str] = "stop that process or choose other ports (see --help)"

    def launch(self) -> tuple[subprocess.Popen, int]:
        """Start the JVM without waiting for it; return it and where its part of the log begins."""
        raise NotImplementedError

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def refuse_taken_ports(self) -> None:
        """Fail if something else listens on one of the ports (this process does not run)."""
        for port in self.ports:
            if port_in_use(self.host, port):
                raise self.error_type(
                    f"port {self.host}:{port} is taken by another process, not by EmoStream's {self.name}; "
                    f"{self.taken_port_advice}"
                )

    def spawn(
        self, command: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> tuple[subprocess.Popen, int]:
        """Run ``command`` with its output appended to the log; return it and where its part of the log begins."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as out:
            process = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in the caller's terminal must not reach it
            )
        self.pid_file.write_text(str(process.pid))
        log.info("starting %s (pid %s) on %s; log %s", self.name, process.pid, self._addresses(), self.log_file)
        return process, offset

    def wait_ready(self, timeout: float, log_offset: int = 0, process: subprocess.Popen | None = None) -> None:
        """Wait until ready; ``process`` is the one this start launched, None for one already running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise self.error_type(
                    f"{self.name} exited with code {process.returncode}; see {self.log_file}:\n{_tail(self.log_file)}"
                )
            if process is None and not self.is_running():
                raise self.error_type(f"{self.name} is not running; see {self.log_file}:\n{_tail(self.log_file)}")
            if (
                all(port_in_use(self.host, port) for port in self.ports)
                and (self.ready_line is None or _log_contains(self.log_file, self.ready_line, log_offset))
                and (self.probe is None or self.probe())
            ):
                return
            time.sleep(0.25)
        raise self.error_type(f"{self.name} did not become ready within {timeout:.0f} s; see {self.log_file}")

    def start(self, timeout: float = 90.0) -> bool:
        """Start unless it already runs, and wait until ready; return True if this call started it."""
        if self.is_running():
            log.info("%s already running (pid %s) on %s", self.name, self.pid(), self._addresses())
            self.wait_ready(timeout)
            return False
        process, log_offset = self.launch()
        self.wait_ready(timeout, log_offset=log_offset, process=process)
        return True

    def send_signal(self, pid: int, sig: int) -> None:
        if self.signal_group:
            _signal_group(pid, sig)
        else:
            os.kill(pid, sig)

    def stop(self, timeout: float = 30.0, kill: bool = False) -> bool:
        """Stop it by its pid, SIGKILL if SIGTERM is ignored for ``timeout``; return True if it was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self.send_signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                log.warning("%s (pid %s) ignored SIGTERM for %.0f s; killing it", self.name, pid, timeout)
                self.send_signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.1)
            _reap(pid)
        if self.signal_group:
            # Children that outlived their parent (an executor mid-launch) go too.
            _signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        log.info("stopped %s (pid %s)", self.name, pid)
        return True

    def _addresses(self) -> str:
        return f"{self.host}:" + ",".join(map(str, self.ports))


def start_together(members: Sequence[JvmProcess], timeout: float) -> list[str]:
    """Launch every member that is not running, then wait for all; return the names of those started.

    The nodes of a multi-node quorum must be launched together, because none of them finishes
    starting before a majority of the controllers is up. If one fails, those launched are killed.
    """
    launched: dict[int, tuple[subprocess.Popen, int]] = {}
    try:
        for index, member in enumerate(members):
            if not member.is_running():
                launched[index] = member.launch()
        deadline = time.monotonic() + timeout
        for index, member in enumerate(members):
            remaining = max(1.0, deadline - time.monotonic())
            if index in launched:
                process, offset = launched[index]
                member.wait_ready(remaining, log_offset=offset, process=process)
            else:
                member.wait_ready(remaining)
    except Exception:
        for index in launched:
            members[index].stop(timeout=10, kill=True)
        raise
    return [members[index].name for index in launched]


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group that ``pid`` leads (every process here starts its own)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _log_contains(path: Path, needle: str, offset: int) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""

"""What the tests of the local cluster commands (bin/kafka-cluster, bin/spark-cluster, bin/kafka-legacy) share."""

from __future__ import annotations

import subprocess

from emostream.devstack.broker import pid_alive


def parse_exports(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines a ``start`` printed, as a dict."""
    exports = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            exports[name] = value
    return exports


def assert_stop_ends_every_process(
    cli: str, args: list[str], env: dict[str, str], pids: list[int | None]
) -> subprocess.CompletedProcess:
    """``cli stop`` succeeds and ends every process of ``pids``; ``cli status`` then exits 1 (its run is returned)."""
    assert all(pids)

    done = subprocess.run([cli, "stop", *args], capture_output=True, text=True, timeout=120, env=env)
    status = subprocess.run([cli, "status", *args], capture_output=True, text=True, timeout=60, env=env)

    assert done.returncode == 0, done.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert status.returncode == 1
    return status

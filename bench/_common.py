"""What the benchmarks share: a Kafka broker of their own, wrk, child processes and their cost.

The benches run as scripts (``.venv/bin/python bench/NAME.py``), so they import this module as
``_common`` from their own folder; ``emostream`` and ``tests.harness`` come from the project's
editable install (bin/setup).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from emostream.devstack.broker import BrokerNode
from emostream.settings import ROOT, Settings
from tests.harness.support import free_port

WRK_RESULT = "WRK_RESULT "


def stack_base_settings(bootstrap: str, work: Path) -> Settings:
    """The defaults, not the environment's, for a bench's whole stack on ``bootstrap``, its state under ``work``."""
    return Settings.from_env(
        environ={},
        kafka_bootstrap=bootstrap,
        state_dir=str(work),
        spark_ui=False,
        token_secret=uuid.uuid4().hex,
    )


@contextmanager
def kafka_for_bench(bootstrap: str | None, work: Path, heap: str = "512m", kill: bool = False) -> Iterator[str]:
    """``bootstrap`` when one is given, else EMOSTREAM_KAFKA_BOOTSTRAP when it is set, else a
    broker of the bench's own on free ports under ``work``.

    The bench's own broker is stopped when the block ends (with SIGKILL when ``kill``: its
    data is thrown away anyway).
    """
    bootstrap = bootstrap or os.environ.get("EMOSTREAM_KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    node = BrokerNode(
        home=work / "kafka",
        port=free_port(),
        controller_port=free_port(),
        heap=heap,
        jars=ROOT / "build" / "jars" / "kafka",
    )
    print(f"starting a private Kafka broker on {node.bootstrap} ...", flush=True)
    node.start()
    try:
        yield node.bootstrap
    finally:
        node.stop(kill=kill)


def stop_process_group(process: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGTERM to the child's process group (services flush on it), SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    return process.returncode


def processor_settings(base: Settings, tag: str, scratch: Path) -> Settings:
    """``base`` for one processor under test: topics of its own named after ``tag``, its checkpoint under ``scratch``."""
    return base.replace(
        emoji_topic=f"emoji_topic.{tag}",
        aggregate_topic=f"aggregated_emoji_topic.{tag}",
        dead_letter_topic=f"emoji_dead_letter_topic.{tag}",
        membership_topic=f"emostream_subscribers.{tag}",
        clusters=0,
        checkpoint_dir=str(scratch / tag / "checkpoint"),
        processor_metrics_port=free_port(),
        spark_ui=False,
    )


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants; empty when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and its children: a service's cost."""
    total = 0.0
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # a child that ended meanwhile
            pass
    return total


# --------------------------------------------------------------------------- wrk
# wrk (C + LuaJIT) drives HTTP load: a Python client on the same two cores could not produce
# the load without taking the CPU the server needs. The benches' Lua scripts print one line
# "WRK_RESULT {json}" from done().


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing the Debian package (apt-get install wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("wrk is required: install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")


def wrk_command(
    wrk: str, url: str, script: Path, connections: int, seconds: float, threads: int = 1, timeout: str | None = None
) -> list[str]:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    if timeout is not None:
        command += ["--timeout", timeout]
    return command + ["-s", str(script), url]


def wrk_result(output: str) -> dict | None:
    """The WRK_RESULT line of a run's output, parsed; None when there is none."""
    for line in output.splitlines():
        if line.startswith(WRK_RESULT):
            return json.loads(line[len(WRK_RESULT) :])
    return None


def start_wrk(wrk: str, url: str, script: Path, connections: int, seconds: float, threads: int = 1) -> subprocess.Popen:
    """wrk in the background (stdout and stderr together, as text), for load alongside a measurement."""
    return subprocess.Popen(
        wrk_command(wrk, url, script, connections, seconds, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: float, threads: int = 1) -> dict:
    """One bounded wrk run (10 s request timeout); its WRK_RESULT."""
    command = wrk_command(wrk, url, script, connections, seconds, threads, timeout="10s")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    result = wrk_result(done.stdout)
    if result is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    return result


# The commit the efficiency work started from: the default same-run baseline of the benches
# that compare this code with earlier code (--baseline-rev).
BASELINE_REV = "25343af25179373be514062a42326f2e56425757"
# Tuning defaults that changed since BASELINE_REV. Settings are handed to a baseline's services
# whole, this code's defaults included, so a baseline is given its own (shipped_defaults).
TUNING_DEFAULTS = ("emoji_partitions", "shuffle_partitions")


def shipped_defaults(checkout: Path, settings: Settings) -> Settings:
    """``settings`` with the code at ``checkout``'s own tuning defaults where they hold this code's.

    A value set on purpose (one that differs from this code's default) is kept.
    """
    script = (
        "import dataclasses, json, sys; from emostream.settings import Settings; "
        "fields = {f.name: f.default for f in dataclasses.fields(Settings)}; "
        "print(json.dumps({name: fields[name] for name in sys.argv[1:] if name in fields}))"
    )
    # Run in the checkout, so that its own emostream package is the one imported.
    done = subprocess.run(
        [sys.executable, "-c", script, *TUNING_DEFAULTS], cwd=checkout, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot read the defaults of {checkout}: {done.stderr.strip()}")
    ours = {f.name: f.default for f in dataclasses.fields(Settings)}
    theirs = json.loads(done.stdout)
    return settings.replace(
        **{name: value for name, value in theirs.items() if getattr(settings, name) == ours[name] != value}
    )


@contextmanager
def baseline_checkout(rev: str, work: Path) -> Iterator[Path]:
    """A git worktree of ``rev`` under ``work``, removed at the end.

    Its top-level scripts import the ``emostream`` beside them (a script's folder comes first
    on the module path), so the baseline's services run the baseline's code; the Kafka and
    Spark jars are this checkout's, named by the settings the services are given.
    """
    path = work / f"baseline-{rev[:12]}"
    added = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], capture_output=True, text=True
    )
    if added.returncode != 0:
        raise SystemExit(f"cannot check out the baseline {rev}: {added.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)

"""Idle benchmark: what the whole stack spends with no crowd at all, service by service.

    .venv/bin/python bench/idle_bench.py                         3 × 3, 60 s, against the baseline commit
    .venv/bin/python bench/idle_bench.py --baseline-rev HEAD~1   against another commit

A live stack waits most of the time (between events, at night), and what it spends then is
spent under load too: every poll loop, heartbeat and timer. Runs the baseline's services (a git
worktree of --baseline-rev) and then this checkout's on the 3 × 3 topology, one stack after the
other on the same broker; each stack first settles for --settle seconds, then its processes'
CPU is read over --duration seconds with nothing sent. Prints CPU seconds a minute per process
for both, then, as its last line:

    idle: cpu_ratio=<this/baseline whole stack> this=<CPU-s a minute> baseline=<CPU-s a minute>
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import (
    BASELINE_REV,
    baseline_checkout,
    kafka_for_bench,
    process_tree,
    shipped_defaults,
    stack_base_settings,
)

from emostream.settings import ROOT, Settings
from tests.harness.stack import Stack, running_stack, unique_stack_settings

CURRENT = "this code"
BASELINE = "baseline"


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:  # ended meanwhile
        return 0.0


def label(process: psutil.Process, service: str) -> str:
    """The service, and for a child process (a node, a cluster publisher) what it is."""
    try:
        command = process.cmdline()
    except psutil.Error:
        return service
    if "-m" in command:
        module = command[command.index("-m") + 1].rsplit(".", 1)[-1]
        for option in ("--id", "--cluster"):  # a node's id, else a cluster publisher's cluster
            if option in command[:-1]:
                return f"{service} › {module} {command[command.index(option) + 1]}"
        return f"{service} › {module}"
    if any(word.endswith(".py") for word in command):
        return service
    return f"{service} › {Path(command[0]).name}" if command else service


def run_config(name: str, root: Path, base: Settings, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """CPU seconds a minute of each process of one idle stack."""
    state = work / f"stack-{len(list(work.glob('stack-*')))}"
    settings = unique_stack_settings(base, state, clusters=3, subscribers_per_cluster=3, ingest_workers=2)
    with running_stack(settings, state, timeout=300, kind=functools.partial(Stack, root=root)) as stack:
        print(f"[{name}] stack up; settling for {args.settle:.0f} s, then {args.duration:.0f} s idle", flush=True)
        time.sleep(args.settle)
        processes = [
            (label(process, service), process)
            for service, started in stack.processes.items()
            for process in process_tree(started.pid)
        ]
        before = [cpu_seconds(process) for _, process in processes]
        time.sleep(args.duration)
        per_minute: dict[str, float] = {}
        for (what, process), first in zip(processes, before, strict=True):
            per_minute[what] = per_minute.get(what, 0.0) + (cpu_seconds(process) - first) * 60 / args.duration
        return per_minute


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured (default 60)")
    parser.add_argument("--settle", type=float, default=40.0, help="seconds after the start not measured")
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="commit whose services are the baseline (default: %(default).12s)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="emostream-idle-bench-"))
    results: dict[str, dict[str, float]] = {}
    try:
        with kafka_for_bench(None, work, heap="512m") as bootstrap:
            base = stack_base_settings(bootstrap, work)
            with baseline_checkout(args.baseline_rev, work) as baseline_root:
                baseline = shipped_defaults(baseline_root, base)
                results[BASELINE] = run_config(BASELINE, baseline_root, baseline, work, args)
            results[CURRENT] = run_config(CURRENT, ROOT, base, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| process | baseline CPU-s/min | this code CPU-s/min |")
    print("| --- | ---: | ---: |")
    for what in sorted(set(results[BASELINE]) | set(results[CURRENT])):
        cells = [f"{results[run][what]:.2f}" if what in results[run] else "–" for run in (BASELINE, CURRENT)]
        print(f"| {what} | {' | '.join(cells)} |")
    this, baseline = (sum(results[run].values()) for run in (CURRENT, BASELINE))
    print(f"| whole stack | {baseline:.2f} | {this:.2f} |")
    print()
    ratio = f"{this / baseline:.2f}" if baseline else "n/a"
    print(f"idle: cpu_ratio={ratio} this={this:.1f} baseline={baseline:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

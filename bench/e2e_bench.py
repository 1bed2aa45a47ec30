"""End-to-end benchmark: the whole stack on the 3 × 3 topology under a simulated crowd.

    .venv/bin/python bench/e2e_bench.py                          1,000 viewers, 2,000 emoji/s, 60 s
    .venv/bin/python bench/e2e_bench.py --viewers 200 --rate 500 --duration 20
    .venv/bin/python bench/e2e_bench.py --baseline-rev HEAD~3      another baseline commit
    .venv/bin/python bench/e2e_bench.py --warmup 0                 measure from a cold start

Runs the same crowd against two stacks on the same broker, one after the other: the baseline,
the services of an earlier commit (--baseline-rev, by default the commit the efficiency work
started from) run from a git worktree of it with its own topic and shuffle partitions, then this
checkout's. Prints for both the CPU seconds and peak memory of each service, end-to-end latency
(probe tap → first aggregate counting it) p50/p95/p99 with its split by stage, and the books
(windows exact, lost, twice), then, as its last line, this code against the baseline:

    e2e: cpu_ratio=<this/baseline whole stack> p50_ratio=<…> p99_ratio=<…> lost=<n> twice=<n>

Each stack first carries the same crowd on another event for --warmup seconds (default 30),
unmeasured: a live stack has been running before an event starts, while a fresh processor JVM
spends its first minute compiling Spark's code. --warmup 0 measures the cold start.
Kafka is EMOSTREAM_KAFKA_BOOTSTRAP when it is set, else a broker of its own on a free port;
everything binds 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
from _common import (
    BASELINE_REV,
    baseline_checkout,
    kafka_for_bench,
    process_tree,
    shipped_defaults,
    stack_base_settings,
    tree_cpu_seconds,
)

from emostream.clients.crowd import Crowd, CrowdPlan, parse_mix
from emostream.clients.probes import STAGES
from emostream.settings import ROOT, Settings
from tests.harness.stack import Stack, running_stack, unique_stack_settings

CURRENT = "this code"
BASELINE = "baseline"


class Usage:
    """CPU seconds and peak resident memory of each service's process tree."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.peak: dict[str, int] = {}
        self.cpu_start: dict[str, float] = {}

    def _tree(self, script: str) -> list[psutil.Process]:
        return process_tree(self.stack.processes[script].pid)

    def _cpu(self, script: str) -> float:
        return tree_cpu_seconds(self.stack.processes[script].pid)

    def start(self) -> None:
        self.cpu_start = {script: self._cpu(script) for script in self.stack.processes}

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for script in self.stack.processes:
                rss = 0
                for process in self._tree(script):
                    try:
                        rss += process.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak[script] = max(self.peak.get(script, 0), rss)
            await asyncio.sleep(1)

    def report(self) -> dict[str, tuple[float, int]]:
        return {s: (self._cpu(s) - self.cpu_start.get(s, 0.0), self.peak.get(s, 0)) for s in self.stack.processes}


async def measure(stack: Stack, args: argparse.Namespace) -> tuple[dict, dict]:
    settings = stack.settings
    plan = CrowdPlan(
        ingest_urls=(stack.ingest_url,),
        registration_url=stack.registration_url,
        viewers=args.viewers,
        rate=args.rate,
        duration=args.duration,
        events=("final", "semi", "quarter"),
        mix=parse_mix("", settings.emoji_types),
        batch=args.batch,
        window_ms=settings.window_seconds * 1000,
        settle_ms=settings.settle_ms,
        drain=60.0,
        seed=1,
    )
    if args.warmup > 0:
        warmup = dataclasses.replace(
            plan, duration=args.warmup, events=("warm-up",), probe_interval=0.0, drain=1.0, seed=2
        )
        await Crowd(warmup).run()
    usage = Usage(stack)
    usage.start()
    stop = asyncio.Event()
    sampler = asyncio.create_task(usage.sample(stop))
    report = await Crowd(plan).run()
    stop.set()
    await sampler
    return report, usage.report()


def run_config(name: str, root: Path, base: Settings, work: Path, args) -> tuple[dict, dict]:
    state = work / f"stack-{len(list(work.glob('stack-*')))}"
    if name == BASELINE:
        base = shipped_defaults(root, base)
    settings = unique_stack_settings(
        base,
        state,
        clusters=3,
        subscribers_per_cluster=3,
        ingest_workers=2,
        rate_limit_per_user=1000.0,
        rate_burst_per_user=1000,
    )
    with running_stack(settings, state, timeout=300, kind=functools.partial(Stack, root=root)) as stack:
        print(
            f"[{name}] stack up; crowd of {args.viewers} viewers at {args.rate:.0f} emoji/s for {args.duration:.0f} s"
            f" after {args.warmup:.0f} s of warm-up",
            flush=True,
        )
        return asyncio.run(measure(stack, args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=10, help="emoji per request from the crowd")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of unmeasured crowd first (0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the services' logs and state")
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="commit whose services are the baseline (default: %(default).12s)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="emostream-e2e-bench-"))
    results = {}
    try:
        with kafka_for_bench(None, work, heap="512m") as bootstrap:
            base = stack_base_settings(bootstrap, work)
            with baseline_checkout(args.baseline_rev, work) as baseline_root:
                results[BASELINE] = run_config(BASELINE, baseline_root, base, work, args)
            results[CURRENT] = run_config(CURRENT, ROOT, base, work, args)
    finally:
        if args.keep:
            print(f"kept the services' logs and state in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        "| run | emoji/s accepted | aggregates received | latency p50 / p95 / p99 (ms) | windows exact | lost | twice |"
    )
    print("| --- | ---: | ---: | --- | --- | ---: | ---: |")
    for name, (report, _) in results.items():
        lat = report["latency_ms"]
        print(
            f"| {name} | {report['accepted_per_second']:,.0f} | {report['aggregates_received']:,} "
            f"| {lat['p50']} / {lat['p95']} / {lat['p99']} "
            f"| {report['windows_exact']}/{report['windows_checked']} | {report['emoji_lost']} | {report['emoji_extra']} |"
        )
    print()
    print("| run | " + " | ".join(f"{stage} p50 (ms)" for stage in STAGES) + " |")
    print("| --- |" + " ---: |" * len(STAGES))
    for name, (report, _) in results.items():
        stages = report["latency_ms"]["stages_p50"]
        print(f"| {name} | " + " | ".join(str(stages[stage]) for stage in STAGES) + " |")
    print()
    print("| run | component | CPU s | peak RSS MB |")
    print("| --- | --- | ---: | ---: |")
    for name, (_, usage) in results.items():
        for script, (cpu, rss) in usage.items():
            print(f"| {name} | {script} | {cpu:.1f} | {rss / 2**20:.0f} |")
        print(f"| {name} | whole stack | {sum(cpu for cpu, _ in usage.values()):.1f} | |")
    print()
    print(last_line(results[CURRENT], results[BASELINE]))
    return 0


def last_line(current: tuple[dict, dict], baseline: tuple[dict, dict]) -> str:
    """The comparison other tools read: this code over the baseline, and this code's books."""
    (report, usage), (base_report, base_usage) = current, baseline

    def ratio(this: float | None, base: float | None) -> str:
        return "n/a" if not this or not base else f"{this / base:.2f}"

    cpu = sum(seconds for seconds, _ in usage.values())
    base_cpu = sum(seconds for seconds, _ in base_usage.values())
    latency, base_latency = report["latency_ms"], base_report["latency_ms"]
    return (
        f"e2e: cpu_ratio={ratio(cpu, base_cpu)} p50_ratio={ratio(latency['p50'], base_latency['p50'])}"
        f" p99_ratio={ratio(latency['p99'], base_latency['p99'])}"
        f" lost={report['emoji_lost']} twice={report['emoji_extra']}"
    )


if __name__ == "__main__":
    sys.exit(main())

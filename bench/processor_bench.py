"""How fast the emoji processor catches up, and what its micro-batches cost under steady load.

    .venv/bin/python bench/processor_bench.py                  # 2 M backlog, then 2,000 and 20,000 emoji/s
    .venv/bin/python bench/processor_bench.py --emoji 500000 --steady-seconds 30 --rates 2000
    .venv/bin/python bench/processor_bench.py --configs current,one,default-200

For each configuration, on topics of its own:
 1. pre-load ``emoji_topic`` with N emoji (received_at spread as if ingest took them at
    the steady rate while the processor was down), through Kafka's console producer;
 2. start the processor of that configuration's checkout (the same ``Processor`` the script
    runs, in a child process with its own JVM) and time how long it takes to count them;
 3. for each steady rate in turn, send new emoji at that rate for a bounded time and record
    every micro-batch's duration against the trigger interval and the JVM's cores;
 4. stop it with SIGTERM; meanwhile the driver JVM's CPU time and peak resident memory
    (VmHWM) are sampled.

Configurations: ``current`` (this checkout), ``baseline`` (the processor of --baseline-rev,
by default the commit the efficiency work started from, run from a git worktree of it on the
same broker, with that checkout's own topic and shuffle partitions), ``one`` and ``default-200``
(this checkout with one, or Spark's default of 200, shuffle partitions). The last line compares
current with baseline:

    processor: cores_<rate>_ratio=<current/baseline> ... p95_<rate>_ratio=<…> ... within_trigger_<rate>=<n>/<m> ...

Timings come from Spark's own progress reports. The machine's load average is printed:
on shared cores wall-clock rates fall with other work, the CPU-time figures much less.
The broker is EMOSTREAM_KAFKA_BOOTSTRAP when it is set (the bench deletes its topics when it
ends), else a broker of the bench's own on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    BASELINE_REV,
    baseline_checkout,
    kafka_for_bench,
    processor_settings,
    shipped_defaults,
    stop_process_group,
)

from emostream import kafka
from emostream.settings import ROOT, Settings

EVENTS = 10
USERS = 50_000
NAN = float("nan")


# --------------------------------------------------------------------------- load


def emoji_choice(settings: Settings, i: int) -> tuple[str, str, str]:
    """Emoji i of the bench's load: its event, its sender and its kind."""
    return (
        f"match-{i % EVENTS}",
        f"viewer-{(i * 7919) % USERS}",
        settings.emoji_types[(i * 31) % len(settings.emoji_types)],
    )


def emoji_lines(settings: Settings, first: int, count: int, received_at: Any, poison_every: int = 0) -> str:
    """``key\\tvalue`` lines for the console producer; ``received_at(i)`` stamps emoji i."""
    lines = []
    for i in range(first, first + count):
        event_id, user_id, kind = emoji_choice(settings, i)
        if poison_every and i % poison_every == poison_every - 1:
            kind = "🍕"
        at = received_at(i)
        lines.append(
            f'{event_id}|{user_id}\t{{"user_id":"{user_id}","emoji_type":"{kind}",'
            f'"timestamp":{at},"event_id":"{event_id}","received_at":{at}}}\n'
        )
    return "".join(lines)


def console_producer(settings: Settings) -> subprocess.Popen:
    """Kafka's own producer reading stdin: a JVM client, so the load costs little Python CPU."""
    return subprocess.Popen(
        [
            str(ROOT / "bin" / "kafka-console-producer"),
            "--bootstrap-server",
            settings.kafka_bootstrap,
            "--topic",
            settings.emoji_topic,
            "--timeout",
            "10",
            "--batch-size",
            "262144",
            "--reader-property",
            "parse.key=true",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def preload(settings: Settings, count: int, rate: int, poison_every: int) -> float:
    """Write ``count`` emoji that arrived at ``rate``/s and ended now; return the seconds it took."""
    started = time.monotonic()
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - count * 1000 // rate
    producer = console_producer(settings)
    assert producer.stdin is not None
    for first in range(0, count, 20_000):
        n = min(20_000, count - first)
        producer.stdin.write(
            emoji_lines(settings, first, n, lambda i: start_ms + i * 1000 // rate, poison_every).encode()
        )
    producer.stdin.close()
    if producer.wait(600) != 0:
        raise RuntimeError("the console producer failed to pre-load the topic")
    return time.monotonic() - started


class SteadyLoad(threading.Thread):
    """Emoji at a steady rate, stamped with the current time, in 50 ms ticks."""

    def __init__(self, settings: Settings, rate: int, seconds: float):
        super().__init__(daemon=True)
        self.settings, self.rate, self.seconds = settings, rate, seconds
        self.sent = 0
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        producer = console_producer(self.settings)
        assert producer.stdin is not None
        self.started_at = time.time()
        begin = time.monotonic()
        while (elapsed := time.monotonic() - begin) < self.seconds:
            due = int(elapsed * self.rate) - self.sent
            if due > 0:
                now_ms = int(time.time() * 1000)
                lines = emoji_lines(self.settings, 10**9 + self.sent, due, lambda _i, at=now_ms: at)
                producer.stdin.write(lines.encode())
                producer.stdin.flush()
                self.sent += due
            time.sleep(0.05)
        producer.stdin.close()
        producer.wait(60)
        self.ended_at = time.time()


# --------------------------------------------------------------------------- the processor under test


# The child process: the checkout's processor, plus a listener that appends every progress report
# to a file. It runs as ``python -c`` in the checkout's folder, so it imports that checkout's
# ``emostream``: this one, or a baseline's from before the processor had a package of its own.
WORKER = """
import signal, sys, threading
from emostream import logs
from emostream.settings import Settings
try:
    from emostream.processor.service import JsonProgressListener, Processor
    from emostream.processor.spark import session

    def start(spark, settings):
        return Processor(spark, settings).start()
except ImportError:
    from emostream.processor_service import JsonProgressListener
    from emostream.spark import session
    import emoji_processor

    def start(spark, settings):
        return emoji_processor.create_processor(spark, settings)

settings = Settings.from_env()
logs.configure(settings)
spark = session(settings, app_name="emostream-processor-bench")
out = open(sys.argv[1], "a", buffering=1)

class ProgressLog(JsonProgressListener):
    def onQueryStarted(self, event):
        pass

    def onQueryProgress(self, event):
        out.write(event.progress.json.replace("\\n", " ") + "\\n")

    def onQueryIdle(self, event):
        pass

    def onQueryTerminated(self, event):
        pass

spark.streams.addListener(ProgressLog())
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
processor = start(spark, settings)
try:
    code = processor.run_until(stop)
finally:
    processor.stop()
    spark.stop()
sys.exit(code)
"""


def driver_jvm(parent_pid: int) -> Any:
    """The Spark driver JVM under ``parent_pid`` (spark-submit first runs a short-lived launcher JVM)."""
    import psutil

    try:
        for child in psutil.Process(parent_pid).children(recursive=True):
            command = child.cmdline()
            if "org.apache.spark.deploy.SparkSubmit" in command and "org.apache.spark.launcher.Main" not in command:
                return child
    except psutil.Error:
        pass
    return None


class JvmMonitor(threading.Thread):
    """Samples the driver JVM's CPU time and its peak resident memory (the kernel's VmHWM)."""

    def __init__(self, parent_pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.parent_pid, self.every = parent_pid, every
        self.samples: list[tuple[float, float]] = []  # (wall time, CPU seconds)
        self.peak_mb: float | None = None
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        import psutil

        jvm = None
        while not self._stop_event.wait(self.every):
            jvm = jvm or driver_jvm(self.parent_pid)
            if jvm is None:
                continue
            try:
                cpu = jvm.cpu_times()
                status = Path(f"/proc/{jvm.pid}/status").read_text()
            except (psutil.Error, OSError):
                jvm = None
                continue
            self.samples.append((time.time(), cpu.user + cpu.system))
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_mb = max(self.peak_mb or 0.0, int(line.split()[1]) / 1024)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the JVM used between two wall-clock times (to the nearest sample)."""
        if not self.samples or not (math.isfinite(start) and math.isfinite(end)):
            return NAN
        before = min(self.samples, key=lambda sample: abs(sample[0] - start))
        after = min(self.samples, key=lambda sample: abs(sample[0] - end))
        return after[1] - before[1]

    def finish(self) -> None:
        self._stop_event.set()
        self.join()


def read_progress(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def batch_start(progress: dict[str, Any]) -> float:
    return datetime.fromisoformat(progress["timestamp"].replace("Z", "+00:00")).timestamp()


def batch_end(progress: dict[str, Any]) -> float:
    return batch_start(progress) + progress["batchDuration"] / 1000


def metric(port: int, name: str) -> float:
    """One unlabelled sample of the processor's /metrics."""
    import requests

    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return NAN


# --------------------------------------------------------------------------- one configuration


@dataclass
class Steady:
    """The micro-batches of one steady rate."""

    rate: int
    sent_rate: float = NAN
    batches: list[float] = field(default_factory=list)
    rows_per_s: float = NAN
    cores: float = NAN
    # The phase's second half alone: a young JVM is still compiling Spark's code in the first.
    late_cores: float = NAN
    breakdown: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    partitions: int
    preload_seconds: float = NAN
    startup_seconds: float = NAN
    catchup_rate: float = NAN
    catchup_batches: int = 0
    catchup_cpu_seconds: float = NAN
    accepted: int = 0
    dead_letters: float = NAN
    steady: list[Steady] = field(default_factory=list)
    jvm_peak_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    def at(self, rate: int) -> Steady | None:
        return next((steady for steady in self.steady if steady.rate == rate), None)


def run_configuration(
    base: Settings,
    name: str,
    root: Path,
    partitions: int | None,
    args: argparse.Namespace,
    scratch: Path,
    created: list[Settings],
) -> Result:
    tag = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    if name == "baseline":
        base = shipped_defaults(root, base)
    if partitions is not None:
        base = base.replace(shuffle_partitions=partitions)
    settings = processor_settings(base, tag, scratch).replace(trigger_ms=args.trigger_ms)
    kafka.ensure_topics(settings)
    created.append(settings)
    result = Result(name, settings.effective_shuffle_partitions)
    rates = args.rate_list
    say(f"[{name}] pre-loading {args.emoji:,} emoji into {settings.emoji_topic}")
    result.preload_seconds = preload(settings, args.emoji, max(rates), args.poison_every)

    (scratch / tag).mkdir(parents=True)
    progress_path = scratch / tag / "progress.jsonl"
    log_path = scratch / tag / "processor.log"
    launched = time.time()
    with open(log_path, "wb") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(progress_path)],
            env={**os.environ, **settings.to_env()},
            cwd=root,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    monitor = JvmMonitor(child.pid)
    try:
        say(f"[{name}] processor started; catching up")
        deadline = time.monotonic() + args.catchup_timeout
        while sum(p["numInputRows"] for p in read_progress(progress_path)) < args.emoji:
            if child.poll() is not None:
                raise RuntimeError(f"the processor exited with {child.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                result.notes.append(f"catch-up not finished within {args.catchup_timeout:.0f} s")
                break
            time.sleep(0.25)
        progress = read_progress(progress_path)
        first, last = catchup_span(progress, args.emoji)
        if first is not None and last is not None:
            result.catchup_rate = args.emoji / (batch_end(last) - batch_start(first))
            result.catchup_batches = last["batchId"] - first["batchId"] + 1
            result.catchup_cpu_seconds = monitor.cpu_between(batch_start(first), batch_end(last))
            result.startup_seconds = batch_start(first) - launched

        for rate in rates:
            say(f"[{name}] steady load: {rate:,} emoji/s for {args.steady_seconds:.0f} s")
            result.steady.append(steady_phase(settings, rate, args, progress_path, monitor))
        result.accepted = sum(
            int(p.get("observedMetrics", {}).get("records", {}).get("accepted", 0))
            for p in read_progress(progress_path)
        )
        if args.poison_every:
            result.dead_letters = wait_for_dead_letters(
                settings.processor_metrics_port, args.emoji // args.poison_every
            )
    finally:
        monitor.finish()
        stop_process_group(child)
        result.jvm_peak_mb = monitor.peak_mb
    return result


def steady_phase(
    settings: Settings, rate: int, args: argparse.Namespace, progress_path: Path, monitor: JvmMonitor
) -> Steady:
    load = SteadyLoad(settings, rate, args.steady_seconds)
    load.start()
    load.join()
    time.sleep(2 * args.trigger_ms / 1000)
    steady = Steady(rate, sent_rate=load.sent / (load.ended_at - load.started_at))
    window_start = load.started_at + args.warmup_seconds
    batches = [p for p in read_progress(progress_path) if window_start <= batch_start(p) <= load.ended_at]
    steady.batches = [p["batchDuration"] / 1000 for p in batches]
    if batches:
        span = load.ended_at - window_start
        steady.rows_per_s = sum(p["numInputRows"] for p in batches) / span
        steady.cores = monitor.cpu_between(window_start, load.ended_at) / span
        steady.late_cores = monitor.cpu_between(load.ended_at - span / 2, load.ended_at) / (span / 2)
        parts = ("latestOffset", "queryPlanning", "addBatch", "walCommit", "commitOffsets")
        steady.breakdown = {part: statistics.mean(p["durationMs"].get(part, 0) for p in batches) for part in parts}
    return steady


def catchup_span(progress: list[dict[str, Any]], backlog: int) -> tuple[dict | None, dict | None]:
    """The first batch that read any of the backlog, and the batch that read its last record."""
    read, first = 0, None
    for p in sorted(progress, key=lambda p: p["batchId"]):
        if p["numInputRows"] and first is None:
            first = p
        read += p["numInputRows"]
        if read >= backlog:
            return first, p
    return first, None


def wait_for_dead_letters(port: int, expected: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while (written := metric(port, "emostream_processor_dead_letters_total")) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return written


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: int) -> float:
    if not values:
        return NAN
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(results: list[Result], args: argparse.Namespace, load_before: str, load_after: str) -> None:
    trigger = args.trigger_ms / 1000
    cores = os.cpu_count() or 2
    print()
    rates = " and ".join(f"{rate:,}" for rate in args.rate_list)
    print(f"Emoji processor: {args.emoji:,} emoji backlog, then {rates} emoji/s for {args.steady_seconds:.0f} s each")
    print(
        f"trigger {args.trigger_ms} ms; {cores} cores shared with other work, load average {load_before} → {load_after}"
    )
    print()
    header = f"{'configuration':<14}{'shuffle':>8}{'catch-up/s':>12}{'batches':>9}{'CPU s':>8}{'CPU-bound/s':>13}{'JVM MB':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<14}{r.partitions:>8}{r.catchup_rate:>12,.0f}{r.catchup_batches:>9}"
            f"{r.catchup_cpu_seconds:>8.1f}{args.emoji * cores / r.catchup_cpu_seconds:>13,.0f}"
            f"{(r.jvm_peak_mb or NAN):>8,.0f}"
        )
    print()
    header = (
        f"{'configuration':<14}{'rate':>8}{'sent/s':>9}{'p50 s':>8}{'p95 s':>8}{'max s':>8}"
        f"{'≤ trigger':>11}{'rows/s':>9}{'cores':>7}{'2nd half':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for steady in r.steady:
            batches = steady.batches
            within = sum(1 for d in batches if d <= trigger)
            print(
                f"{r.name:<14}{steady.rate:>8,}{steady.sent_rate:>9,.0f}{percentile(batches, 50):>8.2f}"
                f"{percentile(batches, 95):>8.2f}{max(batches, default=NAN):>8.2f}{f'{within}/{len(batches)}':>11}"
                f"{steady.rows_per_s:>9,.0f}{steady.cores:>7.2f}{steady.late_cores:>9.2f}"
            )
    print()
    for r in results:
        line = f"{r.name}: first batch {r.startup_seconds:.1f} s after launch; pre-load {r.preload_seconds:.1f} s; "
        line += f"accepted {r.accepted:,}"
        if args.poison_every:
            line += f"; dead letters written {r.dead_letters:,.0f} of {args.emoji // args.poison_every:,}"
        print(line + "".join(f"; {note}" for note in r.notes))
        for steady in r.steady:
            if steady.breakdown:
                split = ", ".join(f"{part} {ms:.0f}" for part, ms in steady.breakdown.items())
                print(f"{r.name} at {steady.rate:,}/s: steady micro-batch, mean ms: {split}")
    print()
    print("catch-up/s: backlog / (end of the batch that read its last record - start of the first batch);")
    print("  CPU s: driver JVM CPU time over that span; CPU-bound/s: backlog x cores / CPU s, the rate if")
    print("  the JVM had every core to itself (an estimate: it ignores waits on the broker).")
    print("p50/p95/max, ≤ trigger: durations of the batches that started during steady load after a")
    print(f"  {args.warmup_seconds:.0f} s warm-up; rows/s: what they read per second; cores: JVM CPU seconds")
    print("  per second meanwhile; 2nd half: the same over the phase's second half (a young JVM is still")
    print("  compiling Spark's code; run a long phase to see the settled cost); JVM MB: the driver JVM's")
    print("  peak resident memory (VmHWM).")
    by_name = {r.name: r for r in results}
    if "current" in by_name and "baseline" in by_name:
        print()
        print(last_line(by_name["current"], by_name["baseline"], args))


def last_line(current: Result, baseline: Result, args: argparse.Namespace) -> str:
    """The comparison other tools read: this code's steady batches over the baseline's."""

    def ratio(this: float, base: float) -> str:
        return f"{this / base:.2f}" if math.isfinite(this) and math.isfinite(base) and base else "n/a"

    parts = []
    for rate in args.rate_list:
        this, base = current.at(rate), baseline.at(rate)
        if this is None or base is None:
            continue
        within = sum(1 for d in this.batches if d <= args.trigger_ms / 1000)
        parts += [
            f"cores_{rate}_ratio={ratio(this.cores, base.cores)}",
            f"p95_{rate}_ratio={ratio(percentile(this.batches, 95), percentile(base.batches, 95))}",
            f"within_trigger_{rate}={within}/{len(this.batches)}",
        ]
    return "processor: " + " ".join(parts)


# --------------------------------------------------------------------------- main


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def delete_topics(created: list[Settings]) -> None:
    if not created:
        return
    client = kafka.admin(created[0])
    try:
        existing = set(client.list_topics())
        names = [
            topic
            for s in created
            for topic in (s.emoji_topic, s.aggregate_topic, s.dead_letter_topic, s.membership_topic)
            if topic in existing
        ]
        if names:
            client.delete_topics(names)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji", type=int, default=2_000_000, help="backlog to pre-load (default 2,000,000)")
    parser.add_argument(
        "--rates", default="2000,20000", help="steady emoji per second, one phase each (default 2000,20000)"
    )
    parser.add_argument("--steady-seconds", type=float, default=60.0, help="length of each steady phase (default 60)")
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="steady batches ignored at first")
    parser.add_argument("--trigger-ms", type=int, default=500, help="processing-time trigger (default 500)")
    parser.add_argument("--catchup-timeout", type=float, default=300.0, help="give up on catch-up after this")
    parser.add_argument("--poison-every", type=int, default=0, help="make every Nth pre-loaded emoji unknown")
    parser.add_argument(
        "--configs",
        default="baseline,current",
        help="baseline, current, one (a single shuffle partition) and/or default-200, comma-separated",
    )
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="commit whose processor is the baseline (default: %(default).12s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the processor logs and progress files")
    args = parser.parse_args()
    args.rate_list = [int(rate) for rate in args.rates.split(",") if rate.strip()]
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    # Shuffle partitions by configuration; None keeps the checkout's own default.
    partitions: dict[str, int | None] = {"baseline": None, "current": None, "one": 1, "default-200": 200}
    unknown = set(configs) - set(partitions)
    if unknown or not args.rate_list:
        parser.error(f"unknown configurations {sorted(unknown)}" if unknown else "--rates names no rate")

    created: list[Settings] = []
    results = []
    load_before = Path("/proc/loadavg").read_text().split()[0]
    scratch = Path(tempfile.mkdtemp(prefix="emostream-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            bootstrap = stack.enter_context(kafka_for_bench(None, scratch, kill=True))
            base = Settings.from_env(kafka_bootstrap=bootstrap)
            try:
                for name in configs:
                    root = ROOT
                    if name == "baseline":
                        root = stack.enter_context(baseline_checkout(args.baseline_rev, scratch))
                    results.append(run_configuration(base, name, root, partitions[name], args, scratch, created))
            finally:
                delete_topics(created)
    finally:
        if args.keep:
            say(f"kept the processor logs and progress files in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    report(results, args, load_before, Path("/proc/loadavg").read_text().split()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

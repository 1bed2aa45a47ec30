"""Soak: the whole stack for a long run under a steady crowd, with a fault every few minutes.

    .venv/bin/python bench/soak.py                                    20 min, 1,000 emoji/s, 500 viewers
    .venv/bin/python bench/soak.py --minutes 6 --rate 300 --viewers 100 --fault-every 60

The stack is the fault tests' (tests/harness/fault_stack.py): ingest as a pool of two instances,
the processor with a warm standby, registration, the main publisher and one cluster of three
subscriber nodes, on a Kafka broker of the bench's own. Every --fault-every seconds it injects
the next fault of the suite, in turn: the active processor SIGKILLed (its standby takes over and
the killed one comes back as the new standby), an ingest instance SIGKILLed, a subscriber node
SIGKILLed, registration SIGKILLed and started again, the broker stopped and started again (left
out with EMOSTREAM_KAFKA_BOOTSTRAP, whose broker is not the bench's).

Every 10 s it samples each service's resident memory (its whole process tree), the processor's
state (rows in Spark's state and bytes of the checkpoint's state folder) and Kafka consumer lag
(the processor's, from its checkpoint; each consumer group's). At the end it checks every
acknowledged emoji against Kafka and the viewers (tests/harness/faults.py) and prints the
tables, then, as its last line:

    soak: minutes=<m> faults=<n> lost=<n> twice=<n> missing=<n> rss_growth_mb=<largest service>

``rss_growth_mb`` is the largest growth of one service's memory within its last process, from a
minute and a half after that process appeared to the end (a restarted service starts again from
its new process, once started). ``lost`` and
``twice`` add what ingest acknowledged but Kafka lacks (or holds twice) to what the viewers' final
counts lack (or hold beyond what was acknowledged); ``missing`` counts viewer windows without the
exact final count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
from _common import process_tree, stack_base_settings

from emostream import kafka
from emostream.devstack.broker import BrokerNode
from emostream.settings import ROOT, Settings
from tests.harness.fanout import membership
from tests.harness.fault_stack import FaultStack, fault_settings
from tests.harness.faults import (
    TracedCrowd,
    audit,
    first_count_after,
    kill_active_processor,
    kill_group,
    listening_children,
    plan_for,
    standby_is_warm,
    wait_for_processor,
)
from tests.harness.stack import running_stack
from tests.harness.support import free_port, metric_of, wait_healthy

SAMPLE_EVERY_SECONDS = 10.0
STARTUP_SECONDS = 90.0  # a process's memory from this long after it first appears counts towards its growth
FAULT_KINDS = ("processor", "ingest instance", "subscriber node", "registration", "broker")


# --------------------------------------------------------------------------- faults


async def kill_processor(stack: FaultStack, broker: BrokerNode | None) -> dict:
    outcome = await asyncio.to_thread(kill_active_processor, stack, 120.0)
    return {"standby_active_after_s": outcome["standby_active_after_s"], "killed_at": outcome["killed_at"]}


async def kill_ingest_instance(stack: FaultStack, broker: BrokerNode | None) -> dict:
    held = listening_children(stack.pool.process.pid, stack.settings.ingest_port)
    victim = max(held, key=held.get)
    kill_group(victim, signal.SIGKILL)
    started = time.monotonic()
    while victim in stack.pool.instance_pids() or len(stack.pool.instance_pids()) < stack.pool.instances:
        await asyncio.sleep(0.2)
        if time.monotonic() - started > 120:
            raise RuntimeError(f"the ingest pool did not replace instance {victim}")
    await asyncio.to_thread(stack.pool.wait_ready, 120)
    return {"victim": victim, "replaced_after_s": round(time.monotonic() - started, 1)}


async def kill_subscriber_node(stack: FaultStack, broker: BrokerNode | None) -> dict:
    nodes = [node for node in membership(stack.settings)["subscribers"] if node["alive"]]
    victim = max(nodes, key=lambda node: node.get("connections", 0))
    os.kill(victim["pid"], signal.SIGKILL)
    return {"victim": victim["subscriber_id"], "connections": victim.get("connections")}


async def restart_registration(stack: FaultStack, broker: BrokerNode | None) -> dict:
    started = time.monotonic()
    await asyncio.to_thread(stack.restart, "registration_app.py", signal.SIGKILL)
    process = stack.processes["registration_app.py"].process
    await asyncio.to_thread(wait_healthy, stack.registration_url + "/healthz", 120, process)
    return {"healthy_after_s": round(time.monotonic() - started, 1)}


async def restart_broker(stack: FaultStack, broker: BrokerNode | None) -> dict:
    assert broker is not None
    started = time.monotonic()
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start, 120)
    return {"back_after_s": round(time.monotonic() - started, 1)}


FAULTS: dict[str, Callable[[FaultStack, BrokerNode | None], Awaitable[dict]]] = {
    "processor": kill_processor,
    "ingest instance": kill_ingest_instance,
    "subscriber node": kill_subscriber_node,
    "registration": restart_registration,
    "broker": restart_broker,
}


# --------------------------------------------------------------------------- sampling


class Samples:
    """Memory of each service over time, the processor's state and Kafka consumer lag."""

    def __init__(self, stack: FaultStack, broker: BrokerNode | None):
        self.stack = stack
        self.broker = broker
        self.started = time.monotonic()
        # service -> [(minutes, pid, MB)]; a processor's pid moves between the two keys on a takeover
        self.rss: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
        self.first_seen: dict[int, float] = {}  # pid -> minutes
        self.state: list[dict] = []
        self.lag: list[dict] = []

    def services(self) -> dict[str, int]:
        pids = {key: process.pid for key, process in self.stack.processes.items() if process.alive()}
        if self.stack.pool is not None:
            pids["ingest pool"] = self.stack.pool.pid
        if self.broker is not None and self.broker.pid():
            pids["kafka broker"] = self.broker.pid()
        return pids

    def sample(self) -> None:
        minutes = (time.monotonic() - self.started) / 60
        for name, pid in self.services().items():
            rss = 0
            for process in process_tree(pid):
                try:
                    rss += process.memory_info().rss
                except psutil.Error:
                    pass
            if rss:
                self.rss[name].append((minutes, pid, rss / 2**20))
                self.first_seen.setdefault(pid, minutes)
        settings = self.stack.settings
        try:
            rows = metric_of(
                f"http://127.0.0.1:{settings.processor_metrics_port}/metrics", "emostream_processor_state_rows"
            )
        except Exception:
            rows = None
        self.state.append({"minutes": minutes, "state_rows": rows, "state_bytes": folder_bytes(state_folder(settings))})
        try:
            self.lag.append({"minutes": minutes, **consumer_lag(settings)})
        except Exception as error:  # the broker may be the fault of the moment
            self.lag.append({"minutes": minutes, "error": str(error)[:80]})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_SECONDS)
            except TimeoutError:
                pass

    def memory_table(self) -> list[tuple[str, float, float, float, float, int]]:
        """(service, start MB, end MB, growth MB, slope MB/min, processes seen) per service.

        Growth and slope are those of the service's last process (since its last restart, if any), from
        STARTUP_SECONDS after that process first appeared: a restart is not a leak, and neither is a
        JVM filling in its heap as it starts.
        """
        rows = []
        for name, series in self.rss.items():
            last_pid = series[-1][1]
            settled = self.first_seen[last_pid] + STARTUP_SECONDS / 60
            current = [(m, mb) for m, pid, mb in series if pid == last_pid and m >= settled]
            growth = current[-1][1] - current[0][1] if current else 0.0
            rows.append((name, series[0][2], series[-1][2], growth, slope(current), len({pid for _, pid, _ in series})))
        return rows


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares MB per minute; 0 with fewer than two points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def state_folder(settings: Settings) -> Path:
    return Path(settings.checkpoint_dir) / "aggregates" / "state"


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def consumer_lag(settings: Settings) -> dict[str, int]:
    """Records not yet read: the processor's (from its checkpoint's last offsets) and each consumer group's."""
    from kafka import TopicPartition

    probe = kafka.consumer(settings)
    admin = kafka.admin(settings)
    try:
        emoji = [TopicPartition(settings.emoji_topic, p) for p in probe.partitions_for_topic(settings.emoji_topic)]
        ends = probe.end_offsets(emoji)
        read = processor_offsets(settings)
        lag = {"processor": sum(end - read.get(tp.partition, 0) for tp, end in ends.items())}
        for group, _ in admin.list_consumer_groups():
            committed = admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            group_ends = probe.end_offsets(list(committed))
            lag[group] = sum(max(0, group_ends[tp] - meta.offset) for tp, meta in committed.items() if meta.offset >= 0)
        return lag
    finally:
        probe.close()
        admin.close()


def processor_offsets(settings: Settings) -> dict[int, int]:
    """The emoji_topic offsets of the processor's last planned micro-batch (its checkpoint's offset log)."""
    folder = Path(settings.checkpoint_dir) / "aggregates" / "offsets"
    batches = sorted((int(p.name) for p in folder.glob("[0-9]*") if p.name.isdigit()), reverse=True)
    for batch in batches:
        lines = (folder / str(batch)).read_text().splitlines()
        if len(lines) >= 3:
            return {int(p): o for p, o in json.loads(lines[2]).get(settings.emoji_topic, {}).items()}
    return {}


# --------------------------------------------------------------------------- the run


async def soak(stack: FaultStack, broker: BrokerNode | None, args: argparse.Namespace) -> tuple[dict, dict, list]:
    settings = stack.settings
    crowd = TracedCrowd(
        plan_for(
            settings,
            (stack.pool.url,),
            stack.registration_url,
            viewers=args.viewers,
            rate=args.rate,
            duration=args.minutes * 60,
            batch=10,
            concurrency=64,
            probe_interval=1.0,
        ),
        settings,
    )
    kinds = [kind for kind in FAULT_KINDS if kind != "broker" or broker is not None]
    samples = Samples(stack, broker)
    faults: list[dict] = []
    stop_sampling = asyncio.Event()

    async def chaos() -> None:
        while crowd.ledger.accepted == 0:
            await asyncio.sleep(0.1)
        began = time.monotonic()
        for number in range(10**6):
            at = began + (number + 1) * args.fault_every
            if at > began + args.minutes * 60 - args.fault_every / 2:
                return  # none so late that the crowd stops before its recovery shows
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            kind = kinds[number % len(kinds)]
            started = time.time()
            print(f"[{(time.monotonic() - began) / 60:5.1f} min] fault {number + 1}: {kind}", flush=True)
            try:
                outcome = await FAULTS[kind](stack, broker)
                error = None
            except Exception as failure:  # a fault that could not be done is reported, not fatal
                outcome, error = {}, f"{type(failure).__name__}: {failure}"
            faults.append({"kind": kind, "at": started, "error": error, **outcome})
            print(f"          {json.dumps(faults[-1], default=str)[:300]}", flush=True)

    async def until_caught_up() -> None:
        await crowd.sending_done.wait()
        deadline = time.monotonic() + 180
        while not crowd.caught_up() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        crowd.stop()

    sampler = asyncio.ensure_future(samples.run(stop_sampling))
    watcher = asyncio.ensure_future(until_caught_up())
    try:
        report, _ = await asyncio.gather(crowd.run(), chaos())
    finally:
        watcher.cancel()
        stop_sampling.set()
        await sampler
    books = await asyncio.to_thread(audit, settings, crowd, 120.0)
    for fault in faults:
        if fault["kind"] == "processor" and not fault["error"]:
            fault["counting_again_after_s"] = await asyncio.to_thread(
                first_count_after, settings, crowd.plan.events, fault["killed_at"], 60.0
            )
    return {"report": report, "books": books, "samples": samples}, {"kinds": kinds}, faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="emoji per second the crowd sends")
    parser.add_argument("--viewers", type=int, default=500)
    parser.add_argument("--fault-every", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--keep", action="store_true", help="keep the services' logs and state")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="emostream-soak-"))
    bootstrap = os.environ.get("EMOSTREAM_KAFKA_BOOTSTRAP")
    broker = None
    if not bootstrap:
        broker = BrokerNode(
            home=work / "kafka",
            port=free_port(),
            controller_port=free_port(),
            heap="512m",
            jars=ROOT / "build" / "jars" / "kafka",
        )
        print(f"starting a private Kafka broker on {broker.bootstrap} ...", flush=True)
        broker.start()
        bootstrap = broker.bootstrap
    try:
        base = stack_base_settings(bootstrap, work)
        state = work / "stack"
        state.mkdir()
        # Many emoji per viewer each second: the per-user limit is not what this run is about.
        settings = fault_settings(base, state, rate_limit_per_user=1000.0, rate_burst_per_user=1000)
        kafka.ensure_topics(settings)
        with running_stack(settings, state, timeout=300, kind=FaultStack) as stack:
            stack.start_standby_processor()
            wait_for_processor(settings, True, 300, standby_is_warm)
            print(
                f"stack up with a warm standby processor; {args.viewers} viewers at {args.rate:.0f} emoji/s"
                f" for {args.minutes:g} min, a fault every {args.fault_every:.0f} s",
                flush=True,
            )
            result, _, faults = asyncio.run(soak(stack, broker, args))
    finally:
        if broker is not None:
            broker.stop(kill=True)
        if args.keep:
            print(f"kept the services' logs and state in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return print_results(args, result, faults)


def print_results(args: argparse.Namespace, result: dict, faults: list[dict]) -> int:
    report, books, samples = result["report"], result["books"], result["samples"]
    print()
    print("| fault | done | figures |")
    print("| --- | --- | --- |")
    for fault in faults:
        figures = {k: v for k, v in fault.items() if k not in ("kind", "at", "error", "killed_at")}
        print(f"| {fault['kind']} | {'no: ' + fault['error'] if fault['error'] else 'yes'} | {json.dumps(figures)} |")
    print()
    print(
        "| service | RSS start MB | RSS end MB | growth MB (last process) | slope MB/min (last process) | processes |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    memory = samples.memory_table()
    for name, start, end, growth, per_minute, processes in memory:
        print(f"| {name} | {start:.0f} | {end:.0f} | {growth:+.0f} | {per_minute:+.1f} | {processes} |")
    print()
    states = [s for s in samples.state if s["state_rows"] is not None]
    if states:
        print(
            f"processor state: rows {states[0]['state_rows']:.0f} → {states[-1]['state_rows']:.0f} "
            f"(max {max(s['state_rows'] for s in states):.0f}); state folder "
            f"{states[0]['state_bytes'] / 2**20:.1f} → {states[-1]['state_bytes'] / 2**20:.1f} MB"
        )
    lags = [lag for lag in samples.lag if "error" not in lag]
    if lags:
        groups = sorted({key for lag in lags for key in lag if key != "minutes"})
        print(
            "consumer lag (records), max over the run / at the end: "
            + ", ".join(
                f"{group} {max(lag.get(group, 0) for lag in lags)} / {lags[-1].get(group, 0)}" for group in groups
            )
        )
    print(
        f"crowd: asked {report['emoji_asked']}, accepted {report['emoji_accepted']}, given up "
        f"{report['emoji_given_up']}, refused attempts {dict(report['emoji_rejected'])}; "
        f"latency p50/p99 {report['latency_ms']['p50']}/{report['latency_ms']['p99']} ms"
    )
    # Ingest → Kafka from the topic itself; Kafka → viewers from the crowd's own books, which judge
    # each window as the run goes (a long run's crowd forgets the details of settled windows).
    lost = books["lost_before_kafka"] + report["emoji_lost"]
    twice = books["duplicated_on_kafka"] + report["emoji_extra"]
    print(
        f"ingest → Kafka: acknowledged {books['emoji_acknowledged']}, lost {books['lost_before_kafka']}, "
        f"on the topic twice {books['duplicated_on_kafka']}, written but unanswered {books['written_but_unanswered']}"
    )
    print(
        f"Kafka → viewers: windows exact {report['windows_exact']}/{report['windows_checked']}, lost "
        f"{report['emoji_lost']}, extra {report['emoji_extra']}, viewer windows missing {report['viewer_windows_missing']}"
    )
    if report["mismatches"]:
        print("mismatches: " + json.dumps(report["mismatches"], default=str)[:600])
    growth = max((row[3] for row in memory), default=0.0)
    print()
    print(
        f"soak: minutes={args.minutes:g} faults={sum(1 for f in faults if not f['error'])} "
        f"lost={lost} twice={twice} missing={report['viewer_windows_missing']} rss_growth_mb={growth:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

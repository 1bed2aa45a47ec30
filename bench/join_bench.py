"""Join → first update: late joiners and reconnecting viewers, from a node's memory and read back.

    .venv/bin/python bench/join_bench.py                # 20 joins a case, 200 at once; about 90 s
    .venv/bin/python bench/join_bench.py --joins 50 --stampede 1000 --background 200

It runs the main publisher, three cluster publishers and one subscriber node per cluster,
on free ports with topics of their own, and writes aggregates to the aggregate topic as
the processor does: one watched event (its current window every 500 ms, a late update
of the window before) and --background other events beside it, so a read-back has the
topic of a busy deployment to skip through. After --warmup seconds of history, stock
``socketio.AsyncClient`` viewers join one at a time (a fresh connection each) and it
reports, from the start of ``connect()``:

``connect``  the Socket.IO handshake done
``first``    the first ``emoji_update``
``all``      every window of the event from the join's start that existed at connect

Cases, all on the same event in the same run:

* baseline: a node with the history off (EMOSTREAM_VIEWER_HISTORY_SECONDS=0): a viewer
  waits for the next live update, as every viewer did before the history existed;
* late joiner / reconnect with ``since`` (6 s back) on the node that carries the event
  (two resident viewers keep it routed there): sent from memory;
* the same on a node no viewer of the event is on: each join reads the event back from
  the aggregate topic (the node forgets completeness when its last viewer leaves);
* --stampede viewers reconnecting at once with ``since`` to that node: one read-back.

Besides the times: ``records`` received by a joiner (median), the node's CPU time over the
case divided by its joins, the read-backs the node ran and the records each read. Then
the history's memory: its JSON bytes per event on the node, and the Python heap a full
horizon of one event takes (tracemalloc, records with ten emoji). Percentiles of 20
samples are coarse: p99 is the slowest but one at most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import random
import statistics
import tempfile
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import requests
from _common import kafka_for_bench, tree_cpu_seconds

from emostream import kafka
from emostream.fanout.history import ViewerHistory
from emostream.fanout.ops import ensure_fanout_topics
from emostream.settings import DEFAULT_EMOJI, Settings
from emostream.wire import make_aggregate, now_ms
from tests.harness.settings import isolated_settings, unique_topics
from tests.harness.support import ServiceProcess, free_port, metric_of, wait_healthy
from tests.harness.viewer_channel import LiveEvent, Watcher, node_token

AWAY_MS = 6_000
# The aiohttp session every viewer of the run shares (set inside the event loop).
SESSION: contextvars.ContextVar[aiohttp.ClientSession] = contextvars.ContextVar("session")


@dataclass
class Case:
    name: str
    node: str
    connect: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    every: list[float] = field(default_factory=list)
    records: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    readbacks: float = 0.0
    records_read: float = 0.0


class Background:
    """Aggregates of many other events, written every tick: the rest of a busy aggregate topic."""

    def __init__(self, settings: Settings, events: int, tick: float = 0.5):
        self.settings = settings
        self.events = [f"other-{n}" for n in range(events)]
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-events", daemon=True)

    def start(self) -> Background:
        if self.events:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        producer = kafka.producer(self.settings, linger_ms=20)
        window_ms = self.settings.window_seconds * 1000
        totals = {event_id: 0 for event_id in self.events}
        try:
            while not self._stop.wait(self.tick):
                now = now_ms()
                start = now // window_ms * window_ms
                for event_id in self.events:
                    totals[event_id] += 3
                    record = make_aggregate(
                        event_id, start, start + window_ms, {"👏": totals[event_id]}, emitted_at=now
                    )
                    producer.send(self.settings.aggregate_topic, key=f"{event_id}|{start}", value=record)
                producer.flush(timeout=30)
        finally:
            producer.close(timeout=5)


class Topology:
    """Main publisher, a cluster publisher per cluster, one node per cluster; c2's history is off."""

    NODES = {"c0-s0": 0, "c1-s0": 1, "c2-s0": 2}

    def __init__(self, settings: Settings, log_dir: Path):
        self.settings = settings
        self.services: dict[str, ServiceProcess] = {}
        self.ports = {node: free_port() for node in self.NODES}
        self.services["publisher"] = ServiceProcess("pubsub_service.py", settings, log_dir)
        for cluster in range(settings.clusters):
            self.services[f"cluster-{cluster}"] = ServiceProcess(
                "pubsub_service.py", settings, log_dir, "--cluster", str(cluster)
            )
        for node, cluster in self.NODES.items():
            env = {"EMOSTREAM_VIEWER_HISTORY_SECONDS": "0"} if node == "c2-s0" else None
            self.services[node] = ServiceProcess(
                "subscriber_service.py",
                settings,
                log_dir,
                "--id",
                node,
                "--cluster",
                str(cluster),
                "--port",
                str(self.ports[node]),
                env=env,
            )

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        targets = [self.url(node) + "/healthz" for node in self.NODES]
        targets.append(f"http://127.0.0.1:{self.settings.pubsub_metrics_port}/healthz")
        for target in targets:
            try:
                wait_healthy(target, max(0.1, deadline - time.monotonic()))
            except TimeoutError as error:
                raise SystemExit(str(error)) from None

    def connections(self, node: str) -> int:
        return requests.get(self.url(node) + "/healthz", timeout=5).json()["connections"]

    def metric(self, node: str, name: str) -> float:
        return metric_of(self.url(node) + "/metrics", name, 0.0)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()


async def join(
    topology: Topology, settings: Settings, live: LiveEvent, node: str, since: int | None, history_on: bool = True
) -> tuple[float, float, float, int]:
    """One viewer joins ``node``: (connect, first update, every window, records received) in seconds."""
    watcher = Watcher(live.event_id, SESSION.get())
    window_ms = settings.window_seconds * 1000
    horizon = (now_ms() - settings.viewer_history_seconds * 1000) // window_ms * window_ms
    start = horizon if since is None else max(since, horizon)
    expected = {window for window in live.finals() if window >= start} if history_on else set()
    token = node_token(settings, node, live.event_id)
    if not await watcher.connect(topology.url(node), token, since=since):
        raise SystemExit(f"{node} refused a viewer: {watcher.refusal}")
    connected = watcher.connect_seconds
    await watcher.wait_for(lambda w: bool(w.view) and expected <= set(w.view), 30, "the windows")
    first = min(at for at, _ in watcher.arrivals) - watcher.connected_at
    every = (
        max(min(at for at, r in watcher.arrivals if r["window_start"] == window) for window in expected)
        - watcher.connected_at
        if expected
        else first
    )
    received = len(watcher.arrivals)
    await watcher.disconnect()
    return connected, first, every, received


async def run_case(
    case: Case, topology: Topology, settings: Settings, live: LiveEvent, joins: int, since_back_ms: int | None
) -> Case:
    pid = topology.services[case.node].pid
    readbacks = topology.metric(case.node, "emostream_subscriber_readbacks_total")
    records_read = topology.metric(case.node, "emostream_subscriber_readback_records_total")
    cpu = tree_cpu_seconds(pid)
    history_on = case.node != "c2-s0"
    for _ in range(joins):
        # Join at a random moment of the live tick: back-to-back joins would all land just after an update.
        await asyncio.sleep(random.uniform(0, live.tick))
        since = None if since_back_ms is None else now_ms() - since_back_ms
        connected, first, every, received = await join(topology, settings, live, case.node, since, history_on)
        case.connect.append(connected)
        case.first.append(first)
        case.every.append(every)
        case.records.append(received)
        # The next viewer must find the node without viewers of the event (c1: so it reads back again).
        if case.node == "c1-s0":
            for _ in range(100):
                if await asyncio.to_thread(topology.connections, case.node) == 0:
                    break
                await asyncio.sleep(0.02)
    case.cpu_seconds = tree_cpu_seconds(pid) - cpu
    case.readbacks = topology.metric(case.node, "emostream_subscriber_readbacks_total") - readbacks
    case.records_read = topology.metric(case.node, "emostream_subscriber_readback_records_total") - records_read
    return case


async def run_stampede(case: Case, topology: Topology, settings: Settings, live: LiveEvent, viewers: int) -> Case:
    pid = topology.services[case.node].pid
    readbacks = topology.metric(case.node, "emostream_subscriber_readbacks_total")
    records_read = topology.metric(case.node, "emostream_subscriber_readback_records_total")
    cpu = tree_cpu_seconds(pid)
    since = now_ms() - AWAY_MS
    window_ms = settings.window_seconds * 1000
    expected = {window for window in live.finals() if window >= since // window_ms * window_ms}
    watchers = [Watcher(live.event_id, SESSION.get()) for _ in range(viewers)]
    tokens = [node_token(settings, case.node, live.event_id) for _ in watchers]
    url = topology.url(case.node)
    await asyncio.gather(
        *(watcher.connect(url, token, since=since) for watcher, token in zip(watchers, tokens, strict=True))
    )
    await asyncio.gather(
        *(w.wait_for(lambda w: expected <= set(w.view), 60, "the windows") for w in watchers if w.client is not None)
    )
    for watcher in watchers:
        if watcher.client is None:
            raise SystemExit(f"{case.node} refused a viewer: {watcher.refusal}")
        case.connect.append(watcher.connect_seconds)
        case.first.append(min(at for at, _ in watcher.arrivals) - watcher.connected_at)
        case.every.append(
            max(min(at for at, r in watcher.arrivals if r["window_start"] == window) for window in expected)
            - watcher.connected_at
        )
        case.records.append(len(watcher.arrivals))
    await asyncio.gather(*(watcher.disconnect() for watcher in watchers))
    case.cpu_seconds = tree_cpu_seconds(pid) - cpu
    case.readbacks = topology.metric(case.node, "emostream_subscriber_readbacks_total") - readbacks
    case.records_read = topology.metric(case.node, "emostream_subscriber_readback_records_total") - records_read
    return case


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def history_memory(settings: Settings, events: int = 200) -> tuple[float, float, int]:
    """(JSON bytes, Python heap bytes) per event for a full horizon of ten-emoji records, and windows each."""
    window_ms = settings.window_seconds * 1000
    horizon_ms = settings.viewer_history_seconds * 1000
    windows = horizon_ms // window_ms + 1
    now = now_ms() // window_ms * window_ms
    counts = {emoji: 1234 + n for n, emoji in enumerate(DEFAULT_EMOJI)}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = ViewerHistory(window_ms, horizon_ms, windows + 2, 1 << 30, events, clock=lambda: now)
    for event in range(events):
        for n in range(windows):
            start = now - n * window_ms
            record = make_aggregate(f"event-{event}", start, start + window_ms, counts, emitted_at=start + 2500)
            # As the node holds it: decoded from the channel's JSON, with the main publisher's routed_at.
            history.offer(json.loads(json.dumps(record | {"routed_at": start + 2510})), live=True)
    heap = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return history.bytes / events, heap / events, windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20, help="joins per case, one at a time")
    parser.add_argument("--stampede", type=int, default=200, help="viewers reconnecting at once")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of history before the joins")
    parser.add_argument("--background", type=int, default=50, help="other events in the aggregate topic")
    parser.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: EMOSTREAM_KAFKA_BOOTSTRAP, else a broker of its own)"
    )
    args = parser.parse_args(argv)

    state = Path(tempfile.mkdtemp(prefix="join-bench-"))
    began = time.monotonic()
    with kafka_for_bench(args.bootstrap, state, heap="384m", kill=True) as bootstrap:
        settings = unique_topics(isolated_settings(state, kafka_bootstrap=bootstrap)).replace(
            clusters=3, pubsub_metrics_port=free_port(), heartbeat_seconds=1.0, heartbeat_expiry_seconds=6.0
        )
        kafka.ensure_topics(settings)
        ensure_fanout_topics(settings)
        log_dir = state / "logs"
        log_dir.mkdir()
        print(f"starting the publishers and three nodes (logs in {log_dir}) ...", flush=True)
        topology = Topology(settings, log_dir)
        try:
            topology.wait_ready()
            cases, node_bytes, node_events = asyncio.run(measure(topology, settings, args))
        finally:
            topology.stop()
    json_bytes, heap_bytes, windows = history_memory(settings)
    report(cases, args, settings, node_bytes, node_events, json_bytes, heap_bytes, windows)
    print(f"\n(run took {time.monotonic() - began:.0f} s)")
    return 0


async def measure(topology: Topology, settings: Settings, args: argparse.Namespace) -> tuple[list[Case], float, float]:
    event_id = f"bench-{uuid.uuid4().hex[:6]}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    SESSION.set(session)
    background = Background(settings, args.background).start()
    live = LiveEvent(settings, event_id).start()
    residents = {node: [Watcher(event_id, session), Watcher(event_id, session)] for node in ("c0-s0", "c2-s0")}
    try:
        for node, watchers in residents.items():
            for watcher in watchers:
                assert await watcher.connect(topology.url(node), node_token(settings, node, event_id))
        print(f"{args.warmup:.0f} s of history on {event_id} and {args.background} other events ...", flush=True)
        await asyncio.sleep(args.warmup)
        cases = [
            await run_case(
                Case("baseline: live only (history off)", "c2-s0"), topology, settings, live, args.joins, None
            ),
            await run_case(Case("late joiner, from memory", "c0-s0"), topology, settings, live, args.joins, None),
            await run_case(
                Case("reconnect since -6 s, from memory", "c0-s0"), topology, settings, live, args.joins, AWAY_MS
            ),
            await run_case(Case("late joiner, read back", "c1-s0"), topology, settings, live, args.joins, None),
            await run_case(
                Case("reconnect since -6 s, read back", "c1-s0"), topology, settings, live, args.joins, AWAY_MS
            ),
        ]
        for _ in range(100):  # the stampede must find c1 without viewers of the event, so it reads back
            if await asyncio.to_thread(topology.connections, "c1-s0") == 0:
                break
            await asyncio.sleep(0.05)
        stampede = Case(f"{args.stampede} at once, since -6 s, read back", "c1-s0")
        cases.append(await run_stampede(stampede, topology, settings, live, args.stampede))
        node_bytes = topology.metric("c0-s0", "emostream_subscriber_history_bytes")
        node_events = topology.metric("c0-s0", "emostream_subscriber_history_events")
        return cases, node_bytes, node_events
    finally:
        for watchers in residents.values():
            for watcher in watchers:
                await watcher.disconnect()
        live.stop()
        background.stop()
        await session.close()


def report(
    cases: list[Case],
    args: argparse.Namespace,
    settings: Settings,
    node_bytes: float,
    node_events: float,
    json_bytes: float,
    heap_bytes: float,
    windows: int,
) -> None:
    print(
        f"\njoin -> updates, {args.joins} joins a case (one at a time), {args.warmup:.0f} s of history, "
        f"{args.background} other events in the topic; times in ms from the start of connect()"
    )
    header = (
        f"{'case':<38}{'node':>6}{'joins':>7}{'connect p50':>13}{'first p50':>11}{'first p99':>11}"
        f"{'all p50':>9}{'all p99':>9}{'records':>9}{'CPU ms/join':>13}{'read-backs':>12}{'read/back':>11}"
    )
    print(header)
    for case in cases:
        ms = lambda values, q: percentile(values, q) * 1000  # noqa: E731
        print(
            f"{case.name:<38}{case.node:>6}{len(case.first):>7}"
            f"{statistics.median(case.connect) * 1000:>13.1f}{ms(case.first, 0.5):>11.1f}{ms(case.first, 0.99):>11.1f}"
            f"{ms(case.every, 0.5):>9.1f}{ms(case.every, 0.99):>9.1f}{statistics.median(case.records):>9.0f}"
            f"{case.cpu_seconds * 1000 / max(1, len(case.first)):>13.1f}{case.readbacks:>12.0f}"
            f"{case.records_read / case.readbacks if case.readbacks else 0:>11.0f}"
        )
    baseline = statistics.median(cases[0].first)
    for case in cases[1:]:
        print(f"  {case.name}: first update at {statistics.median(case.first) / baseline:.2f}x the baseline's median")
    print(
        f"\nhistory memory: the node carrying the event holds {node_bytes / max(1, node_events):,.0f} B (JSON) per event "
        f"({node_events:.0f} event(s), {args.warmup:.0f} s+ of windows)"
    )
    print(
        f"a full horizon ({settings.viewer_history_seconds} s = {windows} windows, ten emoji a record): "
        f"{json_bytes:,.0f} B JSON, {heap_bytes:,.0f} B Python heap per event; at the defaults' cap of "
        f"{settings.viewer_history_max_events} events besides watched ones: "
        f"{heap_bytes * settings.viewer_history_max_events / 2**20:,.1f} MiB a node"
    )


if __name__ == "__main__":
    raise SystemExit(main())

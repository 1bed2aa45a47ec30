"""How many viewers the fan-out tier holds, and how fast an aggregate reaches them.

    .venv/bin/python bench/fanout_bench.py     # 2,000 then 5,000 viewers: 1 node vs 1 cluster x 1 node per core
    .venv/bin/python bench/fanout_bench.py --viewers 1000,3000,6000 --clusters 3 --nodes 3 --rounds 3

Each scenario (the baseline, a single subscriber node, and the fan-out topology)
starts registration, the main publisher and the subscriber manager (which runs the
nodes and cluster publishers) on free ports with topics of its own, and connects
viewers from separate worker processes (asyncio) step by step up to each count in
--viewers. At each step it publishes one aggregate per event every 500 ms to the
aggregate topic for --duration seconds and reports the viewers held, the delay
from the main publisher to the viewer (``routed_at`` → arrival) and from the
aggregate topic (``emitted_at`` → arrival), deliveries missed, node memory per
connection and CPU. The scenarios run side by side and are measured alternately,
--rounds times per step.

Bounded: at most 15,000 viewers, connected in waves, each step measured for
--duration seconds; every process it starts is stopped at the end. Kafka is
EMOSTREAM_KAFKA_BOOTSTRAP when it is set, else a broker of the bench's own on free
ports. The machine's load average is printed with every row: other work on
the same cores shows up directly in the delays.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import kafka_for_bench

PERIOD_SECONDS = 0.5  # one aggregate per event every 500 ms


# --------------------------------------------------------------------------- viewer worker


class _SocketIOProtocol(asyncio.Protocol):
    """Engine.IO 4 / Socket.IO 5 over a websocket, straight on an asyncio transport.

    Frames from the server are unmasked; frames to it carry the (all-zero) mask the
    protocol requires. Only what a viewer needs: open, CONNECT with auth, pings, events.
    """

    def __init__(self, host: str, port: int, auth: dict[str, Any], viewer: RawViewer):
        self.request = (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.auth = json.dumps(auth)
        self.viewer = viewer
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def send_text(self, text: str) -> None:
        payload = text.encode()
        size = len(payload)
        header = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
        self.transport.write(header + b"\0\0\0\0" + payload)  # a zero mask leaves the payload as is

    def data_received(self, data: bytes) -> None:
        received_at = time.time()  # as early as the client can know
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(f"no websocket upgrade: {head[:60]!r}")
                return
            self.upgraded, self.buffer = True, rest
        while len(self.buffer) >= 2:
            opcode, length, offset = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, offset = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, offset = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < offset + length:
                return
            payload, self.buffer = self.buffer[offset : offset + length], self.buffer[offset + length :]
            if opcode == 0x8:  # close
                self.transport.close()
                return
            if opcode == 0x1:
                self._packet(payload.decode(), received_at)

    def _packet(self, text: str, received_at: float) -> None:
        if text == "2":
            self.send_text("3")
        elif text.startswith("42"):
            name, aggregate = json.loads(text[2:])
            if name == "emoji_update":
                self.viewer.on_update(self.viewer, aggregate, received_at)
        elif text.startswith("0"):
            self.send_text("40" + self.auth)
        elif text.startswith("40"):
            if not self.ready.done():
                self.ready.set_result(None)
        elif text.startswith("44"):
            self._fail(f"refused: {text[2:120]}")

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.viewer.connected = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))


class RawViewer:
    """A lean Socket.IO viewer: the same registration and protocol, without the client library.

    python-socketio's AsyncClient (as in emostream.clients.viewer) spends far more CPU per
    message (a task per packet, aiohttp, two decoding layers). With thousands of
    viewers on the same two cores as the servers, the load generator would then set
    the delays; this client reads frames straight off the socket and takes the
    arrival time first thing. ``--client viewer`` runs the full Viewer instead.
    """

    def __init__(self, registration: str, event_id: str, client_id: str, session: Any, on_update: Any):
        self.registration = registration
        self.event_id = event_id
        self.client_id = client_id
        self.session = session
        self.on_update = on_update
        self.connected = False
        self.reconnects = 0
        self.assignment: dict[str, Any] | None = None
        self._protocol: _SocketIOProtocol | None = None

    async def start(self, timeout: float) -> None:
        async with self.session.post(
            self.registration + "/register", json={"client_id": self.client_id, "event_id": self.event_id}
        ) as response:
            response.raise_for_status()
            self.assignment = await response.json()
        host, port = self.assignment["url"].removeprefix("http://").rsplit(":", 1)
        protocol = _SocketIOProtocol(host, int(port), {"token": self.assignment["token"]}, self)
        await asyncio.get_running_loop().create_connection(lambda: protocol, host, int(port))
        self._protocol = protocol
        await asyncio.wait_for(protocol.ready, timeout)
        self.connected = True

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        if self.assignment is not None:
            body = {"client_id": self.client_id, "token": self.assignment["token"]}
            async with self.session.post(self.registration + "/unregister", json=body) as response:
                await response.read()


async def worker(args: argparse.Namespace) -> None:
    """A process of viewers, driven by lines on stdin; answers one JSON line on stdout each.

    ``connect N``: connect N more viewers. ``measure T``: record deliveries emitted from
    T (epoch ms). ``report {"to": T, "expected": {event: n}}``: the delays and misses
    of that measurement. ``quit``: close every viewer and exit.
    """
    import aiohttp

    from emostream.clients.viewer import Viewer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    samples: list[tuple[float, float]] = []  # (routed delay, emitted delay) in ms
    per_viewer: dict[str, set[Any]] = {}  # the windows each viewer received
    measuring = {"from": float("inf"), "to": float("inf")}

    def record(viewer: Any, aggregate: dict[str, Any], received_at: float) -> None:
        emitted_at = aggregate.get("emitted_at", 0)
        if not measuring["from"] <= emitted_at <= measuring["to"]:
            return
        # A window counts as delivered however it came. A node that is reading its event back
        # from the aggregate topic (for joiners) sends the viewers of its room what it reads
        # first, ahead of the live path, and then drops the live copy as a repeat: that record
        # has no routed_at and no fan-out delay to measure, but the viewer has the window.
        per_viewer.setdefault(viewer.client_id, set()).add(aggregate.get("window_start"))
        if "routed_at" in aggregate:
            received_ms = received_at * 1000
            samples.append((received_ms - aggregate["routed_at"], received_ms - emitted_at))

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    events = [f"event-{n}" for n in range(args.events)]
    viewers: list[Any] = []

    def new_viewer(n: int) -> Any:
        event_id, client_id = events[n % len(events)], f"bench-{args.offset}-{n}"
        if args.client == "viewer":
            return Viewer(
                args.registration,
                event_id=event_id,
                client_id=client_id,
                http_session=session,
                on_update=lambda viewer, d: record(viewer, d.aggregate, d.received_at),
                history=0,
            )
        return RawViewer(args.registration, event_id, client_id, session, record)

    lags: list[float] = []
    cpu_at_start = 0.0

    async def loop_lag() -> None:
        # How late the worker's own event loop runs: a busy client inflates measured delays.
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append((time.monotonic() - before - 0.05) * 1000)

    lag_task = asyncio.ensure_future(loop_lag())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    while True:
        line = (await reader.readline()).decode().split(maxsplit=1)
        if not line or line[0] == "quit":
            break
        if line[0] == "connect":
            gc.unfreeze()
            started = time.monotonic()
            fresh = [new_viewer(len(viewers) + n) for n in range(int(line[1]))]
            viewers.extend(fresh)
            failed = 0
            for first in range(0, len(fresh), args.wave):
                wave = fresh[first : first + args.wave]
                results = await asyncio.gather(*(v.start(timeout=60) for v in wave), return_exceptions=True)
                failed += sum(1 for r in results if isinstance(r, BaseException))
            seconds = time.monotonic() - started
            # The same collector settings as the nodes: the load generator's own pauses
            # would otherwise show up as delivery delay.
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 10, 100)
            answer({"connected": sum(v.connected for v in viewers), "failed": failed, "seconds": seconds})
        elif line[0] == "measure":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu_at_start = usage.ru_utime + usage.ru_stime
            samples.clear()
            per_viewer.clear()
            lags.clear()
            measuring.update({"from": float(line[1]), "to": float("inf")})
        elif line[0] == "report":
            plan = json.loads(line[1])
            measuring["to"] = plan["to"]
            usage = resource.getrusage(resource.RUSAGE_SELF)
            expected = plan["expected"]
            answer(
                {
                    "connected": sum(v.connected for v in viewers),
                    "reconnects": sum(v.reconnects for v in viewers),
                    "expected": sum(expected[v.event_id] for v in viewers),
                    "missing": sum(
                        max(0, expected[v.event_id] - len(per_viewer.get(v.client_id, ()))) for v in viewers
                    ),
                    "routed_delays": [round(s[0], 1) for s in samples],
                    "emitted_delays": [round(s[1], 1) for s in samples],
                    "loop_lag_p99": percentile(lags, 99),
                    "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_at_start,
                }
            )
            measuring.update({"from": float("inf"), "to": float("inf")})
    lag_task.cancel()
    for first in range(0, len(viewers), 500):
        await asyncio.gather(*(v.close() for v in viewers[first : first + 500]), return_exceptions=True)
    await session.close()


# --------------------------------------------------------------------------- scenario


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Result:
    name: str
    round: int
    nodes: int
    target: int
    held: int
    routed_p50: float
    routed_p99: float
    emitted_p99: float
    missing: int
    expected: int
    kb_per_viewer: float
    node_cpu: float
    node_us_per_delivery: float
    client_us_per_delivery: float
    client_lag_p99: float
    load_average: float


class Scenario:
    """One topology on free ports with its own topics, its processes and its viewer workers."""

    def __init__(
        self, name: str, slug: str, clusters: int, nodes: int, args: argparse.Namespace, log_dir: Path, bootstrap: str
    ):
        from emostream import kafka
        from emostream.fanout.ops import ensure_fanout_topics
        from emostream.settings import Settings

        tag = uuid.uuid4().hex[:8]
        self.name = name
        self.slug = slug
        self.args = args
        self.log_dir = log_dir
        self.settings = Settings.from_env(
            kafka_bootstrap=bootstrap,
            aggregate_topic=f"bench_aggregates.{tag}",
            membership_topic=f"bench_subscribers.{tag}",
            cluster_topic_prefix=f"bench_cluster.{tag}.",
            emoji_topic=f"bench_emoji.{tag}",
            dead_letter_topic=f"bench_dead.{tag}",
            clusters=clusters,
            subscribers_per_cluster=nodes,
            max_subscribers_per_cluster=nodes,
            subscriber_capacity=2 * max(args.viewers),  # never "full": no scaling during a measurement
            subscriber_base_port=0,
            registration_port=free_port(),
            manager_port=free_port(),
            pubsub_metrics_port=free_port(),
            heartbeat_seconds=1.0,
            heartbeat_expiry_seconds=5.0,
            token_secret="bench-" + tag,
            log_level="WARNING",
        )
        kafka.ensure_topics(self.settings)
        ensure_fanout_topics(self.settings)
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.viewers = 0

    @property
    def registration(self) -> str:
        return f"http://127.0.0.1:{self.settings.registration_port}"

    def _spawn(self, module: str) -> subprocess.Popen:
        env = {**os.environ, **self.settings.to_env()}
        log = open(self.log_dir / f"{self.slug}-{module.rsplit('.', 1)[-1]}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start(self) -> None:
        import requests

        self._spawn("emostream.fanout.manager")
        self._spawn("emostream.fanout.registration")
        self._spawn("emostream.fanout.publisher")
        expected = self.settings.clusters * self.settings.subscribers_per_cluster
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                view = requests.get(self.registration + "/subscribers", timeout=5).json()
                pubsub = requests.get(f"http://127.0.0.1:{self.settings.pubsub_metrics_port}/healthz", timeout=5)
                if view["live_nodes"] == expected and pubsub.ok:
                    self.nodes = {n["subscriber_id"]: n["pid"] for n in view["subscribers"] if n["alive"]}
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{self.name}: the topology did not come up in 180 s (logs in {self.log_dir})")
        for n in range(self.args.workers):
            command = [sys.executable, __file__, "--worker", "--registration", self.registration]
            command += ["--offset", str(n), "--events", str(self.args.events), "--wave", str(self.args.wave)]
            command += ["--client", self.args.client]
            self.workers.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def _ask(self, lines: list[str]) -> list[dict[str, Any]]:
        for worker_process, line in zip(self.workers, lines, strict=True):
            worker_process.stdin.write(line + "\n")
            worker_process.stdin.flush()
        return [json.loads(worker_process.stdout.readline()) for worker_process in self.workers]

    def grow_to(self, viewers: int) -> int:
        """Connect viewers until ``viewers`` are registered in total; return how many are connected."""
        import requests

        more = viewers - self.viewers
        share, extra = divmod(more, len(self.workers))
        answers = self._ask([f"connect {share + (1 if n < extra else 0)}" for n in range(len(self.workers))])
        self.viewers = viewers
        connected = sum(a["connected"] for a in answers)
        # Routing follows heartbeats: wait until they show every viewer.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if requests.get(self.registration + "/subscribers", timeout=5).json()["connections"] >= connected:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        return connected

    def grow(self, target: int) -> None:
        """Connect viewers up to ``target`` and note the nodes' memory before and after."""
        import psutil

        self.node_processes = [psutil.Process(pid) for pid in self.nodes.values()]
        if self.viewers == 0:
            self.rss_idle = sum(p.memory_info().rss for p in self.node_processes)
        self.target = target
        self.connected = self.grow_to(target)
        self.rss = sum(p.memory_info().rss for p in self.node_processes)

    def measure(self, round_number: int) -> Result:
        from emostream import kafka
        from emostream.wire import make_aggregate, now_ms

        node_processes, target, connected, rss = self.node_processes, self.target, self.connected, self.rss
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in node_processes)
        load_before = os.getloadavg()[0]

        producer = kafka.producer(self.settings, linger_ms=0)
        events = [f"event-{n}" for n in range(self.args.events)]
        start_ms = now_ms()
        for worker_process in self.workers:
            worker_process.stdin.write(f"measure {start_ms}\n")
            worker_process.stdin.flush()
        sent = {event: 0 for event in events}
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < self.args.duration:
            for event in events:
                window_start = start_ms + tick * 500
                aggregate = make_aggregate(event, window_start, window_start + 2000, {"🔥": 1234 + tick, "👏": 56})
                producer.send(self.settings.aggregate_topic, key=f"{event}|{window_start}", value=aggregate)
                sent[event] += 1
            producer.flush(timeout=10)
            tick += 1
            time.sleep(max(0.0, started + tick * PERIOD_SECONDS - time.monotonic()))
        end_ms = now_ms()
        elapsed = time.monotonic() - started
        cpu_seconds = sum(sum(p.cpu_times()[:2]) for p in node_processes) - cpu_before
        producer.close(timeout=5)
        time.sleep(3.0)  # the last aggregates are in flight
        reports = self._ask(["report " + json.dumps({"to": end_ms, "expected": sent})] * len(self.workers))
        routed = [d for r in reports for d in r["routed_delays"]]
        emitted = [d for r in reports for d in r["emitted_delays"]]
        deliveries = sum(r["expected"] - r["missing"] for r in reports)
        return Result(
            name=self.name,
            round=round_number,
            nodes=len(node_processes),
            target=target,
            held=min(connected, sum(r["connected"] for r in reports)),
            routed_p50=percentile(routed, 50),
            routed_p99=percentile(routed, 99),
            emitted_p99=percentile(emitted, 99),
            missing=sum(r["missing"] for r in reports),  # a viewer that never connected misses all
            expected=sum(r["expected"] for r in reports),
            kb_per_viewer=(rss - self.rss_idle) / 1024 / max(1, connected),
            node_cpu=cpu_seconds / elapsed,
            node_us_per_delivery=cpu_seconds * 1e6 / max(1, deliveries),
            client_us_per_delivery=sum(r["cpu_seconds"] for r in reports) * 1e6 / max(1, deliveries),
            client_lag_p99=max(r["loop_lag_p99"] for r in reports),
            load_average=max(load_before, os.getloadavg()[0]),
        )

    def stop(self) -> None:
        for worker_process in self.workers:
            try:
                worker_process.stdin.write("quit\n")
                worker_process.stdin.flush()
                worker_process.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                worker_process.kill()
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def run(args: argparse.Namespace) -> int:
    from emostream import logs
    from emostream.settings import Settings

    logs.configure(Settings.from_env(environ={}, log_level="WARNING"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every service
    log_dir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    with kafka_for_bench(None, log_dir, heap="384m", kill=True) as bootstrap:
        results = measure_scenarios(args, log_dir, bootstrap)
    print_table(results, args)
    print(f"(service logs in {log_dir})")
    return 0


def measure_scenarios(args: argparse.Namespace, log_dir: Path, bootstrap: str) -> list[Result]:
    plans = [] if args.skip_baseline else [("baseline: 1 node", "baseline", 1, 1)]
    plans.append((f"fan-out: {args.clusters} x {args.nodes}", "fanout", args.clusters, args.nodes))
    # Both topologies run side by side and are measured in turn, round after round: on a
    # shared machine the load changes by the minute, and alternating keeps the
    # comparison with the baseline fair.
    scenarios = [
        Scenario(name, slug, clusters, nodes, args, log_dir, bootstrap) for name, slug, clusters, nodes in plans
    ]
    results = []
    try:
        for scenario in scenarios:
            scenario.start()
        for target in args.viewers:
            for scenario in scenarios:
                scenario.grow(target)
            for round_number in range(1, args.rounds + 1):
                for scenario in scenarios:
                    results.append(scenario.measure(round_number))
                    print(f"  {scenario.name}, {target} viewers, round {round_number}", file=sys.stderr, flush=True)
    finally:
        for scenario in scenarios:
            scenario.stop()
    return results


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\nfan-out benchmark: {args.client} viewers in {args.workers} worker process(es), {args.events} event(s), "
        f"one aggregate per event every 500 ms for {args.duration:.0f} s per step, {os.cpu_count()} cores\n"
    )
    header = (
        f"{'scenario':<18} {'round':>5} {'nodes':>5} {'held':>11} {'p50 ms':>7} {'p99 ms':>7} {'p99 topic':>9} "
        f"{'missed':>13} {'KB/viewer':>9} {'node CPU':>8} {'us/msg':>6} {'client us':>9} {'client lag':>10} "
        f"{'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<18} {r.round:>5} {r.nodes:>5} {f'{r.held}/{r.target}':>11} {r.routed_p50:>7.0f} {r.routed_p99:>7.0f} "
            f"{r.emitted_p99:>9.0f} {f'{r.missing}/{r.expected}':>13} {r.kb_per_viewer:>9.1f} "
            f"{r.node_cpu:>7.2f}c {r.node_us_per_delivery:>6.0f} {r.client_us_per_delivery:>9.0f} "
            f"{r.client_lag_p99:>8.0f}ms {r.load_average:>5.1f}"
        )
    print(
        "\np50/p99: main publisher (routed_at) to viewer; p99 topic: aggregate topic (emitted_at) to viewer;"
        "\nmissed: deliveries due that did not arrive; KB/viewer: node RSS growth per connection;"
        "\nnode CPU: cores used by all subscriber nodes together; us/msg: node CPU per delivery;"
        "\nclient us: viewer-worker CPU per delivery; client lag: p99 event-loop lag of the workers;"
        "\nload: 1-minute load average of the machine (other work on the same 2 cores)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--viewers",
        type=lambda text: sorted(int(n) for n in text.split(",")),
        default=[2000, 5000],
        help="viewer counts to measure in turn, e.g. 2000,5000,8000",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing measured")
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument(
        "--nodes", type=int, default=os.cpu_count() or 2, help="subscriber nodes per cluster (default: one per core)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each scenario at each viewer count")
    parser.add_argument("--events", type=int, default=1, help="events the viewers are spread over")
    parser.add_argument("--workers", type=int, default=2, help="viewer worker processes")
    parser.add_argument("--wave", type=int, default=100, help="viewers a worker connects at once")
    parser.add_argument(
        "--client",
        choices=("raw", "viewer"),
        default="raw",
        help="lean protocol client or emostream.clients.viewer.Viewer",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--registration", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)  # the worker's number
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return 0
    if not all(1 <= n <= 15_000 for n in args.viewers):
        parser.error("--viewers must be 1..15000 (the open-files limit is about 20,000)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""What the fault tests share: a crowd whose every emoji can be found again, and the books.

The end-to-end promise under test: every emoji answered 2xx is counted exactly once in
its window's final count. :class:`TracedCrowd` is the simulator's crowd with one change:
each request carries a user_id of its own (with a send credential for it, signed with the
stack's secret), so every acknowledged emoji can be found on ``emoji_topic`` by that id. :func:`audit` then checks the promise in two steps that
together are the whole of it:

1. ingest → Kafka: every acknowledged emoji is on the topic exactly once;
2. Kafka → viewers: for every window, the final count the viewers received equals the
   emoji on the topic whose server ``received_at`` falls in that window.

The window of an emoji is read from its record because ingest stamps ``received_at``
and does not send it back; a client can only guess it from its own clock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from emostream import kafka
from emostream.clients.crowd import Crowd, CrowdPlan, parse_mix
from emostream.fanout.ops import fanout_topics
from emostream.settings import Settings
from tests.harness.senders import send_headers
from tests.harness.support import read_topic

# After every window has its count, how long to keep watching for counts that grow past it.
EXTRAS_SECONDS = 3.0
# The longest a crowd waits after sending for the pipeline to deliver every window's count.
DRAIN_BOUND_SECONDS = 120.0
RESULTS_FILE = Path(__file__).resolve().parents[2] / "test-artifacts" / "faults-figures.jsonl"


class TimedRefusals(Counter):
    """The crowd's count of refused attempts by status, which also notes when each was refused."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, str, int]] = []  # (epoch s, status, emoji) per refused attempt

    def __setitem__(self, key: str, value: int) -> None:
        added = value - self.get(key, 0)
        if added > 0:
            self.times.append((time.time(), key, added))
        super().__setitem__(key, value)


class TracedCrowd(Crowd):
    """The simulator's crowd, with one user_id per request and live arrival times per viewer."""

    def __init__(self, plan: CrowdPlan, settings: Settings):
        super().__init__(plan)
        self.ledger.rejected = TimedRefusals()
        self.settings = settings
        self._serial = itertools.count()
        self.acked: dict[str, tuple[str, tuple[str, ...]]] = {}  # user_id -> (event_id, its emoji), answered 202
        self.acked_at: dict[str, float] = {}  # user_id -> when the 202 arrived (epoch s)
        self.unanswered: set[str] = set()  # refused, or no answer ever came
        # viewer client_id -> arrival times of its live updates (replays on a reconnect are not counted)
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.sending_done = asyncio.Event()

    async def run_senders(self) -> None:
        try:
            await super().run_senders()
        finally:
            self.sending_done.set()

    def caught_up(self) -> bool:
        """Every window the crowd sent to has reached every viewer of its event with the count ingest accepted."""
        ledger = self.ledger
        for key, accepted in ledger.accepted_by_window.items():
            if key[0] not in self.plan.events:
                continue
            watchers = [viewer for viewer, event in ledger.viewer_events.items() if event == key[0]]
            finals = [ledger.final_by_viewer.get(viewer, {}).get(key) for viewer in watchers]
            if min((final["total"] if final else 0 for final in finals), default=0) < accepted:
                return False
        return bool(ledger.accepted_by_window)

    async def _send_headers(self, session, user_id: str, event_id: str) -> dict[str, str]:
        # A user per request: signed here rather than registered, a registration per request.
        return send_headers(self.settings, user_id, event_id)

    async def _send(self, session, event_id, user_ids, emoji) -> None:
        user = f"{self.run_id}.{next(self._serial)}"
        received_at = await self._post(session, event_id, [user] * len(user_ids), emoji)
        if received_at is None:
            self.unanswered.add(user)
            return
        self.ledger.accept(event_id, emoji, received_at)
        self.acked[user] = (event_id, tuple(emoji))
        self.acked_at[user] = time.time()

    def _make_viewer(self, event_id: str, client_id: str, on_update):
        def recorded(aggregate: dict[str, Any], arrived_at: float | None = None, replayed: bool = False) -> None:
            if not replayed:
                self.arrivals[client_id].append(time.time() if arrived_at is None else arrived_at)
            on_update(aggregate, arrived_at, replayed)

        return super()._make_viewer(event_id, client_id, recorded)

    def viewers_by_id(self) -> dict[str, Any]:
        return {viewer.client_id: viewer for viewer in self.viewers}


def plan_for(settings: Settings, ingest_urls: tuple[str, ...], registration_url: str, **changes: Any) -> CrowdPlan:
    """A steady, modest crowd: 20 viewers over two events, 150 emoji/s in batches of 3."""
    plan = dict(
        ingest_urls=ingest_urls,
        registration_url=registration_url,
        viewers=20,
        rate=150.0,
        duration=24.0,
        events=("final", "semi"),
        mix=parse_mix("🔥=5,👏=3,😂=1,\u2764\ufe0f=1", settings.emoji_types),
        batch=3,
        probe_interval=0.5,
        concurrency=32,
        window_ms=settings.window_seconds * 1000,
        settle_ms=settings.settle_ms,
        drain=DRAIN_BOUND_SECONDS,
        seed=17,
    )
    plan.update(changes)
    # Events of the run's own, so nothing else on the shared topics is counted with them.
    plan["events"] = tuple(f"{event}-{int(time.time() * 1000) % 10**8}" for event in plan["events"])
    return CrowdPlan(**plan)


async def run_with_fault(crowd: TracedCrowd, fault: Callable[[], Awaitable[Any]], after: float) -> tuple[dict, Any]:
    """Run the crowd; ``after`` seconds into its sending, run ``fault`` alongside it.

    Once sending has stopped, the crowd keeps watching until every window's count has
    reached the viewers (plus a few seconds, for anything counted twice to show), or
    until its plan's ``drain`` runs out: recovery has no fixed deadline, only a bound.
    """

    async def chaos() -> Any:
        while crowd.ledger.accepted == 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(after)
        return await fault()

    async def until_caught_up() -> None:
        await crowd.sending_done.wait()
        while not crowd.caught_up():
            await asyncio.sleep(0.25)
        await asyncio.sleep(EXTRAS_SECONDS)
        crowd.stop()

    watcher = asyncio.ensure_future(until_caught_up())
    try:
        report, outcome = await asyncio.gather(crowd.run(), chaos())
    finally:
        watcher.cancel()
    return report, outcome


def audit(settings: Settings, crowd: TracedCrowd, timeout: float = 30.0) -> dict[str, Any]:
    """Check the promise against Kafka and the viewers; the figures of the run.

    It runs after the crowd's drain, long after ingest flushed what it holds: ``timeout``
    only bounds the wait for acknowledged emoji that never reach the topic.
    """
    prefix = crowd.run_id + "."
    acked = crowd.acked

    def mine(records: list) -> list[dict]:
        return [
            r.value for r in records if isinstance(r.value, dict) and str(r.value.get("user_id", "")).startswith(prefix)
        ]

    seen: set[str] = set()
    read = 0

    def holds_all_acked(records: list) -> bool:
        # Called after every poll: only the records new since the last call are looked at, so a
        # soak's million records are read in one pass.
        nonlocal read
        seen.update(value["user_id"] for value in mine(records[read:]))
        read = len(records)
        return len(seen) >= len(acked) and acked.keys() <= seen

    written = mine(read_topic(settings, settings.emoji_topic, until=holds_all_acked, timeout=timeout, settle=3))
    # A request's emoji share its user_id: each must be on the topic as often as it was sent.
    copies = Counter((value["user_id"], value["emoji_type"]) for value in written)
    sent = Counter((user, kind) for user, (_, emoji) in acked.items() for kind in emoji)
    lost_in_ingest = sorted({user for (user, kind), n in sent.items() if copies[(user, kind)] < n})
    duplicated = sum(max(0, n - sent[key]) for key, n in copies.items() if key[0] in acked)
    written_unacknowledged = sum(n for (user, _), n in copies.items() if user not in acked)

    window_ms = settings.window_seconds * 1000
    truth: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for value in written:
        if value["event_id"] in crowd.plan.events:
            start = value["received_at"] - value["received_at"] % window_ms
            truth[(value["event_id"], start)][value["emoji_type"]] += 1

    ledger = crowd.ledger
    exact = 0
    lost_in_windows = extra_in_windows = viewer_windows_missing = 0
    mismatches = []
    for key, counts in sorted(truth.items()):
        watchers = [viewer for viewer, event in ledger.viewer_events.items() if event == key[0]]
        finals = {viewer: ledger.final_by_viewer[viewer].get(key) for viewer in watchers}
        best = max((final for final in finals.values() if final), key=lambda final: final["total"], default=None)
        got = Counter(best["counts"]) if best else Counter()
        if got == counts:
            exact += 1
        else:
            lost_in_windows += sum((counts - got).values())
            extra_in_windows += sum((got - counts).values())
            if len(mismatches) < 5:
                mismatches.append({"window": key, "on_topic": dict(counts), "final": dict(got)})
        viewer_windows_missing += sum(1 for final in finals.values() if not final or Counter(final["counts"]) != counts)

    return {
        "emoji_acknowledged": sum(sent.values()),
        "emoji_written": len(written),
        "emoji_lost": len(lost_in_ingest) + lost_in_windows,
        "emoji_extra": duplicated + extra_in_windows,
        "lost_before_kafka": len(lost_in_ingest),
        "duplicated_on_kafka": duplicated,
        "written_but_unanswered": written_unacknowledged,  # the client saw no 2xx (connection cut); counted anyway
        "windows_checked": len(truth),
        "windows_exact": exact,
        "viewer_windows_missing": viewer_windows_missing,
        "mismatches": mismatches,
        "lost_sample": lost_in_ingest[:5],
        "lost_before_kafka_ids": lost_in_ingest,
    }


def summary(name: str, report: dict[str, Any], books: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The figures of one fault run: printed, and appended to test-artifacts/faults-figures.jsonl."""
    figures = {
        "fault": name,
        "load_emoji_per_s": report["accepted_per_second"],
        "viewers": report["viewers"],
        "sending_s": report["sending_seconds"],
        "refused_attempts": report["emoji_rejected"],
        "gave_up": report["emoji_given_up"],
        "latency_ms": report["latency_ms"],
        **{k: v for k, v in books.items() if k not in ("mismatches", "lost_sample", "lost_before_kafka_ids")},
        **extra,
    }
    print(f"\nFAULT {name}: {json.dumps(figures, ensure_ascii=False)}")
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(figures, ensure_ascii=False) + "\n")
    return figures


def assert_every_acknowledged_emoji_counted_once(books: dict[str, Any], logs: str = "") -> None:
    assert books["emoji_acknowledged"] > 0, logs
    assert books["windows_checked"] >= 5, books
    assert books["lost_before_kafka"] == 0, (books["lost_sample"], logs)
    assert books["emoji_lost"] == 0, (books["mismatches"], logs)
    assert books["emoji_extra"] == 0, books["mismatches"]
    assert books["windows_exact"] == books["windows_checked"], books["mismatches"]


def refusals_around(crowd: TracedCrowd, fault_at: float) -> dict[str, Any]:
    """When the crowd's refused attempts fell, in seconds from ``fault_at`` (epoch s): the first, the last, the span."""
    times = [at for at, _, _ in crowd.ledger.rejected.times]
    if not times:
        return {"refused_from_s": None, "refused_until_s": None, "refusal_span_s": 0.0}
    return {
        "refused_from_s": round(min(times) - fault_at, 2),
        "refused_until_s": round(max(times) - fault_at, 2),
        "refusal_span_s": round(max(times) - min(times), 2),
    }


def ingest_refusals_by_reason(ingest_url: str) -> dict[str, float]:
    """Ingest's own count of refused requests, by reason (its /metrics)."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(ingest_url + "/metrics", timeout=10).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "emostream_ingest_rejected_requests_total"
    }


def assert_the_crowd_noticed_at_most_a_pause(figures: dict[str, Any], bound_s: float) -> None:
    """No emoji given up; attempts refused only from the fault on and for at most ``bound_s`` after it."""
    assert figures["gave_up"] == 0, figures
    if figures["refused_from_s"] is not None:
        # A refusal a little before the fault is the crowd's clock against the fault's: not more than that.
        assert figures["refused_from_s"] >= -0.5, ("refused before the fault", figures)
        assert figures["refused_until_s"] <= bound_s, (f"refused more than {bound_s:.0f} s after the fault", figures)


def wait_for_topic_metadata(settings: Settings, timeout: float = 60.0) -> None:
    """Wait until the broker's metadata lists every topic of ``settings``.

    A publisher whose consumer joins its group before the broker lists a just-created
    topic is assigned nothing and stays idle until its next metadata refresh (minutes):
    start services only once their topics are visible, as a deployment would.
    """
    wanted = {spec.name for spec in kafka.topics(settings)} | {spec.name for spec in fanout_topics(settings)}
    probe = kafka.consumer(settings)
    try:
        deadline = time.monotonic() + timeout
        while not wanted <= probe.topics():
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics missing from the metadata: {sorted(wanted - probe.topics())}")
            time.sleep(0.2)
    finally:
        probe.close()


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has exited (gone, or a zombie its parent has not reaped yet); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process and every process in its group (a service and the children it started)."""
    import os

    try:
        os.killpg(os.getpgid(pid), sig)
    except ProcessLookupError:
        pass


def listening_children(pid: int, port: int) -> dict[int, int]:
    """Established connections on ``port`` held by each direct child of ``pid`` (and its workers)."""
    held: dict[int, int] = {}
    for child in psutil.Process(pid).children():
        count = 0
        for process in [child, *child.children(recursive=True)]:
            try:
                count += sum(
                    1
                    for conn in process.net_connections(kind="tcp")
                    if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED
                )
            except psutil.NoSuchProcess:
                continue
        held[child.pid] = count
    return held


# The promise of a processor with a warm standby: counting again within this long of a SIGKILL.
PROCESSOR_RECOVERY_BOUND_SECONDS = 10.0


def processor_health(settings: Settings, standby: bool = False) -> dict[str, Any] | None:
    """The /healthz of the active processor (or of the standby), or None when nothing answers."""
    import requests

    port = settings.processor_standby_metrics_port if standby else settings.processor_metrics_port
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
    except (requests.RequestException, ValueError):
        return None


def wait_for_processor(settings: Settings, standby: bool, timeout: float, ready: Callable[[dict], bool]) -> dict:
    """Poll a processor's /healthz until ``ready(health)``; its last answer in the error otherwise."""
    deadline = time.monotonic() + timeout
    health = None
    while time.monotonic() < deadline:
        health = processor_health(settings, standby)
        if health is not None and ready(health):
            return health
        time.sleep(0.05)
    role = "standby" if standby else "active"
    raise AssertionError(f"the {role} processor was not ready within {timeout:.0f} s: {health}")


def standby_is_warm(health: dict) -> bool:
    return health.get("role") == "standby" and bool(health.get("warm"))


def kill_active_processor(stack: Any, takeover_timeout: float = 60.0) -> dict[str, Any]:
    """SIGKILL the active processor of ``stack`` (Python and its JVM) and wait for the standby to take over.

    The stack must run a warm standby (``Stack.start_standby_processor``). Proves the fault: the
    killed Python and JVM are gone, and the process that answers as active on the processor's
    port is the former standby. The killed one is started again as the new standby (as the
    supervisor of ``make run`` does), and the stack's keys follow the roles.
    """
    from tests.harness.stack import STANDBY_PROCESSOR

    settings = stack.settings
    active = wait_for_processor(settings, False, 30, lambda h: h.get("role") == "active" and h["status"] == "ok")
    standby = wait_for_processor(settings, True, 120, standby_is_warm)
    victim_key = stack.service_of(active["pid"])
    assert victim_key is not None, f"no service of the stack is the active processor (pid {active['pid']})"
    jvm_pids = [child.pid for child in psutil.Process(active["pid"]).children(recursive=True)]
    killed_at = time.time()
    kill_group(active["pid"], signal.SIGKILL)
    stack.processes[victim_key].process.wait(30)
    survivors = wait_gone([active["pid"], *jvm_pids], timeout=30)
    gone_after = time.time() - killed_at
    assert not survivors, f"still running after the SIGKILL: {survivors}"
    took_over = wait_for_processor(
        settings, False, takeover_timeout, lambda h: h.get("role") == "active" and h["pid"] == standby["pid"]
    )
    active_after = time.time() - killed_at
    standby_key = stack.service_of(standby["pid"])
    # The former standby is the stack's processor now; the killed one comes back as the standby.
    stack.processes["emoji_processor.py"], stack.processes[STANDBY_PROCESSOR] = (
        stack.processes[standby_key],
        stack.processes[victim_key],
    )
    stack.start_standby_processor()
    return {
        "killed_pid": active["pid"],
        "killed_jvm_pids": jvm_pids,
        "killed_at": killed_at,
        "killed_gone_after_s": round(gone_after, 2),
        "standby_pid": standby["pid"],
        "standby_active_after_s": round(active_after, 2),
        "took_over_at": took_over.get("took_over_at"),
    }


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs (a zombie does not); those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    running.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.01)


def first_count_after(settings: Settings, events: tuple[str, ...], since: float, timeout: float = 30.0) -> float | None:
    """Seconds from ``since`` (epoch s) to the first aggregate of ``events`` for a window that started after it.

    The aggregate's ``emitted_at`` is when the processor built it: counting again, as a viewer
    would first see it, measured on the processor's clock (the same machine's).
    """
    since_ms = since * 1000

    def after(records: list) -> list[dict]:
        return [
            r.value
            for r in records
            if isinstance(r.value, dict) and r.value.get("event_id") in events and r.value["window_start"] >= since_ms
        ]

    records = read_topic(settings, settings.aggregate_topic, until=lambda got: bool(after(got)), timeout=timeout)
    emitted = [value["emitted_at"] for value in after(records)]
    return round((min(emitted) - since_ms) / 1000, 2) if emitted else None


@contextmanager
def warm_standby(stack: Any, timeout: float) -> Iterator[None]:
    """A warm standby processor beside the stack's; the standby left at the end is stopped.

    After :func:`kill_active_processor` that is the killed processor, started again as the standby;
    the tests after this one run without one.
    """
    from tests.harness.stack import STANDBY_PROCESSOR

    stack.start_standby_processor()
    try:
        wait_for_processor(stack.settings, True, timeout, standby_is_warm)
        yield
    finally:
        standby = stack.processes.pop(STANDBY_PROCESSOR, None)
        if standby is not None:
            standby.stop()


def run_killing_the_active_processor(stack: Any, crowd: TracedCrowd, after: float) -> tuple[dict, dict]:
    """The crowd's run with the active processor SIGKILLed ``after`` seconds into it.

    Returns the crowd's report and the kill's outcome, with ``counting_again_after_s``: from the
    kill to the first aggregate of a window that started after it.
    """

    async def kill_active() -> dict:
        return await asyncio.to_thread(kill_active_processor, stack)

    report, outcome = asyncio.run(run_with_fault(crowd, kill_active, after=after))
    outcome["counting_again_after_s"] = first_count_after(stack.settings, crowd.plan.events, outcome["killed_at"])
    return report, outcome


def assert_processor_recovered(outcome: dict[str, Any], books: dict[str, Any], report: dict[str, Any]) -> None:
    """The standby took over from a killed processor within the promise, and nothing was lost or given up."""
    assert outcome["killed_pid"] != outcome["standby_pid"]
    recovered = outcome["counting_again_after_s"]
    assert recovered is not None, "no aggregate of a window that started after the kill"
    assert recovered <= PROCESSOR_RECOVERY_BOUND_SECONDS, outcome
    assert report["emoji_given_up"] == 0, report
    assert books["viewer_windows_missing"] == 0, books["mismatches"]

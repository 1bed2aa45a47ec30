"""Faults of EmoStream's own services, each under a steady simulated crowd.

One stack for the module (tests/faults/conftest.py): the processor in local mode,
registration, the main publisher, the subscriber manager with one cluster of three
nodes, and ingest as a pool of two instances on one port. Each test breaks one part
while the crowd taps and watches, then checks the promise: every emoji answered 2xx is
counted exactly once in its window's final count (tests/faults/support.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from emostream.clients.viewer import Viewer
from emostream.ingest.journal import COMMIT, SUFFIX
from tests.harness.fanout import membership
from tests.harness.fault_stack import FaultStack
from tests.harness.faults import (
    TracedCrowd,
    assert_every_acknowledged_emoji_counted_once,
    assert_processor_recovered,
    assert_the_crowd_noticed_at_most_a_pause,
    audit,
    kill_group,
    listening_children,
    plan_for,
    process_gone,
    refusals_around,
    run_killing_the_active_processor,
    run_with_fault,
    summary,
    warm_standby,
)
from tests.harness.support import wait_http

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# Generous bounds that only prove "without a human"; the measured times are reported.
RECOVERY_BOUND_SECONDS = 30.0
# The longest after a fault that the crowd may still be refused (an ingest instance's clients moving).
REFUSALS_BOUND_SECONDS = 10.0


def crowd_for(stack: FaultStack, **changes) -> TracedCrowd:
    return TracedCrowd(plan_for(stack.settings, (stack.pool.url,), stack.registration_url, **changes), stack.settings)


def test_registration_restarted_existing_viewers_are_not_disturbed_and_counts_stay_exact(fault_stack: FaultStack):
    stack = fault_stack
    crowd = crowd_for(stack, duration=18.0)

    async def restart_registration() -> dict:
        old = stack.processes["registration_app.py"].process
        restarted_at = time.time()
        await asyncio.to_thread(stack.restart, "registration_app.py", signal.SIGKILL)
        killed = old.poll() == -signal.SIGKILL
        await asyncio.to_thread(
            wait_http, stack.registration_url + "/healthz", 60, stack.processes["registration_app.py"].process
        )
        healthy_after = time.time() - restarted_at
        # A newcomer is served by the restarted registration, and gets live updates (not only the event's history).
        newcomer = Viewer(stack.registration_url, event_id=crowd.plan.events[0])
        await newcomer.start(timeout=30)
        await newcomer.wait_for(lambda viewer: viewer.received > viewer.replayed, timeout=30)
        await newcomer.close()
        return {
            "restarted_at": restarted_at,
            "healthy_after_s": round(healthy_after, 2),
            "old_pid_killed": killed,
            "new_pid_answered": stack.processes["registration_app.py"].process.pid != old.pid,
            "newcomer_served": newcomer.registrations == 1,
        }

    report, outcome = asyncio.run(run_with_fault(crowd, restart_registration, after=5.0))
    books = audit(stack.settings, crowd)
    viewers = list(crowd.viewers_by_id().values())
    received_after = [
        sum(1 for arrival in crowd.arrivals[viewer.client_id] if arrival > outcome["restarted_at"] + 1)
        for viewer in viewers
    ]
    figures = summary(
        "registration restarted (SIGKILL)",
        report,
        books,
        **outcome,
        **refusals_around(crowd, outcome["restarted_at"]),
        viewers_disturbed=sum(1 for viewer in viewers if viewer.registrations != 1 or viewer.reconnects != 0),
    )

    # The fault happened: the old process died of the SIGKILL, a new one served a newcomer.
    assert outcome["old_pid_killed"] and outcome["new_pid_answered"] and outcome["newcomer_served"], outcome
    assert outcome["healthy_after_s"] <= RECOVERY_BOUND_SECONDS, outcome
    assert_every_acknowledged_emoji_counted_once(books, stack.logs())
    # Registration is not on the emoji path: the crowd is never refused.
    assert figures["gave_up"] == 0 and figures["refused_attempts"] == {}, figures
    assert [(v.registrations, v.reconnects, len(v.subscribers_seen)) for v in viewers] == [(1, 0, 1)] * len(viewers)
    assert min(received_after) > 0, "a viewer stopped receiving after the restart"
    assert books["viewer_windows_missing"] == 0


def test_a_killed_subscriber_nodes_viewers_are_back_on_other_nodes_and_miss_no_window(fault_stack: FaultStack):
    stack = fault_stack
    crowd = crowd_for(stack, duration=20.0)

    async def kill_busiest_node() -> dict:
        by_node = Counter(
            viewer.subscriber for viewer in crowd.viewers if viewer.client_id in crowd.ledger.viewer_events
        )
        victim = by_node.most_common(1)[0][0]
        record = next(node for node in membership(stack.settings)["subscribers"] if node["subscriber_id"] == victim)
        displaced = [viewer for viewer in crowd.viewers if viewer.subscriber == victim]
        killed_at = time.time()
        os.kill(record["pid"], signal.SIGKILL)
        gone = await asyncio.to_thread(process_gone, record["pid"], RECOVERY_BOUND_SECONDS)
        back: dict[str, float] = {}
        updated: dict[str, float] = {}
        deadline = time.monotonic() + RECOVERY_BOUND_SECONDS
        while time.monotonic() < deadline and len(updated) < len(displaced):
            now = time.time()
            for viewer in displaced:
                if viewer.client_id not in back and viewer.connected and viewer.reconnects >= 1:
                    back[viewer.client_id] = now - killed_at
                since = back.get(viewer.client_id)
                fresh = since is not None and any(a > killed_at + since for a in crowd.arrivals[viewer.client_id])
                if fresh and viewer.client_id not in updated:
                    updated[viewer.client_id] = now - killed_at
            await asyncio.sleep(0.05)
        return {
            "victim": victim,
            "killed_at": killed_at,
            "victim_pid_gone": gone,
            "displaced": [viewer.client_id for viewer in displaced],
            "back_s": back,
            "updated_s": updated,
            "landed_on": Counter(viewer.subscriber for viewer in displaced),
        }

    report, outcome = asyncio.run(run_with_fault(crowd, kill_busiest_node, after=5.0))
    books = audit(stack.settings, crowd)
    viewers = crowd.viewers_by_id()
    displaced = outcome["displaced"]
    back, updated = outcome["back_s"], outcome["updated_s"]
    figures = summary(
        "subscriber node killed (SIGKILL)",
        report,
        books,
        **refusals_around(crowd, outcome["killed_at"]),
        victim=outcome["victim"],
        victim_pid_gone=outcome["victim_pid_gone"],
        displaced_viewers=len(displaced),
        reconnected_s_median=_median(back.values()),
        reconnected_s_max=max(back.values(), default=None),
        first_update_after_s_max=max(updated.values(), default=None),
        landed_on=dict(outcome["landed_on"]),
        replayed_to_displaced=sum(viewers[client_id].replayed for client_id in displaced),
    )

    assert displaced, "nobody was on the busiest node"
    assert outcome["victim_pid_gone"], "the node's process survived its SIGKILL"
    assert sorted(back) == sorted(displaced), (
        f"not back within {RECOVERY_BOUND_SECONDS:.0f} s: {set(displaced) - set(back)}"
    )
    assert sorted(updated) == sorted(displaced), "a displaced viewer was back but received nothing live"
    # Each came back with since and was sent again the windows it may not have held final.
    assert all(viewers[client_id].replayed > 0 for client_id in displaced)
    # Counts are exact for every window, and every viewer, displaced or not, holds every one of them.
    assert_every_acknowledged_emoji_counted_once(books, stack.logs())
    assert books["viewer_windows_missing"] == 0, books["mismatches"]
    # A node is not on the emoji path: the crowd is never refused.
    assert figures["gave_up"] == 0 and figures["refused_attempts"] == {}, figures


@pytest.mark.slow  # a second Spark driver, warmed up first: the longest of these
def test_the_standby_processor_counts_again_within_10_s_of_a_sigkill_in_local_mode(fault_stack: FaultStack):
    stack = fault_stack
    with warm_standby(stack, 240):
        crowd = crowd_for(stack, duration=24.0)
        report, outcome = run_killing_the_active_processor(stack, crowd, after=6.0)
        books = audit(stack.settings, crowd)
        summary("processor killed (SIGKILL, local mode), warm standby took over", report, books, **outcome)

        assert_every_acknowledged_emoji_counted_once(books, stack.logs())
        assert_processor_recovered(outcome, books, report)


def test_an_ingest_instance_stopped_mid_load_loses_nothing_it_acknowledged(fault_stack: FaultStack):
    stack = fault_stack
    crowd = crowd_for(stack, duration=18.0)
    port = stack.settings.ingest_port

    async def stop_one_instance() -> dict:
        # The kernel hashes each connection to one instance, so a small pool of client
        # connections may all land on one of them: stop the one that holds the most, so the
        # clients it served must move to the other.
        held = listening_children(stack.pool.process.pid, port)
        victim = max(held, key=held.get)
        stopped_at = time.time()
        kill_group(victim, signal.SIGTERM)  # what a rolling restart or a scale-down does
        replaced = await asyncio.to_thread(_wait_for_replacement, stack, victim)
        return {
            "instances": len(held),
            "victim_connections": held[victim],
            "replaced_after_s": replaced,
            "stopped_at": stopped_at,
            "victim_gone": process_gone(victim),
        }

    report, outcome = asyncio.run(run_with_fault(crowd, stop_one_instance, after=6.0))
    books = audit(stack.settings, crowd)
    stopped_at = outcome.pop("stopped_at")
    figures = summary(
        "ingest instance stopped (SIGTERM) in a pool of 2",
        report,
        books,
        **outcome,
        **refusals_around(crowd, stopped_at),
    )

    # The stopped instance was serving the crowd when it went, and a new one took its place.
    assert outcome["instances"] == 2
    assert outcome["victim_connections"] > 0, outcome
    assert outcome["victim_gone"], outcome
    assert_every_acknowledged_emoji_counted_once(books, stack.logs())
    assert books["viewer_windows_missing"] == 0, books["mismatches"]
    assert_the_crowd_noticed_at_most_a_pause(figures, REFUSALS_BOUND_SECONDS)


def test_an_ingest_instance_killed_mid_load_loses_nothing_it_acknowledged(fault_stack: FaultStack):
    # Ingest answers 202 once an emoji is in the worker's buffer and its journal, before Kafka has
    # it. A SIGKILL leaves the unacknowledged part of the journal behind; the surviving instance
    # takes it over within about a second and sends it, inside the processor's watermark.
    stack = fault_stack
    settings = stack.settings
    crowd = crowd_for(stack, duration=16.0)
    port = settings.ingest_port

    async def kill_busiest_instance() -> dict:
        held = listening_children(stack.pool.process.pid, port)
        victim = max(held, key=held.get)
        # Kill while its journal holds accepted emoji: between flushes a worker may hold none.
        holding = await _until_journal_holds_emoji(settings, [child.pid for child in psutil.Process(victim).children()])
        killed_at = time.time()
        kill_group(victim, signal.SIGKILL)  # a crash, the OOM killer, a machine lost
        replaced = await asyncio.to_thread(_wait_for_replacement, stack, victim)
        return {
            "victim_connections": held[victim],
            "victim_journal_held_emoji": holding,
            "replaced_after_s": replaced,
            "killed_at": killed_at,
            "victim_gone": process_gone(victim),
        }

    report, outcome = asyncio.run(run_with_fault(crowd, kill_busiest_instance, after=6.0))
    books = audit(settings, crowd)
    killed_at = outcome.pop("killed_at")
    figures = summary(
        "ingest instance killed (SIGKILL) in a pool of 2",
        report,
        books,
        **outcome,
        **refusals_around(crowd, killed_at),
    )

    assert outcome["victim_connections"] > 0, outcome
    assert outcome["victim_journal_held_emoji"], outcome
    assert outcome["victim_gone"], outcome
    assert_every_acknowledged_emoji_counted_once(books, stack.logs())
    assert books["viewer_windows_missing"] == 0, books["mismatches"]
    # Requests cut off with the instance are tried again on the other one: a moment, nothing given up.
    assert_the_crowd_noticed_at_most_a_pause(figures, REFUSALS_BOUND_SECONDS)
    # ...and that is because a surviving worker sent what the dead one had accepted.
    assert "that a stopped ingest worker had accepted" in stack.logs(tail=10_000)


async def _until_journal_holds_emoji(settings, worker_pids: list[int], timeout: float = 5.0) -> bool:
    """Wait until one of the workers' journal segments holds a committed request (or the timeout)."""
    folder = Path(settings.state_dir) / "ingest-journal"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in worker_pids:
            for path in folder.glob(f"{pid}-*{SUFFIX}"):
                try:
                    with open(path, "rb") as segment:
                        if COMMIT in segment.read(1 << 16):
                            return True
                except FileNotFoundError:
                    continue  # acknowledged and deleted as we looked
        await asyncio.sleep(0.005)
    return False


def _wait_for_replacement(stack: FaultStack, victim: int) -> float:
    started = time.monotonic()
    deadline = started + RECOVERY_BOUND_SECONDS
    while time.monotonic() < deadline:
        pids = stack.pool.instance_pids()
        if victim not in pids and len(pids) == stack.pool.instances:
            stack.pool.wait_ready(timeout=RECOVERY_BOUND_SECONDS)
            return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    raise AssertionError(f"the pool did not replace instance {victim}:\n{stack.pool.log()}")


def _median(values) -> float | None:
    values = list(values)
    return round(statistics.median(values), 2) if values else None

"""The whole pipeline on one machine, driven by the client simulator: counts are exact."""

from __future__ import annotations

import asyncio
import json

import pytest

from emostream.clients.crowd import Crowd, CrowdPlan, parse_mix
from tests.harness.faults import (
    TracedCrowd,
    assert_processor_recovered,
    run_killing_the_active_processor,
    warm_standby,
)
from tests.harness.stack import Stack, running_stack, unique_stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(base_settings, tmp_path_factory):
    state = tmp_path_factory.mktemp("e2e")
    settings = unique_stack_settings(base_settings, state, clusters=2, subscribers_per_cluster=2, trigger_ms=500)
    with running_stack(settings, state, timeout=180) as running:
        yield running


def crowd_plan(stack: Stack, **changes) -> CrowdPlan:
    settings = stack.settings
    plan = dict(
        ingest_urls=(stack.ingest_url,),
        registration_url=stack.registration_url,
        viewers=24,
        rate=300.0,
        duration=12.0,
        events=("final", "semi"),
        mix=parse_mix("🔥=5,👏=3,😂=1,\u2764\ufe0f=1", settings.emoji_types),
        batch=1,
        burst_every=6.0,
        burst_seconds=1.0,
        burst_factor=4.0,
        window_ms=settings.window_seconds * 1000,
        settle_ms=settings.settle_ms,
        drain=60.0,  # at most: the crowd stops waiting as soon as every window is exact
        seed=7,
    )
    plan.update(changes)
    return CrowdPlan(**plan)


def assert_exact(report, stack):
    print(
        f"\nE2E accepted={report['emoji_accepted']} given_up={report['emoji_given_up']} "
        f"refused={report['emoji_rejected']} lost={report['emoji_lost']} extra={report['emoji_extra']} "
        f"windows={report['windows_exact']}/{report['windows_checked']} missing={report['viewer_windows_missing']}"
    )
    assert report["emoji_accepted"] > 0, stack.logs()
    # Nothing in these runs refuses the crowd for long: every emoji it tapped was taken.
    assert report["emoji_given_up"] == 0, report["emoji_rejected"]
    assert report["windows_checked"] >= 5
    assert report["emoji_lost"] == 0, (report["mismatches"], stack.logs())
    assert report["emoji_extra"] == 0, report["mismatches"]
    assert report["windows_exact"] == report["windows_checked"], report["mismatches"]
    assert report["viewer_windows_missing"] == 0
    assert report["scaled_wrong"] == 0
    assert report["latency_ms"]["probes"] > 0


def test_every_finished_window_counts_exactly_what_the_crowd_sent(stack):
    report = asyncio.run(Crowd(crowd_plan(stack)).run())
    assert_exact(report, stack)
    # The stack's ingest is in token mode: every sender sent with its own registration's credential.
    assert stack.settings.ingest_auth == "token"
    assert not {"401", "403"} & report["emoji_rejected"].keys(), report["emoji_rejected"]


def test_counts_stay_exact_and_resume_within_10_s_when_the_active_processor_is_killed(stack):
    with warm_standby(stack, 240):
        crowd = TracedCrowd(crowd_plan(stack, duration=30.0, seed=11, drain=120.0), stack.settings)
        # The kill comes 8 s after the crowd's first acknowledged emoji, so viewers are watching.
        report, outcome = run_killing_the_active_processor(stack, crowd, after=8.0)
        print(f"\ne2e processor kill: {json.dumps(outcome)}; gave up {report['emoji_given_up']}")

        assert_exact(report, stack)
        assert_processor_recovered(outcome, report, report)

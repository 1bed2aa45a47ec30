"""The simulator's books: the ledger's window check, latency probes, the emoji mix."""

import pytest

from emostream.clients.books import Ledger
from emostream.clients.crowd import parse_mix
from emostream.clients.probes import ProbeLatencies, ProbeLedger, Tap
from emostream.clients.report import percentile
from emostream.wire import make_aggregate


def test_a_window_is_exact_when_every_viewer_got_the_accepted_counts():
    ledger = Ledger(window_ms=2000)
    ledger.viewer_events = {"v1": "final", "v2": "final"}
    ledger.accept("final", ["🔥", "🔥", "👏"], received_at=10_500)
    ledger.accept("final", ["🔥"], received_at=11_999)
    for viewer in ("v1", "v2"):
        ledger.update(viewer, make_aggregate("final", 10_000, 12_000, {"🔥": 2}))
        ledger.update(viewer, make_aggregate("final", 10_000, 12_000, {"🔥": 3, "👏": 1}))

    result = ledger.check(finished_before=20_000, events=["final"])

    assert result["windows_checked"] == 1
    assert result["windows_exact"] == 1
    assert (result["emoji_lost"], result["emoji_extra"], result["viewer_windows_missing"]) == (0, 0, 0)


def test_an_emoji_at_window_end_belongs_to_the_next_window():
    ledger = Ledger(window_ms=2000)
    ledger.accept("final", ["🔥"], received_at=12_000)
    assert ("final", 12_000) in ledger.accepted_by_window


def test_lost_emoji_and_a_viewer_that_missed_the_window_are_reported():
    ledger = Ledger(window_ms=2000)
    ledger.viewer_events = {"v1": "final", "v2": "final"}
    ledger.accept("final", ["🔥"] * 5, received_at=10_000)
    ledger.update("v1", make_aggregate("final", 10_000, 12_000, {"🔥": 4}))

    result = ledger.check(finished_before=20_000, events=["final"])

    assert result["windows_exact"] == 0
    assert result["emoji_lost"] == 1
    assert result["viewer_windows_missing"] == 1
    assert result["mismatches"] == [{"event_id": "final", "window_start": 10_000, "accepted": 5, "final": 4}]


def test_windows_still_open_are_not_judged():
    ledger = Ledger(window_ms=2000)
    ledger.accept("final", ["🔥"], received_at=19_000)
    assert ledger.check(finished_before=19_500, events=["final"])["windows_checked"] == 0


def test_a_stale_aggregate_does_not_replace_a_fuller_one():
    ledger = Ledger(window_ms=2000)
    ledger.update("v1", make_aggregate("final", 0, 2000, {"🔥": 3}))
    ledger.update("v1", make_aggregate("final", 0, 2000, {"🔥": 1}))  # a replay
    assert ledger.final_by_viewer["v1"][("final", 0)]["total"] == 3


def test_probe_latency_is_measured_from_the_tap_to_the_first_aggregate_counting_it():
    probes = ProbeLatencies(window_ms=2000)
    probes.record(received_at=10_100, sent_at=10.0)
    probes.record(received_at=10_600, sent_at=10.5)
    probes.observe({"window_start": 10_000, "total": 1}, arrived_at=10.9)
    probes.observe({"window_start": 10_000, "total": 1}, arrived_at=11.0)  # nothing new counted
    probes.observe({"window_start": 10_000, "total": 2}, arrived_at=11.3)
    assert [round(x) for x in probes.latencies_ms] == [900, 800]


def test_a_replayed_record_takes_the_taps_it_counts_without_timing_them():
    probes = ProbeLatencies(window_ms=2000)
    probes.record(received_at=10_100, sent_at=10.0)
    probes.record(received_at=10_600, sent_at=10.5)
    # Back from a lost node: the window is sent again, counting the first tap, as the node held it.
    probes.observe({"window_start": 10_000, "total": 1}, arrived_at=14.0, replayed=True)
    probes.observe({"window_start": 10_000, "total": 2}, arrived_at=14.2)  # live: times the second only
    assert [round(x) for x in probes.latencies_ms] == [3700]


def test_probe_latency_is_split_into_the_stages_the_clocks_mark():
    probes = ProbeLatencies(window_ms=2000)
    probes.record(received_at=10_030, sent_at=10.0)
    probes.observe({"window_start": 10_000, "total": 1, "emitted_at": 10_700}, arrived_at=10.9)
    assert {stage: [round(ms) for ms in values] for stage, values in probes.stages_ms.items()} == {
        "tap to ingest": [30],
        "ingest to aggregate": [670],
        "aggregate to viewer": [200],
    }


def test_the_probe_ledger_hands_each_tap_to_the_first_record_that_counts_it_in_sending_order():
    ledger = ProbeLedger(event_id="probe", emoji="🔥")
    ledger.record(2000, Tap(sent_at=11.0))
    ledger.record(2000, Tap(sent_at=10.0))  # recorded late, sent first
    record = {"event_id": "probe", "window_start": 2000, "counts": {"🔥": 1, "👏": 5}, "total": 6}
    assert ledger.counted(record) == [Tap(10.0)]
    assert ledger.counted(record) == []  # the same count again
    assert ledger.counted(record | {"event_id": "live", "counts": {"🔥": 2}}) == []  # another event
    assert ledger.counted(record | {"counts": {"🔥": 3}}) == [Tap(11.0)]  # more than was tapped
    assert ledger.counted("not an aggregate") == []


def test_the_probe_ledger_forgets_windows_long_past():
    ledger = ProbeLedger(keep_ms=10_000)
    ledger.record(0, Tap(sent_at=0.5))
    ledger.record(20_000, Tap(sent_at=20.5))
    assert ledger.counted({"window_start": 0, "total": 1}) == []
    assert ledger.counted({"window_start": 20_000, "total": 1}) == [Tap(20.5)]


def test_percentile_uses_the_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99


def test_mix_weights_must_name_configured_emoji():
    assert parse_mix("🔥=5,👏", ("🔥", "👏", "😂")) == {"🔥": 5.0, "👏": 1.0}
    assert parse_mix("", ("🔥", "👏")) == {"🔥": 1.0, "👏": 1.0}
    with pytest.raises(ValueError, match="not one of the configured emoji"):
        parse_mix("💩=1", ("🔥",))

"""The subscriber node's history of each event, its `since` parsing and its origin policy: pure logic."""

from __future__ import annotations

import pytest

from emostream.fanout.catchup import Bridge, routed_aggregate
from emostream.fanout.history import InvalidSince, ViewerHistory, parse_since, record_size
from emostream.fanout.origins import normalize_origin, viewer_origin_policy
from emostream.wire import make_aggregate

WINDOW = 2000
NOW = 1_800_000_000_000  # a window boundary


class Clock:
    def __init__(self, now: int = NOW):
        self.now = now

    def __call__(self) -> int:
        return self.now


def record(event_id: str, window_start: int, total: int, emitted_at: int = NOW) -> dict:
    return make_aggregate(event_id, window_start, window_start + WINDOW, {"🔥": total}, emitted_at=emitted_at)


def history(clock: Clock | None = None, watched=lambda event_id: False, **caps) -> ViewerHistory:
    options = dict(max_windows=32, max_bytes=1_000_000, max_events=100)
    options.update(caps)
    return ViewerHistory(WINDOW, 60_000, watched=watched, clock=clock or Clock(), **options)


def test_a_newer_record_of_a_window_replaces_the_held_one_and_an_older_or_equal_one_is_not_passed_on():
    held = history()
    first, second = record("final", NOW, 10, NOW), record("final", NOW, 25, NOW + 500)

    assert held.offer(first) is True
    assert held.offer(second) is True
    assert held.offer(first) is False  # older: the viewers have the newer one
    assert held.offer(dict(second)) is False  # the same version again
    assert held.since("final", NOW) == [second]


def test_equal_totals_are_ordered_by_emitted_at():
    held = history()
    held.offer(record("final", NOW, 10, NOW))

    assert held.offer(record("final", NOW, 10, NOW + 1)) is True
    assert held.offer(record("final", NOW, 10, NOW - 1)) is False


def test_records_come_back_oldest_window_first_from_the_start_asked_for():
    held = history()
    for n in (3, 1, 2, 0):
        held.offer(record("final", NOW - n * WINDOW, n + 1))

    assert [r["window_start"] for r in held.since("final", NOW - 2 * WINDOW)] == [NOW - 2 * WINDOW, NOW - WINDOW, NOW]
    assert held.since("other", 0) == []


def test_a_window_older_than_the_horizon_is_not_held_but_still_passed_on():
    clock = Clock()
    held = history(clock)

    assert held.offer(record("final", NOW - 120_000, 5)) is True
    assert held.since("final", 0) == []
    held.offer(record("final", NOW - 58_000, 5))
    clock.now += 10_000
    held.prune()
    assert held.since("final", 0) == []
    assert held.events == 0


def test_the_window_cap_drops_the_oldest_windows_and_completeness_moves_past_them():
    held = history(max_windows=3)
    token = held.begin_readback("final")
    for n in range(5):
        held.offer(record("final", NOW - (4 - n) * WINDOW, 1 + n))
    held.mark_complete("final", NOW - 30_000, token)

    assert [r["window_start"] for r in held.since("final", 0)] == [NOW - 2 * WINDOW, NOW - WINDOW, NOW]
    assert held.covers("final", NOW - 2 * WINDOW)
    assert not held.covers("final", NOW - 3 * WINDOW)


def test_the_byte_cap_bounds_each_event_and_the_total_is_accounted():
    size = record_size(record("final", NOW, 1))
    held = history(max_bytes=size * 2 + 1)
    for n in range(5):
        held.offer(record("final", NOW - (4 - n) * WINDOW, 1))
        held.offer(record("semi", NOW - (4 - n) * WINDOW, 1))

    assert len(held.since("final", 0)) == 2
    assert len(held.since("semi", 0)) == 2
    assert held.bytes == sum(record_size(r) for event in ("final", "semi") for r in held.since(event, 0))


def test_the_event_cap_drops_the_least_recently_updated_unwatched_event_never_a_watched_one():
    watched = {"watched-a", "watched-b"}
    held = history(watched=lambda event_id: event_id in watched, max_events=2)
    held.offer(record("watched-a", NOW, 1))
    held.offer(record("watched-b", NOW, 1))

    assert held.offer(record("elsewhere", NOW, 1)) is True  # passed on, but no room to hold it
    assert held.since("elsewhere", 0) == []
    watched.discard("watched-a")
    held.offer(record("elsewhere", NOW, 1))
    assert held.since("watched-a", 0) == []
    assert held.since("watched-b", 0) and held.since("elsewhere", 0)
    assert held.events == 2


def test_completeness_needs_a_read_back_and_is_lost_when_the_viewers_leave_and_come_back():
    held = history()
    held.offer(record("final", NOW, 1), live=True)
    assert not held.covers("final", NOW)
    assert held.routed("final")

    token = held.begin_readback("final")
    assert held.mark_complete("final", NOW - 60_000, token)
    assert held.covers("final", NOW - 60_000)
    held.watch_started("final")
    assert not held.covers("final", NOW)
    assert not held.routed("final")
    # A read-back that began before the viewers came back says nothing about routing since.
    assert not held.mark_complete("final", NOW - 60_000, token)


def test_the_start_of_a_join_is_clamped_to_the_horizon_and_the_current_window():
    held = history(Clock(NOW + 700))

    assert held.start_for(None) == NOW - 60_000
    assert held.start_for(NOW - 6_000) == NOW - 6_000
    assert held.start_for(NOW - 5_999) == NOW - 6_000  # a moment, not a window start: its window
    assert held.start_for(0) == NOW - 60_000
    assert held.start_for(-5) == NOW - 60_000
    assert held.start_for(NOW + 3_600_000) == NOW


@pytest.mark.parametrize("auth", [None, {}, {"token": "t"}, {"token": "t", "since": None}, "not a dict"])
def test_no_since_is_a_plain_join(auth):
    assert parse_since(auth) is None


@pytest.mark.parametrize("since", [0, -5, NOW, NOW + 3_600_000, 2**53 - 1])
def test_any_integer_since_is_accepted(since):
    assert parse_since({"since": since}) == since


@pytest.mark.parametrize("since", [True, False, 1.5, float(NOW), "1800000000000", [NOW], {"at": NOW}, 2**53, -(2**63)])
def test_a_since_that_is_not_epoch_milliseconds_is_refused_with_a_message(since):
    with pytest.raises(InvalidSince, match="since"):
        parse_since({"token": "t", "since": since})


def test_a_live_emit_is_read_as_an_aggregate_only_when_it_goes_to_its_own_events_room():
    aggregate = record("final", NOW, 3)
    emit = {"method": "emit", "event": "emoji_update", "data": [aggregate], "namespace": "/", "room": "final"}

    assert routed_aggregate(emit) == aggregate
    assert routed_aggregate(emit | {"room": "semi"}) is None
    assert routed_aggregate(emit | {"event": "other"}) is None
    assert routed_aggregate(emit | {"namespace": "/admin"}) is None
    assert routed_aggregate(emit | {"data": [aggregate | {"total": "3"}]}) is None


def test_a_bridge_closes_once_one_record_was_both_read_back_and_received_live_in_either_order():
    first, second = record("final", NOW, 3), record("final", NOW, 4, NOW + 500)
    bridge = Bridge({"final", "semi"})

    bridge.read(first)
    bridge.live(second)
    assert bridge.open == {"final", "semi"}
    bridge.live(first)
    assert bridge.open == {"semi"}
    bridge.live(record("semi", NOW, 1))
    bridge.read(record("semi", NOW, 1))
    assert bridge.open == set()


@pytest.mark.parametrize(
    "origin, host, accepted",
    [
        (None, "127.0.0.1:5015", True),  # aiohttp, curl: not a browser
        ("http://127.0.0.1:5015", "127.0.0.1:5015", True),  # websocket-client: the node's own origin
        ("HTTP://LOCALHOST:5015/", "localhost:5015", True),
        ("http://node.example", "node.example:80", True),
        ("http://127.0.0.1:5001", "127.0.0.1:5015", True),  # the viewer page, listed
        ("http://127.0.0.1:5016", "127.0.0.1:5015", False),  # another port is another origin
        ("https://127.0.0.1:5015", "127.0.0.1:5015", False),
        ("http://evil.example", "127.0.0.1:5015", False),
        ("null", "127.0.0.1:5015", False),
    ],
)
def test_a_node_accepts_its_own_origin_listed_ones_and_none_and_refuses_others(origin, host, accepted):
    policy = viewer_origin_policy(["http://127.0.0.1:5001"])

    assert policy(origin, {"HTTP_HOST": host, "wsgi.url_scheme": "http"}) is accepted


def test_behind_a_proxy_the_forwarded_origin_is_the_nodes_own():
    policy = viewer_origin_policy([])
    environ = {
        "HTTP_HOST": "10.0.0.7:5002",
        "wsgi.url_scheme": "http",
        "HTTP_X_FORWARDED_HOST": "viewers.example",
        "HTTP_X_FORWARDED_PROTO": "https",
    }

    assert policy("https://viewers.example", environ)
    assert not policy("https://elsewhere.example", environ)
    assert normalize_origin("https://viewers.example:443") == "https://viewers.example"


def test_a_horizon_of_zero_holds_nothing_and_passes_everything_on():
    held = ViewerHistory(WINDOW, 0, max_windows=2, max_bytes=1000, max_events=10, clock=Clock())

    assert held.offer(record("final", NOW, 1)) is True
    assert held.offer(record("final", NOW, 1)) is True
    assert held.since("final", 0) == []
    assert held.covers("final", NOW)  # nothing to read back either
    assert held.events == 0

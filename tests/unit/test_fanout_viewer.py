"""The viewer client's pure parts: backoff with jitter, delivery delays, since and overwrites, error classes."""

from __future__ import annotations

import itertools
import random

from emostream.clients.probes import sent_before
from emostream.clients.registration import RegistrationError
from emostream.clients.viewer import Delivery, Viewer, backoff_delays
from emostream.wire import make_aggregate


def test_backoff_grows_exponentially_up_to_the_maximum_and_is_jittered_below_each_ceiling():
    rng = random.Random(7)
    delays = list(itertools.islice(backoff_delays(0.5, 4.0, rng), 200))

    ceilings = [min(4.0, 0.5 * 2**n) for n in range(200)]
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(delays, ceilings, strict=True))
    assert max(delays[10:]) > 2.0  # the ceiling really grew


def test_viewers_of_the_same_dead_node_do_not_retry_in_step():
    first_retries = [next(backoff_delays(0.5, 10.0, random.Random(seed))) for seed in range(200)]

    assert len({round(delay, 3) for delay in first_retries}) > 150
    # spread over the whole first window, not bunched at one end
    assert min(first_retries) < 0.1 and max(first_retries) > 0.4


def test_delivery_delay_is_measured_from_a_stamp_in_the_aggregate():
    delivery = Delivery({"routed_at": 1_000, "emitted_at": 900}, received_at=1.25, subscriber="c0-s0")

    assert delivery.delay_ms() == 250
    assert delivery.delay_ms("emitted_at") == 350
    assert delivery.delay_ms("missing") is None


def test_a_replayed_delivery_has_no_delay():
    delivery = Delivery({"routed_at": 1_000}, received_at=9.0, subscriber="c0-s0", replayed=True)

    assert delivery.delay_ms() is None


def test_a_record_routed_before_the_connection_opened_was_sent_from_history():
    assert sent_before({"routed_at": 999, "emitted_at": 2_000}, opened_at_ms=1_000)
    assert not sent_before({"routed_at": 1_000, "emitted_at": 500}, opened_at_ms=1_000)
    assert sent_before({"emitted_at": 500}, opened_at_ms=1_000)  # read back from the topic: no routed_at
    assert not sent_before({"emitted_at": 500}, opened_at_ms=None)


def window(start: int, total: int, emitted_at: int) -> dict:
    return make_aggregate("final", start, start + 2000, {"🔥": total}, emitted_at=emitted_at)


def test_a_repeated_window_is_an_overwrite_kept_by_the_higher_total_then_the_later_emission():
    viewer = Viewer("http://127.0.0.1:9", "final", settle_ms=3000)

    assert viewer._hold(window(10_000, 3, emitted_at=10_500))
    assert not viewer._hold(window(10_000, 3, emitted_at=10_500))  # the same record again
    assert not viewer._hold(window(10_000, 2, emitted_at=11_000))  # an older count, late
    assert viewer._hold(window(10_000, 3, emitted_at=11_000))  # the same count, emitted later
    assert viewer._hold(window(10_000, 5, emitted_at=10_900))
    assert viewer.windows[10_000]["total"] == 5
    assert not viewer._hold({"window_start": 12_000})  # not a window record


def test_since_reaches_back_over_the_settle_time_and_one_more_window_and_is_none_with_nothing_held():
    viewer = Viewer("http://127.0.0.1:9", "final", settle_ms=3000)
    assert viewer.since() is None

    for start in (10_000, 12_000, 20_000, 14_000):
        viewer._hold(window(start, 1, emitted_at=start))
    # Windows ending up to 3 s before 20 000 may still change: 16 000 and 18 000; 14 000 for a late batch.
    assert viewer.since() == 14_000

    viewer.settle_ms = 4000
    assert viewer.since() == 14_000
    viewer.settle_ms = 4001
    assert viewer.since() == 12_000


def test_the_windows_held_are_bounded_and_a_window_older_than_all_of_them_is_final_long_ago():
    viewer = Viewer("http://127.0.0.1:9", "final", settle_ms=3000, windows_kept=3)
    for start in range(0, 10_000, 2000):
        assert viewer._hold(window(start, 1, emitted_at=start))

    assert sorted(viewer.windows) == [4000, 6000, 8000]
    assert not viewer._hold(window(0, 9, emitted_at=20_000))
    assert viewer._hold(window(4000, 2, emitted_at=20_000))


def test_only_unavailable_registration_is_retried():
    assert RegistrationError(503, "no node").retryable
    assert RegistrationError(0, "unreachable").retryable
    assert not RegistrationError(400, "bad event_id").retryable
    assert not RegistrationError(403, "not yours").retryable

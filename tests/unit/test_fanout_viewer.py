"""The viewer client's pure parts: backoff with jitter, delivery delays, error classes."""

from __future__ import annotations

import itertools
import random

from emostream.clients.registration import RegistrationError
from emostream.clients.viewer import Delivery, backoff_delays


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


def test_only_unavailable_registration_is_retried():
    assert RegistrationError(503, "no node").retryable
    assert RegistrationError(0, "unreachable").retryable
    assert not RegistrationError(400, "bad event_id").retryable
    assert not RegistrationError(403, "not yours").retryable

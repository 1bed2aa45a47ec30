"""Per-user token buckets of the ingest service (pure logic, a fake clock)."""

import pytest

from emostream.ingest.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_a_user_may_send_a_burst_and_is_then_refused_until_tokens_refill(clock):
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.acquire({"u1": 1}) for _ in range(5)] == [0.0] * 5

    wait = limiter.acquire({"u1": 1})
    assert wait == pytest.approx(0.1)

    clock.now += 0.1
    assert limiter.acquire({"u1": 1}) == 0.0


def test_users_have_separate_buckets(clock):
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    assert limiter.acquire({"u1": 2}) == 0.0
    assert limiter.acquire({"u1": 1}) > 0
    assert limiter.acquire({"u2": 2}) == 0.0


def test_a_batch_takes_tokens_from_every_user_or_from_none(clock):
    limiter = RateLimiter(rate=1, burst=3, clock=clock)
    assert limiter.acquire({"u1": 3}) == 0.0

    assert limiter.acquire({"u1": 1, "u2": 3}) > 0  # u1 is empty, so u2 keeps its tokens too
    assert limiter.acquire({"u2": 3}) == 0.0


def test_refund_gives_back_the_tokens_of_a_request_that_was_not_accepted(clock):
    limiter = RateLimiter(rate=1, burst=4, clock=clock)
    assert limiter.acquire({"u1": 4}) == 0.0
    limiter.refund({"u1": 4})
    assert limiter.acquire({"u1": 4}) == 0.0


def test_a_demand_above_the_burst_is_never_granted(clock):
    limiter = RateLimiter(rate=2, burst=4, clock=clock)
    assert limiter.acquire({"u1": 5}) == pytest.approx(2.0)  # a full burst's refill time
    clock.now += 60
    assert limiter.acquire({"u1": 5}) > 0
    assert limiter.acquire({"u1": 4}) == 0.0


def test_a_rate_of_zero_turns_the_limit_off(clock):
    limiter = RateLimiter(rate=0, burst=1, clock=clock)
    assert not limiter.enabled
    assert all(limiter.acquire({"u1": 100}) == 0.0 for _ in range(10))


def test_buckets_that_refilled_are_forgotten_once_many_users_are_tracked(clock):
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    limiter.SWEEP_ABOVE = 10
    for n in range(20):
        limiter.acquire({f"user-{n}": 1})
    assert limiter.tracked_users() == 20

    clock.now += 5  # every bucket is full again
    limiter.acquire({"late": 1})

    assert limiter.tracked_users() == 1


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_and_at_least_one(seconds, header):
    assert retry_after_header(seconds) == header

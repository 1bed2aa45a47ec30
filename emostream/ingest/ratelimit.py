"""Per-user token buckets: ``rate`` emoji per second sustained, ``burst`` at once.

Buckets live in one process. Under gunicorn each worker has its own, and a client's
requests may reach any worker, so the effective limit is up to ``workers × rate``
sustained and ``workers × burst`` at once; the README states this.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping


class RateLimiter:
    """Token buckets keyed by user_id; a request takes tokens for all its users or none."""

    # Above this many tracked users, buckets that have refilled completely are dropped.
    SWEEP_ABOVE = 50_000

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # user_id -> [tokens, last refill time]
        self._last_sweep = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, demand: Mapping[str, int]) -> float:
        """Take ``demand[user]`` tokens from every user's bucket, or none.

        Returns 0.0 when granted, else the seconds after which the same demand could pass.
        """
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            wait = 0.0
            levels = []
            for user_id, wanted in demand.items():
                bucket = self._buckets.get(user_id)
                tokens = self.burst if bucket is None else min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                if tokens < wanted:
                    # A demand above the burst can never pass: report a full burst's refill time.
                    missing = self.burst if wanted > self.burst else wanted - tokens
                    wait = max(wait, missing / self.rate)
                levels.append((user_id, tokens - wanted))
            if wait > 0:
                return wait
            for user_id, tokens in levels:
                self._buckets[user_id] = [tokens, now]
            if len(self._buckets) > self.SWEEP_ABOVE and now - self._last_sweep > 1.0:
                self._sweep(now)
            return 0.0

    def refund(self, demand: Mapping[str, int]) -> None:
        """Give back tokens of a request that was granted but then not accepted."""
        if not self.enabled:
            return
        with self._lock:
            for user_id, count in demand.items():
                bucket = self._buckets.get(user_id)
                if bucket is not None:
                    bucket[0] = min(self.burst, bucket[0] + count)

    def tracked_users(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        # A full bucket is the same as no bucket: forget it so memory follows active users only.
        full = [
            user_id
            for user_id, (tokens, stamp) in self._buckets.items()
            if tokens + (now - stamp) * self.rate >= self.burst
        ]
        for user_id in full:
            del self._buckets[user_id]
        self._last_sweep = now


def retry_after_header(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))

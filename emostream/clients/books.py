"""The crowd's books: every emoji ingest accepted, by window, against what the viewers got.

Ingest answers each accepted request with the ``received_at`` it stamped, which is what
windows are cut on, so the books know the window of every accepted emoji exactly.
Aggregate records are cumulative per window, so a viewer's final count of a window is
the highest total it received for it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

# Mismatched windows listed in a report at most; the counts cover the rest.
MISMATCHES_SHOWN = 10


def window_of(received_at: int, window_ms: int) -> int:
    """The start of the window an emoji stamped ``received_at`` is counted in."""
    return received_at - received_at % window_ms


class Ledger:
    """What was sent and accepted, per (event, window_start), and what viewers got back.

    A crowd that runs for hours must not grow with its run: :meth:`settle` judges windows long
    finished and keeps only their totals.
    """

    def __init__(self, window_ms: int):
        self.window_ms = window_ms
        self.sent = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.retried = 0
        self.accepted_by_window: Counter[tuple[str, int]] = Counter()
        self.accepted_by_emoji: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
        # viewer id → (event, window) → highest total seen (records are cumulative)
        self.final_by_viewer: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
        self.viewer_events: dict[str, str] = {}
        self.aggregates_received = 0
        self.last_received_at = 0
        self.settled = _Verdicts()

    def accept(self, event_id: str, emoji: Sequence[str], received_at: int) -> None:
        key = (event_id, window_of(received_at, self.window_ms))
        self.accepted += len(emoji)
        self.accepted_by_window[key] += len(emoji)
        self.accepted_by_emoji[key].update(emoji)
        self.last_received_at = max(self.last_received_at, received_at)

    def update(self, viewer_id: str, aggregate: dict[str, Any]) -> None:
        self.aggregates_received += 1
        key = (aggregate["event_id"], aggregate["window_start"])
        seen = self.final_by_viewer[viewer_id]
        if key not in seen or aggregate["total"] >= seen[key]["total"]:
            seen[key] = aggregate

    def check(self, finished_before: int, events: Sequence[str]) -> dict[str, Any]:
        """Compare every finished window of the crowd's events with what viewers received."""
        verdicts = self.settled.copy()
        for key in self._finished(finished_before, events):
            verdicts.add(key, *self._judge(key))
        return verdicts.report()

    def settle(self, finished_before: int, events: Sequence[str]) -> int:
        """Judge the windows that ended before ``finished_before`` for good and forget their details.

        Call it with a time far enough back that no viewer can still get a newer record of those
        windows. Returns how many windows were settled.
        """
        keys = self._finished(finished_before, events)
        for key in keys:
            self.settled.add(key, *self._judge(key))
            del self.accepted_by_window[key]
            self.accepted_by_emoji.pop(key, None)
        horizon = finished_before - self.window_ms
        for seen in self.final_by_viewer.values():
            for key in [k for k in seen if k[1] <= horizon]:
                del seen[key]
        return len(keys)

    def _finished(self, finished_before: int, events: Sequence[str]) -> list[tuple[str, int]]:
        return sorted(k for k in self.accepted_by_window if k[0] in events and k[1] + self.window_ms <= finished_before)

    def _judge(self, key: tuple[str, int]) -> tuple[int, int, bool, int, int]:
        """(accepted, final, exact, viewers missing, viewers with a wrong scaled count) of one window."""
        event_id, _ = key
        sent = self.accepted_by_window[key]
        watchers = [v for v, e in self.viewer_events.items() if e == event_id]
        finals = [self.final_by_viewer[v].get(key) for v in watchers]
        got = max((f["total"] for f in finals if f), default=0)
        missing = sum(1 for f in finals if f is None or f["total"] != got)
        scaled_wrong = sum(
            1
            for final in finals
            if final and any(final["scaled"].get(e) != math.ceil(n / 1000) for e, n in final["counts"].items())
        )
        exact = got == sent and all(f and f["counts"] == dict(self.accepted_by_emoji[key]) for f in finals)
        return sent, got, exact, missing, scaled_wrong


class _Verdicts:
    """Running totals of judged windows."""

    def __init__(self) -> None:
        self.checked = self.exact = self.lost = self.extra = self.missing = self.scaled_wrong = 0
        self.mismatches: list[dict[str, Any]] = []

    def copy(self) -> _Verdicts:
        other = _Verdicts()
        other.__dict__.update(self.__dict__, mismatches=list(self.mismatches))
        return other

    def add(self, key: tuple[str, int], sent: int, got: int, exact: bool, missing: int, scaled_wrong: int) -> None:
        self.checked += 1
        self.missing += missing
        self.scaled_wrong += scaled_wrong
        if exact:
            self.exact += 1
            return
        self.lost += max(0, sent - got)
        self.extra += max(0, got - sent)
        if len(self.mismatches) < MISMATCHES_SHOWN:
            self.mismatches.append({"event_id": key[0], "window_start": key[1], "accepted": sent, "final": got})

    def report(self) -> dict[str, Any]:
        return {
            "windows_checked": self.checked,
            "windows_exact": self.exact,
            "emoji_lost": self.lost,
            "emoji_extra": self.extra,
            "viewer_windows_missing": self.missing,
            "scaled_wrong": self.scaled_wrong,
            "mismatches": self.mismatches,
        }

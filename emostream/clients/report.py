"""The crowd's report: the books and the probe latencies, as a dict, a table or JSON."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from emostream.clients.books import Ledger
from emostream.clients.probes import ProbeLatencies


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def build_report(
    viewers: int,
    events: Sequence[str],
    ledger: Ledger,
    probes: ProbeLatencies,
    sending_seconds: float,
    finished_before: int,
    asked: int | None = None,
) -> dict[str, Any]:
    """The run's figures; every window that ended before ``finished_before`` is judged final.

    ``asked`` is what the planned rate asked for; what the crowd could not send at that rate
    (too few answers in flight) is ``emoji_unsent``.
    """
    latencies = probes.latencies_ms
    asked = ledger.sent if asked is None else asked
    return {
        "viewers": viewers,
        "events": list(events),
        "sending_seconds": round(sending_seconds, 2),
        "emoji_asked": asked,
        "emoji_unsent": max(0, asked - ledger.sent),
        "asked_per_second": round(asked / sending_seconds, 1),
        "sent_per_second": round(ledger.sent / sending_seconds, 1),
        "emoji_sent": ledger.sent,
        "emoji_accepted": ledger.accepted,
        "emoji_rejected": dict(ledger.rejected),  # refused attempts, by status
        "emoji_given_up": ledger.sent - ledger.accepted,
        "emoji_retried": ledger.retried,
        "accepted_per_second": round(ledger.accepted / sending_seconds, 1),
        "aggregates_received": ledger.aggregates_received,
        "latency_ms": {
            "probes": len(latencies),
            "p50": _round(percentile(latencies, 50)),
            "p95": _round(percentile(latencies, 95)),
            "p99": _round(percentile(latencies, 99)),
            # p50 of each stage (they need not add up to the p50 of the whole)
            "stages_p50": {stage: _round(percentile(ms, 50)) for stage, ms in probes.stages_ms.items()},
        },
        **ledger.check(finished_before, events),
    }


def progress_line(ledger: Ledger, probes: ProbeLatencies, sending_seconds: float) -> str:
    """One line of running totals, rewritten in place while the crowd runs."""
    p50 = percentile(probes.latencies_ms, 50)
    return (
        f"sent {ledger.sent:>8}  accepted {ledger.accepted:>8}  rejected {sum(ledger.rejected.values()):>6}"
        f"  {ledger.accepted / sending_seconds:8.0f} emoji/s  aggregates {ledger.aggregates_received:>7}"
        f"  latency p50 {'-' if p50 is None else f'{p50:.0f} ms'}"
    )


def write_progress(line: str) -> None:
    """On a terminal the line is rewritten in place; in a log (``make run``) it is a line of its own."""
    sys.stderr.write("\r" + line if sys.stderr.isatty() else line + "\n")
    sys.stderr.flush()


def format_report(report: dict[str, Any]) -> str:
    """The report as a two-column table for a terminal."""
    latency = report["latency_ms"]
    rows = [
        ("viewers", report["viewers"]),
        ("events", ", ".join(report["events"])),
        ("sending time", f"{report['sending_seconds']} s"),
        ("emoji asked", f"{report['emoji_asked']}  ({report['asked_per_second']}/s)"),
        ("emoji sent", f"{report['emoji_sent']}  ({report['sent_per_second']}/s)"),
        ("emoji unsent", f"{report['emoji_unsent']}  (more than the answers in flight allowed)"),
        ("emoji accepted", f"{report['emoji_accepted']}  ({report['accepted_per_second']}/s)"),
        ("attempts refused", ", ".join(f"{k}: {v}" for k, v in report["emoji_rejected"].items()) or "0"),
        ("emoji given up", report["emoji_given_up"]),
        ("aggregates received", report["aggregates_received"]),
        (
            "latency p50 / p95 / p99",
            f"{latency['p50']} / {latency['p95']} / {latency['p99']} ms  ({latency['probes']} probes)",
        ),
        (
            "latency stages, p50",
            " / ".join(f"{stage} {ms} ms" for stage, ms in latency.get("stages_p50", {}).items()) or "-",
        ),
        ("windows checked", report["windows_checked"]),
        ("windows exact", report["windows_exact"]),
        ("emoji lost", report["emoji_lost"]),
        ("emoji counted twice", report["emoji_extra"]),
        ("viewer windows missing", report["viewer_windows_missing"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def dump(report: dict[str, Any]) -> str:
    """The report as JSON, emoji as themselves."""
    return json.dumps(report, ensure_ascii=False, indent=2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)

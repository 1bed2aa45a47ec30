"""The dashboard's numbers: every service's health, its metrics, and the subscriber nodes.

Gathered here, server-side, from the services' own ``/healthz``, ``/metrics`` and
registration's ``/subscribers``: the browser needs no CORS and nothing extra runs. The
browser computes rates and latency quantiles from consecutive samples of raw counters
and histogram buckets.
"""

from __future__ import annotations

import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client.parser import text_string_to_metric_families

from emostream.http import OK, STATUSES, UNAVAILABLE
from emostream.webui.probe import PROBE_EVENT_ID, LatencyProbe
from emostream.webui.services import Fetched, Service, Sources, fetch, json_body, text_body
from emostream.wire import now_ms

log = logging.getLogger(__name__)

FETCH_THREADS = 8  # every service's /healthz and /metrics at once


def add_routes(web: Blueprint, sources: Sources, probe: LatencyProbe | None) -> None:
    """``/dashboard/data.json``: one sample; asking for one keeps the latency probe running."""
    pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="dashboard")

    @web.get("/dashboard/data.json")
    def dashboard_data() -> Response:
        if probe is not None:
            probe.wanted()
        response = jsonify(gather(sources, pool, probe))
        response.headers["Cache-Control"] = "no-store"
        return response


def gather(sources: Sources, pool: ThreadPoolExecutor, probe: LatencyProbe | None = None) -> dict[str, Any]:
    """One dashboard sample: every service's health and the numbers the charts plot."""
    services = sources.all()
    health = {s.name: pool.submit(fetch, f"{s.url}/healthz", json_body) for s in services}
    metrics = {s.name: pool.submit(fetch, f"{s.url}/metrics", text_body) for s in services}
    membership = pool.submit(fetch, f"{sources.registration.url}/subscribers", json_body)

    parsed: dict[str, Samples] = {}
    for name, future in metrics.items():
        answer = future.result()
        if answer.ok:
            try:
                parsed[name] = parse_metrics(answer.body)
            except ValueError:
                log.warning("the %s service's /metrics is not Prometheus text", name)
    nodes_answer = membership.result()
    clusters = normalize_membership(nodes_answer.body) if nodes_answer.ok else []

    return {
        "time": now_ms(),
        "services": [service_state(s, health[s.name].result(), s.name in parsed) for s in services],
        "series": series(parsed, clusters, probe.histogram.snapshot() if probe else None),
        "probe": probe.status() if probe else None,
        "clusters": clusters,
        "membership_error": None if nodes_answer.ok else nodes_answer.error,
    }


# --------------------------------------------------------------------------- /healthz


def health_status(answer: Fetched) -> tuple[str, str | None]:
    """A ``/healthz`` answer as one of :data:`emostream.http.STATUSES`, and what went wrong, if known.

    Every service answers ``{"status": ...}`` (200 when ok, 503 otherwise); a service that
    gives no answer, or none in that shape, is unavailable.
    """
    status = answer.body.get("status") if isinstance(answer.body, dict) else None
    if status in STATUSES:
        return status, None
    if answer.error is None:
        return UNAVAILABLE, "no health status in the answer"
    return UNAVAILABLE, answer.error


def service_state(service: Service, answer: Fetched, has_metrics: bool) -> dict[str, Any]:
    status, error = health_status(answer)
    return {
        "name": service.name,
        "label": service.label,
        "url": service.url,
        "up": status == OK,
        "status": status,
        "error": error,
        "metrics": has_metrics,
    }


# --------------------------------------------------------------------------- /metrics

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text → sample name → [(labels, value)]."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def total(samples: Samples, *names: str) -> float | None:
    """Sum over the labels of the first of ``names`` that the service exposes (None when it exposes none)."""
    for name in names:
        if name in samples:
            return sum(value for _, value in samples[name])
    return None


def histogram(samples: Samples, name: str) -> dict[str, Any] | None:
    """Cumulative buckets of a histogram, summed over its labels: ``{"buckets": [[le, n], ...], ...}``."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", ()):
        le = float(labels.get("le", "+Inf"))
        buckets[le] = buckets.get(le, 0.0) + value
    if not buckets:
        return None
    ordered = [[None if math.isinf(le) else le, count] for le, count in sorted(buckets.items())]
    return {
        "buckets": ordered,
        "sum": total(samples, f"{name}_sum") or 0.0,
        "count": total(samples, f"{name}_count") or 0.0,
    }


def series(
    services: dict[str, Samples],
    clusters: list[dict[str, Any]],
    latency: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The numbers the charts plot: raw counters (the browser makes rates), gauges, histograms.

    ``latency`` is the probe's tap → viewer histogram.
    """
    ingest = services.get("ingest", {})
    processor = services.get("processor", {})
    publisher = services.get("publisher", {})
    live = [node for cluster in clusters for node in cluster["nodes"] if node["alive"]]
    return {
        "counters": {
            "ingest_emoji": total(ingest, "emostream_ingest_accepted_emoji_total"),
            "ingest_rejected": total(ingest, "emostream_ingest_rejected_requests_total"),
            "processor_aggregates": total(processor, "emostream_processor_aggregates_total"),
            "publisher_routed": total(publisher, "emostream_pubsub_routed_total"),
        },
        "gauges": {
            "processor_last_batch_seconds": total(processor, "emostream_processor_last_batch_duration_seconds"),
            # The dashboard's own probe is not an audience.
            "viewers": sum(node["connections"] - node["probe_viewers"] for node in live) if clusters else None,
            "capacity": sum(node["capacity"] for node in live) if clusters else None,
            "nodes_live": len(live) if clusters else None,
            "nodes_total": sum(len(cluster["nodes"]) for cluster in clusters) if clusters else None,
        },
        "histograms": {
            "processor_batch_seconds": histogram(processor, "emostream_processor_batch_duration_seconds"),
            "latency_seconds": latency,
        },
    }


# --------------------------------------------------------------------------- /subscribers


def normalize_membership(body: Any) -> list[dict[str, Any]]:
    """The registration service's ``/subscribers`` as clusters of nodes with their load.

    A node is alive when registration says so: a fresh heartbeat and not stopping.
    """
    nodes = body.get("subscribers") if isinstance(body, dict) else None
    if not isinstance(nodes, list):
        return []
    clusters: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        if not isinstance(node, dict):
            continue
        connections = _number(node.get("connections"))
        capacity = _number(node.get("capacity"))
        events = node.get("events") if isinstance(node.get("events"), dict) else {}
        alive = bool(node.get("alive"))
        status = str(node.get("status", "?"))
        if not alive and status == "up":
            status = "silent"  # its last heartbeat is too old: dead or cut off
        clusters.setdefault(str(node.get("cluster", "?")), []).append(
            {
                "id": str(node.get("subscriber_id", "?")),
                "url": node.get("url"),
                "connections": connections,
                "capacity": capacity,
                "load": connections / capacity if capacity else None,
                "events": {str(event): _number(n) for event, n in events.items() if event != PROBE_EVENT_ID},
                "probe_viewers": _number(events.get(PROBE_EVENT_ID, 0)),
                "status": status,
                "alive": alive,
            }
        )
    return [
        {"cluster": cluster, "nodes": sorted(members, key=lambda n: _natural(n["id"]))}
        for cluster, members in sorted(clusters.items(), key=lambda item: _natural(item[0]))
    ]


def _natural(text: str) -> tuple:
    """Sort key that puts c0-s2 before c0-s10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0

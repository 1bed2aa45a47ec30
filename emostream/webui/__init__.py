"""The viewer page and the operator dashboard, served as one Flask blueprint.

The registration service is the stack's front door and mounts this blueprint, so a
viewer opens one address, registers on the same origin and then talks to the ingest
(CORS) and to its subscriber node (Socket.IO). The dashboard's numbers are gathered
here, server-side, from the services' own ``/healthz``, ``/metrics`` and
``/subscribers``: the browser needs no CORS and nothing extra runs.

The browser computes rates and latency quantiles from consecutive samples of raw
counters and histogram buckets. The one thing kept here is the end-to-end latency: a
synthetic viewer (:class:`LatencyProbe`) taps and times the whole pipeline while
someone has the dashboard open, the way an operator's black-box probe would.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Response, abort, jsonify, request, send_from_directory
from prometheus_client.parser import text_string_to_metric_families

from emostream.settings import ROOT, Settings
from emostream.wire import DEFAULT_EVENT_ID, now_ms

log = logging.getLogger(__name__)

WEB_DIR = ROOT / "web"
ASSETS_DIR = WEB_DIR / "assets"
# The Socket.IO browser client comes from npm (web/package.json), installed by bin/setup.
SOCKETIO_DIST = WEB_DIR / "node_modules" / "socket.io-client" / "dist"
SOCKETIO_FILES = frozenset({"socket.io.min.js", "socket.io.min.js.map"})

# Readable names for the default emoji: button labels and screen readers.
EMOJI_NAMES = {
    "🔥": "fire",
    "👏": "clap",
    "😂": "laugh",
    "😮": "wow",
    "😢": "sad",
    "😡": "angry",
    "\u2764\ufe0f": "love",
    "👍": "like",
    "🎉": "party",
    "🏏": "cricket",
}

FETCH_TIMEOUT_SECONDS = 1.5  # one slow service must not stall the whole dashboard


def blueprint(settings: Settings, latency_probe: bool = True) -> Blueprint:
    """The viewer page (``/``), the dashboard (``/dashboard``) and what they load.

    With ``latency_probe`` the dashboard times the pipeline end to end with a synthetic
    viewer (:class:`LatencyProbe`) while someone has it open.
    """
    web = Blueprint("webui", __name__)
    sources = Sources.from_settings(settings)
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dashboard")
    probe = LatencyProbe(settings, sources.ingest.url, sources.registration.url) if latency_probe else None

    @web.get("/")
    def viewer_page() -> Response:
        return _page("viewer.html", settings)

    @web.get("/dashboard")
    def dashboard_page() -> Response:
        return _page("dashboard.html", settings)

    @web.get("/web/assets/<path:name>")
    def asset(name: str) -> Response:
        response = send_from_directory(ASSETS_DIR, name, max_age=0)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @web.get("/web/vendor/<name>")
    def vendor(name: str) -> Response:
        if name not in SOCKETIO_FILES:
            abort(404)
        if not (SOCKETIO_DIST / name).is_file():
            log.error("%s is missing: run bin/setup (it installs web/package.json)", SOCKETIO_DIST / name)
            abort(503, "the Socket.IO client is not installed on the server: run bin/setup")
        return send_from_directory(SOCKETIO_DIST, name, max_age=3600)

    @web.get("/config.json")
    def config() -> Response:
        response = jsonify(page_config(settings, request.host))
        response.headers["Cache-Control"] = "no-store"
        return response

    @web.get("/dashboard/data.json")
    def dashboard_data() -> Response:
        if probe is not None:
            probe.wanted()
        response = jsonify(gather(sources, pool, probe))
        response.headers["Cache-Control"] = "no-store"
        return response

    return web


def _page(name: str, settings: Settings) -> Response:
    response = send_from_directory(WEB_DIR, name, max_age=0)
    response.headers["Content-Security-Policy"] = content_security_policy(settings, request.host)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def ingest_url(settings: Settings, page_host: str) -> str:
    """Where the browser reaches the ingest: the configured public URL, else the page's host name."""
    if settings.ingest_public_url:
        return settings.ingest_public_url.rstrip("/")
    host = urlsplit(f"//{page_host}").hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{settings.ingest_port}"


def content_security_policy(settings: Settings, page_host: str) -> str:
    """Only our own scripts; network access to the ingest and to subscriber nodes of the public host."""
    ingest = urlsplit(ingest_url(settings, page_host))
    node_host = settings.public_host
    connect = [
        "'self'",
        f"{ingest.scheme}://{ingest.netloc}",
        f"http://{node_host}:*",
        f"https://{node_host}:*",
        f"ws://{node_host}:*",
        f"wss://{node_host}:*",
    ]
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src " + " ".join(dict.fromkeys(connect)),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def page_config(settings: Settings, page_host: str) -> dict[str, Any]:
    """What the viewer page needs to know about the stack; ``server_time`` lets it correct its clock."""
    return {
        "ingest_url": ingest_url(settings, page_host),
        "emoji": [{"emoji": emoji, "name": EMOJI_NAMES.get(emoji, emoji)} for emoji in settings.emoji_types],
        "default_event": DEFAULT_EVENT_ID,
        "window_ms": settings.window_seconds * 1000,
        "scale_unit": settings.scale_unit,
        "batch_max_events": settings.batch_max_events,
        "probe_event": PROBE_EVENT_ID,
        "server_time": now_ms(),
    }


# --------------------------------------------------------------------------- dashboard


@dataclass(frozen=True)
class Service:
    name: str
    label: str
    url: str


@dataclass(frozen=True)
class Sources:
    """Base URLs of the services whose numbers the dashboard shows."""

    ingest: Service
    processor: Service
    publisher: Service
    manager: Service
    registration: Service

    @classmethod
    def from_settings(cls, settings: Settings) -> Sources:
        def local(host: str) -> str:
            # A service bound to every interface is reached on loopback from here.
            return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host

        return cls(
            ingest=Service("ingest", "Ingest", f"http://{local(settings.ingest_host)}:{settings.ingest_port}"),
            processor=Service("processor", "Processor", f"http://127.0.0.1:{settings.processor_metrics_port}"),
            publisher=Service(
                "publisher", "Main publisher", f"http://{local(settings.ops_host)}:{settings.pubsub_metrics_port}"
            ),
            manager=Service(
                "manager", "Subscriber manager", f"http://{local(settings.ops_host)}:{settings.manager_port}"
            ),
            registration=Service(
                "registration",
                "Registration",
                f"http://{local(settings.registration_host)}:{settings.registration_port}",
            ),
        )

    def all(self) -> list[Service]:
        return [self.ingest, self.processor, self.publisher, self.manager, self.registration]


@dataclass
class Fetched:
    ok: bool
    status: int | None = None
    body: Any = None
    error: str | None = None


def fetch(url: str, parse: Callable[[requests.Response], Any]) -> Fetched:
    try:
        response = requests.get(url, timeout=FETCH_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        return Fetched(False, error=_short_error(error))
    try:
        body = parse(response)
    except ValueError as error:
        return Fetched(False, response.status_code, error=f"unreadable answer: {error}"[:200])
    return Fetched(response.ok, response.status_code, body, None if response.ok else f"HTTP {response.status_code}")


def _short_error(error: Exception) -> str:
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    if isinstance(error, requests.ConnectionError):
        return "not reachable"
    return type(error).__name__


def _json(response: requests.Response) -> Any:
    return response.json()


def _text(response: requests.Response) -> str:
    return response.text


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text → sample name → [(labels, value)]."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def total(samples: Samples, *names: str, where: Callable[[dict[str, str]], bool] | None = None) -> float | None:
    """Sum of the first of ``names`` that the service exposes (None when it exposes none)."""
    for name in names:
        if name in samples:
            return sum(value for labels, value in samples[name] if where is None or where(labels))
    return None


def histogram(
    samples: Samples, name: str, where: Callable[[dict[str, str]], bool] | None = None
) -> dict[str, Any] | None:
    """Cumulative buckets of a histogram, summed over its labels: ``{"buckets": [[le, n], ...], ...}``."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", ()):
        if where is not None and not where(labels):
            continue
        le = float(labels.get("le", "+Inf"))
        buckets[le] = buckets.get(le, 0.0) + value
    if not buckets:
        return None
    ordered = [[None if math.isinf(le) else le, count] for le, count in sorted(buckets.items())]
    return {
        "buckets": ordered,
        "sum": total(samples, f"{name}_sum", where=where) or 0.0,
        "count": total(samples, f"{name}_count", where=where) or 0.0,
    }


def gather(sources: Sources, pool: ThreadPoolExecutor, probe: LatencyProbe | None = None) -> dict[str, Any]:
    """One dashboard sample: every service's health and the numbers the charts plot."""
    services = sources.all()
    health = {s.name: pool.submit(fetch, f"{s.url}/healthz", _json) for s in services}
    metrics = {s.name: pool.submit(fetch, f"{s.url}/metrics", _text) for s in services}
    membership = pool.submit(fetch, f"{sources.registration.url}/subscribers", _json)

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
        "services": [_service_state(s, health[s.name].result(), s.name in parsed) for s in services],
        "series": series(parsed, clusters, probe.histogram.snapshot() if probe else None),
        "probe": probe.status() if probe else None,
        "clusters": clusters,
        "membership_error": None if nodes_answer.ok else nodes_answer.error,
    }


def _service_state(service: Service, answer: Fetched, has_metrics: bool) -> dict[str, Any]:
    detail = answer.body if isinstance(answer.body, dict) else {}
    return {
        "name": service.name,
        "label": service.label,
        "url": service.url,
        "up": answer.ok,
        "status": detail.get("status") or ("ok" if answer.ok else answer.error),
        "metrics": has_metrics,
    }


AGGREGATES_QUERY = "emostream-aggregates"  # the processor's query whose batches the viewers wait for


def _aggregates_query(labels: dict[str, str]) -> bool:
    return labels.get("query", AGGREGATES_QUERY) == AGGREGATES_QUERY


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
            "processor_last_batch_seconds": total(
                processor, "emostream_processor_last_batch_duration_seconds", where=_aggregates_query
            ),
            # The dashboard's own probe is not an audience.
            "viewers": sum(node["connections"] - node["probe_viewers"] for node in live) if clusters else None,
            "capacity": sum(node["capacity"] for node in live) if clusters else None,
            "nodes_live": len(live) if clusters else None,
            "nodes_total": sum(len(cluster["nodes"]) for cluster in clusters) if clusters else None,
        },
        "histograms": {
            "processor_batch_seconds": histogram(
                processor, "emostream_processor_batch_duration_seconds", where=_aggregates_query
            ),
            "latency_seconds": latency,
        },
    }


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


# --------------------------------------------------------------------------- latency probe

PROBE_EVENT_ID = "emostream-probe"
PROBE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10, 15, 20, 30, 60)


class LatencyHistogram:
    """Cumulative latency buckets in the shape :func:`histogram` returns (thread-safe)."""

    def __init__(self, buckets: Iterable[float] = PROBE_BUCKETS):
        self.bounds = sorted(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            counts, observed_sum = list(self._counts), self._sum
        if not any(counts):
            return None
        cumulative = list(itertools.accumulate(counts))
        buckets = [[bound, float(n)] for bound, n in zip(self.bounds, cumulative, strict=False)]
        buckets.append([None, float(cumulative[-1])])
        return {"buckets": buckets, "sum": observed_sum, "count": float(cumulative[-1])}


class LatencyProbe:
    """A synthetic viewer that times the whole pipeline while someone watches the dashboard.

    Like the viewer page, it registers for an event of its own, connects to the node it is
    given, taps once a second into the ingest and times each tap until a node pushes the
    window that counts it. Taps go in the middle of a window, so a clock estimate a few
    milliseconds off never puts one in the wrong window. It stops after
    ``idle_seconds`` without a dashboard request, so an unwatched stack carries no probe.
    """

    def __init__(
        self,
        settings: Settings,
        ingest_url: str,
        registration_url: str,
        idle_seconds: float = 30.0,
    ):
        self.settings = settings
        self.ingest_url = ingest_url.rstrip("/")
        self.registration_url = registration_url.rstrip("/")
        self.idle_seconds = idle_seconds
        self.client_id = f"dashboard-probe-{os.getpid()}"
        self.emoji = settings.emoji_types[0]
        self.window_ms = settings.window_seconds * 1000
        self.histogram = LatencyHistogram()
        self.state = "idle"
        self.last_latency: float | None = None
        self._wanted_at = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sent: dict[int, list[float]] = {}  # window_start → monotonic send times, in order
        self._answered: dict[int, int] = {}  # window_start → taps already timed

    def wanted(self) -> None:
        """Note that someone looks at the dashboard; start the probe when it is not running."""
        with self._lock:
            self._wanted_at = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)
                self._thread.start()

    def status(self) -> dict[str, Any]:
        return {"event_id": PROBE_EVENT_ID, "state": self.state, "last_seconds": self.last_latency}

    def _watched(self) -> bool:
        return time.monotonic() - self._wanted_at < self.idle_seconds

    def _run(self) -> None:
        failures = 0
        while self._watched():
            try:
                self._session()
                failures = 0
            except Exception as error:  # the stack may be starting or a node may be gone: retry
                failures += 1
                self.state = (
                    f"retrying: {_short_error(error) if isinstance(error, requests.RequestException) else error}"
                )
                log.debug("latency probe: %s", error)
            time.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))
        self.state = "idle"

    def _session(self) -> None:
        import socketio  # only the dashboard's probe needs the client

        answer = requests.post(
            f"{self.registration_url}/register",
            json={"client_id": self.client_id, "event_id": PROBE_EVENT_ID},
            timeout=5,
        )
        if not answer.ok:
            raise RuntimeError(f"registration answered {answer.status_code}")
        registration = answer.json()
        # websocket-client sends an Origin header of the node's own address, which the node's
        # CORS list refuses: without suppress_origin the client silently stays on long-polling.
        client = socketio.Client(reconnection=False, websocket_extra_options={"suppress_origin": True})
        client.on("emoji_update", lambda aggregate: self.on_update(aggregate, time.monotonic()))
        client.connect(
            registration["url"], auth={"token": registration["token"]}, transports=["websocket"], wait_timeout=5
        )
        self.state = f"tap → viewer via {registration.get('subscriber', '?')}"
        try:
            while self._watched() and client.connected:
                self._sleep_to_mid_window()
                if client.connected:
                    self._tap()
        finally:
            client.disconnect()
            try:
                requests.post(
                    f"{self.registration_url}/unregister",
                    json={"client_id": self.client_id, "token": registration["token"]},
                    timeout=2,
                )
            except requests.RequestException:
                pass
        if self._watched():
            raise RuntimeError(f"lost {registration.get('subscriber', 'the node')}")

    def _sleep_to_mid_window(self) -> None:
        # Taps at a quarter and three quarters of each window: two a window, far from its edges.
        quarter = self.window_ms / 4
        position = now_ms() % self.window_ms
        target = quarter if position < quarter else 3 * quarter if position < 3 * quarter else self.window_ms + quarter
        time.sleep((target - position) / 1000)

    def _tap(self) -> None:
        sent = time.monotonic()
        stamped = now_ms()
        event = {"user_id": self.client_id, "emoji_type": self.emoji, "timestamp": stamped, "event_id": PROBE_EVENT_ID}
        answer = requests.post(f"{self.ingest_url}/emoji", json=event, timeout=5)
        if answer.status_code != 202:
            self.state = f"ingest answered {answer.status_code}"
            return
        # The tap is mid-window, so its send time names the window ingest puts it in.
        self.record_tap(stamped - stamped % self.window_ms, sent)

    def record_tap(self, window_start: int, sent_at: float) -> None:
        """Remember an accepted tap of ``window_start``, sent at ``sent_at`` (monotonic seconds)."""
        with self._lock:
            self._sent.setdefault(window_start, []).append(sent_at)
            for old in [w for w in self._sent if w < window_start - 30_000]:
                self._sent.pop(old, None)
                self._answered.pop(old, None)

    def on_update(self, aggregate: Any, arrived: float) -> None:
        """Time the taps that this aggregate counts for the first time."""
        if not isinstance(aggregate, dict) or aggregate.get("event_id") != PROBE_EVENT_ID:
            return
        window = aggregate.get("window_start")
        counted = (aggregate.get("counts") or {}).get(self.emoji, 0)
        with self._lock:
            sent = self._sent.get(window, [])
            answered = self._answered.get(window, 0)
            # Cumulative counts: the taps this record counts for the first time arrived just now.
            fresh = sent[answered : min(int(counted), len(sent))]
            self._answered[window] = answered + len(fresh)
        for sent_at in fresh:
            self.last_latency = arrived - sent_at
            self.histogram.observe(arrived - sent_at)

"""The ingest HTTP API: ``POST /emoji``, ``POST /emojis``, ``GET /emoji-types``, health, metrics.

A request is answered 202 only once all its emoji are in the worker's bounded buffer
(:class:`~emostream.ingest.batcher.EmojiBatcher`); it never waits on Kafka itself.

The two intake endpoints are the hot path: :class:`FastIntake` answers them in front of
Flask, straight from the WSGI environ, for every client that sends no ``Origin`` header
(the simulator, native mobile clients, server-to-server senders). Browser
requests carry an ``Origin`` and go through Flask's routes, where CORS is applied. Both
paths run the same :meth:`Ingest.handle`, so they answer alike.

In ``token`` mode (the default) every intake request carries ``Authorization: Bearer
<send_token>`` (:mod:`emostream.ingest.senders`): its events must all be the credential's
client and event. In ``open`` mode (loopback only) any ``user_id`` may send without one.
Both modes limit emoji per user and per source address.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask, current_app, request
from flask_cors import CORS

from emostream.http import Health, install_json_errors, metrics_response
from emostream.ingest import metrics
from emostream.ingest.batcher import EmojiBatcher, Offer
from emostream.ingest.ratelimit import RateLimiter, retry_after_header
from emostream.ingest.senders import RevocationFollower, Revocations, SenderAuth, Unauthorized
from emostream.settings import Settings
from emostream.sources import SourcePolicy
from emostream.wire import EmojiEvent, InvalidMessage, SendClaims, now_ms, validate_event

log = logging.getLogger(__name__)

EXTENSION = "emostream.ingest"
# Intake paths, and whether each takes an array of events.
# POST /send-emoji is the original project's path for one emoji; it answers exactly as /emoji.
INTAKE_PATHS = {"/emoji": False, "/send-emoji": False, "/emojis": True}


class Rejected(Exception):
    """A request refused with ``status``; ``reason`` labels the rejected-requests metric."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.headers = headers


class Ingest:
    """What one worker's app holds: its settings, buffer, rate limiters and sender checks."""

    def __init__(
        self,
        settings: Settings,
        batcher: EmojiBatcher,
        limiter: RateLimiter,
        senders: SenderAuth | None = None,
        follower: RevocationFollower | None = None,
    ):
        self.settings = settings
        self.batcher = batcher
        self.limiter = limiter
        # None in open mode: no credential is asked for.
        self.senders = senders
        self.follower = follower
        self.source_limiter = RateLimiter(settings.rate_limit_per_source, settings.rate_burst_per_source)
        self.sources = SourcePolicy.of(settings)
        self.emoji_types = frozenset(settings.emoji_types)
        self.skew_ms = settings.timestamp_skew_seconds * 1000
        self.max_lag = settings.ingest_max_lag_ms / 1000
        # The request-time series of each endpoint, looked up once rather than per request.
        self._request_seconds = {
            many: metrics.REQUEST_SECONDS.labels("emojis" if many else "emoji") for many in (False, True)
        }

    def handle(self, environ: dict[str, Any], many: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one intake request: its status, JSON body and extra headers."""
        started = time.perf_counter()
        try:
            claims = self.authenticate(environ)
            payload = read_json(environ, self.settings.max_body_bytes)
            accepted, received_at = self.intake(payload, many, claims, self.sources.of_environ(environ))
            # received_at tells a client which window its emoji count in.
            return 202, {"accepted": accepted, "received_at": received_at}, {}
        except Rejected as rejected:
            metrics.REJECTED.labels(rejected.reason).inc()
            headers = dict(rejected.headers or {})
            if rejected.retry_after is not None:
                headers["Retry-After"] = retry_after_header(rejected.retry_after)
            return rejected.status, {"error": rejected.message}, headers
        finally:
            self._request_seconds[many].observe(time.perf_counter() - started)

    def authenticate(self, environ: dict[str, Any]) -> SendClaims | None:
        """The request's send credential (None in open mode), or :class:`Rejected` with 401."""
        if self.senders is None:
            return None
        try:
            return self.senders.verify(environ.get("HTTP_AUTHORIZATION"))
        except Unauthorized as refused:
            raise Rejected(
                401, refused.reason, refused.message, headers={"WWW-Authenticate": 'Bearer realm="emostream"'}
            ) from None

    def intake(
        self, payload: Any, many: bool, claims: SendClaims | None = None, source: str | None = None
    ) -> tuple[int, int]:
        """Validate the request's emoji and buffer them all, or raise :class:`Rejected`.

        ``claims`` is the request's send credential (token mode), ``source`` the address a
        per-source limit counts (None when exempt). Returns how many were accepted and the
        ``received_at`` stamped on them.
        """
        settings = self.settings
        if many:
            if not isinstance(payload, list):
                raise Rejected(400, "wrong_shape", "POST /emojis takes a JSON array of emoji events")
            if not payload:
                raise Rejected(400, "empty_batch", "the array holds no emoji events")
            if len(payload) > settings.batch_max_events:
                raise Rejected(
                    413,
                    "too_many_events",
                    f"at most {settings.batch_max_events} events per request, got {len(payload)}",
                )
            items = payload
        else:
            if not isinstance(payload, dict):
                raise Rejected(
                    400, "wrong_shape", "POST /emoji takes one event as a JSON object; send arrays to /emojis"
                )
            items = [payload]

        received_at = now_ms()
        events: list[EmojiEvent] = []
        for index, item in enumerate(items):
            if claims is not None and isinstance(item, dict) and ("user_id" not in item or "event_id" not in item):
                # A credential names its client and event: an event may leave them to it.
                item = {"user_id": claims.client_id, "event_id": claims.event_id, **item}
            try:
                event = validate_event(item, self.emoji_types, received_at, self.skew_ms)
            except InvalidMessage as error:
                raise Rejected(400, "invalid_event", f"{_where(index, many)}{error}") from None
            if claims is not None:
                if event.user_id != claims.client_id:
                    raise Rejected(
                        403, "other_client", f"{_where(index, many)}user_id must be the credential's client_id"
                    )
                if event.event_id != claims.event_id:
                    raise Rejected(
                        403,
                        "other_event",
                        f"{_where(index, many)}event_id must be the credential's event ({claims.event_id})",
                    )
            events.append(event)

        down_for = self.batcher.stalled_for()
        if down_for >= settings.kafka_unavailable_seconds:
            raise Rejected(
                503,
                "kafka_unavailable",
                f"Kafka has been unreachable for {down_for:.0f} s; try again later",
                retry_after=settings.kafka_unavailable_seconds,
            )

        lag = self.batcher.lag()
        if lag > self.max_lag:
            raise Rejected(
                503,
                "lagging",
                f"ingest is {lag:.1f} s behind in sending emoji to Kafka; try again shortly",
                retry_after=1,
            )

        # In token mode every event is the credential's client: the limit keys on the verified id.
        if claims is not None:
            demand = {claims.client_id: len(events)}
        else:
            demand = {events[0].user_id: 1} if len(events) == 1 else Counter(event.user_id for event in events)
        wait = self.limiter.acquire(demand)
        if wait:
            raise Rejected(
                429,
                "rate_limited",
                f"too many emoji from one user_id (limit {self.limiter.rate:g}/s, burst {self.limiter.burst:g})",
                retry_after=wait,
            )
        source_demand = {source: len(events)} if source is not None else {}
        wait = self.source_limiter.acquire(source_demand) if source_demand else 0.0
        if wait:
            self.limiter.refund(demand)
            raise Rejected(
                429,
                "source_rate_limited",
                f"too many emoji from one address (limit {self.source_limiter.rate:g}/s, "
                f"burst {self.source_limiter.burst:g})",
                retry_after=wait,
            )

        records = [(event.key, event.record_json()) for event in events]
        offered = self.batcher.offer(records)
        if offered is not Offer.ACCEPTED:
            self.limiter.refund(demand)
            if source_demand:
                self.source_limiter.refund(source_demand)
            if offered is Offer.CLOSED:
                raise Rejected(503, "shutting_down", "ingest is shutting down; try again", retry_after=1)
            if offered is Offer.NOT_WRITTEN:
                raise Rejected(
                    503, "journal_unavailable", "ingest cannot write its journal; try again shortly", retry_after=1
                )
            raise Rejected(503, "buffer_full", "the ingest buffer is full; try again shortly", retry_after=1)
        metrics.ACCEPTED.inc(len(records))
        return len(records), received_at

    def health(self) -> Health:
        down_for = self.batcher.stalled_for()
        kafka_ok = down_for < self.settings.kafka_unavailable_seconds
        return Health.of(
            kafka_ok,
            kafka={
                "bootstrap": self.settings.kafka_bootstrap,
                "reachable": kafka_ok and self.batcher.probe_ok,
                # Time since Kafka last acknowledged anything while emoji wait (or since probes fail).
                "unreachable_seconds": round(down_for, 1),
            },
            topic=self.settings.emoji_topic,
            buffered=self.batcher.held,
            lag_seconds=round(self.batcher.lag(), 2),
            capacity=self.settings.buffer_max,
            auth=self.settings.ingest_auth,
            worker_pid=os.getpid(),
            # Not part of the health verdict: ingest keeps serving while revocations catch up.
            revocations=self.follower.status() if self.follower is not None else None,
        )


def create_app(
    settings: Settings, batcher: EmojiBatcher | None = None, follower: RevocationFollower | None = None
) -> Flask:
    """The ingest Flask app; it starts its buffer's flusher thread and, in token mode, its
    revocation follower (one each per process)."""
    settings.require_loopback_for_open_ingest()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False  # emoji stay readable in /emoji-types
    install_json_errors(app)
    CORS(
        app,
        resources={r"/(emoji.*|send-emoji)": {"origins": list(settings.cors_origins)}},
        allow_headers=["Content-Type", "Authorization"],
        expose_headers=["Retry-After", "WWW-Authenticate"],
        max_age=600,
    )

    if batcher is None:
        batcher = EmojiBatcher(settings).start()
    senders = None
    if settings.ingest_auth == "token":
        if follower is None:
            follower = RevocationFollower(settings, Revocations()).start()
        senders = SenderAuth(settings.secret, follower.revocations)
    limiter = RateLimiter(settings.rate_limit_per_user, settings.rate_burst_per_user)
    ingest = Ingest(settings, batcher, limiter, senders, follower)
    app.extensions[EXTENSION] = ingest

    @app.post("/emoji")
    @app.post("/send-emoji")
    def post_emoji():
        status, body, headers = ingest.handle(request.environ, many=False)
        return body, status, headers

    @app.post("/emojis")
    def post_emojis():
        status, body, headers = ingest.handle(request.environ, many=True)
        return body, status, headers

    @app.get("/emoji-types")
    def emoji_types():
        return {"emoji_types": list(settings.emoji_types)}

    @app.get("/healthz")
    def healthz():
        return ingest.health().response()

    @app.get("/metrics")
    def prometheus_metrics():
        return metrics_response()

    app.wsgi_app = FastIntake(app.wsgi_app, ingest)  # type: ignore[method-assign]
    log.info(
        "ingest app ready (%s mode): topic %s, flush every %d ms, buffer %d, Kafka %s",
        settings.ingest_auth,
        settings.emoji_topic,
        settings.flush_interval_ms,
        settings.buffer_max,
        settings.kafka_bootstrap,
    )
    return app


def _where(index: int, many: bool) -> str:
    """Which event of the request an error is about (arrays only)."""
    return f"event {index}: " if many else ""


def read_json(environ: dict[str, Any], max_bytes: int) -> Any:
    """The JSON body of a WSGI request, or :class:`Rejected` (413, 415, 400) saying what is wrong."""
    try:
        length: int | None = max(0, int(environ.get("CONTENT_LENGTH") or ""))
    except ValueError:
        length = None  # no length: a chunked body, or none
    if length is not None and length > max_bytes:
        raise Rejected(413, "body_too_large", f"the body is larger than {max_bytes} bytes")
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if not (mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))):
        raise Rejected(415, "not_json", "send JSON with Content-Type: application/json")
    stream = environ["wsgi.input"]
    if length is not None:
        data = stream.read(length) if length else b""
    elif environ.get("wsgi.input_terminated"):
        data = stream.read(max_bytes + 1)  # chunked: the server ends the stream after the last chunk
        if len(data) > max_bytes:
            raise Rejected(413, "body_too_large", f"the body is larger than {max_bytes} bytes")
    else:
        data = b""  # neither a length nor a terminated stream: the request has no body
    try:
        return json.loads(data)
    except RecursionError:
        raise Rejected(400, "bad_json", "the JSON body is nested too deeply") from None
    except ValueError:  # not JSON, or not UTF-8/16/32
        raise Rejected(400, "bad_json", "the body is not valid JSON") from None


class FastIntake:
    """WSGI middleware: ``POST /emoji`` and ``POST /emojis`` without an ``Origin``, answered before Flask.

    Flask's request context, routing, response object and CORS extension cost most of an intake
    request's time in the app, and the intake is most of the ingest's work. Anything else, and every
    browser request (which carries ``Origin`` and needs CORS headers), goes on to Flask.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], ingest: Ingest):
        self.app = app
        self.ingest = ingest

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        many = INTAKE_PATHS.get(environ.get("PATH_INFO", ""))
        if many is None or environ.get("REQUEST_METHOD") != "POST" or "HTTP_ORIGIN" in environ:
            return self.app(environ, start_response)
        try:
            status, body, headers = self.ingest.handle(environ, many)
        except Exception:
            log.exception("unhandled error on POST %s", environ.get("PATH_INFO"))
            status, body, headers = 500, {"error": "internal error"}, {}
        # As Flask writes JSON: compact, keys sorted, emoji as UTF-8, a final newline.
        data = (json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n").encode()
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers.items()],
        )
        return [data]


def ingest_of(app: Flask | None = None) -> Ingest:
    """The :class:`Ingest` state of ``app`` (or of the current app)."""
    return (app or current_app).extensions[EXTENSION]


def shutdown(app: Flask, timeout: float) -> int:
    """Flush ``app``'s buffer to Kafka before the process exits; returns emoji left in the journal instead."""
    ingest = ingest_of(app)
    if ingest.follower is not None:
        ingest.follower.stop(timeout=1.0)
    return ingest.batcher.close(timeout)

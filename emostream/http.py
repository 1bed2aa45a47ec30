"""What every EmoStream HTTP service shares: JSON errors, /healthz, /metrics, JSON bodies."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

log = logging.getLogger(__name__)

# The status words of every service's /healthz: serving, not yet serving, or not serving.
OK = "ok"
STARTING = "starting"
UNAVAILABLE = "unavailable"
STATUSES = (OK, STARTING, UNAVAILABLE)


@dataclass(frozen=True)
class Health:
    """A service's answer to /healthz: ``{"status": ..., **details}``, 200 when ok and 503 otherwise."""

    status: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"health status {self.status!r} is not one of {STATUSES}")

    @classmethod
    def of(cls, healthy: bool, unhealthy: str = UNAVAILABLE, **details: Any) -> Health:
        return cls(OK if healthy else unhealthy, details)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def response(self) -> tuple[dict[str, Any], int]:
        return {"status": self.status, **self.details}, 200 if self.ok else 503


def install_json_errors(app: Flask) -> None:
    """Every error is JSON ``{"error": ...}``; a client mistake is never a 500."""

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        response = {"error": error.description or error.name}
        return response, error.code or 500, dict(error.get_headers()) | {"Content-Type": "application/json"}

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return {"error": "internal error"}, 500


def json_body(max_bytes: int | None = None) -> Any:
    """The request's JSON body, or a 400/413/415 that says what is wrong."""
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        from werkzeug.exceptions import RequestEntityTooLarge

        raise RequestEntityTooLarge(f"the body is larger than {max_bytes} bytes")
    if not request.is_json:
        from werkzeug.exceptions import UnsupportedMediaType

        raise UnsupportedMediaType("send JSON with Content-Type: application/json")
    try:
        return request.get_json(force=True, silent=False)
    except BadRequest:
        raise BadRequest("the body is not valid JSON") from None


def metrics_response(registry: CollectorRegistry | None = None) -> Response:
    """Prometheus exposition of ``registry``, or of every process in multiprocess mode."""
    if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path of a busy service process.

    With CPython's default thresholds a full collection runs every few seconds over every
    object the process holds: it stalled a fan-out node with thousands of viewers for most of a
    second (packets in flight during a broadcast survive the young collections and push the old
    generation over its trigger), and it made the ingest's slowest requests (the README's
    Measured section has the figures). Freezing what start-up built
    and collecting the older generations less often removes those stalls; reference
    counting still frees almost everything a request allocates. Call it once the service is
    built, in the process that serves.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 100)


def ops_app(name: str, health: Callable[[], Health], registry: CollectorRegistry) -> Flask:
    """A Flask app with only /healthz and /metrics, for services whose work is not HTTP."""
    app = Flask(name)
    install_json_errors(app)

    @app.get("/healthz")
    def healthz():
        return health().response()

    @app.get("/metrics")
    def metrics():
        return metrics_response(registry)

    return app


class OpsServer:
    """/healthz and /metrics of a non-HTTP service, on a daemon thread. Port 0 picks a free port."""

    def __init__(self, name: str, host: str, port: int, health: Callable[[], Health], registry: CollectorRegistry):
        self._server: BaseWSGIServer = make_server(host, port, ops_app(name, health, registry), threaded=True)
        self.host = host
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{name}-ops", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

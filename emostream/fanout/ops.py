"""What the fan-out services share: their topics, file limits, and /healthz + /metrics.

The subscriber nodes and registration are Flask apps and serve /healthz and
/metrics themselves; the publishers and the manager are Kafka loops, and
:class:`OpsServer` gives them the same two endpoints on a side port.
"""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.serving import BaseWSGIServer, make_server

from emostream import kafka
from emostream.fanout.socketio_kafka import channel_topics
from emostream.http import install_json_errors, metrics_response
from emostream.settings import Settings

log = logging.getLogger(__name__)

# () -> (healthy, details): details is the JSON body of /healthz.
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def fanout_topics(settings: Settings) -> list[kafka.TopicSpec]:
    """The topics the fan-out tier reads and writes (the pipeline's own, plus the channels)."""
    wanted = {settings.aggregate_topic, settings.membership_topic}
    wanted |= {kafka.cluster_topic(settings, cluster) for cluster in range(settings.clusters)}
    return [spec for spec in kafka.topics(settings) if spec.name in wanted] + channel_topics(settings)


def ensure_fanout_topics(settings: Settings, timeout: float = 60.0) -> None:
    """Create what is missing (idempotent, safe when several services race)."""
    kafka.ensure_topics(settings, fanout_topics(settings), timeout=timeout)


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit: one per viewer connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit to %d: %s", hard, error)
    return soft


def ops_app(name: str, health: HealthCheck, registry: CollectorRegistry) -> Flask:
    """A Flask app with only /healthz and /metrics."""
    app = Flask(name)
    install_json_errors(app)

    @app.get("/healthz")
    def healthz():
        healthy, details = health()
        return {"status": "ok" if healthy else "unavailable", **details}, 200 if healthy else 503

    @app.get("/metrics")
    def metrics():
        return metrics_response(registry)

    return app


class OpsServer:
    """/healthz and /metrics of a non-HTTP service, on a daemon thread. Port 0 picks a free port."""

    def __init__(self, name: str, host: str, port: int, health: HealthCheck, registry: CollectorRegistry):
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

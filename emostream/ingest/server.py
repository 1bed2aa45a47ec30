"""gunicorn serving the ingest app: ``python3 app.py`` (or ``emostream-ingest``) runs :func:`serve`.

Each worker process builds its own app, buffer and Kafka producer after the fork (no
``preload_app``: Kafka clients and threads must not cross a fork). On SIGTERM (or Ctrl-C)
the master asks every worker to stop; a worker finishes its requests and then, in
``worker_exit``, sends its buffer to Kafka before it exits, within ``graceful_timeout``.

Prometheus runs in multiprocess mode: :func:`serve` creates ``PROMETHEUS_MULTIPROC_DIR``
before anything imports ``prometheus_client`` and removes it on exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from emostream.settings import Settings

# Named, not __name__: run with python -m, this module is __main__.
log = logging.getLogger("emostream.ingest.server")

WORKER_CLASSES = {"gthread": "gthread", "gevent": "emostream.ingest.gevent_worker.FairGeventWorker"}
# Time a stopping worker has for its last requests and the final flush to Kafka.
GRACEFUL_TIMEOUT = 30
# Part of it reserved for the flush: a worker's buffer drains well within this.
FLUSH_TIMEOUT = 20.0


class IngestServer(BaseApplication):
    """The ingest app under gunicorn, configured from :class:`Settings` alone."""

    def __init__(self, settings: Settings, **options: Any):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        worker_class = WORKER_CLASSES.get(settings.ingest_worker_class)
        if worker_class is None:
            raise SystemExit(
                f"EMOSTREAM_INGEST_WORKER_CLASS={settings.ingest_worker_class!r}: use one of {', '.join(WORKER_CLASSES)}"
            )
        config: dict[str, Any] = {
            "bind": [f"{settings.ingest_host}:{settings.ingest_port}"],
            "workers": max(1, settings.ingest_workers),
            "worker_class": worker_class,
            "threads": max(1, settings.ingest_threads),
            "worker_connections": 2000,
            "backlog": 2048,
            "keepalive": 5,
            "timeout": 60,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "accesslog": None,  # one line per emoji request would cost more than the request
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "proc_name": "emostream-ingest",
            "control_socket_disable": True,  # several ingest servers may share one machine
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
        }
        config.update(self.options)
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self):
        # Runs in each worker after the fork: the app, its buffer and its producer are per process.
        from emostream.http import tune_gc
        from emostream.ingest.api import create_app

        app = create_app(self.settings)
        tune_gc()
        return app


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if app is None or not hasattr(app, "extensions"):
        return  # the master reaping a worker that never loaded the app: nothing to flush
    from emostream.ingest.api import shutdown

    spooled = shutdown(app, FLUSH_TIMEOUT)
    if spooled:
        log.error("worker %s could not deliver %d emoji before exit; they stay in the journal", worker.pid, spooled)
    else:
        log.info("worker %s flushed its buffer to Kafka", worker.pid)


def _child_exit(server: Any, worker: Any) -> None:
    # Drop a dead worker's live gauges (buffered emoji) from the multiprocess metrics.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def check_auth(settings: Settings) -> None:
    """Refuse to start where the auth mode would let strangers send: open mode, or the
    development secret (anyone could sign a send credential with it), beyond loopback."""
    settings.require_loopback_for_open_ingest()
    if settings.ingest_auth == "token":
        settings.require_secret_for(settings.ingest_host, "ingest")


def serve(settings: Settings, **options: Any) -> None:
    """Run the ingest service until SIGTERM or Ctrl-C; every buffered emoji is flushed first."""
    check_auth(settings)
    metrics_dir = tempfile.mkdtemp(prefix="emostream-ingest-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if settings.ingest_worker_class == "gthread":
        # Import (not build) the app in the master, so workers fork with Flask and Kafka loaded
        # and boot in milliseconds. Not for gevent: its workers must patch before these imports.
        import emostream.ingest.api  # noqa: F401

    log.info(
        "ingest on http://%s:%d (%d %s workers x %d threads, %s mode), Kafka %s, topic %s",
        settings.ingest_host,
        settings.ingest_port,
        settings.ingest_workers,
        settings.ingest_worker_class,
        settings.ingest_threads,
        settings.ingest_auth,
        settings.kafka_bootstrap,
        settings.emoji_topic,
    )
    try:
        IngestServer(settings, **options).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def serve_dev(settings: Settings) -> None:
    """The same app under Flask's development server (one process): the benchmark's baseline."""
    from emostream.http import tune_gc
    from emostream.ingest.api import create_app, shutdown

    check_auth(settings)
    app = create_app(settings)
    tune_gc()
    # The development server has no graceful stop of its own: turn SIGTERM into a clean exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        app.run(host=settings.ingest_host, port=settings.ingest_port, threaded=True, use_reloader=False, debug=False)
    finally:
        shutdown(app, FLUSH_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    """``emostream-ingest``: serve until SIGTERM or Ctrl-C (``--dev``: Flask's development server)."""
    import argparse

    from emostream import logs

    parser = argparse.ArgumentParser(
        description="EmoStream ingest: POST /emoji, POST /emojis, GET /emoji-types, GET /healthz, GET /metrics"
    )
    parser.add_argument("--dev", action="store_true", help="serve with Flask's development server instead of gunicorn")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other instances (SO_REUSEPORT, Linux; what bin/ingest-pool runs)",
    )
    args = parser.parse_args(argv)
    if args.dev and args.reuse_port:
        parser.error("--reuse-port needs gunicorn: leave out --dev")
    settings = Settings.from_env().for_kafka_service("ingest")
    logs.configure(settings)
    if args.dev:
        serve_dev(settings)
    else:
        serve(settings, reuse_port=args.reuse_port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

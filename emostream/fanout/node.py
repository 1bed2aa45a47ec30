"""One subscriber node: viewers connect here over Socket.IO and get their event's aggregates.

Flask-SocketIO in gevent mode (one greenlet per connection: the most viewers a
process holds, see the README's Measured section). The process must be
monkey-patched before this module is imported: run it as ``python -m
emostream.fanout.node``, ``emostream-subscriber`` or ``subscriber_service.py``.

A viewer connects with ``auth={"token": ...}`` (plus ``"since"``, the window_start
it wants windows from, when it comes back); the node accepts only a valid,
unexpired, unrevoked token issued for itself, sends the viewer its event's recent
windows (catchup.py) and puts it in the room of the token's event (never an event
the client names). Its client manager listens on the cluster's channel, so a
cluster publisher's emit to a room reaches the viewers of that room here. The node
announces itself by heartbeat (see membership.py) and, when it stops cleanly, says
"stopping", hands its viewers back (they re-register elsewhere) and writes a
tombstone.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Run as a program: gevent patches the standard library before anything imports it.
    from gevent import monkey

    monkey.patch_all()

import logging
import os
import socket
import time
from collections import Counter
from typing import Any

import gevent
from flask import Flask, request
from flask_socketio import ConnectionRefusedError, SocketIO
from gevent import pywsgi
from gevent.event import Event
from geventwebsocket.handler import WebSocketHandler
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as MetricCounter

from emostream import kafka
from emostream.fanout.catchup import CatchUp
from emostream.fanout.history import InvalidSince, ViewerHistory, parse_since
from emostream.fanout.membership import STOPPING, UP, NodeState, parse_subscriber_id
from emostream.fanout.origins import viewer_origin_policy
from emostream.fanout.socketio_kafka import (
    DISCONNECT_CLIENT,
    NAMESPACE,
    KafkaClientManager,
    token_digest,
)
from emostream.http import OK, STARTING, UNAVAILABLE, Health, install_json_errors, metrics_response, tune_gc
from emostream.settings import Settings
from emostream.wire import InvalidMessage, now_ms, verify_token

# Named, not __name__: run with python -m, this module is __main__.
log = logging.getLogger("emostream.fanout.node")

# A burst of connects to a new event becomes one heartbeat, this long after the first.
ANNOUNCE_DEBOUNCE_SECONDS = 0.05
REFUSAL_REASONS = {
    "a token is required": "missing",
    "the token is not valid": "invalid",
    "the token has expired": "expired",
    "the token is for another subscriber node": "other_node",
}


class NoDelayWSGIServer(pywsgi.WSGIServer):
    """A WSGI server whose connections send small writes at once (TCP_NODELAY).

    A viewer is sent several Socket.IO frames back to back (its CONNECT answer, then its
    event's windows; two updates in one tick): with Nagle's algorithm every frame after the
    first waits for the client's delayed acknowledgement.
    """

    def handle(self, sock: Any, address: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a Unix socket): nothing to tune
            pass
        super().handle(sock, address)


class SubscriberNode:
    """A subscriber node; :meth:`start` serves it, :meth:`stop` drains and leaves the membership."""

    def __init__(self, settings: Settings, subscriber_id: str, cluster: int, port: int | None = None):
        parse_subscriber_id(subscriber_id)  # fail early on a malformed id
        if not 0 <= cluster < settings.clusters:
            raise ValueError(f"cluster {cluster} is not in 0..{settings.clusters - 1}")
        self.settings = settings
        self.subscriber_id = subscriber_id
        self.cluster = cluster
        self.requested_port = settings.subscriber_base_port if port is None else port
        self.port: int | None = None
        self.url: str | None = None
        self.status = "starting"
        self.started_at = now_ms()

        self._viewers: dict[str, tuple[str, str, str]] = {}  # sid -> (client_id, event_id, token digest)
        self._sids_by_token: dict[str, set[str]] = {}
        self._events: Counter[str] = Counter()
        self._revoked: dict[str, int] = {}  # token digest -> expires_at (epoch s)
        self._announce = Event()
        self._stopped = Event()
        self._wsgi: pywsgi.WSGIServer | None = None
        self._heartbeats: gevent.Greenlet | None = None

        self.registry = CollectorRegistry()
        self._metrics(self.registry)
        self.producer = kafka.producer(settings, linger_ms=0)
        self.channel = KafkaClientManager(settings, kafka.channel_topic(settings, cluster), logger=log)
        self.channel.control_handlers[DISCONNECT_CLIENT] = self._on_disconnect_client
        window_ms = settings.window_seconds * 1000
        horizon_ms = settings.viewer_history_seconds * 1000
        self.history = ViewerHistory(
            window_ms,
            horizon_ms,
            max_windows=settings.viewer_history_max_windows or horizon_ms // window_ms + 2,
            max_bytes=settings.viewer_history_max_bytes,
            max_events=settings.viewer_history_max_events,
            watched=lambda event_id: self._events.get(event_id, 0) > 0,
        )
        self.app = self._create_app()
        self.catchup = CatchUp(settings, self.socketio.server, self.history, self.registry, subscriber_id)
        self.channel.emit_gate = self.catchup.gate

    # ----------------------------------------------------------------- the app

    def _create_app(self) -> Flask:
        app = Flask(f"subscriber-{self.subscriber_id}")
        install_json_errors(app)
        self.socketio = SocketIO(
            app,
            async_mode="gevent",
            client_manager=self.channel,
            # Same-origin and Origin-less clients too, not only the viewer page's origins.
            cors_allowed_origins=viewer_origin_policy(self.settings.cors_origins),
            manage_session=False,  # viewers have no session; saves work on every event
            max_http_buffer_size=16 * 1024,  # viewers only listen
            logger=False,
            engineio_logger=False,
        )
        self.socketio.on("connect")(self._on_connect)
        self.socketio.on("disconnect")(self._on_disconnect)

        @app.get("/healthz")
        def healthz():
            return Health(
                OK if self.status == UP else STARTING if self.status == "starting" else UNAVAILABLE,
                {
                    "subscriber_id": self.subscriber_id,
                    "cluster": self.cluster,
                    "connections": len(self._viewers),
                    "capacity": self.settings.subscriber_capacity,
                },
            ).response()

        @app.get("/metrics")
        def metrics():
            return metrics_response(self.registry)

        return app

    def _metrics(self, registry: CollectorRegistry) -> None:
        labels = {"subscriber": self.subscriber_id}
        Gauge("emostream_subscriber_connections", "Viewers connected now.", labels.keys(), registry=registry).labels(
            **labels
        ).set_function(lambda: len(self._viewers))
        Gauge(
            "emostream_subscriber_events", "Events this node has viewers of.", labels.keys(), registry=registry
        ).labels(**labels).set_function(lambda: len(self._events))
        Gauge(
            "emostream_subscriber_channel_messages",
            "Messages read from the cluster channel.",
            labels.keys(),
            registry=registry,
        ).labels(**labels).set_function(lambda: self.channel.received)
        self.m_connects = MetricCounter(
            "emostream_subscriber_connects", "Viewer connections accepted.", registry=registry
        )
        self.m_refused = MetricCounter(
            "emostream_subscriber_refused", "Viewer connections refused, by reason.", ["reason"], registry=registry
        )
        self.m_heartbeats = MetricCounter(
            "emostream_subscriber_heartbeats", "Heartbeats written to the membership topic.", registry=registry
        )

    # ----------------------------------------------------------------- viewers

    def _on_connect(self, auth: Any = None) -> None:
        if self.status != UP:
            self.m_refused.labels("stopping").inc()
            raise ConnectionRefusedError("the subscriber node is stopping; register again")
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = verify_token(self.settings.secret, token, self.subscriber_id)
        except InvalidMessage as error:
            self.m_refused.labels(REFUSAL_REASONS.get(str(error), "invalid")).inc()
            raise ConnectionRefusedError(str(error)) from None
        try:
            since = parse_since(auth)
        except InvalidSince as error:
            self.m_refused.labels("bad_since").inc()
            raise ConnectionRefusedError(str(error)) from None
        digest = token_digest(token)
        if digest in self._revoked:
            self.m_refused.labels("revoked").inc()
            raise ConnectionRefusedError("the token was given back (unregistered); register again")
        sid = request.sid
        self._viewers[sid] = (claims.client_id, claims.event_id, digest)
        self._sids_by_token.setdefault(digest, set()).add(sid)
        self._events[claims.event_id] += 1
        self.m_connects.inc()
        if self._events[claims.event_id] == 1:
            # The main publisher routes by the events in heartbeats: tell it now, not in 2 s.
            self._announce.set()
            self.catchup.watch_started(claims.event_id)
        # Its windows first, then the room: after this handler returns and the client is told it is in.
        self.catchup.admit(sid, claims.event_id, since)

    def _on_disconnect(self, reason: Any = None) -> None:
        viewer = self._viewers.pop(request.sid, None)
        if viewer is None:
            return
        _, event_id, digest = viewer
        sids = self._sids_by_token.get(digest)
        if sids is not None:
            sids.discard(request.sid)
            if not sids:
                del self._sids_by_token[digest]
        self._events[event_id] -= 1
        if self._events[event_id] <= 0:
            del self._events[event_id]

    def _on_disconnect_client(self, message: dict[str, Any]) -> None:
        """Registration gave this token back: refuse it from now on and drop its connections."""
        if message.get("subscriber_id") != self.subscriber_id:
            return
        digest = str(message.get("token_digest", ""))
        expires_at = int(message.get("expires_at") or 0)
        now = time.time()
        if expires_at > now:
            self._revoked[digest] = expires_at
        for old, until in list(self._revoked.items()):
            if until <= now:
                del self._revoked[old]
        for sid in list(self._sids_by_token.get(digest, ())):
            self.socketio.server.disconnect(sid, namespace=NAMESPACE, ignore_queue=True)

    @property
    def connections(self) -> int:
        return len(self._viewers)

    # ----------------------------------------------------------------- membership

    def heartbeat(self) -> NodeState:
        return NodeState(
            subscriber_id=self.subscriber_id,
            cluster=self.cluster,
            url=self.url or "",
            connections=len(self._viewers),
            capacity=self.settings.subscriber_capacity,
            heartbeat_at=now_ms(),
            status=self.status,
            events=dict(self._events),
            started_at=self.started_at,
            pid=os.getpid(),
        )

    def _send_heartbeat(self) -> None:
        future = self.producer.send(
            self.settings.membership_topic, key=self.subscriber_id, value=self.heartbeat().record()
        )
        future.add_errback(lambda error: log.warning("heartbeat of %s failed: %s", self.subscriber_id, error))
        self.m_heartbeats.inc()

    def _heartbeat_loop(self) -> None:
        while self.status == UP:
            try:
                self._send_heartbeat()
            except Exception:  # a broker hiccup must not end the heartbeats
                log.exception("could not send the heartbeat of %s", self.subscriber_id)
            if self._announce.wait(self.settings.heartbeat_seconds):
                gevent.sleep(ANNOUNCE_DEBOUNCE_SECONDS)
            self._announce.clear()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Listen on the channel, open the port, join the membership; return the viewers' URL."""
        # Position the channel consumer before the first heartbeat: once the node is in
        # the membership, everything published to its cluster reaches it.
        self.channel.position_at_end()
        server = self.socketio.server
        if not server.manager_initialized:
            server.manager_initialized = True
            self.channel.initialize()  # starts the channel listener task
        self._wsgi = NoDelayWSGIServer(
            (self.settings.subscriber_host, self.requested_port),
            self.app,
            handler_class=WebSocketHandler,
            log=None,
            backlog=4096,
        )
        self._wsgi.start()
        self.port = self._wsgi.server_port
        self.url = f"http://{self.settings.public_host}:{self.port}"
        self.status = UP
        self._heartbeats = gevent.spawn(self._heartbeat_loop)
        log.info("subscriber %s (cluster %d) serves viewers at %s", self.subscriber_id, self.cluster, self.url)
        return self.url

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        """Leave cleanly: say "stopping", hand the viewers back, write the tombstone, close."""
        if self.status == STOPPING:
            return
        was_up = self.status == UP
        self.status = STOPPING
        self._stopped.set()
        try:
            if was_up:
                self._send_heartbeat()  # registration stops assigning viewers here at once
            for sid in list(self._viewers):
                # The viewers see a server disconnect and re-register elsewhere.
                self.socketio.server.disconnect(sid, namespace=NAMESPACE, ignore_queue=True)
            self.producer.send(self.settings.membership_topic, key=self.subscriber_id, value=None)
            self.producer.flush(timeout=10)
        except Exception:
            log.exception("leaving the membership cleanly failed for %s", self.subscriber_id)
        if self._wsgi is not None:
            self._wsgi.stop(timeout=2)
        self.catchup.close()
        self.channel.close()
        self.producer.close(timeout=5)
        log.info("subscriber %s stopped", self.subscriber_id)


def serve(settings: Settings, subscriber_id: str, cluster: int, port: int | None = None) -> None:
    """Run one node until SIGTERM or SIGINT, then leave cleanly."""
    import signal

    from emostream.fanout.ops import ensure_fanout_topics, raise_open_files_limit

    settings.require_secret_for(settings.subscriber_host, f"subscriber {subscriber_id}")
    raise_open_files_limit()
    ensure_fanout_topics(settings)
    node = SubscriberNode(settings, subscriber_id, cluster, port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, node.request_stop)
    node.start()
    tune_gc()
    node.wait()
    node.stop()


def main(argv: list[str] | None = None) -> int:
    """``emostream-subscriber --id c0-s1 --cluster 0 --port 5003``: one node until SIGTERM or Ctrl-C."""
    import argparse

    from emostream import logs
    from emostream.fanout.ops import require_gevent_patch

    parser = argparse.ArgumentParser(description="EmoStream subscriber node")
    parser.add_argument("--cluster", type=int, default=0, help="cluster of this node (default 0)")
    parser.add_argument("--id", dest="subscriber_id", help="subscriber id like c0-s1 (default c<cluster>-s0)")
    parser.add_argument("--port", type=int, default=None, help="port; 0 picks a free one")
    args = parser.parse_args(argv)
    require_gevent_patch("emostream.fanout.node")

    settings = Settings.from_env().for_kafka_service("node")
    logs.configure(settings)
    serve(settings, args.subscriber_id or f"c{args.cluster}-s0", args.cluster, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The registration API: which subscriber node a viewer connects to, with a signed token.

``POST /register {"client_id"?, "event_id"?}`` answers the least-loaded live node
and a token naming the client, its event and that node, signed with the
configured secret and expiring after ``token_ttl_seconds``. ``POST /unregister
{"client_id", "token"}`` gives the slot back; the node then refuses that token and
drops its connection. ``GET /subscribers`` shows the membership and load.

The membership is read from the heartbeat topic in the background, so a restarted
registration service knows the nodes at once. The viewer page mounts on this app
as an extra blueprint (``create_app(settings, blueprints=[...])``).
"""

from __future__ import annotations

if __name__ == "__main__":
    # Run as a program: gevent patches the standard library before anything imports it.
    from gevent import monkey

    monkey.patch_all()

import abc
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge
from werkzeug.exceptions import BadRequest, Forbidden, ServiceUnavailable, Unauthorized

from emostream import kafka
from emostream.fanout.manager import LoadBalancer, NoLiveSubscriber
from emostream.fanout.membership import Membership, MembershipWatcher, parse_subscriber_id, summary
from emostream.fanout.socketio_kafka import DISCONNECT_CLIENT, KafkaClientManager, token_digest
from emostream.http import STARTING, Health, install_json_errors, json_body, metrics_response
from emostream.settings import Settings
from emostream.wire import (
    CLIENT_ID_RE,
    DEFAULT_EVENT_ID,
    EVENT_ID_RE,
    InvalidMessage,
    TokenClaims,
    issue_token,
    verify_token,
)

# Named, not __name__: run with python -m, this module is __main__.
log = logging.getLogger("emostream.fanout.registration")

MAX_BODY_BYTES = 4096
EXTENSION = "emostream.registration"


class ViewerControl(abc.ABC):
    """Tells subscriber nodes about given-back tokens."""

    @abc.abstractmethod
    def revoke(self, claims: TokenClaims, token: str) -> None:
        """The node named in ``claims`` must refuse ``token`` and drop its connection."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class ChannelControl(ViewerControl):
    """Revocations through the cluster's Socket.IO channel (a control message every node reads)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.producer = kafka.producer(settings, linger_ms=0)
        self._channels: dict[int, KafkaClientManager] = {}

    def revoke(self, claims: TokenClaims, token: str) -> None:
        cluster = parse_subscriber_id(claims.subscriber_id)[0]
        if not 0 <= cluster < self.settings.clusters:
            return
        channel = self._channels.get(cluster)
        if channel is None:
            channel = KafkaClientManager(
                self.settings, kafka.channel_topic(self.settings, cluster), write_only=True, producer=self.producer
            )
            self._channels[cluster] = channel
        channel.publish_control(
            DISCONNECT_CLIENT,
            subscriber_id=claims.subscriber_id,
            client_id=claims.client_id,
            token_digest=token_digest(token),
            expires_at=claims.expires_at,
        )

    def close(self) -> None:
        self.producer.flush(timeout=5)
        self.producer.close(timeout=5)


class Registration:
    """What the routes share: membership, balancer, token settings, metrics."""

    def __init__(
        self,
        settings: Settings,
        membership: Membership | None,
        control: ViewerControl | None,
    ):
        self.settings = settings
        self.watcher: MembershipWatcher | None = None
        if membership is None:
            self.watcher = MembershipWatcher(settings).start()
            membership = self.watcher.membership
        self.membership = membership
        self.control = control if control is not None else ChannelControl(settings)
        self.balancer = LoadBalancer(membership, grace_seconds=settings.heartbeat_seconds)
        self.registry = CollectorRegistry()
        self.m_registered = Counter(
            "emostream_registrations", "Viewers assigned to a node, by cluster.", ["cluster"], registry=self.registry
        )
        self.m_unregistered = Counter("emostream_unregistrations", "Slots given back.", registry=self.registry)
        self.m_refused = Counter(
            "emostream_registration_refused", "Requests refused, by reason.", ["reason"], registry=self.registry
        )
        Gauge("emostream_registration_live_nodes", "Live subscriber nodes.", registry=self.registry).set_function(
            lambda: len(self.membership.live())
        )

    @property
    def ready(self) -> bool:
        return self.watcher is None or self.watcher.ready


def _state() -> Registration:
    return current_app.extensions[EXTENSION]


def _body_object() -> Mapping[str, Any]:
    """The JSON object of the request; an empty body counts as ``{}``."""
    if not request.content_length and not request.get_data(cache=True):
        return {}
    body = json_body(MAX_BODY_BYTES)
    if not isinstance(body, Mapping):
        raise BadRequest("the body must be a JSON object")
    return body


def _check_fields(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(map(str, unknown))[:200]}")


api = Blueprint("registration", __name__)


@api.post("/register")
def register():
    state = _state()
    try:
        body = _body_object()
        _check_fields(body, ("client_id", "event_id"))
        client_id = body.get("client_id")
        if client_id is None:
            client_id = uuid.uuid4().hex
        elif not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
            raise BadRequest("client_id must be 1-64 characters of letters, digits and _ . : @ -")
        event_id = body.get("event_id", DEFAULT_EVENT_ID)
        if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
            raise BadRequest("event_id must be 1-64 characters of letters, digits and _ . -")
    except BadRequest:
        state.m_refused.labels("bad_request").inc()
        raise
    if not state.ready:
        state.m_refused.labels("starting").inc()
        raise _unavailable("registration is still loading the membership; try again shortly")
    try:
        assignment = state.balancer.assign(client_id, event_id)
    except NoLiveSubscriber as error:
        state.m_refused.labels("no_subscriber").inc()
        raise _unavailable(str(error)) from None
    node = assignment.node
    expires_at = int(time.time()) + state.settings.token_ttl_seconds
    token = issue_token(state.settings.secret, TokenClaims(client_id, event_id, node.subscriber_id, expires_at))
    state.m_registered.labels(str(node.cluster)).inc()
    return {
        "client_id": client_id,
        "event_id": event_id,
        "cluster": node.cluster,
        "subscriber": node.subscriber_id,
        "url": node.url,
        "token": token,
        "expires_at": expires_at,
    }


@api.post("/unregister")
def unregister():
    state = _state()
    try:
        body = _body_object()
        _check_fields(body, ("client_id", "token"))
        client_id, token = body.get("client_id"), body.get("token")
        if not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
            raise BadRequest("client_id is required: 1-64 characters of letters, digits and _ . : @ -")
        if not isinstance(token, str) or not token:
            raise BadRequest("token is required")
    except BadRequest:
        state.m_refused.labels("bad_request").inc()
        raise
    try:
        claims = verify_token(state.settings.secret, token)
    except InvalidMessage as error:
        state.m_refused.labels("bad_token").inc()
        raise Unauthorized(str(error)) from None
    if claims.client_id != client_id:
        state.m_refused.labels("not_yours").inc()
        raise Forbidden("the token belongs to another client")
    state.balancer.release(client_id)
    state.control.revoke(claims, token)
    state.m_unregistered.inc()
    return {"unregistered": client_id, "subscriber": claims.subscriber_id}


@api.get("/subscribers")
def subscribers():
    state = _state()
    view = summary(state.membership.nodes(), state.membership)
    view["pending"] = state.balancer.pending()
    view["membership_ready"] = state.ready
    return view


@api.get("/healthz")
def healthz():
    state = _state()
    live = len(state.membership.live())
    return Health.of(state.ready, STARTING, live_nodes=live, membership_ready=state.ready).response()


@api.get("/metrics")
def metrics():
    return metrics_response(_state().registry)


def _unavailable(message: str) -> ServiceUnavailable:
    return ServiceUnavailable(message, retry_after=1)


def create_app(
    settings: Settings,
    blueprints: Iterable[Blueprint] = (),
    *,
    membership: Membership | None = None,
    control: ViewerControl | None = None,
) -> Flask:
    """The registration app. Without ``membership`` it follows the heartbeat topic itself;
    without ``control`` it sends revocations through the cluster channels."""
    app = Flask("registration")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    install_json_errors(app)
    app.extensions[EXTENSION] = Registration(settings, membership, control)
    app.register_blueprint(api)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    return app


def serve(settings: Settings) -> None:
    """Serve the app with gevent's WSGI server until SIGTERM/SIGINT (the caller monkey-patched)."""
    import signal

    import gevent
    from gevent.pywsgi import WSGIServer

    from emostream.fanout.ops import ensure_fanout_topics
    from emostream.webui import blueprint as web_blueprint

    settings.require_secret_for(settings.registration_host, "registration")
    ensure_fanout_topics(settings)
    # The registration service is the front door: it also serves the viewer page and dashboard.
    app = create_app(settings, blueprints=[web_blueprint(settings)])
    server = WSGIServer((settings.registration_host, settings.registration_port), app, log=None, backlog=2048)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, server.stop)
    server.start()
    log.info("registration serves at http://%s:%d", settings.registration_host, server.server_port)
    server.serve_forever()
    app.extensions[EXTENSION].control.close()
    log.info("registration stopped")


def main(argv: list[str] | None = None) -> int:
    """``emostream-registration``: serve until SIGTERM or Ctrl-C."""
    import argparse

    from emostream import logs
    from emostream.fanout.ops import require_gevent_patch

    parser = argparse.ArgumentParser(
        description="EmoStream registration service: POST /register, POST /unregister, GET /subscribers"
    )
    parser.parse_args(argv)
    require_gevent_patch("emostream.fanout.registration")

    settings = Settings.from_env().for_kafka_service("registration")
    logs.configure(settings)
    serve(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

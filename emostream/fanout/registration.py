"""The registration API: which subscriber node a viewer connects to, with a signed token.

``POST /register {"client_id"?, "event_id"?}`` answers the least-loaded live node
and a token naming the client, its event and that node, signed with the
configured secret and expiring after ``token_ttl_seconds``, and beside it a
``send_token``: the right to send emoji to ingest as that client in that event, for
as long. ``POST /unregister {"client_id", "token"}`` gives the slot back; the node
then refuses that token and drops its connection, and ingest refuses every send
credential of that client and event issued until then (a record on the revocation
topic). ``GET /subscribers`` shows the membership and load. Registrations are
limited per source address (:mod:`emostream.sources`).

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
from werkzeug.exceptions import BadRequest, Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized

from emostream import kafka
from emostream.fanout.manager import LoadBalancer, NoLiveSubscriber
from emostream.fanout.membership import Membership, MembershipWatcher, parse_subscriber_id, summary
from emostream.fanout.socketio_kafka import DISCONNECT_CLIENT, KafkaClientManager, token_digest
from emostream.http import STARTING, Health, install_json_errors, json_body, metrics_response
from emostream.ingest.ratelimit import RateLimiter, retry_after_header
from emostream.settings import Settings
from emostream.sources import SourcePolicy
from emostream.wire import (
    CLIENT_ID_RE,
    DEFAULT_EVENT_ID,
    EVENT_ID_RE,
    InvalidMessage,
    SendClaims,
    TokenClaims,
    issue_send_token,
    issue_token,
    now_ms,
    revocation_key,
    revocation_record,
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

    @abc.abstractmethod
    def revoke_sender(self, client_id: str, event_id: str, revoked_at: int, until: int) -> None:
        """Ingest must refuse every send credential of the client and event issued up to ``revoked_at``
        (ms); raises :class:`emostream.kafka.KafkaError` when that could not be recorded."""

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

    def revoke_sender(self, client_id: str, event_id: str, revoked_at: int, until: int) -> None:
        # Acknowledged before /unregister answers: a 200 means every ingest worker will read it.
        with kafka.translate_errors():
            self.producer.send(
                self.settings.revocation_topic,
                key=revocation_key(client_id, event_id),
                value=revocation_record(client_id, event_id, revoked_at, until),
            ).get(timeout=10)

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
        self.source_limiter = RateLimiter(settings.registrations_per_source, settings.registration_burst_per_source)
        self.sources = SourcePolicy.of(settings)
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
    source = state.sources.of_environ(request.environ)
    if source is not None:
        wait = state.source_limiter.acquire({source: 1})
        if wait:
            state.m_refused.labels("source_rate_limited").inc()
            raise TooManyRequests(
                f"too many registrations from one address (limit {state.source_limiter.rate:g}/s, "
                f"burst {state.source_limiter.burst:g})",
                retry_after=int(retry_after_header(wait)),
            )
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
    send_token = issue_send_token(state.settings.secret, SendClaims(client_id, event_id, now_ms(), expires_at))
    state.m_registered.labels(str(node.cluster)).inc()
    return {
        "client_id": client_id,
        "event_id": event_id,
        "cluster": node.cluster,
        "subscriber": node.subscriber_id,
        "url": node.url,
        "token": token,
        "expires_at": expires_at,
        # Authorization: Bearer <send_token> on POST /emoji(s), until expires_at as well.
        "send_token": send_token,
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
    try:
        # Every send credential of this client and event issued so far: they all expire by then.
        until = int(time.time()) + state.settings.token_ttl_seconds
        state.control.revoke_sender(claims.client_id, claims.event_id, now_ms(), until)
    except kafka.KafkaError as error:
        state.m_refused.labels("revocation_unrecorded").inc()
        log.warning("could not record the revocation of %s's send credential: %s", client_id, error)
        raise _unavailable("could not record the revocation of the send credential; try again") from None
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

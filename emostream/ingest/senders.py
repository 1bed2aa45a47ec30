"""Who may send: send credentials and their revocations.

A send credential (:func:`emostream.wire.issue_send_token`, returned by ``POST /register``)
names a client, an event and an expiry. :class:`SenderAuth` checks one per request: a
credential seen before is found in a bounded per-worker cache, so the HMAC runs once per
credential and worker rather than once per request; its expiry and revocation are still
checked every time.

Revocations come from the compacted revocation topic, which registration writes on
``POST /unregister``. :class:`RevocationFollower` reads it from the beginning in the
background (a greenlet under the gevent worker: kafka-python's sockets are patched, so
it never blocks the event loop) and keeps each client and event's latest revocation until
every credential it covers has expired. Until the follower has caught up, or while Kafka
is unreachable, ingest keeps accepting genuine, unexpired credentials: a live event must not
stop taking emoji because Kafka blinked, and a revocation is honoured as soon as it is read.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from emostream import kafka
from emostream.settings import Settings
from emostream.wire import (
    InvalidMessage,
    SendClaims,
    read_send_token,
    revocation_key,
    validate_revocation,
)

log = logging.getLogger(__name__)

# Verified credentials a worker remembers; beyond this the oldest are forgotten (and verified again).
CACHE_ENTRIES = 65_536
# How often the follower drops revocations whose credentials have all expired (seconds).
PRUNE_EVERY = 30.0


class Unauthorized(Exception):
    """No usable credential: ``reason`` labels the rejected-requests metric."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Revocations:
    """The latest revocation of each client and event: ``revoked_at`` (ms) and ``until`` (s)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int]] = {}

    def apply(self, record: Any) -> None:
        revocation = validate_revocation(record)
        key = revocation_key(revocation["client_id"], revocation["event_id"])
        held = self._entries.get(key)
        if held is None or revocation["revoked_at"] >= held[0]:
            self._entries[key] = (revocation["revoked_at"], revocation["until"])

    def revoked(self, claims: SendClaims, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and claims.issued_at <= entry[0]

    def prune(self, now: float) -> int:
        expired = [key for key, (_, until) in self._entries.items() if until < now]
        for key in expired:
            del self._entries[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._entries)


class SenderAuth:
    """Checks ``Authorization: Bearer <send_token>`` against the secret, the clock and the revocations."""

    def __init__(self, secret: bytes, revocations: Revocations, cache_entries: int = CACHE_ENTRIES):
        self.secret = secret
        self.revocations = revocations
        self.cache_entries = cache_entries
        self._cache: dict[str, tuple[SendClaims, str]] = {}

    def verify(self, authorization: str | None, now: float | None = None) -> SendClaims:
        """The claims of the request's credential, or :class:`Unauthorized` saying why not."""
        if not authorization:
            raise Unauthorized("no_credential", "send with Authorization: Bearer <send_token> from POST /register")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise Unauthorized("bad_credential", "the Authorization header must be: Bearer <send_token>")
        cached = self._cache.get(token)
        if cached is None:
            try:
                claims = read_send_token(self.secret, token)
            except InvalidMessage:
                raise Unauthorized("bad_credential", "the send credential is not valid") from None
            cached = (claims, revocation_key(claims.client_id, claims.event_id))
            if len(self._cache) >= self.cache_entries:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[token] = cached
        claims, key = cached
        if claims.expires_at < (time.time() if now is None else now):
            raise Unauthorized("expired_credential", "the send credential has expired; register again")
        if self.revocations.revoked(claims, key):
            raise Unauthorized("revoked_credential", "the send credential was given back; register again")
        return claims

    def cached(self) -> int:
        return len(self._cache)


class RevocationFollower:
    """Reads the revocation topic from its beginning into :class:`Revocations`, in the background."""

    def __init__(self, settings: Settings, revocations: Revocations):
        self.settings = settings
        self.revocations = revocations
        self.state = "starting"  # starting → loading → following; reconnecting after an error
        self.read = 0
        self.latest_revoked_at = 0  # the newest revocation read (epoch ms)
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = time.monotonic()

    @property
    def caught_up(self) -> bool:
        """True once the follower has read what the topic held when it (re)started."""
        return self._caught_up.is_set()

    def start(self) -> RevocationFollower:
        self._thread = threading.Thread(target=self._run, name="revocation-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {
            "topic": self.settings.revocation_topic,
            "state": self.state,
            "caught_up": self.caught_up,
            "revoked": len(self.revocations),
            "latest_revoked_at": self.latest_revoked_at,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with kafka.translate_errors():
                    self._follow()
            except kafka.KafkaError as error:
                self.state = "reconnecting"
                log.warning("revocation follower: %s; reconnecting", error)
                self._stop.wait(1.0)
            except Exception:
                self.state = "reconnecting"
                log.exception("revocation follower failed; restarting it")
                self._stop.wait(1.0)

    def _follow(self) -> None:
        # Long polls: a revocation arrives with the fetch waiting for it, and an idle worker wakes seldom.
        consumer = kafka.consumer(
            self.settings, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=kafka.LONG_FETCH_WAIT_MS
        )
        try:
            self.state = "loading"
            # From the beginning again after every reconnect: the topic is compacted and small.
            backlog_end = kafka.assign_at_beginning(consumer, self.settings.revocation_topic)
            while not self._stop.is_set():
                # Before a poll too: an empty topic is loaded at once, not after a long poll.
                if not self.caught_up and kafka.caught_up(consumer, backlog_end):
                    self._caught_up.set()
                    log.info("revocations loaded: %d in force", len(self.revocations))
                if self.caught_up:
                    self.state = "following"
                for records in kafka.poll(consumer, kafka.LONG_POLL_MS).values():
                    for record in records:
                        self._apply(record.value)
                if time.monotonic() - self._last_prune > PRUNE_EVERY:
                    self._last_prune = time.monotonic()
                    self.revocations.prune(time.time())
        finally:
            consumer.close()

    def _apply(self, value: Any) -> None:
        try:
            self.revocations.apply(value)
            self.read += 1
            self.latest_revoked_at = max(self.latest_revoked_at, value["revoked_at"])
        except InvalidMessage as error:
            log.warning("revocation follower: skipping a record: %s", error)

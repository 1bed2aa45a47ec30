"""EmoStream's wire formats and their validation: emoji event, aggregate, viewer token.

Transport lives in :mod:`emostream.kafka`; this module only says what a valid
message is. Times are integer epoch milliseconds (UTC).
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

DEFAULT_EVENT_ID = "live"
# Ids are always matched whole (fullmatch, or java_full_match in Spark): a "$" anchor would also
# accept a trailing newline.
USER_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
# event_id is part of the aggregate key "event_id|window_start", so no "|".
EVENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CLIENT_ID_RE = USER_ID_RE


def java_full_match(pattern: re.Pattern[str]) -> str:
    """``pattern`` for Java's regex engine (Spark's rlike, which finds), matching whole strings only."""
    return rf"\A(?:{pattern.pattern})\z"


class InvalidMessage(ValueError):
    """A message that breaks the contract; ``str()`` says what is wrong."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- emoji event


@dataclass(frozen=True)
class EmojiEvent:
    user_id: str
    emoji_type: str
    timestamp: int
    event_id: str
    received_at: int

    def record(self) -> dict[str, Any]:
        """The JSON record written to ``emoji_topic``."""
        return {
            "user_id": self.user_id,
            "emoji_type": self.emoji_type,
            "timestamp": self.timestamp,
            "event_id": self.event_id,
            "received_at": self.received_at,
        }

    def record_json(self) -> bytes:
        """:meth:`record` as JSON bytes (what ingest writes), formatted without a general encoder.

        Only for events from :func:`validate_event`: their ids match ``USER_ID_RE`` and
        ``EVENT_ID_RE`` (nothing to escape), their times are integers, and the emoji is
        encoded by ``json``. A fraction of what ``json.dumps`` of the dict costs, paid per emoji on
        the ingest's hot path.
        """
        return b'{"user_id":"%s","emoji_type":%s,"timestamp":%d,"event_id":"%s","received_at":%d}' % (
            self.user_id.encode(),
            _json_string(self.emoji_type),
            self.timestamp,
            self.event_id.encode(),
            self.received_at,
        )

    @property
    def key(self) -> str:
        """Kafka key: one user's emoji stay in one partition, in order."""
        return f"{self.event_id}|{self.user_id}"


@functools.lru_cache(maxsize=256)
def _json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def parse_timestamp(value: Any) -> int:
    """Epoch milliseconds from an int or an ISO-8601 string."""
    if isinstance(value, bool):
        raise InvalidMessage("timestamp must be epoch milliseconds or an ISO-8601 string, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidMessage(f"timestamp {value[:40]!r} is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    raise InvalidMessage("timestamp must be epoch milliseconds (integer) or an ISO-8601 string")


def validate_event(
    payload: Any,
    emoji_types: frozenset[str] | tuple[str, ...],
    received_at: int,
    skew_ms: int,
) -> EmojiEvent:
    """Check one client event against the contract and stamp ``received_at``."""
    if not isinstance(payload, Mapping):
        raise InvalidMessage("an emoji event must be a JSON object")
    missing = [name for name in ("user_id", "emoji_type", "timestamp") if name not in payload]
    if missing:
        raise InvalidMessage(f"missing field(s): {', '.join(missing)}")
    user_id = payload["user_id"]
    # fullmatch, not match: "$" also matches before a trailing newline.
    if not isinstance(user_id, str) or not USER_ID_RE.fullmatch(user_id):
        raise InvalidMessage("user_id must be 1-64 characters of letters, digits and _ . : @ -")
    emoji_type = payload["emoji_type"]
    if not isinstance(emoji_type, str) or emoji_type not in emoji_types:
        raise InvalidMessage(f"emoji_type must be one of {' '.join(emoji_types)}")
    event_id = payload.get("event_id", DEFAULT_EVENT_ID)
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise InvalidMessage("event_id must be 1-64 characters of letters, digits and _ . -")
    timestamp = parse_timestamp(payload["timestamp"])
    if abs(timestamp - received_at) > skew_ms:
        raise InvalidMessage(f"timestamp is more than {skew_ms // 1000} s away from server time")
    return EmojiEvent(user_id, emoji_type, timestamp, event_id, received_at)


# --------------------------------------------------------------------------- aggregate

# The Socket.IO event that carries an aggregate to a viewer.
EMOJI_UPDATE = "emoji_update"


def scaled_count(count: int, unit: int = 1000) -> int:
    """The course rule: every started ``unit`` of one emoji counts as one (1..1000 → 1)."""
    return math.ceil(count / unit) if count > 0 else 0


def aggregate_key(event_id: str, window_start: int) -> str:
    return f"{event_id}|{window_start}"


def aggregate_version(record: Mapping[str, Any]) -> tuple[int, int]:
    """What orders two records of one window: counts only grow, so ``total``, then ``emitted_at``.

    Records are cumulative per key: of two records of a window the one with the higher version
    is its count, and a record no higher than one already held is a repeat.
    """
    emitted_at = record.get("emitted_at")
    return record["total"], emitted_at if isinstance(emitted_at, int) and not isinstance(emitted_at, bool) else 0


def make_aggregate(
    event_id: str,
    window_start: int,
    window_end: int,
    counts: Mapping[str, int],
    emitted_at: int | None = None,
    unit: int = 1000,
) -> dict[str, Any]:
    counts = {emoji: int(n) for emoji, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0}
    return {
        "event_id": event_id,
        "window_start": int(window_start),
        "window_end": int(window_end),
        "counts": counts,
        "scaled": {emoji: scaled_count(n, unit) for emoji, n in counts.items()},
        "total": sum(counts.values()),
        "emitted_at": now_ms() if emitted_at is None else int(emitted_at),
    }


def validate_aggregate(payload: Any) -> dict[str, Any]:
    """Check an aggregate read from Kafka before it is routed to viewers."""
    if not isinstance(payload, Mapping):
        raise InvalidMessage("an aggregate must be a JSON object")
    for name in ("event_id", "window_start", "window_end", "counts", "total"):
        if name not in payload:
            raise InvalidMessage(f"aggregate is missing {name}")
    if not isinstance(payload["event_id"], str) or not EVENT_ID_RE.fullmatch(payload["event_id"]):
        raise InvalidMessage("aggregate has an invalid event_id")
    for name in ("window_start", "window_end", "total"):
        if not isinstance(payload[name], int) or isinstance(payload[name], bool):
            raise InvalidMessage(f"aggregate {name} must be an integer")
    if not isinstance(payload["counts"], Mapping):
        raise InvalidMessage("aggregate counts must be an object")
    return dict(payload)


# --------------------------------------------------------------------------- viewer token

TOKEN_SALT = "emostream-viewer-token"


@dataclass(frozen=True)
class TokenClaims:
    client_id: str
    event_id: str
    subscriber_id: str
    expires_at: int  # epoch seconds


def issue_token(secret: bytes, claims: TokenClaims) -> str:
    """An HMAC-signed token that names the client, its event and its subscriber node."""
    serializer = URLSafeSerializer(secret, salt=TOKEN_SALT)
    return serializer.dumps(
        {"c": claims.client_id, "e": claims.event_id, "s": claims.subscriber_id, "x": claims.expires_at}
    )


def verify_token(secret: bytes, token: Any, subscriber_id: str | None = None, now: float | None = None) -> TokenClaims:
    """The claims of a valid token; :class:`InvalidMessage` when forged, expired or for another node."""
    if not isinstance(token, str) or not token or len(token) > 1024:
        raise InvalidMessage("a token is required")
    try:
        body = URLSafeSerializer(secret, salt=TOKEN_SALT).loads(token)
        claims = TokenClaims(str(body["c"]), str(body["e"]), str(body["s"]), int(body["x"]))
    except (BadSignature, KeyError, TypeError, ValueError):
        raise InvalidMessage("the token is not valid") from None
    if claims.expires_at < (time.time() if now is None else now):
        raise InvalidMessage("the token has expired")
    if subscriber_id is not None and claims.subscriber_id != subscriber_id:
        raise InvalidMessage("the token is for another subscriber node")
    return claims


# --------------------------------------------------------------------------- send credential

# Its own salt: a viewer token is never a send credential, nor the other way round.
SEND_TOKEN_SALT = "emostream-send-token"


@dataclass(frozen=True)
class SendClaims:
    """The right to send emoji as ``client_id`` in ``event_id`` until ``expires_at``."""

    client_id: str
    event_id: str
    issued_at: int  # epoch milliseconds: a revocation covers every credential issued up to it
    expires_at: int  # epoch seconds


def issue_send_token(secret: bytes, claims: SendClaims) -> str:
    """An HMAC-signed send credential, taken by ingest as ``Authorization: Bearer <send_token>``."""
    serializer = URLSafeSerializer(secret, salt=SEND_TOKEN_SALT)
    return serializer.dumps(
        {"c": claims.client_id, "e": claims.event_id, "i": claims.issued_at, "x": claims.expires_at}
    )


def verify_send_token(secret: bytes, token: Any, now: float | None = None) -> SendClaims:
    """The claims of a genuine, unexpired send credential; :class:`InvalidMessage` otherwise."""
    claims = read_send_token(secret, token)
    if claims.expires_at < (time.time() if now is None else now):
        raise InvalidMessage("the send credential has expired")
    return claims


def read_send_token(secret: bytes, token: Any) -> SendClaims:
    """The claims of a genuine send credential, expired or not; :class:`InvalidMessage` when forged."""
    if not isinstance(token, str) or not token or len(token) > 1024:
        raise InvalidMessage("a send credential is required")
    try:
        body = URLSafeSerializer(secret, salt=SEND_TOKEN_SALT).loads(token)
        claims = SendClaims(str(body["c"]), str(body["e"]), int(body["i"]), int(body["x"]))
    except (BadSignature, KeyError, TypeError, ValueError):
        raise InvalidMessage("the send credential is not valid") from None
    if not CLIENT_ID_RE.fullmatch(claims.client_id) or not EVENT_ID_RE.fullmatch(claims.event_id):
        raise InvalidMessage("the send credential is not valid")
    return claims


def revocation_key(client_id: str, event_id: str) -> str:
    """Key of a revocation record: the latest one of a client and event is the one that counts."""
    return f"{event_id}|{client_id}"


def revocation_record(client_id: str, event_id: str, revoked_at: int, until: int) -> dict[str, Any]:
    """Every send credential of ``client_id`` in ``event_id`` issued up to ``revoked_at`` (ms) is void;
    the record matters until ``until`` (epoch seconds), when all of them have expired anyway."""
    return {"client_id": client_id, "event_id": event_id, "revoked_at": revoked_at, "until": until}


def validate_revocation(payload: Any) -> dict[str, Any]:
    """Check a revocation record read from Kafka."""
    if not isinstance(payload, Mapping):
        raise InvalidMessage("a revocation must be a JSON object")
    for name in ("client_id", "event_id"):
        if not isinstance(payload.get(name), str):
            raise InvalidMessage(f"revocation {name} must be a string")
    for name in ("revoked_at", "until"):
        value = payload.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidMessage(f"revocation {name} must be an integer")
    return dict(payload)

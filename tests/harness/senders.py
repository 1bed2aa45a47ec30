"""Send credentials for tests that post to ingest directly, signed with the test settings' secret.

Registration signs the same way (:func:`emostream.wire.issue_send_token`); a test about
registration itself gets its credentials from ``POST /register`` instead.
"""

from __future__ import annotations

import time

from emostream.settings import Settings
from emostream.wire import DEFAULT_EVENT_ID, SendClaims, issue_send_token, now_ms


def send_token(
    settings: Settings,
    user_id: str,
    event_id: str = DEFAULT_EVENT_ID,
    expires_in: float = 3600,
    issued_at: int | None = None,
    secret: bytes | None = None,
) -> str:
    claims = SendClaims(user_id, event_id, now_ms() if issued_at is None else issued_at, int(time.time() + expires_in))
    return issue_send_token(settings.secret if secret is None else secret, claims)


def send_headers(settings: Settings, user_id: str, event_id: str = DEFAULT_EVENT_ID, **options) -> dict[str, str]:
    """``Authorization: Bearer <send_token>`` for ``user_id`` in ``event_id``."""
    return {"Authorization": f"Bearer {send_token(settings, user_id, event_id, **options)}"}

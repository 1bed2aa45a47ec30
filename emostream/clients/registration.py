"""The registration service's client: ``POST /register`` and ``POST /unregister``.

One asyncio client (:class:`AsyncRegistration`, on aiohttp: the viewer and the
simulator's crowd) and one blocking client (:class:`Registration`, on requests: the
simulator's classic mode and the dashboard's probe), with the same requests and the
same errors. An assignment is the service's answer as it came:
``{"client_id", "event_id", "cluster", "subscriber", "url", "token", ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import requests

Assignment = dict[str, Any]

# Statuses that say "not now" rather than "not like this".
RETRYABLE_STATUSES = frozenset({0, 429, 502, 503, 504})


class RegistrationError(Exception):
    """Registration refused the request; ``status`` is the HTTP status (0 when unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES


def register_body(event_id: str | None = None, client_id: str | None = None) -> dict[str, str]:
    """The body of ``POST /register``: both fields are optional (the service picks defaults)."""
    body: dict[str, str] = {}
    if event_id is not None:
        body["event_id"] = event_id
    if client_id is not None:
        body["client_id"] = client_id
    return body


def unregister_body(assignment: Mapping[str, Any]) -> dict[str, Any]:
    """The body of ``POST /unregister``: the slot is given back by the token it was given with."""
    return {"client_id": assignment["client_id"], "token": assignment["token"]}


def send_headers(assignment: Mapping[str, Any]) -> dict[str, str]:
    """The headers that send emoji with the assignment's send credential; none when the
    registration handed out none (a service older than send credentials)."""
    send_token = assignment.get("send_token")
    return {"Authorization": f"Bearer {send_token}"} if isinstance(send_token, str) and send_token else {}


# What a client needs from an assignment to connect and to give the slot back.
ASSIGNMENT_FIELDS = ("client_id", "subscriber", "url", "token")


def _answer(status: int, payload: Any, reason: str | None) -> dict[str, Any]:
    if status >= 400:
        message = payload.get("error") if isinstance(payload, dict) else None
        raise RegistrationError(status, message or reason or "error")
    return payload if isinstance(payload, dict) else {}


def _assignment(answer: dict[str, Any]) -> Assignment:
    missing = [name for name in ASSIGNMENT_FIELDS if name not in answer]
    if missing:
        raise RegistrationError(200, f"the assignment lacks {', '.join(missing)}")
    return answer


class AsyncRegistration:
    """The registration client for asyncio code; thousands of viewers can share one ``session``."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def register(self, event_id: str | None = None, client_id: str | None = None) -> Assignment:
        return _assignment(await self._post("/register", register_body(event_id, client_id)))

    async def unregister(self, assignment: Mapping[str, Any]) -> None:
        await self._post("/unregister", unregister_body(assignment))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(self.url + path, json=body, timeout=self.timeout) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = None
                return _answer(response.status, payload, response.reason)
        except aiohttp.ClientError as error:
            raise RegistrationError(0, f"registration unreachable: {error}") from None


class Registration:
    """The registration client for blocking code (threads, scripts)."""

    def __init__(self, url: str, session: requests.Session | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def register(self, event_id: str | None = None, client_id: str | None = None) -> Assignment:
        return _assignment(self._post("/register", register_body(event_id, client_id)))

    def unregister(self, assignment: Mapping[str, Any], timeout: float | None = None) -> None:
        self._post("/unregister", unregister_body(assignment), timeout)

    def _post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            response = self.session.post(self.url + path, json=body, timeout=timeout or self.timeout)
        except requests.RequestException as error:
            raise RegistrationError(0, f"registration unreachable: {error}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return _answer(response.status_code, payload, response.reason)

"""The services the dashboard reads: where each answers, and one bounded GET to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from emostream.settings import Settings

FETCH_TIMEOUT_SECONDS = 1.5  # one slow service must not stall the whole dashboard


@dataclass(frozen=True)
class Service:
    name: str
    label: str
    url: str


@dataclass(frozen=True)
class Sources:
    """Base URLs of the services whose numbers the dashboard shows."""

    ingest: Service
    processor: Service
    publisher: Service
    manager: Service
    registration: Service

    @classmethod
    def from_settings(cls, settings: Settings) -> Sources:
        def local(host: str) -> str:
            # A service bound to every interface is reached on loopback from here.
            return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host

        return cls(
            ingest=Service("ingest", "Ingest", f"http://{local(settings.ingest_host)}:{settings.ingest_port}"),
            processor=Service("processor", "Processor", f"http://127.0.0.1:{settings.processor_metrics_port}"),
            publisher=Service(
                "publisher", "Main publisher", f"http://{local(settings.ops_host)}:{settings.pubsub_metrics_port}"
            ),
            manager=Service(
                "manager", "Subscriber manager", f"http://{local(settings.ops_host)}:{settings.manager_port}"
            ),
            registration=Service(
                "registration",
                "Registration",
                f"http://{local(settings.registration_host)}:{settings.registration_port}",
            ),
        )

    def all(self) -> list[Service]:
        return [self.ingest, self.processor, self.publisher, self.manager, self.registration]


@dataclass
class Fetched:
    """A service's answer: ``ok`` for a 2xx; ``status`` None when no answer came."""

    ok: bool
    status: int | None = None
    body: Any = None
    error: str | None = None


def fetch(url: str, parse: Callable[[requests.Response], Any]) -> Fetched:
    """GET ``url`` and parse its body, whatever its status; never raises for the service's failings."""
    try:
        response = requests.get(url, timeout=FETCH_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        return Fetched(False, error=short_error(error))
    try:
        body = parse(response)
    except ValueError as error:
        return Fetched(False, response.status_code, error=f"unreadable answer: {error}"[:200])
    return Fetched(response.ok, response.status_code, body, None if response.ok else f"HTTP {response.status_code}")


def short_error(error: Exception) -> str:
    """A failed request in a few words, for an operator's screen."""
    if isinstance(error, requests.Timeout):
        return "no answer in time"
    if isinstance(error, requests.ConnectionError):
        return "not reachable"
    return type(error).__name__


def json_body(response: requests.Response) -> Any:
    return response.json()


def text_body(response: requests.Response) -> str:
    return response.text

"""The pages: the viewer page (``/``), the dashboard page, their assets and their configuration.

The pages are static files in ``web/``; what they need to know about the stack (where the
ingest is, the emoji, the window) comes from ``/config.json``. Every page carries a strict
Content-Security-Policy: our own scripts only, and network access only to the ingest and
to subscriber nodes of the public host.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, jsonify, request, send_from_directory

from emostream.settings import ROOT, Settings
from emostream.webui.probe import PROBE_EVENT_ID
from emostream.wire import DEFAULT_EVENT_ID, now_ms

log = logging.getLogger(__name__)

WEB_DIR = ROOT / "web"
ASSETS_DIR = WEB_DIR / "assets"
# The Socket.IO browser client comes from npm (web/package.json), installed by bin/setup.
SOCKETIO_DIST = WEB_DIR / "node_modules" / "socket.io-client" / "dist"
SOCKETIO_FILES = frozenset({"socket.io.min.js", "socket.io.min.js.map"})

# Readable names for the default emoji: button labels and screen readers.
EMOJI_NAMES = {
    "🔥": "fire",
    "👏": "clap",
    "😂": "laugh",
    "😮": "wow",
    "😢": "sad",
    "😡": "angry",
    "\u2764\ufe0f": "love",
    "👍": "like",
    "🎉": "party",
    "🏏": "cricket",
}


def add_routes(web: Blueprint, settings: Settings) -> None:
    """``/``, ``/dashboard``, ``/config.json`` and the files the pages load."""

    @web.get("/")
    def viewer_page() -> Response:
        return _page("viewer.html", settings)

    @web.get("/dashboard")
    def dashboard_page() -> Response:
        return _page("dashboard.html", settings)

    @web.get("/web/assets/<path:name>")
    def asset(name: str) -> Response:
        response = send_from_directory(ASSETS_DIR, name, max_age=0)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @web.get("/web/vendor/<name>")
    def vendor(name: str) -> Response:
        if name not in SOCKETIO_FILES:
            abort(404)
        if not (SOCKETIO_DIST / name).is_file():
            log.error("%s is missing: run bin/setup (it installs web/package.json)", SOCKETIO_DIST / name)
            abort(503, "the Socket.IO client is not installed on the server: run bin/setup")
        return send_from_directory(SOCKETIO_DIST, name, max_age=3600)

    @web.get("/config.json")
    def config() -> Response:
        response = jsonify(page_config(settings, request.host))
        response.headers["Cache-Control"] = "no-store"
        return response


def _page(name: str, settings: Settings) -> Response:
    response = send_from_directory(WEB_DIR, name, max_age=0)
    response.headers["Content-Security-Policy"] = content_security_policy(settings, request.host)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def ingest_url(settings: Settings, page_host: str) -> str:
    """Where the browser reaches the ingest: the configured public URL, else the page's host name."""
    if settings.ingest_public_url:
        return settings.ingest_public_url.rstrip("/")
    host = urlsplit(f"//{page_host}").hostname or "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{settings.ingest_port}"


def content_security_policy(settings: Settings, page_host: str) -> str:
    """Only our own scripts; network access to the ingest and to subscriber nodes of the public host."""
    ingest = urlsplit(ingest_url(settings, page_host))
    node_host = settings.public_host
    connect = [
        "'self'",
        f"{ingest.scheme}://{ingest.netloc}",
        f"http://{node_host}:*",
        f"https://{node_host}:*",
        f"ws://{node_host}:*",
        f"wss://{node_host}:*",
    ]
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src " + " ".join(dict.fromkeys(connect)),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def page_config(settings: Settings, page_host: str) -> dict[str, Any]:
    """What the viewer page needs to know about the stack; ``server_time`` lets it correct its clock."""
    return {
        "ingest_url": ingest_url(settings, page_host),
        "emoji": [{"emoji": emoji, "name": EMOJI_NAMES.get(emoji, emoji)} for emoji in settings.emoji_types],
        "default_event": DEFAULT_EVENT_ID,
        "window_ms": settings.window_seconds * 1000,
        "settle_ms": settings.settle_ms,  # how far back a page that reconnects asks again (since)
        "scale_unit": settings.scale_unit,
        "batch_max_events": settings.batch_max_events,
        "probe_event": PROBE_EVENT_ID,
        "server_time": now_ms(),
    }

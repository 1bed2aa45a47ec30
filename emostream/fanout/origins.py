"""Which browser origins may open a viewer connection to a subscriber node.

Engine.IO checks the ``Origin`` header of every request, WebSocket included: a browser
sends it and cannot forge it, so this is what stops a page on another site from opening a
viewer connection in a visitor's browser. A request without an Origin (aiohttp, curl, most
native clients) is not a browser's and passes; so does one from the node's own origin
(``scheme://Host`` of the request itself): ``websocket-client``, under python-socketio's
synchronous client, sends exactly that. Any other origin must be listed in
``EMOSTREAM_CORS_ORIGINS`` (the viewer page's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or a trailing slash."""
    scheme, separator, rest = origin.strip().rstrip("/").lower().partition("://")
    if not separator:
        return origin
    host, colon, port = rest.rpartition(":")
    if colon and "]" not in port and port == DEFAULT_PORTS.get(scheme):
        rest = host
    return f"{scheme}://{rest}"


def request_origins(environ: Mapping[str, Any]) -> set[str]:
    """The origins a request to this server counts as same-origin: its scheme and Host, as sent or as forwarded."""
    host = environ.get("HTTP_HOST")
    if not host:
        return set()
    scheme = environ.get("wsgi.url_scheme", "http")
    origins = {normalize_origin(f"{scheme}://{host}")}
    # Behind a reverse proxy the browser's origin names the proxy (what Engine.IO's own default trusts too).
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST")
    forwarded_proto = environ.get("HTTP_X_FORWARDED_PROTO")
    if forwarded_host or forwarded_proto:
        proxy_scheme = (forwarded_proto or scheme).split(",")[0].strip()
        proxy_host = (forwarded_host or host).split(",")[0].strip()
        origins.add(normalize_origin(f"{proxy_scheme}://{proxy_host}"))
    return origins


def viewer_origin_policy(allowed: Iterable[str]) -> Callable[[str | None, Mapping[str, Any]], bool]:
    """The ``cors_allowed_origins`` callable of a node: listed origins, its own origin, and no Origin."""
    listed = frozenset(normalize_origin(origin) for origin in allowed)

    def accepts(origin: str | None, environ: Mapping[str, Any]) -> bool:
        if not origin:
            return True
        origin = normalize_origin(origin)
        return origin in listed or origin in request_origins(environ)

    return accepts

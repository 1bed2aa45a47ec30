"""The viewer page and the operator dashboard, served as one Flask blueprint.

The registration service is the stack's front door and mounts this blueprint, so a
viewer opens one address, registers on the same origin and then talks to the ingest
(CORS) and to its subscriber node (Socket.IO).

- ``pages``: the viewer page, the dashboard page, their assets and ``/config.json``;
- ``dashboard``: ``/dashboard/data.json``, gathered from the services' own ``/healthz``,
  ``/metrics`` and ``/subscribers`` (``services`` says where they answer);
- ``probe``: the dashboard's end-to-end latency, a synthetic viewer that taps and times
  the whole pipeline while someone has the dashboard open.
"""

from __future__ import annotations

from flask import Blueprint

from emostream.settings import Settings
from emostream.webui import dashboard, pages
from emostream.webui.probe import LatencyProbe
from emostream.webui.services import Sources

__all__ = ["LatencyProbe", "blueprint"]


def blueprint(settings: Settings, latency_probe: bool = True) -> Blueprint:
    """The viewer page (``/``), the dashboard (``/dashboard``) and what they load.

    With ``latency_probe`` the dashboard times the pipeline end to end with a synthetic
    viewer (:class:`LatencyProbe`) while someone has it open.
    """
    web = Blueprint("webui", __name__)
    pages.add_routes(web, settings)
    sources = Sources.from_settings(settings)
    probe = LatencyProbe(settings, sources.ingest.url, sources.registration.url) if latency_probe else None
    dashboard.add_routes(web, sources, probe)
    return web

"""Logging for every EmoStream service: one line per event worth knowing."""

from __future__ import annotations

import logging

from emostream.settings import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=FORMAT, force=True)
    # kafka-python logs every connection at INFO; only its problems are worth a line.
    for noisy in ("kafka", "py4j", "engineio", "socketio", "werkzeug", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

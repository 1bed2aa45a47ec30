"""Logging for every EmoStream service: one line per event worth knowing."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from emostream.settings import Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=FORMAT, force=True)
    # kafka-python logs every connection at INFO; only its problems are worth a line.
    for noisy in ("kafka", "py4j", "engineio", "socketio", "werkzeug", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # At DEBUG an operator is looking for trouble: the Kafka clients say everything.
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    for name, quieter in KAFKA_CLIENT_FILTERS.items():
        logger = logging.getLogger(name)
        if quiet and quieter not in logger.filters:
            logger.addFilter(quieter)
        elif not quiet:
            logger.removeFilter(quieter)


class ShortStalls(logging.Filter):
    """kafka-python's "Task ... ran for ...s ... blocking the event loop", unless the stall was long.

    The client's IO thread shares the interpreter with the service's own threads; on a busy
    machine it waits for the GIL or a core and counts that wait as its task blocking. A stall
    of ``at_least`` seconds delays heartbeats and fetches enough to matter, so it stays.
    """

    SLOW_TASK = re.compile(r"^Task .* ran for (?P<seconds>[0-9.]+)s .*blocking the event loop")

    def __init__(self, at_least: float = 1.0):
        super().__init__()
        self.at_least = at_least

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.SLOW_TASK.match(record.getMessage())
        return match is None or float(match["seconds"]) >= self.at_least


class CoordinatorMoves(logging.Filter):
    """kafka-python's "Marking the coordinator dead", once a minute per group, and not for a move.

    A broker answering NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE (the group's coordinator
    is still loading, or moved) sends the client to look it up again, which it does at once:
    that happens several times in a row after every broker start. Other causes (the
    coordinator's broker disconnected, a heartbeat session expired) say something, but one
    line a minute says it.
    """

    MOVED = frozenset({"NotCoordinatorError", "CoordinatorNotAvailableError", "CoordinatorLoadInProgressError"})

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every = every
        self.clock = clock
        self._last: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Marking the coordinator dead") or len(record.args or ()) != 3:
            return True
        _node, group, error = record.args  # type: ignore[misc]
        if type(error).__name__ in self.MOVED:
            return False
        now = self.clock()
        last = self._last.get(group)
        if last is not None and now - last < self.every:
            return False
        self._last[group] = now
        return True


# Logger name -> its filter, one instance each so configure() can run more than once.
KAFKA_CLIENT_FILTERS: dict[str, logging.Filter] = {
    "kafka.net.selector": ShortStalls(),
    "kafka.coordinator": CoordinatorMoves(),
}

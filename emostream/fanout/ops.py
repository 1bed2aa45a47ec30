"""What the fan-out services share: their topics and the open-files limit."""

from __future__ import annotations

import logging
import resource

from emostream import kafka
from emostream.fanout.socketio_kafka import channel_topics
from emostream.settings import Settings

log = logging.getLogger(__name__)


def fanout_topics(settings: Settings) -> list[kafka.TopicSpec]:
    """The topics the fan-out tier reads and writes (the pipeline's own, plus the channels)."""
    wanted = {settings.aggregate_topic, settings.membership_topic}
    wanted |= {kafka.cluster_topic(settings, cluster) for cluster in range(settings.clusters)}
    return [spec for spec in kafka.topics(settings) if spec.name in wanted] + channel_topics(settings)


def ensure_fanout_topics(settings: Settings, timeout: float = 60.0) -> None:
    """Create what is missing (idempotent, safe when several services race)."""
    kafka.ensure_topics(settings, fanout_topics(settings), timeout=timeout)


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit: one per viewer connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit to %d: %s", hard, error)
    return soft

"""What the fan-out services share: their topics, the open-files limit, the start of a gevent service."""

from __future__ import annotations

import logging
import resource

from emostream import kafka
from emostream.settings import Settings

log = logging.getLogger(__name__)


def fanout_topics(settings: Settings) -> list[kafka.TopicSpec]:
    """The topics the fan-out tier reads and writes: aggregates, membership, revocations, cluster topics
    and channels."""
    wanted = {settings.aggregate_topic, settings.membership_topic, settings.revocation_topic}
    for cluster in range(settings.clusters):
        wanted |= {kafka.cluster_topic(settings, cluster), kafka.channel_topic(settings, cluster)}
    return [spec for spec in kafka.topics(settings) if spec.name in wanted]


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


def require_gevent_patch(program: str) -> None:
    """Stop with a clear error unless gevent patched the standard library before it was imported."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        raise SystemExit(
            f"{program} must be started patched by gevent: run it as python -m {program}, "
            "as its console script or as its top-level script"
        )

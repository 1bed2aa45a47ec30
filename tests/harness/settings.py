"""Settings for tests and benches: nothing read from the caller's environment."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from emostream.settings import Settings


def isolated_settings(state: Path, **changes: Any) -> Settings:
    """Defaults only, with local state under ``state``, no Spark UI and a token secret of their own.

    Without ``kafka_bootstrap`` among ``changes`` they name no broker anyone runs: enough for
    a SparkSession or for pure logic.
    """
    fields: dict[str, Any] = {
        "state_dir": str(state),
        "checkpoint_dir": str(state / "checkpoints"),
        "spark_ui": False,
        "token_secret": "test-secret-" + uuid.uuid4().hex,
    }
    return Settings.from_env(environ={}, **{**fields, **changes})


def unique_topics(settings: Settings, tag: str | None = None) -> Settings:
    """The same settings with topic names no other test uses."""
    tag = tag or uuid.uuid4().hex[:10]
    return settings.replace(
        emoji_topic=f"emoji_topic.{tag}",
        aggregate_topic=f"aggregated_emoji_topic.{tag}",
        dead_letter_topic=f"emoji_dead_letter_topic.{tag}",
        membership_topic=f"emostream_subscribers.{tag}",
        revocation_topic=f"emostream_revoked_senders.{tag}",
        cluster_topic_prefix=f"emostream_cluster.{tag}.",
    )

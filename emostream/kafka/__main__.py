"""``python -m emostream.kafka`` (bin/kafka-create-topics): create every topic EmoStream uses; idempotent."""

from __future__ import annotations

import logging

from emostream.kafka.topic_specs import ensure_topics, topics
from emostream.settings import Settings

log = logging.getLogger("emostream.kafka")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = Settings.from_env()
    created = ensure_topics(settings)
    for spec in topics(settings):
        state = "created" if spec.name in created else "exists"
        log.info("topic %-28s %2d partition(s)  %s", spec.name, spec.partitions, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m emostream.kafka`` (bin/kafka-create-topics): create every topic EmoStream uses; idempotent.

On a secured cluster it also creates, as the admin, the SCRAM user of every service named in
the credentials file that the cluster does not know yet, and the ACLs of
:func:`emostream.kafka.security.acl_table` for them.
"""

from __future__ import annotations

import logging

from emostream.kafka.security import apply_acls, ensure_users, usernames
from emostream.kafka.topic_specs import ensure_topics, topics
from emostream.settings import Settings

log = logging.getLogger("emostream.kafka")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = Settings.from_env().for_kafka_service("admin")
    created = ensure_topics(settings)
    for spec in topics(settings):
        state = "created" if spec.name in created else "exists"
        log.info("topic %-28s %2d partition(s)  %s", spec.name, spec.partitions, state)
    if settings.kafka_secured and settings.kafka_credentials_file:
        added = ensure_users(settings)
        users = usernames(settings.kafka_credentials_file)
        count = apply_acls(settings, users)
        log.info(
            "security: %d SCRAM user(s) created, %d ACLs for %s in place",
            len(added),
            count,
            ", ".join(sorted(users.values())),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Kafka security settings for the command line.

    python -m emostream.kafka.security_cli client-properties   # write the tools' properties file, print its path
    python -m emostream.kafka.security_cli acls                 # the ACL table of a secured cluster, as Markdown

``bin/_kafka-tool`` runs the first before each console tool on a secured cluster.
"""

from __future__ import annotations

import argparse
import sys

from emostream.kafka.security import acl_markdown, tools_properties_path, write_client_properties
from emostream.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emostream.kafka.security_cli", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["client-properties", "acls"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "acls":
        sys.stdout.write(acl_markdown(settings) + "\n")
        return 0
    resolved = settings.for_kafka_service("admin")
    if not resolved.kafka_secured:
        return 0  # nothing to write: the tools connect in plaintext
    sys.stdout.write(str(write_client_properties(resolved, tools_properties_path(settings))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

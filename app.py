"""Ingest: accepts emoji over HTTP and sends them to Kafka's emoji_topic in 500 ms batches.

    python3 app.py                              # http://127.0.0.1:5000, settings from EMOSTREAM_*
    python3 app.py --dev                        # Flask's development server (one process)

POST /emoji, POST /emojis, GET /emoji-types, GET /healthz, GET /metrics.
"""

from __future__ import annotations

import argparse

from emostream import logs
from emostream.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true", help="serve with Flask's development server instead of gunicorn")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logs.configure(settings)
    if args.dev:
        from emostream.ingest.server import serve_dev

        serve_dev(settings)
    else:
        from emostream.ingest.server import serve

        serve(settings)


if __name__ == "__main__":
    main()

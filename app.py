"""Ingest: accepts emoji over HTTP and sends them to Kafka's emoji_topic in 500 ms batches.

    python3 app.py                              # http://127.0.0.1:5000, settings from EMOSTREAM_*
    python3 app.py --dev                        # Flask's development server (one process)

POST /emoji, POST /emojis, GET /emoji-types, GET /healthz, GET /metrics (emostream/ingest/).
"""

from emostream.ingest.server import main

if __name__ == "__main__":
    raise SystemExit(main())

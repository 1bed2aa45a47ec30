"""The ingest service: validated emoji intake over HTTP, sent to Kafka in 500 ms batches.

- :mod:`emostream.ingest.api`: the Flask factory ``create_app(settings)``.
- :mod:`emostream.ingest.batcher`: the bounded buffer and the thread that sends it to Kafka.
- :mod:`emostream.ingest.ratelimit`: per-``user_id`` token buckets.
- :mod:`emostream.ingest.server`: gunicorn serving the app, one buffer and producer per worker.

Nothing is imported here: the server must set up Prometheus' multiprocess folder before
``prometheus_client`` is first imported.
"""

"""Prometheus metrics of the ingest service.

Under gunicorn they live in ``PROMETHEUS_MULTIPROC_DIR`` (set by the server before this
module is first imported), so ``GET /metrics`` on any worker reports all of them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("emostream_ingest_accepted_emoji", "Emoji accepted (answered 202).")
REJECTED = Counter(
    "emostream_ingest_rejected_requests",
    "Requests refused, by reason (invalid_event, bad_json, not_json, body_too_large, too_many_events, "
    "empty_batch, wrong_shape, no_credential, bad_credential, expired_credential, revoked_credential, other_client, "
    "other_event, rate_limited, source_rate_limited, buffer_full, lagging, kafka_unavailable, shutting_down, "
    "journal_unavailable).",
    ["reason"],
)
BUFFERED = Gauge(
    "emostream_ingest_buffered_emoji",
    "Emoji accepted but not yet acknowledged by Kafka.",
    multiprocess_mode="livesum",
)
SENT = Counter("emostream_ingest_sent_emoji", "Emoji acknowledged by Kafka.")
SEND_ERRORS = Counter(
    "emostream_ingest_send_errors",
    "Emoji whose hand-over to Kafka failed; they stay buffered and are sent again.",
)
SPOOLED = Counter(
    "emostream_ingest_spooled_emoji",
    "Emoji left in the journal at shutdown because Kafka did not acknowledge them in time.",
)
RECOVERED = Counter(
    "emostream_ingest_recovered_emoji",
    "Emoji a worker took over from the journal of a stopped worker and sent on.",
)
JOURNAL_ERRORS = Counter(
    "emostream_ingest_journal_errors",
    "Requests refused (503) because their emoji could not be written to the journal.",
)
KAFKA_DOWN_SECONDS = Gauge(
    "emostream_ingest_kafka_unreachable_seconds",
    "How long Kafka has been unreachable as seen by a worker (0 when reachable).",
    multiprocess_mode="livemax",
)
LAG_SECONDS = Gauge(
    "emostream_ingest_lag_seconds",
    "How long the oldest buffered emoji has waited beyond its flush interval, per worker (the largest).",
    multiprocess_mode="livemax",
)
REQUEST_SECONDS = Histogram(
    "emostream_ingest_request_seconds",
    "Time the ingest app took to answer a POST, by endpoint.",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

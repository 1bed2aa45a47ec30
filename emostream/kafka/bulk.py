"""The ingest's producer, on librdkafka (confluent-kafka).

kafka-python spends its per-record work in Python, and on the ingest's hot path that work
was the ceiling of the whole service; librdkafka does it in C. Its errors leave this
module as the layer's own (:mod:`emostream.kafka.errors`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from emostream.kafka.errors import DeliveryError, KafkaTimeout, QueueFull, from_librdkafka
from emostream.kafka.security import librdkafka_options
from emostream.settings import Settings

log = logging.getLogger(__name__)

# Longest sleep of an idle producer's report loop under gevent: librdkafka's error and log
# callbacks of an idle client are served at least this often.
IDLE_POLL_SECONDS = 1.0

# Called with None once Kafka has the record.
AckCallback = Callable[[None], Any]


class DeliveryFuture:
    """The fate of one record sent through :class:`BulkProducer`.

    librdkafka reports each delivery to a callable; the future is that callable, so a record
    costs one small object. Reports are served by the producer's poller thread as they arrive
    (and by :meth:`BulkProducer.flush`).
    """

    __slots__ = ("is_done", "exception", "_on_ack")

    def __init__(self, on_ack: AckCallback | None = None) -> None:
        # The acknowledgement callback is fixed before the record is handed over: a report can
        # arrive on the poller thread before send() even returns.
        self.is_done = False
        self.exception: DeliveryError | None = None
        self._on_ack = on_ack

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def __call__(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.exception = from_librdkafka(error, DeliveryError)  # type: ignore[assignment]
        elif self._on_ack is not None:
            self._on_ack(None)
        self.is_done = True


class BulkProducer:
    """A durable producer on librdkafka, for the ingest's hot path.

    Same durability as :func:`emostream.kafka.producer`: idempotent (acks from all in-sync
    replicas, retries the broker de-duplicates), two minutes to deliver, and the Java client's
    murmur2 partitioner, so a user's emoji land on the partition every other client would pick.
    """

    def __init__(self, settings: Settings, client_id: str = "emostream", **overrides: Any):
        # Imported here: only the ingest loads librdkafka.
        from confluent_kafka import KafkaException, Producer

        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 120_000,
            "request.timeout.ms": 15_000,
            "linger.ms": 5,
            "queue.buffering.max.messages": 2_000_000,
            "message.max.bytes": 4 * 1024 * 1024,
            "partitioner": "murmur2_random",
            "reconnect.backoff.max.ms": 2_000,
            "log.connection.close": False,
            "logger": logging.getLogger("emostream.kafka.librdkafka"),
            "error_cb": _log_client_error,
            **librdkafka_options(settings),
        }
        config.update(overrides)
        self._producer = Producer(config)
        self._refused = KafkaException
        # Serve delivery reports as they arrive, not when the owner next polls: an acknowledgement
        # callback must run as soon as Kafka has the record (the ingest journal deletes on it).
        self._closed = threading.Event()
        self._sent = threading.Event()  # set by send(): records are in flight again
        self._poller = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        if _green():
            # Under gevent this "thread" is a greenlet: a blocking poll would stall the event loop,
            # so it polls without waiting, often while records are in flight and their reports
            # due, and otherwise sleeps until the next send: polling every few milliseconds with
            # nothing in flight was most of what an idle ingest worker spent.
            while not self._closed.is_set():
                self._producer.poll(0)
                if len(self._producer):
                    time.sleep(0.005)  # gevent's sleep: other greenlets run
                    continue
                self._sent.clear()
                if not len(self._producer):  # a send between the check and the clear is not lost
                    self._sent.wait(IDLE_POLL_SECONDS)  # client errors are still served now and then
        else:
            while not self._closed.is_set():
                self._producer.poll(0.1)

    def send(
        self, topic: str, value: bytes | None = None, key: str | None = None, on_ack: AckCallback | None = None
    ) -> DeliveryFuture:
        """Queue one record; ``on_ack(None)`` runs once Kafka has it.

        Raises :class:`QueueFull` when the local queue is full, another
        :class:`emostream.kafka.KafkaError` when the producer cannot take the record.
        """
        future = DeliveryFuture(on_ack)
        try:
            self._producer.produce(topic, value, key, on_delivery=future)
        except BufferError as error:
            raise QueueFull(str(error)) from error
        except self._refused as error:
            raise from_librdkafka(error.args[0]) from error
        if not self._sent.is_set():
            self._sent.set()
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every queued record's delivery report; :class:`KafkaTimeout` if some are left."""
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeout(f"{left} records not acknowledged within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` s for acknowledgements, then fail whatever is left."""
        try:
            self.flush(timeout or 0)
        except KafkaTimeout:
            pass
        self._closed.set()
        self._sent.set()
        self._poller.join(5)
        self._producer.purge()  # queued and in-flight records: their futures fail now
        self._producer.poll(0)


def ingest_producer(settings: Settings, **overrides: Any) -> BulkProducer:
    """The ingest's durable producer (its flusher's per-record cost is the ingest's ceiling)."""
    return BulkProducer(settings, client_id="emostream-ingest", **overrides)


def _green() -> bool:
    """True when gevent has patched threading (the gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def _log_client_error(error: Any) -> None:
    log.warning("Kafka client: %s", error)

"""The Kafka layer's own errors and the quieting of the clients' routine warnings (no broker)."""

from __future__ import annotations

import logging
import threading

import pytest

from emostream import kafka, logs
from emostream.kafka import bulk
from emostream.settings import Settings


@pytest.fixture
def unreachable() -> Settings:
    # Nothing listens on port 1: librdkafka queues records and never delivers them.
    return Settings.from_env(environ={}, kafka_bootstrap="127.0.0.1:1")


def test_a_full_ingest_producer_queue_is_a_retriable_error_of_the_layer(unreachable):
    producer = kafka.ingest_producer(unreachable, **{"queue.buffering.max.messages": 1})
    try:
        producer.send("emoji_topic", b"{}", "live|u1")
        with pytest.raises(kafka.QueueFull) as refused:
            producer.send("emoji_topic", b"{}", "live|u2")
    finally:
        producer.close(timeout=0)

    assert isinstance(refused.value, kafka.KafkaError)
    assert kafka.retriable(refused.value)


def test_records_the_ingest_producer_gives_up_on_fail_with_a_delivery_error(unreachable):
    producer = kafka.ingest_producer(unreachable)
    future = producer.send("emoji_topic", b"{}", "live|u1")
    with pytest.raises(kafka.KafkaTimeout):
        producer.flush(timeout=0.1)
    producer.close(timeout=0)

    assert future.is_done and not future.succeeded()
    assert isinstance(future.exception, kafka.DeliveryError)
    assert isinstance(future.exception, kafka.KafkaError)


def test_errors_that_are_not_kafkas_pass_through_the_translation_unchanged():
    with pytest.raises(ValueError, match="not a kafka error"), kafka.translate_errors():
        raise ValueError("not a kafka error")


def _record(logger: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)


SLOW_TASK = (
    "Task <kafka.net.selector.Task object at 0x7f> ran for %.3fs (>0.100s threshold). It is blocking the "
    "event loop -- likely a tight sync loop inside a coroutine. Other pollers will time out."
)


def test_the_clients_short_event_loop_stalls_are_dropped_and_long_ones_kept():
    stalls = logs.ShortStalls(at_least=1.0)

    assert not stalls.filter(_record("kafka.net.selector", SLOW_TASK % 0.115))
    assert stalls.filter(_record("kafka.net.selector", SLOW_TASK % 2.5))
    assert stalls.filter(_record("kafka.net.selector", "Wakeup socket returned empty. Rebuilding."))


class NotCoordinatorError(Exception):
    """Named like kafka-python's: the filter knows the broker's answers by name."""


def test_a_moved_coordinator_is_not_logged_and_a_dead_one_once_a_minute_per_group():
    now = [100.0]
    moves = logs.CoordinatorMoves(every=60.0, clock=lambda: now[0])
    dead = "Marking the coordinator dead (node %s) for group %s: %s."

    assert not moves.filter(_record("kafka.coordinator", dead, "coordinator-1", "g", NotCoordinatorError()))
    assert moves.filter(_record("kafka.coordinator", dead, "coordinator-1", "g", "Node Disconnected"))
    assert not moves.filter(_record("kafka.coordinator", dead, "coordinator-1", "g", "Node Disconnected"))
    assert moves.filter(_record("kafka.coordinator", dead, "coordinator-1", "other", "Node Disconnected"))
    now[0] += 61
    assert moves.filter(_record("kafka.coordinator", dead, "coordinator-1", "g", "Heartbeat session expired"))
    assert moves.filter(_record("kafka.coordinator", "Group Coordinator lookup for group %s failed: %s", "g", "x"))


def test_at_debug_level_the_clients_routine_warnings_are_not_filtered():
    root, selector = logging.getLogger(), logging.getLogger("kafka.net.selector")
    handlers, level, filters = root.handlers[:], root.level, selector.filters[:]
    try:
        logs.configure(Settings.from_env(environ={}, log_level="INFO"))
        assert logs.KAFKA_CLIENT_FILTERS["kafka.net.selector"] in selector.filters
        logs.configure(Settings.from_env(environ={}, log_level="DEBUG"))
        assert logs.KAFKA_CLIENT_FILTERS["kafka.net.selector"] not in selector.filters
    finally:  # configure() replaced the root handlers (pytest's capture among them)
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        selector.filters[:] = filters


class _ReportQueue:
    """librdkafka's side of a producer, as the report loop sees it: records in flight, reports served by poll."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight: list = []
        self.polls = 0

    def produce(self, topic, value, key, on_delivery):
        with self.lock:
            self.in_flight.append(on_delivery)

    def poll(self, _timeout):
        with self.lock:
            self.polls += 1
            served, self.in_flight = self.in_flight, []
        for report in served:
            report(None, None)

    def __len__(self):
        with self.lock:
            return len(self.in_flight)


class _WatchedEvent(threading.Event):
    """An Event that tells when someone starts waiting on it, and for how long at most."""

    def __init__(self):
        super().__init__()
        self.waiting = threading.Event()
        self.timeouts: list = []

    def wait(self, timeout=None):
        self.timeouts.append(timeout)
        self.waiting.set()
        return super().wait(timeout)


def test_under_gevent_an_idle_report_loop_sleeps_until_a_send_and_serves_its_report_at_once(monkeypatch):
    # The loop's gevent branch, run on a thread (the same calls; gevent only makes them green).
    monkeypatch.setattr(bulk, "_green", lambda: True)
    monkeypatch.setattr(bulk, "IDLE_POLL_SECONDS", 600.0)  # the test ends long before one idle sleep would
    producer = object.__new__(kafka.BulkProducer)
    queue = _ReportQueue()
    producer._producer = queue
    producer._refused = RuntimeError
    producer._closed = threading.Event()
    producer._sent = sent = _WatchedEvent()
    loop = threading.Thread(target=producer._serve_reports, daemon=True)
    loop.start()
    try:
        # Nothing in flight: after one poll the loop sleeps until a send (at most the idle time).
        assert sent.waiting.wait(10), "the idle loop never went to sleep"
        assert sent.timeouts == [600.0]
        assert queue.polls == 1
        acknowledged = threading.Event()
        producer.send("emoji_topic", b"{}", "live|u1", on_ack=lambda _: acknowledged.set())

        # Served by a poll the send woke, not after the 600 s idle sleep.
        assert acknowledged.wait(10)
    finally:
        producer._closed.set()
        producer._sent.set()
        loop.join(10)
    assert not loop.is_alive()

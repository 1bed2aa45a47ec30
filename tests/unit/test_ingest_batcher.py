"""The ingest buffer's delivery rules, against a scripted producer (pure logic, no broker).

The real-broker behaviour (broker restart, SIGTERM) is in tests/integration/test_ingest_*.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from emostream.ingest.batcher import EmojiBatcher, Offer, next_flush_at
from emostream.ingest.journal import read_segment
from emostream.kafka import KafkaError, KafkaTimeout, QueueFull
from emostream.settings import Settings


class FakeFuture:
    def __init__(self, on_ack=None) -> None:
        self.is_done = False
        self.exception: BaseException | None = None
        self.on_ack = on_ack

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def resolve(self, error: BaseException | None = None) -> None:
        self.exception = error
        if error is None and self.on_ack is not None:
            self.on_ack(None)
        self.is_done = True


class ScriptedProducer:
    """Acknowledges at once, or holds acknowledgements (``hold``), or refuses sends (``refuse``)."""

    def __init__(self, hold: bool = False, refuse: int = 0, refusal: Exception | None = None) -> None:
        self.hold = hold
        self.refuse = refuse
        self.refusal = refusal or KafkaTimeout("Failed to update metadata")
        self.sent: list[tuple[str, bytes, FakeFuture]] = []
        self.closed = False

    def send(self, topic: str, value: bytes | None = None, key: str | None = None, on_ack=None) -> FakeFuture:
        if self.refuse > 0:
            self.refuse -= 1
            raise self.refusal
        future = FakeFuture(on_ack)
        if not self.hold:
            future.resolve()
        self.sent.append((key, value, future))
        return future

    def acknowledge(self, error: BaseException | None = None) -> None:
        for _, _, future in self.sent:
            if not future.is_done:
                future.resolve(error)

    def flush(self, timeout: float | None = None) -> None:
        if any(not future.is_done for _, _, future in self.sent):
            raise KafkaTimeout("Timeout waiting for future")

    def close(self, timeout: float | None = None) -> None:
        self.closed = True
        self.acknowledge(KafkaTimeout("producer closed"))

    def keys(self) -> list[str]:
        return [key for key, _, _ in self.sent]

    def acknowledged_keys(self) -> list[str]:
        return [key for key, _, future in self.sent if future.succeeded()]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def eventually(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition did not hold in time")
        time.sleep(0.005)


def make_settings(tmp_path: Path, **changes) -> Settings:
    values = dict(state_dir=str(tmp_path), flush_interval_ms=10, buffer_max=1000, flush_max_events=10_000)
    values.update(changes)
    return Settings.from_env(environ={}, **values)


def records(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"live|{prefix}{i}", b'{"n":%d}' % i) for i in range(n)]


@pytest.fixture
def running():
    started: list[EmojiBatcher] = []

    def start(settings: Settings, producer: ScriptedProducer, probe=lambda: True, clock=time.monotonic):
        batcher = EmojiBatcher(settings, lambda: producer, probe=probe, probe_interval=0.01, clock=clock)
        started.append(batcher.start())
        return batcher

    yield start
    for batcher in started:
        batcher.close(timeout=1)


def test_offer_takes_all_records_or_none_when_the_buffer_is_full(tmp_path):
    batcher = EmojiBatcher(make_settings(tmp_path, buffer_max=5), lambda: ScriptedProducer(), probe=lambda: True)

    assert batcher.offer(records("a", 3)) is Offer.ACCEPTED
    assert batcher.offer(records("b", 3)) is Offer.FULL
    assert batcher.held == 3
    assert batcher.offer(records("c", 2)) is Offer.ACCEPTED
    assert batcher.held == 5


def test_buffered_records_reach_the_producer_once_each_in_order(tmp_path, running):
    producer = ScriptedProducer()
    batcher = running(make_settings(tmp_path), producer)
    sent = records("a", 50) + records("b", 50)

    batcher.offer(sent[:50])
    batcher.offer(sent[50:])
    eventually(lambda: batcher.held == 0)

    assert producer.keys() == [key for key, _ in sent]


def test_records_the_producer_refused_are_sent_again_in_order_and_once(tmp_path, running):
    producer = ScriptedProducer(refuse=3)
    batcher = running(make_settings(tmp_path), producer)
    sent = records("u", 20)

    batcher.offer(sent)
    eventually(lambda: batcher.held == 0)

    assert producer.keys() == [key for key, _ in sent]


@pytest.mark.parametrize(
    ("refusal", "producers_built"),
    [(QueueFull("Local: Queue full"), 1), (KafkaError("Local: Fatal error", fatal=True), 2)],
)
def test_a_producer_is_replaced_only_when_it_refused_records_for_good(tmp_path, refusal, producers_built):
    built: list[ScriptedProducer] = []

    def build() -> ScriptedProducer:
        built.append(ScriptedProducer(refuse=1 if not built else 0, refusal=refusal))
        return built[-1]

    batcher = EmojiBatcher(make_settings(tmp_path), build, probe=lambda: True, probe_interval=0.01).start()
    try:
        batcher.offer(records("u", 3))
        eventually(lambda: batcher.held == 0)
    finally:
        batcher.close(timeout=1)

    assert len(built) == producers_built
    assert built[-1].acknowledged_keys() == [key for key, _ in records("u", 3)]


def test_records_awaiting_acknowledgement_are_never_sent_a_second_time(tmp_path, running):
    producer = ScriptedProducer(hold=True)
    batcher = running(make_settings(tmp_path), producer)

    batcher.offer(records("u", 10))
    eventually(lambda: len(producer.sent) == 10)
    # Later flushes happen with the acknowledgements outstanding: each marker record sent proves one.
    for n in range(5):
        batcher.offer([(f"live|marker{n}", b"{}")])
        eventually(lambda n=n: len(producer.sent) >= 11 + n)

    assert producer.keys() == [key for key, _ in records("u", 10)] + [f"live|marker{n}" for n in range(5)]
    assert batcher.held == 15
    producer.acknowledge()
    eventually(lambda: batcher.held == 0)
    assert len(producer.sent) == 15


def test_records_whose_delivery_failed_are_sent_again_until_acknowledged(tmp_path, running):
    producer = ScriptedProducer(hold=True)
    batcher = running(make_settings(tmp_path), producer)
    sent = records("u", 5)

    batcher.offer(sent)
    eventually(lambda: len(producer.sent) == 5)
    producer.hold = False
    producer.acknowledge(KafkaTimeout("Expiring 5 record(s): 120000 ms has passed since batch creation"))
    eventually(lambda: batcher.held == 0)

    assert producer.acknowledged_keys() == [key for key, _ in sent]


def test_kafka_counts_as_unavailable_while_records_wait_without_acknowledgement(tmp_path, running):
    clock = Clock()
    producer = ScriptedProducer(hold=True)
    batcher = running(make_settings(tmp_path), producer, clock=clock)

    assert batcher.unavailable_for() == 0.0
    batcher.offer(records("u", 3))
    eventually(lambda: len(producer.sent) == 3)
    clock.now += 7
    assert batcher.unavailable_for() == pytest.approx(7)

    producer.acknowledge()
    eventually(lambda: batcher.held == 0)
    assert batcher.unavailable_for() == 0.0


def test_emoji_the_producer_holds_are_a_stall_not_a_lag(tmp_path, running):
    # A partition's leader moving: the producer has the emoji and Kafka acknowledges nothing for
    # a while. Ingest is not behind in sending (no lag refusal), and the wait counts against
    # kafka_unavailable_seconds instead.
    clock = Clock()
    producer = ScriptedProducer(hold=True)
    batcher = running(make_settings(tmp_path), producer, clock=clock)
    batcher.offer(records("u", 3))
    eventually(lambda: len(producer.sent) == 3)

    clock.now += 4
    assert batcher.lag() == 0.0
    assert batcher.stalled_for() >= 3.5

    producer.acknowledge()
    eventually(lambda: batcher.held == 0)
    assert batcher.stalled_for() == 0.0


def test_emoji_no_producer_took_count_as_lag(tmp_path, running):
    clock = Clock()
    batcher = EmojiBatcher(make_settings(tmp_path), _no_producer, probe=lambda: True, clock=clock).start()
    try:
        batcher.offer(records("u", 3))
        clock.now += 4
        assert batcher.lag() == pytest.approx(4 - batcher.interval)
    finally:
        batcher.close(timeout=0.1)


def _no_producer():
    raise OSError("no producer can be made")


def test_a_failing_probe_makes_kafka_unavailable_while_idle_until_it_succeeds(tmp_path, running):
    clock = Clock()
    reachable = {"now": False}
    batcher = running(make_settings(tmp_path), ScriptedProducer(), probe=lambda: reachable["now"], clock=clock)

    def time_passes_while_unreachable() -> bool:
        clock.now += 1
        return batcher.unavailable_for() >= 3

    eventually(time_passes_while_unreachable)

    reachable["now"] = True
    eventually(lambda: batcher.unavailable_for() == 0.0)


def test_close_sends_the_buffer_at_once_without_waiting_for_the_interval(tmp_path):
    producer = ScriptedProducer()
    batcher = EmojiBatcher(make_settings(tmp_path, flush_interval_ms=600_000), lambda: producer, probe=lambda: True)
    batcher.start()
    batcher.offer(records("u", 25))

    assert batcher.close(timeout=5) == 0
    assert len(producer.acknowledged_keys()) == 25
    assert batcher.offer(records("late", 1)) is Offer.CLOSED


def segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "ingest-journal").glob("*.seg"))


def segment_keys(tmp_path: Path) -> list[str]:
    """The committed records' keys in the journal, as a recovering worker would read them."""
    return [key for path in segments(tmp_path) for key, _ in read_segment(path)]


def test_what_kafka_did_not_acknowledge_by_shutdown_stays_in_the_journal_and_the_next_worker_sends_it_first(tmp_path):
    settings = make_settings(tmp_path)
    stuck = ScriptedProducer(hold=True)
    first = EmojiBatcher(settings, lambda: stuck, probe=lambda: True).start()
    first.offer(records("old", 4))
    eventually(lambda: len(stuck.sent) == 4)

    assert first.close(timeout=0.2) == 4
    assert segment_keys(tmp_path) == [key for key, _ in records("old", 4)]
    assert not list((tmp_path / "ingest-journal").glob("*.lock"))  # the worker is gone

    healthy = ScriptedProducer()
    second = EmojiBatcher(settings, lambda: healthy, probe=lambda: True).start()
    second.offer(records("new", 2))
    eventually(lambda: len(healthy.sent) == 6)
    second.close(timeout=1)

    assert healthy.keys() == [key for key, _ in records("old", 4) + records("new", 2)]
    assert [value for _, value, _ in healthy.sent[:4]] == [value for _, value in records("old", 4)]
    assert segments(tmp_path) == []


def test_an_accepted_request_is_in_the_journal_when_offer_returns(tmp_path):
    batcher = EmojiBatcher(make_settings(tmp_path, flush_interval_ms=600_000), ScriptedProducer, probe=lambda: True)

    assert batcher.offer(records("a", 3)) is Offer.ACCEPTED
    assert batcher.offer(records("b", 2)) is Offer.ACCEPTED
    assert segment_keys(tmp_path) == [key for key, _ in records("a", 3) + records("b", 2)]


def test_without_write_ahead_nothing_is_journaled_until_a_shutdown_leaves_something_unsent(tmp_path):
    batcher = EmojiBatcher(make_settings(tmp_path, ingest_journal=False), ScriptedProducer, probe=lambda: True)

    assert batcher.offer(records("a", 3)) is Offer.ACCEPTED
    assert segments(tmp_path) == []


def test_a_segment_is_deleted_when_kafka_has_acknowledged_its_last_record(tmp_path, running):
    producer = ScriptedProducer(hold=True)
    batcher = running(make_settings(tmp_path), producer)

    batcher.offer(records("u", 6))
    eventually(lambda: len(producer.sent) == 6)
    for _, _, future in producer.sent[:5]:
        future.resolve()
    assert len(segments(tmp_path)) == 1
    producer.sent[5][2].resolve()
    assert segments(tmp_path) == []


def test_a_record_whose_delivery_failed_keeps_its_segment_until_it_is_sent_again(tmp_path, running):
    producer = ScriptedProducer(hold=True)
    batcher = running(make_settings(tmp_path), producer)

    batcher.offer(records("u", 3))
    eventually(lambda: len(producer.sent) == 3)
    producer.sent[0][2].resolve()
    producer.sent[1][2].resolve(KafkaTimeout("Expiring 1 record(s)"))
    producer.sent[2][2].resolve()
    eventually(lambda: len(producer.sent) == 4)  # the failed one, again

    assert segment_keys(tmp_path) == [key for key, _ in records("u", 3)]
    producer.acknowledge()
    eventually(lambda: segments(tmp_path) == [])


def test_a_journal_that_cannot_be_written_refuses_the_request_and_keeps_nothing_of_it(tmp_path, monkeypatch):
    batcher = EmojiBatcher(make_settings(tmp_path), ScriptedProducer, probe=lambda: True)
    assert batcher.offer(records("ok", 1)) is Offer.ACCEPTED
    batcher.journal.rotate(1)  # the next request needs a new segment file

    def disk_full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("emostream.ingest.journal.os.posix_fallocate", disk_full)
    assert batcher.offer(records("lost", 2)) is Offer.NOT_WRITTEN
    monkeypatch.undo()

    assert batcher.held == 1
    assert segment_keys(tmp_path) == [key for key, _ in records("ok", 1)]
    assert batcher.offer(records("again", 1)) is Offer.ACCEPTED


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1000.00, 1000.45),  # on a multiple: the lead before the next one
        (1000.37, 1000.45),
        (1000.45, 1000.95),  # exactly at a flush time: that flush is now, the next is an interval on
        (1000.46, 1000.95),
        (1000.99, 1001.45),
    ],
)
def test_timed_flushes_land_the_lead_before_each_multiple_of_the_interval_since_the_epoch(now, expected):
    assert next_flush_at(now, interval=0.5, lead=0.05) == pytest.approx(expected)


def test_the_flusher_schedules_its_next_flush_on_that_phase(tmp_path, monkeypatch):
    batcher = EmojiBatcher(
        make_settings(tmp_path, flush_interval_ms=500, flush_lead_ms=50), lambda: ScriptedProducer(), probe=lambda: True
    )
    monkeypatch.setattr(time, "time", lambda: 1_765_000_000.37)
    monkeypatch.setattr(time, "monotonic", lambda: 50.0)

    assert batcher._next_flush() == pytest.approx(50.08)


def test_the_lead_is_kept_within_half_an_interval(tmp_path):
    batcher = EmojiBatcher(
        make_settings(tmp_path, flush_interval_ms=100, flush_lead_ms=400),
        lambda: ScriptedProducer(),
        probe=lambda: True,
    )
    assert batcher.lead == pytest.approx(0.05)

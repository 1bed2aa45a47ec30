"""The bounded buffer between HTTP requests and Kafka, and the thread that empties it.

Request threads only append to a list under a lock (:meth:`EmojiBatcher.offer`); every
``flush_interval_ms``, or sooner when ``flush_max_events`` wait, one flusher thread hands the
buffered records to the durable producer. No request thread ever calls Kafka, so a slow or
absent broker costs requests nothing but a 503 once the buffer is full, Kafka has been
unreachable (or left an accepted emoji unacknowledged) for ``kafka_unavailable_seconds``
(:meth:`EmojiBatcher.stalled_for`), or the oldest emoji not yet handed to Kafka is
``ingest_max_lag_ms`` late (:meth:`EmojiBatcher.lag`).

Delivery rules, which give "nothing accepted is lost, none twice":

- A record stays counted against the buffer until Kafka acknowledges it.
- A record the producer took is never sent again by us while its future is pending: the
  idempotent producer retries it itself (same producer id and sequence number, so the
  broker drops a copy it already has), for up to ``delivery_timeout_ms``.
- Only a record the producer refused (``send`` raised) or whose future failed is sent
  again. A failed future after ``delivery_timeout_ms`` (two minutes of outage) is one case
  where the broker may already hold the record, so a duplicate can appear there.
- Every accepted request is in the worker's journal (:mod:`emostream.ingest.journal`) before
  it is answered, until Kafka acknowledges it; a worker that dies, even by SIGKILL, leaves
  its unacknowledged emoji there and another worker sends them within about a second.
- On shutdown whatever Kafka has not acknowledged within the grace period stays in the
  journal for the next worker. A record cut off while its produce request was on the wire
  is the other case that can duplicate.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from emostream import kafka
from emostream.ingest import metrics
from emostream.ingest.journal import Journal, Record, Segment
from emostream.settings import Settings

log = logging.getLogger(__name__)

Entry = tuple[str, bytes, Segment | None]  # a record and the journal segment that holds it

# How often a flush yields to request threads while it hands records to the producer.
YIELD_EVERY = 200
# How often a worker looks for what stopped workers left in the journal (seconds).
RECOVERY_INTERVAL = 0.5


class Future(Protocol):
    is_done: bool
    exception: BaseException | None

    def succeeded(self) -> bool: ...


class Producer(Protocol):
    """:class:`emostream.kafka.BulkProducer`, or a scripted one in tests."""

    def send(
        self, topic: str, value: Any = None, key: Any = None, on_ack: Callable[[Any], None] | None = None
    ) -> Future: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class Offer(enum.Enum):
    ACCEPTED = "accepted"
    FULL = "full"
    CLOSED = "closed"
    NOT_WRITTEN = "not_written"  # the journal could not take it (disk full, I/O error)


def admin_probe(settings: Settings) -> Callable[[], bool]:
    """A check that the cluster answers, for when no records are on their way to reveal it."""
    timeout_ms = int(max(1.0, min(settings.kafka_unavailable_seconds, 5.0)) * 1000)
    state: dict[str, Any] = {"admin": None}

    def probe() -> bool:
        try:
            if state["admin"] is None:
                state["admin"] = kafka.admin(
                    settings,
                    client_id="emostream-ingest-probe",
                    request_timeout_ms=timeout_ms,
                    bootstrap_timeout_ms=timeout_ms,
                )
            state["admin"].describe_cluster()
            return True
        except Exception as error:  # any failure means "not reachable now"; the next probe retries
            log.debug("Kafka probe failed: %s", error)
            if state["admin"] is not None:
                try:
                    state["admin"].close()
                except Exception:
                    pass
                state["admin"] = None
            return False

    return probe


def next_flush_at(now: float, interval: float, lead: float) -> float:
    """The first time after ``now`` that is ``lead`` before a multiple of ``interval`` since the epoch.

    Spark's processing-time trigger starts a micro-batch at every multiple of its interval since
    the epoch, and the batch reads what Kafka holds at that moment. A flush timer started at a
    random moment lands anywhere in the interval, so a flushed emoji waited half an interval on
    average (a whole one at worst) for the next batch; sent ``lead`` before each multiple, it
    waits only ``lead``. With the ingest's interval equal to the trigger's (or a divisor of
    it), every flush lands just before a trigger, at no cost.
    """
    return (math.floor((now + lead) / interval) + 1) * interval - lead


class EmojiBatcher:
    """Accepted emoji on their way to ``emoji_topic``; one per worker process."""

    def __init__(
        self,
        settings: Settings,
        producer_factory: Callable[[], Producer] | None = None,
        probe: Callable[[], bool] | None = None,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        # ``clock`` only measures how long Kafka has been unreachable; ticks use real time.
        self.topic = settings.emoji_topic
        self.capacity = settings.buffer_max
        self.interval = settings.flush_interval_ms / 1000
        self.lead = min(max(settings.flush_lead_ms, 0) / 1000, self.interval / 2)
        self.flush_max = max(1, settings.flush_max_events)
        self.journal = Journal(Path(settings.state_dir) / "ingest-journal", fsync=settings.ingest_journal_fsync)
        self.write_ahead = settings.ingest_journal
        self.give_up_after = settings.kafka_unavailable_seconds
        self._producer_factory = producer_factory or (lambda: kafka.ingest_producer(settings))
        self._probe = probe if probe is not None else admin_probe(settings)
        self._probe_interval = probe_interval
        self._clock = clock

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[Record] = []  # accepted, not yet handed to the producer (request threads append)
        self._pending_since: float | None = None  # when the oldest of them arrived
        self._held = 0  # every emoji not yet acknowledged: what counts against the capacity
        # [arrival time, emoji] per accepted request, oldest first; acknowledgements consume it in
        # order (Kafka acknowledges roughly first in, first out), so its head dates the oldest emoji.
        self._arrivals: deque[list] = deque()
        self._closing = False

        # Owned by the flusher thread.
        self._retry: list[Entry] = []  # refused or failed: sent before newer records
        self._in_flight: list[tuple[Future, str, bytes, Segment | None]] = []
        self._progress_cursor = 0  # in-flight records before this index are known to be done
        self._producer: Producer | None = None

        # Read by request threads; written by one thread each.
        self._waiting_since: float | None = None  # records wait for Kafka with no acknowledgement since
        self._last_progress = clock()
        self._probe_down_since: float | None = None

        self._stopped = threading.Event()
        self._flusher = threading.Thread(target=self._run, name="emoji-flusher", daemon=True)
        self._prober = threading.Thread(target=self._probe_loop, name="kafka-probe", daemon=True)
        self._drain_deadline = 0.0
        self.undelivered = 0

    # ------------------------------------------------------------------ request threads

    def start(self) -> EmojiBatcher:
        self.journal.open()
        self._flusher.start()
        self._prober.start()
        return self

    def offer(self, records: Sequence[Record]) -> Offer:
        """Take all of ``records`` into the buffer, or none of them when it has no room."""
        with self._lock:
            if self._closing:
                return Offer.CLOSED
            if self._held + len(records) > self.capacity:
                return Offer.FULL
            if self.write_ahead:
                try:
                    self.journal.append(records)
                except OSError as error:
                    metrics.JOURNAL_ERRORS.inc()
                    log.error("cannot write %d emoji to the journal: %s", len(records), error)
                    return Offer.NOT_WRITTEN
            if not self._pending:
                self._pending_since = self._clock()
            self._pending.extend(records)
            self._held += len(records)
            self._arrivals.append([self._clock(), len(records)])
            if len(self._pending) >= self.flush_max:
                self._wake.notify()
        return Offer.ACCEPTED

    def unavailable_for(self) -> float:
        """Seconds Kafka has been unreachable (no acknowledgement while records wait, or probes fail)."""
        now = self._clock()
        since = self._waiting_since
        probe_since = self._probe_down_since
        # A probe failure counts only until Kafka acknowledges something after it.
        if probe_since is not None and probe_since >= self._last_progress and (since is None or probe_since < since):
            since = probe_since
        return 0.0 if since is None else max(0.0, now - since)

    def stalled_for(self) -> float:
        """Seconds Kafka has kept ingest waiting: unreachable, or the oldest held emoji unacknowledged past its flush.

        The second part catches a cluster that answers but leaves some emoji waiting (a partition
        without a leader); a leader moving to another broker is shorter than the rule's bound.
        """
        with self._lock:
            oldest = self._arrivals[0][0] if self._arrivals else None
        waited = 0.0 if oldest is None else max(0.0, self._clock() - oldest - self.interval)
        return max(self.unavailable_for(), waited)

    def lag(self) -> float:
        """How long the oldest emoji not yet handed to Kafka has waited beyond its flush interval (0 when on time).

        The processor counts emoji by ``received_at`` and drops those later than its watermark,
        so a buffer that falls behind in sending must refuse emoji rather than deliver them too
        late. Emoji the producer holds while a partition's leader moves are not behind: they are
        in the journal, and go out the moment the new leader is known (:meth:`stalled_for`
        bounds that wait).
        """
        with self._lock:
            if self._retry and self._arrivals:
                oldest = self._arrivals[0][0]  # refused or failed sends wait: the oldest held may be one
            elif self._pending_since is not None:
                oldest = self._pending_since
            else:
                return 0.0
        return max(0.0, self._clock() - oldest - self.interval)

    @property
    def probe_ok(self) -> bool:
        """The last connectivity probe reached the cluster."""
        return self._probe_down_since is None

    @property
    def held(self) -> int:
        return self._held

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 20.0) -> int:
        """Stop taking emoji, send what is held, wait up to ``timeout`` s for Kafka; journal the rest.

        Returns the number of emoji left in the journal for the next worker instead of Kafka.
        """
        with self._lock:
            if self._closing:
                return self.undelivered
            self._closing = True
            self._drain_deadline = time.monotonic() + timeout
            self._wake.notify()
        self._stopped.set()
        if self._flusher.is_alive():
            self._flusher.join(timeout + 10)
        else:
            self._drain()  # never started: nothing can be in flight, but pending may hold emoji
        return self.undelivered

    # ------------------------------------------------------------------ flusher thread

    def _run(self) -> None:
        self._recover()
        self._connect()  # early, so the first requests' flush does not wait for the bootstrap
        next_flush = self._next_flush()
        next_recovery = time.monotonic() + RECOVERY_INTERVAL
        while True:
            with self._lock:
                while not self._closing and len(self._pending) < self.flush_max:
                    remaining = next_flush - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                closing = self._closing
            next_flush = self._next_flush()
            try:
                if closing:
                    self._drain()
                    return
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + RECOVERY_INTERVAL
                    self._recover()
                self._tick()
            except Exception:
                # A bug here must not silently stop deliveries: log it and keep ticking.
                log.exception("flusher tick failed; records stay buffered")
                time.sleep(min(self.interval, 1.0))

    def _next_flush(self) -> float:
        """When the next timed flush is due, on the monotonic clock (see :func:`next_flush_at`)."""
        now = time.time()
        return time.monotonic() + next_flush_at(now, self.interval, self.lead) - now

    def _tick(self) -> None:
        self._collect()
        batch = self._take()
        if self._retry:
            batch, self._retry = self._retry + batch, []
        self._send(batch)
        metrics.BUFFERED.set(self._held)
        metrics.KAFKA_DOWN_SECONDS.set(self.unavailable_for())
        metrics.LAG_SECONDS.set(self.lag())

    def _take(self) -> list[Entry]:
        """The buffered records, each with the journal segment that holds them."""
        # The next journal file is mapped here, off the request path and outside the lock.
        spare = self.journal.make_spare() if self.write_ahead and not self._closing else None
        with self._lock:
            pending, self._pending = self._pending, []
            self._pending_since = None
            segment = self.journal.rotate(len(pending)) if self.write_ahead else None
            self.journal.offer_spare(spare)
        return [(key, value, segment) for key, value in pending]

    def _send(self, batch: list[Entry]) -> None:
        if not batch:
            return
        if self._waiting_since is None:
            self._waiting_since = self._clock()  # from now these records wait for Kafka
        producer = self._connect()
        if producer is None:
            self._retry.extend(batch)
            self._note_waiting()
            return
        topic = self.topic
        in_flight = self._in_flight
        for index, (key, value, segment) in enumerate(batch):
            try:
                # The segment goes when its last record is in Kafka.
                future = producer.send(topic, key=key, value=value, on_ack=segment and segment.acknowledged)
            except Exception as error:
                # Refused before the producer took it (its local queue is full, or it is broken):
                # these records are certainly not in Kafka, so sending them again is safe.
                left = batch[index:]
                self._retry.extend(left)
                metrics.SEND_ERRORS.inc(len(left))
                log.warning("producer refused %d emoji (%s); they stay buffered", len(left), error)
                if not kafka.retriable(error):
                    self._reset_producer()
                break
            in_flight.append((future, key, value, segment))
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                self._observe_progress()
                time.sleep(0)  # let request threads (or greenlets) run during a long hand-over
        self._note_waiting()

    def _collect(self) -> int:
        """Account for records Kafka acknowledged; queue the failed ones to be sent again."""
        if not self._in_flight:
            self._note_waiting()
            return 0
        still: list[tuple[Future, str, bytes, Segment | None]] = []
        delivered = 0
        failed: list[Entry] = []
        first_error: BaseException | None = None
        for entry in self._in_flight:
            future = entry[0]
            if not future.is_done:
                still.append(entry)
            elif future.exception is None:
                delivered += 1
            else:
                failed.append((entry[1], entry[2], entry[3]))
                first_error = first_error or future.exception
        self._in_flight = still
        self._progress_cursor = 0
        if failed:
            # The delivery timeout passed: Kafka may or may not hold these. Losing them is worse
            # than a rare duplicate, so they go again, ahead of newer records.
            self._retry[:0] = failed
            metrics.SEND_ERRORS.inc(len(failed))
            log.warning("Kafka did not acknowledge %d emoji (%s); sending them again", len(failed), first_error)
            if isinstance(first_error, kafka.KafkaError) and first_error.fatal:
                self._reset_producer()  # an idempotent producer that hit a fatal error sends nothing more
        if delivered:
            with self._lock:
                self._held -= delivered
                self._forget_arrivals(delivered)
            metrics.SENT.inc(delivered)
            self._last_progress = self._clock()
            self._waiting_since = None
        self._note_waiting()
        return delivered

    def _forget_arrivals(self, count: int) -> None:
        arrivals = self._arrivals
        while count > 0 and arrivals:
            head = arrivals[0]
            if head[1] <= count:
                count -= head[1]
                arrivals.popleft()
            else:
                head[1] -= count
                count = 0

    def _observe_progress(self) -> None:
        """Note acknowledgements that arrive during a long hand-over, so it cannot look like an outage."""
        in_flight, cursor = self._in_flight, self._progress_cursor
        while cursor < len(in_flight) and in_flight[cursor][0].is_done:
            cursor += 1
        if cursor > self._progress_cursor:
            self._last_progress = self._waiting_since = self._clock()
        self._progress_cursor = cursor

    def _note_waiting(self) -> None:
        if self._in_flight or self._retry:
            if self._waiting_since is None:
                self._waiting_since = self._clock()
        else:
            self._waiting_since = None

    def _connect(self) -> Producer | None:
        if self._producer is None:
            try:
                self._producer = self._producer_factory()
                log.info("connected to Kafka; sending to %s", self.topic)
            except Exception as error:
                log.warning("cannot create a Kafka producer yet (%s); emoji stay buffered", error)
                return None
        return self._producer

    def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        # Records still pending in the old producer are not lost: its futures fail on close
        # and _collect queues them again.
        close_now(producer)

    def _drain(self) -> None:
        """Shutdown: send everything and wait for acknowledgements; leave the rest in the journal.

        The wait ends at the deadline, or sooner once Kafka has been unreachable for
        ``kafka_unavailable_seconds``: waiting longer would only delay the next worker.
        """
        batch, self._retry = self._retry + self._take(), []
        self._send(batch)
        while time.monotonic() < self._drain_deadline and self.unavailable_for() < self.give_up_after:
            if self._producer is not None and self._in_flight:
                try:
                    self._producer.flush(timeout=max(0.1, min(1.0, self._drain_deadline - time.monotonic())))
                except Exception:
                    pass  # flush timed out: collect what did arrive and go on until the deadline
            self._collect()
            if not self._in_flight and not self._retry:
                break
            if self._retry:
                retry, self._retry = self._retry, []
                self._send(retry)
                if self._retry:
                    time.sleep(0.2)
        # Close first (without waiting: the grace period is over), so nothing the producer still
        # holds can reach Kafka after it has been counted as left in the journal.
        if self._producer is not None:
            close_now(self._producer)
            self._producer = None
        self._collect()
        leftover = [(key, value) for key, value, _ in self._retry] + [
            (key, value) for _, key, value, _ in self._in_flight
        ]
        self._retry, self._in_flight = [], []
        self.undelivered = len(leftover)
        try:
            self.journal.close(leftover)
        except OSError as error:
            log.critical("cannot write %d unsent emoji to the journal: %s", len(leftover), error)
            raise
        if leftover:
            metrics.SPOOLED.inc(len(leftover))
            log.error(
                "Kafka did not acknowledge %d emoji before shutdown; they stay in the journal (%s) for the next worker",
                len(leftover),
                self.journal.folder,
            )
        metrics.BUFFERED.set(0)
        log.info("emoji flusher stopped; %d emoji left in the journal", len(leftover))

    # ------------------------------------------------------------------ journal

    def _recover(self) -> None:
        """Queue what stopped workers accepted and Kafka never acknowledged, ahead of newer emoji."""
        try:
            taken = self.journal.recover()
        except OSError as error:  # an unreadable journal folder must not stop this worker's deliveries
            log.error("cannot read the journal in %s: %s", self.journal.folder, error)
            return
        for segment, records in taken:
            with self._lock:
                self._held += len(records)
                self._arrivals.appendleft([self._clock(), len(records)])
            self._retry.extend((key, value, segment) for key, value in records)
            metrics.RECOVERED.inc(len(records))

    # ------------------------------------------------------------------ probe thread

    def _probe_loop(self) -> None:
        while not self._stopped.wait(self._probe_interval):
            started = self._clock()
            if self._probe():
                self._probe_down_since = None
            elif self._probe_down_since is None:
                self._probe_down_since = started


def close_now(producer: Producer) -> None:
    """Close without waiting; records the producer still holds fail their futures."""
    try:
        producer.close(timeout=0)
    except Exception as error:
        log.warning("closing the Kafka producer failed: %s", error)

"""Reading a topic back from a moment in the past: seek by timestamp, read to the end taken at the start.

A subscriber node that must serve windows it never saw reads them back from the aggregate
topic. :class:`TopicReadBack` positions every partition at the first record stamped at or
after a moment (``offsets_for_times``), notes the partitions' end offsets at that instant,
and hands records over until the reader has caught up with those offsets, so the read is
bounded even while producers keep writing. It may be polled past that point to follow the
topic a little further, and rewound for the next read-back.

Values come back as raw bytes: a caller that wants a few keys out of many skips the rest
without decoding them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emostream import kafka
from emostream.kafka.errors import translate_errors
from emostream.settings import Settings


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record as the topic holds it."""

    key: str | None
    value: bytes | None
    timestamp: int  # epoch ms, as stamped by the producer (or the broker)


class TopicReadBack:
    """Reads ``topic`` back from a moment in the past, as often as asked, on one connection.

    :meth:`rewind` positions every partition at the first record stamped at or after a
    moment and notes the end offsets; :attr:`caught_up` then turns true once everything
    the topic held at that instant has been returned. One reader serves one caller at a
    time; keep it between read-backs (opening a consumer costs a bootstrap), close it at
    the end.
    """

    def __init__(self, settings: Settings, topic: str, *, max_poll_records: int = 500, metadata_timeout: float = 10.0):
        self.topic = topic
        self._consumer: Any = kafka.consumer(
            settings,
            group_id=None,
            client_id="emostream-readback",
            enable_auto_commit=False,
            value_deserializer=None,
            # A seek below the log start (retention, compaction) reads from the oldest record left.
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            fetch_max_wait_ms=100,
        )
        try:
            self._partitions = kafka.partitions(self._consumer, topic, metadata_timeout)
            with translate_errors():
                self._consumer.assign(self._partitions)
        except BaseException:
            self._consumer.close()
            raise
        self.end: dict[Any, int] = {}
        self._caught_up = True

    def rewind(self, since_ms: int, timeout: float = 10.0) -> None:
        """Go back to the first record stamped at or after ``since_ms``; read up to the end as of now.

        Each of the two offset lookups may take up to ``timeout`` seconds (:class:`KafkaTimeout` after).
        """
        timeout_ms = max(1, int(timeout * 1000))
        with translate_errors():
            self.end = dict(self._consumer.end_offsets(self._partitions, timeout_ms=timeout_ms))
            found = self._consumer.offsets_for_times(
                {partition: max(0, since_ms) for partition in self._partitions}, timeout_ms=timeout_ms
            )
            for partition in self._partitions:
                at = found.get(partition)
                # No record that recent: nothing to read back on this partition.
                self._consumer.seek(partition, self.end[partition] if at is None else at.offset)
        self._caught_up = False

    @property
    def caught_up(self) -> bool:
        """True once the reader is at or past the end offsets taken by the last :meth:`rewind`."""
        if not self._caught_up:
            with translate_errors():
                self._caught_up = all(
                    self._consumer.position(partition) >= offset for partition, offset in self.end.items()
                )
        return self._caught_up

    def poll(self, timeout_ms: int = 200) -> list[StoredRecord]:
        """The next records, in offset order per partition (empty when none came in ``timeout_ms``)."""
        with translate_errors():
            batches = self._consumer.poll(timeout_ms=timeout_ms)
        return [
            StoredRecord(record.key, record.value, record.timestamp)
            for records in batches.values()
            for record in records
        ]

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except Exception:  # closing a reader whose broker went away must not hide the caller's error
            pass

    def __enter__(self) -> TopicReadBack:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

"""python-socketio's Kafka client manager, fixed for kafka-python 3 and batched.

Each cluster has one channel (a Kafka topic). Its cluster publisher holds a
write-only :class:`KafkaClientManager` and emits ``emoji_update`` to the room of an
event; every subscriber node of the cluster uses a :class:`KafkaClientManager` as
its Socket.IO client manager, so the emit reaches the viewers in that room on
every node, through the library's own room machinery.

The stock ``socketio.KafkaManager`` does not work here: it sends ``str`` values,
which kafka-python 3 rejects, it flushes the producer on every emit (one broker
round trip per message), it builds raw clients with none of our configuration, and
its listener has no way to stop. This subclass sends JSON bytes through the
project's producer, lets the producer batch (callers flush when they need a
guarantee), reads with the project's consumer, and can be closed.

Besides the library's own messages the channel carries EmoStream control messages
(method ``emostream:*``), e.g. "disconnect this client, its token is revoked".
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import socketio
from socketio.pubsub_manager import PubSubManager

from emostream import kafka
from emostream.settings import Settings

log = logging.getLogger(__name__)

CONTROL_PREFIX = "emostream:"
DISCONNECT_CLIENT = CONTROL_PREFIX + "disconnect_client"
NAMESPACE = "/"

# Handed a control message (a dict); runs in the listener task.
ControlHandler = Callable[[dict[str, Any]], None]
# Handed an emit read from the channel and the function that delivers it to this node's
# clients; decides whether (and when) to call it. Runs in the listener task.
EmitGate = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None]


def token_digest(token: str) -> str:
    """A short, non-reversible name of a token, for revocation lists and logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class KafkaClientManager(socketio.KafkaManager):
    """A Socket.IO client manager over one Kafka topic, for kafka-python 3.

    ``write_only=True`` in a publisher (it only emits); the default in a subscriber
    node, which also listens. ``producer`` may be shared between several managers.
    """

    name = "emostream-kafka"

    def __init__(
        self,
        settings: Settings,
        channel: str,
        write_only: bool = False,
        producer: Any = None,
        logger: logging.Logger | None = None,
        json: Any = None,
    ):
        # Skip KafkaManager.__init__: it builds raw clients with the wrong serialization.
        PubSubManager.__init__(self, channel=channel, write_only=write_only, logger=logger or log, json=json)
        self.settings = settings
        self.kafka_urls = settings.kafka_bootstrap.split(",")
        self._own_producer = producer is None
        # linger batches a burst of emits into one request instead of one flush per emit.
        self.producer = producer if producer is not None else kafka.producer(settings, linger_ms=2)
        self.consumer: Any = None
        self.control_handlers: dict[str, ControlHandler] = {}
        self.emit_gate: EmitGate | None = None
        self._closed = False
        self.received = 0

    # ----------------------------------------------------------------- publishing

    def _publish(self, data: dict[str, Any]) -> None:
        # kafka-python 3 takes bytes; no flush here, the producer batches (see flush()).
        with kafka.translate_errors():
            self.producer.send(self.channel, value=self.json.dumps(data).encode())

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every message published so far is on the broker."""
        kafka.flush(self.producer, 30.0 if timeout is None else timeout)

    def publish_control(self, method: str, **fields: Any) -> None:
        """Publish an EmoStream control message to every node of the channel."""
        if not method.startswith(CONTROL_PREFIX):
            raise ValueError(f"control methods start with {CONTROL_PREFIX!r}")
        self._publish({"method": method, "host_id": self.host_id, **fields})

    # ----------------------------------------------------------------- listening

    def position_at_end(self) -> None:
        """Open the consumer positioned at the channel's end, before anything is announced.

        A node calls this before its first heartbeat, so every message published after
        it is in the membership reaches it (the stock manager positions lazily, on the
        first poll, and can miss what is published in between).
        """
        if self.consumer is not None:
            return
        consumer = kafka.consumer(
            self.settings, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=kafka.LONG_FETCH_WAIT_MS
        )
        try:
            kafka.assign_at_end(consumer, self.channel)
        except BaseException:
            consumer.close()
            raise
        self.consumer = consumer

    def _kafka_listen(self) -> Iterator[Any]:
        self.position_at_end()
        while not self._closed:
            for records in kafka.poll(self.consumer, kafka.LONG_POLL_MS).values():
                yield from records

    def _listen(self) -> Iterator[Any]:
        for record in self._kafka_listen():
            if record.topic == self.channel:
                yield record.value

    def _thread(self) -> None:
        """The library's listener loop, plus control messages and a clean exit on close()."""
        while not self._closed:
            try:
                for message in self._listen():
                    self.received += 1
                    self._dispatch(message)
            except Exception:
                if self._closed:
                    break
                log.exception("channel %s listener failed; resuming", self.channel)
                self.server.sleep(1)
        if self.consumer is not None:
            self.consumer.close()

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, (bytes, str)):
            try:
                message = self.json.loads(message)
            except ValueError:
                log.warning("ignoring a message on %s that is not JSON", self.channel)
                return
        if not isinstance(message, dict) or "method" not in message:
            return
        method = message["method"]
        try:
            if isinstance(method, str) and method.startswith(CONTROL_PREFIX):
                handler = self.control_handlers.get(method)
                if handler is not None:
                    handler(message)
            elif method == "callback":
                self._handle_callback(message)
            elif message.get("host_id") != self.host_id:
                handler = {
                    "emit": self._handle_emit,
                    "disconnect": self._handle_disconnect,
                    "enter_room": self._handle_enter_room,
                    "leave_room": self._handle_leave_room,
                    "close_room": self._handle_close_room,
                }.get(method)
                if handler is not None:
                    handler(message)
        except Exception:
            log.exception("handling %s from channel %s failed", method, self.channel)

    def _handle_emit(self, message: dict[str, Any]) -> None:
        # A subscriber node keeps its viewers' history in step with what it delivers (emostream.fanout.catchup).
        if self.emit_gate is None:
            super()._handle_emit(message)
        else:
            self.emit_gate(message, super()._handle_emit)

    def close(self) -> None:
        """Stop listening and release the Kafka clients (pending messages are flushed)."""
        self._closed = True
        if self._own_producer:
            try:
                self.producer.flush(timeout=5)
                self.producer.close(timeout=5)
            except Exception:  # closing on the way out must not hide the real error
                log.debug("closing the channel producer failed", exc_info=True)

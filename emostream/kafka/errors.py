"""The Kafka layer's own errors, and their translation from the two client libraries'.

Application code catches these, never kafka-python's or librdkafka's: which library sits
under a client is the layer's business. Every error says whether the same operation may
succeed later (``retriable``) and whether the client that raised it is finished (``fatal``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import kafka.errors as kafka_python


class KafkaError(Exception):
    """A Kafka operation failed."""

    retriable = False

    def __init__(self, message: str, *, retriable: bool | None = None, fatal: bool = False):
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable
        self.fatal = fatal


class KafkaUnavailable(KafkaError):
    """No broker answered; they may be restarting."""

    retriable = True


class KafkaTimeout(KafkaError):
    """Kafka did not answer or acknowledge in time."""

    retriable = True


class QueueFull(KafkaError):
    """The producer's local queue is full; it empties as Kafka acknowledges."""

    retriable = True


class TopicNotFound(KafkaError):
    """The topic does not exist, or its metadata has not reached this client yet."""

    retriable = True


class NotAuthorized(KafkaError):
    """The cluster's ACLs do not allow this client's user the operation (a topic, a group, the cluster)."""


class AuthenticationFailed(KafkaError):
    """The cluster refused this client's credentials (wrong user or password, or none)."""


class CommitFailed(KafkaError):
    """A rebalance took the partitions before the offsets were committed; their next owner re-reads them."""


class DeliveryError(KafkaError):
    """The producer gave up on a record: delivery timeout, purge at shutdown, or a fatal producer error."""


def retriable(error: BaseException) -> bool:
    """True when the operation that raised ``error`` may succeed if tried again."""
    return isinstance(error, KafkaError) and error.retriable


def translate(error: BaseException) -> BaseException:
    """Our error for a client library's ``error``; any other exception comes back unchanged."""
    if isinstance(error, kafka_python.KafkaError):
        return _from_kafka_python(error)
    confluent = sys.modules.get("confluent_kafka")  # not imported: none of its errors can exist
    if confluent is not None and isinstance(error, confluent.KafkaException) and error.args:
        return from_librdkafka(error.args[0])
    return error


@contextmanager
def translate_errors() -> Iterator[None]:
    """Raise the client libraries' errors inside the block as the layer's own."""
    try:
        yield
    except KafkaError:
        raise
    except Exception as error:
        ours = translate(error)
        if ours is error:
            raise
        raise ours from error


def _from_kafka_python(error: kafka_python.KafkaError) -> KafkaError:
    message = str(error) or type(error).__name__
    if isinstance(error, kafka_python.CommitFailedError):
        return CommitFailed(message)
    if isinstance(error, kafka_python.KafkaTimeoutError | kafka_python.RequestTimedOutError):
        return KafkaTimeout(message)
    if isinstance(error, kafka_python.KafkaConnectionError | kafka_python.NodeNotReadyError):
        return KafkaUnavailable(message)
    if isinstance(error, kafka_python.UnknownTopicOrPartitionError):
        return TopicNotFound(message)
    if isinstance(error, kafka_python.AuthorizationError):
        return NotAuthorized(message)
    if isinstance(error, kafka_python.SaslAuthenticationFailedError):
        return AuthenticationFailed(message)
    return KafkaError(message, retriable=bool(getattr(error, "retriable", False)))


def from_librdkafka(error: object, kind: type[KafkaError] | None = None) -> KafkaError:
    """Our error for one of librdkafka's error objects (``confluent_kafka.KafkaError``)."""
    from confluent_kafka import KafkaError as Librdkafka

    code = error.code()  # type: ignore[attr-defined]
    if kind is None:
        kind = {
            Librdkafka._TIMED_OUT: KafkaTimeout,
            Librdkafka._MSG_TIMED_OUT: KafkaTimeout,
            Librdkafka._TRANSPORT: KafkaUnavailable,
            Librdkafka._ALL_BROKERS_DOWN: KafkaUnavailable,
            Librdkafka._UNKNOWN_TOPIC: TopicNotFound,
            Librdkafka.UNKNOWN_TOPIC_OR_PART: TopicNotFound,
            Librdkafka._QUEUE_FULL: QueueFull,
            Librdkafka.TOPIC_AUTHORIZATION_FAILED: NotAuthorized,
            Librdkafka.GROUP_AUTHORIZATION_FAILED: NotAuthorized,
            Librdkafka.CLUSTER_AUTHORIZATION_FAILED: NotAuthorized,
            Librdkafka.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: NotAuthorized,
            Librdkafka.SASL_AUTHENTICATION_FAILED: AuthenticationFailed,
            Librdkafka._AUTHENTICATION: AuthenticationFailed,
        }.get(code, KafkaError)
    retriable = kind.retriable or bool(error.retriable())  # type: ignore[attr-defined]
    return kind(error.str(), retriable=retriable, fatal=bool(error.fatal()))  # type: ignore[attr-defined]

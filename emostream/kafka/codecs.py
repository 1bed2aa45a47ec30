"""How keys and values look on the wire of the kafka-python clients: UTF-8 keys, JSON values."""

from __future__ import annotations

import json
from typing import Any

from kafka.serializer import Deserializer, Serializer


class JsonValues(Serializer, Deserializer):
    """JSON values; bytes pass through, and undecodable input comes back as raw bytes."""

    def serialize(self, topic: str, headers: Any, data: Any) -> bytes | None:
        if data is None or isinstance(data, bytes):
            return data
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    def deserialize(self, topic: str, headers: Any, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return data


class TextKeys(Serializer, Deserializer):
    """UTF-8 string keys."""

    def serialize(self, topic: str, headers: Any, data: Any) -> bytes | None:
        if data is None or isinstance(data, bytes):
            return data
        return str(data).encode()

    def deserialize(self, topic: str, headers: Any, data: bytes | None) -> str | None:
        return None if data is None else data.decode(errors="replace")

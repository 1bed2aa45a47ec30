"""One streaming query at a time on the checkpoint: an exclusive lock on a file beside it.

Spark refuses a second run of one query only inside one JVM; two processors in two JVMs would
both resume from the same checkpoint, and the later writer of a window could overwrite a
newer count with an older one. So a processor starts its query only while it holds this lock,
and one that finds it taken waits as the standby (see service.py).

The lock is taken by the driver JVM (``FileChannel.tryLock``, an ``fcntl`` lock on Linux), not
by Python: it is the JVM that runs the query, and it can outlive a killed Python process by the
moment it takes to notice its parent is gone. The kernel releases the lock when the JVM exits,
however it exits, so a standby takes over without waiting for any timeout, and never while the
old query can still write. It guards drivers on one host; docs/deployment.md says what guards
drivers on several.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from emostream.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("emostream.processor")


def lock_path(settings: Settings) -> Path:
    """``EMOSTREAM_PROCESSOR_LOCK_FILE``, else ``<checkpoint>.lock`` beside a local checkpoint."""
    if settings.processor_lock_file:
        return Path(settings.processor_lock_file)
    location = urlparse(settings.checkpoint_dir)
    if location.scheme in ("", "file"):
        return Path(location.path.rstrip("/") + ".lock")
    # A checkpoint on HDFS or an object store: the lock still keeps the drivers of this host apart.
    return Path(settings.state_dir) / "processor.lock"


class CheckpointLock:
    """The processor's lock file, held through the driver JVM of ``spark``."""

    def __init__(self, spark: SparkSession, path: Path):
        self.path = path
        self._jvm = spark._jvm
        self._file: Any = None  # java.io.RandomAccessFile while held
        self._lock: Any = None
        self.acquired_at: float | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        if self._lock is not None:
            return True
        from py4j.protocol import Py4JJavaError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._jvm.java.io.RandomAccessFile(str(self.path), "rw")
        try:
            lock = handle.getChannel().tryLock()
        except Py4JJavaError:  # OverlappingFileLockException: this JVM holds it already
            lock = None
        if lock is None:
            handle.close()
            return False
        self._file, self._lock = handle, lock
        self.acquired_at = time.time()
        self._write_holder(handle)
        return True

    def _write_holder(self, handle: Any) -> None:
        """Who holds the lock, for the standby's /healthz and for an operator; the lock is the truth."""
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "jvm_pid": int(self._jvm.java.lang.ProcessHandle.current().pid()),
            "since": self.acquired_at,
        }
        channel = handle.getChannel()
        channel.truncate(0)
        channel.write(self._jvm.java.nio.ByteBuffer.wrap(bytearray(json.dumps(holder).encode())), 0)
        channel.force(False)

    def holder(self) -> dict[str, Any] | None:
        """What the holder wrote into the file (read by Python, so no descriptor of the JVM is touched)."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Let the standby take over: only once this processor's query has stopped."""
        handle, self._file, self._lock = self._file, None, None
        if handle is not None:
            try:
                handle.close()  # closing the file releases its lock
            except Exception as error:  # the JVM is going; its exit releases the lock anyway
                log.debug("releasing %s: %s", self.path, error)


def held_by_another(path: Path) -> dict[str, Any] | None:
    """What the holder wrote, when another process holds the lock at ``path``; None when it is free.

    Python's ``lockf`` is the same kind of lock as the JVM's (``fcntl``), so this asks without a
    JVM. The probe takes the lock for an instant when it is free; a processor that fails its
    ``try_acquire`` in that instant only waits one poll as the standby.
    """
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            return json.loads(os.pread(descriptor, 4096, 0) or b"{}")
        except ValueError:
            return {}
    finally:
        os.close(descriptor)  # also releases the probe's own lock
    return None

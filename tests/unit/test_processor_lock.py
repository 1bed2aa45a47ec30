"""The checkpoint's lock: where it lives, and that one holder at a time has it (real OS locks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emostream.processor.lock import CheckpointLock, held_by_another, lock_path
from emostream.settings import Settings

# A process that holds the lock the way a driver JVM does (fcntl), says so, and waits to be killed.
HOLDER = """
import fcntl, json, os, sys, time
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(descriptor, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path):
    path = tmp_path / "checkpoint.lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield path, process
    finally:
        process.kill()
        process.wait(10)


def test_the_lock_file_sits_beside_a_local_checkpoint(tmp_path: Path):
    settings = Settings.from_env(environ={}, checkpoint_dir=str(tmp_path / "checkpoints" / "processor"))
    assert lock_path(settings) == tmp_path / "checkpoints" / "processor.lock"
    as_url = settings.replace(checkpoint_dir=f"file://{tmp_path}/checkpoints/processor/")
    assert lock_path(as_url) == tmp_path / "checkpoints" / "processor.lock"


def test_a_remote_checkpoint_locks_in_the_state_folder_unless_a_file_is_named(tmp_path: Path):
    settings = Settings.from_env(environ={}, checkpoint_dir="hdfs://namenode/emostream", state_dir=str(tmp_path))
    assert lock_path(settings) == tmp_path / "processor.lock"
    named = settings.replace(processor_lock_file=str(tmp_path / "shared" / "emostream.lock"))
    assert lock_path(named) == tmp_path / "shared" / "emostream.lock"


def test_a_free_or_missing_lock_is_held_by_nobody(tmp_path: Path):
    assert held_by_another(tmp_path / "missing.lock") is None
    free = tmp_path / "free.lock"
    free.write_text('{"pid": 1}')
    assert held_by_another(free) is None
    assert held_by_another(free) is None  # the probe let go of it


def test_a_held_lock_names_its_holder_and_is_free_the_moment_the_holder_is_killed(holder):
    path, process = holder
    assert held_by_another(path)["pid"] == process.pid
    process.kill()
    process.wait(10)
    assert held_by_another(path) is None


@pytest.mark.spark
def test_the_driver_jvm_takes_the_lock_only_when_nobody_holds_it(spark, holder, tmp_path: Path):
    path, process = holder
    waiting = CheckpointLock(spark, path)
    assert not waiting.try_acquire()  # another process holds it: a JVM's lock and Python's are one kind
    process.kill()
    process.wait(10)
    assert waiting.try_acquire()
    try:
        written = json.loads(path.read_text())
        assert held_by_another(path) == written
        assert written["jvm_pid"] != written["pid"]  # the JVM holds it, not the Python process
        assert not CheckpointLock(spark, path).try_acquire()  # not twice in one JVM either
    finally:
        waiting.release()
    assert held_by_another(path) is None
    again = CheckpointLock(spark, path)
    assert again.try_acquire()
    again.release()

"""The emoji processor against the real broker and real Spark.

The streaming tests run the processor's queries in this process on the test run's
SparkSession; the restart test runs ``emoji_processor.py`` as a child process.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from emostream import kafka
from emostream.processor import QUERY_NAME
from emostream.processor import transforms as aggregation
from emostream.processor.dead_letters import PositionFile
from emostream.processor.service import Processor
from emostream.processor.spark import FILE_SYSTEM_CHECKPOINTS, FORKLESS_FILE_SYSTEM
from emostream.settings import Settings
from emostream.wire import EmojiEvent, aggregate_key, now_ms, scaled_count, validate_aggregate
from tests.harness.support import ROOT, ServiceProcess, free_port, metric_of, read_topic, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.spark]

EMOJI = ["🔥", "👏", "😂", "\u2764\ufe0f", "🏏"]


def window_base() -> int:
    """A window start a minute ago, so every test's windows are whole and recent."""
    return (now_ms() - 60_000) // 2000 * 2000


def emoji_events(count: int, start: int, span_ms: int, events: Iterable[str], seed: int) -> list[EmojiEvent]:
    """``count`` emoji spread evenly over ``span_ms`` from ``start``, in time order."""
    rng = random.Random(seed)
    event_ids = list(events)
    return [
        EmojiEvent(
            f"viewer-{rng.randrange(500)}",
            rng.choice(EMOJI),
            start + i * span_ms // count - 30,
            rng.choice(event_ids),
            start + i * span_ms // count,
        )
        for i in range(count)
    ]


def produce(settings: Settings, events: Iterable[EmojiEvent | tuple[str, bytes | None]]) -> None:
    producer = kafka.producer(settings)
    try:
        for item in events:
            if isinstance(item, EmojiEvent):
                producer.send(settings.emoji_topic, key=item.key, value=item.record())
            else:
                producer.send(settings.emoji_topic, key=item[0], value=item[1])
        producer.flush(timeout=60)
    finally:
        producer.close()


def expected_counts(events: Iterable[EmojiEvent], window_ms: int = 2000) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {}
    for e in events:
        key = aggregate_key(e.event_id, e.received_at - e.received_at % window_ms)
        counts.setdefault(key, Counter())[e.emoji_type] += 1
    return {key: dict(counter) for key, counter in counts.items()}


def latest_by_key(records: list[Any]) -> dict[str, dict]:
    """The last aggregate per key: what a compacted topic, or a viewer, ends up with."""
    latest: dict[str, dict] = {}
    for record in records:
        latest[record.key] = record.value
    return latest


def wait_for_counts(
    settings: Settings, expected: dict[str, dict[str, int]], timeout: float = 180
) -> tuple[dict[str, dict], list[Any]]:
    """Read the aggregate topic until the last record of each key holds ``expected``."""
    records = read_topic(
        settings,
        settings.aggregate_topic,
        until=lambda rs: {k: v["counts"] for k, v in latest_by_key(rs).items()} == expected,
        timeout=timeout,
        settle=1.0,
    )
    return latest_by_key(records), records


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the processor's /metrics; a sample that is not there fails the test."""
    return metric_of(f"http://127.0.0.1:{port}/metrics", name, **labels)


def eventually(check: Callable[[], bool], timeout: float = 60) -> bool:
    """The listener reports a batch just after its output lands, so metrics may lag a little."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Short triggers make the tests quicker; the metrics port is free."""
    return settings.replace(trigger_ms=200, processor_metrics_port=free_port())


@pytest.fixture
def start_processor(spark, fast: Settings) -> Iterator[Callable[..., Processor]]:
    """Starts the processor's queries in this process; a test produces its backlog first,
    so the first micro-batch holds all of it and no emoji can fall behind the watermark."""
    started: list[Processor] = []

    def start(settings: Settings | None = None) -> Processor:
        started.append(Processor(spark, settings or fast).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()


def test_a_processor_starts_its_query_and_endpoint_only_when_started(spark, fast):
    processor = Processor(spark, fast)
    try:
        assert [query.name for query in spark.streams.active] == []
        assert metric_unreachable(fast.processor_metrics_port)
        assert processor.health().status == "starting"

        processor.start()
        assert [query.name for query in spark.streams.active] == [QUERY_NAME]
        health = requests.get(f"http://127.0.0.1:{fast.processor_metrics_port}/healthz", timeout=5)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
    finally:
        processor.stop()
    assert spark.streams.active == []
    assert processor.health().status == "unavailable"


def test_last_record_per_key_equals_the_exact_counts_of_several_events_and_windows(fast, start_processor):
    base = window_base()
    sent = emoji_events(3000, base, 8000, ["final", "semi", "toss"], seed=1)
    # One window gets more than 1000 of one kind, so its scaled value is 2.
    sent += [EmojiEvent(f"viewer-{i}", "🔥", base, "final", base + 4000 + i % 2000) for i in range(1001)]
    sent.sort(key=lambda e: e.received_at)
    expected = expected_counts(sent)
    assert len(expected) == 12
    produce(fast, sent)

    start_processor()
    latest, records = wait_for_counts(fast, expected)

    assert {key: value["counts"] for key, value in latest.items()} == expected
    for record in records:
        value = validate_aggregate(record.value)
        assert record.key == aggregate_key(value["event_id"], value["window_start"])
        assert value["window_end"] - value["window_start"] == 2000
        assert value["total"] == sum(value["counts"].values())
        assert value["scaled"] == {emoji: scaled_count(n) for emoji, n in value["counts"].items()}
    assert latest[aggregate_key("final", base + 4000)]["scaled"]["🔥"] == 2


@pytest.mark.parametrize("partitions", [1, 2])
def test_batches_are_shuffled_into_the_state_store_only_when_it_has_more_than_one_partition(
    spark, fast, start_processor, capsys, partitions
):
    # The emoji topic has two partitions; one state store partition takes both without a shuffle.
    base = window_base()
    sent = emoji_events(400, base, 6000, ["final", "semi"], seed=3)
    expected = expected_counts(sent)
    produce(fast, sent)
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    try:
        # The query takes the session's settings as it starts.
        processor = start_processor(fast.replace(shuffle_partitions=partitions))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)

    latest, _ = wait_for_counts(fast, expected)
    assert {key: value["counts"] for key, value in latest.items()} == expected
    capsys.readouterr()
    processor.query.explain()
    plan = capsys.readouterr().out
    assert "StateStoreSave [event_id" in plan and f"numPartitions = {partitions}]" in plan, plan
    assert ("Exchange hashpartitioning" in plan) == (partitions > 1), plan


def test_an_open_window_is_rewritten_with_its_cumulative_counts_as_emoji_arrive(fast, start_processor):
    # With the 2-second trigger the issue asks to support (the other tests use 200 ms).
    fast = fast.replace(trigger_ms=2000)
    base = window_base()
    first = [EmojiEvent(f"viewer-{i}", "👏", base, "final", base + 100 + i) for i in range(40)]
    second = [EmojiEvent(f"viewer-{i}", "🔥", base, "final", base + 900 + i) for i in range(25)]
    key = aggregate_key("final", base)

    start_processor(fast)
    produce(fast, first)
    wait_for_counts(fast, {key: {"👏": 40}})
    produce(fast, second)
    latest, records = wait_for_counts(fast, {key: {"👏": 40, "🔥": 25}})

    assert records[0].value["counts"] == {"👏": 40}
    assert records[-1].value["counts"] == {"👏": 40, "🔥": 25}
    assert latest[key]["total"] == 65


def test_emoji_held_back_behind_newer_ones_correct_their_window_within_the_watermark_and_count_late_after(
    fast, start_processor
):
    # Through a Kafka outage ingest holds emoji it acknowledged; when Kafka is back, emoji accepted
    # after the outage can reach the processor first and move its watermark on. The held ones must
    # still count in their own window; only those older than the watermark are dropped, and counted.
    fast = fast.replace(watermark_ms=20_000)
    base = window_base()
    newer = [EmojiEvent(f"viewer-{i}", "🔥", base, "final", base + 30_000 + i) for i in range(50)]
    held = [EmojiEvent(f"viewer-{i}", "👏", base, "final", base + 12_000 + i) for i in range(20)]
    too_late = [EmojiEvent(f"viewer-{i}", "😂", base, "final", base + 2_000 + i) for i in range(7)]
    newest_key, held_key = aggregate_key("final", base + 30_000), aggregate_key("final", base + 12_000)

    processor = start_processor(fast)
    produce(fast, newer)
    wait_for_counts(fast, {newest_key: {"🔥": 50}})
    # The processor's watermark is now 20 s behind the newest emoji: base + 10 000.
    produce(fast, [*held, *too_late])
    latest, _ = wait_for_counts(fast, {newest_key: {"🔥": 50}, held_key: {"👏": 20}})
    assert aggregate_key("final", base + 2_000) not in latest
    # Spark counts a window's late emoji of a micro-batch once, after its partial count.
    port = fast.processor_metrics_port
    assert eventually(lambda: metric(port, "emostream_processor_late_rows_total") >= 1, 60), processor.health()


def test_poison_records_go_to_the_dead_letter_topic_and_the_good_ones_still_count(fast, start_processor):
    base = window_base()
    good = emoji_events(200, base, 4000, ["final"], seed=2)
    record = good[0].record()
    poison = {
        b"not json at all": aggregation.NOT_JSON_OBJECT,
        b"\xff\xfe\x00": aggregation.NOT_UTF8,
        json.dumps({**record, "emoji_type": "🍕"}).encode(): aggregation.UNKNOWN_EMOJI,
        # ❤ without its variation selector is not the configured ❤️.
        json.dumps({**record, "emoji_type": "\u2764"}).encode(): aggregation.UNKNOWN_EMOJI,
        json.dumps({k: v for k, v in record.items() if k != "user_id"}).encode(): aggregation.BAD_USER_ID,
        json.dumps({**record, "received_at": "later"}).encode(): aggregation.BAD_RECEIVED_AT,
    }
    mixed: list[Any] = list(good)
    for i, value in enumerate(poison):
        mixed.insert(30 * i + 7, (f"poison-{i}", value))
    produce(fast, mixed)

    processor = start_processor()
    letters = read_topic(fast, fast.dead_letter_topic, until=len(poison), timeout=180, settle=2.0)
    latest, _ = wait_for_counts(fast, expected_counts(good))

    received = {}
    for letter in letters:
        text = letter.value.get("value")
        raw = text.encode() if text is not None else base64.b64decode(letter.value["value_base64"])
        received[raw] = letter.value["reason"]
    assert received == poison
    assert {letter.key for letter in letters} == {f"poison-{i}" for i in range(len(poison))}
    assert {key: value["counts"] for key, value in latest.items()} == expected_counts(good)

    port = fast.processor_metrics_port
    assert eventually(lambda: metric(port, "emostream_processor_dead_letters_total") == len(poison))
    assert metric(port, "emostream_processor_accepted_total") == len(good)
    assert metric(port, "emostream_processor_rejected_total", reason=aggregation.UNKNOWN_EMOJI) == 2
    assert metric(port, "emostream_processor_rejected_total", reason=aggregation.NOT_UTF8) == 1
    assert metric(port, "emostream_processor_rejected_total", reason=aggregation.BAD_USER_ID) == 1
    assert metric(port, "emostream_processor_input_rows_total") == len(mixed)
    assert metric(port, "emostream_processor_batches_total") >= 1
    assert metric(port, "emostream_processor_aggregates_total") >= len(latest)
    assert metric(port, "emostream_processor_last_batch_duration_seconds") > 0
    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["query"]["active"] is True
    assert health.json()["dead_letters"]["written"] == len(poison)

    processor.stop()
    assert metric_unreachable(port)


def metric_unreachable(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except requests.ConnectionError:
        return True
    return False


@contextmanager
def processes_started_by(spark, folder: Path) -> Iterator[list[str]]:
    """The command lines naming ``folder`` of the processes Spark's JVM starts meanwhile (a Flight Recording).

    Only those: the test run's one JVM does other work meanwhile (Spark deletes a stopped
    session's artifact folder with ``rm -rf``, and another test's session can end in the window).
    """
    jvm = spark._jvm
    recording = jvm.jdk.jfr.Recording()
    recording.enable("jdk.ProcessStart")
    recording.start()
    commands: list[str] = []
    try:
        yield commands
    finally:
        recording.stop()
        dump = jvm.java.io.File(str(folder / "process-starts.jfr")).toPath()
        recording.dump(dump)
        recording.close()
        events = jvm.jdk.jfr.consumer.RecordingFile.readAllEvents(dump)
        commands += [command for command in (event.getString("command") for event in events) if str(folder) in command]


def test_the_local_file_system_sets_permissions_in_process(spark, tmp_path):
    """ForklessLocalFileSystem: the modes Hadoop would set, without running chmod."""
    jvm = spark._jvm
    assert spark.conf.get("spark.sql.streaming.checkpointFileManagerClass") == FILE_SYSTEM_CHECKPOINTS
    folder = jvm.org.apache.hadoop.fs.Path(tmp_path.as_uri())
    fs = folder.getFileSystem(spark._jsc.hadoopConfiguration())
    assert fs.getClass().getName() == FORKLESS_FILE_SYSTEM
    permission = jvm.org.apache.hadoop.fs.permission.FsPermission
    with processes_started_by(spark, tmp_path) as started:
        stream = fs.create(
            jvm.org.apache.hadoop.fs.Path(folder, "offsets-7"), permission("640"), True, 4096, 1, 1 << 20, None
        )
        stream.writeBytes("v1")
        stream.close()
        fs.setPermission(jvm.org.apache.hadoop.fs.Path(folder, "offsets-7"), permission("604"))
    assert started == []
    assert stat.S_IMODE(os.stat(tmp_path / "offsets-7").st_mode) == 0o604
    assert (tmp_path / "offsets-7").read_bytes() == b"v1"
    assert (tmp_path / ".offsets-7.crc").exists()  # still Hadoop's checksummed file system

    # java.nio cannot set the sticky bit: that mode still goes to Hadoop's chmod.
    with processes_started_by(spark, tmp_path) as started:
        fs.mkdirs(jvm.org.apache.hadoop.fs.Path(folder, "shared"))
        fs.setPermission(jvm.org.apache.hadoop.fs.Path(folder, "shared"), permission("1777"))
    assert [command.split()[0] for command in started] == ["chmod"]
    assert stat.S_IMODE(os.stat(tmp_path / "shared").st_mode) == 0o1777


def test_the_dead_letter_position_is_replaced_whole_on_a_local_disk(spark, tmp_path):
    position = PositionFile(spark, str(tmp_path / "dead-letters.json"))
    assert position.read() is None
    with processes_started_by(spark, tmp_path) as started:
        position.write({"written_through": {"emoji_topic": {"0": 10}}})
        position.write({"written_through": {"emoji_topic": {"0": 25}}})
    assert started == []
    assert PositionFile(spark, str(tmp_path / "dead-letters.json")).read() == {
        "written_through": {"emoji_topic": {"0": 25}}
    }
    assert sorted(p.name for p in tmp_path.iterdir() if "dead-letters" in p.name) == [
        ".dead-letters.json.crc",
        "dead-letters.json",
    ]


def test_micro_batches_write_their_checkpoint_without_starting_a_process(spark, fast, start_processor, tmp_path):
    port = fast.processor_metrics_port
    base = window_base()
    first = emoji_events(300, base, 2000, ["final"], seed=11)
    produce(fast, first)
    start_processor()
    wait_for_counts(fast, expected_counts(first))
    more = emoji_events(300, base + 2000, 2000, ["final"], seed=12)
    with processes_started_by(spark, tmp_path) as started:
        # Five micro-batches, each writing its offset log, its commit log and a state delta per partition.
        for part in range(5):
            batches = metric(port, "emostream_processor_batches_total")
            produce(fast, more[part * 60 : (part + 1) * 60])
            assert eventually(lambda done=batches: metric(port, "emostream_processor_batches_total") > done)
        wait_for_counts(fast, expected_counts(first + more))
    assert started == []


# The restart test, so it stays in the CI selection (not "faults and slow"): about
# a minute on a quiet machine, two JVM starts included.
@pytest.mark.faults
def test_a_killed_processor_restarts_from_its_checkpoint_and_the_counts_stay_exact(settings, log_dir):
    run = settings.replace(
        trigger_ms=200,
        # Small micro-batches, so the kill lands in the middle of the backlog.
        max_offsets_per_trigger=1000,
        processor_metrics_port=free_port(),
    )
    port = run.processor_metrics_port
    base = window_base()
    before_kill = emoji_events(5000, base, 8000, ["final", "semi"], seed=3)
    while_down = emoji_events(1000, base + 8000, 2000, ["final", "semi"], seed=4)
    expected = expected_counts(before_kill + while_down)
    poison = [(f"poison-{i}", f"not json {i}".encode()) for i in range(4)]
    produce(run, [*before_kill[:800], poison[0], *before_kill[800:4900], poison[1], *before_kill[4900:]])

    first = ServiceProcess("emoji_processor.py", run, log_dir)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=180, process=first.process)
        assert eventually(lambda: metric(port, "emostream_processor_batches_total") >= 2, 180), first.log()
        read_before_kill = metric(port, "emostream_processor_input_rows_total")
        first.kill()
    finally:
        first.stop()
    assert read_before_kill < len(before_kill), "the processor finished before it was killed"

    produce(run, [poison[2], *while_down, poison[3]])
    second = ServiceProcess("emoji_processor.py", run, log_dir)
    try:
        latest, _ = wait_for_counts(run, expected, timeout=300)
        assert {key: value["counts"] for key, value in latest.items()} == expected
        # It resumed from the checkpoint instead of reading the topic again from the start.
        total = len(before_kill) + len(while_down) + len(poison)
        assert 0 < metric(port, "emostream_processor_input_rows_total") < total
        assert metric(port, "emostream_processor_late_rows_total") == 0
        # Every poison record reaches the dead-letter topic at least once, across the kill.
        letters = read_topic(run, run.dead_letter_topic, until=lambda rs: {r.key for r in rs} >= {k for k, _ in poison})
        assert {letter.key for letter in letters} == {key for key, _ in poison}
    finally:
        code = second.stop(sig=signal.SIGTERM, timeout=60)
    log = second.log_path.read_text(errors="replace")
    assert "resumed from the checkpoint" in log
    assert code == 0, log
    assert "processor stopped" in log
    assert "Traceback" not in log
    # At a 200 ms trigger most micro-batches overrun it: the processor's summary says so, Spark does not.
    assert "falling behind" not in log


class SparkSubmitted(ServiceProcess):
    """A top-level script run by bin/spark-submit, which starts the JVM before Python."""

    def command(self, script: str, args: tuple[str, ...]) -> list[str]:
        return [str(ROOT / "bin" / "spark-submit"), str(ROOT / script), *args]


def test_the_processor_runs_under_bin_spark_submit(settings, log_dir):
    run = settings.replace(trigger_ms=200, processor_metrics_port=free_port())
    events = emoji_events(500, window_base(), 4000, ["final", "semi"], seed=21)
    produce(run, events)
    submitted = SparkSubmitted("emoji_processor.py", run, log_dir)
    try:
        latest, _ = wait_for_counts(run, expected_counts(events), timeout=180)
        assert {key: value["counts"] for key, value in latest.items()} == expected_counts(events)
    finally:
        code = submitted.stop(sig=signal.SIGTERM, timeout=60)
    log = submitted.log_path.read_text(errors="replace")
    # Under spark-submit the JVM is the parent: SIGTERM ends it through its shutdown hooks (which
    # stop the query gracefully) while Python is still stopping, so 143 is the usual exit code.
    assert code in (0, 128 + signal.SIGTERM), log
    # bin/spark-submit passed the settings that write a local checkpoint in-process.
    assert "(through ForklessLocalFileSystem)" in log
    assert "Traceback" not in log
    assert "falling behind" not in log  # and the project's log4j2 file


def test_a_second_processor_on_the_checkpoint_waits_as_the_standby_and_takes_over_when_the_first_stops(spark, fast):
    standby_settings = fast.replace(processor_standby_metrics_port=free_port())
    first = Processor(spark, fast).start()
    second = Processor(spark, standby_settings).start()
    try:
        assert (first.role, second.role) == ("active", "standby")
        assert [query.name for query in spark.streams.active].count(QUERY_NAME) == 1
        waiting = requests.get(f"http://127.0.0.1:{standby_settings.processor_standby_metrics_port}/healthz", timeout=5)
        assert waiting.status_code == 200
        assert waiting.json()["role"] == "standby"
        assert waiting.json()["holder"]["since"] == first.lock.acquired_at
        assert not second.take_over_if_free()

        first.stop()
        assert second.take_over_if_free()
        assert [query.name for query in spark.streams.active] == [QUERY_NAME]  # the warm-up has stopped too
        active = requests.get(f"http://127.0.0.1:{fast.processor_metrics_port}/healthz", timeout=5).json()
        assert (active["role"], active["took_over_at"]) == ("active", second.took_over_at)
    finally:
        second.stop()
        first.stop()
    assert spark.streams.active == []

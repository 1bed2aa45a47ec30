"""What one flooding user costs everyone else: latency of well-behaved users, with and without a flood.

    .venv/bin/python bench/flood_bench.py                  # 10 s per phase
    .venv/bin/python bench/flood_bench.py --seconds 20 --polite-users 40

One ingest (``python3 app.py``, default workers) on a free port. Two phases in the same run:

- baseline: ``--polite-users`` users, each sending one emoji every ``--interval`` seconds
  (far below the per-user limit), timed request by request, each with its send credential;
- flood: the same users, while wrk hammers ``POST /emojis`` with batches of one single
  user_id over ``--flood-connections`` connections (far over that user's limit).

The table compares the polite users' latency between the phases and shows how the flood was
answered (mostly 429). The tests assert correctness (tests/security/test_flood.py); only this
bench talks about time. Kafka is ``--bootstrap``, else EMOSTREAM_KAFKA_BOOTSTRAP, else a broker
of the bench's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
from _common import ensure_wrk, free_port, kafka_for_bench, start_wrk, stop_process_group, wrk_result

from emostream import kafka
from emostream.settings import ROOT, Settings
from emostream.wire import SendClaims, issue_send_token, now_ms
from tests.harness.support import wait_healthy

FLOOD_SCRIPT = r"""
local body = '%(body)s'
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(send_token)s"}
statuses = {}  -- global: done() reads it from each thread
local threads = {}
function setup(thread) table.insert(threads, thread) end
function request() return wrk.format("POST", "/emojis", headers, body) end
function response(status) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do merged[tostring(status)] = (merged[tostring(status)] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(merged) do table.insert(parts, string.format('"%%s":%%d', status, n)) end
  io.write(string.format('WRK_RESULT {"requests":%%d,"duration_us":%%d,"statuses":{%%s}}\n',
    summary.requests, summary.duration, table.concat(parts, ",")))
end
"""


def send_headers(settings: Settings, user_id: str) -> dict[str, str]:
    """The Authorization header of a send credential for ``user_id`` in event ``live``, signed as registration would."""
    claims = SendClaims(user_id, "live", now_ms(), int(time.time()) + 3600)
    return {"Authorization": f"Bearer {issue_send_token(settings.secret, claims)}"}


def polite_load(
    settings: Settings, url: str, users: int, interval: float, seconds: float, tag: str
) -> tuple[list[float], dict[int, int]]:
    """Each user sends one emoji every ``interval`` s for ``seconds``; return latencies (ms) and statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def user(n: int) -> None:
        session = requests.Session()
        user_id = f"polite-{tag}-{n}"
        session.headers.update(send_headers(settings, user_id))
        next_at = time.monotonic() + interval * n / users  # spread the users over one interval
        while True:
            time.sleep(max(0.0, next_at - time.monotonic()))
            if time.monotonic() >= stop_at:
                return
            body = {"user_id": user_id, "emoji_type": "👏", "timestamp": now_ms()}
            started = time.perf_counter()
            status = session.post(url + "/emoji", json=body, timeout=30).status_code
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
            next_at += interval

    threads = [threading.Thread(target=user, args=(n,)) for n in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--polite-users", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between a polite user's emoji")
    parser.add_argument("--flood-connections", type=int, default=32)
    parser.add_argument("--flood-batch", type=int, default=50, help="emoji per flood request")
    parser.add_argument(
        "--bootstrap", help="use this Kafka (default: EMOSTREAM_KAFKA_BOOTSTRAP, else a private broker)"
    )
    args = parser.parse_args()

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="emostream-flood-bench-"))
    try:
        with kafka_for_bench(args.bootstrap, work, heap="384m") as bootstrap:
            return run(args, wrk, work, bootstrap)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, wrk: str, work: Path, bootstrap: str) -> int:
    ingest = None
    try:
        tag = uuid.uuid4().hex[:8]
        settings = Settings.from_env(
            environ={}, kafka_bootstrap=bootstrap, ingest_port=free_port(), state_dir=str(work / "state")
        ).replace(emoji_topic=f"flood-bench-{tag}")
        kafka.ensure_topics(settings, [s for s in kafka.topics(settings) if s.name == settings.emoji_topic])
        url = f"http://127.0.0.1:{settings.ingest_port}"
        log = open(work / "ingest.log", "wb")
        ingest = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py")],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", **settings.to_env()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(url + "/healthz", 60, ingest)
        except (TimeoutError, RuntimeError) as error:
            raise SystemExit(f"ingest did not start ({error}); see {work / 'ingest.log'}") from None

        batch = [{"user_id": f"flooder-{tag}", "emoji_type": "🔥", "timestamp": now_ms()}] * args.flood_batch
        script = work / "flood.lua"
        flood_token = send_headers(settings, f"flooder-{tag}")["Authorization"].removeprefix("Bearer ")
        script.write_text(FLOOD_SCRIPT % {"body": json.dumps(batch, ensure_ascii=False), "send_token": flood_token})

        rows = []
        for phase in ("baseline", "flood"):
            flooder = (
                start_wrk(wrk, url, script, args.flood_connections, args.seconds + 2) if phase == "flood" else None
            )
            if flooder is not None:
                time.sleep(1.0)  # the flood is at full strength before measuring
            latencies, statuses = polite_load(
                settings, url, args.polite_users, args.interval, args.seconds, f"{tag}-{phase}"
            )
            flood_result = {}
            if flooder is not None:
                output, _ = flooder.communicate(timeout=args.seconds + 30)
                flood_result = wrk_result(output) or {"error": output[-500:]}
            rows.append((phase, latencies, statuses, flood_result))

        print(
            f"\nflood bench: {args.polite_users} polite users x 1 emoji / {args.interval:g} s; flood: wrk, "
            f"{args.flood_connections} connections, {args.flood_batch} emoji of one user per request; "
            f"{args.seconds:g} s per phase; ingest {settings.ingest_workers} gthread workers\n"
        )
        header = f"{'phase':<9} {'polite req':>10} {'non-202':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  flood"
        print(header)
        print("-" * len(header))
        for phase, latencies, statuses, flood_result in rows:
            non_202 = sum(n for status, n in statuses.items() if status != 202)
            flood_text = flood_result.get("error", "-")
            if flood_result.get("requests"):
                seconds = flood_result["duration_us"] / 1e6
                answers = flood_result["statuses"]
                flood_text = (
                    f"{flood_result['requests'] / seconds:,.0f} req/s, "
                    f"{answers.get('429', 0) / max(1, flood_result['requests']):.1%} answered 429, "
                    f"{answers.get('202', 0)} accepted"
                )
            print(
                f"{phase:<9} {len(latencies):>10} {non_202:>8} {statistics.median(latencies):>8.1f} "
                f"{percentile(latencies, 95):>8.1f} {percentile(latencies, 99):>8.1f} {max(latencies):>8.1f}  {flood_text}"
            )
        return 0
    finally:
        if ingest is not None:
            stop_process_group(ingest)


if __name__ == "__main__":
    sys.exit(main())

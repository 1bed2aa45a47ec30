"""Ingest throughput and latency: gunicorn (``python3 app.py``) against Flask's development server.

    .venv/bin/python bench/ingest_bench.py                 # 64 connections, 10 s per run
    .venv/bin/python bench/ingest_bench.py --seconds 5 --worker-classes gthread,gevent

For each server and payload (one emoji per request, 100 per request) it starts the ingest
on a free port with a fresh topic, drives it with wrk (64 connections, bounded time), stops
it with SIGTERM (which flushes every buffer) and counts the topic's records in Kafka:
"accepted" (the ingest's own counter of emoji answered 202, warm-up included) must equal
"produced". Rates count the 202 answers wrk saw in the measured run. Each request carries
the emoji of one of ``--users`` users (request i is user i modulo that; each user sends
again and again, as a viewer taps), and the per-user limit is raised out of the way, as a real
crowd's many users would keep it.

Every server runs in both auth modes in the same invocation: ``token`` (each request with
the ``Authorization: Bearer <send_token>`` of its user, minted with the bench's secret) and
``open`` (no credential). The token/open line compares their single-emoji req/s: what
verifying credentials costs (target: at least 0.9).

The load generator is wrk (C + LuaJIT, Debian package ``wrk``): a Python client on the same
two cores could not produce the target load without taking the CPU the server needs. When
wrk is missing and this runs as root on Debian, it is installed with apt-get.

Kafka is ``--bootstrap``, else EMOSTREAM_KAFKA_BOOTSTRAP, else a broker of the benchmark's own
(started on free ports in a temporary folder and stopped at the end). Results also go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from _common import ensure_wrk, free_port, kafka_for_bench, run_wrk, stop_process_group, tree_cpu_seconds

from emostream import kafka
from emostream.settings import ROOT, Settings
from emostream.wire import SendClaims, issue_send_token, now_ms

# wrk script: a pool of ready-made requests, each with emoji of users no other request uses;
# responses are counted by status so accepted emoji are exact.
WRK_SCRIPT = r"""
local path, per_request, pool_size, now_ms = "%(path)s", %(per_request)d, %(pool_size)d, "%(now_ms)d"
local users, tokens_file = %(users)d, "%(tokens_file)s"  -- a send credential per user; "": open mode
local emoji = {"🔥", "👏", "😂", "😮", "❤️", "👍", "🎉", "🏏"}
local pool, next_index = {}, 1
local threads = {}
statuses = {}  -- global: done() reads it from each thread with thread:get()

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  local tokens = {}
  if tokens_file ~= "" then
    for line in io.lines(tokens_file) do table.insert(tokens, line) end
  end
  for i = 1, pool_size do
    local headers = {["Content-Type"] = "application/json"}
    local u = (i - 1) %% users + 1
    if tokens[u] then headers["Authorization"] = "Bearer " .. tokens[u] end
    local events = {}
    local user = string.format("b-%%d", u)
    for j = 1, per_request do
      events[j] = string.format('{"user_id":"%%s","emoji_type":"%%s","timestamp":%%s}',
                                user, emoji[(i + j) %% #emoji + 1], now_ms)
    end
    local body = events[1]
    if path == "/emojis" then body = "[" .. table.concat(events, ",") .. "]" end
    pool[i] = wrk.format("POST", path, headers, body)
  end
end

function request()
  local r = pool[next_index]
  next_index = next_index %% pool_size + 1
  return r
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do merged[tostring(status)] = (merged[tostring(status)] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(merged) do table.insert(parts, string.format('"%%s":%%d', status, n)) end
  io.write(string.format(
    'WRK_RESULT {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d,' ..
    '"socket_errors":%%d,"statuses":{%%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ",")))
end
"""


@dataclass
class Result:
    server: str
    auth: str
    payload: str
    connections: int
    seconds: float
    requests: int
    requests_per_s: float
    emoji_per_s: float
    kafka_emoji_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    statuses: dict
    server_cpu_s: float
    cpu_us_per_emoji: float
    accepted: int
    produced: int
    load_before: float


def produced_count(settings: Settings) -> int:
    return sum(kafka.end_offsets(settings, settings.emoji_topic).values())


def counters(url: str) -> dict[str, float]:
    """The ingest's own Prometheus counters (summed over its workers)."""
    names = {
        "emostream_ingest_accepted_emoji_total": "accepted",
        "emostream_ingest_sent_emoji_total": "sent",
        "emostream_ingest_buffered_emoji": "buffered",
    }
    values = dict.fromkeys(names.values(), 0.0)
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[names[name]] = float(value)
    return values


def drained(url: str, timeout: float = 120.0) -> dict[str, float]:
    """Wait until every accepted emoji is acknowledged by Kafka (and no request is still arriving)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        now = counters(url)
        if now["sent"] >= now["accepted"] and last is not None and now["accepted"] == last["accepted"]:
            return now
        last = now
        time.sleep(0.1)
    print("warning: the ingest did not drain its buffers in time", flush=True)
    return counters(url)


def start_ingest(settings: Settings, dev: bool, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env()}
    command = [sys.executable, str(ROOT / "app.py")] + (["--dev"] if dev else [])
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ingest exited with {process.returncode}; see {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{settings.ingest_port}/healthz", timeout=5).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_process_group(process)
    raise SystemExit(f"ingest did not become healthy; see {log_path}")


def write_tokens(settings: Settings, path: Path, count: int) -> None:
    """One send credential per user (``b-<i>``, event ``live``), as registration signs them."""
    expires_at = int(time.time()) + 3600
    issued_at = now_ms()
    with path.open("w") as out:
        for index in range(1, count + 1):
            out.write(issue_send_token(settings.secret, SendClaims(f"b-{index}", "live", issued_at, expires_at)) + "\n")


def bench_one(
    args: argparse.Namespace, wrk: str, base: Settings, work: Path, server: str, per_request: int, auth: str
) -> Result:
    dev = server == "flask-dev"
    worker_class = server.split("-", 1)[1] if server.startswith("gunicorn-") else base.ingest_worker_class
    topic = f"bench_emoji.{uuid.uuid4().hex[:10]}"
    settings = base.replace(
        emoji_topic=topic,
        ingest_port=free_port(),
        ingest_worker_class=worker_class,
        ingest_auth=auth,
        state_dir=str(work / f"state-{topic}"),
    )
    kafka.ensure_topics(settings, [kafka.TopicSpec(topic, settings.emoji_partitions)])
    path = "/emoji" if per_request == 1 else "/emojis"
    pool_size = 20_000 if per_request == 1 else 1_000
    tokens_file = ""
    if auth == "token":
        tokens_path = work / f"{topic}.tokens"
        write_tokens(settings, tokens_path, args.users)
        tokens_file = str(tokens_path)
    script = work / f"{topic}.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "path": path,
            "per_request": per_request,
            "pool_size": pool_size,
            "now_ms": time.time() * 1000,
            "tokens_file": tokens_file,
            "users": args.users,
        }
    )
    url = f"http://127.0.0.1:{settings.ingest_port}"
    process = start_ingest(settings, dev, work / f"{server}-{auth}.log")
    try:
        if args.warmup:
            run_wrk(wrk, url, script, args.connections, args.warmup, args.wrk_threads)
            drained(url)
        load_before = os.getloadavg()[0]
        cpu_start, start = tree_cpu_seconds(process.pid), time.monotonic()
        accepted_start = counters(url)["accepted"]
        measured = run_wrk(wrk, url, script, args.connections, args.seconds, args.wrk_threads)
        # The buffers absorb bursts, so what counts is how fast the emoji reach Kafka: the
        # sustained rate runs until the buffers are empty again.
        final = drained(url)
        cpu_end, end = tree_cpu_seconds(process.pid), time.monotonic()
    finally:
        exit_code = stop_process_group(process)
    if exit_code != 0:
        print(f"warning: ingest exited with {exit_code}; see {work / f'{server}-{auth}.log'}", flush=True)
    produced = produced_count(settings)
    seconds = measured["duration_us"] / 1e6
    answered = measured["statuses"].get("202", 0)
    in_run = final["accepted"] - accepted_start
    errors = measured["socket_errors"] + sum(n for status, n in measured["statuses"].items() if status != "202")
    return Result(
        server=server,
        auth=auth,
        payload=f"{per_request} emoji/request",
        connections=args.connections,
        seconds=round(seconds, 2),
        requests=measured["requests"],
        requests_per_s=round(answered / seconds, 1),
        emoji_per_s=round(answered * per_request / seconds, 1),
        kafka_emoji_per_s=round(in_run / (end - start), 1),
        p50_ms=measured["p50_us"] / 1000,
        p99_ms=measured["p99_us"] / 1000,
        errors=errors,
        statuses=measured["statuses"],
        server_cpu_s=round(cpu_end - cpu_start, 2),
        cpu_us_per_emoji=round((cpu_end - cpu_start) * 1e6 / max(1, in_run), 1),
        accepted=int(final["accepted"]),
        produced=produced,
        load_before=round(load_before, 2),
    )


def print_table(results: list[Result]) -> None:
    header = (
        f"{'server':<17} {'auth':<5} {'payload':<16} {'req/s':>7} {'emoji/s':>9} {'to Kafka/s':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} {'accepted':>9} {'produced':>9} {'check':<8} {'cpu us/emoji':>12} {'load':>5}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        check = "ok" if r.accepted == r.produced else "MISMATCH"
        print(
            f"{r.server:<17} {r.auth:<5} {r.payload:<16} {r.requests_per_s:>7,.0f} {r.emoji_per_s:>9,.0f} "
            f"{r.kafka_emoji_per_s:>10,.0f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.errors:>6} {r.accepted:>9,} "
            f"{r.produced:>9,} {check:<8} {r.cpu_us_per_emoji:>12.1f} {r.load_before:>5}"
        )
    baseline = {(r.auth, r.payload): r for r in results if r.server == "flask-dev"}
    print()
    for r in results:
        base = baseline.get((r.auth, r.payload))
        if base is not None and r is not base and base.emoji_per_s and base.kafka_emoji_per_s:
            print(
                f"{r.server} / flask-dev ({r.auth}), {r.payload}: {r.emoji_per_s / base.emoji_per_s:.1f}x accepted, "
                f"{r.kafka_emoji_per_s / base.kafka_emoji_per_s:.1f}x to Kafka"
            )
    ratios = token_open_ratios(results)
    for (server, payload), ratio in ratios.items():
        print(f"{server}, {payload}: token/open {ratio:.2f}x req/s")
    single = [ratio for (_, payload), ratio in ratios.items() if payload.startswith("1 ")]
    token_open = f"{min(single):.2f}" if single else "n/a"
    print(
        "\nreq/s, emoji/s: 202 answers wrk saw in the measured run. to Kafka/s: emoji accepted in the run divided "
        "by the time until Kafka acknowledged the last of them (the sustained rate). errors: non-202 answers and "
        "socket errors. accepted: the ingest's own counter (warm-up included); produced: records in the topic. "
        "cpu us/emoji: CPU time of all ingest processes per emoji, until drained. load: 1-min load average "
        "before the run (other processes included). token/open: single-emoji req/s in token mode over open mode, "
        f"lowest over the servers: {token_open}"
    )


def token_open_ratios(results: list[Result]) -> dict[tuple[str, str], float]:
    """Token mode's mean req/s over open mode's, for each server and payload measured in both."""
    rates: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        rates.setdefault((r.server, r.payload, r.auth), []).append(r.requests_per_s)
    ratios = {}
    for (server, payload, auth), token in rates.items():
        opened = rates.get((server, payload, "open"))
        if auth == "token" and opened and sum(opened):
            ratios[(server, payload)] = (sum(token) / len(token)) / (sum(opened) / len(opened))
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each run (0: none)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (each is one event loop)")
    parser.add_argument("--worker-classes", default="gevent,gthread", help="comma-separated gunicorn worker classes")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the setting's default)")
    parser.add_argument("--threads", type=int, help="threads per gthread worker (default: the setting's default)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each auth mode per server and payload")
    parser.add_argument("--users", type=int, default=1000, help="distinct users (and send credentials) sending")
    parser.add_argument("--payloads", default="1,100", help="comma-separated emoji per request")
    parser.add_argument("--no-baseline", action="store_true", help="skip Flask's development server")
    parser.add_argument(
        "--no-journal", action="store_true", help="answer 202 without the write-ahead journal (to see what it costs)"
    )
    parser.add_argument(
        "--bootstrap", help="use this Kafka (default: EMOSTREAM_KAFKA_BOOTSTRAP, else a private broker)"
    )
    args = parser.parse_args()
    if not (1 <= args.seconds <= 120 and 1 <= args.connections <= 1024):
        raise SystemExit("--seconds must be 1-120 and --connections 1-1024")

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="emostream-ingest-bench-"))
    ok = False
    try:
        with kafka_for_bench(args.bootstrap, work, heap="512m", kill=True) as bootstrap:
            base = Settings.from_env(
                environ={},
                kafka_bootstrap=bootstrap,
                log_level="WARNING",
                token_secret="bench-" + uuid.uuid4().hex,
                # Few users send a lot here: the per-user limit would measure itself.
                rate_limit_per_user=1_000_000.0,
                rate_burst_per_user=1_000_000,
            )
            if args.workers:
                base = base.replace(ingest_workers=args.workers)
            if args.threads:
                base = base.replace(ingest_threads=args.threads)
            if args.no_journal:
                base = base.replace(ingest_journal=False)
            servers = [f"gunicorn-{name.strip()}" for name in args.worker_classes.split(",") if name.strip()]
            if not args.no_baseline:
                servers.append("flask-dev")
            results = []
            for per_request in (int(n) for n in args.payloads.split(",")):
                for server in servers:
                    # Rounds alternate the order (open, token, token, open, ...): on a shared machine a
                    # drift in the load then weighs on both modes alike.
                    order = [("open", "token") if r % 2 == 0 else ("token", "open") for r in range(args.rounds)]
                    for auth in (mode for pair in order for mode in pair):
                        print(
                            f"{server} ({auth}), {per_request} emoji/request: "
                            f"{args.seconds:g} s x {args.connections} connections",
                            flush=True,
                        )
                        results.append(bench_one(args, wrk, base, work, server, per_request, auth))
        print_table(results)
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (out / f"ingest-{stamp}.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
        ok = all(r.accepted == r.produced for r in results)
        return 0 if ok else 1
    finally:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept the ingest logs and state in {work}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

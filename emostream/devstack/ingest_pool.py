"""Several ingest instances behind one address, with no load balancer in front (``bin/ingest-pool``).

Every instance is a whole ingest service (``python -m emostream.ingest.server --reuse-port``:
a gunicorn master and its workers) listening on EMOSTREAM_INGEST_HOST:EMOSTREAM_INGEST_PORT
with SO_REUSEPORT, and the kernel spreads new connections over the instances that are
listening. An instance that dies stops getting connections at once; the pool starts a new
one in its place. SIGTERM or Ctrl-C stops every instance cleanly: each flushes its buffer to
Kafka first. Linux only (SO_REUSEPORT load spreading). Each instance serves its own
/metrics: scrape the instances, not the shared port, when you need all of them.

    python -m emostream.devstack.ingest_pool --instances 3
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from emostream import logs
from emostream.devstack.supervisor import Program, Supervisor
from emostream.settings import Settings

log = logging.getLogger("emostream.ingest-pool")


def instances(count: int) -> list[Program]:
    """``count`` ingest services that share one listening port."""
    command = [sys.executable, "-m", "emostream.ingest.server", "--reuse-port"]
    return [Program(f"ingest-{slot}", command) for slot in range(1, count + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/ingest-pool", description="several ingest instances on one port")
    parser.add_argument("--instances", type=int, default=2, help="instances to keep running (default 2)")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")

    settings = Settings.from_env()
    logs.configure(settings)
    # The instances write to the pool's own output, as one ingest service would.
    supervisor = Supervisor(instances(args.instances), prefix=False)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    log.info(
        "ingest pool: %d instances on http://%s:%d (SO_REUSEPORT), %d workers each",
        args.instances,
        settings.ingest_host,
        settings.ingest_port,
        settings.ingest_workers,
    )
    status = supervisor.run()
    log.info("ingest pool stopped")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

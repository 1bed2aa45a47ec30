"""The fan-out publishers (see emostream/fanout/publisher.py).

    python3 pubsub_service.py               # the main publisher: aggregates -> clusters
    python3 pubsub_service.py --cluster 1   # the cluster publisher of cluster 1 -> its nodes

The main publisher serves /healthz and /metrics on EMOSTREAM_PUBSUB_METRICS_PORT.
"""

import argparse
import sys

from emostream import logs
from emostream.fanout import publisher
from emostream.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EmoStream main publisher, or one cluster publisher")
    parser.add_argument("--cluster", type=int, default=None, help="run the cluster publisher of this cluster")
    parser.add_argument("--metrics-port", type=int, default=None, help="port of /healthz and /metrics (0 = any)")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    logs.configure(settings)
    publisher.serve(settings, args.cluster, args.metrics_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The subscriber manager: brings up clusters x subscribers per cluster and keeps them alive.

    python3 subscriber_manager.py

Starts EMOSTREAM_CLUSTERS x EMOSTREAM_SUBSCRIBERS_PER_CLUSTER subscriber nodes (3 x 3 by
default) and one cluster publisher per cluster, restarts them when they die, adds a node
to a cluster whose nodes are all above the threshold and retires idle extra ones
(emostream/fanout/manager.py). /healthz and /metrics on EMOSTREAM_MANAGER_PORT.
"""

import sys

from emostream import logs
from emostream.fanout.manager import LoadBalancer, NodeLauncher, SubscriberManager, serve
from emostream.settings import Settings

__all__ = ["LoadBalancer", "NodeLauncher", "SubscriberManager", "main"]


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The subscriber manager: brings up clusters x subscribers per cluster and keeps them alive.

    python3 subscriber_manager.py

Starts EMOSTREAM_CLUSTERS x EMOSTREAM_SUBSCRIBERS_PER_CLUSTER subscriber nodes (3 x 3 by
default) and one cluster publisher per cluster, restarts them when they die, adds a node
to a cluster whose nodes are all above the threshold and retires idle extra ones
(emostream/fanout/manager.py). /healthz and /metrics on EMOSTREAM_MANAGER_PORT.
"""

from emostream.fanout.manager import main

if __name__ == "__main__":
    raise SystemExit(main())

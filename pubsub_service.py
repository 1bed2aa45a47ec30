"""The fan-out publishers (see emostream/fanout/publisher.py).

    python3 pubsub_service.py               # the main publisher: aggregates -> clusters
    python3 pubsub_service.py --cluster 1   # the cluster publisher of cluster 1 -> its nodes

The main publisher serves /healthz and /metrics on EMOSTREAM_PUBSUB_METRICS_PORT.
"""

from emostream.fanout.publisher import main

if __name__ == "__main__":
    raise SystemExit(main())

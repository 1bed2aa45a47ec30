"""One subscriber node: viewers connect here over Socket.IO (see emostream/fanout/node.py).

    python3 subscriber_service.py --id c0-s1 --cluster 0 --port 5003

``--port 0`` picks a free port; the real URL is logged and announced by heartbeat.
Without ``--port`` the node takes EMOSTREAM_SUBSCRIBER_BASE_PORT.
"""

# gevent must patch the standard library before anything else imports it.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402

from emostream import logs  # noqa: E402
from emostream.fanout import node  # noqa: E402
from emostream.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EmoStream subscriber node")
    parser.add_argument("--cluster", type=int, default=0, help="cluster of this node (default 0)")
    parser.add_argument("--id", dest="subscriber_id", help="subscriber id like c0-s1 (default c<cluster>-s0)")
    parser.add_argument("--port", type=int, default=None, help="port; 0 picks a free one")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    logs.configure(settings)
    node.serve(settings, args.subscriber_id or f"c{args.cluster}-s0", args.cluster, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

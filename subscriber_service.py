"""One subscriber node: viewers connect here over Socket.IO (see emostream/fanout/node.py).

    python3 subscriber_service.py --id c0-s1 --cluster 0 --port 5003

``--port 0`` picks a free port; the real URL is logged and announced by heartbeat.
Without ``--port`` the node takes EMOSTREAM_SUBSCRIBER_BASE_PORT.
"""

# gevent must patch the standard library before anything else imports it.
from gevent import monkey

monkey.patch_all()

from emostream.fanout.node import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

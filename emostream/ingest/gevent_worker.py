"""gunicorn's gevent worker, made fair to the greenlets that share it.

gunicorn serves a keep-alive connection in a loop: parse a request, answer it, parse the
next. When the client has already sent its next request, reading it never blocks, so the
loop never gives the event loop a turn: under load one connection is served again and
again while the others and the worker's own flusher wait, until the lag rule answers 503.
This worker yields once after every
request. A module of its own, so a gthread ingest never imports gevent.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker


class FairGeventWorker(GeventWorker):
    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            gevent.sleep(0)  # the other connections, and the flusher, get their turn

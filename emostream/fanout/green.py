"""Console entry points of the fan-out's gevent services: ``emostream-subscriber``, ``emostream-registration``.

gevent must patch the standard library before anything imports sockets or threads. A console
script imports its target's module before it calls the target, so the target lives here, in a
module that patches as it is imported and only then imports the service.
"""

from gevent import monkey

monkey.patch_all()


def subscriber(argv: list[str] | None = None) -> int:
    from emostream.fanout import node

    return node.main(argv)


def registration(argv: list[str] | None = None) -> int:
    from emostream.fanout import registration as service

    return service.main(argv)

"""The registration service: POST /register, POST /unregister, GET /subscribers.

    python3 registration_app.py

The app is built by ``create_app(settings)`` (emostream/fanout/registration.py) and
served by gevent's WSGI server on EMOSTREAM_REGISTRATION_HOST:EMOSTREAM_REGISTRATION_PORT.
"""

if __name__ == "__main__":
    # gevent must patch the standard library before anything else imports it.
    from gevent import monkey

    monkey.patch_all()

import sys  # noqa: E402

from emostream import logs  # noqa: E402
from emostream.fanout.registration import create_app, serve  # noqa: E402
from emostream.settings import Settings  # noqa: E402

__all__ = ["create_app", "main"]


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The registration service: POST /register, POST /unregister, GET /subscribers.

    python3 registration_app.py

The app is built by ``create_app(settings)`` (emostream/fanout/registration.py) and
served by gevent's WSGI server on EMOSTREAM_REGISTRATION_HOST:EMOSTREAM_REGISTRATION_PORT.
"""

if __name__ == "__main__":
    # gevent must patch the standard library before anything else imports it.
    from gevent import monkey

    monkey.patch_all()

from emostream.fanout.registration import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

"""The registration client, blocking and asyncio, against a small stand-in of the service."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import aiohttp
import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from emostream.clients.registration import AsyncRegistration, Registration, RegistrationError
from tests.harness.support import free_port

ASSIGNMENT = {"client_id": "phone-1", "event_id": "final", "subscriber": "c0-s0", "url": "http://n", "token": "t"}


@pytest.fixture(scope="module")
def registration_url() -> Iterator[str]:
    app = Flask(__name__)

    @app.post("/register")
    def register():
        body = request.get_json()
        if body.get("event_id") == "bad|event":
            return {"error": "event_id must be 1-64 characters"}, 400
        if body.get("event_id") == "busy":
            return {"error": "no subscriber node is available"}, 503
        if body.get("event_id") == "broken":
            return {"client_id": "phone-1"}
        return ASSIGNMENT | body

    @app.post("/unregister")
    def unregister():
        body = request.get_json()
        if body.get("token") != "t":
            return {"error": "the token belongs to another client"}, 403
        return {"unregistered": body["client_id"]}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_register_sends_what_it_is_given_and_returns_the_assignment(registration_url):
    client = Registration(registration_url)
    assert client.register("final", "phone-1") == ASSIGNMENT
    client.unregister(ASSIGNMENT)


def test_a_refusal_carries_the_services_status_and_reason(registration_url):
    client = Registration(registration_url)
    with pytest.raises(RegistrationError) as refused:
        client.register("bad|event")
    assert (refused.value.status, refused.value.message) == (400, "event_id must be 1-64 characters")
    assert not refused.value.retryable
    with pytest.raises(RegistrationError) as busy:
        client.register("busy")
    assert busy.value.retryable
    with pytest.raises(RegistrationError, match="another client"):
        client.unregister(ASSIGNMENT | {"token": "stolen"})


def test_an_assignment_without_a_node_or_token_is_an_error(registration_url):
    with pytest.raises(RegistrationError, match="lacks subscriber, url, token"):
        Registration(registration_url).register("broken")


def test_an_unreachable_service_is_status_0_and_retryable():
    with pytest.raises(RegistrationError) as unreachable:
        Registration(f"http://127.0.0.1:{free_port()}", timeout=2).register()
    assert unreachable.value.status == 0 and unreachable.value.retryable


def test_the_asyncio_client_answers_like_the_blocking_one(registration_url):
    async def scenario() -> tuple[dict, RegistrationError, RegistrationError]:
        async with aiohttp.ClientSession() as session:
            client = AsyncRegistration(registration_url, session)
            assignment = await client.register("final", "phone-1")
            await client.unregister(assignment)
            with pytest.raises(RegistrationError) as refused:
                await client.register("bad|event")
            with pytest.raises(RegistrationError) as unreachable:
                await AsyncRegistration(f"http://127.0.0.1:{free_port()}", session).register()
            return assignment, refused.value, unreachable.value

    assignment, refused, unreachable = asyncio.run(scenario())
    assert assignment == ASSIGNMENT
    assert (refused.status, refused.retryable) == (400, False)
    assert (unreachable.status, unreachable.retryable) == (0, True)

"""The web blueprint's own logic: what it serves, and how it reads the services' numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from emostream import webui
from emostream.http import STATUSES, Health, install_json_errors
from emostream.settings import Settings
from emostream.webui import dashboard, pages, probe
from emostream.webui.services import Fetched, Service, Sources
from tests.harness.support import free_port


@pytest.fixture
def web_settings() -> Settings:
    # Ports where nothing listens: the dashboard must report every service as down, quickly.
    return Settings.from_env(
        environ={},
        ingest_port=free_port(),
        registration_port=free_port(),
        processor_metrics_port=free_port(),
        pubsub_metrics_port=free_port(),
        manager_port=free_port(),
    )


@pytest.fixture
def client(web_settings: Settings):
    app = Flask(__name__)
    install_json_errors(app)
    app.register_blueprint(webui.blueprint(web_settings, latency_probe=False))
    return app.test_client()


# --------------------------------------------------------------------------- what is served


def test_viewer_page_is_served_at_the_root_with_a_strict_content_security_policy(client, web_settings):
    response = client.get("/", headers={"Host": "127.0.0.1:5001"})
    assert response.status_code == 200
    assert b'id="emoji-buttons"' in response.data
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert f"http://127.0.0.1:{web_settings.ingest_port}" in policy  # the page may post to the ingest
    assert "ws://127.0.0.1:*" in policy  # and open Socket.IO to subscriber nodes


def test_dashboard_page_is_served(client):
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert b'id="tile-latency"' in response.data


def test_page_assets_are_served_and_unknown_ones_are_404_json(client):
    assert client.get("/web/assets/viewer.js").status_code == 200
    assert client.get("/web/assets/emostream.css").mimetype == "text/css"
    missing = client.get("/web/assets/nothing.js")
    assert missing.status_code == 404
    assert "error" in missing.get_json()


def test_socketio_client_comes_from_the_npm_package(client):
    if not (pages.SOCKETIO_DIST / "socket.io.min.js").is_file():
        pytest.skip("web/node_modules is not installed (bin/setup runs npm ci)")
    response = client.get("/web/vendor/socket.io.min.js")
    assert response.status_code == 200
    assert response.mimetype in ("text/javascript", "application/javascript")
    assert b"io" in response.data[:2000]


def test_only_the_socketio_client_files_are_exposed_from_node_modules(client):
    assert client.get("/web/vendor/package.json").status_code == 404
    assert client.get("/web/vendor/..%2Fpackage.json").status_code == 404


def test_a_missing_socketio_client_is_a_503_that_says_what_to_run(client, monkeypatch, tmp_path):
    monkeypatch.setattr(pages, "SOCKETIO_DIST", tmp_path)
    response = client.get("/web/vendor/socket.io.min.js")
    assert response.status_code == 503
    assert "bin/setup" in response.get_json()["error"]


def test_config_tells_the_page_the_ingest_on_its_own_host_and_the_server_time(client, web_settings):
    config = client.get("/config.json", headers={"Host": "viewer.example:5001"}).get_json()
    assert config["ingest_url"] == f"http://viewer.example:{web_settings.ingest_port}"
    assert [item["emoji"] for item in config["emoji"]] == list(web_settings.emoji_types)
    assert {"emoji": "\u2764\ufe0f", "name": "love"} in config["emoji"]
    assert config["window_ms"] == web_settings.window_seconds * 1000
    assert isinstance(config["server_time"], int)


def test_a_configured_public_ingest_url_wins():
    settings = Settings.from_env(environ={}, ingest_public_url="https://ingest.example/")
    assert pages.ingest_url(settings, "127.0.0.1:5001") == "https://ingest.example"
    assert "https://ingest.example" in pages.content_security_policy(settings, "127.0.0.1:5001")


def test_ipv6_page_hosts_give_a_bracketed_ingest_url():
    settings = Settings.from_env(environ={}, ingest_port=5000)
    assert pages.ingest_url(settings, "[::1]:5001") == "http://[::1]:5000"


def test_dashboard_data_reports_unreachable_services_as_down(client):
    data = client.get("/dashboard/data.json").get_json()
    assert {service["name"] for service in data["services"]} == {
        "ingest",
        "processor",
        "publisher",
        "manager",
        "registration",
    }
    assert not any(service["up"] for service in data["services"])
    assert all(service["status"] == "unavailable" for service in data["services"])
    assert all(service["error"] == "not reachable" for service in data["services"])
    assert data["clusters"] == []
    assert data["series"]["counters"]["ingest_emoji"] is None


# --------------------------------------------------------------------------- reading /healthz

SERVICE = Service("ingest", "Ingest", "http://127.0.0.1:5000")


@pytest.mark.parametrize(
    ("health", "up"),
    [(Health.of(True), True), (Health.of(False, "starting"), False), (Health.of(False), False)],
)
def test_a_services_health_is_read_from_its_status_word(health, up):
    body, code = health.response()
    state = dashboard.service_state(SERVICE, Fetched(code == 200, code, body), has_metrics=True)
    assert (state["status"], state["up"], state["error"]) == (health.status, up, None)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Fetched(False, error="not reachable"), "not reachable"),
        (Fetched(True, 200, {"alive": True}), "no health status in the answer"),
        (Fetched(False, 500, {"status": "failing"}, error="HTTP 500"), "HTTP 500"),
        (Fetched(False, 503, error="unreadable answer: not JSON"), "unreadable answer: not JSON"),
    ],
)
def test_a_health_answer_without_a_known_status_word_is_unavailable(answer, error):
    state = dashboard.service_state(SERVICE, answer, has_metrics=False)
    assert state["status"] in STATUSES
    assert (state["status"], state["up"], state["error"]) == ("unavailable", False, error)


# --------------------------------------------------------------------------- reading /metrics


def _exposition() -> str:
    registry = CollectorRegistry()
    Counter("emostream_ingest_accepted_emoji", "accepted", registry=registry).inc(42)
    batches = Histogram(
        "emostream_processor_batch_duration_seconds", "batches", buckets=(0.1, 0.5, 1.0), registry=registry
    )
    batches.observe(0.3)
    batches.observe(0.7)
    Gauge("emostream_processor_last_batch_duration_seconds", "last", registry=registry).set(0.7)
    return generate_latest(registry).decode()


def test_counters_are_read_by_their_exposed_name():
    samples = dashboard.parse_metrics(_exposition())
    assert dashboard.total(samples, "emostream_ingest_accepted_emoji_total") == 42
    assert dashboard.total(samples, "emostream_not_exposed_total") is None


def test_batch_histogram_is_read_as_cumulative_buckets_with_an_infinite_one():
    samples = dashboard.parse_metrics(_exposition())
    batches = dashboard.histogram(samples, "emostream_processor_batch_duration_seconds")
    assert batches["count"] == 2
    assert batches["sum"] == pytest.approx(1.0)
    assert batches["buckets"] == [[0.1, 0.0], [0.5, 1.0], [1.0, 2.0], [None, 2.0]]


def test_the_processors_batch_times_reach_the_charts():
    processor = dashboard.parse_metrics(_exposition())
    plotted = dashboard.series({"processor": processor}, [])
    assert plotted["gauges"]["processor_last_batch_seconds"] == pytest.approx(0.7)
    assert plotted["histograms"]["processor_batch_seconds"]["count"] == 2


def _node(node_id: str, cluster: int, connections: int, alive: bool = True, **extra) -> dict:
    return {
        "subscriber_id": node_id,
        "cluster": cluster,
        "url": f"http://127.0.0.1:{7000 + connections}",
        "connections": connections,
        "capacity": 10,
        "events": {},
        "status": "up",
        "alive": alive,
    } | extra


def test_membership_becomes_clusters_of_nodes_with_their_load():
    body = {
        "subscribers": [
            _node("c1-s0", 1, 5),
            _node("c0-s10", 0, 1),
            _node("c0-s2", 0, 0),
            _node("c0-s0", 0, 9, alive=False),
            _node("c0-s1", 0, 2, alive=False, status="stopping"),
        ]
    }
    clusters = dashboard.normalize_membership(body)
    assert [c["cluster"] for c in clusters] == ["0", "1"]
    assert [n["id"] for n in clusters[0]["nodes"]] == ["c0-s0", "c0-s1", "c0-s2", "c0-s10"]
    assert clusters[1]["nodes"][0]["load"] == 0.5
    assert [n["status"] for n in clusters[0]["nodes"][:2]] == ["silent", "stopping"]

    series = dashboard.series({}, clusters)
    assert series["gauges"]["viewers"] == 6  # dead and stopping nodes' viewers are not connected any more
    assert series["gauges"]["nodes_live"] == 3
    assert series["gauges"]["nodes_total"] == 5


def test_the_dashboards_probe_is_not_counted_as_a_viewer():
    events = {probe.PROBE_EVENT_ID: 1, "final": 3}
    clusters = dashboard.normalize_membership({"subscribers": [_node("c0-s0", 0, 4, events=events)]})
    assert clusters[0]["nodes"][0]["events"] == {"final": 3}
    assert dashboard.series({}, clusters)["gauges"]["viewers"] == 3


@pytest.mark.parametrize("body", [None, "text", 3, {"subscribers": "x"}, {"subscribers": [1, "a", None]}])
def test_a_malformed_membership_gives_no_clusters_rather_than_an_error(body):
    assert dashboard.normalize_membership(body) == []


def test_gather_asks_every_service_even_when_all_are_down(web_settings):
    with ThreadPoolExecutor(4) as pool:
        data = dashboard.gather(Sources.from_settings(web_settings), pool)
    assert len(data["services"]) == 5
    assert data["membership_error"] == "not reachable"


# --------------------------------------------------------------------------- latency probe


def test_latency_histogram_is_cumulative_with_an_infinite_bucket():
    latencies = probe.LatencyHistogram(buckets=(0.5, 1.0))
    assert latencies.snapshot() is None
    for seconds in (0.2, 0.7, 0.9, 3.0):
        latencies.observe(seconds)
    assert latencies.snapshot() == {
        "buckets": [[0.5, 1.0], [1.0, 3.0], [None, 4.0]],
        "sum": pytest.approx(4.8),
        "count": 4.0,
    }


def _probe_aggregate(window_start: int, taps: int, event_id: str = probe.PROBE_EVENT_ID) -> dict:
    return {"event_id": event_id, "window_start": window_start, "counts": {"🔥": taps}}


def test_probe_times_each_tap_once_by_the_first_record_that_counts_it():
    latency = probe.LatencyProbe(Settings.from_env(environ={}), "http://127.0.0.1:1", "http://127.0.0.1:2")
    latency.record_tap(2000, sent_at=10.0)
    latency.record_tap(2000, sent_at=11.0)
    latency.on_update(_probe_aggregate(2000, 1), arrived=10.8)  # counts the first tap only
    latency.on_update(_probe_aggregate(2000, 1), arrived=11.5)  # a repeat of the same count: nothing new
    latency.on_update(_probe_aggregate(0, 5), arrived=11.6)  # another window: not these taps
    latency.on_update(_probe_aggregate(2000, 9, event_id="live"), arrived=11.7)  # another event
    latency.on_update(_probe_aggregate(2000, 2), arrived=12.2)  # now the second one
    snapshot = latency.histogram.snapshot()
    assert snapshot["count"] == 2
    assert snapshot["sum"] == pytest.approx(0.8 + 1.2)
    assert latency.last_latency == pytest.approx(1.2)


def test_probe_times_nothing_a_node_sent_from_before_its_connection_opened():
    latency = probe.LatencyProbe(Settings.from_env(environ={}), "http://127.0.0.1:1", "http://127.0.0.1:2")
    latency.record_tap(2000, sent_at=10.0)
    latency.record_tap(2000, sent_at=11.0)
    latency.opened_at = 5_000  # a reconnection: the node first sends its history of the event
    latency.on_update(_probe_aggregate(2000, 1) | {"routed_at": 4_900}, arrived=13.0)  # a replay: not timed
    latency.on_update(_probe_aggregate(2000, 2) | {"routed_at": 5_100}, arrived=13.4)  # live: the second tap
    snapshot = latency.histogram.snapshot()
    assert snapshot["count"] == 1
    assert latency.last_latency == pytest.approx(2.4)

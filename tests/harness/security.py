"""The security suite's stack of services: what its tests read (URLs, logs, liveness)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emostream.settings import Settings
from tests.harness.fanout import live_nodes, registration_url
from tests.harness.support import ServiceProcess

NODES = ("c0-s0", "c0-s1")


@dataclass
class SecurityStack:
    settings: Settings
    log_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ingest_port}"

    @property
    def registration_url(self) -> str:
        return registration_url(self.settings)

    @property
    def publisher_ops_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.pubsub_metrics_port}"

    def node_url(self, node_id: str) -> str:
        return live_nodes(self.settings)[node_id]["url"]

    def logs(self) -> dict[str, str]:
        """Every service's whole log (what it wrote so far), by service name."""
        return {name: service.log_path.read_text(errors="replace") for name, service in self.services.items()}

    def alive(self) -> dict[str, bool]:
        return {name: service.alive() for name, service in self.services.items()}

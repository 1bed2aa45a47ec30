"""Every EmoStream setting, read from ``EMOSTREAM_*`` environment variables.

Each field of :class:`Settings` is one variable: ``kafka_bootstrap`` is
``EMOSTREAM_KAFKA_BOOTSTRAP``. The defaults run the whole stack on one machine;
``python -m emostream.settings`` prints the table the README documents.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "EMOSTREAM_"
ROOT = Path(__file__).resolve().parent.parent

# ❤️ is U+2764 U+FE0F: two code points, compared as a whole string.
DEFAULT_EMOJI = ("🔥", "👏", "😂", "😮", "😢", "😡", "\u2764\ufe0f", "👍", "🎉", "🏏")


KAFKA_PROTOCOLS = ("PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
# Each has a Kafka user of its own on a secured cluster; "admin" creates topics and ACLs and runs the tools.
KAFKA_SERVICES = ("admin", "ingest", "processor", "registration", "publisher", "cluster-publisher", "node", "manager")


@dataclass(frozen=True)
class KafkaSecurity:
    """How one process connects to Kafka, checked: what the Kafka layer turns into each client's options."""

    protocol: str
    mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""

    @property
    def secured(self) -> bool:
        return self.protocol != "PLAINTEXT"


def _doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field that carries its documentation."""
    return field(default=default, metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = _doc(
        "Kafka bootstrap servers; set it to use an existing cluster instead of the local broker.", "127.0.0.1:9092"
    )
    kafka_local_port: int = _doc("Client port of the local broker that `bin/kafka-start` runs.", 9092)
    kafka_local_controller_port: int = _doc("KRaft controller port of the local broker.", 9093)
    kafka_heap: str = _doc("JVM heap of the local broker (-Xmx and -Xms).", "512m")
    emoji_topic: str = _doc("Topic of raw emoji events, written by ingest.", "emoji_topic")
    emoji_partitions: int = _doc(
        "Partitions of the raw emoji topic (a processor task each per micro-batch: as many as cores, or more "
        "on a cluster).",
        2,
    )
    aggregate_topic: str = _doc("Topic of windowed aggregates, written by the processor.", "aggregated_emoji_topic")
    dead_letter_topic: str = _doc(
        "Topic of records the processor could not use, with the reason.", "emoji_dead_letter_topic"
    )
    cluster_topic_prefix: str = _doc(
        "Prefix of the per-cluster topics from the main publisher to cluster publishers.", "emostream_cluster_"
    )
    membership_topic: str = _doc(
        "Compacted topic of subscriber-node heartbeats (the membership's source of truth).", "emostream_subscribers"
    )
    kafka_security_protocol: str = _doc(
        "How every Kafka client connects: PLAINTEXT, or SASL_SSL (TLS, and a SCRAM user per service).", "PLAINTEXT"
    )
    kafka_sasl_mechanism: str = _doc("SASL mechanism with SASL_SSL: SCRAM-SHA-512 or SCRAM-SHA-256.", "SCRAM-SHA-512")
    kafka_username: str = _doc(
        "Kafka user of this process with SASL_SSL (when no credentials file names the service's own).", ""
    )
    kafka_password: str = _doc("Password of EMOSTREAM_KAFKA_USERNAME (or use the password file).", "", repr=False)
    kafka_password_file: str = _doc("File whose first line is the password of EMOSTREAM_KAFKA_USERNAME.", "")
    kafka_credentials_file: str = _doc(
        "JSON file of each service's Kafka user and password ({service: {username, password}}); each service "
        "takes its own entry and it wins over the username. Unset with the local broker: the one it generated.",
        "",
    )
    kafka_ca_file: str = _doc(
        "PEM file of the CA that signed the brokers' certificates (SASL_SSL). Unset with the local broker: its own.",
        "",
    )
    revocation_topic: str = _doc(
        "Compacted topic of revoked send credentials, written by registration and followed by every ingest worker.",
        "emostream_revoked_senders",
    )
    replication_factor: int = _doc("Replication factor of topics the project creates (3 on a real cluster).", 1)
    min_insync_replicas: int = _doc("min.insync.replicas of topics the project creates (2 on a real cluster).", 1)

    # Emoji
    emoji_types: tuple[str, ...] = _doc("Comma-separated emoji that clients may send.", DEFAULT_EMOJI)
    window_seconds: int = _doc("Length of an aggregation window in seconds.", 2)
    scale_unit: int = _doc("Emoji of one kind that count as one scaled emoji.", 1000)

    # Ingest (app.py)
    ingest_host: str = _doc("Address ingest listens on.", "127.0.0.1")
    ingest_port: int = _doc("Port of the ingest HTTP API.", 5000)
    ingest_workers: int = _doc("Ingest worker processes.", 2)
    ingest_threads: int = _doc("Threads per gthread ingest worker (few: they share one GIL with the flusher).", 2)
    ingest_worker_class: str = _doc(
        "gunicorn worker class of ingest: gevent (one event loop per worker) or gthread.", "gevent"
    )
    flush_max_events: int = _doc("Buffered emoji that make an ingest worker send before the interval ends.", 10_000)
    flush_interval_ms: int = _doc("How often ingest sends its buffer to Kafka.", 500)
    flush_lead_ms: int = _doc(
        "How long before each multiple of the flush interval since the epoch ingest sends: the processor's "
        "trigger fires on those multiples, so a send lands just before it instead of up to an interval after.",
        50,
    )
    buffer_max: int = _doc("Emoji an ingest worker holds before it answers 503.", 200_000)
    ingest_journal: bool = _doc(
        "Write each accepted request to the ingest journal before answering 202, so a killed worker loses nothing.",
        True,
    )
    ingest_journal_fsync: bool = _doc(
        "Sync the ingest journal to disk before each 202 (survives a machine crash too; costs a disk flush per request).",
        False,
    )
    ingest_max_lag_ms: int = _doc(
        "Wait of the oldest emoji not yet handed to Kafka past its flush above which ingest answers 503 "
        "(keep it below the watermark).",
        1500,
    )
    batch_max_events: int = _doc("Largest array POST /emojis accepts.", 1000)
    max_body_bytes: int = _doc("Largest request body ingest accepts.", 262_144)
    ingest_auth: str = _doc(
        "token: ingest takes an emoji only with a send credential from POST /register (Authorization: Bearer); "
        "open: any user_id without a credential (local demos only: refused on a non-loopback address).",
        "token",
    )
    rate_limit_per_user: float = _doc("Emoji per second one user_id may send (sustained).", 50.0)
    rate_burst_per_user: int = _doc("Emoji one user_id may send in a burst.", 200)
    rate_limit_per_source: float = _doc(
        "Emoji per second one source address may send (sustained, per ingest worker); 0 turns the limit off.",
        1000.0,
    )
    rate_burst_per_source: int = _doc("Emoji one source address may send in a burst (per ingest worker).", 5000)
    trusted_proxies: tuple[str, ...] = _doc(
        "Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed (the right-most address "
        "not in this list is the source); empty: the connection's own address is the source.",
        (),
    )
    source_limit_exempt: tuple[str, ...] = _doc(
        "Comma-separated CIDRs of source addresses no per-source limit applies to (the simulator and benches "
        "send from loopback); empty exempts none.",
        ("127.0.0.0/8", "::1/128"),
    )
    timestamp_skew_seconds: int = _doc("How far a client timestamp may be from server time.", 300)
    kafka_unavailable_seconds: float = _doc(
        "How long Kafka may be unreachable, or leave an accepted emoji unacknowledged, before ingest answers 503.", 5.0
    )
    cors_origins: tuple[str, ...] = _doc(
        "Comma-separated origins allowed to call the APIs from a browser.",
        ("http://127.0.0.1:5001", "http://localhost:5001"),
    )
    ingest_public_url: str = _doc(
        "Ingest URL the viewer page posts to; unset means the page's own host name on the ingest port.", ""
    )

    # Processor (emoji_processor.py)
    spark_master: str = _doc("Spark master URL; local[*] runs Spark inside the processor.", "local[*]")
    spark_ui: bool = _doc("Serve Spark's web UI (port 4040) from the processor.", True)
    spark_driver_memory: str = _doc("Spark driver memory.", "1g")
    shuffle_partitions: int = _doc(
        "spark.sql.shuffle.partitions, fixed in the checkpoint at the query's first start (a state store "
        "each; with 1 a micro-batch is one task, with no shuffle); 0 means the number of cores.",
        1,
    )
    spark_conf: tuple[str, ...] = _doc(
        "Extra Spark settings as comma-separated key=value pairs, applied after the project's own "
        "(spark.driver.extraJavaOptions is added to the project's driver options).",
        (),
    )
    trigger_ms: int = _doc("Processing-time trigger of the streaming query.", 500)
    watermark_ms: int = _doc(
        "How late an emoji may reach the processor and still count: its window's count is corrected, and "
        "viewers get the correction. Cover the longest Kafka outage that ingest's held emoji must outlive; "
        "later ones are dropped and counted in emostream_processor_late_rows.",
        60_000,
    )
    settle_ms: int = _doc(
        "How long after a window ends its count is final when nothing fails (ingest's flush, a trigger, "
        "delivery): the simulator judges windows after it, and a reconnecting viewer asks again this far back.",
        3000,
    )
    max_offsets_per_trigger: int = _doc("Most Kafka records read per micro-batch; 0 means no limit.", 0)
    checkpoint_dir: str = _doc(
        "Checkpoint folder of the streaming query.", str(ROOT / "state" / "checkpoints" / "processor")
    )
    processor_standby: bool = _doc(
        "`make run` starts a second processor that waits, warm, and takes over counting within seconds "
        "when the active one dies; it costs a second Spark driver JVM (see docs/deployment.md).",
        True,
    )
    processor_lock_file: str = _doc(
        "File the active processor holds an exclusive lock on, so that one query at a time runs on the "
        "checkpoint; empty means the checkpoint folder's path plus `.lock` (a local checkpoint) or "
        "`processor.lock` in the state folder.",
        "",
    )

    # Fan-out
    registration_host: str = _doc("Address the registration service listens on.", "127.0.0.1")
    registration_port: int = _doc("Port of the registration service (and the viewer page).", 5001)
    subscriber_host: str = _doc("Address subscriber nodes listen on.", "127.0.0.1")
    subscriber_base_port: int = _doc("Port of the first subscriber node; the others follow.", 5002)
    public_host: str = _doc("Host name viewers use to reach subscriber nodes.", "127.0.0.1")
    clusters: int = _doc("Subscriber clusters.", 3)
    subscribers_per_cluster: int = _doc("Subscriber nodes each cluster starts with.", 3)
    max_subscribers_per_cluster: int = _doc("Most subscriber nodes a cluster may grow to.", 6)
    subscriber_capacity: int = _doc("Viewers one subscriber node is meant to hold.", 2000)
    scale_up_ratio: float = _doc("Load (connections / capacity) above which all nodes count as full.", 0.8)
    scale_down_idle_seconds: float = _doc("How long an extra node must be idle before it is retired.", 60.0)
    heartbeat_seconds: float = _doc("How often subscriber nodes announce themselves.", 2.0)
    heartbeat_expiry_seconds: float = _doc(
        "Silence after which a subscriber node counts as dead (counted while the membership topic answers:"
        " a Kafka outage kills no node).",
        6.0,
    )
    token_secret: str = _doc(
        "HMAC secret of viewer tokens and send credentials; set it in production, the same for registration, "
        "the subscriber nodes and ingest.",
        "",
        repr=False,
    )
    token_ttl_seconds: int = _doc("Lifetime of a viewer token and of a send credential.", 3600)
    registrations_per_source: float = _doc(
        "Registrations per second one source address may make (sustained); 0 turns the limit off.", 5.0
    )
    registration_burst_per_source: int = _doc("Registrations one source address may make in a burst.", 100)
    viewer_history_seconds: int = _doc(
        "How far back a joining viewer is sent its event's windows, and how far back `since` may reach; "
        "0 turns the history off (live updates only).",
        60,
    )
    viewer_history_max_windows: int = _doc(
        "Windows a subscriber node holds per event; 0 means those of the history seconds, plus two.", 0
    )
    viewer_history_max_bytes: int = _doc("Bytes (as JSON) of records a subscriber node holds per event.", 65_536)
    viewer_history_max_events: int = _doc(
        "Events a subscriber node holds history of besides those its own viewers watch.", 1000
    )
    viewer_readback_max_records: int = _doc(
        "Most records one read-back of the aggregate topic reads before it serves what it found.", 200_000
    )
    viewer_readback_max_seconds: float = _doc(
        "Longest one read-back of the aggregate topic runs before it serves what it found.", 5.0
    )

    # Operations
    ops_host: str = _doc(
        "Address of the processor's, the publishers' and the manager's /healthz and /metrics.", "127.0.0.1"
    )
    processor_metrics_port: int = _doc("Port of the active processor's /healthz and /metrics.", 5100)
    processor_standby_metrics_port: int = _doc(
        "Port of /healthz and /metrics of a processor waiting as the standby; 0 picks a free port.", 5103
    )
    pubsub_metrics_port: int = _doc("Port of the main publisher's /healthz and /metrics.", 5101)
    manager_port: int = _doc("Port of the subscriber manager's /healthz and /metrics.", 5102)
    state_dir: str = _doc("Folder of local state: broker data, logs, pids, checkpoints.", str(ROOT / "state"))
    jars_dir: str = _doc("Folder the Maven-resolved jars are copied into.", str(ROOT / "build" / "jars"))
    log_level: str = _doc("Logging level of the services.", "INFO")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``EMOSTREAM_*`` variables; keyword overrides win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            if name in environ and environ[name] != "":
                values[f.name] = _parse(f, environ[name])
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as ``EMOSTREAM_*`` variables, for a child process."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[PREFIX + f.name.upper()] = str(value)
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def kafka_is_local(self) -> bool:
        """True when the bootstrap address is the broker this project runs itself."""
        return self.kafka_bootstrap in {
            f"127.0.0.1:{self.kafka_local_port}",
            f"localhost:{self.kafka_local_port}",
        }

    @property
    def kafka_secured(self) -> bool:
        return self.kafka_security_protocol.strip().upper() != "PLAINTEXT"

    @property
    def local_kafka_home(self) -> Path:
        """Folder of the local broker: a secured one keeps its data, certificates and passwords apart."""
        return Path(self.state_dir) / ("kafka-secured" if self.kafka_secured else "kafka")

    def for_kafka_service(self, service: str) -> Settings:
        """These settings with ``service``'s own Kafka user, checked; SystemExit says what to fix.

        With SASL_SSL the credentials file (by default the local broker's) wins over
        ``kafka_username``: a launcher hands its children the file, and each child takes
        its own entry. The returned settings name the file and CA they used, so a child
        started with ``to_env()`` resolves the same way.
        """
        if service not in KAFKA_SERVICES:
            raise ValueError(f"unknown Kafka service {service!r}")
        protocol = self._kafka_protocol()
        if protocol == "PLAINTEXT":
            return self.replace(kafka_security_protocol=protocol)
        local = self.local_kafka_home if self.kafka_is_local else None
        credentials_file = self.kafka_credentials_file or (str(local / "credentials.json") if local else "")
        changes: dict[str, Any] = {
            "kafka_security_protocol": protocol,
            "kafka_ca_file": self.kafka_ca_file or (str(local / "tls" / "ca.pem") if local else ""),
            "kafka_credentials_file": credentials_file,
        }
        if credentials_file:
            entry = _read_credentials(credentials_file, local is not None and not self.kafka_credentials_file).get(
                service
            )
            if not isinstance(entry, dict) or not entry.get("username") or not entry.get("password"):
                raise SystemExit(
                    f"EMOSTREAM_KAFKA_CREDENTIALS_FILE {credentials_file} has no username and password for "
                    f"the service {service!r}"
                )
            changes.update(kafka_username=entry["username"], kafka_password=entry["password"], kafka_password_file="")
        resolved = self.replace(**changes)
        resolved.kafka_client_security()
        return resolved

    def _kafka_protocol(self) -> str:
        """``kafka_security_protocol`` normalised, or SystemExit naming the choices."""
        protocol = self.kafka_security_protocol.strip().upper()
        if protocol not in KAFKA_PROTOCOLS:
            raise SystemExit(
                f"EMOSTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r} is not one of "
                f"{', '.join(KAFKA_PROTOCOLS)}"
            )
        return protocol

    def kafka_client_security(self) -> KafkaSecurity:
        """This process's Kafka security, checked; SystemExit with what to fix when it is incomplete."""
        protocol = self._kafka_protocol()
        if protocol == "PLAINTEXT":
            return KafkaSecurity(protocol)
        mechanism = self.kafka_sasl_mechanism.strip().upper()
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise SystemExit(
                f"EMOSTREAM_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism!r} is not one of "
                f"{', '.join(KAFKA_SASL_MECHANISMS)}"
            )
        if not self.kafka_username:
            raise SystemExit(
                f"{protocol} needs a Kafka user: set EMOSTREAM_KAFKA_USERNAME and EMOSTREAM_KAFKA_PASSWORD "
                "(or _PASSWORD_FILE), or EMOSTREAM_KAFKA_CREDENTIALS_FILE for the services"
            )
        password = self.kafka_password
        if not password and self.kafka_password_file:
            try:
                lines = Path(self.kafka_password_file).read_text().splitlines()
            except OSError as error:
                raise SystemExit(f"EMOSTREAM_KAFKA_PASSWORD_FILE cannot be read: {error}") from None
            password = lines[0].strip() if lines else ""
        if not password:
            raise SystemExit(
                f"the Kafka user {self.kafka_username!r} has no password: set EMOSTREAM_KAFKA_PASSWORD "
                "or EMOSTREAM_KAFKA_PASSWORD_FILE"
            )
        if not self.kafka_ca_file:
            raise SystemExit(
                f"{protocol} needs the CA that signed the brokers' certificates: set EMOSTREAM_KAFKA_CA_FILE to its PEM file"
            )
        if not Path(self.kafka_ca_file).is_file():
            raise SystemExit(f"EMOSTREAM_KAFKA_CA_FILE {self.kafka_ca_file} does not exist or is not a file")
        return KafkaSecurity(protocol, mechanism, self.kafka_username, password, self.kafka_ca_file)

    @property
    def effective_shuffle_partitions(self) -> int:
        return self.shuffle_partitions or (os.cpu_count() or 2)

    @property
    def secret(self) -> bytes:
        """The token secret; a fixed development secret when none is configured."""
        return (self.token_secret or "emostream-development-secret").encode()

    def require_secret_for(self, host: str, service: str) -> None:
        """Refuse to serve beyond this machine with the development secret, which anyone can read.

        With it, anybody who can reach a node could forge a token for any node and event.
        """
        if self.token_secret or _is_loopback(host):
            return
        raise SystemExit(
            f"{service}: refusing to listen on {host} with the built-in development token secret; "
            "set EMOSTREAM_TOKEN_SECRET to the same random value for registration, every subscriber node and ingest"
        )

    def require_loopback_for_open_ingest(self) -> None:
        """Refuse an unknown ``ingest_auth``, and ``open`` mode beyond this machine: there anyone could send as anyone."""
        if self.ingest_auth not in INGEST_AUTH_MODES:
            raise SystemExit(f"EMOSTREAM_INGEST_AUTH={self.ingest_auth!r}: use one of {', '.join(INGEST_AUTH_MODES)}")
        if self.ingest_auth == "open" and not _is_loopback(self.ingest_host):
            raise SystemExit(
                f"ingest: refusing to listen on {self.ingest_host} with EMOSTREAM_INGEST_AUTH=open, which lets "
                "anyone send as any user_id; use token mode (the default) beyond this machine"
            )


INGEST_AUTH_MODES = ("token", "open")


def _read_credentials(path: str, generated_by_local_broker: bool) -> dict[str, Any]:
    try:
        credentials = json.loads(Path(path).read_text())
    except FileNotFoundError:
        advice = "start the local broker first (bin/kafka-start)" if generated_by_local_broker else "check the path"
        raise SystemExit(f"the Kafka credentials file {path} does not exist: {advice}") from None
    except (OSError, ValueError) as error:
        raise SystemExit(f"the Kafka credentials file {path} cannot be read as JSON: {error}") from None
    if not isinstance(credentials, dict):
        raise SystemExit(f"the Kafka credentials file {path} must hold a JSON object of services")
    return credentials


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _parse(f: dataclasses.Field, raw: str) -> Any:
    name = PREFIX + f.name.upper()
    default = f.default
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        return raw
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a valid {type(default).__name__}") from None


def documentation() -> str:
    """The configuration table of the README, as Markdown."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        if isinstance(default, str) and default.startswith(str(ROOT)):
            default = "./" + os.path.relpath(default, ROOT)
        shown = f"`{default}`" if default != "" else "(unset)"
        lines.append(f"| `{PREFIX}{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(documentation() + "\n")

"""The local clusters' command line: ``bin/kafka-cluster``, ``bin/spark-cluster``, ``bin/kafka-legacy``.

    python -m emostream.devstack.cli kafka|spark|legacy start|stop|status|env [options]

Each cluster's JVMs keep their data, logs and pids under the state folder (``state/`` by
default). ``start`` waits until every process is ready and prints the ``export`` lines that
point EmoStream's services at the cluster; ``env`` prints them again; ``status`` exits 1
unless everything runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path

from emostream.devstack.broker import BrokerError
from emostream.devstack.daemon import ClusterError
from emostream.devstack.jvmprocess import start_together
from emostream.devstack.kafka_cluster import KAFKA_CLUSTER_BASE_PORT, KafkaCluster, default_kafka_ports
from emostream.devstack.legacy_kafka import LEGACY_KAFKA_PORT, LEGACY_ZOOKEEPER_PORT, LegacyKafka
from emostream.devstack.spark_cluster import (
    SPARK_MASTER_PORT,
    SPARK_MASTER_UI_PORT,
    SPARK_WORKER_UI_PORT,
    SparkStandalone,
)
from emostream.settings import Settings

log = logging.getLogger("emostream.devstack.cli")


def _layout(requested: SparkStandalone | LegacyKafka, command: str) -> SparkStandalone | LegacyKafka:
    """The layout to act on: the one the last start saved, unless a start begins afresh.

    Saving it means ``stop``, ``status`` and ``env`` need none of the ports given to ``start``.
    """
    layout_file = requested.home / "layout.json"
    saved = None
    if layout_file.exists():
        values = json.loads(layout_file.read_text())
        kinds = {f.name: f.type for f in fields(requested)}
        for name, value in values.items():
            if "Path" in str(kinds.get(name)):
                values[name] = Path(value)
            elif isinstance(value, list):
                values[name] = tuple(value)
        saved = type(requested)(**values)
    if command != "start":
        return saved or requested
    if saved is not None and any(saved.running().values()):
        if saved != requested:
            log.info("already running with the layout saved in %s; its ports win", layout_file)
        return saved
    requested.home.mkdir(parents=True, exist_ok=True)
    values = {f.name: getattr(requested, f.name) for f in fields(requested)}
    layout_file.write_text(json.dumps(values, default=str, indent=2) + "\n")
    return requested


def _started_note(started: list[str]) -> str:
    return "started " + ", ".join(started) if started else "all were already running"


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={value}\n" for name, value in env.items())


def _create_topics(settings: Settings) -> None:
    from emostream import kafka

    logging.getLogger("kafka").setLevel(logging.WARNING)
    # These clusters listen in plaintext (only the single local broker can be secured).
    settings = settings.replace(kafka_security_protocol="PLAINTEXT")
    created = kafka.ensure_topics(settings)
    log.info(
        "topics on %s: %d created, %d already there (replication factor %d, min.insync.replicas %d)",
        settings.kafka_bootstrap,
        len(created),
        len(kafka.topics(settings)) - len(created),
        settings.replication_factor,
        settings.min_insync_replicas,
    )


def _parse_ports(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return [(int(client), int(controller)) for client, controller in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CLIENT:CONTROLLER[,CLIENT:CONTROLLER...]") from None


def _kafka_command(args: argparse.Namespace, settings: Settings) -> int:
    home = Path(args.state or Path(settings.state_dir) / "kafka-cluster")
    ports = args.ports
    if ports is None and (args.nodes or args.base_port):
        ports = default_kafka_ports(args.nodes or 3, args.base_port or KAFKA_CLUSTER_BASE_PORT)
    if (args.command != "start" or args.node) and not (home / "cluster.json").exists():
        log.info("there is no Kafka cluster in %s%s", home, "; start the whole cluster first" if args.node else "")
        return 0 if args.command == "stop" else 1
    cluster = KafkaCluster.create(home, ports, heap=args.heap, jars=Path(settings.jars_dir) / "kafka")
    if args.command == "start":
        targets = [cluster.node(args.node)] if args.node else list(cluster.nodes)
        started = start_together(targets, args.timeout)
        log.info("Kafka cluster up (%s): %s", _started_note(started), cluster.bootstrap)
        if not args.no_topics and not args.node:
            _create_topics(cluster.settings(settings))
        sys.stdout.write(_exports(cluster.env()))
    elif args.command == "stop":
        if args.node:
            stopped = [args.node] if cluster.node(args.node).stop(kill=args.kill) else []
        else:
            stopped = cluster.stop(kill=args.kill)
        log.info("stopped Kafka node(s) %s", ", ".join(map(str, stopped)) if stopped else "none: none was running")
    elif args.command == "status":
        pids = cluster.running()
        for node in cluster.nodes:
            pid = pids[node.node_id]
            state = f"running, pid {pid}" if pid else "stopped"
            log.info("node %d  %-16s controller :%d  %s", node.node_id, node.bootstrap, node.controller_port, state)
        return 0 if all(pids.values()) else 1
    else:
        sys.stdout.write(_exports(cluster.env()))
    return 0


def _spark_command(args: argparse.Namespace, settings: Settings) -> int:
    workers = max(1, args.workers)
    requested = SparkStandalone(
        home=Path(args.state or Path(settings.state_dir) / "spark-cluster"),
        port=args.port,
        ui_port=args.ui_port,
        worker_ui_ports=tuple(args.worker_ui_port + n for n in range(workers)),
        worker_cores=args.worker_cores,
        worker_memory=args.worker_memory,
        daemon_memory=args.daemon_memory,
    )
    cluster = _layout(requested, args.command)
    return _daemons_command(
        args,
        cluster,
        "Spark standalone",
        f"master {cluster.master_url}, web UI http://{cluster.host}:{cluster.ui_port}",
        cluster.driver_env(),
    )


def _legacy_command(args: argparse.Namespace, settings: Settings) -> int:
    requested = LegacyKafka(
        home=Path(args.state or Path(settings.state_dir) / "kafka-legacy"),
        zookeeper_port=args.zookeeper_port,
        port=args.port,
        heap=args.heap or "384m",
        jars=Path(settings.jars_dir) / "legacy",
    )
    stack = _layout(requested, args.command)
    single_replica = settings.replace(kafka_bootstrap=stack.bootstrap, replication_factor=1, min_insync_replicas=1)
    return _daemons_command(
        args,
        stack,
        "Kafka 3.9 (ZooKeeper mode)",
        f"{stack.bootstrap}, ZooKeeper {stack.zookeeper_connect}",
        stack.env(),
        after_start=None if args.no_topics else lambda: _create_topics(single_replica),
    )


def _daemons_command(
    args: argparse.Namespace,
    stack: SparkStandalone | LegacyKafka,
    title: str,
    where: str,
    exports: Mapping[str, str],
    after_start: Callable[[], None] | None = None,
) -> int:
    """``start``, ``stop``, ``status`` or ``env`` of a stack of daemons (Spark standalone, legacy Kafka)."""
    if args.command == "start":
        started = stack.start(args.timeout)
        log.info("%s up (%s): %s", title, _started_note(started), where)
        if after_start is not None:
            after_start()
        sys.stdout.write(_exports(exports))
    elif args.command == "stop":
        stopped = stack.stop()
        log.info("stopped %s", ", ".join(stopped) if stopped else "nothing: nothing was running")
    elif args.command == "status":
        pids = stack.running()
        width = max(map(len, pids)) + 2
        for name, pid in pids.items():
            log.info("%-*s %s", width, name, f"running, pid {pid}" if pid else "stopped")
        return 0 if all(pids.values()) else 1
    else:
        sys.stdout.write(_exports(exports))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m emostream.devstack.cli", description=__doc__.splitlines()[0])
    kinds = root.add_subparsers(dest="kind", required=True)

    kafka = _add_kind(kinds, "kafka", "a 3-node KRaft cluster (bin/kafka-cluster)", "kafka-cluster")
    kafka.add_argument("--nodes", type=int, default=0, help="nodes of a new cluster (default 3)")
    kafka.add_argument(
        "--base-port",
        type=int,
        default=0,
        help=f"client port of node 1 of a new cluster (default {KAFKA_CLUSTER_BASE_PORT})",
    )
    kafka.add_argument("--ports", type=_parse_ports, help="CLIENT:CONTROLLER ports of each node of a new cluster")
    kafka.add_argument("--heap", help="JVM heap of each node (default 384m)")
    kafka.add_argument("--node", type=int, help="start or stop only this node (1-based)")
    kafka.add_argument("--kill", action="store_true", help="stop with SIGKILL, as a crash would")
    kafka.add_argument("--no-topics", action="store_true", help="do not create EmoStream's topics")

    spark = _add_kind(kinds, "spark", "a Spark standalone master and workers (bin/spark-cluster)", "spark-cluster")
    spark.add_argument("--port", type=int, default=SPARK_MASTER_PORT, help="master port")
    spark.add_argument("--ui-port", type=int, default=SPARK_MASTER_UI_PORT, help="master web UI port")
    spark.add_argument(
        "--worker-ui-port", type=int, default=SPARK_WORKER_UI_PORT, help="web UI port of worker 1 (others follow)"
    )
    spark.add_argument("--workers", type=int, default=1)
    spark.add_argument("--worker-cores", type=int, default=os.cpu_count() or 2)
    spark.add_argument("--worker-memory", default="1g", help="memory a worker offers to executors")
    spark.add_argument("--daemon-memory", default="256m", help="heap of the master and worker JVMs")

    legacy = _add_kind(kinds, "legacy", "ZooKeeper and a Kafka 3.9 broker (bin/kafka-legacy)", "kafka-legacy")
    legacy.add_argument("--zookeeper-port", type=int, default=LEGACY_ZOOKEEPER_PORT)
    legacy.add_argument("--port", type=int, default=LEGACY_KAFKA_PORT, help="broker port")
    legacy.add_argument("--heap", help="JVM heap of the broker (default 384m)")
    legacy.add_argument("--no-topics", action="store_true", help="do not create EmoStream's topics")
    return root


def _add_kind(kinds: argparse._SubParsersAction, kind: str, about: str, folder: str) -> argparse.ArgumentParser:
    """The subcommand of one kind of cluster, with the options every kind has."""
    sub = kinds.add_parser(kind, help=about)
    sub.add_argument("command", choices=["start", "stop", "status", "env"])
    sub.add_argument("--state", help=f"state folder (default: $EMOSTREAM_STATE_DIR/{folder})")
    sub.add_argument("--timeout", type=float, default=120.0, help="seconds a start waits for readiness (default 120)")
    return sub


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings.from_env()
    commands = {"kafka": _kafka_command, "spark": _spark_command, "legacy": _legacy_command}
    try:
        return commands[args.kind](args, settings)
    except (BrokerError, ClusterError) as error:
        log.error("error: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""What a local broker needs for a SASL_SSL listener: a CA, a broker certificate, a SCRAM user per service.

Generated on the first secured start under the broker's folder and kept (so clients keep
trusting the same CA, and services keep their passwords):

    tls/ca.pem            the CA's certificate: what clients trust (EMOSTREAM_KAFKA_CA_FILE)
    tls/ca.key            the CA's private key (0600)
    tls/broker.pem        the broker's private key and certificate chain, Kafka's PEM keystore (0600)
    credentials.json      a user and a random password for every service and the admin (0600)

Certificates are made with openssl; only the standard library is used here, as in broker.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from emostream.settings import KAFKA_SERVICES

CA_DAYS = 3650
BROKER_DAYS = 825


class SecuritySetupError(RuntimeError):
    """The secured broker's files could not be made; the message says why."""


@dataclass(frozen=True)
class BrokerSecurity:
    """A broker's TLS files and the SCRAM users to create when its storage is formatted."""

    home: Path
    users: dict[str, dict[str, str]] = field(repr=False, hash=False, compare=False, default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.home / "tls" / "broker.pem"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    @property
    def admin(self) -> dict[str, str]:
        return self.users["admin"]


def prepare(home: Path, host: str = "127.0.0.1") -> BrokerSecurity:
    """The CA, the broker's certificate for ``host`` and every service's credentials, made when missing."""
    security = BrokerSecurity(home)
    (home / "tls").mkdir(parents=True, exist_ok=True)
    if not security.ca_file.exists() or not security.keystore.exists():
        _make_certificates(home / "tls", host)
    users = _credentials(security.credentials_file)
    return BrokerSecurity(home, users)


def _credentials(path: Path) -> dict[str, dict[str, str]]:
    """Every service's user and password, adding those missing (a service added since the last start)."""
    users: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    missing = [service for service in KAFKA_SERVICES if service not in users]
    for service in missing:
        users[service] = {"username": f"emostream-{service}", "password": secrets.token_urlsafe(24)}
    if missing or not path.exists():
        write_private(path, json.dumps(users, indent=2) + "\n")
    return users


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def _make_certificates(tls: Path, host: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SecuritySetupError("openssl was not found on PATH: install it (Debian: apt-get install openssl)")
    names = {"127.0.0.1", "localhost", host}
    alt_names = ",".join(sorted(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names))
    (tls / "broker.ext").write_text(
        f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    old_mask = os.umask(0o077)  # keys are written 0600 from the start
    try:
        _run(
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(CA_DAYS),
            "-subj", "/CN=EmoStream local Kafka CA", "-keyout", str(tls / "ca.key"), "-out", str(tls / "ca.pem"),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        _run(
            openssl, "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", "/CN=emostream-broker",
            "-keyout", str(tls / "broker.key"), "-out", str(tls / "broker.csr"),
        )  # fmt: skip
        _run(
            openssl, "x509", "-req", "-sha256", "-days", str(BROKER_DAYS), "-in", str(tls / "broker.csr"),
            "-CA", str(tls / "ca.pem"), "-CAkey", str(tls / "ca.key"), "-set_serial", str(secrets.randbits(63)),
            "-extfile", str(tls / "broker.ext"), "-out", str(tls / "broker.crt"),
        )  # fmt: skip
    finally:
        os.umask(old_mask)
    # Kafka's PEM keystore: the unencrypted PKCS#8 key, then the chain up to the CA.
    write_private(
        tls / "broker.pem",
        (tls / "broker.key").read_text() + (tls / "broker.crt").read_text() + (tls / "ca.pem").read_text(),
    )
    os.chmod(tls / "ca.pem", 0o644)  # the certificate is public; clients of other users may read it
    for leftover in ("broker.key", "broker.csr", "broker.ext", "broker.crt"):
        (tls / leftover).unlink()


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SecuritySetupError(f"{command[1]} {command[2]} failed: {done.stderr.strip()}")


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def scram_arguments(security: BrokerSecurity, mechanism: str = "SCRAM-SHA-512") -> list[str]:
    """``kafka-storage format`` arguments that create every user with the storage."""
    args = []
    for entry in security.users.values():
        args += ["--add-scram", f"{mechanism}=[name={entry['username']},password={entry['password']}]"]
    return args


def listener_properties(security: BrokerSecurity, host: str, port: int, controller_port: int) -> list[str]:
    """server.properties lines of a broker whose clients (and itself, between brokers) use SASL_SSL.

    The controller listener stays plaintext and must listen on loopback only: the KRaft
    quorum cannot authenticate with SCRAM (its users live in the metadata the quorum
    serves), and its principal, ANONYMOUS, is a super user so the broker can register.
    """
    admin = security.admin
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{admin["username"]}" password="{admin["password"]}";'
    )
    return [
        f"listeners=SASL_SSL://{host}:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=SASL_SSL://{host}:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={security.keystore}",
        # The broker is a client of itself between brokers: it trusts the CA as every client does.
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={security.ca_file}",
        "ssl.client.auth=none",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{admin['username']};User:ANONYMOUS",
    ]

"""A trust on loopback: two schools' brokers bridged to a central broker, all three real
mosquitto processes run from the files ``classroom-server broker-config`` writes.

penny-acres is the example config tree; hilltop is a copy with its own site and device ids
and the same room ids (tests/test_tenancy.py's ``make_school_b``).  The central broker
listens with TLS, on a certificate signed by a test CA made here with ``cryptography``;
the schools' bridges check it against that CA (``--bridge-ca-file``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.protocol import encode, now_ts
from broker_fixtures import Recorder
from services import Mosquitto, ServiceError, free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PREFIX = "classroom/v1"
A, B = "penny-acres", "hilltop"
# A device and a room of each school (hilltop's ids are penny-acres' with "hb-" in front).
DEVICE = {A: ("5b", "5b-pi-01"), B: ("5b", "hb-5b-pi-01")}


def make_school_b(tmp_path: Path) -> Path:
    """hilltop: the example tree with its own site and device ids, and the same room ids."""
    folder = tmp_path / "config-hilltop"
    shutil.copytree(REPO / "config", folder)
    site = folder / "site.yaml"
    site.write_text(site.read_text().replace(f"site: {A}", f"site: {B}")
                    .replace("school: Penny Acres Primary School", "school: Hilltop Primary School"))
    for room in (folder / "rooms").glob("*.yaml"):
        room.write_text(re.sub(r"(- id: )", r"\1hb-", room.read_text()))
    return folder


def make_school_a(tmp_path: Path) -> Path:
    folder = tmp_path / "config-penny-acres"
    shutil.copytree(REPO / "config", folder)
    return folder


def make_ca(folder: Path, hosts=("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A test CA and a server certificate for *hosts*: {"ca", "cert", "key"} PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "classroom-safety test trust CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.pem", "cert": folder / "central.pem", "key": folder / "central.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return paths


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "classroom-server"), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


def credentials(out: Path) -> dict[str, str]:
    return {p.stem: yaml.safe_load(p.read_text())["password"] for p in (out / "credentials").glob("*.yaml")}


def event(site: str, type: str = "login", **fields) -> tuple[str, bytes, str]:
    """(topic, payload, id) of a valid event from *site*'s DEVICE."""
    room, device = DEVICE[site]
    event_id = str(uuid.uuid4())
    payload = {"id": event_id, "type": type, "ts": now_ts(), "site": site, "room": room, "device": device,
               **({"user": "pupil01"} if type == "login" else {}), **fields}
    return f"{PREFIX}/{site}/{room}/{device}/event", encode(payload), event_id


def alert(site: str, state: str = "raised") -> tuple[str, bytes, str]:
    room, device = DEVICE[site]
    alert_id = str(uuid.uuid4())
    payload = {"id": alert_id, "state": state, "site": site, "room": room, "device": device, "seat": "Table 1",
               "ts": now_ts(), "by": None}
    return f"{PREFIX}/{site}/{room}/{device}/alert", encode(payload), alert_id


def cmd_topic(site: str) -> str:
    room, device = DEVICE[site]
    return f"{PREFIX}/{site}/{room}/{device}/cmd"


class Inbox(Recorder):
    """What a client received (broker_fixtures.Recorder), looked for by a piece of payload."""

    def has(self, needle: str | bytes) -> bool:
        with self.cond:
            return self._has(needle)

    def wait_for(self, needle: str | bytes, timeout: float = 30.0) -> None:
        try:
            self.wait(lambda inbox: inbox._has(needle), timeout)
        except TimeoutError:
            raise TimeoutError(f"{needle!r} never arrived; got topics {self.topics()}") from None

    def _has(self, needle: str | bytes) -> bool:
        needle = needle.encode() if isinstance(needle, str) else needle
        return any(needle in payload for _topic, payload in self.messages)


def connect(broker: Mosquitto, username: str, password: str, *, ca: Path | None = None, timeout: float = 15.0):
    """A connected paho MQTT 5 client (TLS against *ca* when given), loop running."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=username,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    done = threading.Event()
    result = {}

    def on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        done.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    if not done.wait(timeout) or result["rc"].is_failure:
        client.loop_stop()
        raise ServiceError(f"connect as {username} to {broker!r}: {result.get('rc', 'timed out')}")
    client.on_connect = None
    return client


def subscribe(client, *topics: str) -> Inbox:
    inbox = Inbox()
    client.on_message = inbox
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe([(topic, 1) for topic in topics])
    assert done.wait(15), "no SUBACK"
    return inbox


def publish(client, topic: str, payload: bytes, retain: bool = False) -> None:
    """QoS 1, PUBACK awaited: the broker has taken the message (not that anyone may read it)."""
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(15)
    assert info.is_published(), topic


@dataclass
class Trust:
    """Three brokers from broker-config: ``central`` and ``schools[site]``, with every
    account's password (``central_pw``, ``school_pw[site]``) and the test CA."""

    root: Path
    configs: dict[str, Path]
    tls: dict[str, Path]
    central: Mosquitto
    schools: dict[str, Mosquitto]
    central_out: Path
    school_out: dict[str, Path]
    central_pw: dict[str, str] = field(default_factory=dict)
    school_pw: dict[str, dict[str, str]] = field(default_factory=dict)
    clients: list = field(default_factory=list)

    def to_central(self, username: str, password: str | None = None):
        if password is None:
            # The collector's extra ingest workers (classroom-server-1, ...) share its password.
            password = self.central_pw.get(username) or self.central_pw["classroom-server"]
        c = connect(self.central, username, password, ca=self.tls["ca"])
        self.clients.append(c)
        return c

    def to_school(self, site: str, username: str):
        c = connect(self.schools[site], username, self.school_pw[site][username])
        self.clients.append(c)
        return c

    def wait_bridge_up(self, site: str, since: int = 0, timeout: float = 60.0) -> None:
        """Until the central broker has logged *site*'s bridge connecting more than *since* times."""
        from services import wait_until

        wait_until(lambda: bridge_connections(self.central, site) > since, timeout=timeout,
                   message=lambda: f"bridge-{site} never connected\n" + self.central.log_path.read_text()[-3000:]
                   + "\n--- school\n" + self.schools[site].log_path.read_text()[-3000:])

    def close(self) -> None:
        for c in self.clients:
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:  # noqa: BLE001
                pass
        for broker in [*self.schools.values(), self.central]:
            broker.stop()


def start_generated(out: Path, port: int, attempts: int = 3) -> Mosquitto:
    """Start the Mosquitto of a generated ``OUT/mosquitto.conf`` listening on 127.0.0.1:*port*.

    ``free_port`` only finds a port that was free a moment ago; between it and mosquitto's
    bind, broker-config runs (seconds on a busy machine) and another test may take the port.
    Then the listener line moves to a new free port and mosquitto starts again."""
    from services import wait_until

    conf = out / "mosquitto.conf"
    log = out / "mosquitto.log"
    for attempt in range(attempts):
        runs = log.read_text().count(" running") if log.exists() else 0
        broker = Mosquitto(out, conf_file=conf, port=port, log_file=log)
        try:
            broker.start()
            # Someone else's listener on the port also answers start()'s probe: wait for this
            # mosquitto to say it is running (its listeners open), or to exit.
            wait_until(lambda: not broker.is_running or log.read_text().count(" running") > runs, timeout=30,
                       message=broker._logs)
            if not broker.is_running:
                raise ServiceError(f"mosquitto exited\n{broker._logs()}")
            return broker
        except ServiceError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            new = free_port()
            conf.write_text(conf.read_text().replace(f"listener {port} 127.0.0.1", f"listener {new} 127.0.0.1"))
            port = new
    raise AssertionError("unreachable")


def build_trust(tmp_path: Path, ingest_workers: int = 2, central_args: tuple[str, ...] = ()) -> Trust:
    """Generate and start the three brokers; every school's bridge up before returning.
    *central_args* go to the central broker's broker-config (``--db URL``: enrolled devices
    get an account there too)."""
    configs = {A: make_school_a(tmp_path), B: make_school_b(tmp_path)}
    tls = make_ca(tmp_path / "tls")
    run_as = ["--run-as", "root"] if os.geteuid() == 0 else []
    central_port = free_port()
    central_out = tmp_path / "central"
    run_cli("broker-config", "--central", "--config", str(configs[A]), "--config", str(configs[B]),
            "--out", str(central_out), "--bind", "127.0.0.1", "--port", str(central_port),
            "--certfile", str(tls["cert"]), "--keyfile", str(tls["key"]), "--ingest-workers", str(ingest_workers),
            "--log-file", str(central_out / "mosquitto.log"), *run_as, *central_args)
    central = start_generated(central_out, central_port)
    central_port = central.port
    schools, school_out, school_pw = {}, {}, {}
    printed = []
    for site, config in configs.items():
        port = free_port()
        out = tmp_path / f"school-{site}"
        printed.append(run_cli("broker-config", "--config", str(config), "--out", str(out), "--bind", "127.0.0.1",
                "--port", str(port), "--bridge-to", f"mqtts://127.0.0.1:{central_port}",
                "--bridge-credentials", str(central_out / "credentials" / f"bridge-{site}.yaml"),
                "--bridge-ca-file", str(tls["ca"]), "--log-file", str(out / "mosquitto.log"), *run_as))
        schools[site] = start_generated(out, port)
        school_out[site] = out
        school_pw[site] = credentials(out)
    for result in printed:  # the bridge's password is never printed
        assert not any(pw in result.stdout + result.stderr for pw in credentials(central_out).values())
    trust = Trust(tmp_path, configs, tls, central, schools, central_out, school_out, credentials(central_out),
                  school_pw)
    for site in configs:
        trust.wait_bridge_up(site)
    return trust


def bridge_connections(central: Mosquitto, site: str) -> int:
    """How many times the central broker has logged the school's bridge connecting."""
    try:
        text = central.log_path.read_text()
    except OSError:
        return 0
    return len(re.findall(rf"New bridge connected from \S+ as bridge-{re.escape(site)} ", text))

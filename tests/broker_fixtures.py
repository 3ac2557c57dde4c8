"""Fixtures for the secured broker: a real mosquitto started with the password file and
ACL that ``classroom-server broker-config`` generates from the example config tree.

Import the fixtures into a test module with
``from broker_fixtures import secure_broker  # noqa: F401``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from agent.config import load_tree
from agent.protocol import encode, new_id, now_ts
from server.broker_config import HARDENING, generate
from services import Mosquitto, close_client, mqtt_client

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
SITE = "penny-acres"
PREFIX = "classroom/v1"


def t(room: str, device: str, kind: str) -> str:
    return f"{PREFIX}/{SITE}/{room}/{device}/{kind}"


def alert_payload(room: str, device: str, state: str = "raised", alert_id: str | None = None, **extra) -> bytes:
    return encode({"id": alert_id or new_id(), "state": state, "site": SITE, "room": room, "device": device,
                   "seat": "Table 2", "ts": now_ts(), **extra})


class Recorder:
    """Collects (topic, payload) pairs from a paho client's on_message; wait() uses a Condition."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()

    def __call__(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def topics(self) -> list[str]:
        with self.cond:
            return [m[0] for m in self.messages]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self.cond:
            return [p for tp, p in self.messages if topic is None or tp == topic]

    def wait(self, predicate, timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"condition not met; got {self.messages!r}")


@dataclass
class SecureBroker:
    broker: Mosquitto
    out: Path
    passwords: dict[str, str]
    clients: list = field(default_factory=list)

    def connect(self, username: str, password: str | None = None, **kw):
        c = mqtt_client(self.broker, username=username,
                        password=self.passwords[username] if password is None else password, **kw)
        self.clients.append(c)
        return c

    def subscriber(self, username: str, *topics: str, qos: int = 1):
        """A connected client subscribed to *topics* (SUBACK awaited); returns (client, Recorder)."""
        c = self.connect(username)
        rec = Recorder()
        c.on_message = rec
        done = threading.Event()
        c.on_subscribe = lambda *a: done.set()
        c.subscribe([(tp, qos) for tp in topics])
        assert done.wait(10), "no SUBACK"
        return c, rec

    def publish(self, client, topic: str, payload: bytes, qos: int = 1) -> None:
        info = client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        for c in self.clients:
            try:
                close_client(c)
            except Exception:  # noqa: BLE001
                pass


def build_secure(tmp_path: Path, mosquitto_factory, passwd_tool="auto") -> SecureBroker:
    out = tmp_path / "broker"
    generate(load_tree(CONFIG), out, passwd_tool=passwd_tool)
    passwords = {p.stem: yaml.safe_load(p.read_text())["password"] for p in (out / "credentials").glob("*.yaml")}
    # The broker-wide settings broker-config writes into mosquitto.conf, as deployed.
    broker = mosquitto_factory("\n".join(HARDENING), password_file=out / "passwd", acl_file=out / "acl",
                               allow_anonymous=False)
    return SecureBroker(broker, out, passwords)


@pytest.fixture
def secure_broker(tmp_path, mosquitto_factory):
    sb = build_secure(tmp_path, mosquitto_factory)
    yield sb
    sb.close()

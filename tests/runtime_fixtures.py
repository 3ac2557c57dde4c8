"""Helpers for the agent-core tests (button, screen, link, outbox, report, runtime).

``Subscriber``: a paho MQTT v5 client that records every message it sees; with
``persistent=True`` it keeps a broker session (clean_start=False + session expiry), so
QoS 1 messages published while it is reconnecting after a broker restart still reach it.
``bootstrap(tmp_path, broker)``: an AgentBootstrap for device 1a-pi-01 of the example tree.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.schema import AgentBootstrap
from services import wait_until

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
PREFIX = "classroom/v1/penny-acres/1a/1a-pi-01"


def pin_file(directory: Path, pin: str) -> str:
    """A staff PIN file as install-agent.sh writes it (the hash, mode 0600)."""
    from agent.desktop.pin import hash_pin

    path = Path(directory) / "staff-pin"
    path.write_text(hash_pin(pin) + "\n")
    path.chmod(0o600)
    return str(path)


def bootstrap(tmp_path: Path, broker=None, **overrides) -> AgentBootstrap:
    port = broker.port if broker is not None else 1
    fields = dict(device="1a-pi-01", site="penny-acres", broker_url=f"mqtt://127.0.0.1:{port}",
                  collector_url="http://127.0.0.1:9", credentials=str(tmp_path / "no-credentials.yaml"),
                  state_dir=str(tmp_path / "state"), control_socket=str(tmp_path / "control.sock"),
                  config_dir=str(CONFIG_DIR), screen_backend="headless",
                  chromium_policy_dir=str(tmp_path / "chromium" / "managed"),
                  chromium_native_hosts_dir=str(tmp_path / "chromium" / "native-messaging-hosts"),
                  blockpage_dir=str(tmp_path / "blockpage"), firefox_policy_dir=str(tmp_path / "firefox"))
    fields.update(overrides)
    return AgentBootstrap(**fields)


def unbatched(kind: str, payload: dict) -> list[tuple[str, dict]]:
    """One message as the collector reads it: a backlog's batch (docs/protocol.md, "Batches")
    is its events, in order; anything else is itself."""
    if kind == "event" and isinstance(payload.get("batch"), list):
        return [("event", one) for one in payload["batch"]]
    return [(kind, payload)]


class Subscriber:
    def __init__(self, broker, topic: str = "classroom/v1/#", *, persistent: bool = False):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"sub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.topic = topic
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, message="subscriber did not subscribe")

    def _on_connect(self, client, userdata, flags, rc, props):
        if not flags.session_present:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self._cond.notify_all()

    def payloads(self, kind: str | None = None) -> list[dict]:
        out = []
        with self._cond:
            items = list(self.messages)
        for topic, payload, _ in items:
            if kind is None or topic.endswith("/" + kind):
                try:
                    out += [p for _, p in unbatched(topic.rsplit("/", 1)[1], json.loads(payload))]
                except ValueError:
                    pass
        return out

    def wait_for(self, kind: str, timeout: float = 15.0, **match) -> dict:
        def found():
            for p in self.payloads(kind):
                if all(p.get(k) == v for k, v in match.items()):
                    return p
            return None
        return wait_until(found, timeout, message=lambda: f"no {kind} {match}; saw {self.payloads(kind)}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(broker, topic: str, payload: bytes | str | dict) -> None:
    """Publish one QoS 1 message and wait for the broker's PUBACK."""
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        c.publish(topic, data, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()

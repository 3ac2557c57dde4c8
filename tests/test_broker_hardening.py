"""Broker-wide hardening (server/broker_config.py HARDENING), attacked against a real
mosquitto started with the generated password file, ACL and settings.

- One device's credentials must not knock another device off the broker: connecting
  with the victim's client id used to take over its session, and looping it kept a
  room's button offline.  The broker now ties the client id to the username.
- Nothing bigger than the contract's payload limit is delivered, and a huge packet gets
  its sender disconnected (an 8 MiB publish and 40 x 50 MiB went through before).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from agent.config import load_tree
from agent.protocol import MAX_PAYLOAD
from broker_fixtures import CONFIG, alert_payload, secure_broker, t  # noqa: F401
from server.broker_config import HARDENING, build_accounts, generate
from services import wait_until

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parent.parent


class Watch:
    """Records a client's connects and disconnects (paho's thread)."""

    def __init__(self, client):
        self.connects = 0
        self.disconnects: list = []
        self.lock = threading.Lock()
        client.on_connect = self._connect
        client.on_disconnect = self._disconnect

    def _connect(self, *args):
        with self.lock:
            self.connects += 1

    def _disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.disconnects.append(reason_code)


def test_a_stolen_device_login_cannot_take_over_another_devices_session(secure_broker):
    victim = secure_broker.connect("5b-pi-02", client_id="5b-pi-02")
    watch = Watch(victim)
    teacher, seen = secure_broker.subscriber("m.khan", t("5b", "+", "alert"))
    # The attacker loops: connect as 5b-pi-01 asking for the victim's client id, again and again.
    for _ in range(5):
        thief = secure_broker.connect("5b-pi-01", client_id="5b-pi-02")
        thief.disconnect()  # before loop_stop: it wakes paho's loop, which would sleep out its second
        thief.loop_stop()
    # The victim is still connected and its alert still reaches the teacher.
    assert victim.is_connected() and watch.disconnects == []
    secure_broker.publish(victim, t("5b", "5b-pi-02", "alert"), alert_payload("5b", "5b-pi-02"))
    seen.wait(lambda r: t("5b", "5b-pi-02", "alert") in r.topics())
    assert watch.disconnects == []


def test_a_second_connection_with_the_same_login_replaces_only_its_own_session(secure_broker):
    first = secure_broker.connect("5b-pi-01", client_id="anything")
    watch = Watch(first)
    secure_broker.connect("5b-pi-01", client_id="something-else")
    # Same username, so the same client id: the newer connection takes over its own session.
    wait_until(lambda: watch.disconnects, timeout=10, message="the older session to be replaced")


def test_oversized_payloads_are_not_delivered_and_huge_ones_disconnect(secure_broker):
    teacher, seen = secure_broker.subscriber("m.khan", t("5b", "+", "alert"))
    device = secure_broker.connect("5b-pi-01")
    watch = Watch(device)
    # Just over the contract's limit: refused by the broker (mosquitto answers PUBACK 149,
    # which paho 2.x treats as a protocol error and reconnects: the agent never sends one).
    # That disconnect is the sign the broker has handled it.
    device.publish(t("5b", "5b-pi-01", "alert"), b"x" * (MAX_PAYLOAD + 1), qos=1)
    wait_until(lambda: watch.disconnects, 10, message="the broker never answered the oversized message")
    # Positive control after the refused message: a normal alert arrives, the big one never.
    other = secure_broker.connect("5b-pi-02")
    secure_broker.publish(other, t("5b", "5b-pi-02", "alert"), alert_payload("5b", "5b-pi-02"))
    seen.wait(lambda r: t("5b", "5b-pi-02", "alert") in r.topics())
    assert seen.topics() == [t("5b", "5b-pi-02", "alert")]
    # A 1 MiB packet: the sender is disconnected before the broker reads it into memory.
    raw = socket.create_connection((secure_broker.broker.host, secure_broker.broker.port), timeout=10)
    user, pw = b"5b-pi-01", secure_broker.passwords["5b-pi-01"].encode()
    body = (b"\x00\x04MQTT\x04\xc2\x00\x1e" + len(b"x").to_bytes(2, "big") + b"x"
            + len(user).to_bytes(2, "big") + user + len(pw).to_bytes(2, "big") + pw)
    raw.sendall(b"\x10" + bytes([len(body)]) + body)
    assert raw.recv(4)[:2] == b"\x20\x02"                       # CONNACK
    topic = t("5b", "5b-pi-01", "event").encode()
    length = 2 + len(topic) + (1 << 20)
    header = bytearray(b"\x30")
    while True:                                                  # MQTT variable-length remaining length
        byte, length = length % 128, length // 128
        header.append(byte | (0x80 if length else 0))
        if not length:
            break
    raw.sendall(bytes(header) + len(topic).to_bytes(2, "big") + topic + b"y" * 4096)
    raw.settimeout(10)
    try:
        assert raw.recv(1) == b""                                # closed by the broker
    except ConnectionResetError:
        pass
    raw.close()


def test_extra_ingest_workers_have_their_own_accounts(tmp_path, mosquitto_factory):
    out = tmp_path / "broker"
    generate(load_tree(CONFIG), out, ingest_workers=3)
    acl = (out / "acl").read_text()
    for name in ("classroom-server", "classroom-server-1", "classroom-server-2"):
        assert f"user {name}\n" in acl
    assert not (out / "credentials" / "classroom-server-1.yaml").exists()  # serve uses the server's file
    import yaml

    password = yaml.safe_load((out / "credentials" / "classroom-server.yaml").read_text())["password"]
    broker = mosquitto_factory("\n".join(HARDENING), password_file=out / "passwd", acl_file=out / "acl",
                               allow_anonymous=False)
    from services import close_client, mqtt_client

    clients = [mqtt_client(broker, username=n, password=password)
               for n in ("classroom-server", "classroom-server-1", "classroom-server-2")]
    watches = [Watch(c) for c in clients]
    try:
        # All three stay connected side by side (none takes over another's session).
        assert all(c.is_connected() for c in clients)
        assert all(w.disconnects == [] for w in watches)
    finally:
        for c in clients:
            close_client(c)


def test_generated_and_shipped_configs_carry_the_same_hardening(tmp_path):
    out = tmp_path / "broker"
    generate(load_tree(CONFIG), out)
    generated = (out / "mosquitto.conf").read_text().splitlines()
    shipped = (REPO / "systemd" / "mosquitto-classroom.conf").read_text().splitlines()
    for line in HARDENING:
        assert line in generated
        assert line in shipped
    assert "use_username_as_clientid true" in HARDENING


def test_build_accounts_refuses_a_worker_name_that_is_taken():
    from agent.errors import UserError

    with pytest.raises(UserError, match=r"server user '5b-pi-01' is also a device id"):
        build_accounts(load_tree(CONFIG), server_user="5b-pi-01")

"""A command to a device is meant for now: the broker drops one it has held too long.

"Eyes on me", a message or an allow must not land on a pupil's screen hours later, when a
school's bridge link or a device comes back (docs/scaling.md, docs/protocol.md).  The
collector sends every ``cmd`` with an MQTT 5 message expiry; a DSL's hold and release do not
expire.  Against a real mosquitto, with the collector's own connection."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest

from agent import protocol
from server.ingest.client import Connection
from services import close_client, wait_until

TOPIC = "classroom/v1/penny-acres/5b/5b-pi-01/cmd"


def _connection(mosquitto) -> Connection:
    connected = threading.Event()
    conn = Connection(mosquitto.host, mosquitto.port, "collector-test", on_messages=lambda m: None,
                      on_connect=lambda *a: connected.set(), on_disconnect=lambda *a: None,
                      on_subscribe=lambda *a: None)
    conn.start()
    assert connected.wait(10), "the collector's connection did not connect"
    return conn


def _device(mosquitto, got: queue.Queue, clean_start: bool):
    """The device's session: persistent, so the broker queues for it while it is away.
    (on_message is set before connecting: queued commands arrive with the CONNACK.)"""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="5b-pi-01",
                    protocol=mqtt.MQTTv5)
    c.on_message = lambda client, userdata, msg: got.put((json.loads(msg.payload), msg.properties))
    connected, subscribed = threading.Event(), threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_subscribe = lambda *a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect(mosquitto.host, mosquitto.port, keepalive=30, clean_start=clean_start, properties=props)
    c.loop_start()
    assert connected.wait(10), "the device did not connect"
    c.subscribe(TOPIC, qos=1)
    assert subscribed.wait(10)
    return c


def _cmd(name: str, **fields) -> bytes:
    return json.dumps({"cmd": name, "by": "m.khan", **fields}).encode()


def test_contract_every_command_expires_but_hold_and_release():
    assert protocol.cmd_expiry_seconds(_cmd("lock", minutes=1)) == protocol.CMD_EXPIRY_SECONDS
    assert protocol.cmd_expiry_seconds(_cmd("message", text="Tidy up")) == protocol.CMD_EXPIRY_SECONDS
    assert protocol.cmd_expiry_seconds(_cmd("hold", hold_id="x")) is None
    assert protocol.cmd_expiry_seconds(_cmd("release", hold_id="x")) is None
    assert protocol.cmd_expiry_seconds(b"\xff not json") == protocol.CMD_EXPIRY_SECONDS


def test_a_connected_device_gets_the_command_with_its_expiry(mosquitto):
    got: queue.Queue = queue.Queue()
    device = _device(mosquitto, got, clean_start=True)
    conn = _connection(mosquitto)
    try:
        conn.publish(TOPIC, _cmd("lock", minutes=1), qos=1)
        data, props = got.get(timeout=10)
        assert data["cmd"] == "lock"
        assert 0 < props.MessageExpiryInterval <= protocol.CMD_EXPIRY_SECONDS
    finally:
        conn.stop()
        close_client(device)


def test_a_stale_lock_is_dropped_while_the_hold_still_arrives(mosquitto, monkeypatch):
    monkeypatch.setattr(protocol, "CMD_EXPIRY_SECONDS", 1)
    got: queue.Queue = queue.Queue()
    close_client(_device(mosquitto, got, clean_start=True))   # the device's session, then it goes away
    conn = _connection(mosquitto)
    try:
        conn.publish(TOPIC, _cmd("lock", minutes=1, message="Eyes on me"), qos=1)
        conn.publish(TOPIC, _cmd("hold", hold_id="5f0c2a4e-1111-4c4c-8888-000000000001"), qos=1)
        sent = time.monotonic()
        # Waiting for time itself to pass (the expiry), not for an event: nothing to poll.
        wait_until(lambda: time.monotonic() - sent > 2.2, timeout=10)
        device = _device(mosquitto, got, clean_start=False)
        try:
            data, props = got.get(timeout=10)
            assert data["cmd"] == "hold"
            # The lock would have come first (same session, in order): it is gone.
            assert got.empty()
        finally:
            close_client(device)
    finally:
        conn.stop()

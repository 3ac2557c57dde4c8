"""Fixtures for the dashboard / rollout / reports tests: a real collector on a loopback port.

``collector`` = mosquitto (real) + SQLite store + one Ingest worker + the FastAPI app
served by uvicorn in a thread, wired exactly like ``classroom-server serve`` does
(publisher through ingest's connection, app.state.listeners fanned out from ingest).
Import with ``from web_fixtures import *``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from server_fixtures import PASSWORD, STAFF, add_staff  # noqa: F401
from services import free_port, mqtt_client, wait_until

__all__ = ["LiveServer", "collector", "Collector", "enrol_device", "DEVICE_PASSWORD", "CmdRecorder", "form_client"]

DEVICE_PASSWORD = "device-secret-5b-pi-01"


class LiveServer:
    """uvicorn serving *app* on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=15, message="uvicorn did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def form_client(app):
    """An in-process client that posts the way the dashboard's forms do: over https (the
    session cookie is Secure), with the session's ``csrf_token`` field that every form
    carries (server/http/csrf.py; tests/test_security_web.py checks the pages really carry it)."""
    from fastapi.testclient import TestClient

    from server.http.auth import COOKIE
    from server.http.csrf import csrf_token

    class FormClient(TestClient):
        def post(self, url, *, data=None, **kwargs):
            session = self.cookies.get(COOKIE)
            if session and "json" not in kwargs and "content" not in kwargs:
                data = {**(data or {}), "csrf_token": csrf_token(session)}
            return super().post(url, data=data, **kwargs)

    return FormClient(app, base_url="https://testserver", follow_redirects=False)


class CmdRecorder:
    """An MQTT subscriber standing in for a device: records every cmd it is sent."""

    def __init__(self, broker, topic: str) -> None:
        import json

        self.messages: list[tuple[str, dict, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt_client(broker)

        def on_message(client, userdata, msg):
            with self._cond:
                self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))
                self._cond.notify_all()

        self.client.on_message = on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), "subscribe timed out"

    def wait_for(self, predicate, timeout: float = 10.0):
        return wait_until(lambda: next((m for m in list(self.messages) if predicate(m)), None), timeout=timeout,
                          message=lambda: f"no matching cmd; got {self.messages}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Collector:
    broker: Any
    store: Any
    ingest: Any
    app: Any
    server: LiveServer
    tree: Any
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def enrol_device(store, device: str = "5b-pi-01", password: str = DEVICE_PASSWORD, room: str = "5b") -> None:
    from server.http.auth import hash_password

    store.set_device_credentials(device, hash_password(password), "test", site="penny-acres", room=room)


@pytest.fixture
def collector(mosquitto, tmp_path, tree):
    from server.http.app import Settings, create_app
    from server.ingest import Ingest
    from server.store import Store

    store = Store.open(f"sqlite:///{tmp_path}/server.db")
    for role, name in STAFF.items():
        add_staff(store, name, role)
    ingest = Ingest(store, f"mqtt://127.0.0.1:{mosquitto.port}", client_id=f"collector-{free_port()}")

    def publish(topic: str, payload: bytes, qos: int) -> None:
        info = ingest.publish(topic, payload, qos)
        if info.rc != 0:
            raise RuntimeError(f"publish failed (rc={info.rc})")

    # Plain http on loopback, as `serve --plain-http` (a local demo) runs: the browsers in the
    # end-to-end tests would not keep a Secure cookie from http://127.0.0.1.
    app = create_app(Settings(db_url="unused", config_dir=None, cookie_secure=False), store=store, tree=tree,
                     publisher=publish, ingest=ingest)

    def fan_out(kind, where, data):
        for listener in list(app.state.listeners):
            listener(kind, where, data)

    ingest.listeners.append(fan_out)
    ingest.start()
    assert ingest.subscribed.wait(10), "ingest did not subscribe"
    server = LiveServer(app).start()
    yield Collector(mosquitto, store, ingest, app, server, tree)
    server.stop()
    ingest.stop()
    store.close()

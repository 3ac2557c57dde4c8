"""Fixtures for the collector's tests: a store on SQLite AND PostgreSQL, staff logins, payloads.

``store`` is parametrized over both backends, so every test that takes it runs twice;
the PostgreSQL variant gets a fresh database from the session ``postgres`` fixture.
Import into a test module with ``from server_fixtures import *``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent import protocol
from agent.config import load_tree

REPO = Path(__file__).resolve().parent.parent
SITE = "penny-acres"
PASSWORD = "correct horse battery staple"
# Staff in the example config: m.khan is alert_staff of 5b only; "office" is the school office's
# escalation contact.
STAFF = {"teacher": "m.khan", "dsl": "s.patel", "technician": "tech", "admin": "head", "office": "office"}

__all__ = ["store", "sqlite_store", "tree", "app_factory", "staff_client", "make_event", "make_alert",
           "make_status", "make_heartbeat", "topic_of", "SITE", "PASSWORD", "STAFF", "REPO", "add_staff"]


@pytest.fixture(scope="session")
def tree():
    return load_tree(REPO / "config")


def _open(url: str):
    from server.store import Store

    return Store.open(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = _open(f"sqlite:///{tmp_path}/server.db")
    else:
        pg = request.getfixturevalue("postgres")
        s = _open(pg.new_database("store"))
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = _open(f"sqlite:///{tmp_path}/server.db")
    yield s
    s.close()


_HASHES: dict[str, str] = {}


def add_staff(store, username: str, role: str, password: str = PASSWORD, site: str = SITE) -> None:
    """An account with *role* at *site* (the example school; ``role="trust"``: the trust level)."""
    from server.http.auth import hash_password

    # argon2 is slow on purpose; one hash per password for the whole run.
    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    store.add_user(username, role, _HASHES[password], sites={"*" if role == "trust" else site: role})


@pytest.fixture
def app_factory(tree):
    """app_factory(store, publisher=None) -> FastAPI app with one user per role."""
    from server.http.app import Settings, create_app

    def make(store, publisher=None, with_staff: bool = True, ingest=None):
        if with_staff:
            for role, name in STAFF.items():
                if store.get_user(name) is None:
                    add_staff(store, name, role)
        return create_app(Settings(db_url="unused"), store=store, tree=tree, publisher=publisher, ingest=ingest)

    return make


@pytest.fixture
def staff_client():
    """staff_client(app, role) -> TestClient logged in (bearer token) as that role's user; role None = anonymous."""
    from fastapi.testclient import TestClient

    clients = []

    def make(app, role: str | None):
        client = TestClient(app)
        clients.append(client)
        if role is not None:
            r = client.post("/api/v1/login", json={"username": STAFF[role], "password": PASSWORD})
            assert r.status_code == 200, r.text
            client.headers["Authorization"] = f"Bearer {r.json()['token']}"
            client.cookies.clear()
        return client

    yield make
    for c in clients:
        c.close()


def topic_of(room: str, device: str, kind: str, site: str = SITE) -> str:
    return protocol.topic(protocol.DEFAULT_PREFIX, site, room, device, kind)


def make_event(room="5b", device="5b-pi-01", type="blocked", **fields) -> dict:
    event = {"id": str(uuid.uuid4()), "type": type, "ts": protocol.now_ts(), "site": SITE, "room": room,
             "device": device}
    if type == "blocked":
        event.update({"domain": "games.example.com", "profile": "ks2", "user": "pupil5b"})
    event.update(fields)
    return event


def make_alert(alert_id=None, state="raised", room="5b", device="5b-pi-01", ts=None, by=None, seat="Table 1"):
    return {"id": alert_id or str(uuid.uuid4()), "state": state, "site": SITE, "room": room, "device": device,
            "seat": seat, "ts": ts or protocol.now_ts(), "by": by}


def make_status(state="online", ts=None, **extra) -> dict:
    return {"state": state, "ts": ts or protocol.now_ts(), "agent_version": "0.1.0", "config_version": "abc",
            **extra}


def make_heartbeat(ts=None, **extra) -> dict:
    return {"ts": ts or protocol.now_ts(), "cpu": 3.5, "mem": 41.0, "temp": 48.2, "uptime": 1234, "user": "pupil",
            "config_version": "abc", **extra}

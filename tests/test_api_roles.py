"""EVERY route refuses the wrong role: a table-driven test over all routes x roles (and anonymous).

The allowed roles are read from each route's ``require(...)`` dependency, so a new route is
covered automatically; a route without one must be in its router's ``PUBLIC`` set (``server.http.app.PUBLIC_ROUTES``
is their union).
The expected table for the core API is also written out below, so a change to who may do
what is a visible, reviewed change.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.routing import APIRoute

from server.http.app import PUBLIC_ROUTES
from server.http.auth import hash_password, token_hash
from server.store import iso

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import STAFF, make_alert

pytestmark = pytest.mark.timeout(60)

ROLES = (None, "teacher", "dsl", "technician", "admin", "office", "device")
T, D, TECH, A, O = "teacher", "dsl", "technician", "admin", "office"

# The reviewed table for the core API (method, path) -> roles allowed.
EXPECTED = {
    ("POST", "/api/v1/logout"): {T, D, TECH, A, O},
    ("GET", "/api/v1/me"): {T, D, TECH, A, O},
    ("GET", "/api/v1/incident-categories"): {T, D},
    ("GET", "/api/v1/incidents"): {T, D},
    ("GET", "/api/v1/incidents/{incident_id}"): {T, D},
    ("PATCH", "/api/v1/incidents/{incident_id}"): {D},
    ("POST", "/api/v1/incidents/{incident_id}/notes"): {D},
    ("POST", "/api/v1/incidents/{incident_id}/checklist"): {D},
    ("GET", "/api/v1/incidents/{incident_id}/evidence"): {D},
    ("POST", "/api/v1/alerts/{alert_id}/ack"): {T, D, A},
    ("POST", "/api/v1/alerts/{alert_id}/clear"): {T, D, A},
    ("GET", "/api/v1/devices"): {TECH, A},
    ("GET", "/api/v1/device-alerts"): {TECH, A},
    ("POST", "/api/v1/enrol-tokens"): {TECH, A},
    ("GET", "/api/v1/enrol-tokens"): {TECH, A},
    ("GET", "/api/v1/device/whoami"): {"device"},
    ("GET", "/api/v1/users"): {A},
    ("POST", "/api/v1/users"): {A},
    ("PATCH", "/api/v1/users/{username}"): {A},
    ("GET", "/api/v1/audit"): {D, A},
    ("GET", "/api/v1/deliveries"): {D, A},
}


def _dependant_roles(dependant) -> set[str]:
    found: set[str] = set()
    for dep in dependant.dependencies:
        found.update(getattr(dep.call, "roles", ()) or ())
        found.update(_dependant_roles(dep))
    return found


def _routes(app):
    """(method, full path, allowed roles or None) for every API route, however it is included
    (FastAPI >= 0.16x keeps included routers as lazy ``_IncludedRouter`` entries)."""

    def walk(routes, prefix: str, inherited: set[str]):
        for route in routes:
            if isinstance(route, APIRoute):
                roles = _dependant_roles(route.dependant) | inherited
                for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                    yield method, prefix + route.path, roles or None
            elif hasattr(route, "original_router"):
                ctx = route.include_context
                extra = set()
                for dep in getattr(ctx, "dependencies", []) or []:
                    extra.update(getattr(dep.dependency, "roles", ()) or ())
                yield from walk(route.original_router.routes, prefix + (getattr(ctx, "prefix", "") or ""),
                                inherited | extra)
            elif hasattr(route, "routes") and hasattr(route, "path"):  # a mounted sub-application
                yield from walk(route.routes, prefix + route.path, inherited)

    found = list(walk(app.routes, "", set()))
    assert len(found) > len(EXPECTED), "route discovery found too few routes"
    return found


@pytest.fixture
def world(sqlite_store, app_factory):
    app = app_factory(sqlite_store, with_staff=False)
    for role, name in STAFF.items():
        sqlite_store.add_user(name, role, "not-used")  # sessions are made directly below
    alert = make_alert()
    sqlite_store.record_alert(alert)  # in room 5b, m.khan's room
    sqlite_store.set_device_credentials("5b-pi-01", hash_password("device-secret-1"), by="test")
    return app, sqlite_store, alert["id"]


def _headers(store, role):
    if role is None:
        return {}
    if role == "device":
        return {"Authorization": "Basic " + base64.b64encode(b"5b-pi-01:device-secret-1").decode()}
    token = uuid.uuid4().hex
    store.add_session(token_hash(token), STAFF[role], iso(datetime.now(timezone.utc) + timedelta(hours=1)))
    return {"Authorization": f"Bearer {token}"}


def _is_stream(path: str) -> bool:
    """Server-sent-event routes (the dashboard's live feed) stay open for allowed roles."""
    return path.rstrip("/").rsplit("/", 1)[-1] in ("events", "stream", "live", "sse")


def test_every_route_declares_roles_or_is_public(world):
    app, _, _ = world
    routes = _routes(app)
    unprotected = [(m, p) for m, p, roles in routes if roles is None and (m, p) not in PUBLIC_ROUTES]
    assert unprotected == [], "routes with no require(...) dependency and not in PUBLIC_ROUTES"
    declared = {(m, p): roles for m, p, roles in routes if (m, p) in EXPECTED}
    assert declared == EXPECTED


def test_every_route_refuses_every_wrong_role(world):
    from fastapi.testclient import TestClient

    app, store, incident_id = world
    params = {"incident_id": incident_id, "alert_id": incident_id, "username": "m.khan", "device_id": "5b-pi-01",
              "device": "5b-pi-01", "room": "5b", "room_id": "5b"}
    checked = 0
    with TestClient(app) as client:
        for method, path, allowed in _routes(app):
            if (method, path) in PUBLIC_ROUTES:
                continue
            url = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: params.get(m.group(1), "x"), path)
            for role in ROLES:
                if role in allowed and _is_stream(path):
                    continue  # a live event stream never ends; its refusals are still checked
                r = client.request(method, url, headers=_headers(store, role), json={})
                refused = r.status_code in (401, 403)
                if role in allowed:
                    assert not refused, f"{method} {path} refused allowed role {role}: {r.status_code} {r.text}"
                else:
                    assert refused, f"{method} {path} let {role or 'anonymous'} in: {r.status_code} {r.text[:200]}"
                    if role is None:
                        assert r.status_code == 401
                checked += 1
    assert checked >= len(EXPECTED) * len(ROLES)


def test_teacher_cannot_reach_other_rooms(world, app_factory):
    from fastapi.testclient import TestClient

    app, store, _ = world
    other = make_alert(room="1a", device="1a-pi-01")
    store.record_alert(other)
    with TestClient(app) as client:
        h = _headers(store, "teacher")
        assert client.get(f"/api/v1/incidents/{other['id']}", headers=h).status_code == 404
        assert client.post(f"/api/v1/alerts/{other['id']}/ack", headers=h).status_code == 404
        assert other["id"] not in client.get("/api/v1/incidents", headers=h).text


def test_expired_disabled_and_forged_sessions_are_refused(world):
    from fastapi.testclient import TestClient

    app, store, _ = world
    with TestClient(app) as client:
        store.add_session(token_hash("old"), "s.patel", iso(datetime.now(timezone.utc) - timedelta(seconds=1)))
        assert client.get("/api/v1/me", headers={"Authorization": "Bearer old"}).status_code == 401
        assert client.get("/api/v1/me", headers={"Authorization": "Bearer " + "x" * 43}).status_code == 401
        assert client.get("/api/v1/me", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401
        h = _headers(store, "dsl")
        assert client.get("/api/v1/me", headers=h).status_code == 200
        store.update_user("s.patel", disabled=1)
        assert client.get("/api/v1/me", headers=h).status_code == 401
        wrong = {"Authorization": "Basic " + base64.b64encode(b"5b-pi-01:wrong").decode()}
        assert client.get("/api/v1/device/whoami", headers=wrong).status_code == 401

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
from server_fixtures import SITE, STAFF, make_alert

pytestmark = pytest.mark.timeout(60)

ROLES = (None, "teacher", "dsl", "technician", "admin", "office", "trust", "device")
T, D, TECH, A, O, TR = "teacher", "dsl", "technician", "admin", "office", "trust"
# The trust level's account (site "*"): every school's totals and health, no pupils' records.
TRUST_USER = "trust-it"

# The reviewed table for the core API (method, path) -> roles allowed.
EXPECTED = {
    ("POST", "/api/v1/logout"): {T, D, TECH, A, O, TR},
    ("GET", "/api/v1/me"): {T, D, TECH, A, O, TR},
    ("POST", "/api/v1/site"): {T, D, TECH, A, O, TR},
    ("GET", "/api/v1/trust/health"): {TR},
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
    ("GET", "/api/v1/audit"): {D, A, TR},
    ("GET", "/api/v1/deliveries"): {D, A},
    # issue 15: the DSL's record
    ("POST", "/api/v1/concerns"): {T, D},
    ("GET", "/api/v1/it-queue"): {TECH, A},
    ("POST", "/api/v1/it-queue/{item_id}/done"): {TECH, A},
    ("GET", "/api/v1/guard-events"): {D, TECH},
    ("GET", "/api/v1/allowlist/changes"): {D, TECH, A},
    ("POST", "/api/v1/allowlist/changes"): {TECH},
    ("POST", "/api/v1/allowlist/changes/{change_id}/decision"): {D},
    ("GET", "/api/v1/allowlist/overrides"): {D, TECH, A},
    ("POST", "/api/v1/incidents/{incident_id}/export"): {D},
    ("POST", "/api/v1/exports/pupil"): {D},
    ("GET", "/api/v1/exports"): {D},
    ("GET", "/api/v1/reviews"): {D, TECH, A},
    ("POST", "/api/v1/reviews"): {D, A},
    ("GET", "/api/v1/checks"): {D, TECH, A},
    ("POST", "/api/v1/checks/{check_id}/actions"): {D, TECH},
    ("POST", "/api/v1/filter-tests"): {TECH},
    ("POST", "/api/v1/filter-tests/{test_id}/result"): {TECH},
    ("GET", "/api/v1/aup"): {D, A},
    ("GET", "/api/v1/devices/{device_id}/aup"): {"device"},
    ("GET", "/api/v1/reports/term"): {D},
    # and their dashboard pages
    ("GET", "/concerns/new"): {T, D},
    ("POST", "/concerns/new"): {T, D},
    ("GET", "/it-queue"): {TECH, A},
    ("POST", "/it-queue/{item_id}/done"): {TECH, A},
    ("GET", "/guard"): {D, TECH},
    ("GET", "/guard.csv"): {D, TECH},
    ("GET", "/allowlist"): {D, TECH, A},
    ("POST", "/allowlist/propose"): {TECH},
    ("POST", "/allowlist/{change_id}/decide"): {D},
    ("POST", "/incidents/{incident_id}/export"): {D},
    ("GET", "/exports"): {D},
    ("POST", "/exports/pupil"): {D},
    ("GET", "/reviews"): {D, TECH, A},
    ("POST", "/reviews"): {D, A},
    ("GET", "/checks"): {D, TECH, A},
    ("POST", "/checks/test"): {TECH},
    ("POST", "/checks/test/{test_id}"): {TECH},
    ("POST", "/checks/{check_id}/action"): {D, TECH},
    ("GET", "/aup"): {D, A},
    ("GET", "/reports/term"): {D},
    ("GET", "/reports/term.pdf"): {D},
    ("GET", "/api/v1/holds"): {D},
    ("GET", "/api/v1/incidents/{incident_id}/holds"): {D},
    ("POST", "/api/v1/incidents/{incident_id}/hold"): {D},
    ("POST", "/api/v1/holds/{hold_id}/lift"): {D},
    ("GET", "/api/v1/blocked"): {D, TECH},
    # Issue 16: a teacher's room commands (their own rooms: alert_staff, timetable, cover)
    # and the timetable (the office enters cover).
    ("POST", "/api/v1/rooms/{room}/lock"): {T, D, A},
    ("POST", "/api/v1/rooms/{room}/unlock"): {T, D, A},
    ("POST", "/api/v1/rooms/{room}/allow"): {T, D, A},
    ("POST", "/api/v1/rooms/{room}/message"): {T, D, A},
    ("GET", "/api/v1/rooms/{room}/commands"): {T, D, A},
    ("GET", "/api/v1/timetable"): {O, D, A},
    ("GET", "/cover"): {O, D, A},
    ("POST", "/cover"): {O, D, A},
    ("POST", "/cover/{cover_id}/remove"): {O, D, A},
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
        sqlite_store.add_user(name, role, "not-used", sites={SITE: role})  # sessions are made directly below
    sqlite_store.add_user(TRUST_USER, TR, "not-used", sites={"*": TR})
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
    store.add_session(token_hash(token), TRUST_USER if role == TR else STAFF[role],
                      iso(datetime.now(timezone.utc) + timedelta(hours=1)))
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


# --------------------------------------------------------------------------- fields (issue 14, item 2)

# The reviewed field table: which fields of an incident each role may see (docs/data-protection.md).
TIMELINE = {"id", "site", "room", "device", "seat", "raised_at", "alert_state", "timeline"}
RECORD = {"category", "tags", "status", "outcome", "created_at", "updated_at", "closed_at", "actions", "notes",
          "checklist", "session_user", "concern", "exports"}
FIELDS = {T: TIMELINE, A: TIMELINE, D: TIMELINE | RECORD}
# What the DSL writes into the record below; free text is unique so it can be searched for anywhere.
CANARIES = ("CANARY-OUTCOME-7f3", "CANARY-NOTE-7f3", "CANARY-TICK-7f3", "canary-evidence-7f3.example")
RECORD_VALUES = {"category": "radicalisation-extremism", "tags": ["commerce"], "status": "referred",
                 "outcome": CANARIES[0]}


def _url(path: str, incident_id: str) -> str:
    params = {"incident_id": incident_id, "alert_id": incident_id, "username": "m.khan", "device_id": "5b-pi-01",
              "device": "5b-pi-01", "room": "5b", "room_id": "5b"}
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: params.get(m.group(1), "x"), path)


def _normalised(text: str) -> str:
    # Digits only: times, ages and ids; a category, tag or status is words.
    return re.sub(r"\d", "0", text)


def _incident_objects(value):
    """Every dict in a JSON answer that is an incident (has alert_state), and every report
    incidents summary (has total and by_room)."""
    if isinstance(value, dict):
        if "alert_state" in value or {"total", "by_room"} <= set(value):
            yield value
        for v in value.values():
            yield from _incident_objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from _incident_objects(v)


def test_the_field_table_is_the_reviewed_one():
    from server import incidents as inc

    assert {role: set(fields) for role, fields in inc.VISIBLE_FIELDS.items()} == FIELDS


def test_dsl_only_fields_reach_only_the_dsl_on_every_route_and_role(world, monkeypatch):
    """Every GET route as every role, before and after the DSL fills in the record: nobody but
    the DSL may see anything change (API JSON, pages, CSV, the report, the live stream), the
    DSL's free text appears nowhere else on any route (POST/PATCH too), and JSON incidents
    carry exactly the reviewed fields."""
    from fastapi.testclient import TestClient

    import importlib
    import pkgutil

    import server.web.pages as pages

    # Every live stream ends by itself (each page module with one says how long it runs).
    for info in pkgutil.iter_modules(pages.__path__):
        module = importlib.import_module(f"server.web.pages.{info.name}")
        if hasattr(module, "STREAM_SECONDS"):
            monkeypatch.setattr(module, "STREAM_SECONDS", 0.3)
    app, store, incident_id = world
    # The snapshots' own room streams would otherwise count as live viewers on the office
    # board between "before" and "after": presence is not the DSL's record.
    app.state.presence.viewer_seconds = 0
    store.insert_events([{"id": str(uuid.uuid4()), "type": "report_evidence", "ts": iso(datetime.now(timezone.utc)),
                          "site": "penny-acres", "room": "5b", "device": "5b-pi-01", "alert_id": incident_id,
                          "minutes": 10, "domains": [{"domain": CANARIES[3], "ts": "2026-11-24T09:00:00.000Z",
                                                      "count": 2}]}])
    headers = {role: _headers(store, role) for role in ROLES}
    routes = _routes(app)
    gets = [(p, allowed) for m, p, allowed in routes if m == "GET"]
    extra = ["/api/v1/incidents?status=referred", "/incidents?status=referred", "/incidents?status=open",
             "/reports/weekly.csv", "/api/v1/reports/weekly?format=csv", "/api/v1/reports/weekly?format=html"]

    def snapshot(client) -> dict:
        out = {}
        for path, _ in gets:
            for role in ROLES:
                r = client.get(_url(path, incident_id), headers=headers[role])
                out[(path, role)] = r
        for url in extra:
            for role in ROLES:
                out[(url, role)] = client.get(url, headers=headers[role])
        return out

    with TestClient(app) as client:
        before = snapshot(client)
        dsl = headers[D]
        assert client.patch(f"/api/v1/incidents/{incident_id}", json=RECORD_VALUES, headers=dsl).status_code == 200
        assert client.post(f"/api/v1/incidents/{incident_id}/notes", json={"text": CANARIES[1]},
                           headers=dsl).status_code == 200
        assert client.post(f"/api/v1/incidents/{incident_id}/checklist",
                           json={"item": "prevent", "note": CANARIES[2]}, headers=dsl).status_code == 200
        after = snapshot(client)

        # Positive control: the DSL does see all of it, so the checks below can see a leak.
        full = client.get(f"/api/v1/incidents/{incident_id}", headers=dsl)
        assert set(full.json()) == FIELDS[D]
        assert all(c in full.text for c in CANARIES[:3]) and "radicalisation-extremism" in full.text
        assert CANARIES[3] in client.get(f"/api/v1/incidents/{incident_id}/evidence", headers=dsl).text
        assert "radicalisation-extremism" in after[("/reports/weekly", D)].text
        assert before[("/incidents", D)].text != after[("/incidents", D)].text

        checked = 0
        for (path, role), r in after.items():
            if role == D:
                continue
            text = r.text
            assert not any(c in text for c in CANARIES), f"{role} sees the DSL's record on GET {path}"
            if path == "/api/v1/audit":
                # Admins read the audit log: which fields changed, never their values.
                assert not any(v in text for v in ("radicalisation", "commerce", "referred", "prevent")), text
                continue
            assert (before[(path, role)].status_code, _normalised(before[(path, role)].text)) == \
                (r.status_code, _normalised(text)), f"GET {path} as {role} changed when the DSL set the record"
            if r.headers.get("content-type", "").startswith("application/json"):
                for obj in _incident_objects(r.json()):
                    if "alert_state" in obj:
                        assert set(obj) <= FIELDS.get(role, set()), (path, role, sorted(obj))
                    else:
                        assert not {"open", "by_category", "by_status"} & set(obj), (path, role, obj)
            checked += 1
        assert checked >= len(gets) * (len(ROLES) - 1)

        # The teacher's own view has exactly the timeline fields; a status filter is refused.
        seen = client.get(f"/api/v1/incidents/{incident_id}", headers=headers[T]).json()
        assert set(seen) == FIELDS[T]
        assert after[("/api/v1/incidents?status=referred", T)].status_code == 403
        assert after[("/incidents?status=referred", A)].text == after[("/incidents?status=open", A)].text

        # State-changing routes too: whatever they answer, a non-DSL role never gets the record back.
        for method, path, allowed in routes:
            if method == "GET":
                continue
            for role in ROLES:
                if role == D:
                    continue
                r = client.request(method, _url(path, incident_id), headers=headers[role], json={})
                assert not any(c in r.text for c in CANARIES), f"{role} sees the DSL's record on {method} {path}"

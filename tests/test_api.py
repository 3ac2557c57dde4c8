"""The HTTP API in-process (TestClient): login, incidents workflow, users, ops endpoints, and
fuzzed HTTP bodies that must never crash the server or change stored data."""

from __future__ import annotations

import json
import random

import pytest

from agent import protocol

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, STAFF, make_alert, make_event

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(store, app_factory, staff_client):
    sent = []
    app = app_factory(store, publisher=lambda topic, payload, qos: sent.append((topic, json.loads(payload), qos)))
    alert = make_alert()
    store.record_alert(alert)
    store.insert_events([make_event(type="report_evidence", alert_id=alert["id"], minutes=10,
                                    domains=[{"domain": "scary.example", "ts": protocol.now_ts(), "count": 1}])])
    return app, store, alert["id"], sent, staff_client


def test_login_cookie_me_logout(api):
    from fastapi.testclient import TestClient

    app, store, _, _, _ = api
    # https: the session cookie is Secure (a client over plain http would never send it back).
    with TestClient(app, base_url="https://testserver") as c:
        assert c.post("/api/v1/login", json={"username": "s.patel", "password": "wrong"}).status_code == 401
        assert c.post("/api/v1/login", json={"username": "nobody", "password": "wrong"}).status_code == 401
        r = c.post("/api/v1/login", json={"username": "s.patel", "password": PASSWORD})
        assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
        assert "samesite=strict" in r.headers["set-cookie"].lower()
        assert "secure" in r.headers["set-cookie"].lower()
        assert c.get("/api/v1/me").json()["role"] == "dsl"  # via the cookie
        # A POST made with the cookie needs the session's CSRF token (server/http/csrf.py).
        assert c.post("/api/v1/logout").status_code == 403
        assert c.post("/api/v1/logout", headers={"X-CSRF-Token": r.json()["csrf_token"]}).status_code == 200
        c.cookies.set("classroom_session", r.json()["token"])
        assert c.get("/api/v1/me").status_code == 401  # the session is gone server-side
    actions = [a["action"] for a in store.list_audit()]
    assert "login.failed" in actions and "login" in actions and "logout" in actions
    # the raw token is never stored
    assert store.count("sessions", "token_hash = ?", (r.json()["token"],)) == 0


def test_repeated_wrong_passwords_are_throttled(api):
    from fastapi.testclient import TestClient

    from server.http.throttle import LoginThrottle

    app, store, _, _, _ = api
    app.state.login_throttle = LoginThrottle(free=3, clock=lambda: 1000.0)  # time stands still
    with TestClient(app) as c:
        codes = [c.post("/api/v1/login", json={"username": "m.khan", "password": f"guess{i}"}).status_code
                 for i in range(4)]
        assert codes == [401, 401, 401, 429]
        # even the right password waits: the guesser cannot tell when they hit it
        assert c.post("/api/v1/login", json={"username": "m.khan", "password": PASSWORD}).status_code == 429
        assert c.post("/api/v1/login", json={"username": "s.patel", "password": PASSWORD}).status_code == 200
    assert store.list_audit(action="login.throttled")[0]["actor"] == "m.khan"


def test_dsl_incident_workflow_and_teacher_view(api):
    app, store, incident_id, _, client = api
    dsl, teacher = client(app, "dsl"), client(app, "teacher")
    r = dsl.post(f"/api/v1/incidents/{incident_id}/checklist", json={"item": "report-iwf"})
    assert r.status_code == 400 and "category" in r.json()["detail"]
    r = dsl.patch(f"/api/v1/incidents/{incident_id}", json={"category": "filtering-breach",
                                                             "tags": ["content", "contact"], "status": "in-progress"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["category"] == "filtering-breach" and body["tags"] == ["contact", "content"]
    assert [i["item"] for i in body["checklist"]][:2] == ["screen-off", "report-url"]
    assert all(i["source"].startswith("shared/policies 000") for i in body["checklist"])
    r = dsl.post(f"/api/v1/incidents/{incident_id}/checklist", json={"item": "report-iwf", "note": "ref 123"})
    item = next(i for i in r.json()["checklist"] if i["item"] == "report-iwf")
    assert item["done"] and item["by"] == "s.patel" and item["at"] and item["note"] == "ref 123"
    assert dsl.patch(f"/api/v1/incidents/{incident_id}", json={"outcome": "Referred to social care"}).status_code == 200
    assert "social care" not in str(store.list_audit(action="incident.update"))  # admins read the audit log
    assert dsl.post(f"/api/v1/incidents/{incident_id}/notes", json={"text": "Parents phoned."}).status_code == 200
    full = dsl.get(f"/api/v1/incidents/{incident_id}").json()
    assert full["notes"][0]["text"] == "Parents phoned."
    seen = teacher.get(f"/api/v1/incidents/{incident_id}").json()
    assert "notes" not in seen and "checklist" not in seen and "actions" not in seen and "outcome" not in seen
    assert [t["state"] for t in seen["timeline"]] == ["raised"]
    assert teacher.get(f"/api/v1/incidents/{incident_id}/evidence").status_code == 403


def test_evidence_views_are_audited(api):
    app, store, incident_id, _, client = api
    dsl = client(app, "dsl")
    before = len(store.list_audit(action="evidence.view"))
    r = dsl.get(f"/api/v1/incidents/{incident_id}/evidence")
    assert r.json()["evidence"][0]["domains"][0]["domain"] == "scary.example"
    entries = store.list_audit(action="evidence.view")
    assert len(entries) == before + 1 and entries[0]["actor"] == "s.patel" and entries[0]["target"] == incident_id


def test_ack_and_clear_publish_commands(api):
    app, store, incident_id, sent, client = api
    teacher = client(app, "teacher")
    assert teacher.post(f"/api/v1/alerts/{incident_id}/ack").status_code == 200
    assert client(app, "dsl").post(f"/api/v1/alerts/{incident_id}/clear").status_code == 200
    assert [(t, p["cmd"], p["by"]) for t, p, _ in sent] == [
        ("classroom/v1/penny-acres/5b/5b-pi-01/cmd", "ack", "m.khan"),
        ("classroom/v1/penny-acres/5b/5b-pi-01/cmd", "clear", "s.patel")]
    for _, payload, qos in sent:
        protocol.validate_cmd(payload)
        assert qos == 1
    assert teacher.post(f"/api/v1/alerts/{protocol.new_id()}/ack").status_code == 404


def test_admin_manages_users(api):
    app, store, _, _, client = api
    admin = client(app, "admin")
    r = admin.post("/api/v1/users", json={"username": "a.jones", "role": "teacher", "password": "x" * 12})
    assert r.status_code == 201
    assert admin.post("/api/v1/users", json={"username": "a.jones", "role": "teacher",
                                             "password": "x" * 12}).status_code == 409
    assert admin.post("/api/v1/users", json={"username": "Bad Name", "role": "teacher",
                                             "password": "x" * 12}).status_code == 400
    assert admin.post("/api/v1/users", json={"username": "b", "role": "king", "password": "x" * 12}).status_code == 400
    assert admin.post("/api/v1/users", json={"username": "b", "role": "teacher", "password": "short"}).status_code == 422
    r = admin.patch("/api/v1/users/a.jones", json={"role": "dsl", "password": "y" * 12})
    assert r.json()["changed"] == ["password", "role"]
    assert store.memberships("a.jones") == {"penny-acres": "dsl"}  # the role is per school now
    audit = store.list_audit(action="user.change")[0]
    assert "y" * 12 not in audit["details"] and "***" in audit["details"]
    assert admin.patch("/api/v1/users/nobody", json={"role": "dsl"}).status_code == 404
    assert {u["username"] for u in admin.get("/api/v1/users").json()} >= set(STAFF.values()) | {"a.jones"}
    assert "password_hash" not in admin.get("/api/v1/users").text


def test_healthz_metrics_openapi(api):
    from fastapi.testclient import TestClient

    app, store, _, _, _ = api
    store.record_status("penny-acres", "5b", "5b-pi-01", {"state": "online", "ts": protocol.now_ts()})
    with TestClient(app) as c:
        assert c.get("/healthz").json()["ok"] is True
        text = c.get("/metrics").text
        assert "classroom_devices_online 1" in text and "classroom_ingest_malformed_total 0" in text
        assert "classroom_store_queue_depth" in text and "# TYPE classroom_ingest_duplicates_total counter" in text
        spec = c.get("/api/v1/openapi.json").json()
        assert "/api/v1/incidents" in spec["paths"] and "/api/v1/enrol" in spec["paths"]


def _snapshot(store):
    tables = ("users", "sessions", "incidents", "incident_actions", "events", "alert_transitions", "devices",
              "enrol_tokens")
    rows = {t: store.query(f"SELECT * FROM {t}") for t in tables}
    rows["sessions"] = len(rows["sessions"])  # logins (made by the fixture) are allowed to differ
    return rows


def test_fuzzed_http_bodies_never_crash_or_change_data(api):
    app, store, incident_id, sent, client = api
    clients = {role: client(app, role) for role in ("dsl", "admin", "technician", "teacher")}
    clients[None] = client(app, None)
    rng = random.Random(99)
    bodies = [b"", b"{", b"null", b"[]", b"123", b'"text"', b"\xff\xfe", b'{"a":' * 200,
              json.dumps({"category": 5}).encode(), json.dumps({"tags": "content"}).encode(),
              json.dumps({"tags": ["cash"]}).encode(), json.dumps({"status": "deleted"}).encode(),
              json.dumps({"room": "1a"}).encode(), json.dumps({"outcome": "x" * 5000}).encode(),
              json.dumps({"item": None}).encode(), json.dumps({"item": "screen-off", "done": "yes"}).encode(),
              json.dumps({"text": ""}).encode(), json.dumps({"username": "x", "role": "admin"}).encode(),
              json.dumps({"username": "Robert'); DROP TABLE users;--", "role": "admin",
                          "password": "x" * 20, "display_name": "x"}).encode(),
              json.dumps({"device": "../../etc/passwd"}).encode(), json.dumps({"device": "5b-pi-01",
                                                                             "hours": -1}).encode(),
              json.dumps({"token": "x" * 5000}).encode(), json.dumps({"token": ["a"]}).encode(),
              json.dumps({"username": ["s.patel"], "password": {"a": 1}}).encode()]
    bodies += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))) for _ in range(10)]
    # Each body goes to each endpoint as a role that passes the role check (so the body is
    # really parsed); the role checks themselves are in test_api_roles.py.
    targets = [("PATCH", f"/api/v1/incidents/{incident_id}", "dsl"),
               ("POST", f"/api/v1/incidents/{incident_id}/notes", "dsl"),
               ("POST", f"/api/v1/incidents/{incident_id}/checklist", "dsl"), ("POST", "/api/v1/users", "admin"),
               ("PATCH", "/api/v1/users/m.khan", "admin"), ("POST", "/api/v1/enrol-tokens", "technician"),
               ("POST", "/api/v1/enrol", None), ("POST", "/api/v1/login", None),
               ("PATCH", "/api/v1/incidents/%00%ff", "dsl"), ("POST", f"/api/v1/alerts/{incident_id}x/ack", "teacher"),
               ("GET", "/api/v1/incidents?limit=-5&since=%00", "dsl"), ("GET", "/api/v1/audit?limit=abc", "admin")]
    before = _snapshot(store)
    for method, url, role in targets:
        for body in bodies:
            r = clients[role].request(method, url, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (method, url, body[:50], role, r.status_code, r.text[:200])
            assert r.status_code not in (401, 403) or url.endswith("/enrol") or url.endswith("/login")
    after = _snapshot(store)
    assert after == before
    assert sent == []

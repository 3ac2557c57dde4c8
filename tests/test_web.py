"""The staff dashboard: login form, role checks on every page, DSL incident pages, live alerts (SSE)."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest

from agent import protocol
from server.web.live import QUEUE_SIZE, Broadcaster
from server.reports.render import TEMPLATES_DIR as REPORT_TEMPLATES_DIR
from server.web.templating import STATIC_DIR, TEMPLATES_DIR
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, STAFF, make_alert, make_event
from services import mqtt_client, wait_until
from web_fixtures import collector, form_client  # noqa: F401

pytestmark = pytest.mark.timeout(60)

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def app(sqlite_store, app_factory):
    return app_factory(sqlite_store, publisher=lambda *a, **k: None)


def browser(app):
    return form_client(app)


def form_login(app, role):
    c = browser(app)
    r = c.post("/login", data={"username": STAFF[role], "password": PASSWORD})
    assert r.status_code == 303, r.text
    return c


# --------------------------------------------------------------------------- login


def test_login_form_sets_a_strict_httponly_cookie_and_goes_home(app, sqlite_store):
    c = browser(app)
    r = c.get("/rooms/5b", headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Frooms%2F5b"
    page = c.get("/login?next=/rooms/5b")
    assert page.status_code == 200 and 'name="viewport"' in page.text and 'value="/rooms/5b"' in page.text
    bad = c.post("/login", data={"username": "m.khan", "password": "nope", "next": "/rooms/5b"})
    assert bad.status_code == 401 and "do not match" in bad.text and "set-cookie" not in bad.headers
    r = c.post("/login", data={"username": "m.khan", "password": PASSWORD, "next": "/rooms/5b"})
    assert r.status_code == 303 and r.headers["location"] == "/rooms/5b"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert c.get("/rooms/5b").status_code == 200
    actions = [a["action"] for a in sqlite_store.list_audit(limit=10)]
    assert "login.failed" in actions and "login" in actions
    # Home by role; a foreign ?next= is ignored.
    assert c.get("/").headers["location"] == "/rooms/5b"
    r = browser(app).post("/login", data={"username": "s.patel", "password": PASSWORD, "next": "//evil.example/x"})
    assert r.headers["location"] == "/incidents"
    assert browser(app).post("/login", data={"username": "tech", "password": PASSWORD}).headers["location"] == "/devices"
    assert browser(app).post("/login", data={"username": "office", "password": PASSWORD}).headers["location"] == "/office"
    # Logout ends the session on the server, not just in the browser.
    assert c.post("/logout").status_code == 303
    assert c.get("/rooms/5b", headers=HTML).status_code == 303


@pytest.mark.parametrize("data", [{}, {"username": "x" * 500, "password": "p"}, {"username": "m.khan"},
                                  {"username": "'; DROP TABLE users; --", "password": "x"}])
def test_malformed_login_posts_are_refused_and_change_nothing(app, sqlite_store, data):
    users = sqlite_store.count("users")
    r = browser(app).post("/login", data=data)
    assert r.status_code in (401, 422) and "set-cookie" not in r.headers
    assert sqlite_store.count("users") == users and sqlite_store.count("sessions") == 0


# --------------------------------------------------------------------------- roles


PAGES = ["/rooms", "/rooms/5b", "/rooms/1a", "/incidents", "/devices", "/rollout", "/rollout/audit",
         "/reports/weekly", "/reports/weekly.csv", "/office", "/deliveries"]
EXPECT = {
    "teacher": {"/rooms": 200, "/rooms/5b": 200, "/rooms/1a": 404, "/incidents": 200},
    "dsl": {"/rooms": 200, "/rooms/5b": 200, "/rooms/1a": 200, "/incidents": 200, "/reports/weekly": 200,
            "/reports/weekly.csv": 200, "/office": 200, "/deliveries": 200},
    "technician": {"/devices": 200, "/rollout": 200, "/rollout/audit": 200, "/reports/weekly": 200,
                   "/reports/weekly.csv": 200},
    "admin": {p: 200 for p in PAGES},
    "office": {"/office": 200},
}


@pytest.mark.parametrize("role", ["teacher", "dsl", "technician", "admin", "office"])
def test_every_page_is_role_checked(app, role):
    c = form_login(app, role)
    for path in PAGES:
        want = EXPECT[role].get(path, 403)
        assert c.get(path).status_code == want, (role, path)
    if role in ("teacher", "technician", "office"):  # refused before any stream starts
        assert c.get("/rooms/1a/events").status_code == {"teacher": 404, "technician": 403, "office": 403}[role]
    if role in ("teacher", "technician"):
        assert c.get("/office/events").status_code == 403
    anon = browser(app)
    for path in PAGES + ["/rooms/5b/events", "/office/events"]:
        assert anon.get(path).status_code == 401, path
        assert anon.get(path, headers=HTML).status_code == 303, path


def test_teacher_sees_own_room_alerts_and_timeline_only(app, sqlite_store):
    a5 = make_alert(room="5b", device="5b-pi-02", seat="Table 2")
    a1 = make_alert(room="1a", device="1a-pi-01", seat=None)
    gone = make_alert(room="5b")
    for a in (a5, a1, gone):
        sqlite_store.record_alert(a)
    sqlite_store.record_alert({**gone, "state": "cleared", "ts": protocol.now_ts()})
    c = form_login(app, "teacher")
    room = c.get("/rooms/5b").text
    assert f'id="alert-{a5["id"]}"' in room and f'id="alert-{gone["id"]}"' not in room
    assert "Table 2" in room and "I'm coming" in room and 'data-room="5b"' in room
    assert 'id="device-5b-pi-01"' in room and 'src="/static/room.js"' in room
    listing = c.get("/incidents").text
    assert a5["id"] in listing and a1["id"] not in listing
    assert c.get(f"/incidents/{a1['id']}").status_code == 404
    detail = c.get(f"/incidents/{a5['id']}").text
    assert "Show evidence" not in detail and "Checklist" not in detail and "Add a note" not in detail
    assert c.post(f"/incidents/{a5['id']}/evidence").status_code == 403
    assert c.post(f"/incidents/{a5['id']}/note", data={"text": "hi"}).status_code == 403


# --------------------------------------------------------------------------- the DSL's pages


def test_dsl_incident_record_and_audited_evidence(app, sqlite_store):
    alert = make_alert()
    sqlite_store.record_alert(alert)
    sqlite_store.insert_events([make_event(type="report_evidence", alert_id=alert["id"], minutes=10, domains=[
        {"domain": "scary.example", "ts": "2026-11-24T09:00:00.000Z", "count": 3}])])
    c = form_login(app, "dsl")
    url = f"/incidents/{alert['id']}"
    page = c.get(url).text
    assert 'id="show-evidence"' in page and "scary.example" not in page  # evidence only on request
    assert not [a for a in sqlite_store.list_audit(limit=50) if a["action"] == "evidence.view"]
    shown = c.post(f"{url}/evidence")
    assert shown.status_code == 200 and "scary.example" in shown.text
    [view] = [a for a in sqlite_store.list_audit(limit=50) if a["action"] == "evidence.view"]
    assert (view["actor"], view["target"]) == ("s.patel", alert["id"])

    bad = c.post(f"{url}/update", data={"category": "not-a-category", "status": "open"})
    assert bad.status_code == 400 and "category: &#39;not-a-category&#39; is not one of" in bad.text
    assert sqlite_store.get_incident(alert["id"])["category"] is None
    r = c.post(f"{url}/update", data={"category": "filtering-breach", "tags": ["content", "contact"],
                                      "status": "in-progress", "outcome": ""})
    assert r.status_code == 303
    inc = sqlite_store.get_incident(alert["id"])
    assert (inc["category"], inc["tags"], inc["status"]) == ("filtering-breach", ["contact", "content"],
                                                             "in-progress")
    assert c.post(f"{url}/tick", data={"item": "report-url", "done": "1"}).status_code == 303
    assert c.post(f"{url}/tick", data={"item": "no-such-item"}).status_code == 400
    assert c.post(f"{url}/note", data={"text": "Spoke to the class teacher."}).status_code == 303
    assert c.post(f"{url}/note", data={"text": "   "}).status_code == 400
    page = c.get(url).text
    assert "Spoke to the class teacher." in page and "✓ Done" in page and "report-url" in page
    assert c.get("/incidents/" + "x" * 100).status_code == 404


def test_device_list_shows_online_offline_dark_and_versions(app, sqlite_store):
    sqlite_store.record_status("penny-acres", "5b", "5b-pi-01", {"state": "online", "ts": protocol.now_ts(),
                                                                 "agent_version": "0.1.0", "config_version": "abc123"})
    sqlite_store.record_status("penny-acres", "5b", "5b-pi-02", {"state": "offline", "ts": protocol.now_ts()})
    sqlite_store.raise_device_alert("dark", "1a-pi-01", "1a", "silent for 6 minutes")
    page = form_login(app, "technician").get("/devices").text
    rows = dict(re.findall(r'<tr id="device-([a-z0-9-]+)">(.*?)</tr>', page, re.S))
    assert len(rows) == 6
    assert 'class="status-online">online' in rows["5b-pi-01"] and "0.1.0" in rows["5b-pi-01"]
    assert "abc123" in rows["5b-pi-01"]
    assert 'class="status-offline">offline' in rows["5b-pi-02"]
    assert 'class="status-dark">dark' in rows["1a-pi-01"]
    assert 'class="status-unknown">unknown' in rows["reception-pi-01"]


def test_pages_are_self_contained_and_phone_friendly():
    texts = [p.read_text() for p in list(TEMPLATES_DIR.glob("*.html")) + list(REPORT_TEMPLATES_DIR.glob("*.html"))
             + list(STATIC_DIR.glob("*"))]
    for text in texts:
        # No CDNs, web fonts or remote scripts anywhere in the dashboard.
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text)
        assert "@import" not in text
    assert 'name="viewport"' in (TEMPLATES_DIR / "base.html").read_text()
    assert "@media (max-width" in (STATIC_DIR / "app.css").read_text()


# --------------------------------------------------------------------------- live alerts


def test_broadcaster_fans_out_across_threads_and_drops_oldest_when_full():
    async def scenario():
        live = Broadcaster()
        mine = live.subscribe(lambda kind, data: data.get("room") == "5b")
        other = live.subscribe(lambda kind, data: data.get("room") == "1a")
        slow = live.subscribe()
        t = threading.Thread(target=lambda: [live.publish("alert", {"room": "5b", "n": i}) for i in range(3)])
        t.start()
        t.join()
        got = [await mine.get(2) for _ in range(3)]
        assert [d["n"] for _, d in got] == [0, 1, 2]
        assert await other.get(0.05) is None
        for i in range(QUEUE_SIZE + 10):
            live.publish("alert", {"room": "9x", "n": i})
        await asyncio.sleep(0.05)
        assert slow.queue.qsize() == QUEUE_SIZE and slow.dropped >= 10
        live.unsubscribe(mine)
        assert live.subscribers == 2
        # A filter that raises does not hurt the publisher.
        live.subscribe(lambda kind, data: 1 / 0)
        assert live.publish("alert", {"room": "5b"}) >= 1

    asyncio.run(scenario())


@pytest.mark.integration
def test_sse_stream_delivers_only_this_rooms_alerts_live(collector):
    import httpx

    live = collector.app.state.live
    token = httpx.post(f"{collector.url}/api/v1/login",
                       json={"username": STAFF["teacher"], "password": PASSWORD}).json()["token"]
    device = mqtt_client(collector.broker)
    events: list[tuple[str, dict]] = []
    ready = threading.Event()

    def read():
        with httpx.stream("GET", f"{collector.url}/rooms/5b/events", timeout=20,
                          headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            ready.set()
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if kind == "alert" and events[-1][1]["room"] == "5b":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(10)
        wait_until(lambda: live.subscribers == 1, timeout=10)
        other = make_alert(room="1a", device="1a-pi-01", seat=None)
        mine = make_alert(room="5b", device="5b-pi-02", seat="Table 2")
        for a in (other, mine):
            device.publish(protocol.topic(protocol.DEFAULT_PREFIX, "penny-acres", a["room"], a["device"], "alert"),
                           protocol.encode(a), qos=1).wait_for_publish(5)
        reader.join(15)
        assert not reader.is_alive()
        alerts = [d for k, d in events if k == "alert"]
        assert [a["id"] for a in alerts] == [mine["id"]]
        assert alerts[0]["state"] == "raised" and alerts[0]["seat"] == "Table 2"
        # The connection is gone: so is its subscription (no leak per closed browser tab).
        wait_until(lambda: live.subscribers == 0, timeout=20)
    finally:
        device.loop_stop()
        device.disconnect()


def test_browsers_get_readable_error_pages_and_the_api_keeps_json(app):
    c = form_login(app, "teacher")
    page = c.get("/devices", headers=HTML)
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert "Not for your role" in page.text and "technician" in page.text
    missing = c.get("/rooms/1a", headers=HTML)
    assert missing.status_code == 404 and "Not found" in missing.text
    api = c.get("/api/v1/config/status", headers=HTML)
    assert api.status_code == 403 and api.headers["content-type"].startswith("application/json")
    assert c.get("/devices").json()["detail"].startswith("this needs the")


@pytest.mark.integration
def test_event_stream_ends_by_itself_with_a_snapshot_so_the_server_can_stop(collector, monkeypatch):
    import httpx

    from server.web.pages import rooms

    monkeypatch.setattr(rooms, "STREAM_SECONDS", 0.5)
    open_alert = make_alert(room="5b")
    collector.store.record_alert(open_alert)
    token = httpx.post(f"{collector.url}/api/v1/login",
                       json={"username": STAFF["teacher"], "password": PASSWORD}).json()["token"]
    with httpx.stream("GET", f"{collector.url}/rooms/5b/events", timeout=10,
                      headers={"Authorization": f"Bearer {token}"}) as r:
        lines = list(r.iter_lines())  # returns only because the server ends the stream
    assert lines[0].startswith("retry: ")
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert data[0]["id"] == open_alert["id"] and data[-1] == {"open": [open_alert["id"]]}
    assert "event: snapshot" in lines
    wait_until(lambda: collector.app.state.live.subscribers == 0, timeout=10)


def test_the_room_page_puts_the_alerts_above_the_class_controls(app):
    """A teacher on a laptop must see a press without scrolling past the controls."""
    page = form_login(app, "teacher").get("/rooms/5b").text
    alerts, asks, controls = page.index('id="alerts-h"'), page.index('id="asks"'), page.index('id="controls-h"')
    assert alerts < asks < controls

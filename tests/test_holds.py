"""The DSL's hold on an incident's device, collector side (issue 15 item 7).

* Retention keeps every record of the held device from 24 hours before the press until the
  hold is lifted, and only then purges what its periods say (SQLite and PostgreSQL).
* The API and the DSL's page place and lift a hold: the device is sent ``hold`` /
  ``release`` (valid commands), the incident's record and the audit log say who and when
  (the audit log never the DSL's reason), a second hold on one incident is refused.
* A device coming online is sent its holds again (and recent releases), so a command it
  missed while off is not lost.
(The device side, with the real agent, is tests/test_hold_agent.py.)
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from server.retention import Retention
from server.store import iso
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, STAFF, make_alert, make_event, topic_of
from web_fixtures import form_client

pytestmark = pytest.mark.timeout(60)

PRESS = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
LATER = PRESS + timedelta(days=400)   # every period but the audit log's has run out


def at(moment: datetime) -> str:
    return protocol.now_ts(moment)


def _incident(store, device="5b-pi-01", room="5b", closed=True):
    alert = make_alert(room=room, device=device, ts=at(PRESS))
    store.record_alert(alert)
    if closed:
        store.update_incident(alert["id"], "s.patel", {"status": "closed"})
        store.execute("UPDATE incidents SET closed_at = ? WHERE id = ?", (at(PRESS + timedelta(days=1)), alert["id"]))
    return store.get_incident(alert["id"])


class _Tree:
    """The example tree, with closed incidents purged after a year."""

    def __init__(self, tree):
        self.site = tree.site.model_copy(update={"retention": tree.site.retention.model_copy(
            update={"incidents_days": 365})})


def test_a_held_devices_records_from_24h_before_the_press_are_kept_until_the_hold_is_lifted(store, tree):
    incident = _incident(store)
    hold = store.place_hold(incident, "s.patel", "police advice sought", now=at(PRESS + timedelta(hours=2)))
    assert hold["held_from"] == iso(PRESS - timedelta(hours=24))
    before = make_event(type="login", ts=at(PRESS - timedelta(hours=30)))           # before the window
    inside = make_event(ts=at(PRESS - timedelta(hours=23)))                           # blocked, in the window
    after = make_event(type="lock", ts=at(PRESS + timedelta(days=3)))                # while held
    other = make_event(device="5b-pi-02", ts=at(PRESS - timedelta(hours=1)))         # another device
    store.insert_events([before, inside, after, other])
    beat = protocol.parse_topic(topic_of("5b", "5b-pi-01", "heartbeat"))
    other_beat = protocol.parse_topic(topic_of("5b", "5b-pi-02", "heartbeat"))
    store.ingest([(beat, {"ts": at(PRESS - timedelta(hours=1))}), (beat, {"ts": at(PRESS - timedelta(days=2))}),
                  (other_beat, {"ts": at(PRESS - timedelta(hours=1))})])

    tree = _Tree(tree)
    done = Retention(store, lambda: tree).run(LATER)
    kept = {e["id"] for e in store.events(limit=100)}
    assert kept == {inside["id"], after["id"]}
    assert store.query("SELECT ts FROM heartbeats WHERE device = ?", ("5b-pi-01",)) == \
        [{"ts": at(PRESS - timedelta(hours=1))}]
    assert store.count("heartbeats", "device = ?", ("5b-pi-02",)) == 0
    assert store.get_incident(incident["id"]) is not None       # closed long ago, but held
    assert store.count("alert_transitions", "alert_id = ?", (incident["id"],)) == 1
    assert done["events"] >= 1 and done["blocked_events"] == 1

    lifted = store.lift_hold("penny-acres", hold["id"], "s.patel", "police: no further action")
    assert lifted["lifted_by"] == "s.patel" and store.lift_hold("penny-acres", hold["id"], "x", "y") is None
    Retention(store, lambda: tree).run(LATER)
    assert store.events(limit=100) == [] and store.count("heartbeats") == 0
    assert store.get_incident(incident["id"]) is None            # now its own period applies
    assert [h["id"] for h in store.list_holds("penny-acres")] == [hold["id"]]   # the record of the hold stays
    assert store.list_holds("another-school") == []


def test_holds_are_per_site(store):
    incident = _incident(store, closed=False)
    hold = store.place_hold(incident, "s.patel", "why")
    assert store.get_hold("penny-acres", hold["id"])["device"] == "5b-pi-01"
    assert store.get_hold("other", hold["id"]) is None
    assert store.lift_hold("other", hold["id"], "x", "y") is None
    assert store.list_holds("penny-acres", active=True)[0]["id"] == hold["id"]


# --------------------------------------------------------------------------- API and page


class Sent:
    """The collector's broker publisher, recording."""

    def __init__(self):
        self.messages: list[tuple[str, dict]] = []

    def __call__(self, topic, payload, qos, retain=False):
        self.messages.append((topic, json.loads(payload)))

    def cmds(self):
        return [protocol.validate_cmd(p) for _, p in self.messages]


@pytest.fixture
def world(sqlite_store, app_factory):
    sent = Sent()
    app = app_factory(sqlite_store, publisher=sent)
    return app, sqlite_store, sent


def test_the_dsl_places_and_lifts_a_hold_over_the_api(world, staff_client):
    app, store, sent = world
    incident = _incident(store, closed=False)
    dsl = staff_client(app, "dsl")
    r = dsl.post(f"/api/v1/incidents/{incident['id']}/hold", json={"reason": "police advice sought, ref 42"})
    assert r.status_code == 201 and r.json()["sent"] is True
    hold = r.json()["hold"]
    [(topic, _)] = sent.messages
    assert topic == topic_of("5b", "5b-pi-01", "cmd")
    assert sent.cmds() == [{"cmd": "hold", "by": "s.patel", "hold_id": hold["id"], "incident": incident["id"]}]
    again = dsl.post(f"/api/v1/incidents/{incident['id']}/hold", json={"reason": "again"})
    assert again.status_code == 409 and "already on hold" in again.json()["detail"]
    assert dsl.post(f"/api/v1/incidents/{incident['id']}/hold", json={"reason": ""}).status_code == 422
    assert [h["id"] for h in dsl.get("/api/v1/holds?active=true").json()] == [hold["id"]]
    assert dsl.get(f"/api/v1/incidents/{incident['id']}/holds").json()[0]["reason"] == "police advice sought, ref 42"

    # Only the DSL: a teacher of the room cannot lift it (nor see it).
    teacher = staff_client(app, "teacher")
    assert teacher.post(f"/api/v1/holds/{hold['id']}/lift", json={"reason": "x"}).status_code == 403
    assert dsl.post("/api/v1/holds/not-a-hold/lift", json={"reason": "x"}).status_code == 404
    r = dsl.post(f"/api/v1/holds/{hold['id']}/lift", json={"reason": "police: no further action"})
    assert r.status_code == 200 and r.json()["hold"]["lifted_by"] == "s.patel"
    assert sent.cmds()[-1] == {"cmd": "release", "by": "s.patel", "hold_id": hold["id"]}
    assert dsl.post(f"/api/v1/holds/{hold['id']}/lift", json={"reason": "x"}).status_code == 404

    audit = [a for a in store.list_audit(limit=50) if a["action"].startswith("hold.")]
    assert [(a["action"], a["actor"], a["target"]) for a in sorted(audit, key=lambda a: a["ts"])] == [
        ("hold.place", "s.patel", incident["id"]), ("hold.lift", "s.patel", incident["id"])]
    assert all("police" not in (a["details"] or "") for a in audit)  # admins read it: never the reason
    actions = [(a["kind"], a["actor"], a["text"]) for a in store.get_incident(incident["id"])["actions"]]
    assert ("hold", "s.patel", "police advice sought, ref 42") in actions
    assert ("hold_lifted", "s.patel", "police: no further action") in actions


def test_without_a_broker_the_hold_is_recorded_and_sent_when_the_device_comes_online(sqlite_store, app_factory,
                                                                                     staff_client):
    def down(topic, payload, qos, retain=False):
        raise RuntimeError("not connected to the broker")

    app = app_factory(sqlite_store, publisher=down)
    incident = _incident(sqlite_store, closed=False)
    r = staff_client(app, "dsl").post(f"/api/v1/incidents/{incident['id']}/hold", json={"reason": "quarantine"})
    assert r.status_code == 201 and r.json()["sent"] is False
    hold = r.json()["hold"]

    sent = Sent()
    app.state.publisher = sent  # the broker is back
    online = protocol.parse_topic(topic_of("5b", "5b-pi-01", "status"))
    for listener in app.state.listeners:
        listener("status", online, {"state": "online", "ts": protocol.now_ts()})
    assert sent.cmds() == [{"cmd": "hold", "by": "s.patel", "hold_id": hold["id"], "incident": incident["id"]}]
    # Offline and other devices' statuses send nothing.
    app.state.holds.listener("status", online, {"state": "offline", "ts": protocol.now_ts()})
    app.state.holds.listener("status", protocol.parse_topic(topic_of("5b", "5b-pi-02", "status")),
                             {"state": "online", "ts": protocol.now_ts()})
    assert len(sent.messages) == 1
    # Lifted while the device was off: its next online brings the release.
    app.state.holds.lift("penny-acres", hold["id"], "s.patel", "done")
    sent.messages.clear()
    app.state.holds.listener("status", online, {"state": "online", "ts": protocol.now_ts()})
    assert sent.cmds() == [{"cmd": "release", "by": "s.patel", "hold_id": hold["id"]}]


def _login(app, role):
    c = form_client(app)
    assert c.post("/login", data={"username": STAFF[role], "password": PASSWORD}).status_code == 303
    return c


def test_the_hold_page_is_the_dsls(world):
    app, store, sent = world
    incident = _incident(store, closed=False)
    url = f"/incidents/{incident['id']}/hold"
    for role in ("teacher", "technician", "admin", "office"):
        c = _login(app, role)
        assert c.get(url).status_code in (403, 404), role
        assert c.post(url, data={"reason": "x"}).status_code in (403, 404), role
        assert c.get("/holds").status_code == 403, role
    dsl = _login(app, "dsl")
    assert 'href="/incidents/%s/hold"' % incident["id"] in dsl.get(f"/incidents/{incident['id']}").text
    page = dsl.get(url).text
    assert 'id="hold-place"' in page and "24 hours before the press" in page
    assert dsl.post(url, data={"reason": "  "}).status_code == 400
    r = dsl.post(url, data={"reason": "Police advice sought"})
    assert r.status_code == 303 and r.headers["location"] == f"{url}?sent=yes"
    page = dsl.get(r.headers["location"]).text
    assert "is on hold" in page and 'id="hold-lift"' in page and "Police advice sought" in page
    assert sent.cmds()[-1]["cmd"] == "hold"
    [hold] = store.list_holds("penny-acres", active=True)
    assert hold["placed_by"] == "s.patel" and "5b-pi-01" in dsl.get("/holds").text
    r = dsl.post(f"/holds/{hold['id']}/lift", data={"reason": "No further action"})
    assert r.status_code == 303
    assert 'id="hold-place"' in dsl.get(url).text and sent.cmds()[-1]["cmd"] == "release"
    assert store.list_holds("penny-acres", active=True) == []

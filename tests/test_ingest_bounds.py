"""What one device's credentials cannot do through ingest (issue 14, items 13 and 17), against
the real secured broker (tests/broker_fixtures.py: the password file and ACL broker-config
generates) and the collector's real ingest.

* change another device's incident by reusing its alert id (its state, or the evidence the
  DSL is shown), from the same room or another one;
* push a timestamp past the collector's clock or out of the stored order (retention purges
  and the weekly report compare stored times as text).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.protocol import encode, new_id, now_ts
from broker_fixtures import SITE, alert_payload, secure_broker, t  # noqa: F401
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, STAFF
from services import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def ingest(secure_broker, sqlite_store):
    from server.ingest import Ingest

    worker = Ingest(sqlite_store, f"mqtt://127.0.0.1:{secure_broker.broker.port}", username="classroom-server",
                    password=secure_broker.passwords["classroom-server"], client_id="classroom-server")
    worker.start()
    assert worker.subscribed.wait(10), "ingest did not subscribe"
    yield worker
    worker.stop()


def evidence_payload(room: str, device: str, alert_id: str, domain: str) -> bytes:
    return encode({"id": new_id(), "type": "report_evidence", "ts": now_ts(), "site": SITE, "room": room,
                   "device": device, "alert_id": alert_id, "minutes": 10,
                   "domains": [{"domain": domain, "ts": now_ts(), "count": 1}]})


def marker(sb, client, room: str, device: str, store) -> None:
    """Publish an event after everything else from *client* and wait until it is stored: the
    broker keeps one client's QoS 1 messages in order, so what came before has been handled."""
    event_id = new_id()
    sb.publish(client, t(room, device, "event"), encode({
        "id": event_id, "type": "login", "ts": now_ts(), "site": SITE, "room": room, "device": device,
        "user": "pupil"}))
    wait_until(lambda: store.get_event(event_id), timeout=15, message=f"marker from {device} not stored")


def test_a_device_cannot_change_another_devices_incident_or_evidence(secure_broker, ingest, sqlite_store,
                                                                     app_factory, staff_client):
    sb, store = secure_broker, sqlite_store
    victim = sb.connect("5b-pi-01")
    same_room = sb.connect("5b-pi-02")
    other_room = sb.connect("1a-pi-01")
    alert_id = new_id()
    sb.publish(victim, t("5b", "5b-pi-01", "alert"), alert_payload("5b", "5b-pi-01", "raised", alert_id))
    sb.publish(victim, t("5b", "5b-pi-01", "event"), evidence_payload("5b", "5b-pi-01", alert_id, "real.example"))
    marker(sb, victim, "5b", "5b-pi-01", store)
    assert store.get_incident(alert_id)["alert_state"] == "raised"

    # The attack: each device publishes on its OWN topics (the ACL allows nothing else), with
    # the victim's alert id: "cleared" (un-blanks nothing, but closes the teacher's alert),
    # "acknowledged", "escalated", and evidence the DSL would read as the pupil's.
    for client, room, device, state in ((same_room, "5b", "5b-pi-02", "cleared"),
                                        (same_room, "5b", "5b-pi-02", "acknowledged"),
                                        (other_room, "1a", "1a-pi-01", "escalated")):
        sb.publish(client, t(room, device, "alert"), alert_payload(room, device, state, alert_id, by="x"))
        sb.publish(client, t(room, device, "event"), evidence_payload(room, device, alert_id, f"planted-{device}.example"))
    marker(sb, same_room, "5b", "5b-pi-02", store)
    marker(sb, other_room, "1a", "1a-pi-01", store)
    assert ingest.flush(15)

    incident = store.get_incident(alert_id)
    assert (incident["room"], incident["device"], incident["alert_state"]) == ("5b", "5b-pi-01", "raised")
    assert [step["state"] for step in incident["timeline"]] == ["raised"]
    assert store.count("alert_transitions", "alert_id = ?", (alert_id,)) == 1
    assert [d["domain"] for e in store.evidence(alert_id) for d in e["domains"]] == ["real.example"]
    assert store.count("events", "type = 'report_evidence' AND alert_id = ?", (alert_id,)) == 1
    # 3 evidence events and 3 transitions, each transition perhaps twice (ingest hears alerts
    # on the shared subscription and on the live one).
    assert ingest.metrics.get("ingest_refused_total") >= 6

    # What the DSL and the teacher are shown.
    app = app_factory(store)
    dsl, teacher = staff_client(app, "dsl"), staff_client(app, "teacher")
    shown = dsl.get(f"/api/v1/incidents/{alert_id}/evidence").json()
    assert [d["domain"] for e in shown["evidence"] for d in e["domains"]] == ["real.example"]
    assert [s["state"] for s in teacher.get(f"/api/v1/incidents/{alert_id}").json()["timeline"]] == ["raised"]

    # The device that raised it still moves it on.
    sb.publish(victim, t("5b", "5b-pi-01", "alert"), alert_payload("5b", "5b-pi-01", "cleared", alert_id,
                                                                   by=STAFF["teacher"]))
    wait_until(lambda: store.get_incident(alert_id)["alert_state"] == "cleared", timeout=15,
               message="the victim's own transition was not stored")


def test_evidence_from_another_device_is_never_shown_even_if_it_came_first(sqlite_store):
    """Read side: evidence stored before its incident existed (out-of-order delivery) is shown
    only if it came from the incident's own device."""
    from server_fixtures import make_alert, make_event

    store = sqlite_store
    alert = make_alert()
    store.insert_events([make_event(type="report_evidence", device="5b-pi-02", alert_id=alert["id"], minutes=5,
                                    domains=[{"domain": "planted.example", "ts": now_ts(), "count": 1}]),
                         make_event(type="report_evidence", alert_id=alert["id"], minutes=5,
                                    domains=[{"domain": "real.example", "ts": now_ts(), "count": 1}])])
    store.record_alert(alert)
    assert [d["domain"] for e in store.evidence(alert["id"]) for d in e["domains"]] == ["real.example"]


# --------------------------------------------------------------------------- item 17: times


def _event(room, device, ts, **fields) -> dict:
    event = {"id": new_id(), "type": "blocked", "ts": ts, "site": SITE, "room": room, "device": device,
             "domain": "games.example.com", "profile": "ks2", "user": "pupil5b"}
    event.update(fields)
    return event


def test_times_past_the_collectors_clock_are_refused_except_for_alerts(secure_broker, ingest, sqlite_store, caplog):
    sb, store = secure_broker, sqlite_store
    device = sb.connect("5b-pi-02")
    now = datetime.now(timezone.utc)
    ahead = now_ts(now + timedelta(days=2))
    future_event = _event("5b", "5b-pi-02", ahead)
    soon_event = _event("5b", "5b-pi-02", now_ts(now + timedelta(hours=20)))  # a fast clock: kept
    alert_id = new_id()
    with caplog.at_level("WARNING", logger="server.ingest"):
        sb.publish(device, t("5b", "5b-pi-02", "event"), encode(future_event))
        sb.publish(device, t("5b", "5b-pi-02", "event"), encode(soon_event))
        sb.publish(device, t("5b", "5b-pi-02", "heartbeat"),
                   encode({"ts": ahead, "cpu": 1.0, "mem": 2.0, "temp": 40.0, "uptime": 5, "user": "pupil"}), qos=0)
        sb.publish(device, t("5b", "5b-pi-02", "status"),
                   encode({"state": "online", "ts": ahead, "agent_version": "0.1.0", "config_version": "abc"}))
        sb.publish(device, t("5b", "5b-pi-02", "alert"), encode({
            "id": alert_id, "state": "raised", "site": SITE, "room": "5b", "device": "5b-pi-02", "seat": "Table 2",
            "ts": "2099-12-31T23:59:59.999Z"}))
        marker(sb, device, "5b", "5b-pi-02", store)
        assert ingest.flush(15)

    assert store.get_event(future_event["id"]) is None
    assert store.get_event(soon_event["id"]) is not None
    assert store.count("heartbeats", "device = ?", ("5b-pi-02",)) == 0
    assert (store.get_device("5b-pi-02") or {}).get("status_ts") != ahead
    # The alert is kept, at the time the collector received it (it is not pinned to the top
    # of every list until 2099, and its later transitions still order after it).
    incident = store.get_incident(alert_id)
    assert incident is not None and incident["alert_state"] == "raised"
    assert now_ts(now - timedelta(minutes=1)) <= incident["raised_at"] <= now_ts(datetime.now(timezone.utc))
    lines = [r.getMessage() for r in caplog.records]
    # event, heartbeat, status (a status may come twice: ingest also subscribes to status plainly)
    refused = sum("more than 1 day ahead" in line for line in lines)
    assert refused >= 3 and ingest.metrics.get("ingest_malformed_total") == refused, lines
    assert any(alert_id in line and "received time" in line for line in lines), lines


def test_any_spelling_of_a_time_is_stored_in_one_form_so_reports_and_retention_find_it(secure_broker, ingest,
                                                                                        sqlite_store, tree):
    """ISO 8601 spells one moment many ways; the store compares times as text.  A blocked
    attempt sent as ``2026-W01-1T...`` or ``20260105T...`` must land in its own week's report
    and be purged when its time is up, like any other; so must one from the far past."""
    from server import reports
    from server.retention import Retention

    sb, store = secure_broker, sqlite_store
    device = sb.connect("5b-pi-01")
    now = datetime.now(timezone.utc)
    old = now - timedelta(days=tree.site.retention.blocked_days + 10)
    year, week, weekday = old.isocalendar()
    spellings = {
        "week date": f"{year}-W{week:02d}-{weekday}T{old:%H:%M:%S}Z",
        "basic": f"{old:%Y%m%dT%H%M%S}Z",
        "offset": (old.astimezone(timezone(timedelta(hours=5)))).isoformat(),
        "far past": "2000-01-03T00:00:00Z",
    }
    recent_week = now - timedelta(days=3)
    y, w, d = recent_week.isocalendar()
    events = {name: _event("5b", "5b-pi-01", ts, domain=f"{name.replace(' ', '-')}.example")
              for name, ts in spellings.items()}
    events["this week"] = _event("5b", "5b-pi-01", f"{y}-W{w:02d}-{d}T{recent_week:%H:%M:%S}Z",
                                 domain="this-week.example")
    for event in events.values():
        sb.publish(device, t("5b", "5b-pi-01", "event"), encode(event))
    marker(sb, device, "5b", "5b-pi-01", store)
    assert ingest.flush(15)

    stored = {name: store.get_event(e["id"]) for name, e in events.items()}
    assert all(stored.values()), stored
    # The weekly report of the week the attempt was made in lists it.
    week = reports.Week.containing(recent_week, tree.site.timezone)
    report = reports.collect(store, week, SITE)
    assert "this-week.example" in {b["domain"] for b in report.blocked}
    # Retention purges every old one at its next pass, however it was spelled.
    Retention(store, lambda: tree).run(now)
    assert {name for name, e in events.items() if store.get_event(e["id"])} == {"this week"}
    # Because every stored time has the one form (and the payload as sent is kept beside it).
    row = store.get_event(events["this week"]["id"])
    assert row["ts"].endswith("Z") and len(row["ts"]) == 24 and row["ts"][10] == "T", row["ts"]
    assert row["data"]["ts"] == events["this week"]["ts"]


def test_a_press_from_a_device_whose_clock_is_behind_still_shows_on_the_teachers_page(sqlite_store, app_factory):
    """Alerts are never refused for a wrong clock; the room page lists open alerts by when the
    collector received them, so a Pi that booted without the network is still heard."""
    from server_fixtures import make_alert
    from web_fixtures import form_client

    alert = make_alert(ts="2001-01-01T00:00:00.000Z")
    sqlite_store.record_alert(alert)
    app = app_factory(sqlite_store)
    teacher = form_client(app)
    assert teacher.post("/login", data={"username": STAFF["teacher"], "password": PASSWORD}).status_code == 303
    assert f'id="alert-{alert["id"]}"' in teacher.get("/rooms/5b").text

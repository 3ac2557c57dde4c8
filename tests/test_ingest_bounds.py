"""What one device's credentials cannot do through ingest (issue 14, items 13 and 17), against
the real secured broker (tests/broker_fixtures.py: the password file and ACL broker-config
generates) and the collector's real ingest.

* change another device's incident by reusing its alert id (its state, or the evidence the
  DSL is shown), from the same room or another one;
* push a timestamp past the collector's clock or out of the stored order (retention purges
  and the weekly report compare stored times as text).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent.protocol import encode, new_id, now_ts
from broker_fixtures import SITE, alert_payload, secure_broker, t  # noqa: F401
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import STAFF
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
    # (each alert reaches ingest twice: the shared subscription and the live one)
    assert store.stats.get("alerts_refused", 0) >= 3 and store.stats.get("evidence_refused") == 3

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

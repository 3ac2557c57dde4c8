"""Retention: each table's time to live from site.retention, purges audited, open incidents kept."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from server.retention import Retention
from server.store import iso

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_alert, make_event, topic_of

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def ts(days_ago: float) -> str:
    return protocol.now_ts(NOW - timedelta(days=days_ago))


class _Tree:
    """The example tree with a chosen retention block."""

    def __init__(self, tree, **retention):
        self.site = tree.site.model_copy(update={"retention": tree.site.retention.model_copy(update=retention)})


def test_retention_purges_by_table_and_audits(store, tree):
    r = tree.site.retention  # heartbeats 14, blocked 90, events 365, audit 2555, incidents until deleted
    old_blocked, new_blocked = make_event(ts=ts(r.blocked_days + 1)), make_event(ts=ts(r.blocked_days - 1))
    old_login = make_event(type="login", ts=ts(r.events_days + 1))
    mid_login = make_event(type="login", ts=ts(r.blocked_days + 1))  # older than blocked_days, kept
    alert = make_alert(ts=ts(4000))
    store.record_alert(alert)
    evidence = make_event(type="report_evidence", alert_id=alert["id"], domains=[], ts=ts(4000))
    store.insert_events([old_blocked, new_blocked, old_login, mid_login, evidence])
    where = protocol.parse_topic(topic_of("5b", "5b-pi-01", "heartbeat"))
    store.ingest([(where, {"ts": ts(r.heartbeats_days + 1)}), (where, {"ts": ts(1)})])
    store.execute("INSERT INTO audit (id, ts, actor, action) VALUES ('old', ?, 'x', 'y')", (ts(r.audit_days + 1),))

    done = Retention(store, lambda: tree).run(NOW)
    assert done == {"heartbeats": 1, "blocked_events": 1, "events": 1, "audit": 1}
    remaining = {e["id"] for e in store.events(limit=100)}
    assert remaining == {new_blocked["id"], mid_login["id"], evidence["id"]}  # evidence lives with its incident
    assert store.count("heartbeats") == 1
    assert store.get_incident(alert["id"]) is not None  # incidents: until the DSL deletes them
    purges = {e["target"]: e for e in store.list_audit(action="retention.purge")}
    assert set(purges) == {"heartbeats", "blocked_events", "events", "audit"}
    assert purges["heartbeats"]["actor"] == "system" and '"rows": 1' in purges["heartbeats"]["details"]
    assert Retention(store, lambda: tree).run(NOW) == {}  # nothing left to purge, nothing audited


def test_closed_incidents_purged_with_their_records_when_configured(store, tree):
    old_closed, old_open = make_alert(ts=ts(800)), make_alert(ts=ts(800))
    for alert in (old_closed, old_open):
        store.record_alert(alert)
        store.insert_events([make_event(type="report_evidence", alert_id=alert["id"], domains=[], ts=ts(800))])
    store.update_incident(old_closed["id"], "s.patel", {"status": "closed"})
    store.add_incident_action(old_closed["id"], "s.patel", "note", text="done")
    store.execute("UPDATE incidents SET closed_at = ? WHERE id = ?", (iso(NOW - timedelta(days=400)),
                                                                      old_closed["id"]))
    done = Retention(store, lambda: _Tree(tree, incidents_days=365)).run(NOW)
    assert done.get("incidents") == 1
    assert store.get_incident(old_closed["id"]) is None and store.get_incident(old_open["id"]) is not None
    assert store.evidence(old_closed["id"]) == [] and len(store.evidence(old_open["id"])) == 1
    assert store.count("incident_actions", "incident_id = ?", (old_closed["id"],)) == 0
    assert store.count("alert_transitions", "alert_id = ?", (old_closed["id"],)) == 0


def test_check_log_and_override_records_follow_the_audit_period(store, tree):
    """The DfE check log and filter-policy changes outlive ordinary events (audit_days)."""
    r = tree.site.retention
    check = make_event(type="filter_check", ts=ts(r.events_days + 10))
    override = make_event(type="override_opened", ts=ts(r.events_days + 10))
    ancient = make_event(type="override_closed", ts=ts(r.audit_days + 1))
    store.insert_events([check, override, ancient])
    done = Retention(store, lambda: tree).run(NOW)
    assert done == {"audit_events": 1}
    assert {e["id"] for e in store.events(limit=100)} == {check["id"], override["id"]}


@pytest.mark.integration
def test_a_large_purge_goes_in_batches_and_ingest_keeps_storing_meanwhile(store, tree, mosquitto):
    """A year's purge must not stop ingest: the purge deletes PURGE_BATCH rows per transaction,
    and an event published while it runs (between two of its batches) is stored before the
    purge goes on.  Were the purge one transaction (or holding the writer), this would hang."""
    from server.ingest import Ingest
    from services import close_client, mqtt_client, wait_until

    old = [make_event(ts=ts(100 + i % 200), domain=f"d{i}.example") for i in range(3000)]
    store.insert_events(old)
    store.purge_batch = 500
    ingest = Ingest(store, f"mqtt://{mosquitto.host}:{mosquitto.port}").start()
    assert ingest.subscribed.wait(10)
    device = mqtt_client(mosquitto)
    arrived, batches = [], []
    real_execute = store.execute

    def execute(sql, params=()):
        deleted = real_execute(sql, params)
        if sql.startswith("DELETE FROM events"):
            batches.append(deleted)
            if len(batches) in (1, 3):  # the purge is under way, more batches to come
                event = make_event(domain=f"during-purge-{len(batches)}.example")
                device.publish(topic_of("5b", "5b-pi-01", "event"), protocol.encode(event), qos=1)
                wait_until(lambda: store.get_event(event["id"]) is not None, 15)
                arrived.append(event)
        return deleted

    store.execute = execute
    try:
        done = Retention(store, lambda: tree).run(NOW)
    finally:
        store.execute = real_execute
        close_client(device)
        ingest.stop()
    assert done["blocked_events"] == len(old)
    assert batches[:6] == [500] * 6 and sum(batches) == len(old)  # six full batches, then a short one
    assert len(arrived) == 2 and all(store.get_event(e["id"]) is not None for e in arrived)
    assert store.count("events", "type = 'blocked'") == 2  # only the two that came during the purge

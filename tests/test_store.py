"""The store's public API, run against SQLite AND PostgreSQL (the ``store`` fixture is parametrized)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from server.store import Store, StoreError, iso
from server.store.schema import SCHEMA, split_sql

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_alert, make_event, make_heartbeat, make_status, topic_of

pytestmark = pytest.mark.timeout(60)


def items(*pairs):
    """(topic text, payload) -> validated (Topic, dict) like ingest makes."""
    return [protocol.parse_message(t, protocol.encode(p)) for t, p in pairs]


def test_schema_is_idempotent_and_versioned(store):
    assert store.schema_version >= 1
    store.migrate()  # a restart runs it again
    store.migrate()
    assert store.count("schema_version") == store.schema_version
    assert len(split_sql(SCHEMA)) > 10


def test_open_refuses_unknown_urls():
    with pytest.raises(StoreError, match="sqlite:///PATH"):
        Store.open("mysql://x")
    with pytest.raises(StoreError, match="file path"):
        Store.open("sqlite:///:memory:")


def test_insert_events_deduplicates_by_id(store):
    a, b = make_event(), make_event(type="login", user="pupil")
    assert store.insert_events([a, b, a]) == 2
    assert store.insert_events([a]) == 0  # resent after an agent crash
    assert store.count("events") == 2
    assert store.stats["events_duplicate"] == 2
    row = store.get_event(a["id"])
    assert row["domain"] == "games.example.com" and row["user_name"] == "pupil5b" and row["data"] == a


def test_large_batch_deduplicates_on_both_backends(store):
    # > COPY_THRESHOLD rows takes PostgreSQL's COPY path; duplicates inside the batch too.
    events = [make_event(device=f"5b-pi-0{i % 2 + 1}") for i in range(600)]
    assert store.insert_events(events + events[:50]) == 600
    assert store.insert_events(events) == 0
    assert store.count("events") == 600
    assert {d["id"] for d in store.list_devices()} == {"5b-pi-01", "5b-pi-02"}


def test_ingest_builds_incident_timeline(store):
    alert_id = protocol.new_id()
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
    raised = make_alert(alert_id, "raised", ts=protocol.now_ts(t0))
    acked = make_alert(alert_id, "acknowledged", ts=protocol.now_ts(t0 + timedelta(seconds=20)), by="m.khan")
    cleared = make_alert(alert_id, "cleared", ts=protocol.now_ts(t0 + timedelta(seconds=90)), by="m.khan")
    where = topic_of("5b", "5b-pi-01", "alert")
    # Out of order and duplicated, as resends after a reconnect can be.
    result = store.ingest(items((where, acked), (where, raised)))
    assert len(result["alerts"]) == 2
    result = store.ingest(items((where, cleared), (where, raised)))
    assert len(result["alerts"]) == 1 and result["alert_duplicates"] == 1
    incident = store.get_incident(alert_id)
    assert incident["alert_state"] == "cleared"
    assert incident["raised_at"] == raised["ts"]
    assert [(t["state"], t["by"]) for t in incident["timeline"]] == [
        ("raised", None), ("acknowledged", "m.khan"), ("cleared", "m.khan")]
    listed = store.list_incidents(rooms=["5b"])
    assert [i["id"] for i in listed] == [alert_id] and len(listed[0]["timeline"]) == 3
    assert store.list_incidents(rooms=["1a"]) == []
    assert store.list_incidents(rooms=[]) == []


def test_status_newest_wins_and_heartbeats(store):
    where = topic_of("5b", "5b-pi-01", "status")
    now = datetime.now(timezone.utc)
    online = make_status("online", ts=protocol.now_ts(now))
    stale_offline = make_status("offline", ts=protocol.now_ts(now - timedelta(minutes=5)))
    store.ingest(items((where, online)))
    store.ingest(items((where, stale_offline)))  # a replayed retained Last Will
    assert store.get_device("5b-pi-01")["status"] == "online"
    beat_topic = topic_of("5b", "5b-pi-01", "heartbeat")
    hb = make_heartbeat()
    result = store.ingest(items((beat_topic, hb), (beat_topic, hb)))
    assert result["heartbeats"] == 2
    assert store.count("heartbeats") == 1
    device = store.list_devices()[0]
    assert device["last_heartbeat"]["cpu"] == 3.5 and device["last_seen"]
    # An older agent's heartbeat still names the user: health only is kept (issue 15 item 2).
    assert hb["user"] == "pupil" and "user" not in device["last_heartbeat"]
    assert store.query("SELECT user_name FROM heartbeats") == [{"user_name": None}]


def test_evidence_is_domains_only(store):
    alert_id = protocol.new_id()
    store.ingest(items((topic_of("5b", "5b-pi-01", "alert"), make_alert(alert_id))))
    ev = make_event(type="report_evidence", alert_id=alert_id, minutes=10,
                    domains=[{"domain": "bad.example", "ts": protocol.now_ts(), "count": 3, "extra": "x"}])
    store.insert_events([ev])
    evidence = store.evidence(alert_id)
    assert evidence[0]["domains"] == [{"domain": "bad.example", "ts": ev["domains"][0]["ts"], "count": 3}]


def test_incident_updates_and_actions(store):
    alert_id = protocol.new_id()
    store.record_alert(make_alert(alert_id))
    assert store.update_incident("nope", "s.patel", {"status": "closed"}) is None
    updated = store.update_incident(alert_id, "s.patel", {"category": "filtering-breach", "tags": ["content"],
                                                          "status": "closed"})
    assert updated["category"] == "filtering-breach" and updated["tags"] == ["content"]
    assert updated["closed_at"] is not None
    assert sorted(a["item"] for a in updated["actions"]) == ["category", "status", "tags"]
    assert store.add_incident_action(alert_id, "s.patel", "note", text="spoke to parents")["actor"] == "s.patel"
    assert store.add_incident_action("nope", "s.patel", "note", text="x") is None
    with pytest.raises(StoreError):
        store.update_incident(alert_id, "s.patel", {"room": "1a"})
    assert store.get_incident(alert_id)["room"] == "5b"


def test_users_sessions_tokens_audit(store):
    store.add_user("s.patel", "dsl", "hash")
    with pytest.raises(Exception):
        store.add_user("s.patel", "dsl", "hash")  # unique; the writer keeps working afterwards
    assert store.get_user("s.patel")["role"] == "dsl"
    future = iso(datetime.now(timezone.utc) + timedelta(hours=1))
    past = iso(datetime.now(timezone.utc) - timedelta(hours=1))
    store.add_session("h1", "s.patel", future)
    store.add_session("h2", "s.patel", past)
    assert store.get_session("h1")["role"] == "dsl"
    assert store.get_session("h2") is None
    assert store.update_user("s.patel", disabled=1)
    assert store.get_session("h1")["disabled"] == 1
    store.add_enrol_token("t1", "5b-pi-01", "tech", future)
    store.add_enrol_token("t2", "5b-pi-02", "tech", past)
    assert store.use_enrol_token("t1") == "5b-pi-01"
    assert store.use_enrol_token("t1") is None  # one-time
    assert store.use_enrol_token("t2") is None  # expired
    store.audit("s.patel", "evidence.view", "x", {"records": 1})
    entries = store.list_audit(action="evidence.view")
    assert entries[0]["actor"] == "s.patel" and '"records": 1' in entries[0]["details"]


def test_device_alerts_open_once(store):
    assert store.raise_device_alert("dark", "5b-pi-01", "5b", "silent")
    assert store.raise_device_alert("dark", "5b-pi-01", "5b", "silent") is None
    assert len(store.list_device_alerts()) == 1
    assert store.clear_device_alerts("dark", "5b-pi-01") == 1
    assert store.list_device_alerts() == [] and len(store.list_device_alerts(open_only=False)) == 1


def test_concurrent_writers_lose_nothing(store):
    batches = [[make_event() for _ in range(200)] for _ in range(8)]
    errors = []

    def work(batch):
        try:
            store.insert_events(batch)
            store.insert_events(batch)  # and a resend of it
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count("events") == 1600


def test_purge_removes_only_old_rows(store):
    old = make_event(ts="2020-01-01T00:00:00.000Z")
    new = make_event()
    store.insert_events([old, new])
    assert store.purge("events", "2021-01-01T00:00:00Z") == 1
    assert store.get_event(new["id"]) and store.get_event(old["id"]) is None
    with pytest.raises(StoreError):
        store.purge("users", "2021-01-01T00:00:00Z")


def test_failed_write_does_not_undo_others(sqlite_store):
    # SQLite batches many tasks in one commit; a failing task is rolled back alone.
    ok = sqlite_store.write(lambda tx: tx.execute("INSERT INTO audit (id, ts, actor, action) VALUES ('a','t','x','y')"),
                            wait=False)
    bad = sqlite_store.write(lambda tx: tx.execute("INSERT INTO nowhere VALUES (1)"), wait=False)
    assert ok.result() == 1
    with pytest.raises(Exception):
        bad.result()
    assert sqlite_store.count("audit") == 1


def test_transitions_with_the_same_timestamp_sort_in_lifecycle_order(store):
    alert_id = protocol.new_id()
    same = protocol.now_ts()
    where = topic_of("5b", "5b-pi-01", "alert")
    store.ingest(items((where, make_alert(alert_id, "cleared", ts=same)),
                       (where, make_alert(alert_id, "acknowledged", ts=same)),
                       (where, make_alert(alert_id, "raised", ts=same))))
    incident = store.get_incident(alert_id)
    assert [t["state"] for t in incident["timeline"]] == ["raised", "acknowledged", "cleared"]
    assert incident["alert_state"] == "cleared"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_starting_together_migrate_safely(backend, request, tmp_path):
    # Several `serve` processes may open one NEW database at the same moment.
    url = (f"sqlite:///{tmp_path}/fresh.db" if backend == "sqlite"
           else request.getfixturevalue("postgres").new_database("fresh"))
    errors, opened = [], []
    go = threading.Barrier(4)

    def open_one():
        go.wait()
        try:
            opened.append(Store.open(url))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in opened:
        s.close()
    assert errors == [] and len(opened) == 4


def _open_and_close(url: str, barrier) -> None:
    barrier.wait(10)
    for _ in range(3):
        Store.open(url).close()


def test_worker_processes_open_a_new_sqlite_database_together(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    url = f"sqlite:///{tmp_path}/fresh.db"
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_and_close, args=(url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

"""Guard events, failed filter checks and concerns about adults leave the building through the
escalation channels (issue 15, items 3, 5 and 10): to a real SMTP server and webhook receiver,
coalesced (never a flood), and a concern about an adult only to the headteacher.  The nightly
filter check asks every device and a failure raises the technician's alert; the agent's
filter answers the collector's ``filter-check`` cmd; a device learns who accepted the AUP."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from notify_fixtures import *  # noqa: F401,F403
from notify_fixtures import CONTACT_EMAILS, write_notify_file
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import SITE, make_event

pytestmark = pytest.mark.timeout(120)


def _notifier(store, tree, settings, **kw):
    from server.notify import Notifier
    from server.notify.events import EventNotices
    from server.presence import Presence

    notifier = Notifier(store, settings, lambda: tree, Presence(store), **kw)
    notices = EventNotices(store, settings, lambda: tree, wake=notifier.poke)
    notifier.sources.append(notices)
    return notifier, notices


def test_tamper_and_bypass_reach_the_dsl_and_technicians_once_per_window(store, notify_tree, smtp_server, webhooks,
                                                                          tmp_path):
    from server.notify import load_notify

    smtp_server.start()
    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, smtp_server, webhooks))
    notifier, notices = _notifier(store, notify_tree, settings)
    events = [make_event(type="tamper", path="/etc/classroom-agent/agent.yaml", action="restored", user="pupil5b")
              for _ in range(25)] + [make_event(type="bypass_process", name="tor", action="ended", user="pupil5b")]
    store.insert_events(events)
    for event in events:
        notices.listener("event", None, event)
    notices.listener("event", None, make_event(type="login", user="pupil5b"))  # not a guard alarm
    notifier.run_once()
    # One tamper message and one bypass message: to the DSL (the contact with role dsl) and
    # every webhook; the office is not told about guard events.
    dsl_mail = wait_for_mail(smtp_server, CONTACT_EMAILS["dsl"], count=2)
    assert smtp_server.to(CONTACT_EMAILS["office"]) == [] and smtp_server.to(CONTACT_EMAILS["headteacher"]) == []
    subjects = [m["Subject"] for m in dsl_mail]
    assert any("tampered with the safety software: 5b-pi-01 in 5b" in s for s in subjects), subjects
    assert any("bypass tool was started: 5b-pi-01 in 5b" in s for s in subjects), subjects
    tamper = next(m for m in dsl_mail if "tampered" in m["Subject"]).get_content()
    assert "Events so far: 25" in tamper and "/etc/classroom-agent/agent.yaml (restored)" in tamper
    assert "https://classroom.penny-acres.test/guard?device=5b-pi-01" in tamper
    assert "pupil5b" not in tamper
    assert len(webhooks.posts) == 6 and "pupil5b" not in json.dumps(webhooks.posts)
    # Another burst within 10 minutes: nothing more; even after a restart (a new EventNotices).
    _, again = _notifier(store, notify_tree, settings)
    for event in events:
        again.listener("event", None, event)
    assert again.take(datetime.now(timezone.utc) + timedelta(minutes=5), notify_tree) == 0
    assert again.take(datetime.now(timezone.utc), notify_tree) == 0
    # Past the window, the next one is told.
    again.listener("event", None, events[0])
    assert again.take(datetime.now(timezone.utc) + timedelta(minutes=11), notify_tree) == 1


def test_an_hour_of_tampering_on_a_fake_clock_is_at_most_one_message_per_device_per_type_per_10_minutes(sqlite_store,
                                                                                                   notify_tree):
    from server.notify.events import EventNotices
    from server.notify.settings import NotifySettings, Webhook

    settings = NotifySettings(webhooks=(Webhook(name="hook", url="https://hook.invalid/x"),))
    notices = EventNotices(sqlite_store, settings, lambda: notify_tree)
    start = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
    devices = ("5b-pi-01", "5b-pi-02", "1a-pi-01")
    for i in range(3600):  # one event a second, rotating over devices and types
        now = start + timedelta(seconds=i)
        device = devices[i % 3]
        kind = "tamper" if i % 2 else "bypass_process"
        notices.listener("event", None, {"type": kind, "site": SITE, "room": device[:2], "device": device,
                                         "id": str(i)})
        notices.take(now, notify_tree)
    rows = sqlite_store.query("SELECT alert_id, created_at FROM deliveries ORDER BY created_at")
    by_key: dict[tuple, list] = {}
    for row in rows:
        kind, device, _ = row["alert_id"].split(":", 2)
        by_key.setdefault((kind, device), []).append(protocol.parse_ts(row["created_at"]))
    assert len(by_key) == 6
    for times in by_key.values():
        assert len(times) <= 6  # an hour / 10 minutes
        assert all(b - a >= timedelta(minutes=10) for a, b in zip(times, times[1:]))
    assert notices.suppressed == 3600 - len(rows)


def test_a_concern_about_an_adult_goes_to_the_headteacher_only(sqlite_store, notify_tree, smtp_server, webhooks,
                                                              tmp_path, app_factory):
    from fastapi.testclient import TestClient

    from server.notify import load_notify

    smtp_server.start()
    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, smtp_server, webhooks))
    app = app_factory(sqlite_store)
    app.state.tree = notify_tree
    notifier, notices = _notifier(sqlite_store, notify_tree, settings)
    app.state.event_notices = notices
    with TestClient(app) as client:
        token = client.post("/api/v1/login", json={"username": "m.khan", "password": PASSWORD}).json()["token"]
        r = client.post("/api/v1/concerns", headers={"Authorization": f"Bearer {token}"},
                        json={"room": "5b", "what": "CANARY-ADULT an adult messaged a pupil", "about_adult": True})
        assert r.status_code == 201, r.text
    incident_id = r.json()["id"]
    assert sqlite_store.get_incident(incident_id)["category"] == "concern-about-adult"
    notifier.run_once()
    [mail] = wait_for_mail(smtp_server, CONTACT_EMAILS["headteacher"])
    assert "concern about an adult" in mail["Subject"]
    body = mail.get_content()
    assert "LADO" in body and f"/incidents/{incident_id}" in body and "CANARY-ADULT" not in mail.as_string()
    assert smtp_server.to(CONTACT_EMAILS["dsl"]) == [] and webhooks.posts == []
    assert any(a["action"] == "concern.head_told" for a in sqlite_store.list_audit())


def test_the_nightly_check_asks_every_device_once_and_a_failure_raises_the_technicians_alert(sqlite_store, tree):
    from server.filtercheck import NightlyCheck

    sent = []
    nightly = NightlyCheck(sqlite_store, lambda: tree, lambda *a: sent.append(a), lambda: "classroom/v1", hour=2)
    winter_night = datetime(2026, 11, 24, 1, 30, tzinfo=timezone.utc)  # 01:30 GMT: not yet
    assert nightly.run(winter_night) == 0
    assert nightly.run(winter_night + timedelta(hours=1)) == len(tree.device_ids())
    assert nightly.run(winter_night + timedelta(hours=3)) == 0  # tonight is done
    topics = {t for t, *_ in sent}
    assert len(topics) == len(tree.device_ids()) and all(t.endswith("/cmd") for t in topics)
    cmd = protocol.validate("cmd", json.loads(sent[0][1]))
    assert cmd == {"cmd": "filter-check", "by": "nightly"} and sent[0][3] is False  # not retained
    assert nightly.run(winter_night + timedelta(days=1, hours=1)) == len(tree.device_ids())  # the next night

    fail = make_event(type="filter_check", by="nightly", ok=False,
                      results=[{"domain": "facebook.com", "expect": "blocked", "result": "fail"}])
    nightly.listener("event", None, fail)
    [alert] = sqlite_store.list_device_alerts()
    assert alert["kind"] == "filter-check" and "facebook.com" in alert["message"]
    nightly.listener("event", None, make_event(type="filter_check", by="nightly", ok=True, results=[]))
    assert sqlite_store.list_device_alerts() == []


def test_a_failed_check_is_told_through_the_escalation_channels(sqlite_store, notify_tree, webhooks, tmp_path):
    from server.notify import load_notify

    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, None, webhooks))
    notifier, notices = _notifier(sqlite_store, notify_tree, settings)
    fail = make_event(type="filter_check", by="nightly", ok=False,
                      results=[{"domain": "facebook.com", "expect": "blocked", "result": "fail"}])
    sqlite_store.insert_events([fail])
    notices.listener("event", None, fail)
    notifier.run_once()
    plain = webhooks.at("/json")
    assert plain and plain[0]["reason"] == "filter-check" and "facebook.com" in json.dumps(plain[0]["details"])


def test_the_agents_filter_answers_the_collectors_filter_check_cmd(monkeypatch):
    from agent.filter.component import FilterComponent

    component = FilterComponent.__new__(FilterComponent)
    ran = []
    monkeypatch.setattr(FilterComponent, "dns_enabled", property(lambda self: True), raising=False)
    component.policy = object()
    component.run_check = lambda by: ran.append(by)
    assert component.on_command({"cmd": "filter-check", "by": "nightly"}) is True
    from services import wait_until

    wait_until(lambda: ran == ["nightly"], timeout=5, message="the check did not run")
    assert protocol.validate("cmd", {"cmd": "filter-check", "by": "nightly"})["cmd"] == "filter-check"


def test_a_device_learns_who_accepted_elsewhere_and_keeps_it_offline(sqlite_store, app_factory, tmp_path):
    from agent.config import term_key
    from agent.policy.aup import AupRecords, AupSync
    from server.http.auth import hash_password
    from web_fixtures import LiveServer

    app = app_factory(sqlite_store)
    term = term_key(app.state.tree.site.terms, datetime.now(timezone.utc).date())
    sqlite_store.insert_events([make_event(device="5b-pi-02", type="aup_accepted", user="pupil5b", term=term)])
    sqlite_store.set_device_credentials("5b-pi-01", hash_password("dev-pw"), by="test")
    server = LiveServer(app).start()
    try:
        sync = AupSync(f"{server.url}/api/v1/devices/5b-pi-01/aup", ("5b-pi-01", "dev-pw"), True)
        got = sync.fetch()
        assert got is not None and got[0] == term and list(got[1]) == ["pupil5b"]
        records = AupRecords(tmp_path)
        assert records.merge(*got) == 1 and records.has_accepted("pupil5b", term)
        assert AupSync(f"{server.url}/api/v1/devices/5b-pi-01/aup", ("5b-pi-01", "wrong"), True).fetch() is None
    finally:
        server.stop()
    # Offline now (the server is gone): the list is on disk.
    assert AupRecords(tmp_path).has_accepted("pupil5b", term)
    assert sync.fetch() is None and AupRecords(tmp_path).has_accepted("pupil5b", term)

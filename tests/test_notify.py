"""Escalation beyond the room (server/notify/), against a real SMTP server (aiosmtpd: STARTTLS
and AUTH required) and a real HTTP webhook receiver, both started here on loopback ports.

Covers: an escalated report reaches every contact by e-mail and every webhook (Teams,
Slack-style, JSON) with room, seat and the school's local time and no names or evidence;
each (alert, state, recipient) is sent once however often it is heard; a delivery record
per attempt with secrets masked; receivers that are down get it when they come back; the
notify file's errors name file, line and key; the store side on SQLite and PostgreSQL.
The unwatched-room path and a collector killed mid-retry are in test_unwatched.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent import protocol
from agent.config import ConfigInvalid
from notify_fixtures import *  # noqa: F401,F403
from notify_fixtures import (CONTACT_EMAILS, SMTP_PASSWORD, WEBHOOK_SECRET, SmtpServer, WebhookReceiver,
                             wait_for_mail, write_notify_file)
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import REPO, make_alert, make_event
from services import wait_until

pytestmark = pytest.mark.timeout(90)

CLI = str(Path(sys.executable).parent / "classroom-server")
EVIDENCE_DOMAIN = "upsetting-thing.example"
PUPIL = "jane.pupil"


def _escalated(store, room="5b", device="5b-pi-01", seat="Table 1"):
    """A report raised and then escalated by its device, with evidence and a pupil's login on record."""
    raised = make_alert(room=room, device=device, seat=seat)
    store.record_alert(raised)
    store.ingest([(protocol.Topic(protocol.DEFAULT_PREFIX, SITE, room, device, "event"),
                   make_event(room=room, device=device, type="report_evidence", alert_id=raised["id"],
                              domains=[{"domain": EVIDENCE_DOMAIN, "ts": protocol.now_ts(), "count": 3}])),
                  (protocol.Topic(protocol.DEFAULT_PREFIX, SITE, room, device, "event"),
                   make_event(room=room, device=device, type="login", user=PUPIL))])
    escalated = {**raised, "state": "escalated", "ts": protocol.now_ts()}
    store.record_alert(escalated)
    return escalated


def _notifier(store, tree, settings, **kw):
    from server.notify import Notifier
    from server.presence import Presence

    return Notifier(store, settings, lambda: tree, Presence(store), **kw)


def _everything_stored(store) -> str:
    rows = store.query("SELECT * FROM deliveries") + store.query("SELECT * FROM delivery_attempts") + \
        store.query("SELECT * FROM audit")
    return json.dumps(rows)


def test_escalated_report_reaches_every_contact_and_webhook_once(store, notify_tree, smtp_server, webhooks,
                                                                  tmp_path):
    from server.localtime import local_long
    from server.notify import load_notify

    smtp_server.start()
    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, smtp_server, webhooks))
    alert = _escalated(store)
    notifier = _notifier(store, notify_tree, settings)
    notifier.listener("alert", None, alert)
    assert notifier.run_once() == 6  # 3 contacts with an e-mail + 3 webhooks

    raised_at = store.get_incident(alert["id"])["raised_at"]
    local = local_long(raised_at, "Europe/London")
    for address in CONTACT_EMAILS.values():
        [mail] = smtp_server.to(address)
        body = mail.get_content()
        assert "Year 5 Beech (5b), Table 1" in mail["Subject"] and "Nobody has answered" in mail["Subject"]
        assert "Table 1" in body and "5b-pi-01" in body and local in body
        assert f"https://classroom.penny-acres.test/incidents/{alert['id']}" in body
        assert "https://classroom.penny-acres.test/office" in body
        assert EVIDENCE_DOMAIN not in mail.as_string() and PUPIL not in mail.as_string()
    assert all(info == {"tls": True, "authenticated": True} for _, _, info in smtp_server.messages)

    [teams] = webhooks.at("/teams")
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"
    assert {"title": "Pressed", "value": local} in card["content"]["body"][1]["facts"]
    [slack] = webhooks.at("/slack")
    assert "Table 1" in slack["text"] and local in slack["text"]
    [plain] = webhooks.at("/json")
    assert plain["alert_id"] == alert["id"] and plain["seat"] == "Table 1" and plain["timezone"] == "Europe/London"
    assert plain["raised_local"] == local and plain["reason"] == "escalated"
    for body in (teams, slack, plain):
        assert EVIDENCE_DOMAIN not in json.dumps(body) and PUPIL not in json.dumps(body)

    rows = store.list_deliveries(alert_id=alert["id"])
    assert {(r["channel"], r["recipient"]) for r in rows} == \
        {("email", a) for a in CONTACT_EMAILS.values()} | {("webhook", f"office-{f}") for f in ("teams", "slack", "json")}
    assert all(r["status"] == "sent" and [a["result"] for a in r["attempt_log"]] == ["sent"] for r in rows)

    # Heard again (a broker redelivery, a retained replay, the sweep): nothing new is sent.
    notifier.listener("alert", None, alert)
    notifier.run_once()
    assert notifier.sweep() == 0
    assert len(smtp_server.messages) == 3 and len(webhooks.posts) == 3
    assert store.count("deliveries") == 6
    stored = _everything_stored(store)
    assert WEBHOOK_SECRET not in stored and SMTP_PASSWORD not in stored and str(webhooks.port) not in stored


def test_receivers_down_then_up_get_it_once_with_a_record_per_attempt(sqlite_store, notify_tree, smtp_server,
                                                                       webhooks, tmp_path):
    from server.notify import load_notify

    # Both receivers down: their ports are reserved, nothing listens.
    settings = load_notify(write_notify_file(tmp_path, smtp_server, webhooks))
    alert = _escalated(sqlite_store)
    notifier = _notifier(sqlite_store, notify_tree, settings, backoff=(0.3, 0.6, 1.0)).start()
    try:
        notifier.listener("alert", None, alert)
        wait_until(lambda: all(r["attempts"] >= 2 for r in sqlite_store.list_deliveries()) and
                   sqlite_store.count("deliveries") == 6, timeout=30)
        failed = sqlite_store.list_deliveries()
        assert all(r["status"] == "pending" and r["last_error"] for r in failed)
        errors = [a["error"] for r in failed for a in r["attempt_log"]]
        assert any("Connection refused" in e or "ConnectionRefused" in e for e in errors), errors
        assert not any(WEBHOOK_SECRET in e or SMTP_PASSWORD in e for e in errors)

        smtp_server.start()
        webhooks.start()
        wait_until(lambda: all(r["status"] == "sent" for r in sqlite_store.list_deliveries()), timeout=30)
    finally:
        notifier.stop()
    for address in CONTACT_EMAILS.values():
        assert len(smtp_server.to(address)) == 1
    assert sorted(p for p, _ in webhooks.posts) == sorted(f"/{f}?{WEBHOOK_SECRET}" for f in ("teams", "slack", "json"))
    for row in sqlite_store.list_deliveries():
        results = [a["result"] for a in row["attempt_log"]]
        assert results[-1] == "sent" and set(results[:-1]) == {"failed"} and len(results) == row["attempts"]
    # Nothing more goes out once it is sent.
    notifier.run_once()
    assert len(smtp_server.messages) == 3 and len(webhooks.posts) == 3
    assert WEBHOOK_SECRET not in _everything_stored(sqlite_store)


def test_a_delivery_that_keeps_failing_is_given_up_and_audited(sqlite_store, notify_tree, webhooks, tmp_path):
    from server.notify import load_notify

    webhooks.status = 500
    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, None, webhooks, retry={"give_up_after_minutes": 1}))
    alert = _escalated(sqlite_store)
    start = datetime.now(timezone.utc)
    notifier = _notifier(sqlite_store, notify_tree, settings, clock=lambda: start)
    notifier.listener("alert", None, alert)
    assert notifier.run_once(start) == 3
    assert {r["status"] for r in sqlite_store.list_deliveries()} == {"pending"}
    assert notifier.run_once(start + timedelta(seconds=5)) == 0  # not due yet: backed off, no flood
    assert notifier.run_once(start + timedelta(seconds=61)) == 3
    rows = sqlite_store.list_deliveries()
    assert {r["status"] for r in rows} == {"failed"} and all(r["attempts"] == 2 for r in rows)
    assert all(r["last_error"].startswith("HTTP 500") for r in rows)
    assert notifier.run_once(start + timedelta(seconds=600)) == 0
    audit = [a for a in sqlite_store.list_audit(limit=20) if a["action"] == "notify.failed"]
    assert len(audit) == 3 and all(a["target"] == alert["id"] for a in audit)
    assert {a["site"] for a in audit} == {SITE}  # the report's school's DSL reads it, not only the trust level


@pytest.mark.parametrize("text,expect", [
    ("smtp:\n  host: mail.example\n  prot: 25\n  from: a@b.example\n",
     "notify.yaml:3: smtp.prot: unknown key (did you mean 'port'?)"),
    ("smtp:\n  host: mail.example\n  from: a@b.example\n  username: me\n",
     "notify.yaml:4: smtp.password_file: is required with username"),
    ("smtp:\n  host: mail.example\n  from: a@b.example\n  username: me\n  password_file: /nonexistent/pw\n",
     "notify.yaml:5: smtp.password_file: cannot read it: /nonexistent/pw"),
    ("webhooks:\n  - name: office\n    url_file: {garbage}\n", "notify.yaml:3: webhooks[0].url_file: "),
    ("webhooks:\n  - name: office\n    url: https://x.example/a\n    format: telegram\n",
     "notify.yaml:4: webhooks[0].format: 'telegram' is not allowed"),
    ("webhooks:\n  - {name: a, url: 'https://x.example/1'}\n  - {name: a, url: 'https://x.example/2'}\n",
     "notify.yaml:3: webhooks[1].name: 'a' is used by another webhook"),
    ("webhooks:\n  - {name: a, url: 'https://x.example/1', url_file: /etc/hostname}\n",
     "notify.yaml:2: webhooks[0]: give exactly one of url_file"),
    ("send: {escalated: yes please}\n", "notify.yaml:1: send.escalated:"),
    ("webhooks:\n  - name: b\n    url: https://x.example/b\n    sites: [Hill Top]\n",
     "notify.yaml:4: webhooks[0].sites"),
])
def test_notify_file_errors_name_file_line_and_key(tmp_path, text, expect):
    from server.notify import load_notify

    garbage = tmp_path / "garbage.url"
    garbage.write_text("not-a-url-but-maybe-a-secret\n")
    path = tmp_path / "notify.yaml"
    path.write_text(text.replace("{garbage}", str(garbage)))
    with pytest.raises(ConfigInvalid) as info:
        load_notify(path)
    lines = [str(e).replace(str(tmp_path) + "/", "") for e in info.value.errors]
    assert any(line.startswith(expect) for line in lines), lines
    assert "not-a-url-but-maybe-a-secret" not in str(info.value)


def test_a_webhook_limited_to_schools_gets_only_their_reports(tmp_path, notify_tree):
    """webhooks[].sites (a trust's collector): that school's reports only; none: every school's.
    notify check with another school's tree leaves it out, and serve warns about an unknown site."""
    from server.notify import load_notify, unknown_webhook_sites
    from server.notify.notifier import recipients_for

    path = tmp_path / "notify.yaml"
    path.write_text("webhooks:\n  - {name: all, url: 'https://x.example/1'}\n"
                    "  - {name: hilltop-only, url: 'https://x.example/2', sites: [hilltop]}\n")
    settings = load_notify(path)
    assert settings.webhook("hilltop-only").sites == ("hilltop",) and settings.webhook("all").sites == ()
    assert recipients_for(settings, notify_tree, "escalated") == [("webhook", "all")]
    assert recipients_for(settings, None, "escalated", "hilltop") == [("webhook", "all"), ("webhook", "hilltop-only")]
    # A tree of another school never gives its contacts to a report of this one.
    assert recipients_for(settings, notify_tree, "escalated", "hilltop") == [("webhook", "all"),
                                                                            ("webhook", "hilltop-only")]
    assert unknown_webhook_sites(settings, ["penny-acres"]) == [
        "webhooks: hilltop-only: sites: 'hilltop' is not a school this collector serves (penny-acres)"]
    assert unknown_webhook_sites(settings, ["penny-acres", "hilltop"]) == []


def test_notify_check_and_serve_refuse_a_bad_file_in_one_line(tmp_path, smtp_server, webhooks):
    from notify_fixtures import notify_tree_dir

    config = notify_tree_dir(tmp_path, REPO)
    good = write_notify_file(tmp_path, smtp_server, webhooks)
    cli = [CLI]
    ok = subprocess.run([*cli, "notify", "check", str(good), "--config", str(config)], capture_output=True,
                        text=True, timeout=60, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "ok: smtp 127.0.0.1" in ok.stdout and "webhook office-teams (teams)" in ok.stdout
    assert "unwatched: email:dsl@penny-acres.test, email:office@penny-acres.test, webhook:office-teams" in ok.stdout
    assert "head@penny-acres.test" in ok.stdout.split("unwatched:")[0]  # escalations reach the head too
    assert WEBHOOK_SECRET not in ok.stdout + ok.stderr and SMTP_PASSWORD not in ok.stdout + ok.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("smtp:\n  host: mail.example\n  from: a@b.example\n  tls: true\n")
    check = subprocess.run([*cli, "notify", "check", str(bad)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert check.returncode == 1
    assert f"{bad}:4: smtp.tls: unknown key" in check.stderr and "1 problem(s) found" in check.stderr
    serve = subprocess.run([*cli, "serve", "--notify", str(bad), "--db", f"sqlite:///{tmp_path}/s.db",
                            "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert serve.returncode == 1
    assert serve.stderr.strip().splitlines() == [
        f"classroom-server: error: {bad}:4: smtp.tls: unknown key (run `classroom-server notify check {bad}`)"]


def test_notify_test_command_sends_one_marked_message_to_everyone(tmp_path, smtp_server, webhooks):
    from notify_fixtures import notify_tree_dir

    smtp_server.start()
    webhooks.start()
    config = notify_tree_dir(tmp_path, REPO)
    path = write_notify_file(tmp_path, smtp_server, webhooks)
    result = subprocess.run([CLI, "notify", "test", str(path), "--config", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "email:dsl@penny-acres.test: sent" in result.stdout and "webhook:office-json: sent" in result.stdout
    wait_for_mail(smtp_server, CONTACT_EMAILS["office"])
    assert "TEST MESSAGE" in smtp_server.to(CONTACT_EMAILS["office"])[0]["Subject"]
    assert len(webhooks.posts) == 3


# --------------------------------------------------------------------------- the store, both backends


def test_deliveries_unique_claimed_once_recorded_and_purged_with_their_incident(store):
    from server.store import iso

    alert = make_alert(state="escalated")
    store.record_alert(alert)
    targets = [("email", "dsl@x.example"), ("webhook", "office")]
    now = datetime.now(timezone.utc)
    first = store.add_deliveries(alert, "escalated", targets, iso(now))
    assert len(first) == 2
    assert store.add_deliveries(alert, "escalated", targets, iso(now)) == []  # once per (alert, state, recipient)
    due = store.due_deliveries(iso(now))
    assert len(due) == 2
    one = due[0]["id"]
    assert store.claim_delivery(one, iso(now), iso(now + timedelta(minutes=3))) is not None
    assert store.claim_delivery(one, iso(now), iso(now + timedelta(minutes=3))) is None  # held by the first
    assert [d["id"] for d in store.due_deliveries(iso(now))] == [due[1]["id"]]
    # A sender killed mid-attempt: its claim runs out and the delivery is due again.
    later = now + timedelta(minutes=4)
    assert one in [d["id"] for d in store.due_deliveries(iso(later))]
    store.record_attempt(one, sent=False, error="HTTP 503", next_attempt_at=iso(later + timedelta(seconds=10)))
    store.record_attempt(one, sent=True, error=None, next_attempt_at=None)
    row = next(r for r in store.list_deliveries(alert_id=alert["id"]) if r["id"] == one)
    assert row["status"] == "sent" and row["attempts"] == 2 and row["last_error"] is None
    assert [(a["result"], a["error"]) for a in row["attempt_log"]] == [("failed", "HTTP 503"), ("sent", None)]
    assert store.next_delivery_due() is not None  # the other one
    assert store.escalated_without_deliveries(iso(now - timedelta(hours=1))) == []

    store.update_incident(alert["id"], "s.patel", {"status": "closed"})
    assert store.purge_closed_incidents(iso(datetime.now(timezone.utc) + timedelta(seconds=1)),
                                        ["report_evidence"]) == 1
    assert store.count("deliveries") == 0 and store.count("delivery_attempts") == 0


def test_room_viewers_and_teacher_clients_make_a_room_watched(store):
    from server.presence import Presence
    from server.store import iso

    clock = [datetime.now(timezone.utc)]
    presence = Presence(store, clock=lambda: clock[0], viewer_seconds=30)
    assert not presence.is_watched(SITE, "5b")
    watch = protocol.parse_staff_topic(protocol.watch_topic(protocol.DEFAULT_PREFIX, SITE, "5b", "m.khan"))
    presence.listener("watch", watch, {"state": "watching", "ts": protocol.now_ts(), "client": "classroom-alerts"})
    assert presence.is_watched(SITE, "5b") and not presence.is_watched(SITE, "1a")
    presence.listener("watch", watch, {"state": "gone", "ts": protocol.now_ts()})
    assert not presence.is_watched(SITE, "5b")
    presence.viewer_seen(SITE, "1a", "s.patel")
    assert presence.receivers(SITE)["1a"] == [{"kind": "dashboard", "who": "s.patel", "client": None,
                                               "since": iso(clock[0])}]
    clock[0] += timedelta(seconds=31)  # the tab was closed: it drops out by time
    assert not presence.is_watched(SITE, "1a")


def test_delivery_records_api_and_page_for_the_dsl(sqlite_store, app_factory, staff_client):
    from server.store import iso

    alert = make_alert(state="escalated")
    sqlite_store.record_alert(alert)
    [row] = sqlite_store.add_deliveries(alert, "escalated", [("webhook", "office-teams")],
                                        iso(datetime.now(timezone.utc)))
    sqlite_store.record_attempt(row["id"], sent=False, error="HTTP 404: no such flow", next_attempt_at=iso(
        datetime.now(timezone.utc) + timedelta(seconds=30)))
    app = app_factory(sqlite_store)
    dsl = staff_client(app, "dsl")
    [got] = dsl.get("/api/v1/deliveries", params={"alert_id": alert["id"]}).json()
    assert got["recipient"] == "office-teams" and got["status"] == "pending"
    assert got["attempt_log"][0]["error"] == "HTTP 404: no such flow" and "claimed_until" not in got
    assert dsl.get("/api/v1/deliveries", params={"status": "sent"}).json() == []
    assert dsl.get("/api/v1/deliveries", params={"status": "bogus"}).status_code == 422
    page = dsl.get("/deliveries")
    assert page.status_code == 200 and "webhook: office-teams" in page.text and "HTTP 404: no such flow" in page.text
    assert staff_client(app, "teacher").get("/api/v1/deliveries").status_code == 403
    assert staff_client(app, "office").get("/deliveries").status_code == 403


def test_an_escalation_stored_without_its_messages_is_caught_by_the_sweep(sqlite_store, notify_tree, webhooks,
                                                                          tmp_path):
    """A collector killed between storing an escalation and queueing its messages: the sweep
    (once a minute, at start too) queues them; an old one (over an hour) is left alone."""
    from server.notify import load_notify

    webhooks.start()
    settings = load_notify(write_notify_file(tmp_path, None, webhooks))
    alert = _escalated(sqlite_store)  # stored, but no listener ever heard it
    notifier = _notifier(sqlite_store, notify_tree, settings)
    assert notifier.run_once() == 3  # the first round sweeps
    assert {r["reason"] for r in sqlite_store.list_deliveries(alert_id=alert["id"])} == {"escalated"}
    assert len(webhooks.posts) == 3
    assert notifier.sweep() == 0
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    other = _escalated(sqlite_store, room="1a", device="1a-pi-01", seat=None)
    assert notifier.sweep(later) == 0 and sqlite_store.list_deliveries(alert_id=other["id"]) == []

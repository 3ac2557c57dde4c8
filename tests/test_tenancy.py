"""Tenancy: EVERY route x role x site.  A school's staff never see or change another school's records.

Two schools share one collector: penny-acres (the example config) and hilltop, a copy with
the SAME room ids ("5b" is in every primary school) and its own device ids; hilltop's 5b
even lists penny-acres' teacher in its ``alert_staff``.  Hilltop holds a record of every
kind (an incident the DSL has filled in, evidence, blocked lookups, a filtering check,
device status, a dark device, an enrolment token, a published config version, audit
entries, a staff account, an escalation e-mail with its attempt, a teacher client and a
dashboard tab watching its 5b; issue 15's record: a concern with its IT queue item, an
allowlist change, an override, an export, a review, a check action, a test-filtering run,
AUP acceptances and logins, a guard event, a DSL's hold on its device; issue 16's "Ask my
teacher" request, a teacher's room command, a device's lock, a timetable and cover), each
carrying canary strings.  Then every route of the app --
enumerated from the app itself, so a route added later is covered without editing this
file -- is called as every penny-acres role and the trust level, with hilltop's ids in its
path and a body that would change something: no answer may contain a hilltop canary,
no answer naming a hilltop record may succeed, and hilltop's records must be unchanged.
Positive controls (hilltop's own staff do see every canary; penny-acres' staff see their
own) prove the checks can fail.

``SITE_SCOPE`` is the reviewed list of how each route is scoped.  A route missing from it
fails ``test_every_route_is_reviewed_for_site_scoping``: scope it by ``user.site``, give
its path parameters a hilltop value in ``B_PARAMS``, and list it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from agent import protocol
from agent.config import load_tree
from server.http.auth import hash_password, token_hash
from server.rollout import read_files
from server.store import iso
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import REPO, SITE, STAFF
from test_api_roles import _routes

pytestmark = pytest.mark.timeout(120)

A, B = SITE, "hilltop"
B_SCHOOL = "Hilltop Primary"
B_STAFF = {"teacher": "b.teacher", "dsl": "b.dsl", "technician": "b.tech", "admin": "b.admin", "office": "b.office"}
B_ONLY = "b.only"           # an account of hilltop only: another school's admin must not manage it
DUAL = "j.dual"             # dsl at penny-acres, teacher at hilltop (the site switcher)
TRUST = "trust-it"          # the trust level
B_DEVICE, A_DEVICE = "hb-5b-pi-01", "5b-pi-01"
DEVICE_PASSWORDS = {A_DEVICE: "device-secret-a-1", B_DEVICE: "device-secret-b-1"}
B_CANARY_TEXT = ("CANARY-B-OUTCOME-91c", "CANARY-B-NOTE-91c", "canary-b-evidence-91c.example",
                 "canary-b-blocked-91c.example", "canary-b-check-91c.example")
A_CANARY_TEXT = ("CANARY-A-OUTCOME-22d", "canary-a-blocked-22d.example")
# Issue 13's records of hilltop: who an escalation went to (and its error), who watches its 5b.
B_RECIPIENT = "canary-b-escalation-91c@hilltop.example"
B_DELIVERY_ERROR = "CANARY-B-SMTP-ERROR-91c"
B_WATCHER, B_VIEWER = "b.pager-91c", "b.tab-91c"
# Issue 15's record and issue 16's "Ask my teacher" at hilltop.
B_RECORD_TEXT = {
    "concern": "CANARY-B-CONCERN-91c", "it_domain": "canary-b-itqueue-91c.example",
    "allowlist": "canary-b-allowlist-91c.example", "override": "canary-b-override-91c.example",
    "pupil": "canary-b-pupil-91c", "aup_pupil": "canary-b-aup-91c", "login_pupil": "canary-b-login-91c",
    "review": "CANARY-B-REVIEW-91c", "check_action": "CANARY-B-CHECK-ACTION-91c", "test": "CANARY-B-TEST-91c",
    "guard": "canary-b-tor-91c", "ask": "canary-b-ask-91c.example",
    "command": "CANARY-B-EYES-91c", "locked_by": "b.locker-91c", "timetabled": "b.timetabled-91c",
    "timetable_file": "canary-b-timetable-91c.csv", "cover_note": "CANARY-B-COVER-91c",
    "hold": "CANARY-B-HOLD-91c"}

# How each route is scoped (reviewed).  "collector": public, says nothing about any school;
# "caller": about the caller alone (their session, their schools); "school": reads or
# writes the acting school's records only; "trust": counts of every school, for the trust
# level; "device": a device's own.
SITE_SCOPE = {
    ("GET", "/api/v1/openapi.json"): "collector",
    ("GET", "/static/{path}"): "collector",
    ("GET", "/healthz"): "collector",
    ("GET", "/metrics"): "collector",
    ("POST", "/api/v1/login"): "collector",
    ("POST", "/api/v1/enrol"): "collector",
    ("GET", "/"): "collector",
    ("GET", "/login"): "collector",
    ("POST", "/login"): "collector",
    ("GET", "/auth/oidc/login"): "collector",
    ("GET", "/auth/oidc/callback"): "collector",
    ("POST", "/api/v1/logout"): "caller",
    ("GET", "/api/v1/me"): "caller",
    ("POST", "/api/v1/site"): "caller",
    ("GET", "/schools"): "caller",
    ("POST", "/site"): "caller",
    ("POST", "/logout"): "caller",
    ("GET", "/api/v1/trust/health"): "trust",
    ("GET", "/trust"): "trust",
    ("GET", "/api/v1/device/whoami"): "device",
    ("GET", "/api/v1/devices/{device_id}/config"): "device",
    ("GET", "/api/v1/incident-categories"): "school",
    ("GET", "/api/v1/incidents"): "school",
    ("GET", "/api/v1/incidents/{incident_id}"): "school",
    ("PATCH", "/api/v1/incidents/{incident_id}"): "school",
    ("POST", "/api/v1/incidents/{incident_id}/notes"): "school",
    ("POST", "/api/v1/incidents/{incident_id}/checklist"): "school",
    ("GET", "/api/v1/incidents/{incident_id}/evidence"): "school",
    ("POST", "/api/v1/alerts/{alert_id}/ack"): "school",
    ("POST", "/api/v1/alerts/{alert_id}/clear"): "school",
    ("GET", "/api/v1/devices"): "school",
    ("GET", "/api/v1/device-alerts"): "school",
    ("POST", "/api/v1/enrol-tokens"): "school",
    ("GET", "/api/v1/enrol-tokens"): "school",
    ("GET", "/api/v1/users"): "school",
    ("POST", "/api/v1/users"): "school",
    ("PATCH", "/api/v1/users/{username}"): "school",
    ("GET", "/api/v1/audit"): "school",
    ("GET", "/api/v1/deliveries"): "school",
    ("GET", "/api/v1/config/rollouts"): "school",
    ("POST", "/api/v1/config/rollouts"): "school",
    ("POST", "/api/v1/config/rollback"): "school",
    ("GET", "/api/v1/config/status"): "school",
    ("GET", "/api/v1/config/diff"): "school",
    ("GET", "/api/v1/reports/weekly"): "school",
    ("GET", "/rooms"): "school",
    ("GET", "/rooms/{room}"): "school",
    ("GET", "/rooms/{room}/events"): "school",
    ("GET", "/office"): "school",
    ("GET", "/office/events"): "school",
    ("GET", "/deliveries"): "school",
    ("GET", "/incidents"): "school",
    ("GET", "/incidents/{incident_id}"): "school",
    ("POST", "/incidents/{incident_id}/update"): "school",
    ("POST", "/incidents/{incident_id}/note"): "school",
    ("POST", "/incidents/{incident_id}/tick"): "school",
    ("POST", "/incidents/{incident_id}/evidence"): "school",
    ("GET", "/devices"): "school",
    ("GET", "/rollout"): "school",
    ("POST", "/rollout/publish"): "school",
    ("POST", "/rollout/rollback"): "school",
    ("GET", "/rollout/audit"): "school",
    ("GET", "/reports/weekly"): "school",
    ("GET", "/reports/weekly.csv"): "school",
    ("GET", "/users"): "school",
    ("POST", "/users/add"): "school",
    ("POST", "/users/{username}/change"): "school",
    # Issue 15's record: every row has its site; routes read and write user.site's only.
    ("POST", "/api/v1/concerns"): "school",
    ("GET", "/api/v1/it-queue"): "school",
    ("POST", "/api/v1/it-queue/{item_id}/done"): "school",
    ("GET", "/api/v1/guard-events"): "school",
    ("GET", "/api/v1/allowlist/changes"): "school",
    ("POST", "/api/v1/allowlist/changes"): "school",
    ("POST", "/api/v1/allowlist/changes/{change_id}/decision"): "school",
    ("GET", "/api/v1/allowlist/overrides"): "school",
    ("POST", "/api/v1/incidents/{incident_id}/export"): "school",
    ("POST", "/api/v1/exports/pupil"): "school",
    ("GET", "/api/v1/exports"): "school",
    ("GET", "/api/v1/reviews"): "school",
    ("POST", "/api/v1/reviews"): "school",
    ("GET", "/api/v1/checks"): "school",
    ("POST", "/api/v1/checks/{check_id}/actions"): "school",
    ("POST", "/api/v1/filter-tests"): "school",
    ("POST", "/api/v1/filter-tests/{test_id}/result"): "school",
    ("GET", "/api/v1/reports/term"): "school",
    ("GET", "/api/v1/aup"): "school",
    ("GET", "/api/v1/devices/{device_id}/aup"): "device",
    ("GET", "/concerns/new"): "school",
    ("POST", "/concerns/new"): "school",
    ("GET", "/it-queue"): "school",
    ("POST", "/it-queue/{item_id}/done"): "school",
    ("GET", "/guard"): "school",
    ("GET", "/guard.csv"): "school",
    ("GET", "/allowlist"): "school",
    ("POST", "/allowlist/propose"): "school",
    ("POST", "/allowlist/{change_id}/decide"): "school",
    ("POST", "/incidents/{incident_id}/export"): "school",
    ("GET", "/exports"): "school",
    ("POST", "/exports/pupil"): "school",
    ("GET", "/reviews"): "school",
    ("POST", "/reviews"): "school",
    ("GET", "/checks"): "school",
    ("POST", "/checks/{check_id}/action"): "school",
    ("POST", "/checks/test"): "school",
    ("POST", "/checks/test/{test_id}"): "school",
    ("GET", "/reports/term"): "school",
    ("GET", "/reports/term.pdf"): "school",
    ("GET", "/aup"): "school",
    # Issue 16's "Ask my teacher": requests are looked up by (site, id), rooms by (site, room).
    ("GET", "/api/v1/rooms/{room}/unblock-requests"): "school",
    ("POST", "/api/v1/unblock-requests/{request_id}/allow"): "school",
    ("POST", "/api/v1/unblock-requests/{request_id}/dismiss"): "school",
    # Issue 16's teacher controls, timetable and cover: the acting school's rooms, lessons and cover.
    ("POST", "/api/v1/rooms/{room}/lock"): "school",
    ("POST", "/api/v1/rooms/{room}/unlock"): "school",
    ("POST", "/api/v1/rooms/{room}/allow"): "school",
    ("POST", "/api/v1/rooms/{room}/message"): "school",
    ("GET", "/api/v1/rooms/{room}/commands"): "school",
    ("GET", "/api/v1/timetable"): "school",
    ("GET", "/cover"): "school",
    ("POST", "/cover"): "school",
    ("POST", "/cover/{cover_id}/remove"): "school",
    # Issue 15's blocked-attempt log and the DSL's holds.
    ("GET", "/api/v1/blocked"): "school",
    ("GET", "/blocked"): "school",
    ("GET", "/blocked.csv"): "school",
    ("GET", "/api/v1/holds"): "school",
    ("GET", "/api/v1/incidents/{incident_id}/holds"): "school",
    ("POST", "/api/v1/incidents/{incident_id}/hold"): "school",
    ("POST", "/api/v1/holds/{hold_id}/lift"): "school",
    ("GET", "/holds"): "school",
    ("GET", "/incidents/{incident_id}/hold"): "school",
    ("POST", "/incidents/{incident_id}/hold"): "school",
    ("POST", "/holds/{hold_id}/lift"): "school",
}

# Bodies that would change something if the route let them through (JSON for the API,
# form fields for the dashboard); every other route gets {}.
JSON_BODIES = {
    ("PATCH", "/api/v1/incidents/{incident_id}"): {"status": "closed", "outcome": "changed by another school"},
    ("POST", "/api/v1/incidents/{incident_id}/notes"): {"text": "note from another school"},
    ("POST", "/api/v1/incidents/{incident_id}/checklist"): {"item": "inform-dsl"},
    ("POST", "/api/v1/enrol-tokens"): {"device": B_DEVICE},
    ("PATCH", "/api/v1/users/{username}"): {"disabled": True, "role": "admin"},
    ("POST", "/api/v1/site"): {"site": B},
    ("POST", "/api/v1/config/rollback"): {"why": "from another school"},
    ("POST", "/api/v1/it-queue/{item_id}/done"): {"note": "done by another school"},
    ("POST", "/api/v1/allowlist/changes/{change_id}/decision"): {"approve": False, "note": "another school"},
    ("POST", "/api/v1/incidents/{incident_id}/export"): {"format": "csv", "evidence": True},
    ("POST", "/api/v1/exports/pupil"): {"user": B_RECORD_TEXT["pupil"], "format": "csv", "evidence": True},
    ("POST", "/api/v1/checks/{check_id}/actions"): {"text": "action from another school"},
    ("POST", "/api/v1/filter-tests"): {"device": B_DEVICE},
    ("POST", "/api/v1/filter-tests/{test_id}/result"): {"result": "fail", "details": "from another school"},
    ("POST", "/api/v1/concerns"): {"room": "5b", "device": B_DEVICE, "what": "from another school",
                                   "tell_it": True, "url": "https://x.example/"},
    ("POST", "/api/v1/rooms/{room}/lock"): {"minutes": 1, "devices": [B_DEVICE]},
    ("POST", "/api/v1/rooms/{room}/unlock"): {"devices": [B_DEVICE]},
    ("POST", "/api/v1/rooms/{room}/allow"): {"domain": "example.org", "reason": "from another school",
                                            "devices": [B_DEVICE]},
    ("POST", "/api/v1/rooms/{room}/message"): {"text": "from another school", "devices": [B_DEVICE]},
    ("POST", "/api/v1/incidents/{incident_id}/hold"): {"reason": "from another school"},
    ("POST", "/api/v1/holds/{hold_id}/lift"): {"reason": "from another school"},
}
FORM_BODIES = {
    ("POST", "/incidents/{incident_id}/update"): {"status": "closed", "outcome": "changed by another school"},
    ("POST", "/incidents/{incident_id}/note"): {"text": "note from another school"},
    ("POST", "/incidents/{incident_id}/tick"): {"item": "inform-dsl"},
    ("POST", "/users/{username}/change"): {"action": "disable"},
    ("POST", "/site"): {"site": B},
    ("POST", "/rollout/rollback"): {"why": "from another school"},
    ("POST", "/rollout/publish"): {"why": "from another school"},
    ("POST", "/it-queue/{item_id}/done"): {"note": "done by another school"},
    ("POST", "/allowlist/{change_id}/decide"): {"approve": "1", "note": "another school"},
    ("POST", "/incidents/{incident_id}/export"): {"format": "csv", "evidence": "1"},
    ("POST", "/exports/pupil"): {"user": B_RECORD_TEXT["pupil"], "format": "csv", "evidence": "1"},
    ("POST", "/checks/{check_id}/action"): {"text": "action from another school"},
    ("POST", "/checks/test"): {"device": B_DEVICE},
    ("POST", "/checks/test/{test_id}"): {"result": "fail", "details": "from another school"},
    ("POST", "/concerns/new"): {"room": "5b", "device": B_DEVICE, "what": "from another school", "tell_it": "1"},
    ("POST", "/cover"): {"room": "5b", "staff": B_STAFF["teacher"], "start": "00:00", "end": "23:59",
                         "note": "from another school"},
    ("POST", "/cover/{cover_id}/remove"): {},
    ("POST", "/incidents/{incident_id}/hold"): {"reason": "from another school"},
    ("POST", "/holds/{hold_id}/lift"): {"reason": "from another school"},
}
API_PREFIX = "/api/v1"


def make_school_b(tmp_path):
    """hilltop: the example tree with its own site and device ids, and the same room ids."""
    folder = tmp_path / "hilltop"
    shutil.copytree(REPO / "config", folder)
    site = folder / "site.yaml"
    site.write_text(site.read_text().replace(f"site: {A}", f"site: {B}")
                    .replace("school: Penny Acres Primary School", f"school: {B_SCHOOL}"))
    for room in (folder / "rooms").glob("*.yaml"):
        text = re.sub(r"(- id: )", r"\1hb-", room.read_text())
        room.write_text(text.replace("alert_staff: [m.khan]", f"alert_staff: [m.khan, {DUAL}, b.teacher]"))
    return folder


def _alert(site, room, device, **extra):
    return {"id": str(uuid.uuid4()), "state": "raised", "site": site, "room": room, "device": device,
            "seat": "Table 1", "ts": protocol.now_ts(), "by": None, **extra}


def _event(site, room, device, type, **fields):
    return {"id": str(uuid.uuid4()), "type": type, "ts": protocol.now_ts(), "site": site, "room": room,
            "device": device, **fields}


class Recorder:
    def __init__(self):
        self.sent = []

    def __call__(self, topic, payload, qos, retain=False):
        self.sent.append(topic)


class World:
    """Two schools on one collector, with a record of every kind at each."""

    def __init__(self, store, tmp_path):
        from server.http.app import Settings, create_app

        self.store = store
        self.folder_a, self.folder_b = REPO / "config", make_school_b(tmp_path)
        self.tree_a, self.tree_b = load_tree(self.folder_a), load_tree(self.folder_b)
        self.publisher = Recorder()
        self.app = create_app(Settings(db_url="unused", config_dirs=(str(self.folder_a), str(self.folder_b))),
                              store=store, tree=[self.tree_a, self.tree_b], publisher=self.publisher)
        for role, name in STAFF.items():
            store.add_user(name, role, "not-used", sites={A: role})
        for role, name in B_STAFF.items():
            store.add_user(name, role, "not-used", sites={B: role})
        store.add_user(B_ONLY, "teacher", "not-used", display_name="Only At Hilltop", sites={B: "teacher"})
        store.add_user(DUAL, "dsl", "not-used", sites={A: "dsl", B: "teacher"})
        store.add_user(TRUST, "trust", "not-used", sites={"*": "trust"})
        for device, password in DEVICE_PASSWORDS.items():
            store.set_device_credentials(device, hash_password(password), by="test",
                                         site=B if device.startswith("hb-") else A, room="5b")
        rollouts = self.app.state.rollouts
        self.version_a = rollouts.publish(read_files(self.folder_a), STAFF["technician"], "first", site=A).version
        self.version_b = rollouts.publish(read_files(self.folder_b), B_STAFF["technician"], "first", site=B).version
        self.incident_a = self._school(A, "5b", A_DEVICE, A_CANARY_TEXT[0], A_CANARY_TEXT[1], STAFF["dsl"])
        self.incident_b = self._school(B, "5b", B_DEVICE, B_CANARY_TEXT[0], B_CANARY_TEXT[3], B_STAFF["dsl"],
                                       note=B_CANARY_TEXT[1], evidence=B_CANARY_TEXT[2], check=B_CANARY_TEXT[4])
        store.raise_device_alert("dark", "hb-1a-pi-01", "1a", "hb-1a-pi-01 silent", site=B)
        from server.devices import create_enrol_token

        create_enrol_token(store, "hb-5b-pi-02", B_STAFF["technician"], self.tree_b)
        # Escalation beyond the room and presence (issue 13): hilltop's 5b report was e-mailed
        # (one failed attempt), a pager and a dashboard tab watch hilltop's 5b.
        escalated = {"id": self.incident_b, "state": "escalated", "site": B, "room": "5b", "device": B_DEVICE}
        [delivery] = store.add_deliveries(escalated, "escalated", [("email", B_RECIPIENT)])
        store.record_attempt(delivery["id"], sent=False, error=B_DELIVERY_ERROR,
                             next_attempt_at=iso(datetime.now(timezone.utc) + timedelta(hours=1)))
        presence = self.app.state.presence
        presence.viewer_seconds = 24 * 3600  # the tab stays live for the whole test
        presence.listener("watch", protocol.parse_staff_topic(protocol.watch_topic(protocol.DEFAULT_PREFIX, B, "5b",
                                                                                   B_WATCHER)),
                          {"state": "watching", "ts": protocol.now_ts(), "client": "classroom-alerts"})
        presence.viewer_seen(B, "5b", B_VIEWER)
        self._record_b()
        self.publisher.sent.clear()  # the publishes' reload-config commands

    def _record_b(self) -> None:
        """Hilltop's issue 15 record and issue 16 request, each with a canary."""
        from agent.config import term_key
        from server.localtime import zone

        store, t = self.store, B_RECORD_TEXT
        self.concern_b = store.log_concern(site=B, room="5b", logged_by=B_STAFF["teacher"], what=t["concern"],
                                           device=B_DEVICE, url=f"https://{t['it_domain']}/", domain=t["it_domain"],
                                           tell_it=True)
        [item] = store.list_it_queue(B)
        self.it_item_b = item["id"]
        self.change_b = store.add_allowlist_change(site=B, kind="domains", reason="phonics games", source="proposal",
                                                   proposed_by=B_STAFF["technician"], key_stages=["ks1"],
                                                   add_domains=[t["allowlist"]])["id"]
        store.record_export(site=B, actor=B_STAFF["dsl"], kind="pupil", target=t["pupil"], format="pdf",
                            with_evidence=False, incidents=[self.incident_b])
        store.add_review(site=B, held_on="2026-09-10", attendees=[{"name": "Hilltop Head", "role": "headteacher"}],
                         findings=t["review"], actions="none", next_review="2027-09-10", recorded_by=B_STAFF["dsl"])
        term = term_key(self.tree_b.site.terms, datetime.now(zone(self.tree_b.site.timezone)).date())
        check = _event(B, "5b", B_DEVICE, "filter_check", user="tech", domain="check-b.example", ok=False)
        ask = _event(B, "5b", B_DEVICE, "unblock_request", domain=t["ask"], seat="Table 2", user="pupil")
        store.insert_events([
            check, ask,
            _event(B, "5b", B_DEVICE, "report_evidence", alert_id=self.incident_b, user=t["pupil"], minutes=10,
                   domains=[]),
            _event(B, "5b", B_DEVICE, "aup_accepted", user=t["aup_pupil"], term=term, key_stage="ks2"),
            _event(B, "5b", B_DEVICE, "login", user=t["login_pupil"]),
            _event(B, "5b", B_DEVICE, "bypass_process", user="pupil", name=t["guard"]),
            _event(B, "5b", B_DEVICE, "override_opened", domain=t["override"], by=B_STAFF["teacher"], minutes=20)])
        self.check_b, self.ask_b = check["id"], ask["id"]
        store.add_check_action(site=B, check_id=self.check_b, actor=B_STAFF["technician"], text=t["check_action"])
        self.test_b = store.start_filter_test(site=B, room="5b", device=B_DEVICE, domain="testfiltering.com",
                                              started_by=B_STAFF["technician"])["id"]
        store.record_filter_test(self.test_b, B, actor=B_STAFF["technician"], result="partial", details=t["test"])
        # Issue 16: a command to hilltop's 5b and a device's lock; a timetable and today's cover.
        store.add_room_command(str(uuid.uuid4()), B, "5b", [B_DEVICE], "message", B_STAFF["teacher"],
                               {"text": t["command"]})
        store.ingest([(protocol.Topic(protocol.DEFAULT_PREFIX, B, "5b", B_DEVICE, "event"),
                       _event(B, "5b", B_DEVICE, "lock", reason="staff", by=t["locked_by"]))])
        store.add_user(t["timetabled"], "teacher", "not-used", sites={B: "teacher"})
        store.replace_timetable(B, [{"day": day, "start_time": "00:00", "end_time": "23:59", "room": "5b",
                                     "staff": t["timetabled"], "period": "1", "label": "Y5 maths"}
                                    for day in range(7)], by=B_STAFF["office"], source=t["timetable_file"],
                                sha256="0" * 64)
        today = datetime.now(zone(self.tree_b.site.timezone)).date().isoformat()
        # Issue 15: the DSL holds the reported device (a hold is placed on an incident with no hold).
        self.hold_b = store.place_hold(store.get_incident(self.incident_b), B_STAFF["dsl"], t["hold"])["id"]
        self.cover_b = store.add_cover(B, today, "00:00", "23:59", "1a", B_STAFF["teacher"], by=B_STAFF["office"],
                                       note=t["cover_note"])

    def _school(self, site, room, device, outcome, blocked, dsl, note=None, evidence=None, check=None) -> str:
        store = self.store
        alert = _alert(site, room, device)
        store.record_alert(alert)
        store.record_status(site, room, device, {"state": "online", "ts": protocol.now_ts(),
                                                 "agent_version": "0.1.0", "config_version": "x"})
        events = [_event(site, room, device, "blocked", domain=blocked, profile="ks2", user="pupil")]
        if evidence:
            events.append(_event(site, room, device, "report_evidence", alert_id=alert["id"], minutes=10,
                                 domains=[{"domain": evidence, "ts": protocol.now_ts(), "count": 1}]))
        if check:
            events.append(_event(site, room, device, "filter_check", user="tech", domain=check, result="pass"))
        store.insert_events(events)
        store.update_incident(alert["id"], dsl, {"category": "cyberbullying", "status": "in-progress",
                                                 "outcome": outcome})
        if note:
            store.add_incident_action(alert["id"], dsl, "note", text=note)
        store.audit(dsl, "evidence.view", alert["id"], {"records": 1}, site=site)
        return alert["id"]

    # ------------------------------------------------------------------ callers

    def headers(self, name: str | None) -> dict:
        if name is None:
            return {}
        if name in DEVICE_PASSWORDS:
            creds = f"{name}:{DEVICE_PASSWORDS[name]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(creds).decode()}
        token = uuid.uuid4().hex
        self.store.add_session(token_hash(token), name, iso(datetime.now(timezone.utc) + timedelta(hours=1)))
        return {"Authorization": f"Bearer {token}"}

    def b_canaries(self) -> set[str]:
        """Strings that only hilltop's records contain."""
        return {*B_CANARY_TEXT, self.incident_b, B, B_SCHOOL, self.version_b, B_ONLY, "Only At Hilltop",
                *B_STAFF.values(), *(d for d in self.tree_b.device_ids()), B_RECIPIENT, B_DELIVERY_ERROR,
                B_WATCHER, B_VIEWER, *B_RECORD_TEXT.values(), self.concern_b, self.change_b, self.check_b,
                self.test_b, self.ask_b, self.it_item_b, self.cover_b, self.hold_b}

    def b_params(self) -> dict[str, str]:
        """A hilltop value for every path parameter a route may have."""
        return {"incident_id": self.incident_b, "alert_id": self.incident_b, "device_id": B_DEVICE,
                "device": B_DEVICE, "username": B_ONLY, "room": "5b", "room_id": "5b", "item_id": self.it_item_b,
                "change_id": self.change_b, "check_id": self.check_b, "test_id": self.test_b,
                "request_id": self.ask_b, "cover_id": self.cover_b, "hold_id": self.hold_b}

    def cover_day(self) -> str:
        from server.localtime import zone

        return datetime.now(zone(self.tree_b.site.timezone)).date().isoformat()

    def b_state(self) -> dict:
        """Everything hilltop holds that another school could try to change."""
        store = self.store
        incident = store.get_incident(self.incident_b)
        return {"incident": {k: v for k, v in incident.items() if k != "updated_at"},
                "rollouts": store.list_rollouts(site=B), "users": store.list_users(site=B),
                "tokens": store.list_enrol_tokens(site=B), "alerts": store.list_device_alerts(site=B),
                "deliveries": store.list_deliveries(site=B),
                "sessions": [store.memberships(n) for n in (B_ONLY, *B_STAFF.values())],
                "concern": store.get_concern(self.concern_b), "it_queue": store.list_it_queue(B),
                "allowlist": store.list_allowlist_changes(B), "exports": store.list_exports(B),
                "reviews": store.list_reviews(B), "checks": store.check_actions_for(B, [self.check_b]),
                "tests": store.list_filter_tests(B), "ask": store.unblock_request(self.ask_b, B),
                "incidents": sorted(i["id"] for i in store.list_incidents(site=B)),
                "audit": sorted((e["action"], e["target"] or "") for e in store.list_audit(sites=[B])),
                "commands": store.room_commands(B, "5b"), "locks": store.device_locks(B, "5b"),
                "timetable": store.timetable(B), "cover": store.covers(B, self.cover_day()),
                "holds": store.list_holds(B),
                "cmds": [t for t in self.publisher.sent if f"/{B}/" in t]}


@pytest.fixture
def world(store, tmp_path, monkeypatch):
    from server.web.pages import office, rooms

    monkeypatch.setattr(rooms, "STREAM_SECONDS", 0.2)  # a live stream ends by itself
    monkeypatch.setattr(office, "STREAM_SECONDS", 0.2)
    return World(store, tmp_path)


def _fill(path: str, params: dict) -> str:
    def value(m):
        name = m.group(1)
        if name not in params:
            raise AssertionError(f"{path}: no hilltop value for path parameter {{{name}}}; add one to "
                                 "World.b_params() (and a hilltop record it names) so the route is tested")
        return params[name]

    return re.sub(r"\{(\w+)(?::[^}]*)?\}", value, path)


def _call(client, world, method, path, headers, params):
    """(answer, the strings the request itself carried: path ids and body values)."""
    url = _fill(path, params)
    sent = [v for k, v in params.items() if "{" + k in path]
    if path == "/api/v1/config/diff":
        url += f"?to={world.version_b}"
        sent.append(world.version_b)
    key = (method, path)
    if path.startswith(API_PREFIX) or method == "GET":
        body = JSON_BODIES.get(key, {})
        if key == ("POST", "/api/v1/config/rollouts"):
            body = {"files": read_files(world.folder_b), "why": "from another school"}
            sent.append(B)  # its own site.yaml names the site
        sent += [v for v in body.values() if isinstance(v, str)]
        return client.request(method, url, headers=headers, json=body), sent
    form = FORM_BODIES.get(key, {})
    return client.request(method, url, headers=headers, data=form), sent + list(form.values())


def _scrub(text: str, sent: list[str]) -> str:
    # An error that repeats what the caller sent (404 "incident '...' not found") tells
    # them nothing new: leave out what the request itself carried.
    for value in sent:
        text = text.replace(value, "")
    return text


# --------------------------------------------------------------------------- the route inventory


def _every_route(app) -> set[tuple[str, str]]:
    """(method, path) of everything the app answers: API and page routes (_routes), plus
    plain Starlette routes and mounted apps (static files), however they were added."""
    from starlette.routing import Mount, Route

    found = {(m, p) for m, p, _ in _routes(app)}

    def walk(routes, prefix):
        for route in routes:
            if isinstance(route, Mount):
                inner = getattr(route, "routes", None) or []
                if inner:
                    walk(inner, prefix + route.path)
                else:
                    found.add(("GET", prefix + route.path + "/{path}"))
            elif isinstance(route, Route) and not hasattr(route, "dependant"):
                found.update((m, prefix + route.path) for m in (route.methods or {"GET"}) - {"HEAD", "OPTIONS"})

    walk(app.routes, "")
    return found


def test_every_route_is_reviewed_for_site_scoping(world):
    routes = _every_route(world.app)
    unreviewed = sorted(routes - set(SITE_SCOPE))
    assert unreviewed == [], ("routes with no reviewed site scoping: make each act in user.site only (404 for "
                              "another school's record), give its path parameters a hilltop value in "
                              "World.b_params(), then add it to SITE_SCOPE")
    assert sorted(set(SITE_SCOPE) - routes) == [], "SITE_SCOPE lists routes the app no longer has"


# --------------------------------------------------------------------------- route x role x site


def test_no_route_shows_or_changes_another_schools_records(world):
    """Every route, as every penny-acres role, the trust level and a penny-acres device,
    with hilltop's ids in the path: no hilltop canary in any answer, no answer naming a
    hilltop record succeeds, and nothing of hilltop's changes."""
    callers = {**{role: name for role, name in STAFF.items()}, "trust": TRUST, "device": A_DEVICE, None: None}
    canaries = world.b_canaries()
    params = world.b_params()
    before = world.b_state()
    checked: set[tuple[str, str]] = set()
    with TestClient(world.app, base_url="https://testserver") as client:
        for method, path, _ in _routes(world.app):
            named = {k: v for k, v in params.items() if "{" + k in path}
            for role, name in callers.items():
                r, sent = _call(client, world, method, path, world.headers(name), params)
                text = _scrub(r.text, sent)
                # The trust level sees every school's name and health (its config version),
                # and nothing else of it.
                allowed = {B, B_SCHOOL, world.version_b} if role == "trust" else set()
                leaked = sorted(c for c in canaries - allowed if c in text)
                assert not leaked, f"{method} {path} as {role} of {A} shows {B}'s {leaked}: {r.text[:300]}"
                names_b_record = any(k in ("incident_id", "alert_id", "device_id", "device", "username", "item_id",
                                           "change_id", "check_id", "test_id", "request_id", "cover_id",
                                           "hold_id")
                                     for k in named)
                if names_b_record:
                    assert not 200 <= r.status_code < 400, \
                        f"{method} {path} as {role} of {A} on {B}'s record answered {r.status_code}: {r.text[:300]}"
                checked.add((method, path))
    assert world.b_state() == before, f"{B}'s records changed"
    assert {k for k, scope in SITE_SCOPE.items() if scope != "collector"} <= checked
    # What a school's staff did is in their school's audit log (its DSL reads it), never
    # the collector-wide one (the trust level's).
    unsited = {(e["actor"], e["action"]) for e in world.store.list_audit(sites=[None], limit=10000)
               if e["actor"] in STAFF.values()}
    assert unsited == set(), f"audit entries of {A}'s staff written without their school: {sorted(unsited)}"


def test_positive_controls_each_school_sees_its_own(world):
    """The canaries are really reachable: hilltop's own staff see every one of them on the
    same routes, and penny-acres' DSL sees penny-acres' record (so the test above can fail)."""
    params = world.b_params()
    seen: set[str] = set()
    b_callers = [*B_STAFF.values(), B_ONLY]
    with TestClient(world.app, base_url="https://testserver") as client:
        for method, path, _ in _routes(world.app):
            if method != "GET":
                continue
            for name in b_callers:
                r = client.get(_fill(path, params) + (f"?to={world.version_b}" if path.endswith("/diff") else ""),
                               headers=world.headers(name))
                seen |= {c for c in world.b_canaries() if c in r.text}
        dsl_b = world.headers(B_STAFF["dsl"])
        seen |= {c for c in B_CANARY_TEXT
                 if c in client.get(f"/api/v1/incidents/{world.incident_b}/evidence", headers=dsl_b).text}
        # What a member of staff wrote in a concern is on its own incident (the DSL's record).
        seen |= {c for c in world.b_canaries()
                 if c in client.get(f"/api/v1/incidents/{world.concern_b}", headers=dsl_b).text}
        seen.add(B)  # the site id is in every hilltop record; checked below by name
        assert client.get("/api/v1/me", headers=dsl_b).json()["site"] == B
        dsl_a = world.headers(STAFF["dsl"])
        mine = client.get(f"/api/v1/incidents/{world.incident_a}", headers=dsl_a)
        assert mine.status_code == 200 and A_CANARY_TEXT[0] in mine.text
        assert A_CANARY_TEXT[1] in client.get("/api/v1/reports/weekly", headers=dsl_a).text
    missing = world.b_canaries() - seen
    assert missing == set(), f"hilltop's own staff never saw {missing}: the world lacks a record for it"


def test_same_room_id_in_two_schools_is_two_rooms(world):
    """penny-acres' 5b teacher sees penny-acres' 5b only, though hilltop's 5b lists her too."""
    with TestClient(world.app, base_url="https://testserver") as client:
        h = world.headers(STAFF["teacher"])
        ids = [i["id"] for i in client.get("/api/v1/incidents", headers=h).json()]
        assert ids == [world.incident_a]
        page = client.get("/rooms/5b", headers=h).text
        assert world.incident_a in page and world.incident_b not in page
        assert client.get(f"/api/v1/incidents/{world.incident_b}", headers=h).status_code == 404
        assert client.post(f"/api/v1/alerts/{world.incident_b}/ack", headers=h).status_code == 404
        assert not [t for t in world.publisher.sent if f"/{B}/" in t]


def test_cover_and_room_commands_stay_in_their_school(world):
    """The office of penny-acres cannot put hilltop's teacher on cover (nor learn the name is
    an account there); penny-acres' 5b lock reaches penny-acres' 5b devices only; hilltop's
    timetable gives its teacher hilltop's rooms, never penny-acres' room of the same id."""
    store = world.store
    with TestClient(world.app, base_url="https://testserver") as client:
        office = world.headers(STAFF["office"])
        form = {"room": "5b", "start": "00:00", "end": "23:59", "note": ""}
        r = client.post("/cover", headers=office, data={**form, "staff": B_STAFF["teacher"]})
        unknown = client.post("/cover", headers=office, data={**form, "staff": "no.such.person"})
        assert r.status_code == unknown.status_code == 422 and "staff: choose a member of staff" in r.text
        assert store.covers(A, world.cover_day()) == []
        assert client.post("/cover", headers=office, data={**form, "staff": STAFF["teacher"]},
                           follow_redirects=False).status_code == 303
        assert [c["staff"] for c in store.covers(A, world.cover_day())] == [STAFF["teacher"]]
        assert client.post(f"/cover/{world.cover_b}/remove", headers=office, data={}).status_code == 404
        sent = client.post("/api/v1/rooms/5b/lock", headers=world.headers(STAFF["teacher"]), json={"minutes": 1})
        assert sent.status_code == 200
        assert {d["device"] for d in sent.json()["devices"]} == {d.id for d in world.tree_a.rooms["5b"].devices}
        assert world.publisher.sent and not [t for t in world.publisher.sent if f"/{B}/" in t]
        audit = [e for e in store.list_audit(action="room.lock")]
        assert [e["site"] for e in audit] == [A]
        me = client.get("/api/v1/me", headers=world.headers(B_RECORD_TEXT["timetabled"])).json()
        assert me["site"] == B and me["rooms"] == ["5b"]


def test_live_room_stream_carries_only_its_own_schools_alerts(world):
    """The room page's event stream: an alert in hilltop's 5b never reaches penny-acres' 5b."""
    listener = next(fn for fn in world.app.state.listeners if getattr(fn, "is_live_feed", False))
    a_alert, b_alert = _alert(A, "5b", A_DEVICE), _alert(B, "5b", B_DEVICE)
    where = protocol.parse_topic
    with TestClient(world.app, base_url="https://testserver") as client:
        with client.stream("GET", "/rooms/5b/events", headers=world.headers(STAFF["teacher"])) as stream:
            lines = stream.iter_lines()
            for line in lines:  # the snapshot ends the opening
                if line.startswith("event: snapshot"):
                    break
            for alert in (b_alert, a_alert):
                topic = protocol.topic(protocol.DEFAULT_PREFIX, alert["site"], "5b", alert["device"], "alert")
                listener("alert", where(topic), alert)
            text = "\n".join(lines)
    assert a_alert["id"] in text and b_alert["id"] not in text


def _sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_office_board_shows_its_own_school_only(world, monkeypatch):
    """The office board of penny-acres: its own rooms, alerts and receivers; hilltop's open
    5b report, its pager and its dashboard tab never appear, on the page or in the live
    stream (alerts and presence of hilltop's 5b are not penny-acres' 5b)."""
    from server.web.pages import office

    monkeypatch.setattr(office, "STREAM_SECONDS", 3.0)  # long enough to hear what is sent below
    fan_out = list(world.app.state.listeners)  # presence, then the live feed (as serve.py)
    a_alert, b_alert = _alert(A, "1a", "1a-pi-01"), _alert(B, "5b", B_DEVICE)

    def heard(kind, where, data):
        for listener in fan_out:
            listener(kind, where, data)

    with TestClient(world.app, base_url="https://testserver") as client:
        h = world.headers(STAFF["office"])
        page = client.get("/office", headers=h).text
        assert world.incident_a in page and world.incident_b not in page
        assert B_WATCHER not in page and B_VIEWER not in page
        b_page = client.get("/office", headers=world.headers(B_STAFF["office"])).text
        assert world.incident_b in b_page and B_WATCHER in b_page and B_VIEWER in b_page  # the control
        with client.stream("GET", "/office/events", headers=h) as stream:
            lines = stream.iter_lines()
            for line in lines:  # the whole board opens the stream
                if line.startswith("event: board"):
                    break
            for alert in (b_alert, a_alert):
                topic = protocol.topic(protocol.DEFAULT_PREFIX, alert["site"], alert["room"], alert["device"],
                                       "alert")
                heard("alert", protocol.parse_topic(topic), alert)
            for site, room, who in ((B, "5b", "b.pager-2"), (A, "1a", "a.pager-1")):
                topic = protocol.watch_topic(protocol.DEFAULT_PREFIX, site, room, who)
                heard("watch", protocol.parse_staff_topic(topic), {"state": "watching", "ts": protocol.now_ts()})
            text = "\n".join(lines)
    events = _sse_events(text)
    assert [d["id"] for k, d in events if k == "alert"] == [a_alert["id"]]
    assert [(d["room"], [r["who"] for r in d["receivers"]]) for k, d in events if k == "room"] == \
        [("1a", ["a.pager-1"])]
    assert b_alert["id"] not in text and "b.pager-2" not in text and B_WATCHER not in text


def test_escalations_go_to_each_schools_own_contacts(store, tmp_path):
    """One notifier for two schools: each report is e-mailed to its own school's contacts
    (hilltop's DSL never hears of penny-acres' reports, nor the reverse), in its own school's
    name; a webhook limited to hilltop gets hilltop's only; a teacher watching penny-acres' 5b
    does not make hilltop's 5b watched."""
    import yaml

    from notify_fixtures import CONTACT_EMAILS, notify_tree_dir
    from server.notify import Notifier
    from server.notify.settings import NotifySettings, Smtp, Webhook
    from server.presence import Presence
    from server.sites import Sites

    folder_a = notify_tree_dir(tmp_path / "a", REPO)
    folder_b = make_school_b(tmp_path)
    site_b = folder_b / "site.yaml"
    data = yaml.safe_load(site_b.read_text())
    b_emails = {"dsl": "dsl@hilltop.test", "office": "office@hilltop.test"}
    for contact in data["escalation"]["contacts"]:
        contact["email"] = b_emails[contact["role"]]
    site_b.write_text(yaml.safe_dump(data, sort_keys=False))
    sites = Sites([load_tree(folder_a), load_tree(folder_b)])

    class Channel:
        def __init__(self):
            self.sent = []

        def send(self, recipient, notice):
            self.sent.append((recipient, notice.site, notice.school, notice.reason))

    email, hooks = Channel(), Channel()
    settings = NotifySettings(smtp=Smtp(host="127.0.0.1", port=25, starttls=False, sender="safety@trust.test"),
                              webhooks=(Webhook("trust-all", "http://127.0.0.1:9/all"),
                                        Webhook("hilltop-teams", "http://127.0.0.1:9/b", sites=(B,))))
    school_time = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)  # a Tuesday in term, 10:00
    presence = Presence(store, clock=lambda: school_time)
    notifier = Notifier(store, settings, lambda: sites, presence, clock=lambda: school_time, email=email,
                        webhooks=hooks)
    watch = protocol.parse_staff_topic(protocol.watch_topic(protocol.DEFAULT_PREFIX, A, "5b", "m.khan"))
    presence.listener("watch", watch, {"state": "watching", "ts": protocol.now_ts()})
    a_raised, b_raised = _alert(A, "5b", A_DEVICE), _alert(B, "5b", B_DEVICE)
    for alert in (a_raised, b_raised):
        store.record_alert(alert)
        notifier.listener("alert", None, alert)
    notifier.run_once(school_time)
    # Penny-acres' 5b is watched: nothing leaves.  Hilltop's 5b is not: its office and DSL at once.
    assert store.list_deliveries(site=A) == []
    assert sorted(email.sent) == sorted((addr, B, B_SCHOOL, "unwatched") for addr in b_emails.values())
    assert sorted(hooks.sent) == [("hilltop-teams", B, B_SCHOOL, "unwatched"), ("trust-all", B, B_SCHOOL, "unwatched")]
    email.sent.clear(), hooks.sent.clear()

    a_escalated = {**a_raised, "state": "escalated", "ts": protocol.now_ts()}
    store.record_alert(a_escalated)
    notifier.listener("alert", None, a_escalated)
    notifier.run_once(school_time)
    assert sorted(r for r, *_ in email.sent) == sorted(CONTACT_EMAILS.values())
    assert {(site, school) for _, site, school, _ in email.sent} == {(A, "Penny Acres Primary School")}
    assert hooks.sent == [("trust-all", A, "Penny Acres Primary School", "escalated")]
    assert {d["recipient"] for d in store.list_deliveries(site=B)} == {*b_emails.values(), "trust-all",
                                                                       "hilltop-teams"}


def test_each_schools_term_report_and_aup_list_count_its_own(world):
    """Counts carry no canary: the term report and the AUP list of each school count its own
    records only (hilltop has a report and a concern, penny-acres a report)."""
    with TestClient(world.app, base_url="https://testserver") as client:
        a = client.get("/api/v1/reports/term", headers=world.headers(STAFF["dsl"])).json()
        b = client.get("/api/v1/reports/term", headers=world.headers(B_STAFF["dsl"])).json()
        assert (a["school"], a["incidents"], a["concerns"]) == ("Penny Acres Primary School", 1, 0)
        assert (b["school"], b["incidents"], b["concerns"]) == (B_SCHOOL, 2, 1)
        a_aup = client.get("/api/v1/aup", headers=world.headers(STAFF["dsl"])).json()
        b_aup = client.get("/api/v1/aup", headers=world.headers(B_STAFF["dsl"])).json()
        assert a_aup["accepted"] == [] and B_RECORD_TEXT["login_pupil"] not in json.dumps(a_aup)
        assert [r["user_name"] for r in b_aup["accepted"]] == [B_RECORD_TEXT["aup_pupil"]]
        # A device reads its own school's list, from its own school's tree.
        mine = client.get(f"/api/v1/devices/{B_DEVICE}/aup", headers=world.headers(B_DEVICE))
        assert mine.status_code == 200 and B_RECORD_TEXT["aup_pupil"] in mine.json()["accepted"]
        assert client.get(f"/api/v1/devices/{A_DEVICE}/aup", headers=world.headers(A_DEVICE)).json()["accepted"] == {}


def test_guard_check_and_adult_concern_messages_go_to_their_own_schools_contacts(store, tmp_path):
    """Issue 15's messages on one notifier for two schools: a bypass tool at penny-acres goes
    to penny-acres' DSL, a failed check at hilltop to hilltop's, a concern about an adult at
    hilltop to hilltop's headteacher only; a webhook limited to hilltop hears only hilltop."""
    import yaml

    from notify_fixtures import CONTACT_EMAILS, notify_tree_dir
    from server.notify import Notifier
    from server.notify.events import EventNotices
    from server.notify.settings import NotifySettings, Smtp, Webhook
    from server.presence import Presence
    from server.sites import Sites

    folder_a = notify_tree_dir(tmp_path / "a", REPO)
    folder_b = make_school_b(tmp_path)
    data = yaml.safe_load((folder_b / "site.yaml").read_text())
    b_emails = {"dsl": "dsl@hilltop.test", "office": "office@hilltop.test", "headteacher": "head@hilltop.test"}
    for contact in data["escalation"]["contacts"]:
        contact["email"] = b_emails[contact["role"]]
    data["escalation"]["contacts"].append({"name": "Hilltop Head", "role": "headteacher",
                                           "email": b_emails["headteacher"]})
    (folder_b / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    sites = Sites([load_tree(folder_a), load_tree(folder_b)])

    class Channel:
        def __init__(self):
            self.sent = []

        def send(self, recipient, notice):
            self.sent.append((recipient, notice.school, notice.reason))

    email, hooks = Channel(), Channel()
    settings = NotifySettings(smtp=Smtp(host="127.0.0.1", port=25, starttls=False, sender="safety@trust.test"),
                              webhooks=(Webhook("trust-all", "http://127.0.0.1:9/all"),
                                        Webhook("hilltop-teams", "http://127.0.0.1:9/b", sites=(B,))))
    notifier = Notifier(store, settings, lambda: sites, Presence(store), email=email, webhooks=hooks)
    notices = EventNotices(store, settings, lambda: sites, wake=notifier.poke)
    notifier.sources.append(notices)
    a_tool = _event(A, "5b", A_DEVICE, "bypass_process", name="tor", user="pupil")
    b_fail = _event(B, "5b", B_DEVICE, "filter_check", by="nightly", ok=False,
                    results=[{"domain": "facebook.com", "expect": "blocked", "result": "fail"}])
    store.insert_events([a_tool, b_fail])
    for event in (a_tool, b_fail):
        notices.listener("event", None, event)
    notifier.run_once()
    a_school = "Penny Acres Primary School"
    assert sorted(email.sent) == sorted([(CONTACT_EMAILS["dsl"], a_school, "guard"),
                                         (b_emails["dsl"], B_SCHOOL, "filter-check")])
    assert sorted(hooks.sent) == sorted([("trust-all", a_school, "guard"), ("trust-all", B_SCHOOL, "filter-check"),
                                         ("hilltop-teams", B_SCHOOL, "filter-check")])
    email.sent.clear(), hooks.sent.clear()

    concern = store.log_concern(site=B, room="5b", logged_by=B_STAFF["teacher"], what="about an adult",
                                category="concern-about-adult")
    assert [d["recipient"] for d in notices.adult_concern(store.get_incident(concern))] == [b_emails["headteacher"]]
    notifier.run_once()
    assert email.sent == [(b_emails["headteacher"], B_SCHOOL, "adult-concern")] and hooks.sent == []


def test_high_risk_attempts_are_judged_and_told_by_their_own_school(store, tmp_path):
    """High-risk blocked attempts on a collector of two schools: each attempt counts only if a
    risk list of its own school notifies, and goes to its own school's DSL and the webhooks
    serving that school (hilltop does not notify self-harm; penny-acres does)."""
    import yaml

    from notify_fixtures import CONTACT_EMAILS, notify_tree_dir
    from server.notify import Notifier, RiskNotices
    from server.notify.settings import NotifySettings, Smtp, Webhook
    from server.presence import Presence
    from server.sites import Sites

    folder_a = notify_tree_dir(tmp_path / "a", REPO)
    folder_b = make_school_b(tmp_path)
    data = yaml.safe_load((folder_b / "site.yaml").read_text())
    for contact in data["escalation"]["contacts"]:
        contact["email"] = f"{contact['role']}@hilltop.test"
    for risk in data["filtering"]["risk_lists"]:
        if risk["id"] == "self-harm":
            risk["notify"] = False
    (folder_b / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    sites = Sites([load_tree(folder_a), load_tree(folder_b)])

    class Channel:
        def __init__(self):
            self.sent = []

        def send(self, recipient, notice):
            self.sent.append((recipient, notice.school, notice.site))

    email, hooks = Channel(), Channel()
    settings = NotifySettings(smtp=Smtp(host="127.0.0.1", port=25, starttls=False, sender="safety@trust.test"),
                              webhooks=(Webhook("trust-all", "http://127.0.0.1:9/all"),
                                        Webhook("hilltop-teams", "http://127.0.0.1:9/b", sites=(B,))))
    notifier = Notifier(store, settings, lambda: sites, Presence(store), email=email, webhooks=hooks)
    notifier.sources.append(RiskNotices(store, settings, lambda: sites))
    store.insert_events([
        _event(A, "5b", A_DEVICE, "blocked", domain="selfharm-a.example", profile="ks2", category="self-harm"),
        _event(B, "5b", B_DEVICE, "blocked", domain="selfharm-b.example", profile="ks2", category="self-harm"),
        _event(B, "1a", "hb-1a-pi-01", "blocked", domain="adult-b.example", profile="ks1", category="adult")])
    notifier.run_once()
    a_school = "Penny Acres Primary School"
    assert sorted(email.sent) == sorted([(CONTACT_EMAILS["dsl"], a_school, A), ("dsl@hilltop.test", B_SCHOOL, B)])
    assert sorted(hooks.sent) == sorted([("trust-all", a_school, A), ("trust-all", B_SCHOOL, B),
                                         ("hilltop-teams", B_SCHOOL, B)])
    assert [d["device"] for d in store.list_deliveries(site=B)] == ["hb-1a-pi-01"] * 3


def test_the_nightly_filter_check_runs_each_schools_night(store, tmp_path):
    """Each school's devices are asked at its own night, once, audited in its own school; a
    failure raises the technician's alert at the device's own school."""
    from server.filtercheck import NightlyCheck
    from server.sites import Sites

    folder_b = make_school_b(tmp_path)
    site_b = folder_b / "site.yaml"
    site_b.write_text(site_b.read_text().replace("timezone: Europe/London", "timezone: Asia/Tokyo"))
    tree_a, tree_b = load_tree(REPO / "config"), load_tree(folder_b)
    assert tree_b.site.timezone == "Asia/Tokyo"
    sent = []
    nightly = NightlyCheck(store, lambda: Sites([tree_a, tree_b]), lambda *a: sent.append(a[0]),
                           lambda: protocol.DEFAULT_PREFIX, hour=2)
    after_tokyo_night = datetime(2026, 11, 24, 0, 30, tzinfo=timezone.utc)  # 09:30 in Tokyo, 00:30 in London
    assert nightly.run(after_tokyo_night) == len(tree_b.device_ids())
    assert sent and all(f"/{B}/" in topic for topic in sent)
    assert nightly.run(after_tokyo_night) == 0  # hilltop's night is done; penny-acres' has not come
    london_night = after_tokyo_night + timedelta(hours=2)  # 02:30 in London
    assert nightly.run(london_night) == len(tree_a.device_ids())
    runs = store.list_audit(action="filter.nightly")
    assert sorted((e["site"], e["target"]) for e in runs) == [(B, f"{B}:2026-11-24"), (A, f"{A}:2026-11-24")]
    b_fail = _event(B, "5b", B_DEVICE, "filter_check", by="nightly", ok=False,
                    results=[{"domain": "facebook.com", "expect": "blocked", "result": "fail"}])
    nightly.listener("event", None, b_fail)
    assert [a["device"] for a in store.list_device_alerts(site=B)] == [B_DEVICE]
    assert store.list_device_alerts(site=A) == []


def test_switching_school_changes_everything_a_request_sees(world):
    """j.dual is the DSL at penny-acres and a teacher at hilltop: one school at a time."""
    with TestClient(world.app, base_url="https://testserver") as client:
        h = world.headers(DUAL)
        me = client.get("/api/v1/me", headers=h).json()
        assert me["site"] == "hilltop" and me["role"] == "teacher"  # the first school, by id
        assert {(s["site"], s["role"]) for s in me["sites"]} == {(A, "dsl"), (B, "teacher")}
        seen = client.get(f"/api/v1/incidents/{world.incident_b}", headers=h).json()
        assert "outcome" not in seen and B_CANARY_TEXT[0] not in json.dumps(seen)  # a teacher's view there
        assert client.get(f"/api/v1/incidents/{world.incident_a}", headers=h).status_code == 404
        assert client.get(f"/api/v1/incidents/{world.incident_b}/evidence", headers=h).status_code == 403
        assert client.post("/api/v1/site", json={"site": A}, headers=h).json()["role"] == "dsl"
        assert client.get(f"/api/v1/incidents/{world.incident_a}/evidence", headers=h).status_code == 200
        assert client.get(f"/api/v1/incidents/{world.incident_b}", headers=h).status_code == 404
        assert client.post("/api/v1/site", json={"site": "elsewhere"}, headers=h).status_code == 404
        assert client.post("/api/v1/site", json={"site": "*"}, headers=h).status_code == 404
        # The dashboard's switcher: a form in the header, back to the right home page.
        page = client.get("/incidents", headers=h).text
        assert 'id="site-switcher"' in page and B_SCHOOL in page
        r = client.post("/site", data={"site": B}, headers=h, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/rooms")


def test_trust_level_sees_totals_and_health_not_records(world):
    with TestClient(world.app, base_url="https://testserver") as client:
        h = world.headers(TRUST)
        health = {row["site"]: row for row in client.get("/api/v1/trust/health", headers=h).json()}
        assert set(health) == {A, B}
        assert health[B]["school"] == B_SCHOOL and health[B]["online"] == 1 and health[B]["dark"] == 1
        # Hilltop's incidents: the 5b report and the concern a teacher logged (not an open alert).
        assert health[B]["incidents"] == 2 and health[B]["devices"] == len(world.tree_b.device_ids())
        assert health[A]["config_version"] == world.version_a and health[B]["config_version"] == world.version_b
        # The office boards' totals: hilltop's 5b report is open and its 5b is watched; nobody
        # watches a penny-acres room.  Counts only: no room, seat or watcher (checked below).
        assert (health[A]["open_alerts"], health[B]["open_alerts"]) == (1, 1)
        assert health[B]["unwatched_rooms"] == len(world.tree_b.rooms) - 1
        assert health[A]["unwatched_rooms"] == len(world.tree_a.rooms)
        text = json.dumps(health) + client.get("/trust", headers=h).text
        for secret in (*B_CANARY_TEXT, *A_CANARY_TEXT, world.incident_a, world.incident_b, B_DEVICE, A_DEVICE,
                       "Table 1", "Year 5 Beech", STAFF["teacher"], B_WATCHER, B_VIEWER, B_RECIPIENT,
                       *B_RECORD_TEXT.values()):
            assert secret not in text
        for path in ("/api/v1/incidents", "/api/v1/devices", "/api/v1/reports/weekly", "/api/v1/users",
                     "/incidents", "/rooms", "/office", "/office/events", "/deliveries", "/api/v1/deliveries",
                     "/api/v1/guard-events", "/api/v1/it-queue", "/api/v1/allowlist/changes", "/api/v1/exports",
                     "/api/v1/reviews", "/api/v1/checks", "/api/v1/aup", "/api/v1/reports/term",
                     "/api/v1/rooms/5b/unblock-requests", "/guard", "/reports/term", "/aup"):
            assert client.get(path, headers=h).status_code == 403, path
        # Its audit log is the collector-wide one: failed logins, not a school's record.
        world.store.audit("nobody", "login.failed", None, {"via": "api"})
        actions = {e["action"] for e in client.get("/api/v1/audit", headers=h).json()}
        assert actions == {"login.failed"}
        # A school's DSL reads its own school's entries only.
        b_dsl = client.get("/api/v1/audit", headers=world.headers(B_STAFF["dsl"])).json()
        assert b_dsl and all(e["site"] == B for e in b_dsl)


def test_sign_ins_are_audited_in_their_accounts_school(world):
    """A school's DSL sees its staff's sign-ins, failures and logouts; a name that is no
    account stays collector-wide (the trust level's); another school sees none of them."""
    store = world.store
    password = "correct horse battery staple"
    store.update_user(B_STAFF["teacher"], password_hash=hash_password(password))
    with TestClient(world.app, base_url="https://testserver") as client:
        assert client.post("/api/v1/login", json={"username": B_STAFF["teacher"], "password": "wrong"}).status_code == 401
        r = client.post("/api/v1/login", json={"username": B_STAFF["teacher"], "password": password})
        assert r.status_code == 200
        client.post("/api/v1/logout", headers={"Authorization": f"Bearer {r.json()['token']}"})
        assert client.post("/api/v1/login", json={"username": "no.such.person", "password": "x"}).status_code == 401

        def actions(name):
            return [(e["action"], e["actor"]) for e in client.get("/api/v1/audit", headers=world.headers(name)).json()
                    if e["action"] in ("login", "login.failed", "logout")]

        assert sorted(actions(B_STAFF["dsl"])) == sorted([("login.failed", B_STAFF["teacher"]),
                                                         ("login", B_STAFF["teacher"]),
                                                         ("logout", B_STAFF["teacher"])])
        assert actions(STAFF["dsl"]) == []
        assert ("login.failed", "no.such.person") in actions(TRUST)
        assert B_STAFF["teacher"] not in json.dumps(actions(TRUST))


def test_devices_fetch_their_own_schools_config(world):
    with TestClient(world.app, base_url="https://testserver") as client:
        r = client.get(f"/api/v1/devices/{B_DEVICE}/config", headers=world.headers(B_DEVICE))
        assert r.status_code == 200 and r.json()["site"]["site"] == B and r.headers["etag"] == f'"{world.version_b}"'
        r = client.get(f"/api/v1/devices/{A_DEVICE}/config", headers=world.headers(A_DEVICE))
        assert r.json()["site"]["site"] == A and r.headers["etag"] == f'"{world.version_a}"'
        assert client.get(f"/api/v1/devices/{B_DEVICE}/config", headers=world.headers(A_DEVICE)).status_code == 403


def test_rollout_is_per_school(world):
    """Each school has its own live version and history; a tree for another school, or one
    reusing another school's device id, is refused; the rollout view shows each school's."""
    with TestClient(world.app, base_url="https://testserver") as client:
        tech_a = world.headers(STAFF["technician"])
        status = client.get("/api/v1/config/status", headers=tech_a).json()
        assert status["site"] == A and status["live"] == world.version_a
        assert [r["version"] for r in client.get("/api/v1/config/rollouts", headers=tech_a).json()] == \
            [world.version_a]
        r = client.post("/api/v1/config/rollouts", headers=tech_a,
                        json={"files": read_files(world.folder_b), "why": "wrong school"})
        assert r.status_code == 403 and "hilltop" in r.text  # the technician's own files named it
        clash = read_files(world.folder_a)
        clash["rooms/5b.yaml"] = clash["rooms/5b.yaml"].replace("id: 5b-pi-02", f"id: {B_DEVICE}")
        r = client.post("/api/v1/config/rollouts", headers=tech_a, json={"files": clash, "why": "clash"})
        assert r.status_code == 409 and "another school" in r.text and B not in r.text
        page = client.get("/rollout", headers=world.headers(B_STAFF["technician"])).text
        assert world.version_b in page and world.version_a not in page and B_DEVICE in page
    assert world.app.state.sites.tree(B).version == world.version_b


def test_school_admin_manages_only_their_schools_accounts(world):
    with TestClient(world.app, base_url="https://testserver") as client:
        admin_a = world.headers(STAFF["admin"])
        names = {u["username"] for u in client.get("/api/v1/users", headers=admin_a).json()}
        assert names == {*STAFF.values(), DUAL}
        assert client.patch(f"/api/v1/users/{B_ONLY}", json={"disabled": True}, headers=admin_a).status_code == 404
        # j.dual also belongs to hilltop: penny-acres may change its role there, or take it
        # off, but not disable the account or set its password for both schools.
        assert client.patch(f"/api/v1/users/{DUAL}", json={"disabled": True}, headers=admin_a).status_code == 403
        assert client.patch(f"/api/v1/users/{DUAL}", json={"role": "teacher"}, headers=admin_a).status_code == 200
        assert world.store.memberships(DUAL) == {A: "teacher", B: "teacher"}
        assert client.patch(f"/api/v1/users/{DUAL}", json={"remove": True}, headers=admin_a).status_code == 200
        assert world.store.memberships(DUAL) == {B: "teacher"}
        r = client.post("/api/v1/users", headers=admin_a, json={"username": "new.a", "role": "trust",
                                                                "password": "x" * 12})
        assert r.status_code == 400  # the trust level is not a school's to give
        r = client.post("/api/v1/users", headers=admin_a, json={"username": "new.a", "role": "dsl",
                                                                "password": "x" * 12})
        assert r.status_code == 201 and world.store.memberships("new.a") == {A: "dsl"}


# --------------------------------------------------------------------------- migration (SQLite and PostgreSQL)

V1_REPORT_RUNS = """CREATE TABLE IF NOT EXISTS report_runs (
    week TEXT NOT NULL PRIMARY KEY,
    ts TEXT NOT NULL,
    path TEXT NOT NULL,
    emailed INTEGER NOT NULL DEFAULT 0
)"""


def _v1_database(url: str, tree) -> None:
    """A collector database as it was before tenancy (schema version 1), with a school's
    accounts, a published config, a dark-device alert, a digest run and audit entries."""
    from server.store import schema
    from server.store.engine import connect

    v1 = schema.SCHEMA.split("-- tenancy:")[0]
    v1 = re.sub(r"CREATE TABLE IF NOT EXISTS report_runs \(.*?\n\);", V1_REPORT_RUNS + ";", v1, flags=re.S)
    tree_json = json.dumps(tree.to_dict(), sort_keys=True, separators=(",", ":"))
    now = protocol.now_ts()

    def run(tx):
        for statement in schema.split_sql(v1):
            tx.execute(statement)
        tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (1, ?)", (now,))
        for name, role in (("s.patel", "dsl"), ("head", "admin"), ("m.khan", "teacher")):
            tx.execute("INSERT INTO users (username, role, display_name, password_hash, created_at) "
                       "VALUES (?, ?, NULL, ?, ?)", (name, role, hash_password("correct horse battery staple"), now))
        tx.execute("INSERT INTO config_versions (version, tree, files, created_at, created_by) VALUES (?, ?, '{}', ?, "
                   "'tech')", (tree.version, tree_json, now))
        tx.execute("INSERT INTO rollouts (id, seq, ts, version, previous, kind, actor, why, devices) "
                   "VALUES ('r1', 1, ?, ?, NULL, 'publish', 'tech', 'first', 6)", (now, tree.version))
        tx.execute("INSERT INTO device_alerts (id, kind, device, room, message, raised_at) "
                   "VALUES ('d1', 'dark', '1a-pi-01', '1a', 'silent', ?)", (now,))
        tx.execute("INSERT INTO report_runs (week, ts, path, emailed) VALUES ('2026-W47', ?, '/r/w.html', 1)", (now,))
        tx.execute("INSERT INTO audit (id, ts, actor, action, target, details) "
                   "VALUES ('a1', ?, 's.patel', 'evidence.view', 'x', NULL)", (now,))

    engine = connect(url)
    try:
        engine.write(run)
    finally:
        engine.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_single_school_database_from_before_tenancy_keeps_working(backend, tmp_path, request):
    """Migration: an existing single-school database needs no setup.  Its accounts get the
    one school with the role they had, its rows get the site, and staff log in as before."""
    from server.http.app import Settings, create_app
    from server.store import Store

    tree = load_tree(REPO / "config")
    url = (f"sqlite:///{tmp_path}/old.db" if backend == "sqlite"
           else request.getfixturevalue("postgres").new_database("v1"))
    _v1_database(url, tree)
    store = Store.open(url)
    try:
        assert store.schema_version == 3  # 2: the risk list column (issue 15), 3: tenancy
        assert store.memberships("s.patel") == {}  # nothing assumed before the collector knows its school
        app = create_app(Settings(db_url="unused"), store=store, tree=None)  # no --config: the published tree
        assert app.state.sites.ids() == [A]
        assert {n: store.memberships(n) for n in ("s.patel", "head", "m.khan")} == \
            {"s.patel": {A: "dsl"}, "head": {A: "admin"}, "m.khan": {A: "teacher"}}
        assert store.current_rollout(A)["version"] == tree.version
        assert [a["device"] for a in store.list_device_alerts(site=A)] == ["1a-pi-01"]
        assert store.report_weeks_done(A) == {"2026-W47"}
        with TestClient(app, base_url="https://testserver") as client:
            r = client.post("/api/v1/login", json={"username": "s.patel", "password": "correct horse battery staple"})
            assert r.status_code == 200 and r.json()["user"]["role"] == "dsl" and r.json()["user"]["site"] == A
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            # The school's audit log from before tenancy is still the DSL's to read.
            assert "evidence.view" in {e["action"] for e in client.get("/api/v1/audit", headers=h).json()}
            assert client.get("/api/v1/config/rollouts", headers=world_headers(client, "head")).json()[0]["site"] == A
        # An account added later from the command line (no --site) belongs to the one school too.
        store.add_user("new.t", "teacher", hash_password("another good passphrase"))
        with TestClient(app, base_url="https://testserver") as client:
            r = client.post("/api/v1/login", json={"username": "new.t", "password": "another good passphrase"})
            assert r.json()["user"] == {**r.json()["user"], "role": "teacher", "site": A}
    finally:
        store.close()


def world_headers(client, name: str) -> dict:
    r = client.post("/api/v1/login", json={"username": name, "password": "correct horse battery staple"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


# --------------------------------------------------------------------------- background work per school


def test_retention_and_digest_run_per_school(store, tmp_path):
    """Each school's retention periods apply to its own rows only, and each school gets its
    own weekly digest (its own rows) in its own folder."""
    from server import reports
    from server.retention import Retention
    from server.sites import Sites

    folder_b = make_school_b(tmp_path)
    site_b = folder_b / "site.yaml"
    site_b.write_text(site_b.read_text().replace("blocked_days: 90", "blocked_days: 10"))
    sites = Sites([load_tree(REPO / "config"), load_tree(folder_b)])
    now = datetime(2026, 11, 30, 7, 30, tzinfo=timezone.utc)  # a Monday morning
    old = iso(now - timedelta(days=30))
    last_week = iso(now - timedelta(days=3))
    store.insert_events([_event(A, "5b", A_DEVICE, "blocked", domain="a-old.example", ts=old),
                         _event(B, "5b", B_DEVICE, "blocked", domain="b-old.example", ts=old),
                         _event(A, "5b", A_DEVICE, "blocked", domain=A_CANARY_TEXT[1], ts=last_week),
                         _event(B, "5b", B_DEVICE, "blocked", domain=B_CANARY_TEXT[3], ts=last_week)])
    done = Retention(store, lambda: sites).run(now)
    assert done["blocked_events"] == 1
    assert {e["domain"] for e in store.events(type="blocked")} == {"a-old.example", A_CANARY_TEXT[1],
                                                                    B_CANARY_TEXT[3]}
    purges = [e for e in store.list_audit(action="retention.purge") if e["target"] == "blocked_events"]
    assert [e["site"] for e in purges] == [B]

    scheduler = reports.DigestScheduler(store, tmp_path / "reports", lambda: sites, clock=lambda: now,
                                        smtp=reports.SmtpSettings())
    scheduler.run_once()
    a_html = (tmp_path / "reports" / A / "weekly-2026-W48.html").read_text()
    b_html = (tmp_path / "reports" / B / "weekly-2026-W48.html").read_text()
    assert A_CANARY_TEXT[1] in a_html and B_CANARY_TEXT[3] not in a_html
    assert B_CANARY_TEXT[3] in b_html and A_CANARY_TEXT[1] not in b_html
    assert store.report_weeks_done(A) == store.report_weeks_done(B) == {"2026-W48"}
    assert scheduler.run_once() is None  # once per school and week


def test_each_schools_digest_mails_only_its_own_recipients():
    from server.reports import SmtpSettings

    smtp = SmtpSettings.from_env({"CLASSROOM_SMTP_HOST": "mail", "CLASSROOM_SMTP_TO": "everyone@trust.example",
                                  "CLASSROOM_SMTP_TO_HILLTOP": "dsl@hilltop.example"})
    assert smtp.for_site(B).to == ("dsl@hilltop.example",) and smtp.for_site(B).enabled
    assert smtp.for_site(A).to == () and not smtp.for_site(A).enabled


# --------------------------------------------------------------------------- the command line and serve


def test_cli_manages_accounts_across_schools(tmp_path, capsys):
    """user add/grant/revoke/disable/list: --site is needed once the database knows two schools."""
    from server.rollout import Rollouts
    from server.store import Store
    from test_auth import run_cli

    db = f"sqlite:///{tmp_path}/s.db"
    pw = "a good long passphrase\n"
    assert run_cli(["user", "add", "first", "--role", "dsl", "--db", db], stdin=pw) == 0  # no school known yet
    store = Store.open(db)
    try:
        assert store.memberships("first") == {}  # serve gives it the one school when it starts
        ro = Rollouts(store)
        ro.publish(read_files(REPO / "config"), "cli", "first", site=A)
        assert run_cli(["user", "add", "second", "--role", "teacher", "--db", db], stdin=pw) == 0
        assert store.memberships("second") == {A: "teacher"}  # the one school the database knows
        ro.publish(read_files(make_school_b(tmp_path)), "cli", "first", site=B)
        assert run_cli(["user", "add", "third", "--role", "teacher", "--db", db], stdin=pw) == 1
        assert "--site: this collector serves several schools (hilltop, penny-acres)" in capsys.readouterr().err
        assert run_cli(["user", "add", "third", "--role", "teacher", "--site", B, "--db", db], stdin=pw) == 0
        assert run_cli(["user", "grant", "third", "--role", "dsl", "--site", A, "--db", db]) == 0
        assert run_cli(["user", "add", "it", "--role", "trust", "--sso-only", "--db", db]) == 0
        assert run_cli(["user", "grant", "third", "--role", "trust", "--site", A, "--db", db]) == 1
        assert store.memberships("third") == {A: "dsl", B: "teacher"} and store.memberships("it") == {"*": "trust"}
        assert store.get_user("it")["password_hash"] == ""
        assert run_cli(["user", "revoke", "third", "--site", B, "--db", db]) == 0
        assert run_cli(["user", "disable", "third", "--db", db]) == 0
        assert store.get_user("third")["disabled"] == 1 and store.memberships("third") == {A: "dsl"}
        capsys.readouterr()
        assert run_cli(["user", "list", "--site", A, "--db", db]) == 0
        out = capsys.readouterr().out
        assert re.search(r"third\s+penny-acres \(dsl\)\s+never\s+disabled", out)
        assert "it " not in out and "first" not in out  # --site: that school's accounts only
    finally:
        store.close()


@pytest.mark.integration
def test_serve_runs_two_schools_from_two_config_folders(tmp_path):
    import sys
    import urllib.request
    from pathlib import Path

    from services import free_port, spawn, terminate, wait_until

    cli = str(Path(sys.executable).parent / "classroom-server")
    folder_b = make_school_b(tmp_path)
    db = f"sqlite:///{tmp_path}/s.db"
    same = subprocess_run([cli, "serve", "--config", str(REPO / "config"), "--config", str(REPO / "config"),
                           "--db", db])
    assert same.returncode == 1 and "site 'penny-acres' is already given by --config" in same.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn([cli, "serve", "--config", str(REPO / "config"), "--config", str(folder_b), "--db", db,
                  "--port", str(port), "--plain-http"], log_path=log, cwd=str(REPO))
    try:
        wait_until(lambda: "Uvicorn running" in log.read_text(), 30, message=lambda: log.read_text())
        from server.store import Store

        store = Store.open(db)
        try:
            add_staff(store, "b.dsl", "dsl", site=B)
        finally:
            store.close()
        body = json.dumps({"username": "b.dsl", "password": "correct horse battery staple"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/login", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            user = json.loads(r.read())["user"]
        assert (user["site"], user["role"]) == (B, "dsl")
    finally:
        terminate(proc)


def subprocess_run(argv):
    import subprocess

    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_sign_on_flows_are_single_use_and_expire(store):
    """The store side of single sign-on, on both backends: a flow is taken once, and not after it expires."""
    later = iso(datetime.now(timezone.utc) + timedelta(minutes=10))
    store.add_oidc_flow("s1", "b1", "n1", "v1", "/incidents", later)
    store.add_oidc_flow("s2", "b2", "n2", "v2", None, iso(datetime.now(timezone.utc) - timedelta(seconds=1)))
    flow = store.take_oidc_flow("s1")
    assert (flow["browser_hash"], flow["nonce"], flow["code_verifier"], flow["next_path"]) == \
        ("b1", "n1", "v1", "/incidents")
    assert store.take_oidc_flow("s1") is None  # used
    assert store.take_oidc_flow("s2") is None  # expired
    assert store.count("oidc_flows") == 0


def test_admin_disables_a_leaver_on_the_users_page(world):
    """The access review: /users lists the school's accounts with their last sign-in; Disable
    stops the account and ends its sessions; the form carries the CSRF token."""
    from server.http.auth import start_session
    from web_fixtures import form_client

    store = world.store
    token = start_session(store, STAFF["teacher"], "password")  # the teacher signed in once
    client = form_client(world.app)
    store.update_user(STAFF["admin"], password_hash=hash_password("correct horse battery staple"))
    r = client.post("/login", data={"username": STAFF["admin"], "password": "correct horse battery staple"})
    assert r.status_code == 303
    page = client.get("/users").text
    row = re.search(r'<tr id="user-m\.khan">(.*?)</tr>', page, re.S).group(1)
    assert "password" in row and "never" not in row and "teacher" in row
    assert "never" in re.search(rf'<tr id="user-{re.escape(DUAL)}">(.*?)</tr>', page, re.S).group(1)
    assert B_ONLY not in page and B_STAFF["admin"] not in page
    r = client.post(f"/users/{STAFF['teacher']}/change", data={"action": "disable"})
    assert r.status_code == 303
    assert store.get_user(STAFF["teacher"])["disabled"] == 1 and store.get_session(token_hash(token)) is None
    assert store.memberships(STAFF["teacher"]) == {A: "teacher"}  # disabling is not a role change
    r = client.post(f"/users/{STAFF['teacher']}/change", data={"action": "role", "role": "dsl"})
    assert r.status_code == 303 and store.memberships(STAFF["teacher"]) == {A: "dsl"}
    assert client.post(f"/users/{B_ONLY}/change", data={"action": "disable"}).status_code == 404

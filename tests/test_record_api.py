"""The DSL's record through the API and the dashboard's forms, as the right roles (issue 15):
staff concerns and the IT queue, the new categories, the guard log, allowlist changes from
proposal to published version, exports read back from the PDF, the term report, reviews,
the check log and SWGfL runs, AUP per pupil.  (Who may call what: tests/test_api_roles.py.)"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import pytest

from agent import protocol
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, REPO, SITE, STAFF, make_alert, make_event
from web_fixtures import form_client

pytestmark = pytest.mark.timeout(120)


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    assert data[:5] == b"%PDF-", data[:40]
    # Words only: a table cell wraps wherever the column ends.
    return " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages).split())


@pytest.fixture
def sent():
    return []


@pytest.fixture
def app(sqlite_store, app_factory, sent):
    return app_factory(sqlite_store, publisher=lambda topic, payload, qos: sent.append((topic, payload, qos)))


def login(app, role):
    client = form_client(app)
    r = client.post("/login", data={"username": STAFF[role], "password": PASSWORD})
    assert r.status_code == 303, r.text
    return client


def test_categories_and_procedures_follow_the_policies():
    from server import incidents as inc

    assert "child-on-child-sexual-violence-harassment" in inc.CATEGORIES
    assert "concern-about-adult" in inc.CATEGORIES and "concern-about-adult" in inc.HEAD_CATEGORIES
    adult = {key: text for key, text, _ in inc.CHECKLISTS["concern-about-adult"]}
    assert "LADO" in adult["lado"] and "headteacher" in adult["inform-head"]
    assert "inform-dsl" not in adult  # routed to the head, not the DSL
    nudes = [key for key, _, _ in inc.CHECKLISTS["nudes-semi-nudes"]]
    assert nudes.index("under-13-referral") < nudes.index("refer-social-care")
    under13 = dict((k, t) for k, t, _ in inc.CHECKLISTS["nudes-semi-nudes"])["under-13-referral"]
    assert "immediately" in under13 and "every pupil in a primary school" in under13
    help_text = " ".join(inc.FOUR_CS_HELP.values())
    for words in ("misinformation", "disinformation", "conspiracy theories", "AI-generated", "AI contact"):
        assert words in help_text
    assert set(inc.FOUR_CS_HELP) == set(inc.FOUR_CS)


def test_a_teacher_logs_a_concern_the_dsl_reads_it_and_it_reaches_the_it_queue(app, staff_client, sqlite_store):
    teacher, dsl, tech = staff_client(app, "teacher"), staff_client(app, "dsl"), staff_client(app, "technician")
    r = teacher.post("/api/v1/concerns", json={"room": "5b", "device": "5b-pi-01", "what": "CANARY-WHAT pop-up",
                                               "url": "https://games.example.com/play", "tell_it": True})
    assert r.status_code == 201, r.text
    seen = r.json()
    assert "concern" not in seen and seen["alert_state"] == "logged" and seen["timeline"][0]["by"] == "m.khan"
    # Not the teacher's room, an unknown device, nothing said, a URL that is not one: refused, nothing stored.
    for body, field in (({"room": "1a", "what": "x"}, "room"), ({"room": "5b", "device": "1a-pi-01", "what": "x"},
                                                               "device"),
                        ({"room": "5b", "what": " "}, "what"), ({"room": "5b", "what": "x", "url": "not a url"}, "url"),
                        ({"room": "5b", "what": "x", "tell_it": True}, "url")):
        bad = teacher.post("/api/v1/concerns", json=body)
        assert bad.status_code == 400 and bad.json()["detail"].startswith(field), (body, bad.text)
    assert sqlite_store.count("concerns") == 1
    full = dsl.get(f"/api/v1/incidents/{seen['id']}").json()
    assert full["concern"]["what"] == "CANARY-WHAT pop-up" and full["concern"]["domain"] == "games.example.com"
    assert [c["item"] for c in full["checklist"]] == []  # no category yet: the DSL sets it, as for a press
    dsl.patch(f"/api/v1/incidents/{seen['id']}", json={"category": "filtering-breach"})
    assert dsl.get(f"/api/v1/incidents/{seen['id']}").json()["checklist"][0]["item"] == "screen-off"
    assert "CANARY-WHAT" not in teacher.get(f"/api/v1/incidents/{seen['id']}").text
    # The audit log (admins read it) says a concern was logged, never what it says.
    assert "CANARY-WHAT" not in str(sqlite_store.list_audit())
    [item] = tech.get("/api/v1/it-queue").json()
    assert item["domain"] == "games.example.com" and item["incident_id"] == seen["id"]
    assert tech.post(f"/api/v1/it-queue/{item['id']}/done", json={"note": "blocked upstream"}).status_code == 200
    assert tech.get("/api/v1/it-queue?status=open").json() == []
    # A concern is not a live alert: the room view and the office board do not show it.
    office = login(app, "office").get("/office").text
    assert seen["id"] not in office and seen["id"] not in teacher.get("/rooms/5b").text


def test_the_concern_form_logs_in_school_time_and_thanks_the_teacher(app, sqlite_store):
    client = login(app, "teacher")
    page = client.get("/concerns/new")
    assert page.status_code == 200 and 'name="csrf_token"' in page.text and "5b-pi-01" in page.text
    assert "1a-pi-01" not in page.text  # only the teacher's own rooms
    r = client.post("/concerns/new", data={"room": "5b", "device": "", "happened_at": "2026-07-01T10:05",
                                           "what": "A pupil showed me a scary video", "url": "scary.example.com",
                                           "tell_it": "1"})
    assert r.status_code == 303 and r.headers["location"].startswith("/concerns/new?logged=")
    incident_id = r.headers["location"].split("logged=")[1].split("&")[0]
    row = sqlite_store.get_incident(incident_id)
    assert row["raised_at"].startswith("2026-07-01T09:05")  # 10:05 BST is 09:05 UTC
    assert "Thank you" in client.get(r.headers["location"]).text
    bad = client.post("/concerns/new", data={"room": "5b", "what": ""})
    assert bad.status_code == 400 and "what:" in bad.text


def test_guard_log_search_and_csv(app, staff_client, sqlite_store):
    sqlite_store.insert_events([make_event(type="bypass_process", user="pupil5b", name="=cmd|calc", action="ended"),
                                make_event(type="tamper", path="/etc/x", action="restored"),
                                make_event(type="login", user="pupil5b", session="s"),
                                make_event(type="blocked")])
    for role in ("dsl", "technician"):
        client = staff_client(app, role)
        rows = client.get("/api/v1/guard-events").json()
        assert {r["type"] for r in rows} == {"bypass_process", "tamper", "login"}
        assert [r["type"] for r in client.get("/api/v1/guard-events?type=tamper").json()] == ["tamper"]
        mine = client.get("/api/v1/guard-events", params={"user": "pupil5b"}).json()
        assert {r["type"] for r in mine} == {"bypass_process", "login"}
        text = client.get("/api/v1/guard-events", params={"format": "csv", "type": "bypass_process"}).text
        [header, row] = list(csv.reader(io.StringIO(text)))
        assert header[:3] == ["time_utc", "type", "room"] and row[4] == "pupil5b"
        assert row[5] == "name==cmd|calc action=ended"
        assert client.get("/api/v1/guard-events?type=nonsense").status_code == 400
    assert any(a["action"] == "guard.search" for a in sqlite_store.list_audit())
    # A user name a spreadsheet would run is written as text (server/safecsv.py).
    sqlite_store.insert_events([make_event(type="shared_login", user="=HYPERLINK(1)", session="z")])
    text = staff_client(app, "dsl").get("/api/v1/guard-events", params={"format": "csv", "type": "shared_login"}).text
    assert list(csv.reader(io.StringIO(text)))[1][4] == "'=HYPERLINK(1)"
    page = login(app, "dsl").get("/guard?type=tamper")
    assert "/etc/x" in page.text and "guard-log" in page.text


def _publish_baseline(app):
    from server.rollout import read_files

    return app.state.rollouts.publish(read_files(REPO / "config"), "tech", "baseline")


def test_allowlist_change_proposed_approved_and_published_with_names_and_reason(app, staff_client, sqlite_store):
    _publish_baseline(app)
    tech, dsl = staff_client(app, "technician"), staff_client(app, "dsl")
    r = tech.post("/api/v1/allowlist/changes", json={"key_stages": ["ks2"], "add_domains": ["nasa.gov"],
                                                     "reason": "Year 5 space topic"})
    assert r.status_code == 201, r.text
    change = r.json()
    assert dsl.post("/api/v1/allowlist/changes", json={"key_stages": ["ks2"], "add_domains": ["x.org"],
                                                       "reason": "r"}).status_code == 403
    assert tech.post("/api/v1/allowlist/changes", json={"key_stages": ["ks9"], "add_domains": ["x.org"],
                                                        "reason": "r"}).status_code == 400
    assert tech.post(f"/api/v1/allowlist/changes/{change['id']}/decision", json={"approve": True}).status_code == 403
    before = app.state.rollouts.current()["version"]
    done = dsl.post(f"/api/v1/allowlist/changes/{change['id']}/decision", json={"approve": True, "note": "fine"})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "published" and body["decided_by"] == "s.patel"
    live = app.state.rollouts.current()
    assert live["version"] != before and live["version"] == body["published_version"]
    assert "proposed by tech, approved by s.patel: Year 5 space topic" in live["why"]
    assert "nasa.gov" in app.state.tree.profiles["ks2"].allow_domains
    assert "nasa.gov" not in app.state.tree.profiles["ks1"].allow_domains
    # Comments and layout of the technician's file are kept.
    files = app.state.rollouts.files(live["version"])
    assert files["keystages/ks2.yaml"].startswith("# Key Stage 2") and "  - nasa.gov\n" in files["keystages/ks2.yaml"]
    assert dsl.post(f"/api/v1/allowlist/changes/{change['id']}/decision", json={"approve": True}).status_code == 409
    # A publish straight from YAML that changes an allow list is in the change log too, with no approver.
    changed = dict(files)
    changed["keystages/ks1.yaml"] += "\n# more\n"
    changed["keystages/ks1.yaml"] = changed["keystages/ks1.yaml"].replace("  - natgeokids.com\n",
                                                                          "  - natgeokids.com\n  - sneaky.example.com\n")
    app.state.rollouts.publish(changed, "tech", "quick fix")
    log = dsl.get("/api/v1/allowlist/changes").json()
    direct = next(c for c in log if c["source"] == "publish")
    assert direct["status"] == "published" and direct["decided_by"] is None
    assert direct["add_domains"] == ["sneaky.example.com"] and set(direct["key_stages"]) == {"ks1", "ks2"}
    assert "published without approval" in login(app, "dsl").get("/allowlist").text
    actions = {a["action"] for a in sqlite_store.list_audit()}
    assert {"allowlist.propose", "allowlist.approve"} <= actions


def test_one_click_from_the_weekly_report_files_a_proposal_the_dsl_can_reject(app, sqlite_store):
    _publish_baseline(app)
    sqlite_store.insert_events([make_event(type="blocked", domain="www.nasa.gov", profile="ks2", count=40)])
    tech = login(app, "technician")
    page = tech.get("/reports/weekly").text
    assert 'id="propose-www.nasa.gov"' in page
    assert 'id="propose-' not in login(app, "dsl").get("/reports/weekly").text  # the DSL decides, not proposes
    r = tech.post("/allowlist/propose", data={"key_stages": ["ks2"], "add_domains": "www.nasa.gov",
                                              "source": "weekly-report",
                                              "reason": "Over-blocking candidate: 40 blocked attempts"})
    assert r.status_code == 303
    [change] = sqlite_store.list_allowlist_changes(SITE)
    assert change["source"] == "weekly-report" and change["add_domains"] == ["www.nasa.gov"]
    dsl = login(app, "dsl")
    assert f'id="approve-{change["id"]}"' in dsl.get("/allowlist").text
    r = dsl.post(f"/allowlist/{change['id']}/decide", data={"approve": "0", "note": "use a curated site"})
    assert r.status_code == 303
    assert sqlite_store.get_allowlist_change(change["id"], SITE)["status"] == "rejected"
    assert "www.nasa.gov" not in app.state.tree.profiles["ks2"].allow_domains


def _incident_with_record(store, app, staff_client):
    alert = make_alert()
    store.record_alert(alert)
    store.record_alert({**alert, "state": "acknowledged", "by": "m.khan", "ts": protocol.now_ts()})
    store.ingest([(protocol.Topic(protocol.DEFAULT_PREFIX, SITE, "5b", "5b-pi-01", "event"),
                   make_event(type="report_evidence", alert_id=alert["id"], user="pupil5b", minutes=10,
                              domains=[{"domain": "evidence-domain.example", "ts": protocol.now_ts(), "count": 2}]))])
    dsl = staff_client(app, "dsl")
    dsl.patch(f"/api/v1/incidents/{alert['id']}", json={"category": "nudes-semi-nudes", "tags": ["contact"],
                                                        "status": "referred", "outcome": "Referred to social care"})
    dsl.post(f"/api/v1/incidents/{alert['id']}/checklist", json={"item": "under-13-referral", "note": "called MASH"})
    dsl.post(f"/api/v1/incidents/{alert['id']}/notes", json={"text": "Spoke to parents at 3pm"})
    return alert["id"], dsl


def test_an_incident_exports_as_a_pdf_and_csv_chronology_and_every_export_is_recorded(app, staff_client,
                                                                                      sqlite_store):
    incident_id, dsl = _incident_with_record(sqlite_store, app, staff_client)
    r = dsl.post(f"/api/v1/incidents/{incident_id}/export", json={"format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    text = pdf_text(r.content)
    for expected in ("Nudes and semi-nudes", "Contact", "referred", "Referred to social care", "pupil5b",
                     "Report button pressed", "Acknowledged", "m.khan", "Spoke to parents at 3pm", "called MASH",
                     "every pupil in a primary school", "s.patel", "Penny Acres"):
        assert expected in text, expected
    assert "evidence-domain.example" not in text  # not ticked in
    with_evidence = dsl.post(f"/api/v1/incidents/{incident_id}/export", json={"format": "pdf", "evidence": True})
    assert "evidence-domain.example" in pdf_text(with_evidence.content)
    csv_text = dsl.post(f"/api/v1/incidents/{incident_id}/export", json={"format": "csv"}).text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    events = [row["event"] for row in rows]
    assert events[0] == "Report button pressed" and "Checklist: done" in events and "Note" in events
    tick = next(row for row in rows if row["event"] == "Checklist: done")
    assert tick["by"] == "s.patel" and "under 13" in tick["details"] and tick["time_local"].endswith(("GMT", "BST"))
    assert not any("evidence-domain" in row["details"] for row in rows)
    # Every export is on record, on the incident and in the audit log; with evidence it counts as a view.
    exports = dsl.get(f"/api/v1/incidents/{incident_id}").json()["exports"]
    assert [(x["format"], x["with_evidence"]) for x in exports] == [("csv", False), ("pdf", True), ("pdf", False)]
    audit = [a["action"] for a in sqlite_store.list_audit()]
    assert audit.count("export") == 3 and "evidence.view" in audit
    # The dashboard form does the same, and a pupil's incidents export together.
    page = login(app, "dsl")
    assert 'id="export-form"' in page.get(f"/incidents/{incident_id}").text
    r = page.post(f"/incidents/{incident_id}/export", data={"format": "pdf"})
    assert r.status_code == 200 and "Nudes and semi-nudes" in pdf_text(r.content)
    pupil = dsl.post("/api/v1/exports/pupil", json={"user": "pupil5b", "format": "pdf"})
    assert pupil.status_code == 200 and "incidents while pupil5b was logged in" in pdf_text(pupil.content)
    assert dsl.post("/api/v1/exports/pupil", json={"user": "nobody", "format": "csv"}).status_code == 404
    assert len(dsl.get("/api/v1/exports").json()) == 5


def test_the_term_report_counts_without_naming_a_pupil_and_its_pdf_says_so(app, staff_client, sqlite_store):
    incident_id, dsl = _incident_with_record(sqlite_store, app, staff_client)
    sqlite_store.log_concern(site=SITE, room="1a", logged_by="a.jones", what="CANARY-CONCERN")
    sqlite_store.insert_events([make_event(type="override_opened", domain="nasa.gov", by="m.khan"),
                                make_event(type="filter_check", by="tech", ok=False, results=[
                                    {"domain": "facebook.com", "expect": "blocked", "result": "fail"}])])
    from agent.config import term_key

    term = dsl.get("/api/v1/reports/term").json()
    assert term["term"] == term_key(app.state.tree.site.terms, datetime.now(timezone.utc).date())
    assert term["incidents"] == 2 and term["presses"] == 1 and term["concerns"] == 1
    assert ["Nudes and semi-nudes (youth produced sexual imagery)", 1] in term["by_category"]
    assert ["Contact", 1] in term["by_four_cs"] and ["referred", 1] in term["by_status"]
    assert term["acknowledgement"]["acknowledged"] == 1 and term["acknowledgement"]["median_s"] is not None
    assert term["checks"]["failed"] == 1 and term["overrides"]["opened"] == 1
    pdf = dsl.get("/api/v1/reports/term", params={"format": "pdf"})
    text = pdf_text(pdf.content)
    for expected in ("Filtering and monitoring", "Nudes and semi-nudes", "Press to acknowledgement",
                     "no pupil is named", "nasa.gov"):
        assert expected in text, expected
    for private in ("pupil5b", "m.khan", "a.jones", "CANARY-CONCERN", "Spoke to parents", "evidence-domain",
                    "Referred to social care", incident_id):
        assert private not in text and private not in str(term), private
    page = login(app, "dsl").get("/reports/term")
    assert page.status_code == 200 and 'id="term-pdf"' in page.text
    assert staff_client(app, "admin").get("/api/v1/reports/term").status_code == 403
    assert dsl.get("/api/v1/reports/term?term=Nope").status_code == 400


def test_reviews_check_actions_and_a_swgfl_run_from_a_device(app, staff_client, sqlite_store, sent):
    dsl, tech = staff_client(app, "dsl"), staff_client(app, "technician")
    body = {"held_on": "2026-10-01", "attendees": [{"name": "Mrs Patel", "role": "dsl"},
                                                   {"name": "Mr Jones", "role": "headteacher"},
                                                   {"name": "Tech Co", "role": "it-provider"}],
            "findings": "BBC over-blocked", "actions": "Allow bbc.co.uk", "next_review": "2027-10-01"}
    assert dsl.post("/api/v1/reviews", json=body).status_code == 201
    assert dsl.post("/api/v1/reviews", json={**body, "next_review": "2026-09-01"}).status_code == 400
    assert tech.get("/api/v1/reviews").json()[0]["attendees"][1] == {"name": "Mr Jones", "role": "headteacher"}
    form = login(app, "admin")
    r = form.post("/reviews", data={"held_on": "2026-11-01", "attendee_name": ["Head", ""],
                                    "attendee_role": ["headteacher", "dsl"], "findings": "ok", "actions": "none",
                                    "next_review": "2027-11-01"})
    assert r.status_code == 303 and len(sqlite_store.list_reviews(SITE)) == 2
    assert "Head (headteacher)" in form.get("/reviews").text

    check = make_event(type="filter_check", by="nightly", ok=False,
                       results=[{"domain": "facebook.com", "expect": "blocked", "result": "fail"}])
    sqlite_store.insert_events([check])
    assert tech.post(f"/api/v1/checks/{check['id']}/actions", json={"text": "dnsmasq restarted"}).status_code == 201
    assert tech.post("/api/v1/checks/nope/actions", json={"text": "x"}).status_code == 404
    [row] = dsl.get("/api/v1/checks").json()["checks"]
    assert row["result"] == "fail" and row["actions"][0]["text"] == "dnsmasq restarted"
    assert "dnsmasq restarted" in login(app, "dsl").get("/reports/weekly").text

    run = tech.post("/api/v1/filter-tests", json={"device": "5b-pi-01"})
    assert run.status_code == 201, run.text
    [(topic, payload, qos)] = sent
    cmd = protocol.validate("cmd", __import__("json").loads(payload))
    assert topic.endswith("/5b/5b-pi-01/cmd") and cmd["cmd"] == "allow" and qos == 1
    assert (cmd["domain"], cmd["minutes"], cmd["by"]) == ("testfiltering.com", 10, "tech")
    assert tech.post("/api/v1/filter-tests", json={"device": "nope"}).status_code == 404
    test_id = run.json()["id"]
    assert tech.post(f"/api/v1/filter-tests/{test_id}/result", json={"result": "pass",
                                                                    "details": "all categories blocked"}).status_code == 200
    assert dsl.get("/api/v1/checks").json()["tests"][0]["result"] == "pass"
    page = login(app, "technician").get("/checks").text
    assert "all categories blocked" in page and 'id="test-start"' in page


def test_aup_who_has_not_accepted_this_term_and_the_device_list(app, staff_client, sqlite_store):
    from server.http.auth import hash_password

    from agent.config import term_key

    term = term_key(app.state.tree.site.terms, datetime.now(timezone.utc).date())
    sqlite_store.insert_events([make_event(type="login", user="pupil5b", session="a"),
                                make_event(type="login", user="pupil-late", session="b"),
                                make_event(type="aup_accepted", user="pupil5b", term=term, key_stage="ks2")])
    status = staff_client(app, "dsl").get("/api/v1/aup").json()
    assert status["term"] == term
    assert [p["user_name"] for p in status["not_accepted"]] == ["pupil-late"]
    assert [p["user_name"] for p in status["accepted"]] == ["pupil5b"]
    assert "pupil-late" in login(app, "admin").get("/aup").text
    sqlite_store.set_device_credentials("5b-pi-01", hash_password("dev-pw"), by="test")
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        got = client.get("/api/v1/devices/5b-pi-01/aup", auth=("5b-pi-01", "dev-pw"))
        assert got.status_code == 200 and got.json()["term"] == term and list(got.json()["accepted"]) == ["pupil5b"]
        assert client.get("/api/v1/devices/1a-pi-01/aup", auth=("5b-pi-01", "dev-pw")).status_code == 403


def test_every_new_form_carries_the_sessions_csrf_token(app, sqlite_store):
    import re

    from server.http.auth import COOKIE
    from server.http.csrf import csrf_token

    alert = make_alert()
    sqlite_store.record_alert(alert)
    sqlite_store.insert_events([make_event(type="filter_check", ok=True, results=[])])
    seen = 0
    for role, pages in (("teacher", ["/concerns/new"]), ("dsl", ["/concerns/new", f"/incidents/{alert['id']}",
                                                                 "/allowlist", "/exports", "/reviews", "/checks"]),
                        ("technician", ["/it-queue", "/allowlist", "/checks", "/reports/weekly"])):
        client = login(app, role)
        expected = csrf_token(client.cookies[COOKIE])
        for url in pages:
            html = client.get(url).text
            for form in re.findall(r'<form method="post".*?</form>', html, re.S):
                assert f'<input type="hidden" name="csrf_token" value="{expected}">' in form, (role, url, form[:200])
                seen += 1
    assert seen >= 10

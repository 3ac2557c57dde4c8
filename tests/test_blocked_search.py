"""The blocked-attempt log (issue 15 item 4): search by pupil, device, room, risk list, domain
and dates, with every DfE log field (device, IP, user, time, domain, count), as JSON, a
dashboard page and CSV; the DSL sees who, a technician does not (and may not search by
pupil); every search is audited without its values; the weekly report counts attempts by
risk list.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, SITE, STAFF, make_event
from web_fixtures import form_client

pytestmark = pytest.mark.timeout(60)

DAY = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)  # a Tuesday, 09:00 GMT


def blocked(when, *, device="5b-pi-01", room="5b", user="pupil.5b.07", domain="games.example.com",
            category=None, count=1, ip="10.20.5.31"):
    fields = {"ts": protocol.now_ts(when), "domain": domain, "user": user, "count": count, "device_ip": ip,
              "device_name": "Table 1", "first_seen": protocol.now_ts(when - timedelta(seconds=20)),
              "last_seen": protocol.now_ts(when)}
    if category:
        fields["category"] = category
    return make_event(room=room, device=device, **fields)


def _rows():
    return [
        blocked(DAY, category="self-harm", domain="suicide-forum.example", count=3),
        blocked(DAY + timedelta(hours=1), domain="www.tiktok.com"),
        blocked(DAY + timedelta(days=1), device="5b-pi-02", user="pupil.5b.12", domain="tiktok.com"),
        blocked(DAY + timedelta(days=2), device="1a-pi-01", room="1a", user="reception", category="adult",
                domain="pornhub.com", ip="10.20.1.11"),
        make_event(type="login", user="pupil.5b.07", ts=protocol.now_ts(DAY)),  # not a blocked attempt
    ]


@pytest.fixture
def attempts(store):
    rows = _rows()
    store.insert_events(rows)
    return rows


def test_search_by_pupil_device_room_list_domain_and_dates_on_both_engines(store, attempts):
    every = store.search_blocked(SITE)
    assert [r["domain"] for r in every] == ["pornhub.com", "tiktok.com", "www.tiktok.com", "suicide-forum.example"]
    first = every[-1]
    assert {k: first[k] for k in ("device", "device_name", "device_ip", "user", "domain", "count", "category",
                                  "room", "profile")} == {
        "device": "5b-pi-01", "device_name": "Table 1", "device_ip": "10.20.5.31", "user": "pupil.5b.07",
        "domain": "suicide-forum.example", "count": 3, "category": "self-harm", "room": "5b", "profile": "ks2"}
    assert first["ts"] == protocol.now_ts(DAY) and first["first_seen"] < first["ts"]
    assert [r["device"] for r in store.search_blocked(SITE, user="pupil.5b.07")] == ["5b-pi-01", "5b-pi-01"]
    assert [r["user"] for r in store.search_blocked(SITE, device="5b-pi-02")] == ["pupil.5b.12"]
    assert [r["domain"] for r in store.search_blocked(SITE, room="1a")] == ["pornhub.com"]
    assert [r["domain"] for r in store.search_blocked(SITE, category="adult")] == ["pornhub.com"]
    assert {r["domain"] for r in store.search_blocked(SITE, domain="tiktok.com")} == {"tiktok.com", "www.tiktok.com"}
    day_two = store.search_blocked(SITE, since=protocol.now_ts(DAY + timedelta(days=1)),
                                   until=protocol.now_ts(DAY + timedelta(days=2)))
    assert [r["device"] for r in day_two] == ["5b-pi-02"]
    assert store.search_blocked("another-school") == []
    assert len(store.search_blocked(SITE, limit=2)) == 2


@pytest.fixture
def app(sqlite_store, app_factory):
    sqlite_store.insert_events(_rows())
    return app_factory(sqlite_store)


def test_the_dsl_sees_every_dfe_field_and_a_technician_never_the_user(app, sqlite_store, staff_client):
    dsl = staff_client(app, "dsl")
    body = dsl.get("/api/v1/blocked", params={"user": "pupil.5b.07"}).json()
    assert body["fields"][:6] == ["ts", "device", "device_name", "device_ip", "user", "domain"]
    assert {"count", "category"} <= set(body["fields"]) and body["truncated"] is False
    assert [r["domain"] for r in body["rows"]] == ["www.tiktok.com", "suicide-forum.example"]
    assert body["categories"]["self-harm"] == "Self-harm, suicide and eating disorders"
    tech = staff_client(app, "technician")
    body = tech.get("/api/v1/blocked", params={"device": "5b-pi-01"}).json()
    assert "user" not in body["fields"] and all("user" not in row for row in body["rows"])
    assert "pupil.5b.07" not in tech.get("/api/v1/blocked", params={"format": "csv"}).text
    refused = tech.get("/api/v1/blocked", params={"user": "pupil.5b.07"})
    assert refused.status_code == 403 and "only the DSL" in refused.json()["detail"]
    for role in ("teacher", "admin", "office"):
        assert staff_client(app, role).get("/api/v1/blocked").status_code == 403, role

    # Dates are school days (Europe/London), or exact RFC 3339 times.
    days = dsl.get("/api/v1/blocked", params={"since": "2026-11-25", "until": "2026-11-26"}).json()["rows"]
    assert [r["device"] for r in days] == ["1a-pi-01", "5b-pi-02"]
    exact = dsl.get("/api/v1/blocked", params={"since": protocol.now_ts(DAY + timedelta(minutes=30))}).json()
    assert "suicide-forum.example" not in [r["domain"] for r in exact["rows"]]
    assert dsl.get("/api/v1/blocked", params={"limit": 1}).json()["truncated"] is True

    # Every search is audited: which filters, never their values.
    audit = [a for a in sqlite_store.list_audit(limit=100) if a["action"] == "blocked.search"]
    assert {a["actor"] for a in audit} == {"s.patel", "tech"}
    assert all("pupil.5b.07" not in (a["details"] or "") for a in audit)
    assert any('"user"' in (a["details"] or "") for a in audit if a["actor"] == "s.patel")


@pytest.mark.parametrize("params, error", [
    ({"device": "Not An Id"}, "device: 'Not An Id' is not an id"),
    ({"domain": "not a domain"}, "domain: 'not a domain' is not a domain"),
    ({"since": "last tuesday"}, "since: 'last tuesday' is not a date"),
    ({"since": "2026-11-26", "until": "2026-11-24"}, "until: is before since"),
    ({"limit": "0"}, "limit: between 1 and 5000"),
    ({"user": "bad user!"}, "user: 'bad user!' is not a login name"),
])
def test_bad_filters_are_refused_with_their_name(app, staff_client, params, error):
    r = staff_client(app, "dsl").get("/api/v1/blocked", params=params)
    assert r.status_code == 400 and r.json()["detail"].startswith(error), r.text


def test_the_csv_has_every_field_and_neutralises_cells(app, sqlite_store, staff_client):
    sqlite_store.insert_events([blocked(DAY + timedelta(days=3), user="=HYPERLINK(1)", domain="evil.example")])
    text = staff_client(app, "dsl").get("/api/v1/blocked", params={"format": "csv"}).text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ts", "device", "device_name", "device_ip", "user", "domain", "count", "first_seen",
                       "last_seen", "room", "profile", "category"]
    assert rows[1][4] == "'=HYPERLINK(1)"   # a spreadsheet shows it, never runs it
    assert ["5b-pi-01", "Table 1", "10.20.5.31", "pupil.5b.07", "suicide-forum.example", "3"] == rows[-1][1:7]


def _login(app, role):
    c = form_client(app)
    assert c.post("/login", data={"username": STAFF[role], "password": PASSWORD}).status_code == 303
    return c


def test_the_blocked_page_for_the_dsl_and_technicians(app):
    dsl = _login(app, "dsl")
    page = dsl.get("/blocked", params={"category": "self-harm"}).text
    assert 'name="user"' in page and "suicide-forum.example" in page and "pupil.5b.07" in page
    assert 'class="high-risk"' in page and "Self-harm, suicide and eating disorders" in page
    assert "www.tiktok.com" not in page
    assert 'href="/blocked.csv?category=self-harm"' in page
    csv_text = dsl.get("/blocked.csv", params={"category": "self-harm"}).text
    assert csv_text.splitlines()[0].startswith("ts,device,device_name,device_ip,user,domain,count")
    bad = dsl.get("/blocked", params={"since": "soon"})
    assert bad.status_code == 400 and 'id="blocked-error"' in bad.text
    tech = _login(app, "technician")
    page = tech.get("/blocked").text
    assert 'name="user"' not in page and "pupil.5b.07" not in page and "pornhub.com" in page
    assert tech.get("/blocked", params={"user": "pupil.5b.07"}).status_code == 400
    assert "pupil.5b.07" not in tech.get("/blocked.csv").text
    for role in ("teacher", "admin", "office"):
        assert _login(app, role).get("/blocked").status_code == 403, role


def test_the_weekly_report_counts_attempts_by_risk_list(app, staff_client):
    report = staff_client(app, "technician").get("/api/v1/reports/weekly", params={"week": "2026-11-24"}).json()
    assert report["by_category"] == [
        {"category": "self-harm", "attempts": 3, "devices": 1, "rooms": "5b"},
        {"category": "adult", "attempts": 1, "devices": 1, "rooms": "1a"},
    ]
    html = staff_client(app, "dsl").get("/api/v1/reports/weekly", params={"week": "2026-11-24", "format": "html"})
    assert 'id="by-category"' in html.text and "self-harm" in html.text
    assert "suicide-forum" in html.text  # the blocked list itself was always in the report; no user names
    assert "pupil.5b.07" not in html.text

"""Weekly reports: numbers on seeded data (SQLite and PostgreSQL), HTML/CSV/SVG, the digest schedule."""

from __future__ import annotations

import csv
import io
import json
import socketserver
import threading
from datetime import datetime, timezone

import pytest

from server import reports
from server.reports import SmtpSettings, Week
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_alert, make_event

pytestmark = pytest.mark.timeout(60)

W47 = Week.parse("2026-W47")  # Mon 16 Nov 2026 .. Sun 22 Nov (GMT)


def seed(store) -> None:
    ev = []

    def blocked(room, device, domain, profile, ts, count=None, **extra):
        fields = {"domain": domain, "profile": profile, "ts": ts, "user": f"pupil-{room}", **extra}
        if count is not None:
            fields["count"] = count
        ev.append(make_event(room=room, device=device, type="blocked", **fields))

    blocked("5b", "5b-pi-01", "games.example.com", "ks2", "2026-11-16T09:00:00.000Z")
    blocked("5b", "5b-pi-01", "games.example.com", "ks2", "2026-11-17T10:00:00.000Z", count=4,  # coalesced
            first_seen="2026-11-16T08:59:00.000Z", last_seen="2026-11-17T10:00:00.000Z")
    blocked("5b", "5b-pi-02", "games.example.com", "ks2", "2026-11-20T13:00:00.000Z")
    blocked("5b", "5b-pi-01", "youtube.com", "ks2", "2026-11-18T11:00:00.000Z", count=2)
    for day in (16, 17, 18):
        blocked("1a", "1a-pi-01", "youtube.com", "ks1", f"2026-11-{day}T09:30:00.000Z")
    blocked("1a", "1a-pi-01", "games.example.com", "ks1", "2026-11-22T23:59:59.999Z")  # last ms of the week
    # Outside the week on both sides.
    blocked("5b", "5b-pi-01", "games.example.com", "ks2", "2026-11-15T23:59:59.999Z", count=50)
    blocked("5b", "5b-pi-01", "games.example.com", "ks2", "2026-11-23T00:00:00.000Z", count=50)
    # Filtering checks (who, when, what, result).
    # ... in the shape the agent's `classroom-agent filter check` sends (agent/filter/check.py).
    from agent.filter.check import CheckResult, event_fields

    ok = [CheckResult("bbc.co.uk", "allowed", "NOERROR", ("1.2.3.4",), True),
          CheckResult("tiktok.com", "blocked", "NXDOMAIN", (), True)]
    bad = [CheckResult("bbc.co.uk", "allowed", "NOERROR", ("1.2.3.4",), True),
           CheckResult("badsite.example", "blocked", "NOERROR", ("6.6.6.6",), False)]
    ev.append(make_event(room="5b", device="5b-pi-01", type="filter_check", ts="2026-11-19T08:30:00.000Z",
                         **event_fields(ok, "ks2", "tech")))
    ev.append(make_event(room="1a", device="1a-pi-01", type="filter_check", ts="2026-11-19T08:35:00.000Z",
                         **event_fields(bad, "ks1", "j.smith")))
    ev.append(make_event(room="1a", device="1a-pc-01", type="filter_check", ts="2026-11-19T08:40:00.000Z",
                         user="tech", domain="bbc.co.uk", expected="allowed", result="pass"))
    ev.append(make_event(type="login", ts="2026-11-19T08:35:00.000Z", user="pupil"))  # not in any table
    store.insert_events(ev)

    a1 = make_alert(room="5b", device="5b-pi-01", ts="2026-11-17T10:01:00.000Z")
    a2 = make_alert(room="5b", device="5b-pi-02", ts="2026-11-19T14:00:00.000Z")
    a3 = make_alert(room="1a", device="1a-pi-01", ts="2026-11-20T09:00:00.000Z")
    a4 = make_alert(room="1a", device="1a-pi-01", ts="2026-11-10T09:00:00.000Z")  # last week
    for a in (a1, a2, a3, a4):
        store.record_alert(a)
    store.update_incident(a1["id"], "s.patel", {"category": "cyberbullying", "status": "closed"})
    store.update_incident(a2["id"], "s.patel", {"category": "cyberbullying"})


def test_weekly_numbers_on_seeded_data(store):
    seed(store)
    r = reports.collect(store, W47, "penny-acres")
    assert r.total_attempts == 12
    assert r.by_room == [
        {"room": "1a", "key_stage": "ks1", "attempts": 4, "domains": 2, "devices": 1},
        {"room": "5b", "key_stage": "ks2", "attempts": 8, "domains": 2, "devices": 2},
    ]
    blocked = [(b["room"], b["key_stage"], b["domain"], b["attempts"], b["devices"]) for b in r.blocked]
    assert blocked == [("1a", "ks1", "youtube.com", 3, 1), ("1a", "ks1", "games.example.com", 1, 1),
                       ("5b", "ks2", "games.example.com", 6, 2), ("5b", "ks2", "youtube.com", 2, 1)]
    games5b = r.blocked[2]
    assert (games5b["first"], games5b["last"]) == ("2026-11-16T08:59:00.000Z", "2026-11-20T13:00:00.000Z")
    assert r.overblocking == [
        {"domain": "games.example.com", "attempts": 7, "devices": 3, "rooms": "1a, 5b", "key_stages": "ks1, ks2"},
        {"domain": "youtube.com", "attempts": 5, "devices": 2, "rooms": "1a, 5b", "key_stages": "ks1, ks2"},
    ]
    assert r.incidents["total"] == 3 and r.incidents["open"] == 2
    assert r.incidents["by_category"] == [("cyberbullying", 2), ("not yet categorised", 1)]
    assert r.incidents["by_room"] == [("1a", 1), ("5b", 2)]
    assert [(c["who"], c["room"], c["what"], c["result"], c["details"]) for c in r.checks] == [
        ("tech", "5b", "2 test domains (ks2)", "pass", "all 2 as expected"),
        ("j.smith", "1a", "2 test domains (ks1)", "fail", "not as expected: badsite.example"),
        ("tech", "1a", "bbc.co.uk", "pass", "expected allowed")]


def test_html_csv_and_svg_render_the_numbers(sqlite_store):
    seed(sqlite_store)
    r = reports.collect(sqlite_store, W47, "penny-acres")
    html = reports.render_html(r)
    assert '<strong id="total-attempts">12</strong>' in html
    assert '<strong id="incidents-total">3</strong>' in html and '<strong id="incidents-open">2</strong>' in html
    assert "<td>games.example.com</td><td class=\"n\">7</td><td class=\"n\">3</td>" in html
    assert 'class="fail">fail</td>' in html and 'class="pass">pass</td>' in html
    # The chart is inline SVG, one bar per room and key stage, largest = full width.
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert svg.count('<g class="bar">') == 2
    assert "5b (ks2): 8" in svg and "1a (ks1): 4" in svg
    assert 'width="420"' in svg and 'width="210"' in svg  # 8 -> full span, 4 -> half
    # Self-contained: no scripts, no external fetches (works as a file and in e-mail).
    assert "<script" not in html and "src=" not in html and "<link" not in html
    assert html.count("http") == html.count("http://www.w3.org/2000/svg")

    rows = list(csv.reader(io.StringIO(reports.render_csv(r))))
    assert rows[0] == reports.CSV_FIELDS
    assert rows[1:] == [
        ["2026-W47", "1a", "ks1", "youtube.com", "3", "1", "2026-11-16T09:30:00.000Z", "2026-11-18T09:30:00.000Z"],
        ["2026-W47", "1a", "ks1", "games.example.com", "1", "1", "2026-11-22T23:59:59.999Z", "2026-11-22T23:59:59.999Z"],
        ["2026-W47", "5b", "ks2", "games.example.com", "6", "2", "2026-11-16T08:59:00.000Z", "2026-11-20T13:00:00.000Z"],
        ["2026-W47", "5b", "ks2", "youtube.com", "2", "1", "2026-11-18T11:00:00.000Z", "2026-11-18T11:00:00.000Z"],
    ]


def test_hostile_values_are_escaped_and_bad_counts_count_once():
    rows = [{"room": "5b", "profile": "ks2", "domain": "<script>alert(1)</script>", "device": "d",
             "ts": "2026-11-16T09:00:00.000Z", "data": json.dumps({"count": "lots"})},
            {"room": "5b", "profile": "ks2", "domain": "=HYPERLINK(\"x\")", "device": "d",
             "ts": "2026-11-16T09:00:00.000Z", "data": "{not json"},
            {"room": "5b", "profile": "ks2", "domain": "neg.example", "device": "d", "ts": "2026-11-16T09:00:00.000Z",
             "data": json.dumps({"count": -5})}]
    r = reports.build(W47, "s", rows, [], [])
    assert r.total_attempts == 3
    html = reports.render_html(r)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    csv_rows = list(csv.reader(io.StringIO(reports.render_csv(r))))
    assert ["'=HYPERLINK(\"x\")"] == [row[3] for row in csv_rows[1:] if "HYPERLINK" in row[3]]
    empty = reports.render_html(reports.build(W47, "s", [], [], []))
    assert "No blocked attempts this week." in empty and '<strong id="total-attempts">0</strong>' in empty


def test_weeks_follow_the_school_time_zone():
    # Summer time: the week starts at Sunday 23:00 UTC.
    w = Week.parse("2026-06-17")
    assert (w.key, w.start_ts, w.end_ts) == ("2026-W25", "2026-06-14T23:00:00.000Z", "2026-06-21T23:00:00.000Z")
    assert Week.containing(datetime(2026, 6, 14, 23, 30, tzinfo=timezone.utc)).key == "2026-W25"
    assert Week.containing(datetime(2026, 6, 14, 22, 30, tzinfo=timezone.utc)).key == "2026-W24"
    assert (W47.start_ts, W47.end_ts) == ("2026-11-16T00:00:00.000Z", "2026-11-23T00:00:00.000Z")
    assert W47.previous().key == "2026-W46"
    for bad in ("last week", "2026-W99", "2026-13-01", ""):
        with pytest.raises(ValueError) as exc:
            Week.parse(bad)
        assert str(exc.value).startswith("week: ") and "\n" not in str(exc.value)


# --------------------------------------------------------------------------- the digest


def test_digest_is_due_monday_morning_once():
    assert reports.due_week(datetime(2026, 11, 23, 6, 59, tzinfo=timezone.utc), "Europe/London", set()) is None
    due = reports.due_week(datetime(2026, 11, 23, 7, 0, tzinfo=timezone.utc), "Europe/London", set())
    assert due is not None and due.key == "2026-W47"
    assert reports.due_week(datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc), "Europe/London", {"2026-W47"}) is None
    # In summer, 07:00 London is 06:00 UTC.
    assert reports.due_week(datetime(2026, 6, 22, 6, 0, tzinfo=timezone.utc), "Europe/London", set()).key == "2026-W25"


class FakeSMTP:
    sent: list = []

    def __init__(self, host, port, timeout=None):
        self.host, self.port = host, port

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starttls(self):
        pass

    def login(self, user, password):
        pass

    def send_message(self, msg):
        FakeSMTP.sent.append(msg)


def test_run_digest_writes_files_once_and_mail_is_optional(sqlite_store, tmp_path):
    seed(sqlite_store)
    monday = datetime(2026, 11, 23, 7, 30, tzinfo=timezone.utc)
    assert reports.run_digest(sqlite_store, tmp_path, now=datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)) is None
    path = reports.run_digest(sqlite_store, tmp_path, now=monday, site="penny-acres", smtp=SmtpSettings())
    assert path == tmp_path / "weekly-2026-W47.html"
    assert '<strong id="total-attempts">12</strong>' in path.read_text()
    assert (tmp_path / "weekly-2026-W47.csv").read_text().count("\n") == 5
    assert sqlite_store.query("SELECT week, emailed FROM report_runs") == [{"week": "2026-W47", "emailed": 0}]
    assert reports.run_digest(sqlite_store, tmp_path, now=monday) is None  # once only

    FakeSMTP.sent = []
    smtp = SmtpSettings(host="127.0.0.1", to=("dsl@school.example",), username="u", password="hunter2")
    assert "hunter2" not in repr(smtp)
    nxt = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
    assert reports.run_digest(sqlite_store, tmp_path, now=nxt, smtp=smtp, smtp_class=FakeSMTP).name == \
        "weekly-2026-W48.html"
    [msg] = FakeSMTP.sent
    assert msg["To"] == "dsl@school.example" and "2026-W48" in msg["Subject"]
    assert [p.get_filename() for p in msg.iter_attachments()] == ["blocked-2026-W48.csv"]


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to receive one message."""

    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        data = False
        lines = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            if data:
                if line == b".\r\n":
                    data = False
                    self.server.messages.append(b"".join(lines))
                    self.wfile.write(b"250 OK queued\r\n")
                else:
                    lines.append(line)
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250 test\r\n")
            elif verb == b"DATA":
                data = True
                self.wfile.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


@pytest.mark.integration
def test_digest_mail_through_a_real_smtp_socket_and_survives_a_dead_server(sqlite_store, tmp_path):
    from services import free_port

    seed(sqlite_store)
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.messages = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        smtp = SmtpSettings.from_env({"CLASSROOM_SMTP_HOST": "127.0.0.1",
                                      "CLASSROOM_SMTP_PORT": str(server.server_address[1]),
                                      "CLASSROOM_SMTP_TO": "dsl@school.example, head@school.example"})
        assert smtp.enabled and smtp.to == ("dsl@school.example", "head@school.example")
        reports.run_digest(sqlite_store, tmp_path, now=datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc), smtp=smtp)
        [raw] = server.messages
        assert b"Subject: Classroom safety weekly report 2026-W47" in raw and b"blocked-2026-W47.csv" in raw
        assert sqlite_store.query("SELECT emailed FROM report_runs") == [{"emailed": 1}]
    finally:
        server.shutdown()
        server.server_close()
    # Mail server gone: the file is still written and the run recorded.
    dead = SmtpSettings(host="127.0.0.1", port=free_port(), to=("dsl@school.example",))
    path = reports.run_digest(sqlite_store, tmp_path, now=datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc), smtp=dead)
    assert path.exists()
    assert sqlite_store.query("SELECT week, emailed FROM report_runs ORDER BY week") == [
        {"week": "2026-W47", "emailed": 1}, {"week": "2026-W48", "emailed": 0}]
    with pytest.raises(ValueError, match="CLASSROOM_SMTP_PORT: 'twenty-five' is not a port number"):
        SmtpSettings.from_env({"CLASSROOM_SMTP_PORT": "twenty-five"})
    assert not SmtpSettings.from_env({}).enabled


# --------------------------------------------------------------------------- HTTP


def test_report_endpoints_and_roles(sqlite_store, app_factory, staff_client):
    seed(sqlite_store)
    app = app_factory(sqlite_store)
    dsl = staff_client(app, "dsl")
    r = dsl.get("/api/v1/reports/weekly", params={"week": "2026-W47"})
    assert r.status_code == 200
    body = r.json()
    assert body["total_attempts"] == 12 and body["incidents"]["total"] == 3 and len(body["checks"]) == 3
    r = dsl.get("/api/v1/reports/weekly", params={"week": "2026-W47", "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv") and r.text.count("\n") == 5
    page = dsl.get("/reports/weekly", params={"week": "2026-W47"})
    assert page.status_code == 200 and '<strong id="total-attempts">12</strong>' in page.text
    assert "/reports/weekly.csv?week=2026-W47" in page.text
    csv_page = dsl.get("/reports/weekly.csv", params={"week": "2026-11-18"})
    assert 'filename="blocked-2026-W47.csv"' in csv_page.headers["content-disposition"]
    assert dsl.get("/api/v1/reports/weekly", params={"week": "soon"}).json()["detail"].startswith("week: 'soon'")
    assert dsl.get("/api/v1/reports/weekly", params={"format": "pdf"}).status_code == 422
    assert staff_client(app, "technician").get("/reports/weekly").status_code == 200
    for role, code in ((None, 401), ("teacher", 403)):
        c = staff_client(app, role)
        for url in ("/api/v1/reports/weekly", "/reports/weekly", "/reports/weekly.csv"):
            assert c.get(url).status_code == code, (role, url)


def test_digest_scheduler_thread_writes_when_due(sqlite_store, tmp_path, tree):
    from services import wait_until

    seed(sqlite_store)
    now = {"t": datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)}
    sched = reports.DigestScheduler(sqlite_store, tmp_path / "reports", lambda: tree, interval=0.05,
                                    clock=lambda: now["t"])
    assert sched.run_once() is None  # not yet Monday 07:00
    sched.start()
    try:
        now["t"] = datetime(2026, 11, 23, 7, 5, tzinfo=timezone.utc)
        wait_until(lambda: (tmp_path / "reports" / "weekly-2026-W47.html").exists(), timeout=10)
    finally:
        sched.stop()
    assert "penny-acres" in (tmp_path / "reports" / "weekly-2026-W47.html").read_text()
    assert sqlite_store.count("report_runs") == 1

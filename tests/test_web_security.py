"""The collector against a curious staff account and the open network (issue 14, items 7, 12,
14, 15, 16): each test performs the attack against the real app (in-process, or real uvicorn
where sockets matter) and fails if it works again.

* login guessing through the form and the API (one throttle: per user and address, no lockout
  anyone can trigger, fixed memory);
* request bodies over the limit refused before they are read (Content-Length and chunked);
* security headers and the Secure session cookie;
* cross-site request forgery from another origin and from a same-site host;
* spreadsheet formulas smuggled into the CSV exports.
"""

from __future__ import annotations

import csv
import io
import re
import select
import socket
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from server.http.auth import COOKIE, token_hash
from server.http.csrf import csrf_token
from server.http.throttle import LoginThrottle
from server.store import iso

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import PASSWORD, STAFF, make_alert, make_event
from test_api_roles import _routes, _url
from web_fixtures import LiveServer

pytestmark = pytest.mark.timeout(120)

HTTPS = "https://testserver"


@pytest.fixture
def app(sqlite_store, app_factory):
    return app_factory(sqlite_store, publisher=lambda *a, **k: None)


class Clock:
    """The throttle's clock, moved by hand: no test waits for a back-off to pass."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_from(app, address: str, **kwargs):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=HTTPS, follow_redirects=False, client=(address, 40000), **kwargs)


def session_headers(store, role: str) -> tuple[str, dict]:
    token = uuid.uuid4().hex
    store.add_session(token_hash(token), STAFF[role], iso(datetime.now(timezone.utc) + timedelta(hours=1)))
    return token, {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- item 7: login throttle


def test_the_form_and_the_api_share_one_login_throttle_that_backs_off_without_locking_anyone_out(app, sqlite_store):
    clock = Clock()
    app.state.login_throttle = LoginThrottle(clock=clock)
    free = app.state.login_throttle.free
    attacker = client_from(app, "10.1.0.66")
    # 30 wrong DSL passwords through the form: the first few are checked, the rest held back.
    codes = [attacker.post("/login", data={"username": "s.patel", "password": f"guess{i}"}).status_code
             for i in range(30)]
    assert codes == [401] * free + [429] * (30 - free)
    held = attacker.post("/login", data={"username": "s.patel", "password": PASSWORD})
    assert held.status_code == 429 and "set-cookie" not in held.headers  # even the right one: no oracle
    assert int(held.headers["retry-after"]) >= 1 and "Too many wrong passwords" in held.text
    # The API is the same throttle: no fresh budget by switching door.
    api = attacker.post("/api/v1/login", json={"username": "s.patel", "password": PASSWORD})
    assert api.status_code == 429 and "retry-after" in api.headers
    # The real DSL on her own laptop gets in: no lockout of a named user.
    assert client_from(app, "10.1.0.7").post("/login", data={"username": "s.patel",
                                                            "password": PASSWORD}).status_code == 303
    assert client_from(app, "10.1.0.8").post("/api/v1/login", json={"username": "s.patel",
                                                                    "password": PASSWORD}).status_code == 200
    # And the back-off ends by itself: after the wait, the attacker's address may try again.
    clock.now += int(held.headers["retry-after"]) + 1
    assert attacker.post("/login", data={"username": "s.patel", "password": PASSWORD}).status_code == 303
    audit = sqlite_store.list_audit(limit=200)
    assert sum(a["action"] == "login.failed" for a in audit) == free
    assert any(a["action"] == "login.throttled" and "10.1.0.66" in a["details"] for a in audit)


def test_one_address_spraying_many_usernames_runs_out_of_budget(app):
    clock = Clock()
    throttle = app.state.login_throttle = LoginThrottle(clock=clock, address_free=12)
    sprayer = client_from(app, "10.2.0.66")
    codes = [sprayer.post("/api/v1/login", json={"username": f"user{i}", "password": "Summer2026!"}).status_code
             for i in range(throttle.address_free + 3)]
    assert codes == [401] * throttle.address_free + [429] * 3
    # A username it never tried, even with the right password: this address waits.
    assert sprayer.post("/api/v1/login", json={"username": "head", "password": PASSWORD}).status_code == 429
    # Everyone else is untouched.
    assert client_from(app, "10.2.0.5").post("/api/v1/login", json={"username": "head",
                                                                    "password": PASSWORD}).status_code == 200
    # An IPv6 attacker cannot get a fresh budget per address inside its /64.
    v6 = LoginThrottle(clock=clock, address_free=3)
    from server.http.throttle import address_key

    for i in range(3):
        v6.failed(f"u{i}", address_key(f"2001:db8:1:2::{i + 1}"))
    assert not v6.check("someone", address_key("2001:db8:1:2:ffff::9")).allowed
    assert v6.check("someone", address_key("2001:db8:1:3::1")).allowed


def test_a_guesser_spread_over_many_addresses_is_slowed_but_the_user_still_gets_in(app):
    clock = Clock()
    throttle = app.state.login_throttle = LoginThrottle(clock=clock, user_free=6)
    for i in range(throttle.user_free + 1):
        r = client_from(app, f"10.3.0.{i + 1}").post("/api/v1/login", json={"username": "m.khan",
                                                                            "password": f"x{i}"})
        assert r.status_code == 401
    # An address that has guessed at m.khan now waits, even with one failure of its own.
    assert client_from(app, "10.3.0.1").post("/api/v1/login", json={"username": "m.khan",
                                                                    "password": PASSWORD}).status_code == 429
    # The teacher's own phone, which has not failed, is let in.
    assert client_from(app, "10.3.9.9").post("/api/v1/login", json={"username": "m.khan",
                                                                    "password": PASSWORD}).status_code == 200


def test_flooding_the_throttle_neither_resets_it_nor_grows_its_memory():
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    cells = throttle.memory_cells
    sizes = [len(a) for s in (throttle._pair, throttle._address, throttle._user) for a in s.count + s.last]
    for _ in range(throttle.free + 3):
        throttle.failed("s.patel", "10.4.0.66")
    assert not throttle.check("s.patel", "10.4.0.66").allowed
    # 30,000 failures with fresh usernames from fresh addresses (the old throttle forgot
    # everything after 10,001 usernames).
    for i in range(30_000):
        throttle.failed(f"flood{i}", f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}")
    verdict = throttle.check("s.patel", "10.4.0.66")
    assert not verdict.allowed and verdict.why == "this username from this address"
    assert throttle.memory_cells == cells
    assert [len(a) for s in (throttle._pair, throttle._address, throttle._user) for a in s.count + s.last] == sizes
    # The flood did not lock out anyone who has not failed.
    assert throttle.check("s.patel", "10.4.0.7").allowed


# --------------------------------------------------------------------------- item 12: body limits


def _read_response(sock, timeout: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded by *timeout*)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def _send_until_answered(sock, frames, limit_bytes: int) -> tuple[int, bytes]:
    """Send *frames* (an iterator of bytes) until the server answers or *limit_bytes* are out;
    returns (bytes sent, first bytes of the answer)."""
    sock.setblocking(False)
    sent, pending = 0, b""
    while sent < limit_bytes:
        readable, writable, _ = select.select([sock], [sock], [], 30)
        if readable:
            return sent, sock.recv(65536)
        if not writable:
            break  # neither: the server stopped reading and has not answered within 30 s
        if not pending:
            pending = next(frames)
        try:
            n = sock.send(pending)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += n
        pending = pending[n:]
    readable, _, _ = select.select([sock], [], [], 30)
    return sent, (sock.recv(65536) if readable else b"")


@pytest.fixture
def live(app):
    server = LiveServer(app).start()
    yield server
    server.stop()


def test_a_huge_declared_body_is_answered_413_before_the_client_has_sent_it(live):
    total = 200 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {total}\r\n\r\n".encode())
        body = (b"x" * 65536 for _ in iter(int, 1))
        sent, answer = _send_until_answered(sock, body, total)
        answer += _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total // 10, f"the client had to send {sent} bytes before the answer"
    assert b"connection: close" in answer.lower()


def test_a_huge_chunked_body_is_cut_off_at_the_limit(live):
    from server.http.bodylimit import MAX_BODY

    total = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16384, b"a" * 16384)
        sent, answer = _send_until_answered(sock, iter(lambda: chunk, None), total)
        answer += _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total // 10
    assert str(MAX_BODY).encode() in answer


def test_every_route_refuses_an_oversized_body_and_only_a_technician_may_publish_a_big_tree(app, sqlite_store):
    from fastapi.testclient import TestClient

    from server.http.bodylimit import MAX_BODY

    big = b"{" + b" " * MAX_BODY + b"}"
    _, tech = session_headers(sqlite_store, "technician")
    with TestClient(app) as client:
        for method, path, _ in _routes(app):
            url = _url(path, "x")
            r = client.request(method, url, content=big, headers={"Content-Type": "application/json"})
            assert r.status_code == 413, (method, path, r.status_code)
            chunked = client.request(method, url, content=iter([big[:40000], big[40000:]]),
                                     headers={"Content-Type": "application/json"})
            assert chunked.status_code == 413, (method, path, "chunked", chunked.status_code)
        # A config tree over 64 KiB: refused without a technician session, accepted (parsed) with one.
        tree = b'{"why": "term", "files": {"site.yaml": "' + b"#" * (2 * MAX_BODY) + b'"}}'
        assert client.post("/api/v1/config/rollouts", content=tree,
                           headers={"Content-Type": "application/json"}).status_code == 413
        _, teacher = session_headers(sqlite_store, "teacher")
        assert client.post("/api/v1/config/rollouts", content=tree,
                           headers={"Content-Type": "application/json", **teacher}).status_code == 413
        r = client.post("/api/v1/config/rollouts", content=tree, headers={"Content-Type": "application/json", **tech})
        assert r.status_code not in (413, 401, 403) and "errors" in r.json()["detail"]


# --------------------------------------------------------------------------- item 14: headers and cookie


def test_every_answer_carries_the_security_headers(app, sqlite_store):
    from fastapi.testclient import TestClient

    _, dsl = session_headers(sqlite_store, "dsl")
    _, admin = session_headers(sqlite_store, "admin")
    answers = []
    with TestClient(app, base_url=HTTPS) as client:
        for method, path, allowed in _routes(app):
            if method != "GET" or path.endswith("/events"):
                continue
            for headers in ({}, dsl, admin):
                answers.append((path, client.get(_url(path, "x"), headers=headers)))
        answers.append(("404", client.get("/no/such/page")))
        answers.append(("413", client.post("/login", content=b"x" * 70000)))
        answers.append(("/static/app.css", client.get("/static/app.css")))
    for path, r in answers:
        h = r.headers
        csp = h.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp, path
        assert h.get("x-frame-options") == "DENY" and h.get("x-content-type-options") == "nosniff", path
        assert h.get("referrer-policy") == "same-origin", path
        assert h.get("strict-transport-security", "").startswith("max-age="), path  # https
    # The report page's own inline style is allowed by its hash, and nothing else inline.
    with TestClient(app, base_url=HTTPS) as client:
        page = client.get("/reports/weekly", headers=dsl)
    import base64
    import hashlib

    [style] = re.findall(r"<style>(.*?)</style>", page.text, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'self' 'sha256-{digest}'" in page.headers["content-security-policy"]


def test_the_dashboard_has_nothing_inline_the_policy_would_block():
    from server.web.templating import STATIC_DIR, TEMPLATES_DIR

    for template in TEMPLATES_DIR.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"\son[a-z]+\s*=", text), f"{template.name}: inline event handler"
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{template.name}: inline script"
        assert "style=" not in text and "<style" not in text, f"{template.name}: inline style"
    assert "csrf-token" in (STATIC_DIR / "room.js").read_text()


def test_session_cookies_are_secure_by_default_and_plain_http_is_for_loopback_only(sqlite_store, app_factory, tmp_path,
                                                                                 capsys):
    from server import cli

    app = app_factory(sqlite_store)  # default Settings, as `serve` without --plain-http
    form = client_from(app, "10.5.0.1").post("/login", data={"username": "m.khan", "password": PASSWORD})
    api = client_from(app, "10.5.0.1").post("/api/v1/login", json={"username": "m.khan", "password": PASSWORD})
    for r in (form, api):
        cookie = r.headers["set-cookie"].lower()
        assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "--plain-http", "--bind", "0.0.0.0", "--db", f"sqlite:///{tmp_path}/x.db"])
    assert exit.value.code != 0
    assert "--plain-http: only with a loopback --bind" in capsys.readouterr().err


# --------------------------------------------------------------------------- item 15: CSRF


def _snapshot(store):
    tables = ("users", "incidents", "incident_actions", "events", "devices", "enrol_tokens", "config_versions",
              "rollouts")
    return {t: store.query(f"SELECT * FROM {t}") for t in tables}


def test_no_state_changing_route_can_be_forged_with_the_session_cookie(app, sqlite_store):
    from fastapi.testclient import TestClient

    from server.http.app import PUBLIC_ROUTES

    alert = make_alert()
    sqlite_store.record_alert(alert)
    unsafe = [(m, p, allowed) for m, p, allowed in _routes(app)
              if m in ("POST", "PUT", "PATCH", "DELETE") and (m, p) not in PUBLIC_ROUTES]
    assert len(unsafe) >= 15
    attacks = {
        "no token": {},
        "wrong token": {"X-CSRF-Token": csrf_token("someone else's session")},
        "same-site host (intranet wiki)": {"Sec-Fetch-Site": "same-site", "Origin": "https://wiki.school.example"},
        "other origin": {"Origin": "https://evil.example"},
        "null origin": {"Origin": "null"},
    }
    before = _snapshot(sqlite_store)
    with TestClient(app, base_url=HTTPS, follow_redirects=False) as client:
        for method, path, allowed in unsafe:
            role = next(r for r in ("dsl", "admin", "technician", "teacher") if r in allowed)
            session, _ = session_headers(sqlite_store, role)
            client.cookies.set(COOKIE, session)
            for name, extra in attacks.items():
                headers = dict(extra)
                if name not in ("no token", "wrong token"):
                    headers["X-CSRF-Token"] = csrf_token(session)  # even with the right token
                for body in ({"json": {}}, {"data": {"text": "forged", "category": "other", "why": "forged",
                                                      "csrf_token": csrf_token("not it") if name == "wrong token"
                                                      else ""}}):
                    r = client.request(method, _url(path, alert["id"]), headers=headers, **body)
                    assert r.status_code == 403 and "refused:" in r.text, (method, path, name, r.status_code, r.text)
        assert _snapshot(sqlite_store) == before, "a forged request changed something"

        # The same requests from the dashboard itself go through.
        session, _ = session_headers(sqlite_store, "dsl")
        client.cookies.set(COOKIE, session)
        same_origin = {"Origin": HTTPS, "Sec-Fetch-Site": "same-origin"}
        r = client.post(f"/incidents/{alert['id']}/note", headers=same_origin,
                        data={"text": "Phoned home.", "csrf_token": csrf_token(session)})
        assert r.status_code == 303
        r = client.patch(f"/api/v1/incidents/{alert['id']}", json={"status": "in-progress"},
                         headers={**same_origin, "X-CSRF-Token": csrf_token(session)})
        assert r.status_code == 200
        # Bearer-token API clients are not affected (a browser never adds the header itself).
        client.cookies.clear()
        _, bearer = session_headers(sqlite_store, "dsl")
        r = client.patch(f"/api/v1/incidents/{alert['id']}", json={"status": "referred"},
                         headers={**bearer, "Origin": "https://evil.example"})
        assert r.status_code == 200
    assert sqlite_store.get_incident(alert["id"])["status"] == "referred"


def test_nobody_can_log_a_browser_in_from_another_site(app, sqlite_store):
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        c = client_from(app, "10.6.0.1")
        r = c.post("/login", data={"username": "m.khan", "password": PASSWORD}, headers=headers)
        assert r.status_code == 403 and "set-cookie" not in r.headers
    ok = client_from(app, "10.6.0.1").post("/login", data={"username": "m.khan", "password": PASSWORD},
                                           headers={"Origin": HTTPS, "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 303
    assert sqlite_store.count("sessions") == 1


def test_every_dashboard_form_carries_its_sessions_token(app, sqlite_store):
    alert = make_alert()
    sqlite_store.record_alert(alert)
    seen = 0
    for role, pages in (("dsl", [f"/incidents/{alert['id']}", "/incidents", "/rooms/5b"]),
                        ("technician", ["/rollout", "/devices", "/rollout/audit"]),
                        ("teacher", ["/rooms/5b", "/incidents"])):
        c = client_from(app, "10.7.0.1")
        assert c.post("/login", data={"username": STAFF[role], "password": PASSWORD}).status_code == 303
        expected = csrf_token(c.cookies[COOKIE])
        for url in pages:
            html = c.get(url).text
            forms = re.findall(r'<form method="post".*?</form>', html, re.S)
            for form in forms:
                assert f'<input type="hidden" name="csrf_token" value="{expected}">' in form, (role, url, form[:120])
                seen += 1
            assert f'<meta name="csrf-token" content="{expected}">' in html, (role, url)
    assert seen >= 8


# --------------------------------------------------------------------------- item 16: CSV formulas


HOSTILE = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1", "\uff1d1+1", "\uff0b1",
           "\uff0d1", "\uff20SUM(A1)", "\ufe661+1"]


def test_no_csv_cell_can_start_a_formula(app, sqlite_store):
    from fastapi.testclient import TestClient

    now = protocol.now_ts()
    events = []
    for i, value in enumerate(HOSTILE):
        event = make_event(type="blocked", domain=value, profile=value, ts=now)
        event["first_seen"] = value
        protocol.validate_event(event)  # what a device can really send
        events.append(event)
    sqlite_store.insert_events(events)
    _, dsl = session_headers(sqlite_store, "dsl")
    _, tech = session_headers(sqlite_store, "technician")
    with TestClient(app, base_url=HTTPS) as client:
        documents = [client.get("/reports/weekly.csv", headers=dsl).text,
                     client.get("/api/v1/reports/weekly", params={"format": "csv"}, headers=tech).text]
    for text in documents:
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert len(rows) == 1 + len(HOSTILE)
        cells = [cell for row in rows for cell in row]
        from server.safecsv import FORMULA_STARTS

        assert not [c for c in cells if c[:1] in FORMULA_STARTS], "a cell a spreadsheet would run"
        domains = {row[3] for row in rows[1:]}
        key_stages = {row[2] for row in rows[1:]}
        assert domains == key_stages == {"'" + v for v in HOSTILE}


def test_there_is_one_csv_writer():
    from pathlib import Path

    import server

    root = Path(server.__file__).parent
    writers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "csv.writer(" in p.read_text())
    assert writers == ["safecsv.py"]


def test_behind_the_reverse_proxy_the_dashboards_own_origin_is_still_recognised(app, sqlite_store):
    """nginx without `proxy_set_header Host` sends Host: 127.0.0.1:8080; X-Forwarded-Host then
    names the host the browser used.  Another origin is still refused."""
    from fastapi.testclient import TestClient

    alert = make_alert()
    sqlite_store.record_alert(alert)
    session, _ = session_headers(sqlite_store, "dsl")
    proxied = {"Host": "127.0.0.1:8080", "X-Forwarded-Host": "safety.school.example",
               "X-CSRF-Token": csrf_token(session), "Sec-Fetch-Site": "same-origin"}
    with TestClient(app, base_url=HTTPS, follow_redirects=False, cookies={COOKIE: session}) as client:
        ok = client.post(f"/incidents/{alert['id']}/note", data={"text": "via the proxy"},
                         headers={**proxied, "Origin": "https://safety.school.example"})
        assert ok.status_code == 303
        bad = client.post(f"/incidents/{alert['id']}/note", data={"text": "forged"},
                          headers={**proxied, "Origin": "https://wiki.school.example"})
        assert bad.status_code == 403
    assert [a["text"] for a in sqlite_store.get_incident(alert["id"])["actions"]] == ["via the proxy"]

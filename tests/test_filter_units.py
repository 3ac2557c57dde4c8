"""Unit tests of the filter's pure parts: coalescing, log parsing, overrides, evidence, CLI."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from agent.filter import querylog
from agent.filter.blocked import BlockedCoalescer
from agent.filter.dnsclient import build_query, parse_response
from agent.filter.evidence import Evidence
from agent.filter.overrides import OverrideError, OverrideStore, parse_allow
from agent.filter.safesearch import rewrites
from filter_fixtures import stub_upstream  # noqa: F401
from services import wait_until

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parent.parent


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ------------------------------------------------------------------ coalescing

def test_coalescer_burst_is_one_batch():
    c = BlockedCoalescer(window_seconds=60, settle_seconds=1)
    for i in range(200):
        assert c.add("facebook.com", at(i * 0.001)) == []
    assert c.due(at(0.5)) == []                       # still settling
    [batch] = c.due(at(1.2))
    assert (batch.domain, batch.count, batch.first_seen, batch.last_seen) == ("facebook.com", 200, at(0), at(0.199))
    assert c.due(at(30)) == []


def test_coalescer_late_repeats_in_window_are_one_more_batch_at_window_end():
    c = BlockedCoalescer(window_seconds=60, settle_seconds=1)
    c.add("x.com", at(0))
    assert c.due(at(2))[0].count == 1
    c.add("x.com", at(10))
    c.add("x.com", at(20))
    assert c.due(at(30)) == []                        # already reported in this window
    [late] = c.due(at(60))
    assert late.count == 2 and late.first_seen == at(10)
    assert len(c) == 0
    c.add("x.com", at(61))                            # a new window starts fresh
    assert c.due(at(62.5))[0].count == 1


def test_coalescer_memory_is_bounded_and_nothing_counted_is_lost():
    c = BlockedCoalescer(window_seconds=60, settle_seconds=1, max_domains=3)
    flushed = []
    for i in range(10):
        flushed += c.add(f"d{i}.com", at(0))
    assert len(c) == 3
    flushed += c.flush_all()
    assert sorted(b.domain for b in flushed) == sorted(f"d{i}.com" for i in range(10))


# ------------------------------------------------------------------ query log

LOG = """Nov 24 09:06:14 dnsmasq[11388]: query[A] facebook.com from 127.0.0.1
Nov 24 09:06:14 dnsmasq[11388]: config facebook.com is NXDOMAIN
Nov 24 09:06:14 dnsmasq[11388]: query[AAAA] www.BBC.co.uk from 127.0.0.1
Nov 24 09:06:14 dnsmasq[11388]: forwarded www.bbc.co.uk to 10.20.0.1
Nov 24 09:06:14 dnsmasq[11388]: reply www.bbc.co.uk is 192.0.2.10
Nov 24 09:06:14 dnsmasq[11388]: config www.google.com is NODATA-IPv6
Nov 24 09:06:14 dnsmasq[11388]: query[A] use-application-dns.net from 127.0.0.1
Nov 24 09:06:14 dnsmasq[11388]: config use-application-dns.net is NXDOMAIN
Nov 24 09:06:14 dnsmasq[11388]: query[PTR] 1.0.0.127.in-addr.arpa from 127.0.0.1
Nov 24 09:06:14 dnsmasq[11388]: config wpad is NXDOMAIN
Nov 24 09:06:14 dnsmasq[11388]: 12 127.0.0.1/40000 query[A] tiktok.com from 127.0.0.1
Nov 24 09:06:14 dnsmasq[11388]: 12 127.0.0.1/40000 config tiktok.com is NXDOMAIN
garbage \x00 line with config and NXDOMAIN words
"""


def test_parse_lines():
    records = [r for r in map(querylog.parse_line, LOG.splitlines()) if r]
    assert [(r.kind, r.name) for r in records] == [
        ("query", "facebook.com"), ("blocked", "facebook.com"), ("query", "www.bbc.co.uk"),
        ("query", "tiktok.com"), ("blocked", "tiktok.com")]
    assert records[2].qtype == "AAAA" and records[0].client == "127.0.0.1"


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_follower_reads_appends_and_survives_rotation(tmp_path, monkeypatch, watch):
    """With inotify the follower sleeps until the log's directory changes (its safety-net
    timeout is a minute here, so only inotify can explain the reads); without, it polls."""
    if watch == "poll":
        monkeypatch.setattr(querylog.QueryLogFollower, "_watch", lambda self: None)
    path = tmp_path / "queries.log"
    path.write_text("Nov 24 09:00:00 dnsmasq[1]: config old.com is NXDOMAIN\n")  # before start: skipped
    got: list = []
    rotated = threading.Event()

    def rotate():
        rotated.set()
        path.write_text("")  # dnsmasq would reopen (create) it on SIGUSR2

    f = querylog.QueryLogFollower(path, got.extend, poll_seconds=0.01, idle_seconds=60, max_bytes=180,
                                  on_rotate=rotate)
    f.start()
    assert (f._inotify is not None) == (watch == "inotify")
    thread = f._thread
    try:
        with path.open("a") as fh:
            fh.write("Nov 24 09:00:01 dnsmasq[1]: config new.com is NXDOMAIN\nNov 24 09:00:01 dnsmasq[1]: con")
            fh.flush()
            wait_until(lambda: [r.name for r in got] == ["new.com"], 5)
            fh.write("fig half.com is NXDOMAIN\n")  # a line written in two pieces is read once, whole
            fh.flush()
        wait_until(lambda: [r.name for r in got] == ["new.com", "half.com"], 5)
        assert not rotated.is_set()
        with path.open("a") as fh:
            fh.write("Nov 24 09:00:01 dnsmasq[1]: config more.com is NXDOMAIN\n")  # now past max_bytes
        wait_until(rotated.is_set, 5)
        assert got[-1].name == "more.com"
        assert (tmp_path / "queries.log.1").exists()
        with path.open("a") as fh:
            fh.write("Nov 24 09:00:02 dnsmasq[1]: config after-rotate.com is NXDOMAIN\n")
        wait_until(lambda: got and got[-1].name == "after-rotate.com", 5)
        mtime = path.stat().st_mtime_ns
    finally:
        f.stop()
    assert not thread.is_alive()  # stop() woke it; it did not sit out its minute
    assert path.stat().st_mtime_ns == mtime  # ...without touching dnsmasq's log to do it


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_lines_written_to_the_old_log_before_dnsmasq_reopens_it_are_read(tmp_path, monkeypatch, watch):
    """Between the rename and dnsmasq acting on SIGUSR2, dnsmasq still writes to the renamed
    file: those lines count as much as any (a blocked attempt there was once lost)."""
    if watch == "poll":
        monkeypatch.setattr(querylog.QueryLogFollower, "_watch", lambda self: None)
    path = tmp_path / "queries.log"
    path.write_text("")
    got: list = []
    rotated = threading.Event()
    f = querylog.QueryLogFollower(path, got.extend, poll_seconds=0.01, idle_seconds=60, max_bytes=100,
                                  on_rotate=rotated.set)  # dnsmasq slow to reopen: no new file yet
    f.start()
    try:
        with path.open("a") as fh:  # dnsmasq's open file: it follows the rename
            fh.write("Nov 24 09:00:01 dnsmasq[1]: config one.com is NXDOMAIN\n"
                     "Nov 24 09:00:01 dnsmasq[1]: config two.com is NXDOMAIN\n")
            fh.flush()
            wait_until(rotated.is_set, 5)
            assert not path.exists() and (tmp_path / "queries.log.1").exists()
            fh.write("Nov 24 09:00:02 dnsmasq[1]: config before-reopen.com is NXDOMAIN\n")
            fh.flush()
            wait_until(lambda: [r.name for r in got] == ["one.com", "two.com", "before-reopen.com"], 5)
            fh.write("Nov 24 09:00:02 dnsmasq[1]: config last-in-old.com is NXDOMAIN\n")
        # dnsmasq reopens: the new file, and nothing more in the old one.
        path.write_text("Nov 24 09:00:03 dnsmasq[1]: config in-new.com is NXDOMAIN\n")
        wait_until(lambda: [r.name for r in got][-2:] == ["last-in-old.com", "in-new.com"], 5,
                   message=lambda: str([r.name for r in got]))
    finally:
        f.stop()
    assert [r.name for r in got] == ["one.com", "two.com", "before-reopen.com", "last-in-old.com", "in-new.com"]


# ------------------------------------------------------------------ overrides

LIMITS = dict(default_minutes=60, max_minutes=240)


def test_parse_allow_defaults_and_limits():
    ov = parse_allow({"cmd": "allow", "domain": "example.org.", "by": "a.jones", "reason": "maths"}, T0, **LIMITS)
    assert ov.domain == "example.org" and ov.expires == T0 + timedelta(minutes=60) and ov.reason == "maths"
    ov = parse_allow({"cmd": "allow", "domain": "example.org", "by": "a.jones"}, T0, **LIMITS,
                     lesson_end=T0 + timedelta(minutes=25))
    assert ov.expires == T0 + timedelta(minutes=25)
    ov = parse_allow({"cmd": "allow", "domain": "example.org", "by": "a.jones", "minutes": 240}, T0, **LIMITS)
    assert ov.expires == T0 + timedelta(minutes=240)
    for bad in ({"cmd": "allow", "domain": "example.org", "by": "a.jones", "minutes": 241},
                {"cmd": "allow", "domain": "example.org", "by": "a.jones", "minutes": True},
                {"cmd": "allow", "domain": "EXAMPLE.org", "by": "a.jones"},
                {"cmd": "allow", "domain": "example.org", "by": ""},
                {"cmd": "allow", "domain": "example.org", "by": "a.jones", "reason": 5},
                {"cmd": "allow", "domain": "sch.uk", "by": "a.jones"},
                {"cmd": "allow", "by": "a.jones"},
                {"cmd": "lock", "by": "a.jones"}):
        with pytest.raises(OverrideError) as err:
            parse_allow(bad, T0, **LIMITS)
        assert "\n" not in str(err.value) and ":" in str(err.value)


def test_store_persists_and_expires(tmp_path):
    store = OverrideStore(tmp_path)
    store.put(parse_allow({"cmd": "allow", "domain": "a.org", "by": "t", "minutes": 5}, T0, **LIMITS))
    store.put(parse_allow({"cmd": "allow", "domain": "b.org", "by": "t", "minutes": 50}, T0, **LIMITS))
    again = OverrideStore(tmp_path)                  # a restart
    assert again.domains() == ["a.org", "b.org"] and again.next_expiry() == T0 + timedelta(minutes=5)
    assert [o.domain for o in again.expired(at(5 * 60))] == ["a.org"]
    assert OverrideStore(tmp_path).domains() == ["b.org"]


def test_store_with_damaged_file_starts_empty(tmp_path, caplog):
    (tmp_path / "filter-overrides.json").write_text("{broken")
    assert len(OverrideStore(tmp_path)) == 0
    assert "unreadable" in caplog.text
    (tmp_path / "filter-overrides.json").write_text(json.dumps({"overrides": [{"domain": "bad domain"}]}))
    assert len(OverrideStore(tmp_path)) == 0


# ------------------------------------------------------------------ evidence, safe search, dns client

def test_evidence_is_bounded_and_windowed():
    ev = Evidence(max_domains=100)
    for i in range(1000):
        ev.add(f"site{i}.com", at(i))
    assert len(ev) == 100
    rows = ev.recent(1, at(999))
    assert [r["domain"] for r in rows] == [f"site{i}.com" for i in range(939, 1000)]
    ev.add("x.com", at(1000))
    ev.add("x.com", at(1001))
    ev.mark_blocked("x.com")
    row = ev.recent(1, at(1001))[-1]
    assert row == {"domain": "x.com", "ts": "2026-11-24T10:16:41.000Z", "first_seen": "2026-11-24T10:16:40.000Z",
                   "count": 2, "blocked": True}


def test_safe_search_only_for_allowed_engines():
    assert rewrites(["bbc.co.uk"], True, "strict") == []
    names = {r.name: r.target for r in rewrites(["google.com", "youtube.com"], True, "moderate")}
    assert names == {"www.google.com": "forcesafesearch.google.com", "www.youtube.com": "restrictmoderate.youtube.com",
                     "m.youtube.com": "restrictmoderate.youtube.com"}
    assert rewrites(["google.com", "youtube.com"], False, "off") == []


def test_dns_client_rejects_hostile_responses():
    # A fixed id whose two bytes differ: swapping them must give a different id.
    ident, packet = build_query("bbc.co.uk", ident=0x1234)
    with pytest.raises(ValueError, match="short"):
        parse_response(b"\x00\x01", ident)
    with pytest.raises(ValueError, match="id does not match"):
        parse_response(packet[:2][::-1] + packet[2:], ident)   # wrong id
    # Claims one answer but the packet stops inside it.
    truncated = packet[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + packet[12:] + b"\xc0\x0c\x00\x01"
    with pytest.raises(ValueError, match="malformed DNS response"):
        parse_response(truncated, ident)
    # A compression pointer loop must not hang.
    looped = packet[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + packet[12:] \
        + b"\xc0" + bytes([len(packet)]) + b"\x00\x01\x00\x01\x00\x00\x00\x10\x00\x04\x7f\x00\x00\x01"
    rcode, answers = parse_response(looped, ident)
    assert rcode == "NOERROR" and answers == ["127.0.0.1"]


# ------------------------------------------------------------------ CLI

def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        agent_main(argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_filter_show(capsys):
    code, out, err = run_cli(["filter", "show", "--config", str(REPO / "config"), "--device", "5b-pi-01",
                              "--at", "2026-11-24T10:00+00:00"], capsys)
    assert code == 0, err
    for part in ("### dnsmasq", "### servers", "### chromium", "### firefox", "### nftables"):
        assert part in out
    assert "server=/scratch.mit.edu/10.20.0.1" in out and "address=/#/" in out
    code, out, _ = run_cli(["filter", "show", "--config", str(REPO / "config"), "--device", "5b-pi-01",
                            "--part", "chromium"], capsys)
    assert code == 0 and json.loads(out)["URLBlocklist"] == ["*"]


@pytest.mark.parametrize("argv,needle", [
    (["filter", "show", "--config", "config", "--device", "no-such-device"], "--device: unknown device"),
    (["filter", "show", "--config", "/nonexistent/x.json", "--device", "5b-pi-01"], "cannot read compiled config"),
    (["filter", "show", "--config", "config", "--device", "5b-pi-01", "--at", "yesterday"], "--at:"),
    (["filter", "check", "--socket", "/nonexistent/control.sock"], "cannot reach the agent"),
    (["filter", "check", "--config", "config"], "--device: required"),
])
def test_cli_filter_errors_are_one_line(argv, needle, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(argv, capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("classroom-agent: error:") and needle in lines[0], err


def test_check_reports_failures_honestly(stub_upstream):
    from agent.filter.check import check_domains, event_fields
    from services import free_port

    # Against a resolver that does NOT filter: the blocked domain resolves -> fail; an
    # unknown "allowed" domain does not resolve -> fail; silence is never a pass.
    results = check_domains(["not-known.example"], ["bbc.co.uk"], server="127.0.0.1", port=stub_upstream.port)
    verdicts = {r.domain: r.result for r in results}
    assert verdicts["not-known.example"] == "fail" and verdicts["bbc.co.uk"] == "fail"
    fields = event_fields(results, "ks2", "j.tech")
    assert fields["ok"] is False and fields["failed"] >= 2
    silent = check_domains([], ["x.example"], server="127.0.0.1", port=free_port(), timeout=0.3)
    assert all(r.rcode == "TIMEOUT" and r.result == "fail" for r in silent)


def test_unreachable_dir_is_found(tmp_path):
    import pwd

    from agent.filter.component import _unreachable_for

    uid = pwd.getpwnam("nobody").pw_uid
    open_dir = tmp_path / "a" / "b"
    open_dir.mkdir(parents=True)
    for d in (tmp_path / "a", open_dir):
        d.chmod(0o755)
    closed = tmp_path / "a"
    closed.chmod(0o750)
    try:
        assert _unreachable_for(uid, open_dir) == closed      # the nearest blocker is named
        closed.chmod(0o755)
        blocker = _unreachable_for(uid, open_dir)
        assert blocker is None or blocker in (tmp_path, *tmp_path.parents)   # pytest's own 0700 dirs
    finally:
        closed.chmod(0o755)


def test_blocked_records_get_their_query_type():
    records = [r for r in map(querylog.parse_line, LOG.splitlines()) if r]
    typed = querylog.with_qtypes(records, {})
    assert [(r.kind, r.name, r.qtype) for r in typed if r.kind == "blocked"] == [
        ("blocked", "facebook.com", "A"), ("blocked", "tiktok.com", "A")]

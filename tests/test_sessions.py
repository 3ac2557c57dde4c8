"""Logins and logouts from the system's session records; shared accounts; the AUP."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.desktop.x11 import TkPresenter
from agent.policy.aup import AcceptableUse, AupRecords, term_key
from agent.desktop.session import Session, is_shared_account, read_sessions
from agent.policy.sessions import SessionsComponent
from fake_runtime import FakeRuntime
from lock_fixtures import RecordingRunner, xvfb  # noqa: F401 - fixture
from services import require_binary, require_root, wait_until

pytestmark = pytest.mark.timeout(40)


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


class FakePresenter:
    def __init__(self):
        self.dialogs, self.notices, self.closed = [], [], []

    def dialog(self, session, text, on_accept):
        handle = ("dialog", session.id, text, on_accept)
        self.dialogs.append(handle)
        return handle

    def notice(self, session, text):
        handle = ("notice", session.id, text)
        self.notices.append(handle)
        return handle

    def close(self, handle):
        self.closed.append(handle)


def rig(tmp_path, device="5b-pi-01", when=utc(2026, 11, 24, 10, 0)):
    rt = FakeRuntime(tmp_path, device=device, start=when)
    table: list[Session] = []
    presenter = FakePresenter()
    comp = SessionsComponent(reader=lambda: list(table), poll_seconds=3600,
                             aup=AcceptableUse(rt, presenter))
    comp.start(rt)
    return rt, comp, table, presenter


def desktop(user, sid="c1", display=":0"):
    return Session(id=sid, user=user, uid=1001, type="x11", display=display, seat="seat0")


# --------------------------------------------------------------------------- login/logout


def test_login_and_logout_events_carry_user_session_and_time(tmp_path):
    rt, comp, table, _ = rig(tmp_path)
    table.append(desktop("amira.k"))
    comp.refresh()
    [ev] = rt.of_type("login")
    assert (ev["user"], ev["session"], ev["device"], ev["shared"]) == ("amira.k", "c1", "5b-pi-01", False)
    assert ev["ts"] == "2026-11-24T10:00:00.000Z"
    assert comp.current_user() == "amira.k"
    comp.refresh()
    assert len(rt.of_type("login")) == 1  # no change, no event
    table.clear()
    rt.clock.advance(3600)
    comp.refresh()
    [ev] = rt.of_type("logout")
    assert (ev["user"], ev["session"], ev["ts"]) == ("amira.k", "c1", "2026-11-24T11:00:00.000Z")
    assert rt.of_type("shared_login") == []


def test_shared_account_on_ks2_is_reported(tmp_path):
    rt, comp, table, _ = rig(tmp_path)
    table.append(desktop("year5"))
    comp.refresh()
    assert rt.of_type("login")[0]["shared"] is True
    [ev] = rt.of_type("shared_login")
    assert ev["user"] == "year5" and ev["key_stage"] == "ks2"


def test_shared_account_is_fine_in_reception(tmp_path):
    rt, comp, table, _ = rig(tmp_path, device="reception-pi-01")
    assert rt.policy.shared_login_allowed and "reception" in rt.policy.shared_accounts
    table.append(desktop("reception"))
    comp.refresh()
    assert rt.of_type("login")[0]["shared"] is True
    assert rt.of_type("shared_login") == []


def test_generic_account_names():
    assert is_shared_account("guest") and is_shared_account("Year4") and is_shared_account("class3b")
    assert is_shared_account("robins", ["robins"])
    assert not is_shared_account("amira.k") and not is_shared_account("yearling")


def test_a_broken_reading_changes_nothing(tmp_path):
    rt, comp, table, _ = rig(tmp_path)
    table.append(desktop("amira.k"))
    comp.refresh()

    def broken():
        raise OSError("loginctl hung")
    comp.reader = broken
    comp.refresh()
    assert rt.of_type("logout") == [] and comp.current_user() == "amira.k"


# --------------------------------------------------------------------------- sources


LIST_JSON = json.dumps([
    {"session": "3", "uid": 1001, "user": "amira.k", "seat": "seat0", "tty": "tty7"},
    {"session": "c2", "uid": 110, "user": "lightdm", "seat": "seat0", "tty": "tty8"},
])


def test_loginctl_sessions_with_type_and_display_asked_once():
    runner = RecordingRunner({
        "loginctl list-sessions": (0, LIST_JSON),
        "loginctl show-session 3": (0, "Type=wayland\nDisplay=\nRemote=no\nClass=user\nLeader=812\n"),
        "loginctl show-session c2": (0, "Type=x11\nDisplay=:1\nRemote=no\nClass=greeter\n"),
    })
    cache: dict = {}
    [s] = read_sessions(runner, cache, use_logind=True)
    assert (s.id, s.user, s.uid, s.type, s.seat, s.tty, s.leader, s.remote) == \
        ("3", "amira.k", 1001, "wayland", "seat0", "tty7", 812, False)
    assert s.is_graphical
    read_sessions(runner, cache, use_logind=True)
    shows = [argv for argv in runner.ran if argv[1] == "show-session"]
    # The greeter is asked about each time (it is not cached as a user session); ours only once.
    assert sum(1 for argv in shows if argv[2] == "3") == 1


def test_loginctl_garbage_falls_back_to_utmp():
    runner = RecordingRunner({"loginctl list-sessions": (0, "this is not json")})
    sessions = read_sessions(runner, {}, use_logind=True)
    assert isinstance(sessions, list)  # utmp's answer, whatever it is here; no exception
    runner = RecordingRunner({"loginctl list-sessions": (1, "")})
    assert isinstance(read_sessions(runner, {}, use_logind=True), list)


class Utmpx(ctypes.Structure):
    _fields_ = [("ut_type", ctypes.c_short), ("ut_pid", ctypes.c_int), ("ut_line", ctypes.c_char * 32),
                ("ut_id", ctypes.c_char * 4), ("ut_user", ctypes.c_char * 32), ("ut_host", ctypes.c_char * 256),
                ("e_termination", ctypes.c_short), ("e_exit", ctypes.c_short), ("ut_session", ctypes.c_int32),
                ("tv_sec", ctypes.c_int32), ("tv_usec", ctypes.c_int32), ("ut_addr_v6", ctypes.c_int32 * 4),
                ("reserved", ctypes.c_char * 20)]


def write_utmp(kind: int, user: str, line: str, pid: int) -> None:
    """A real login record, written by glibc's pututxline as a display manager does."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.pututxline.restype = ctypes.c_void_p
    rec = Utmpx(ut_type=kind, ut_pid=pid, ut_line=line.encode(), ut_id=line[-4:].encode(),
                ut_user=user.encode(), tv_sec=int(time.time()))
    libc.setutxent()
    ok = libc.pututxline(ctypes.byref(rec))
    libc.endutxent()
    assert ok, f"pututxline failed: errno {ctypes.get_errno()}"


@pytest.mark.integration
def test_real_utmp_login_and_logout(tmp_path):
    assert ctypes.sizeof(Utmpx) == 384
    utmp = Path("/run/utmp")
    require_root("writing utmp")
    created = not utmp.exists()
    utmp.touch()
    rt = FakeRuntime(tmp_path, start=utc(2026, 11, 24, 10, 0))
    comp = SessionsComponent(poll_seconds=3600, aup=AcceptableUse(rt, FakePresenter()))
    comp._cache = {}
    comp.reader = lambda: read_sessions(use_logind=False)
    comp.start(rt)
    pid = os.getpid()
    try:
        write_utmp(7, "pupil-test", "tty63", pid)  # USER_PROCESS
        comp.refresh()
        [ev] = [e for e in rt.of_type("login") if e["user"] == "pupil-test"]
        assert ev["tty"] == "tty63" and ev["session"].startswith(f"utmp-{pid}-")
        write_utmp(8, "", "tty63", pid)  # DEAD_PROCESS: the logout
        comp.refresh()
        assert [e["user"] for e in rt.of_type("logout")] == ["pupil-test"]
    finally:
        if created:
            utmp.unlink()


# --------------------------------------------------------------------------- acceptable use


def test_aup_once_per_term_and_recorded(tmp_path):
    rt, comp, table, presenter = rig(tmp_path)
    table.append(desktop("amira.k"))
    comp.refresh()
    [(_, sid, text, accept)] = presenter.dialogs
    assert text == rt.policy.messages["acceptable_use"] and "kind" in text
    [(_, _, notice)] = presenter.notices
    assert notice == rt.policy.messages["monitoring_notice"]
    accept()  # the pupil pressed "I agree"
    [ev] = rt.of_type("aup_accepted")
    assert (ev["user"], ev["term"], ev["key_stage"]) == ("amira.k", "Autumn 2026", "ks2")
    assert AupRecords(rt.state_dir).has_accepted("amira.k", "Autumn 2026")  # on disk
    # Log out and in again the same term: no dialog, still the notice.
    table.clear()
    comp.refresh()
    assert ("notice", "c1", notice) in presenter.closed
    table.append(desktop("amira.k", sid="c2"))
    comp.refresh()
    assert len(presenter.dialogs) == 1 and len(presenter.notices) == 2
    # Spring term: asked again.
    table.clear()
    comp.refresh()
    rt.set_time(utc(2027, 1, 6, 10, 0))
    table.append(desktop("amira.k", sid="c3"))
    comp.refresh()
    assert len(presenter.dialogs) == 2


def test_aup_file_damaged_means_asking_again_not_crashing(tmp_path):
    rt = FakeRuntime(tmp_path)
    (rt.state_dir / "aup.json").write_text("{not json")
    records = AupRecords(rt.state_dir)
    assert not records.has_accepted("amira.k", "Autumn 2026")
    records.record("amira.k", "Autumn 2026", "2026-11-24T10:00:00.000Z")
    assert json.loads((rt.state_dir / "aup.json").read_text()) == {"Autumn 2026": {"amira.k": "2026-11-24T10:00:00.000Z"}}


def test_term_key_inside_and_outside_terms(tmp_path):
    terms = FakeRuntime(tmp_path).tree.site.terms
    assert term_key(terms, datetime(2026, 11, 24).date()) == "Autumn 2026"
    assert term_key(terms, datetime(2027, 8, 2).date()) == "summer 2027"
    assert term_key(None, datetime(2027, 2, 1).date()) == "spring 2027"


@pytest.mark.integration
def test_real_aup_dialog_and_notice_on_a_display(xvfb):
    require_binary("xdotool")
    session = Session(id="9", user="root", uid=0, type="x11", display=xvfb.display)
    presenter = TkPresenter()
    accepted = []
    notice = presenter.notice(session, "Grown-ups at school can see which websites this computer visits.")
    dialog = presenter.dialog(session, "I will be kind online.", lambda: accepted.append(True))
    try:
        def window(name):
            out = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", name], env=xvfb.env,
                                 capture_output=True, text=True)
            return out.stdout.split()
        [wid] = wait_until(lambda: window("Our computer rules"), timeout=20, message="no AUP dialog")
        subprocess.run(["xdotool", "windowfocus", "--sync", wid], env=xvfb.env, check=True)
        subprocess.run(["xdotool", "key", "Return"], env=xvfb.env, check=True)
        wait_until(lambda: accepted, timeout=10, message="agreeing was not reported")
        assert dialog.wait(timeout=10) == 0
        assert notice.poll() is None  # the notice stays for the whole session
    finally:
        presenter.close(notice)
        presenter.close(dialog)


def test_headless_screen_shows_nothing_but_remembers(tmp_path):
    from agent.desktop.headless import HeadlessPresenter

    rt = FakeRuntime(tmp_path)  # bootstrap.screen_backend == "headless"
    aup = AcceptableUse(rt)
    assert isinstance(aup.presenter, HeadlessPresenter)
    aup.session_started(desktop("amira.k"))
    assert [kind for kind, _, _ in aup.presenter.shown] == ["notice", "dialog"]
    assert rt.of_type("aup_accepted") == []


@pytest.mark.parametrize("service_uid", [0, 999], ids=["runuser-as-root", "setpriv-as-service"])
def test_as_session_user_really_switches_user_and_leaks_nothing(monkeypatch, service_uid):
    from agent.desktop import session as sessions

    require_root("switching users")
    real = sessions.as_session_user
    monkeypatch.setattr(os, "getuid", lambda: service_uid)
    argv = real("nobody", {"PATH": "/usr/bin:/bin", "CLASSROOM_TEST": "kept"},
                ["sh", "-c", 'id -un; echo "$CLASSROOM_TEST"; echo "${NOTIFY_SOCKET:-none}"; '
                             'grep -E "^Cap(Eff|Amb|Inh)" /proc/self/status'])
    monkeypatch.undo()
    assert argv[0] == ("runuser" if service_uid == 0 else "setpriv")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                         env=dict(os.environ, NOTIFY_SOCKET="/run/systemd/notify"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["nobody", "kept", "none"]  # the agent's environment does not leak
    caps = dict(line.split(":\t") for line in lines[3:])
    assert all(int(v, 16) == 0 for v in caps.values()), caps  # no capabilities at all


def test_a_restarted_agent_does_not_report_everyone_logging_in_again(tmp_path):
    rt, comp, table, presenter = rig(tmp_path)
    table.append(desktop("amira.k"))
    comp.refresh()
    assert len(rt.of_type("login")) == 1
    # The agent restarts (same state_dir); the desktop session is still there.
    presenter2 = FakePresenter()
    comp2 = SessionsComponent(reader=lambda: list(table), poll_seconds=3600, aup=AcceptableUse(rt, presenter2))
    comp2.start(rt)
    assert len(rt.of_type("login")) == 1 and comp2.current_user() == "amira.k"
    assert len(presenter2.notices) == 1  # the monitoring notice is put back on screen
    table.clear()
    comp2.refresh()
    assert [e["user"] for e in rt.of_type("logout")] == ["amira.k"]


def test_after_a_restart_the_notice_is_put_back_once_not_every_poll(tmp_path):
    rt, comp, table, _ = rig(tmp_path)
    table.append(desktop("amira.k"))
    comp.refresh()
    presenter2 = FakePresenter()
    comp2 = SessionsComponent(reader=lambda: list(table), poll_seconds=3600, aup=AcceptableUse(rt, presenter2))
    comp2.start(rt)
    for _ in range(3):
        comp2.refresh()                      # the 15 s polls that follow
    assert len(presenter2.notices) == 1 and presenter2.closed == []


def test_damaged_sessions_file_means_reporting_again(tmp_path):
    rt = FakeRuntime(tmp_path)
    (rt.state_dir / "sessions.json").write_text("[1, 2")
    table = [desktop("amira.k")]
    comp = SessionsComponent(reader=lambda: list(table), poll_seconds=3600, aup=AcceptableUse(rt, FakePresenter()))
    comp.start(rt)
    assert [e["user"] for e in rt.of_type("login")] == ["amira.k"]


def test_aup_file_keeps_only_this_terms_acceptances(tmp_path):
    records = AupRecords(tmp_path)
    records.record("amira.k", "Autumn 2026", "2026-11-24T10:00:00.000Z")
    records.record("ben.t", "Autumn 2026", "2026-11-25T10:00:00.000Z")
    records.record("amira.k", "Spring 2027", "2027-01-05T09:00:00.000Z")
    assert json.loads((tmp_path / "aup.json").read_text()) == {"Spring 2027": {"amira.k": "2027-01-05T09:00:00.000Z"}}
    assert not AupRecords(tmp_path).has_accepted("ben.t", "Spring 2027")   # asked again in the new term

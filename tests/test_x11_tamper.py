"""The X11 staff lock against the pupil's own X clients (issue 14, item 1).

The display asks for a cookie, as a display manager's does; the pupil (``nobody``) has
their own copy, granted the agent's user with scripts/session-grant.sh at login, and
attacks with ordinary X tools: ``xdotool windowunmap``, ``windowmove``, ``windowsize``,
``windowreparent``, a full-screen window of their own raised over the lock, and
revoking the grant then ``xkill``.  Each time the lock must cover the whole screen
again, on top, without anyone's help, the device must stay locked, and a ``tamper``
event must say what happened.  When the overlay has no way back onto the display at
all, the display manager's lock is used instead.  And guessing the staff PIN on it
costs a growing wait, kept by the agent across restarts, and is reported (item 11).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

import pytest

from agent.desktop.base import Desktop, STAFF_MODE
from agent.desktop.headless import HeadlessIdle, HeadlessPresenter, HeadlessScreen
from agent.desktop.session import Session
from agent.desktop.x11 import X11Lock
from agent.policy.guard import Guard
from agent.policy.lock import LockComponent
from fake_runtime import FakeRuntime
from lock_fixtures import RecordingRunner, x11_session  # noqa: F401 - a fixture
from services import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]

PUPIL_PAGE = r"""
import tkinter as tk
root = tk.Tk()
root.title("pupil-page")
root.overrideredirect(True)
root.geometry("%dx%d+0+0" % (root.winfo_screenwidth(), root.winfo_screenheight()))
root.mainloop()
"""


def xwininfo(session, *argv) -> str:
    return subprocess.run(["xwininfo", *argv], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "DISPLAY": session.display,
                               "XAUTHORITY": str(session.agent_cookie)}).stdout


def fields(text: str) -> dict:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def overlay_window(session) -> str | None:
    ids = session.pupil("xdotool", "search", "--name", "^classroom-safety$", check=False).stdout.split()
    return ids[0] if ids else None


def covering(session) -> bool:
    """The lock's window is mapped, at 0,0 and full size, a child of the root, and the
    topmost window anyone can see."""
    window = overlay_window(session)
    if window is None:
        return False
    info = fields(xwininfo(session, "-id", window))
    if (info.get("Map State"), info.get("Absolute upper-left X"), info.get("Absolute upper-left Y"),
            info.get("Width"), info.get("Height")) != ("IsViewable", "0", "0", "1024", "768"):
        return False
    parent = fields(xwininfo(session, "-id", window, "-children")).get("Parent window id", "0x0").split()[0]
    if int(parent, 0) != int(root_id(session), 0):
        return False
    for line in xwininfo(session, "-root", "-children").splitlines():  # top of the stack first
        child = line.split()[0] if line.strip().startswith("0x") else None
        if child is None:
            continue
        if int(child, 0) == int(window, 0):
            return True
        if fields(xwininfo(session, "-id", child)).get("Map State") == "IsViewable":
            return False  # something the pupil can see is above the lock
    return False


def root_id(session) -> str:
    return fields(xwininfo(session, "-root", "-children")).get("Root window id", "").split()[0]


class Rig:
    """The lock component with the X11 backend on the pupil's display; the guard reports.
    The agent reaches the display with the server's cookie from the display-setup hook
    (*cookie*) or, without it, only by the session's xhost grant."""

    def __init__(self, session, tmp_path, monkeypatch, *, cookie: bool = True, runner=None):
        monkeypatch.delenv("XAUTHORITY", raising=False)
        # LightDM's display-setup hook ran when the display started (or, cookie=False, is missing).
        xauthority = session.display_setup(tmp_path) if cookie else "/nonexistent"
        self.rt = FakeRuntime(tmp_path, start=datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc), threaded=True)
        pupil = Session(id="7", user=session.user, uid=session.uid, type="x11", display=session.display, seat="seat0")
        self.runner = runner
        self.backend = X11Lock(lambda: pupil, staff_pin_hash=None, runner=runner, dm_tool="/usr/bin/dm-tool",
                               xauthority=str(xauthority))
        self.rt.desktop = Desktop("x11", HeadlessScreen(), self.backend, HeadlessIdle(self.rt.clock),
                                  HeadlessPresenter())
        self.guard = Guard(bypass_processes=[], watch_mounts=[], use_watchdog=False, poll_seconds=3600)
        self.guard.start(self.rt)
        self.lock = LockComponent(backend=self.backend, idle=HeadlessIdle(self.rt.clock))
        self.rt.call(self.lock.start, self.rt)

    def tamper(self) -> list[dict]:
        return [e for e in self.rt.of_type("tamper") if e.get("screen") == "lock"]

    def close(self):
        self.rt.call(self.lock.stop)
        self.guard.stop()
        if self.backend._overlay is not None:
            self.backend.unlock()
            self.backend.overlay.close()
        self.rt.close()


@pytest.fixture
def rig(x11_session, tmp_path, monkeypatch):
    x11_session.grant()
    r = Rig(x11_session, tmp_path, monkeypatch)
    try:
        yield r
    finally:
        r.close()


def locked_and_covering(rig, session):
    rig.rt.call(rig.lock.on_command, {"cmd": "lock", "by": "m.khan"})
    wait_until(lambda: covering(session), timeout=20, message="the lock never covered the screen")
    assert rig.lock.is_locked and rig.backend.is_locked


@pytest.mark.parametrize("attack,what", [
    (("windowunmap",), "overlay_unmapped"),
    (("windowmove", "3000", "3000"), "overlay_moved"),
    (("windowsize", "10", "10"), "overlay_resized"),
])
def test_the_pupils_x_clients_cannot_unmap_move_or_shrink_the_lock(rig, x11_session, attack, what):
    locked_and_covering(rig, x11_session)
    window = overlay_window(x11_session)
    x11_session.pupil("xdotool", attack[0], window, *attack[1:])
    wait_until(lambda: covering(x11_session), timeout=10, message="the lock was not put back")
    wait_until(lambda: any(e["what"] == what for e in rig.tamper()), timeout=10,
               message=lambda: f"no tamper event; saw {rig.rt.of_type('tamper')}")
    [event] = [e for e in rig.tamper() if e["what"] == what]
    assert event["action"] == "restored" and event["user"] == "pupil1"
    assert rig.lock.is_locked and rig.backend.is_locked and rig.backend.poll() is None


def test_a_window_of_the_pupils_raised_over_the_lock_goes_back_under_it(rig, x11_session):
    locked_and_covering(rig, x11_session)
    page = subprocess.Popen(x11_session.pupil_argv("/usr/bin/python3", "-c", PUPIL_PAGE))
    try:
        page_window = wait_until(lambda: x11_session.pupil("xdotool", "search", "--name", "^pupil-page$",
                                                           check=False).stdout.split(), timeout=15)[0]
        x11_session.pupil("xdotool", "windowraise", page_window)
        wait_until(lambda: covering(x11_session), timeout=10, message="the pupil's window stayed on top")
        wait_until(lambda: any(e["what"] == "overlay_covered" for e in rig.tamper()), timeout=10,
                   message=lambda: f"no tamper event; saw {rig.rt.of_type('tamper')}")
        # Reparenting the lock into the pupil's own window is put back too.
        x11_session.pupil("xdotool", "windowreparent", overlay_window(x11_session), page_window)
        wait_until(lambda: covering(x11_session), timeout=10, message="the lock stayed inside the pupil's window")
        wait_until(lambda: any(e["what"].startswith("overlay_reparented") for e in rig.tamper()), timeout=10,
                   message=lambda: f"no tamper event; saw {rig.rt.of_type('tamper')}")
        assert rig.lock.is_locked
    finally:
        page.kill()
        page.wait()


def test_revoking_the_grant_and_xkill_bring_the_lock_back(rig, x11_session, tmp_path):
    locked_and_covering(rig, x11_session)
    cookie = tmp_path / "Xauthority"
    assert oct(cookie.stat().st_mode & 0o777) == "0o600" and cookie.stat().st_uid == 0  # the agent's alone
    first = rig.backend.overlay._proc
    x11_session.pupil("xhost", "-SI:localuser:root")
    x11_session.pupil("xkill", "-id", overlay_window(x11_session))
    assert first.wait(timeout=15) is not None             # its connection was killed: it ended
    wait_until(lambda: any(e["what"] == "overlay_ended" for e in rig.tamper()), timeout=15,
               message=lambda: f"no tamper event; saw {rig.rt.of_type('tamper')}")
    # Back on the display with the server's own cookie, which no xhost can take away.
    wait_until(lambda: covering(x11_session), timeout=20, message="the lock did not come back")
    assert rig.backend.overlay._proc is not first and rig.lock.is_locked
    assert [e["action"] for e in rig.tamper() if e["what"] == "overlay_ended"] == ["restarted"]


def test_with_no_way_back_onto_the_display_the_display_manager_locks(x11_session, tmp_path, monkeypatch):
    """No cookie for the agent (the display-setup hook is missing): revoked and killed,
    the overlay cannot return, so LightDM's lock is used, as the pupil."""
    x11_session.grant()
    runner = RecordingRunner()
    rig = Rig(x11_session, tmp_path, monkeypatch, cookie=False, runner=runner)
    try:
        locked_and_covering(rig, x11_session)
        x11_session.pupil("xhost", "-SI:localuser:root")
        x11_session.pupil("xkill", "-id", overlay_window(x11_session))
        locked = wait_until(lambda: [argv for argv in runner.ran if argv[-2:] == ["/usr/bin/dm-tool", "lock"]],
                            timeout=30, message=lambda: f"no display-manager lock; ran {runner.ran}")
        assert locked[0][:4] == ["runuser", "-u", x11_session.user, "--"]   # as the session's user
        wait_until(lambda: any(e["action"] == "fallback" for e in rig.tamper()), timeout=10,
                   message=lambda: f"no tamper event; saw {rig.rt.of_type('tamper')}")
        assert rig.lock.is_locked and rig.backend.overlay.description == "x11 (fallback: display-manager)"
    finally:
        rig.close()


# --------------------------------------------------------------------------- PIN guessing (issue 14, item 11)


def test_guessing_the_pin_costs_more_each_time_survives_a_restart_and_is_reported(x11_session, tmp_path,
                                                                                   monkeypatch):
    from agent.desktop.backends import make_desktop
    from agent.desktop.pin import PinBackoff, hash_pin
    from agent.desktop.programs.overlay_core import WAIT_HINT

    x11_session.grant()
    monkeypatch.setenv("XAUTHORITY", str(x11_session.display_setup(tmp_path)))
    monkeypatch.setenv("DISPLAY", x11_session.display)
    state = tmp_path / "state"
    state.mkdir()

    def blank():
        desktop = make_desktop("x11", staff_pin_hash=hash_pin("246801"), state_dir=state)
        screen = desktop.screen
        events, tampered = [], []
        screen.on_event = events.append
        screen.when_tampered = tampered.append
        screen.show("Well done for telling.")
        wait_until(lambda: (screen.drawn() or {}).get("shown"), timeout=20, message="the blank never showed")
        return screen, events, tampered

    def typed(screen, digits) -> str:
        """The pupil types *digits* and Enter; the hint the overlay shows for it."""
        dots = "\u25cf" * len(digits)
        x11_session.pupil("xdotool", "type", digits)
        wait_until(lambda: screen.drawn()["hint"] == dots, timeout=10, message=lambda: f"{screen.drawn()}")
        x11_session.pupil("xdotool", "key", "Return")
        return wait_until(lambda: (hint := screen.drawn()["hint"]) != dots and hint, timeout=10)

    screen, events, tampered = blank()
    try:
        hints = [typed(screen, "111111") for _ in range(PinBackoff.FREE_TRIES)]
        assert hints[-1] == WAIT_HINT and WAIT_HINT not in hints[:-1]
        wait_until(lambda: len([e for e in events if e["event"] == "pin_wrong"]) == 3, timeout=10)
        assert [e["backoff"]["failures"] for e in events if e["event"] == "pin_wrong"] == [1, 2, 3]
        assert typed(screen, "246801") == WAIT_HINT            # the right PIN, but a wait is a wait
        assert not any(e["event"] == "cleared" for e in events) and screen.drawn()["shown"]
    finally:
        screen.close()

    # The agent restarts (or the overlay is ended): the wait is the device's, not the overlay's.
    assert PinBackoff.from_dict(json.loads((state / "pin-backoff.json").read_text())).failures == 3
    assert oct((state / "pin-backoff.json").stat().st_mode & 0o777) == "0o600"
    screen, events, tampered = blank()
    try:
        assert typed(screen, "246801") == WAIT_HINT
        assert not any(e["event"] == "cleared" for e in events) and screen.drawn()["shown"]
    finally:
        screen.close()

    # The wait is over; two more wrong tries make five in a row: someone is guessing.
    saved = json.loads((state / "pin-backoff.json").read_text())
    (state / "pin-backoff.json").write_text(json.dumps({**saved, "failures": 4, "locked_until": 0}))
    screen, events, tampered = blank()
    try:
        typed(screen, "999999")
        wait_until(lambda: tampered, timeout=10, message="no tamper report")
        assert tampered[0]["what"] == "pin_failures" and tampered[0]["failures"] == 5
        assert tampered[0]["wait_seconds"] > 0
    finally:
        screen.close()

"""The Wayland backends for real: a headless sway compositor running as an unprivileged
user (sway refuses root, like a real desktop session), swayidle reporting idle through
our pipe, and swaylock started as that user, ended by the staff unlock (SIGUSR1) and
started again when it dies under a staff lock.  Then the pupil attacks, as the session's
user: the staff lock is the agent's own overlay, which they can neither signal nor end,
and where swaylock must do (no layer-shell), any exit the agent did not ask for is
reported as tamper and undone."""

from __future__ import annotations

import signal
import subprocess
import threading

import psutil
import pytest

from agent.desktop.backends import make_desktop
from agent.desktop.base import STAFF_MODE
from agent.desktop.wayland import SwayIdle, SwaylockBackend, WaylandLock, catches, wayland_overlay_available
from services import require_binary, skip_or_fail, spawn, terminate, wait_until
from wayland_fixtures import USER, sway_session, wayland_socket, wtype  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def swaylocks() -> list[psutil.Process]:
    """Running swaylock main processes (not its PAM helper child, not zombies)."""
    found = []
    for p in psutil.process_iter(["name", "username", "status"]):
        try:
            if p.info["name"] == "swaylock" and p.info["username"] == USER \
                    and p.info["status"] != psutil.STATUS_ZOMBIE and p.parent().name() != "swaylock":
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_swayidle_reports_idle_through_the_pipe(sway_session):
    require_binary("swayidle")
    changed = []
    source = SwayIdle(lambda: sway_session)
    source.when_changed = lambda: changed.append(1)
    try:
        source.set_timeout(1)
        # No input devices at all: after 1 s the compositor says idle, swayidle says "idle".
        wait_until(lambda: (source.idle_seconds() or 0) >= 1, timeout=15, message="swayidle never said idle")
        assert changed
        proc = source._proc
        assert psutil.Process(proc.pid).username() == "root"  # runuser; swayidle itself runs as nobody
        assert any(p.name() == "swayidle" and p.username() == USER
                   for p in psutil.Process(proc.pid).children(recursive=True))
    finally:
        source.close()


def test_swaylock_as_the_session_user_unlocked_by_staff_and_relocked_if_killed(sway_session):
    require_binary("swaylock")
    lock = WaylandLock(lambda: sway_session)
    lock.lock(STAFF_MODE, "")
    try:
        [first] = wait_until(swaylocks, timeout=15, message="swaylock did not start")[:1]
        assert first.username() == USER
        # Killed (by a pupil, or a crash) while staff hold the lock: locked again.
        for p in swaylocks():
            p.send_signal(signal.SIGKILL)
        wait_until(lambda: lock._proc.poll() is not None, timeout=10)
        assert lock.poll() is None and lock.is_locked
        [second] = wait_until(lambda: [p for p in swaylocks() if p.pid != first.pid][:1], timeout=15,
                              message="swaylock was not started again")
        proc = lock._proc
        # Locked and listening: its SIGUSR1 handler is in place.
        wait_until(lambda: catches(second.pid, signal.SIGUSR1), timeout=10)
        # Staff unlock: SIGUSR1, swaylock's own "unlock and exit": a clean exit (0).
        lock.unlock()
        assert proc.wait(timeout=10) == 0
        assert not lock.is_locked
        wait_until(lambda: not swaylocks(), timeout=10, message="swaylock still running")
    finally:
        for p in swaylocks():
            p.kill()


# --------------------------------------------------------------------------- the pupil attacks (issue 14, item 10)

PUPIL_WINDOW = r"""
import gi
gi.require_version("Gtk", "3.0")
from gi.repository import Gtk, Gdk
win = Gtk.Window(title="pupil")
def key(w, e):
    print("key", Gdk.keyval_name(e.keyval), flush=True)
    return True
win.connect("key-press-event", key)
win.connect("map-event", lambda *a: print("mapped", flush=True))
win.show_all()
Gtk.main()
"""


def as_pupil(session, *argv) -> subprocess.CompletedProcess:
    socket = wayland_socket(session)
    return subprocess.run(["runuser", "-u", session.user, "--", "env", "-i", "PATH=/usr/bin:/bin",
                           f"XDG_RUNTIME_DIR={socket.parent}", f"WAYLAND_DISPLAY={socket.name}", *argv],
                          capture_output=True, text=True, timeout=30)


class PupilWindow:
    """A window of the pupil's own, which says every key it gets."""

    def __init__(self, session):
        socket = wayland_socket(session)
        self.proc = spawn(["runuser", "-u", session.user, "--", "env", "-i", "PATH=/usr/bin:/bin",
                           f"XDG_RUNTIME_DIR={socket.parent}", f"WAYLAND_DISPLAY={socket.name}",
                           "GSETTINGS_BACKEND=memory", "NO_AT_BRIDGE=1", "/usr/bin/python3", "-c", PUPIL_WINDOW],
                          stdout=subprocess.PIPE, text=True)
        self.heard: list[str] = []
        threading.Thread(target=lambda: self.heard.extend(line.strip() for line in self.proc.stdout),
                         daemon=True).start()
        wait_until(lambda: "mapped" in self.heard, timeout=15, message="the pupil's window did not open")

    def keys(self) -> list[str]:
        return [k for k in self.heard if k.startswith("key") and k != "key Shift_L"]

    def close(self):
        terminate(self.proc)


def typed_until(session, text, done, what):
    # wtype makes a new virtual keyboard each time; sway may move the focus a moment
    # after a surface maps or unmaps, so type again until it lands.
    wait_until(lambda: wtype(session, text) or done(), timeout=30, message=what)


def test_the_staff_lock_is_the_agents_overlay_which_the_pupil_cannot_signal_or_end(sway_session):
    if not wayland_overlay_available():
        skip_or_fail("the Wayland overlay needs python3-gi and gir1.2-gtklayershell-0.1")
    require_binary("wtype")
    desktop = make_desktop("wayland", session_fn=lambda: sway_session)
    lock = desktop.lock
    tampered: list[dict] = []
    lock.when_tampered = tampered.append
    pupil = PupilWindow(sway_session)
    try:
        typed_until(sway_session, "a", lambda: "key a" in pupil.heard, "the pupil's window never got a key")
        lock.lock(STAFF_MODE, "Your teacher has locked this computer.")
        wait_until(lambda: (lock.overlay.drawn() or {}).get("shown"), timeout=20, message="the lock never showed")
        assert lock.overlay.drawn()["message"] == "Your teacher has locked this computer."
        assert swaylocks() == []                              # not the pupil's own program
        typed_until(sway_session, "1", lambda: "\u25cf" in lock.overlay.drawn()["hint"],
                    "the lock never got a key")

        # Everything the pupil's account can send to what holds the lock: refused.
        overlay_pid = lock.overlay._proc.pid
        for sig in ("-USR1", "-TERM", "-KILL"):
            attempt = as_pupil(sway_session, "kill", sig, str(overlay_pid))
            assert attempt.returncode != 0 and "not permitted" in attempt.stderr.lower()
        as_pupil(sway_session, "pkill", "-USR1", "-x", "swaylock")   # swaylock's "unlock now": nothing to hit
        wtype(sway_session, "-k", "Escape", "b")
        wtype(sway_session, "-M", "alt", "-k", "F4", "-m", "alt")
        wtype(sway_session, "-M", "alt", "-k", "Tab", "-m", "alt")
        assert lock.overlay._proc.pid == overlay_pid and lock.overlay.drawn()["shown"]
        assert lock.is_locked and lock.poll() is None and tampered == []

        lock.unlock()                                         # staff unlock
        wait_until(lambda: lock.overlay.drawn()["shown"] is False, timeout=15)
        typed_until(sway_session, "c", lambda: "key c" in pupil.heard, "the pupil's window never got a key back")
        # Nothing typed while locked reached the pupil's window.
        assert [k for k in pupil.keys() if k not in ("key a", "key c")] == []
        assert not lock.is_locked
    finally:
        pupil.close()
        lock.unlock()
        if lock.overlay is not None:
            lock.overlay.close()


def test_without_the_overlay_a_swaylock_the_pupil_unlocks_is_reported_and_relocked(sway_session):
    require_binary("swaylock")
    lock = WaylandLock(lambda: sway_session)                  # no layer-shell: swaylock holds staff locks
    tampered: list[dict] = []
    lock.when_tampered = tampered.append
    changed = threading.Event()
    lock.when_changed = changed.set
    lock.lock(STAFF_MODE, "")
    try:
        [first] = wait_until(swaylocks, timeout=15, message="swaylock did not start")[:1]
        wait_until(lambda: catches(first.pid, signal.SIGUSR1), timeout=10)
        as_pupil(sway_session, "kill", "-USR1", str(first.pid))   # the pupil's own process: it obeys
        assert changed.wait(15), "the lock never heard swaylock end"
        assert lock.poll() is None and lock.is_locked
        assert tampered and tampered[0]["what"] == "lock_client_ended" and tampered[0]["action"] == "relocked"
        wait_until(lambda: [p for p in swaylocks() if p.pid != first.pid], timeout=15,
                   message="swaylock was not started again")
    finally:
        lock.unlock()
        for p in swaylocks():
            p.kill()


def test_the_blanks_swaylock_fallback_comes_back_when_the_pupil_ends_it(sway_session):
    require_binary("swaylock")
    blank = SwaylockBackend(sway_session.user)
    tampered: list[dict] = []
    blank.when_tampered = tampered.append
    blank.show("")
    try:
        [first] = wait_until(swaylocks, timeout=15, message="swaylock did not start")[:1]
        wait_until(lambda: catches(first.pid, signal.SIGUSR1), timeout=10)
        as_pupil(sway_session, "kill", "-USR1", str(first.pid))
        wait_until(lambda: [p for p in swaylocks() if p.pid != first.pid], timeout=15,
                   message="the blank was not put back")
        wait_until(lambda: tampered, timeout=10)
        assert tampered[0]["what"] == "blank_client_ended" and tampered[0]["action"] == "restarted"
        assert blank.is_shown
    finally:
        blank.hide()
        for p in swaylocks():
            p.kill()


def test_an_output_the_pupils_session_adds_is_covered_too(sway_session):
    """sway lets the session's user add an output (``swaymsg create_output``; on a Pi, a
    second HDMI screen): it must not show the desktop while the lock is up."""
    if not wayland_overlay_available():
        skip_or_fail("the Wayland overlay needs python3-gi and gir1.2-gtklayershell-0.1")
    require_binary("swaymsg")
    lock = make_desktop("wayland", session_fn=lambda: sway_session).lock
    tampered: list[dict] = []
    lock.when_tampered = tampered.append
    lock.lock(STAFF_MODE, "Your teacher has locked this computer.")
    try:
        wait_until(lambda: (lock.overlay.drawn() or {}).get("shown"), timeout=20, message="the lock never showed")
        assert lock.overlay.drawn()["windows"] == 1
        ipc = next(p for p in wayland_socket(sway_session).parent.iterdir() if p.name.startswith("sway-ipc"))
        added = as_pupil(sway_session, "env", f"SWAYSOCK={ipc}", "swaymsg", "create_output")
        assert added.returncode == 0, added.stderr
        wait_until(lambda: (lock.overlay.drawn() or {}).get("windows") == 2, timeout=15,
                   message=lambda: f"the new output is not covered: {lock.overlay.drawn()}")
        assert lock.overlay.drawn()["shown"] and lock.is_locked
        wait_until(lambda: tampered, timeout=10)
        assert (tampered[0]["what"], tampered[0]["action"]) == ("overlay_output_added", "restored")
    finally:
        lock.unlock()
        lock.overlay.close()

"""The Wayland report blank for real: the GTK layer-shell overlay on a headless sway
desktop running as an unprivileged user, typed at with ``wtype`` as that user.

It covers the whole output, shows the calm message and then the acknowledgement, keeps
every key from the pupil's window (Escape, Alt+F4, Alt+Tab and Ctrl+W do nothing), takes
the staff PIN, comes back if killed, ends an overlay left by an earlier agent, and the
session grant (scripts/session-grant.sh) is what lets another user draw on the socket.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from agent.desktop.pin import hash_pin
from agent.desktop.wayland import OVERLAY_PYTHON, WaylandBackend, wayland_overlay_available
from agent.report.screen import Screen
from services import require_binary, skip_or_fail, spawn, terminate, wait_until
from wayland_fixtures import sway_session, wayland_socket, wtype  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parent.parent
RAISED = "Well done for telling. A grown-up is coming."
SEEN = "A grown-up has seen your message."


@pytest.fixture(scope="module")
def pin_hash():
    return hash_pin("246801")


@pytest.fixture
def overlay_installed():
    if not wayland_overlay_available():
        skip_or_fail("the Wayland overlay needs python3-gi and gir1.2-gtklayershell-0.1")
    require_binary("wtype")


class Watched:
    """A Screen on the Wayland backend, with the overlay's events in a queue."""

    def __init__(self, session, pin_hash):
        self.backend = WaylandBackend(session.user, pin_hash)
        self.screen = Screen(self.backend)
        self.cleared: list[str] = []
        self.screen.when_cleared = self.cleared.append
        self.events: queue.Queue = queue.Queue()
        forward = self.backend.on_event
        self.backend.on_event = lambda event: (self.events.put(event), forward(event))

    def next(self, kind: str, timeout: float = 15) -> dict:
        while True:
            event = self.events.get(timeout=timeout)
            if event.get("event") == kind:
                return event

    def drawn(self) -> dict:
        state = self.backend.drawn()
        assert state is not None, "the overlay did not answer"
        return state


@pytest.fixture
def watched(sway_session, overlay_installed, pin_hash):
    w = Watched(sway_session, pin_hash)
    w.screen.start()
    assert w.backend.ready.wait(15), "the overlay did not start"
    yield w
    w.screen.close()


def test_blank_covers_the_output_with_the_message_and_only_the_pin_clears_it(watched, sway_session):
    watched.screen.blank(RAISED)
    shown = watched.next("shown")
    assert (shown["width"], shown["height"]) == (800, 600)    # the whole headless output
    assert watched.drawn() == {"shown": True, "message": RAISED,
                               "hint": "Staff: type the PIN and press Enter", "windows": 1}

    wtype(sway_session, "-k", "Escape")
    wtype(sway_session, "-M", "alt", "-k", "F4", "-m", "alt")
    wtype(sway_session, "-M", "alt", "-k", "Tab", "-m", "alt")
    wtype(sway_session, "-M", "ctrl", "w", "-m", "ctrl")
    watched.screen.set_message(SEEN)                          # the teacher acknowledged
    assert watched.drawn()["shown"] and watched.drawn()["message"] == SEEN

    wtype(sway_session, "111111", "-k", "Return")
    watched.next("pin_wrong")
    assert watched.drawn()["hint"] == "Staff: that PIN was not right"
    assert watched.screen.is_blank and watched.cleared == []

    wtype(sway_session, "246801", "-k", "Return")
    watched.next("cleared")
    watched.next("hidden")
    assert watched.cleared == ["staff-pin"] and not watched.screen.is_blank
    assert watched.drawn()["shown"] is False


PUPIL_WINDOW = r"""
import sys
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


def test_keys_never_reach_the_pupils_window_while_blank(watched, sway_session):
    env = {"PATH": "/usr/bin:/bin", "WAYLAND_DISPLAY": str(wayland_socket(sway_session)),
           "XDG_RUNTIME_DIR": watched.backend._private_dir, "GSETTINGS_BACKEND": "memory", "NO_AT_BRIDGE": "1"}
    pupil = spawn([OVERLAY_PYTHON, "-c", PUPIL_WINDOW], env=env, stdout=subprocess.PIPE, text=True)
    heard: list[str] = []
    threading.Thread(target=lambda: heard.extend(line.strip() for line in pupil.stdout), daemon=True).start()

    def typed_until(text, done, what):
        # wtype makes a new virtual keyboard each time; sway may move the focus a
        # moment after a surface maps or unmaps, so type again until it lands.
        wait_until(lambda: wtype(sway_session, text) or done(), timeout=30, message=what)
    try:
        wait_until(lambda: "mapped" in heard, timeout=15, message="the pupil's window did not open")
        typed_until("a", lambda: "key a" in heard, "the pupil's window never got a key")

        watched.screen.blank(RAISED)
        watched.next("shown")
        typed_until("1", lambda: "\u25cf" in watched.drawn()["hint"], "the overlay never got a key")
        wtype(sway_session, "-k", "Escape", "b")
        wtype(sway_session, "-M", "alt", "-k", "Tab", "-m", "alt")
        watched.screen.unblank()
        watched.next("hidden")

        typed_until("c", lambda: "key c" in heard, "the pupil's window never got a key after the clear")
        # Nothing typed while the screen was blank got through.
        assert [got for got in heard if got.startswith("key") and got not in ("key a", "key c", "key Shift_L")] == []
    finally:
        terminate(pupil)


def test_an_overlay_killed_while_blank_comes_back(watched):
    watched.screen.blank(RAISED)
    watched.next("shown")
    first = watched.backend._proc.pid
    os.kill(first, signal.SIGKILL)
    watched.next("shown", timeout=30)
    assert watched.backend._proc.pid != first
    assert watched.drawn()["message"] == RAISED and watched.screen.is_blank


def test_an_overlay_left_by_an_earlier_agent_is_ended_once_the_new_one_is_up(sway_session, overlay_installed,
                                                                          pin_hash):
    old = Watched(sway_session, pin_hash)
    old.screen.blank(RAISED)
    old.next("shown")
    orphan = old.backend._proc
    old.backend._closing = True          # the agent process "dies": its end of the pipe closes
    orphan.stdin.close()
    new = Watched(sway_session, pin_hash)
    try:
        assert orphan.poll() is None     # still covering the screen meanwhile
        new.screen.blank(RAISED)         # the restarted agent blanks again from its kept alert
        new.next("shown")
        assert orphan.wait(timeout=15) is not None
        assert new.drawn()["shown"]
    finally:
        new.screen.close()
        if orphan.poll() is None:
            orphan.kill()
        shutil.rmtree(old.backend._private_dir, ignore_errors=True)  # the "dead" agent never closed


def test_the_session_grant_lets_the_agents_user_reach_the_socket(sway_session, overlay_installed):
    require_binary("setfacl")
    socket = wayland_socket(sway_session)
    # The overlay code where another user can read it, and a runtime dir of that user's own.
    code = Path(tempfile.mkdtemp(prefix="classroom-overlay-code-"))
    runtime = Path(tempfile.mkdtemp(prefix="classroom-overlay-rt-"))
    try:
        code.chmod(0o755)
        shutil.copytree(REPO / "agent", code / "agent", ignore=shutil.ignore_patterns("__pycache__"))
        os.chown(runtime, 1, 1)           # "daemon" stands in for classroom-agent
        overlay = ["runuser", "-u", "daemon", "--", "env", "-i", "PATH=/usr/bin:/bin", f"PYTHONPATH={code}",
                   f"WAYLAND_DISPLAY={socket}", f"XDG_RUNTIME_DIR={runtime}", "GSETTINGS_BACKEND=memory",
                   "NO_AT_BRIDGE=1", OVERLAY_PYTHON, "-m", "agent.desktop.programs.overlay_wayland"]

        refused = subprocess.run(overlay, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1] == \
            f"overlay_wayland: error: cannot open the Wayland display {socket}"

        # The script goes in on stdin: the session user need not be able to read the checkout
        # (a clone inside a 0700 directory), as a pupil cannot read a technician's.
        grant = subprocess.run(["runuser", "-u", sway_session.user, "--", "env", "-i", "PATH=/usr/bin:/bin",
                                f"XDG_RUNTIME_DIR={socket.parent}", f"WAYLAND_DISPLAY={socket.name}",
                                "sh", "-s", "daemon"], input=(REPO / "scripts/session-grant.sh").read_text(),
                               capture_output=True, text=True, timeout=30)
        assert grant.returncode == 0, grant.stderr
        acl = subprocess.run(["getfacl", "-p", str(socket.parent), str(socket)], capture_output=True, text=True).stdout
        assert "user:daemon:--x" in acl and "user:daemon:rw-" in acl   # search the dir, use the socket; no more

        allowed = subprocess.run(overlay, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.splitlines()[0] == '{"event": "ready"}'
    finally:
        shutil.rmtree(code, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.timeout(120)
def test_the_agent_end_to_end_press_ack_on_screen_and_the_pin_clear_published(tmp_path, sway_session,
                                                                                overlay_installed, pin_hash,
                                                                                mosquitto):
    """The real runtime picks the Wayland overlay from agent.yaml; a press shows the calm
    message, the teacher's ack changes it, and the PIN typed on the device clears the
    alert for everyone."""
    from gpiozero.pins.mock import MockFactory

    from agent.core.clock import FakeClock
    from agent.core.runtime import Runtime
    from runtime_fixtures import PREFIX, Subscriber, bootstrap, pin_file, publish

    sub = Subscriber(mosquitto, PREFIX + "/alert")
    pins = MockFactory()
    rt = Runtime(bootstrap(tmp_path, mosquitto, screen_backend="wayland", session_user=sway_session.user,
                           staff_pin_file=pin_file(tmp_path, "246801")), clock=FakeClock(),
                 pin_factory=pins).start()
    try:
        overlay = rt.screen.backend
        assert isinstance(overlay, WaylandBackend)

        def drawn():
            return overlay.drawn() or {}
        pins.pin(17).drive_low()
        raised = sub.wait_for("alert", state="raised")
        wait_until(lambda: drawn().get("shown"), timeout=15, message="the overlay never showed")
        assert drawn()["message"] == RAISED

        publish(mosquitto, PREFIX + "/cmd", {"cmd": "ack", "alert_id": raised["id"], "by": "a.jones"})
        wait_until(lambda: drawn().get("message") == SEEN, timeout=15, message=lambda: f"still {drawn()}")

        wtype(sway_session, "246801", "-k", "Return")
        cleared = sub.wait_for("alert", state="cleared")
        assert (cleared["id"], cleared["by"]) == (raised["id"], "staff-pin")
        wait_until(lambda: drawn().get("shown") is False, timeout=15, message=lambda: f"still {drawn()}")
        # The runtime thread forgets the alert just after publishing "cleared".
        wait_until(lambda: rt.report.alert is None, timeout=5, message=lambda: f"still open: {rt.report.alert}")
        assert not rt.screen.is_blank
    finally:
        pins.pin(17).drive_high()
        rt.stop()
        pins.close()
        sub.close()

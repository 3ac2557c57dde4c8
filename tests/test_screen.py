"""The blank screen: PIN hashing, the headless and Wayland backends, and the real X11
overlay under Xvfb (Escape / Alt+F4 do not close it; the staff PIN does)."""

import os
import signal
import subprocess
import sys
import threading

import pytest

import agent.desktop.wayland
from agent.desktop.backends import detect_kind, make_desktop
from agent.desktop.base import ScreenBackend
from agent.desktop.headless import HeadlessScreen
from agent.desktop.overlay import OverlayBackend
from agent.desktop.pin import hash_pin, verify_pin
from agent.desktop.wayland import SwaylockBackend, WaylandBackend
from agent.desktop.x11 import X11Backend
from agent.report.screen import Screen
from services import require_binary, spawn, terminate, wait_until

RAISED = "Well done for telling. A grown-up is coming."
SEEN = "A grown-up has seen your message."


@pytest.fixture(scope="module")
def pin_hash():
    return hash_pin("246801")


def test_pin_hash_round_trip_and_bad_input(pin_hash):
    assert pin_hash.startswith("scrypt$16384$8$1$6$")        # the PIN's length is in the hash
    assert verify_pin("246801", pin_hash)
    assert not verify_pin("246802", pin_hash)
    assert hash_pin("246801") != pin_hash                     # salted
    for stored in (None, "", "246801", "md5$x", "scrypt$a$b$c$d$e", "scrypt$16384$8$1$6$!!$!!", pin_hash[:-6]):
        assert not verify_pin("246801", stored)
    for bad in ("12", "2468", "24680", "abcdef", "1234567890123", ""):
        with pytest.raises(ValueError, match="6 to 12 digits"):
            hash_pin(bad)


class RecordingBackend(ScreenBackend):
    """What the screen told its backend, in order."""

    name = "recording"

    def __init__(self):
        super().__init__()
        self.calls = []

    def show(self, message):
        self.calls.append(("show", message))

    def set_message(self, message):
        self.calls.append(("message", message))

    def hide(self):
        self.calls.append(("hide", None))


def test_headless_records_state_and_issue_time():
    screen = Screen(HeadlessScreen())
    assert not screen.is_blank and screen.blank_issued_at is None
    screen.blank(RAISED)
    assert screen.is_blank and screen.message == RAISED and screen.blank_issued_at > 0
    assert screen.backend.is_shown and screen.backend.message == RAISED
    screen.set_message(SEEN)
    assert screen.message == SEEN and screen.backend.message == SEEN
    screen.unblank()
    assert not screen.is_blank and screen.message is None and not screen.backend.is_shown
    recorded = Screen(RecordingBackend())
    recorded.blank(RAISED)
    recorded.set_message(SEEN)
    recorded.unblank()
    assert recorded.backend.calls == [("show", RAISED), ("message", SEEN), ("hide", None)]


def test_headless_staff_pin(pin_hash):
    screen = Screen(HeadlessScreen())
    cleared = []
    screen.when_cleared = cleared.append
    screen.blank(RAISED)
    assert not screen.try_pin("111111", pin_hash)
    assert screen.is_blank and cleared == []
    assert not screen.try_pin("246801", None)                 # no PIN configured: only a clear command works
    assert screen.try_pin("246801", pin_hash)
    assert not screen.is_blank and cleared == ["staff-pin"]


class RecordingRunner:
    """The one command runner's spawn(), recorded as (argv, env): the environment a program
    run as the session user gets is in argv (``env -i K=V... program``)."""

    def __init__(self):
        self.calls = []
        self.procs = []

    def spawn(self, argv, env=None, stdin_text=None, stdin_path=None):
        proc = FakeProc()
        argv = list(argv)
        if "-i" in argv:
            env = dict(a.split("=", 1) for a in argv[argv.index("-i") + 1:] if "=" in a and not a.startswith("-"))
        self.calls.append((argv, dict(env or {})))
        self.procs.append(proc)
        return proc


class FakeProc:
    def __init__(self):
        self.terminated = False

    def poll(self):
        return 0 if self.terminated else None

    def terminate(self):
        raise AssertionError("swaylock must be released with SIGUSR1, not terminated")

    def send_signal(self, sig):
        assert sig == signal.SIGUSR1
        self.terminated = True


def test_swaylock_runs_as_session_user():
    runner = RecordingRunner()
    screen = Screen(SwaylockBackend("nobody", runner, wayland_display="wayland-1"))
    screen.blank(RAISED)
    screen.blank(RAISED)                                      # already locked: not a second swaylock
    assert len(runner.calls) == 1
    argv, env = runner.calls[0]
    assert argv[-3:] == ["swaylock", "-c", "000000"]
    assert env["WAYLAND_DISPLAY"] == "wayland-1"
    assert env["XDG_RUNTIME_DIR"] == "/run/user/65534"
    # The one way to run a session program (agent/desktop/session.py): runuser as root,
    # setpriv with every capability dropped as the unprivileged service.
    if os.getuid() == 0:
        assert argv[:4] == ["runuser", "-u", "nobody", "--"]
    else:
        assert argv[0] == "setpriv" and "--reuid=nobody" in argv and "--inh-caps=-all" in argv
    assert "WAYLAND_DISPLAY=wayland-1" in argv and "XDG_RUNTIME_DIR=/run/user/65534" in argv
    screen.unblank()
    assert runner.procs[0].terminated
    screen.blank(RAISED)
    assert len(runner.calls) == 2


def make_screen(kind, **kw):
    return Screen(make_desktop(kind, **kw).screen)


def test_backend_detection():
    none = dict(x11_socket="", compositors=())
    assert detect_kind({"WAYLAND_DISPLAY": "wayland-0"}, **none) == "wayland"
    assert detect_kind({"DISPLAY": ":0"}, **none) == "x11"
    assert detect_kind({}, **none) == "headless"
    assert make_screen("headless").backend_name == "headless"
    assert make_screen("wayland", runner=RecordingRunner()).backend_name == "wayland"
    assert make_screen("swaylock", runner=RecordingRunner()).backend_name == "swaylock"


def test_wayland_without_the_overlay_packages_falls_back_to_swaylock(monkeypatch, caplog):
    monkeypatch.setattr(agent.desktop.wayland, "wayland_overlay_available", lambda: False)
    assert make_screen("wayland", runner=RecordingRunner()).backend_name == "swaylock"
    assert "gir1.2-gtklayershell-0.1" in caplog.text and "no message" in caplog.text


def test_wayland_socket_is_found_for_the_session_user(tmp_path, monkeypatch):
    backend = WaylandBackend(wayland_display=str(tmp_path / "nope"))
    assert backend.socket_path() is None                       # absolute but absent
    (tmp_path / "wayland-3").touch()
    (tmp_path / "wayland-3.lock").touch()
    assert WaylandBackend(wayland_display=str(tmp_path / "wayland-3")).socket_path() == str(tmp_path / "wayland-3")
    drawing = WaylandBackend(wayland_display=str(tmp_path / "wayland-3"))
    assert drawing.stale()                                     # nothing launched yet
    argv, env = drawing.launch()
    assert env["WAYLAND_DISPLAY"] == str(tmp_path / "wayland-3") and not drawing.stale()
    (tmp_path / "wayland-3").rename(tmp_path / "wayland-4")    # that desktop ended; another began
    assert drawing.stale()
    drawing.close()
    (tmp_path / "wayland-4").rename(tmp_path / "wayland-3")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    # the named socket is not there: the first wayland-N in the runtime dir is the session's
    assert WaylandBackend(wayland_display="wayland-0").socket_path() == str(tmp_path / "wayland-3")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert WaylandBackend(wayland_display="wayland-0").socket_path() is None  # nobody logged in yet
    runner = RecordingRunner()
    screen = Screen(WaylandBackend(wayland_display="wayland-0", runner=runner))
    screen.blank(RAISED)                                       # no session: recorded; swaylock is tried
    assert screen.is_blank and len(runner.calls) == 1


@pytest.mark.timeout(60)
def test_an_overlay_that_cannot_run_falls_back_to_swaylock(tmp_path):
    (tmp_path / "wayland-0").touch()
    runner = RecordingRunner()
    backend = WaylandBackend(wayland_display=str(tmp_path / "wayland-0"), python="/bin/false", runner=runner)
    screen = Screen(backend)
    try:
        screen.blank(RAISED)
        wait_until(lambda: runner.calls, timeout=30, message="swaylock was never started")
        assert runner.calls[0][0][-3:] == ["swaylock", "-c", "000000"]
        assert screen.backend_name == "wayland (fallback: swaylock)"   # what `status` shows
        screen.unblank()
        assert screen.backend_name == "wayland"
        assert runner.procs[0].terminated                      # released with SIGUSR1
    finally:
        screen.close()


# --------------------------------------------------------------------------- real X11 overlay


@pytest.fixture
def xvfb():
    binary = require_binary("Xvfb")
    require_binary("xdotool")
    require_binary("xwininfo")
    read, write = os.pipe()
    proc = spawn([binary, "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                 pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()
    assert number.isdigit(), "Xvfb did not report its display"
    yield f":{number}"
    terminate(proc)


def _x(display, *argv):
    return subprocess.run(list(argv), env={**os.environ, "DISPLAY": display}, capture_output=True, text=True,
                          timeout=10)


def _visible(display) -> bool:
    return _x(display, "xdotool", "search", "--onlyvisible", "--name", "classroom-safety").stdout.strip() != ""


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_x11_overlay_ignores_escape_and_alt_f4_and_clears_with_pin(xvfb, pin_hash):
    events = []
    got = threading.Condition()
    backend = X11Backend(display=xvfb, staff_pin_hash=pin_hash)
    screen = Screen(backend)
    inner = backend.on_event

    def on_event(event):
        inner(event)
        with got:
            events.append(event)
            got.notify_all()
    backend.on_event = on_event
    cleared = []
    screen.when_cleared = cleared.append
    try:
        screen.start()
        assert backend.ready.wait(15), "overlay did not start"
        assert not _visible(xvfb)                             # started hidden, ready for a press
        screen.blank(RAISED)
        wait_until(lambda: {"event": "shown"} in events, 10)
        wait_until(lambda: _visible(xvfb), 10, message="overlay window not visible")
        tree = _x(xvfb, "xwininfo", "-root", "-tree").stdout
        assert '"classroom-safety"' in tree and "800x600+0+0" in tree   # covers the whole screen
        screen.set_message(SEEN)
        for key in ("Escape", "alt+F4", "ctrl+w", "alt+Tab"):
            _x(xvfb, "xdotool", "key", key)
        _x(xvfb, "xdotool", "type", "135791")                 # a wrong PIN...
        _x(xvfb, "xdotool", "key", "Return")
        # ...answered after the keys before it were handled: X delivers them in order.
        wait_until(lambda: any(e.get("event") == "pin_wrong" for e in events), 10)
        assert _visible(xvfb) and screen.is_blank and cleared == []
        _x(xvfb, "xdotool", "type", "246801")
        _x(xvfb, "xdotool", "key", "Return")
        wait_until(lambda: cleared == ["staff-pin"], 10, message=lambda: f"events: {events}")
        assert not screen.is_blank
        wait_until(lambda: not _visible(xvfb), 10)
    finally:
        screen.close()


FAKE_OVERLAY = r"""
import os, sys
from agent.desktop.programs.overlay_core import OverlayCore
class Fake(OverlayCore):
    def draw_show(self): pass
    def draw_hide(self): pass
    def draw_message(self, text): self.text = text
    def draw_hint(self, text): pass
    def drawn(self): return {"shown": self.shown, "message": getattr(self, "text", "")}
    def quit(self): sys.exit(0)
fake = Fake()
fake.say(event="ready")
while True:
    fake.feed(os.read(0, 65536))
"""


class FakeOverlayBackend(OverlayBackend):
    """The real backend machinery around a stand-in overlay drawing nothing."""

    name = "fake"
    module = "fake-overlay-for-tests"

    def __init__(self):
        super().__init__()
        self.display = "one"
        self.drawing_on = None

    def launch(self):
        self.drawing_on = self.display
        return [sys.executable, "-c", FAKE_OVERLAY, self.module], {"PATH": os.environ.get("PATH", "")}

    def stale(self):
        return self.drawing_on != self.display


@pytest.mark.timeout(60)
def test_a_new_login_gets_a_new_overlay_on_the_next_blank():
    backend = FakeOverlayBackend()
    screen = Screen(backend)
    try:
        screen.start()
        assert backend.ready.wait(15)
        screen.blank(RAISED)
        assert backend.drawn() == {"shown": True, "message": RAISED}
        first = backend._proc
        screen.unblank()
        backend.display = "two"                                # the pupil logged out; someone else logged in
        screen.blank(RAISED)
        assert backend._proc is not first and first.wait(timeout=10) is not None
        assert backend.drawn() == {"shown": True, "message": RAISED} and backend.drawing_on == "two"
    finally:
        screen.close()

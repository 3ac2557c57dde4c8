"""Idle sources: the fake-clock one, X11's XScreenSaver idle time on a real Xvfb display,
and swayidle judged by the command it is given and the lines it prints."""

from __future__ import annotations

import io
import os
import pwd
import subprocess

import pytest

from agent.core.clock import FakeClock
from agent.desktop.headless import HeadlessIdle
from agent.desktop.programs.x11_idle import x11_idle_ms
from agent.desktop.wayland import SwayIdle
from agent.desktop.x11 import X11Idle
from agent.desktop.session import Session
from lock_fixtures import RecordingRunner, xvfb  # noqa: F401 - fixture
from services import require_binary, wait_until

pytestmark = pytest.mark.timeout(30)


def test_headless_idle_counts_from_the_last_input():
    clock = FakeClock()
    idle = HeadlessIdle(clock)
    clock.advance(90)
    assert idle.idle_seconds() == 90
    idle.touch()
    clock.advance(5)
    assert idle.idle_seconds() == 5


@pytest.mark.integration
def test_x11_idle_time_from_a_real_display_resets_on_input(xvfb):
    require_binary("xdotool")
    source = X11Idle(xvfb.display, xprintidle="")  # the ctypes/libXss child process
    xdotool = ["xdotool", "mousemove", "10", "10"]
    subprocess.run(xdotool, env=xvfb.env, check=True)
    first = wait_until(lambda: (source.idle_seconds() or 0) >= 0.3, timeout=10)
    before = source.idle_seconds()
    assert first and before >= 0.3
    subprocess.run(["xdotool", "mousemove", "200", "200"], env=xvfb.env, check=True)
    after = source.idle_seconds()
    assert after is not None and after < before
    assert x11_idle_ms(xvfb.display) >= 0
    helper = source._helper
    source.close()
    assert helper.poll() is not None


def test_x11_idle_unreachable_display_is_unknown_not_idle():
    source = X11Idle(":987", xprintidle="")
    assert source.idle_seconds() is None
    with pytest.raises(OSError):
        x11_idle_ms(":987")


def test_x11_idle_prefers_xprintidle_and_rejects_garbage():
    runner = RecordingRunner({"/usr/bin/xprintidle": (0, "12345\n")})
    source = X11Idle(":0", runner=runner, xprintidle="/usr/bin/xprintidle")
    assert source.idle_seconds() == 12.345
    assert runner.ran == [["/usr/bin/xprintidle"]]
    source.runner = RecordingRunner({"/usr/bin/xprintidle": (0, "couldn't open display\n")})
    assert source.idle_seconds() is None
    source.runner = RecordingRunner({"/usr/bin/xprintidle": (1, "")})
    assert source.idle_seconds() is None


def test_swayidle_command_and_its_idle_and_active_lines(monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    user = pwd.getpwuid(0).pw_name
    session = Session(id="7", user=user, uid=0, type="wayland")
    runner = RecordingRunner()
    now = {"t": 1000.0}
    source = SwayIdle(lambda: session, runner, swayidle="/usr/bin/swayidle", monotonic=lambda: now["t"])
    changes = []
    source.when_changed = lambda: changes.append(1)
    source.set_timeout(900)
    [proc] = runner.spawned
    tail = proc.argv[proc.argv.index("/usr/bin/swayidle"):]
    assert tail == ["/usr/bin/swayidle", "-w", "timeout", "900", "echo idle", "resume", "echo active"]
    assert proc.argv[:3] == ["runuser", "-u", user] and "XDG_RUNTIME_DIR=/run/user/0" in proc.argv
    assert source.idle_seconds() == 0.0
    source._read(type("P", (), {"stdout": io.StringIO("idle\n")})())
    now["t"] += 30
    assert source.idle_seconds() == 930.0 and changes == [1]
    source._read(type("P", (), {"stdout": io.StringIO("junk\nactive\n")})())
    assert source.idle_seconds() == 0.0 and changes == [1, 1]
    # Same timeout: no restart.  New timeout: restart with it.
    source.set_timeout(900)
    assert len(runner.spawned) == 1
    source.set_timeout(300)
    assert len(runner.spawned) == 2 and proc.signals == [15] and "300" in runner.spawned[1].argv


def test_swayidle_that_dies_is_started_again():
    session = Session(id="7", user=pwd.getpwuid(0).pw_name, uid=0, type="wayland")
    runner = RecordingRunner()
    source = SwayIdle(lambda: session, runner, swayidle="/usr/bin/swayidle")
    source.set_timeout(600)
    runner.spawned[0].exit(-9)  # the pupil killed it
    assert source.idle_seconds() == 0.0
    assert len(runner.spawned) == 2


def test_swayidle_missing_means_unknown():
    source = SwayIdle(lambda: None, RecordingRunner(), swayidle="")
    source.set_timeout(600)
    assert source.idle_seconds() is None


def test_headless_devices_never_idle_lock():
    from agent.desktop.backends import make_desktop
    from agent.desktop.headless import NoIdle

    source = make_desktop("headless").idle
    assert isinstance(source, NoIdle) and source.idle_seconds() is None

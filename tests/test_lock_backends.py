"""Lock backends judged by the commands they issue (recording runner)."""

from __future__ import annotations

import os
import pwd
import signal

import pytest

from agent.desktop import session as sessions
from agent.desktop.base import SESSION_MODE, STAFF_MODE
from agent.desktop.wayland import WaylandLock
from agent.desktop.x11 import X11Lock
from agent.desktop.session import Session
from lock_fixtures import RecordingRunner

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def desktop_user():
    """A real account for the session (root's entry exists everywhere)."""
    return pwd.getpwuid(0).pw_name


def wayland_session(user):
    return Session(id="7", user=user, uid=pwd.getpwnam(user).pw_uid, type="wayland", seat="seat0", tty="tty7")


def x11_session(user):
    return Session(id="3", user=user, uid=pwd.getpwnam(user).pw_uid, type="x11", display=":0", seat="seat0")


def test_wayland_lock_runs_swaylock_as_the_session_user_with_its_environment(desktop_user, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    runner = RecordingRunner()
    lock = WaylandLock(lambda: wayland_session(desktop_user), runner, swaylock="/usr/bin/swaylock")
    lock.lock(SESSION_MODE, "ignored: swaylock shows no text")
    [proc] = runner.spawned
    argv = proc.argv
    uid = pwd.getpwnam(desktop_user).pw_uid
    assert argv[:6] == ["runuser", "-u", desktop_user, "--", "env", "-i"]
    assert f"XDG_RUNTIME_DIR=/run/user/{uid}" in argv and "WAYLAND_DISPLAY=wayland-0" in argv
    assert argv[argv.index("/usr/bin/swaylock"):][:3] == ["/usr/bin/swaylock", "--color", "10213f"]
    assert not any(a.startswith("NOTIFY_SOCKET=") for a in argv)  # nothing of the agent's leaks
    # Locking again while it runs does not start a second locker.
    lock.lock(STAFF_MODE, "")
    assert len(runner.spawned) == 1 and lock.mode == STAFF_MODE
    # Staff unlock: SIGUSR1 (swaylock's unlock), never a kill that leaves the compositor locked.
    lock.unlock()
    assert proc.signals == [signal.SIGUSR1] and not lock.is_locked


def test_wayland_lock_as_the_unprivileged_service_drops_capabilities_with_setpriv(desktop_user, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 999)
    runner = RecordingRunner()
    WaylandLock(lambda: wayland_session(desktop_user), runner, swaylock="/usr/bin/swaylock").lock(SESSION_MODE, "")
    argv = runner.spawned[0].argv
    assert argv[0] == "setpriv" and f"--reuid={desktop_user}" in argv
    assert "--inh-caps=-all" in argv and "--ambient-caps=-all" in argv and "--init-groups" in argv
    assert argv[argv.index("--") + 1:argv.index("--") + 3] == ["env", "-i"]


def test_wayland_user_unlock_ends_an_idle_lock_but_not_a_staff_lock(desktop_user):
    runner = RecordingRunner()
    lock = WaylandLock(lambda: wayland_session(desktop_user), runner, swaylock="/usr/bin/swaylock")
    lock.lock(STAFF_MODE, "")
    runner.spawned[0].exit(0)  # the pupil typed their password
    assert lock.poll() is None
    assert len(runner.spawned) == 2 and lock.is_locked  # locked again at once
    lock.mode = SESSION_MODE  # the staff lock lifted; only idle holds it now
    runner.spawned[1].exit(0)
    assert lock.poll() == ("login", desktop_user)
    assert not lock.is_locked


def test_wayland_crashed_locker_is_restarted(desktop_user):
    runner = RecordingRunner()
    lock = WaylandLock(lambda: wayland_session(desktop_user), runner, swaylock="/usr/bin/swaylock")
    lock.lock(SESSION_MODE, "")
    runner.spawned[0].exit(1)  # killed or crashed: not a successful login
    assert lock.poll() is None and len(runner.spawned) == 2


def test_wayland_without_swaylock_uses_logind(desktop_user):
    runner = RecordingRunner()
    lock = WaylandLock(lambda: wayland_session(desktop_user), runner, swaylock="")
    lock.lock(STAFF_MODE, "")
    lock.unlock()
    assert runner.ran == [["loginctl", "lock-session", "7"], ["loginctl", "unlock-session", "7"]]


def test_no_desktop_session_means_nothing_to_lock():
    runner = RecordingRunner()
    lock = WaylandLock(lambda: None, runner, swaylock="/usr/bin/swaylock")
    lock.lock(STAFF_MODE, "")
    assert runner.spawned == [] and not lock.is_locked


class FakeOverlay:
    def __init__(self):
        self.calls = []

    def show(self, message):
        self.calls.append(("show", message))

    def hide(self):
        self.calls.append(("hide",))

    def close(self):
        self.calls.append(("close",))


def test_x11_idle_lock_uses_the_lightdm_greeter_and_input_means_the_user_is_back(desktop_user, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    runner = RecordingRunner()
    idle = {"s": 900.0}
    overlay = FakeOverlay()
    lock = X11Lock(lambda: x11_session(desktop_user), runner=runner, idle_fn=lambda: idle["s"],
                   dm_tool="/usr/bin/dm-tool", overlay=overlay)
    lock.lock(SESSION_MODE, "")
    [argv] = runner.ran
    assert argv[:3] == ["runuser", "-u", desktop_user] and argv[-2:] == ["/usr/bin/dm-tool", "lock"]
    assert "DISPLAY=:0" in argv and "XDG_SEAT_PATH=/org/freedesktop/DisplayManager/Seat0" in argv
    assert overlay.calls == []
    assert lock.poll() is None
    idle["s"] = 2.0
    assert lock.poll() == ("login", desktop_user)


def test_x11_staff_lock_uses_the_overlay_and_the_pin_reports_back():
    runner = RecordingRunner()
    overlay = FakeOverlay()
    changed = []
    lock = X11Lock(lambda: None, runner=runner, dm_tool="/usr/bin/dm-tool", overlay=overlay)
    lock.when_changed = lambda: changed.append(1)
    lock.lock(STAFF_MODE, "This computer is having a rest. Ask a grown-up.")
    assert overlay.calls == [("show", "This computer is having a rest. Ask a grown-up.")]
    assert runner.ran == []  # the greeter is only for idle locks
    lock._on_overlay({"event": "pin_wrong"})
    assert lock.poll() is None and changed == []
    lock._on_overlay({"event": "cleared", "by": "staff-pin"})
    assert changed == [1]
    assert lock.poll() == ("staff_pin", "staff-pin") and not lock.is_locked


def test_x11_idle_lock_without_a_greeter_falls_back_to_the_overlay():
    overlay = FakeOverlay()
    lock = X11Lock(lambda: None, runner=RecordingRunner(), dm_tool="", overlay=overlay)
    lock.lock(SESSION_MODE, "Ask a grown-up.")
    lock.unlock()
    assert overlay.calls == [("show", "Ask a grown-up."), ("hide",)]


def test_session_env_finds_the_wayland_socket(tmp_path, monkeypatch, desktop_user):
    uid = pwd.getpwnam(desktop_user).pw_uid
    env = sessions.session_env(wayland_session(desktop_user))
    assert env["XDG_RUNTIME_DIR"] == f"/run/user/{uid}"
    assert env["DBUS_SESSION_BUS_ADDRESS"] == f"unix:path=/run/user/{uid}/bus"
    assert env["USER"] == desktop_user and env["HOME"] == pwd.getpwnam(desktop_user).pw_dir


def test_wayland_lock_wanted_before_anyone_logged_in_is_applied_at_login(desktop_user):
    runner = RecordingRunner()
    current = {"s": None}
    lock = WaylandLock(lambda: current["s"], runner, swaylock="/usr/bin/swaylock")
    lock.lock(STAFF_MODE, "")  # 07:00, the device booted locked; nobody on the desktop yet
    assert runner.spawned == [] and not lock.is_locked
    assert lock.poll() is None and runner.spawned == []
    current["s"] = wayland_session(desktop_user)  # someone logs in at the greeter
    assert lock.poll() is None
    assert len(runner.spawned) == 1 and lock.is_locked


def test_wayland_session_gone_while_locked_waits_for_the_next_login(desktop_user):
    runner = RecordingRunner()
    current = {"s": wayland_session(desktop_user)}
    lock = WaylandLock(lambda: current["s"], runner, swaylock="/usr/bin/swaylock")
    lock.lock(STAFF_MODE, "")
    current["s"] = None  # logged out: the compositor went, swaylock with it
    runner.spawned[0].exit(1)
    for _ in range(3):
        assert lock.poll() is None
    assert len(runner.spawned) == 1  # no respawn storm without a desktop
    current["s"] = wayland_session(desktop_user)
    lock.poll()
    assert len(runner.spawned) == 2 and lock.is_locked

"""The X11 lock for real: a full-screen overlay window on an Xvfb display, which Escape
does not close and the staff PIN does, driven through the lock component."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone

import pytest

from agent.desktop.headless import HeadlessIdle
from agent.desktop.base import STAFF_MODE
from agent.desktop.x11 import X11Lock
from agent.policy.lock import LockComponent
from agent.desktop.pin import hash_pin
from fake_runtime import FakeRuntime
from lock_fixtures import xvfb  # noqa: F401 - fixture
from services import require_binary, wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]

PIN = "246801"


def visible_overlay(env) -> tuple[int, int] | None:
    out = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "classroom-safety"], env=env,
                         capture_output=True, text=True)
    ids = out.stdout.split()
    if not ids:
        return None
    info = subprocess.run(["xwininfo", "-id", ids[0]], env=env, capture_output=True, text=True).stdout
    fields = dict(line.strip().split(":", 1) for line in info.splitlines() if ":" in line)
    if fields.get("Map State", "").strip() != "IsViewable":
        return None
    return int(fields["Width"]), int(fields["Height"])


def xdotool(env, *args):
    subprocess.run(["xdotool", *args], env=env, check=True, capture_output=True)


def test_staff_lock_shows_a_full_screen_window_only_the_pin_clears(xvfb, tmp_path):
    require_binary("xdotool")
    require_binary("xwininfo")
    rt = FakeRuntime(tmp_path, start=datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc))
    backend = X11Lock(lambda: None, staff_pin_hash=hash_pin(PIN), display=xvfb.display, dm_tool="")
    comp = LockComponent(backend=backend, idle=HeadlessIdle(rt.clock))
    comp.start(rt)
    try:
        comp.on_command({"cmd": "lock", "by": "m.khan"})
        size = wait_until(lambda: visible_overlay(xvfb.env), timeout=20, message="overlay never appeared")
        assert size == (1024, 768)  # the whole screen
        assert rt.of_type("lock")[-1]["by"] == "m.khan"

        # Escape, Alt+F4 and a wrong PIN do nothing a pupil could use.
        xdotool(xvfb.env, "key", "Escape")
        xdotool(xvfb.env, "key", "alt+F4")
        xdotool(xvfb.env, "type", "111111")
        xdotool(xvfb.env, "key", "Return")
        assert comp.is_locked and visible_overlay(xvfb.env) == (1024, 768)

        # Staff type the PIN: the overlay tells the backend, which wakes the component.
        xdotool(xvfb.env, "type", PIN)
        xdotool(xvfb.env, "key", "Return")
        rt.run_posted(timeout=20)
        assert not comp.is_locked
        ev = rt.of_type("unlock")[-1]
        assert (ev["reason"], ev["by"]) == ("staff_pin", "staff-pin")
        wait_until(lambda: visible_overlay(xvfb.env) is None, timeout=10, message="overlay still shown")
    finally:
        comp.stop()
        backend.overlay.close()


def test_remote_unlock_hides_the_window(xvfb):
    require_binary("xdotool")
    backend = X11Lock(lambda: None, staff_pin_hash=None, display=xvfb.display, dm_tool="")
    try:
        backend.lock(STAFF_MODE, "School computers are asleep now. See you soon!")
        wait_until(lambda: visible_overlay(xvfb.env), timeout=20, message="overlay never appeared")
        backend.unlock()
        wait_until(lambda: visible_overlay(xvfb.env) is None, timeout=10, message="overlay still shown")
        assert not backend.is_locked
    finally:
        backend.overlay.close()


def test_the_pupil_cannot_kill_the_lock_window(xvfb):
    """The overlay runs as the agent's user, not the desktop user's: the pupil's own
    account gets 'Operation not permitted' trying to end it."""
    import psutil

    from agent.desktop.session import Session
    from services import require_root

    require_root()
    pupil = Session(id="1", user="nobody", uid=65534, type="x11", display=xvfb.display)
    backend = X11Lock(lambda: pupil, staff_pin_hash=None, dm_tool="")
    try:
        backend.lock(STAFF_MODE, "Ask a grown-up.")
        wait_until(lambda: visible_overlay(xvfb.env), timeout=20, message="overlay never appeared")
        proc = backend.overlay._proc
        assert psutil.Process(proc.pid).username() == "root"  # the agent's account here
        attempt = subprocess.run(["runuser", "-u", "nobody", "--", "kill", "-KILL", str(proc.pid)],
                                 capture_output=True, text=True)
        assert attempt.returncode != 0 and "not permitted" in attempt.stderr.lower()
        assert proc.poll() is None and visible_overlay(xvfb.env)
    finally:
        backend.unlock()
        backend.overlay.close()


def test_a_lock_window_that_dies_is_shown_again(xvfb):
    """X restarting or the overlay crashing must not unlock the device: the overlay
    backend starts it again with the same message."""
    import os
    import signal

    from agent.desktop.session import Session

    pupil = Session(id="1", user="nobody", uid=65534, type="x11", display=xvfb.display)
    backend = X11Lock(lambda: pupil, staff_pin_hash=None, dm_tool="")
    try:
        backend.lock(STAFF_MODE, "Ask a grown-up.")
        wait_until(lambda: visible_overlay(xvfb.env), timeout=20, message="overlay never appeared")
        first = backend.overlay._proc
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: backend.overlay._proc not in (None, first) and visible_overlay(xvfb.env),
                   timeout=20, message="the lock window did not come back")
        assert backend.overlay.drawn()["message"] == "Ask a grown-up." and backend.is_locked
        assert backend.poll() is None                        # still locked as far as the lock knows
    finally:
        backend.unlock()
        backend.overlay.close()

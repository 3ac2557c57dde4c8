"""The Wayland backends for real: a headless sway compositor running as an unprivileged
user (sway refuses root, like a real desktop session), swayidle reporting idle through
our pipe, and swaylock started as that user, ended by the staff unlock (SIGUSR1) and
started again when it dies under a staff lock."""

from __future__ import annotations

import signal

import psutil
import pytest

from agent.desktop.wayland import SwayIdle
from agent.desktop.base import STAFF_MODE
from agent.desktop.wayland import WaylandLock, catches
from services import require_binary, wait_until
from wayland_fixtures import USER, sway_session  # noqa: F401 - a fixture

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

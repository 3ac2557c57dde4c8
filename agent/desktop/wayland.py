"""Lock state and lock backends: what locks the device, why, and who may unlock it.

Three reasons can hold a device locked at once, layered (``LockState``):

* **staff** -- a ``lock`` command from a teacher; only a staff ``unlock`` (or the staff
  PIN on an X11 overlay) lifts it.
* **schedule** -- the timetable (``policy.locked``: out of hours, weekends, holidays,
  closures, locked room slots).  Lifts when the timetable says so, or for a while after
  a staff ``unlock`` (``STAFF_OVERRIDE``, never past the next timetable change).
* **idle** -- no input for ``policy.idle_lock_minutes``; lifted by the user's own
  session login (the normal unlock), or by staff.

Staff and schedule locks use a backend's *staff* mode: nothing a pupil knows lifts it.
Idle uses *session* mode: the desktop's own locker, unlocked with the user's password.

Backends (commands are issued through a runner so tests can see them):

* ``WaylandLock`` -- labwc/wayfire: ``swaylock`` (ext-session-lock: if it is killed the
  compositor keeps the screen locked) run as the session user.  Staff unlock sends it
  SIGUSR1 (swaylock's "unlock now"); in staff mode a user unlock is undone at once by
  locking again.  Without swaylock: ``loginctl lock-session``/``unlock-session``.
* ``X11Lock`` -- the full-screen Tk overlay of agent/screen_overlay.py (shared with the
  report blank, via ``screen.X11Backend``), run as the agent's own user so the pupil
  cannot kill it; staff PIN accepted.  Idle lock uses LightDM's greeter (``dm-tool lock``)
  when present, so the pupil logs back in as normal.
* ``HeadlessLock`` -- records state and calls (servers, simulated devices, tests).
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["HeadlessLock", "LockDecision", "LockState", "WaylandLock", "X11Lock", "make_lock", "STAFF_OVERRIDE"]

# A staff unlock during a timetable lock (an after-school club in a room without an
# "open" slot) lasts this long at most, so a forgotten device locks again by itself.
STAFF_OVERRIDE = timedelta(hours=1)

STAFF_MODE = "staff"
SESSION_MODE = "session"


@dataclass(frozen=True)
class LockDecision:
    reason: str  # staff | idle | out_of_hours | weekend | holiday | closure | schedule
    by: str
    mode: str  # staff | session
    message_key: str  # key of policy.messages to show


class LockState:
    """The layered lock reasons; pure (no clock read, no I/O) so a fake clock can drive it."""

    def __init__(self) -> None:
        self.staff_by: str | None = None
        self.idle = False
        self.schedule_reason: str | None = None
        self.override_until: datetime | None = None

    def set_schedule(self, locked: bool, reason: str | None, now: datetime) -> None:
        self.schedule_reason = (reason or "schedule") if locked else None
        if not locked:
            self.override_until = None  # the timetable opened by itself; no override needed

    def staff_lock(self, by: str) -> None:
        self.staff_by = by

    def staff_unlock(self, now: datetime, next_change: datetime | None) -> None:
        self.staff_by = None
        self.idle = False
        if self.schedule_reason is not None:
            until = now + STAFF_OVERRIDE
            if next_change is not None and next_change < until:
                until = next_change
            self.override_until = until

    def schedule_applies(self, now: datetime) -> bool:
        if self.schedule_reason is None:
            return False
        if self.override_until is not None and now < self.override_until:
            return False
        self.override_until = None
        return True

    def decide(self, now: datetime) -> LockDecision | None:
        if self.staff_by is not None:
            return LockDecision("staff", self.staff_by, STAFF_MODE, "locked")
        if self.schedule_applies(now):
            key = "locked" if self.schedule_reason == "schedule" else "out_of_hours"
            return LockDecision(self.schedule_reason, "schedule", STAFF_MODE, key)
        if self.idle:
            return LockDecision("idle", "idle", SESSION_MODE, "locked")
        return None


# --------------------------------------------------------------------------- backends


class HeadlessLock:
    """Remembers what a lock screen would do; tests use simulate_* for the user side."""

    name = "headless"

    def __init__(self) -> None:
        self.is_locked = False
        self.mode: str | None = None
        self.message: str | None = None
        self.calls: list[tuple] = []
        self._pending: tuple[str, str] | None = None
        self.when_changed: Callable[[], None] = lambda: None

    def lock(self, mode: str, message: str) -> None:
        self.calls.append(("lock", mode, message))
        self.is_locked, self.mode, self.message = True, mode, message

    def unlock(self) -> None:
        self.calls.append(("unlock",))
        self.is_locked, self.mode, self.message = False, None, None

    def poll(self) -> tuple[str, str] | None:
        pending, self._pending = self._pending, None
        if pending is not None:
            reason, by = pending
            if self.mode == STAFF_MODE and reason == "login":
                # A pupil's password does not lift a staff or timetable lock.
                self.calls.append(("relock", self.mode))
                return None
            self.is_locked, self.mode = False, None
        return pending

    def simulate_login(self, user: str) -> None:
        self._pending = ("login", user)
        self.when_changed()

    def simulate_pin(self) -> None:
        self._pending = ("staff_pin", "staff-pin")
        self.when_changed()

    def close(self) -> None:
        pass


class WaylandLock:
    """swaylock as the session user (or logind's lock as a fallback)."""

    name = "wayland"

    def __init__(self, session_fn: Callable, runner=None, swaylock: str | None = None):
        from .sessions import CommandRunner

        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.swaylock = swaylock if swaylock is not None else shutil.which("swaylock")
        self.is_locked = False
        self.mode: str | None = None
        self._proc = None
        self._session = None
        self.when_changed: Callable[[], None] = lambda: None

    def _spawn(self) -> None:
        from .sessions import as_session_user, session_env

        argv = as_session_user(self._session.user, session_env(self._session), [
            self.swaylock, "--color", "10213f", "--show-failed-attempts", "--ignore-empty-password"])
        self._proc = self.runner.spawn(argv)
        threading.Thread(target=self._wait, args=(self._proc,), name="swaylock-wait", daemon=True).start()

    def _wait(self, proc) -> None:
        try:
            proc.wait()
        except Exception:  # noqa: BLE001 - fakes in tests may not wait
            return
        self.when_changed()

    def lock(self, mode: str, message: str) -> None:
        self.mode = mode
        if self.is_locked and (self._proc is None or self._proc.poll() is None):
            return
        self._session = self.session_fn()
        if self._session is None:
            log.info("no desktop session to lock yet; will lock it when one starts")
            return
        self.is_locked = True
        if self.swaylock:
            self._spawn()
        else:
            self.runner.run(["loginctl", "lock-session", self._session.id])

    def unlock(self) -> None:
        if not self.is_locked:
            return
        self.is_locked, self.mode = False, None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                release_swaylock(proc)
        elif self._session is not None:
            self.runner.run(["loginctl", "unlock-session", self._session.id])

    def poll(self) -> tuple[str, str] | None:
        if self.mode is not None and not self.is_locked:
            # Wanted locked but there was no desktop yet (boot, out of hours): try again now.
            self.lock(self.mode, "")
            return None
        proc = self._proc
        if not self.is_locked or proc is None or proc.poll() is None:
            return None
        if self.mode == STAFF_MODE or proc.returncode != 0:
            # The pupil's password (or a crash) must not lift a staff/timetable lock.  The
            # session is looked up again: if the user logged out, wait for the next one.
            log.info("lock client exited (%s) under a staff lock; locking again", proc.returncode)
            self.is_locked, self._proc = False, None
            self.lock(self.mode, "")
            return None
        self.is_locked, self.mode, self._proc = False, None, None
        return ("login", self._session.user)

    def close(self) -> None:
        pass  # leave the screen locked: a restarting agent must not expose the desktop


def catches(pid: int | None, sig: int) -> bool:
    """Whether process *pid* has a handler for *sig* (SigCgt in /proc/PID/status)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (int(sig) - 1)))
    except (OSError, ValueError):
        pass
    return False


def release_swaylock(proc) -> None:
    """Unlock a running swaylock (started directly or under runuser/setpriv) as it expects.

    Shared by the lock and the report blank (agent/screen.py)."""
    target = _find_child(proc.pid, "swaylock") if isinstance(proc, subprocess.Popen) else proc
    # A swaylock started a moment ago may not catch SIGUSR1 yet (it would die of it
    # instead, possibly mid-lock): give it a moment to install its handler.
    _wait_catches(getattr(target, "pid", None), signal.SIGUSR1, timeout=2.0)
    # SIGUSR1 is swaylock's documented "unlock and exit"; killing it instead
    # would leave an ext-session-lock compositor locked with no client.
    try:
        target.send_signal(signal.SIGUSR1)
    except Exception as exc:  # noqa: BLE001 - already gone
        log.info("swaylock already gone: %s", exc)


def _wait_catches(pid: int | None, sig: int, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while pid is not None and not catches(pid, sig) and time.monotonic() < deadline:
        time.sleep(0.02)


def _find_child(pid: int, name: str):
    """The real *name* process under a runuser/setpriv wrapper (runuser forks; setpriv execs)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        if parent.name() == name:
            return parent
        for child in parent.children(recursive=True):
            # swaylock forks a PAM helper of the same name: we want the one whose parent
            # is not swaylock itself.
            if child.name() == name and child.parent().name() != name and child.status() != psutil.STATUS_ZOMBIE:
                return child
        return parent
    except psutil.Error:
        class _Gone:
            def send_signal(self, sig):
                raise ProcessLookupError(pid)
        return _Gone()


class X11Lock:
    """The shared Tk overlay (agent/screen_overlay.py) for staff/timetable locks; LightDM for idle."""

    name = "x11"

    def __init__(self, session_fn: Callable, staff_pin_hash: str | None = None, display: str | None = None,
                 runner=None, idle_fn: Callable[[], float | None] | None = None, dm_tool: str | None = None,
                 overlay=None):
        from .sessions import CommandRunner

        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.idle_fn = idle_fn or (lambda: None)
        self.dm_tool = dm_tool if dm_tool is not None else shutil.which("dm-tool")
        self.display = display
        self.staff_pin_hash = staff_pin_hash
        self._overlay = overlay
        self.is_locked = False
        self.mode: str | None = None
        self._greeter = False
        self._user: str | None = None
        self._pending: tuple[str, str] | None = None
        self.when_changed: Callable[[], None] = lambda: None

    @property
    def overlay(self):
        if self._overlay is None:
            from .screen import X11Backend

            # session_user=None: the overlay runs as the agent's own user (allowed on the
            # display by `xhost +SI:localuser:classroom-agent`), so the pupil cannot kill it.
            display = self.display
            if display is None:
                session = self.session_fn()
                display = session.display if session is not None and (session.display or "").startswith(":") else None
            self._overlay = X11Backend(None, self.staff_pin_hash, display, on_event=self._on_overlay)
        return self._overlay

    def _on_overlay(self, event: dict) -> None:
        if event.get("event") == "cleared" and self.is_locked:
            self._pending = ("staff_pin", str(event.get("by") or "staff-pin"))
            self.when_changed()

    def lock(self, mode: str, message: str) -> None:
        session = self.session_fn()
        self._user = session.user if session else None
        self.mode = mode
        if mode == SESSION_MODE and self.dm_tool and session is not None:
            from .sessions import as_session_user, session_env

            self.runner.run(as_session_user(session.user, session_env(session), [self.dm_tool, "lock"]))
            self._greeter = True
        else:
            self._greeter = False
            self.overlay.show(message)
        self.is_locked = True

    def unlock(self) -> None:
        if self.is_locked and not self._greeter:
            self.overlay.hide()
        # A LightDM greeter lock cannot be lifted remotely; the user logs back in.
        self.is_locked, self.mode, self._greeter = False, None, False

    def poll(self) -> tuple[str, str] | None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.is_locked, self.mode = False, None
            return pending
        if self.is_locked and not self._greeter:
            return None  # an overlay that dies is shown again by screen.OverlayBackend itself
        if self.is_locked and self._greeter:
            idle = self.idle_fn()
            if idle is not None and idle < 10:
                # Input on the user's own display means they are back past the greeter.
                self.is_locked, self.mode, self._greeter = False, None, False
                return ("login", self._user or "user")
        return None

    def close(self) -> None:
        if self._overlay is not None and not self.is_locked:
            self._overlay.close()


def make_lock(kind: str, *, session_fn: Callable, staff_pin_hash: str | None = None,
              idle_fn: Callable | None = None, runner=None):
    """A lock backend by name: wayland (or swaylock), x11 or headless ('auto' is resolved by the caller)."""
    if kind in ("wayland", "swaylock"):  # the lock is swaylock either way
        return WaylandLock(session_fn, runner)
    if kind == "x11":
        return X11Lock(session_fn, staff_pin_hash, runner=runner, idle_fn=idle_fn)
    return HeadlessLock()

"""The Wayland desktop (labwc/wayfire on Raspberry Pi OS, sway): the layer-shell overlay,
swaylock, and swayidle.

* ``WaylandBackend`` -- the report blank: a GTK overlay on a wlr-layer-shell surface
  above every window (programs/overlay_wayland.py, on Debian's /usr/bin/python3, where
  python3-gi and gtk-layer-shell live), with the calm message and the staff PIN.  It
  runs as the agent's own user, so the pupil can neither kill nor signal it; the session
  lets that user reach its socket with an ACL (scripts/session-grant.sh).  Falls back to
  swaylock if it cannot run.
* ``SwaylockBackend`` -- the report blank without layer-shell: ``swaylock -c 000000`` as
  the session user.  No words and no PIN: staff clear from their client.  It runs as
  the pupil, who can end it (SIGUSR1 is its "unlock now"), so any exit the agent did not
  ask for is reported (``when_tampered``) and it is started again at once.
* ``WaylandLock`` -- staff and timetable locks: a ``WaylandBackend`` overlay of its own
  (the agent's user, so nothing the pupil runs can end it), showing the lock message and
  taking the staff PIN.  The idle lock, and every lock where the overlay cannot run:
  ``swaylock`` as the session user (ext-session-lock: if it is killed the compositor
  keeps the screen locked).  Staff unlock sends it SIGUSR1; in staff mode any exit the
  agent did not ask for is reported and undone at once by locking again.  Without
  swaylock: ``loginctl lock-session``/``unlock-session``.
* ``SwayIdle`` -- ``swayidle -w timeout N 'echo idle' resume 'echo active'`` as the
  session user; its commands' output arrives on our pipe, so the agent needs no socket
  for it.  Restarted if it exits.

``release_swaylock`` is how every swaylock of ours is ended (the lock's and the blank's).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable

from .base import SESSION_MODE, STAFF_MODE, IdleSource, LockBackend, ScreenBackend
from .overlay import OverlayBackend
from .pin import PinBackoffFile
from .session import CommandRunner, Session, session_command, user_session

log = logging.getLogger(__name__)

__all__ = ["OVERLAY_PYTHON", "SwayIdle", "SwaylockBackend", "WaylandBackend", "WaylandLock", "catches",
           "release_swaylock", "wayland_overlay_available"]

OVERLAY_PYTHON = "/usr/bin/python3"   # Debian's python3-gi and gir1.2-gtklayershell-0.1 live here


def wayland_overlay_available(python: str = OVERLAY_PYTHON) -> bool:
    """Whether the GTK layer-shell overlay can run (its Python and typelib are installed)."""
    return os.access(python, os.X_OK) and bool(
        glob.glob("/usr/lib/*/girepository-1.0/GtkLayerShell-0.1.typelib")
        + glob.glob("/usr/lib/girepository-1.0/GtkLayerShell-0.1.typelib"))


# --------------------------------------------------------------------------- report blank


class SwaylockBackend(ScreenBackend):
    """``swaylock -c 000000`` as the session user; clearing ends it.  The fallback for a
    Wayland compositor without layer-shell: secure (ext-session-lock) but it shows no
    words and takes no PIN, so staff clear from the teacher client.  (A pupil cannot
    unlock it: the session's password is not theirs on a kiosk.)

    The session is agent.yaml's ``session_user`` if set, else ``session_fn()``'s."""

    name = "swaylock"

    RESTART_WINDOW = 60.0

    def __init__(self, session_user: str | None = None, runner=None, wayland_display: str | None = None,
                 session_fn: Callable[[], Session | None] | None = None):
        super().__init__()
        self.session_user = session_user
        self.session_fn = session_fn or (lambda: None)
        self.runner = runner or CommandRunner()
        self.wayland_display = wayland_display  # None: the session's own socket
        self._proc = None
        self._lock = threading.Lock()
        self._ends: list[float] = []

    def session(self) -> Session | None:
        session = self.session_fn()
        if self.session_user and (session is None or session.user != self.session_user):
            session = user_session(self.session_user, "wayland")
        return session

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        extra = {"WAYLAND_DISPLAY": self.wayland_display} if self.wayland_display else None
        return session_command(self.session(), ["swaylock", "-c", "000000"], extra)

    @property
    def is_shown(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def show(self, message: str) -> None:
        with self._lock:
            if self.is_shown:
                return
            argv, env = self.command()
            proc = self._proc = self.runner.spawn(argv, env=env)
        threading.Thread(target=self._wait, args=(proc,), name="swaylock-blank-wait", daemon=True).start()

    def _wait(self, proc) -> None:
        """An exit nobody here asked for (the pupil's SIGUSR1, a kill): report, cover again."""
        try:
            code = proc.wait()
        except Exception:  # noqa: BLE001 - fakes in tests may not wait
            return
        with self._lock:
            if self._proc is not proc:
                return  # hidden on purpose
            self._proc = None
            now = time.monotonic()
            self._ends = [t for t in self._ends if now - t < self.RESTART_WINDOW] + [now]
            ends = len(self._ends)
        log.warning("the blank's swaylock ended (%s) while it should cover the screen; starting it again", code)
        if self.when_tampered is not None:
            try:
                self.when_tampered({"what": "blank_client_ended", "action": "restarted", "exit": code})
            except Exception:  # noqa: BLE001
                log.exception("tamper report failed")
        if ends > 2:
            time.sleep(min(5.0, 0.5 * ends))  # not a hot loop if it cannot lock at all
        self.show("")

    def set_message(self, message: str) -> None:
        pass  # swaylock shows no text; the LED and the teacher carry the acknowledgement

    def hide(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            self._ends = []
        if proc is not None and proc.poll() is None:
            release_swaylock(proc)  # SIGUSR1, never SIGTERM: see release_swaylock

    def close(self) -> None:
        self.hide()


class WaylandBackend(OverlayBackend):
    """The GTK layer-shell overlay (programs/overlay_wayland.py) on the session's Wayland
    socket, with the calm message and the staff PIN, on the system Python as the agent's
    own user; swaylock if it cannot run."""

    name = "wayland"
    module = "agent.desktop.programs.overlay_wayland"

    def __init__(self, session_user: str | None = None, staff_pin_hash: str | None = None, *,
                 wayland_display: str | None = None, session_fn: Callable[[], Session | None] | None = None,
                 python: str = OVERLAY_PYTHON, runner=None, on_event: Callable[[dict], None] | None = None,
                 pin_backoff: PinBackoffFile | None = None):
        super().__init__(staff_pin_hash, on_event, pin_backoff)
        self.session_user = session_user
        self.session_fn = session_fn or (lambda: None)
        self.wayland_display = wayland_display or os.environ.get("WAYLAND_DISPLAY") or "wayland-0"
        self.python = python
        self.fallback = SwaylockBackend(session_user, runner, wayland_display=wayland_display, session_fn=session_fn)
        # The fallback's own put-backs (the pupil ending it) are reported as this screen's.
        self.fallback.when_tampered = lambda fields: self._tampered(**fields)
        self._socket: str | None = None
        self._private_dir: str | None = None

    def socket_path(self) -> str | None:
        """The session's Wayland socket: absolute already, or in the session user's
        runtime dir (the named one, else the first ``wayland-N`` there)."""
        if os.path.isabs(self.wayland_display):
            return self.wayland_display if os.path.exists(self.wayland_display) else None
        user = self.session_user
        if not user:
            session = self.session_fn()
            user = session.user if session is not None else None
        runtime_dir = None
        if user:
            try:
                runtime_dir = f"/run/user/{pwd.getpwnam(user).pw_uid}"
            except KeyError:
                log.warning("session user %r does not exist", user)
        runtime_dir = runtime_dir or os.environ.get("XDG_RUNTIME_DIR")
        if not runtime_dir:
            return None
        named = os.path.join(runtime_dir, self.wayland_display)
        if os.path.exists(named):
            return named
        try:
            found = sorted(n for n in os.listdir(runtime_dir) if n.startswith("wayland-") and not n.endswith(".lock"))
        except OSError:
            return None
        return os.path.join(runtime_dir, found[0]) if found else None

    def display_alive(self) -> bool:
        socket = self._socket or self.socket_path()
        return socket is not None and os.path.exists(socket)

    def stale(self) -> bool:
        # One stat on the press path: a compositor that has gone took its socket with it
        # (and the overlay with it, as GTK exits when its display goes).  Finding the new
        # session's socket is launch()'s job, not every blank's.
        return self._socket is None or not os.path.exists(self._socket)

    def launch(self) -> tuple[list[str], dict[str, str]] | None:
        self._socket = self.socket_path()
        if self._socket is None:
            return None
        if self._private_dir is None:
            # GTK wants an XDG_RUNTIME_DIR of its own; the pupil's is not ours to write.
            # Under systemd that is in RuntimeDirectory= (the rest of the disk is read-only).
            self._private_dir = tempfile.mkdtemp(prefix="overlay-", dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WAYLAND_DISPLAY": self._socket,
               "XDG_RUNTIME_DIR": self._private_dir, "GDK_BACKEND": "wayland",
               "GSETTINGS_BACKEND": "memory", "NO_AT_BRIDGE": "1", "HOME": self._private_dir}
        return [self.python, "-m", self.module], env

    def close(self) -> None:
        super().close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None


# --------------------------------------------------------------------------- lock


class WaylandLock(LockBackend):
    """Staff locks on an overlay of the agent's own (when *overlay*), idle locks (and
    staff ones without the overlay) with swaylock as the session user, or logind's lock
    as a last resort.  *overlay*: True to build a ``WaylandBackend``, or one to use."""

    name = "wayland"

    def __init__(self, session_fn: Callable, runner=None, swaylock: str | None = None, *,
                 session_user: str | None = None, staff_pin_hash: str | None = None,
                 pin_backoff: PinBackoffFile | None = None, overlay: bool | OverlayBackend = False):
        super().__init__()
        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.swaylock = swaylock if swaylock is not None else shutil.which("swaylock")
        self._proc = None
        self._session = None
        self._message = ""
        self._logind_locked = False
        self._pending: tuple[str, str] | None = None
        if overlay is True:
            overlay = WaylandBackend(session_user, staff_pin_hash, session_fn=session_fn, runner=runner,
                                     pin_backoff=pin_backoff)
        self.overlay: OverlayBackend | None = overlay or None
        self._overlay_up = False
        if self.overlay is not None:
            self.overlay.on_event = self._on_overlay
            self.overlay.when_tampered = self.tampered

    def _on_overlay(self, event: dict) -> None:
        if event.get("event") == "cleared" and self._overlay_up:
            self._pending = ("staff_pin", str(event.get("by") or "staff-pin"))
            self.when_changed()

    def _spawn(self) -> None:
        argv, env = session_command(self._session, [
            self.swaylock, "--color", "10213f", "--show-failed-attempts", "--ignore-empty-password"])
        self._proc = self.runner.spawn(argv, env=env)
        threading.Thread(target=self._wait, args=(self._proc,), name="swaylock-wait", daemon=True).start()

    def _wait(self, proc) -> None:
        try:
            proc.wait()
        except Exception:  # noqa: BLE001 - fakes in tests may not wait
            return
        self.when_changed()

    def lock(self, mode: str, message: str) -> None:
        self.mode = mode
        self._message = message
        if mode == STAFF_MODE and self.overlay is not None:
            session = self.session_fn()
            if session is None:
                log.info("no desktop session to lock yet; will lock it when one starts")
                return
            self._session = session
            self.overlay.show(message)
            self._overlay_up = self.is_locked = True
            return
        if mode == SESSION_MODE and self._overlay_up:
            self.overlay.hide()  # the staff lock became the idle lock: the user's own locker now
            self._overlay_up = self.is_locked = False
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
            self._logind_locked = True

    def unlock(self) -> None:
        if not self.is_locked:
            return
        self.is_locked, self.mode = False, None
        if self._overlay_up:
            self._overlay_up = False
            self.overlay.hide()
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                release_swaylock(proc)
        elif self._logind_locked and self._session is not None:
            self.runner.run(["loginctl", "unlock-session", self._session.id])
        self._logind_locked = False

    def poll(self) -> tuple[str, str] | None:
        pending, self._pending = self._pending, None
        if pending is not None and self._overlay_up:
            # Staff typed the PIN on the lock's overlay (it has hidden itself).
            self._overlay_up = False
            self.is_locked, self.mode = False, None
            return pending
        if self.mode is not None and not self.is_locked:
            # Wanted locked but there was no desktop yet (boot, out of hours): try again now.
            self.lock(self.mode, self._message)
            return None
        if self._overlay_up:
            return None  # the overlay keeps itself up (agent/desktop/overlay.py)
        proc = self._proc
        if not self.is_locked or proc is None or proc.poll() is None:
            return None
        if self.mode == STAFF_MODE or proc.returncode != 0:
            # The pupil's password, their SIGUSR1 or a crash must not lift a staff or
            # timetable lock.  The session is looked up again: if the user logged out,
            # wait for the next one.
            log.warning("lock client exited (%s) under a %s lock; locking again", proc.returncode, self.mode)
            if self.mode == STAFF_MODE:
                self.tampered({"what": "lock_client_ended", "action": "relocked", "exit": proc.returncode})
            self.is_locked, self._proc = False, None
            self.lock(self.mode, self._message)
            return None
        self.is_locked, self.mode, self._proc = False, None, None
        return ("login", self._session.user)

    def close(self) -> None:
        # Leave the screen locked: a restarting agent must not expose the desktop.  (The
        # overlay, a child of ours, stays up when its pipe closes while shown.)
        pass


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

    Shared by the lock and the report blank's swaylock."""
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


# --------------------------------------------------------------------------- idle


class SwayIdle(IdleSource):
    """swayidle in the user's Wayland session, reporting idle/active on its stdout."""

    name = "wayland"

    def __init__(self, session_fn: Callable, runner=None, swayidle: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        super().__init__()
        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.swayidle = swayidle if swayidle is not None else shutil.which("swayidle")
        self.monotonic = monotonic
        self.timeout: int | None = None
        self.idle_since: float | None = None
        self._proc = None
        self._lock = threading.Lock()

    def command(self, timeout: int) -> list[str]:
        # -w: wait for each command, so "idle" and "active" can never arrive out of order.
        return [self.swayidle, "-w", "timeout", str(timeout), "echo idle", "resume", "echo active"]

    def set_timeout(self, seconds: int) -> None:
        with self._lock:
            if seconds == self.timeout and self._proc is not None and self._proc.poll() is None:
                return
            self.timeout = seconds
            self._restart_locked()

    def _restart_locked(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._proc = None
        self.idle_since = None
        session = self.session_fn()
        if session is None or not self.swayidle or not self.timeout:
            return
        argv, env = session_command(session, self.command(self.timeout))
        proc = self.runner.spawn(argv, env=env)
        self._proc = proc
        threading.Thread(target=self._read, args=(proc,), name="swayidle", daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout or ():
            word = line.strip()
            if word == "idle":
                self.idle_since = self.monotonic()
            elif word == "active":
                self.idle_since = None
            else:
                continue
            self.when_changed()

    def idle_seconds(self) -> float | None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                # Ended (the pupil killed it, or the session restarted): start it again.
                if self.timeout:
                    self._restart_locked()
                return None if self._proc is None else 0.0
        if self.idle_since is None:
            return 0.0
        return float(self.timeout or 0) + (self.monotonic() - self.idle_since)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
            self._proc = None

"""How long since the user last touched the keyboard or mouse.

Every source answers ``idle_seconds() -> float | None`` (None: unknown, so never lock on
a guess).  The lock component asks only when the answer could matter (the next check is
``threshold - idle`` away), so even a source that spawns a process costs almost nothing.

* ``SwayIdle`` -- Wayland (labwc/wayfire): ``swayidle -w timeout N 'echo idle' resume
  'echo active'`` as the session user; its commands' output arrives on our pipe, so the
  agent needs no socket for it.  Restarted if it exits.
* ``X11Idle`` -- X11: the XScreenSaver extension's idle time, via ``xprintidle`` when
  installed, else libXss through ctypes in a long-lived helper child (``python -m
  agent.idle DISPLAY --serve``): Xlib exits the whole process when the X server goes
  away, which must not take the agent with it.
* ``HeadlessIdle`` -- driven by a (fake) clock and ``touch()``; for tests.
* ``NoIdle`` -- the headless screen backend: unknown, so never an idle lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["HeadlessIdle", "NoIdle", "SwayIdle", "X11Idle", "make_idle", "x11_idle_ms"]


class HeadlessIdle:
    name = "headless"

    def __init__(self, clock: Callable):
        self.clock = clock
        self.last_input = clock()

    def touch(self) -> None:
        """Input happened now."""
        self.last_input = self.clock()

    def idle_seconds(self) -> float | None:
        return (self.clock() - self.last_input).total_seconds()

    def set_timeout(self, seconds: int) -> None:
        pass

    def close(self) -> None:
        pass


class NoIdle:
    """No input device to watch (servers, simulated devices): idle time is unknown, so
    the idle lock never fires.  Timetable and staff locks still work."""

    name = "none"

    def idle_seconds(self) -> float | None:
        return None

    def set_timeout(self, seconds: int) -> None:
        pass

    def close(self) -> None:
        pass


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [("window", ctypes.c_ulong), ("state", ctypes.c_int), ("kind", ctypes.c_int),
                ("til_or_since", ctypes.c_ulong), ("idle", ctypes.c_ulong), ("eventMask", ctypes.c_ulong)]


def _open(display: str):
    """(xlib, xss, display pointer, info buffer) for *display*; OSError if unusable."""
    xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    xss = ctypes.CDLL(ctypes.util.find_library("Xss") or "libXss.so.1")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XDefaultRootWindow.restype = ctypes.c_ulong
    xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xlib.XFree.argtypes = [ctypes.c_void_p]
    xss.XScreenSaverQueryExtension.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                               ctypes.POINTER(ctypes.c_int)]
    xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XScreenSaverInfo)
    xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_XScreenSaverInfo)]
    dpy = xlib.XOpenDisplay(display.encode())
    if not dpy:
        raise OSError(f"cannot open X display {display}")
    event_base, error_base = ctypes.c_int(), ctypes.c_int()
    if not xss.XScreenSaverQueryExtension(dpy, ctypes.byref(event_base), ctypes.byref(error_base)):
        xlib.XCloseDisplay(dpy)
        raise OSError(f"X display {display} has no MIT-SCREEN-SAVER extension")
    return xlib, xss, dpy, xss.XScreenSaverAllocInfo()


def x11_idle_ms(display: str) -> int:
    """Milliseconds since the last input on *display* (XScreenSaverQueryInfo).  Raises OSError."""
    xlib, xss, dpy, info = _open(display)
    try:
        if not xss.XScreenSaverQueryInfo(dpy, xlib.XDefaultRootWindow(dpy), info):
            raise OSError("XScreenSaverQueryInfo failed")
        return int(info.contents.idle)
    finally:
        xlib.XFree(info)
        xlib.XCloseDisplay(dpy)


class X11Idle:
    """XScreenSaver idle time of an X display.

    With ``xprintidle`` installed, one short run per query.  Otherwise a small helper
    child (``python -m agent.idle DISPLAY --serve``) keeps one connection open and
    answers a line per query: cheaper than a Python start each time, and correct under
    Xvfb, which resets its idle time whenever a client connects.
    """

    name = "x11"

    def __init__(self, display: str, runner=None, xprintidle: str | None = None, env: dict | None = None):
        from .sessions import CommandRunner

        self.display = display
        self.runner = runner or CommandRunner()
        self.xprintidle = xprintidle if xprintidle is not None else shutil.which("xprintidle")
        self.env = env
        self._helper: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _env(self) -> dict:
        env = dict(self.env or {}, DISPLAY=self.display)
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        env.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return env

    def command(self) -> list[str]:
        if self.xprintidle:
            return [self.xprintidle]
        return [sys.executable, "-m", "agent.idle", self.display, "--serve"]

    def idle_seconds(self) -> float | None:
        if self.xprintidle:
            try:
                out = self.runner.run(self.command(), timeout=5, env=self._env())
            except Exception as exc:  # noqa: BLE001 - unknown is not idle
                log.warning("X11 idle query failed: %s", exc)
                return None
            text = (out.stdout or "").strip()
            if out.returncode != 0 or not text.isdigit():
                log.info("xprintidle gave %r (exit %s)", text[:40], out.returncode)
                return None
            return int(text) / 1000.0
        with self._lock:
            return self._ask_helper()

    def _ask_helper(self) -> float | None:
        proc = self._helper
        if proc is None or proc.poll() is not None:
            proc = self._helper = subprocess.Popen(
                self.command(), env=self._env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, bufsize=1, close_fds=True)
        try:
            proc.stdin.write("?\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            line = proc.stdout.readline() if ready else ""
        except (OSError, ValueError):
            line = ""
        text = line.strip()
        if not text.isdigit():
            # No answer: the display is gone or unreachable.  Start afresh next time.
            self._close_helper()
            return None
        return int(text) / 1000.0

    def _close_helper(self) -> None:
        proc, self._helper = self._helper, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def set_timeout(self, seconds: int) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            self._close_helper()


class SwayIdle:
    """swayidle in the user's Wayland session, reporting idle/active on its stdout."""

    name = "wayland"

    def __init__(self, session_fn: Callable, runner=None, swayidle: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic):
        from .sessions import CommandRunner

        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.swayidle = swayidle if swayidle is not None else shutil.which("swayidle")
        self.monotonic = monotonic
        self.timeout: int | None = None
        self.idle_since: float | None = None
        self.when_changed: Callable[[], None] = lambda: None
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
        from .sessions import as_session_user, session_env

        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._proc = None
        self.idle_since = None
        session = self.session_fn()
        if session is None or not self.swayidle or not self.timeout:
            return
        proc = self.runner.spawn(as_session_user(session.user, session_env(session), self.command(self.timeout)))
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


def make_idle(kind: str, *, clock: Callable, session_fn: Callable, runner=None):
    if kind in ("wayland", "swaylock"):
        return SwayIdle(session_fn, runner)
    if kind == "x11":
        session = session_fn()
        display = session.display if session and (session.display or "").startswith(":") else ":0"
        return X11Idle(display, runner)
    return NoIdle()


def _serve(display: str) -> int:
    """Answer one idle time per input line over one long-lived connection."""
    xlib, xss, dpy, info = _open(display)
    root = xlib.XDefaultRootWindow(dpy)
    for _ in sys.stdin:
        if not xss.XScreenSaverQueryInfo(dpy, root, info):
            return 1
        print(int(info.contents.idle), flush=True)
    return 0


if __name__ == "__main__":  # the child-process query: python -m agent.idle :0 [--serve]
    try:
        if "--serve" in sys.argv:
            sys.exit(_serve(sys.argv[1]))
        print(x11_idle_ms(sys.argv[1] if len(sys.argv) > 1 else ":0"))
    except OSError as exc:
        print(f"agent.idle: error: {exc}", file=sys.stderr)
        sys.exit(1)

"""The X11 desktop: the Tk overlay for the report blank and the staff lock, LightDM's
greeter for the idle lock, XScreenSaver idle time, and the Tk AUP windows.

* ``X11Backend`` -- the report blank: a full-screen, always-on-top Tk overlay
  (programs/overlay_x11.py), run as the agent's own user so the pupil cannot kill or
  signal it; it ignores Escape, Alt+F4 and Alt+Tab, accepts the staff PIN, and puts its
  window back when a pupil's X client unmaps, moves, resizes, covers or reparents it
  (programs/x11_watch.py).  It reaches the display with the X server's own cookie,
  which LightDM's display-setup hook copies for the agent (``AGENT_XAUTHORITY``,
  scripts/session-grant.sh --display-setup): the pupil can revoke the
  ``xhost +SI:localuser:<agent user>`` grant their session gave, but not a cookie.  If
  the overlay still cannot hold the screen (killed with ``xkill`` again and again, or no
  way back onto the display) ``DisplayManagerLock`` locks through the display manager:
  LightDM's greeter runs on an X server of its own, which the pupil's clients cannot
  reach.
* ``X11Lock`` -- staff and timetable locks show the same overlay (an instance of its
  own); the idle lock uses LightDM's greeter (``dm-tool lock``, as the session user)
  when present, so the pupil logs back in as normal.
* ``X11Idle`` -- the XScreenSaver extension's idle time: ``xprintidle`` as the session
  user when installed, else a long-lived libXss helper child of ours
  (programs/x11_idle.py): Xlib exits the whole process when the X server goes away,
  which must not take the agent with it.
* ``TkPresenter`` -- the acceptable-use dialog and the monitoring notice
  (programs/aup_windows.py), as the session user, so they appear on that user's
  screen and nothing of the agent's privileges reaches them.  Tk windows also show on
  Wayland desktops through Xwayland, so every graphical desktop uses this presenter.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import sys
import threading
from typing import Callable

from .base import SESSION_MODE, IdleSource, LockBackend, Presenter, ScreenBackend
from .overlay import OverlayBackend, child_env
from .pin import PinBackoffFile
from .session import CommandRunner, agent_env, session_command

log = logging.getLogger(__name__)

__all__ = ["AGENT_XAUTHORITY", "DisplayManagerLock", "TkPresenter", "X11Backend", "X11Idle", "X11Lock"]

# The X server's cookie, copied for the agent's user by LightDM's display-setup hook
# (scripts/session-grant.sh --display-setup): a way onto the display the pupil cannot revoke.
AGENT_XAUTHORITY = "/run/classroom-safety/Xauthority"


def x11_socket(display: str) -> str | None:
    """The unix socket of a local display (":0" -> /tmp/.X11-unix/X0); None for a remote one."""
    if not display.startswith(":"):
        return None
    number = display[1:].split(".", 1)[0]
    return f"/tmp/.X11-unix/X{number}" if number.isdigit() else None


class DisplayManagerLock(ScreenBackend):
    """The X11 overlay's fallback: the display manager's own lock, ``dm-tool lock`` as the
    session user (LightDM's greeter, on an X server of its own that the pupil's clients
    cannot reach), else ``loginctl lock-session``.  Nothing here can lift it: the user
    logs back in, and the overlay, still wanted, is shown again (agent/desktop/overlay.py).
    It shows no words and takes no PIN."""

    name = "display-manager"

    def __init__(self, session_fn: Callable, runner=None, dm_tool: str | None = None):
        super().__init__()
        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.dm_tool = dm_tool if dm_tool is not None else shutil.which("dm-tool")

    def show(self, message: str) -> None:
        session = self.session_fn()
        if session is None:
            log.error("no desktop session known: cannot lock it through the display manager")
            return
        argv = [self.dm_tool, "lock"] if self.dm_tool else ["loginctl", "lock-session", session.id]
        argv, env = session_command(session, argv)
        out = self.runner.run(argv, env=env)
        if out.returncode != 0:
            log.error("%s failed (%s): %s", argv[-2:], out.returncode, (out.stderr or "").strip()[:200])

    def set_message(self, message: str) -> None:
        pass  # the greeter shows no words

    def hide(self) -> None:
        pass  # the user logs back in; nobody else can lift it


class X11Backend(OverlayBackend):
    """The Tk overlay (programs/overlay_x11.py) on the X display, as the agent's own user.

    *xauthority*: the cookie file to reach the display with (``AGENT_XAUTHORITY`` when it
    exists); *session_fn* and *runner*: for the display-manager fallback."""

    name = "x11"
    module = "agent.desktop.programs.overlay_x11"

    def __init__(self, staff_pin_hash: str | None = None, display: str | None = None,
                 on_event: Callable[[dict], None] | None = None, *, session_fn: Callable | None = None,
                 runner=None, xauthority: str | None = None, dm_tool: str | None = None,
                 pin_backoff: PinBackoffFile | None = None):
        super().__init__(staff_pin_hash, on_event, pin_backoff)
        self.display = display or os.environ.get("DISPLAY") or ":0"
        self.xauthority = xauthority
        if session_fn is not None:
            self.fallback = DisplayManagerLock(session_fn, runner, dm_tool)

    def cookie(self) -> str | None:
        """The cookie file the overlay connects with, if there is one the agent can read."""
        for path in (self.xauthority, AGENT_XAUTHORITY):
            if path and os.access(path, os.R_OK):
                return path
        return None

    def display_alive(self) -> bool:
        socket = x11_socket(self.display)
        return socket is None or os.path.exists(socket)

    def launch(self) -> tuple[list[str], dict[str, str]] | None:
        if not self.display_alive():
            return None  # the X server has gone (a logout): nothing to draw on until the next
        env = agent_env({"DISPLAY": self.display})
        cookie = self.cookie()
        if cookie is not None:
            env["XAUTHORITY"] = cookie
        return [sys.executable, "-m", self.module], env


class X11Lock(LockBackend):
    """The Tk overlay for staff/timetable locks; LightDM's greeter for idle."""

    name = "x11"

    def __init__(self, session_fn: Callable, staff_pin_hash: str | None = None, display: str | None = None,
                 runner=None, idle_fn: Callable[[], float | None] | None = None, dm_tool: str | None = None,
                 overlay: OverlayBackend | None = None, xauthority: str | None = None,
                 pin_backoff: PinBackoffFile | None = None):
        super().__init__()
        self.session_fn = session_fn
        self.runner = runner or CommandRunner()
        self.idle_fn = idle_fn or (lambda: None)
        self.dm_tool = dm_tool if dm_tool is not None else shutil.which("dm-tool")
        self.display = display
        self.staff_pin_hash = staff_pin_hash
        self._overlay = overlay
        self.xauthority = xauthority
        self.pin_backoff = pin_backoff
        self._greeter = False
        self._user: str | None = None
        self._pending: tuple[str, str] | None = None
        # Handed to the overlay when it is made (backends.py: the on-screen button hides under it).
        self.companion = None
        self.ignore_windows = lambda: []

    @property
    def overlay(self) -> OverlayBackend:
        if self._overlay is None:
            # The overlay runs as the agent's own user (allowed on the display by
            # `xhost +SI:localuser:classroom-agent`), so the pupil cannot kill it.
            display = self.display
            if display is None:
                session = self.session_fn()
                display = session.display if session is not None and (session.display or "").startswith(":") else None
            self._overlay = X11Backend(self.staff_pin_hash, display, on_event=self._on_overlay,
                                       session_fn=self.session_fn, runner=self.runner, xauthority=self.xauthority,
                                       dm_tool=self.dm_tool, pin_backoff=self.pin_backoff)
            self._overlay.when_tampered = self.tampered
            self._overlay.companion = self.companion
            self._overlay.ignore_windows = self.ignore_windows
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
            argv, env = session_command(session, [self.dm_tool, "lock"])
            self.runner.run(argv, env=env)
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
            return None  # an overlay that dies is shown again by OverlayBackend itself
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


class X11Idle(IdleSource):
    """XScreenSaver idle time of an X display.

    With ``xprintidle`` installed, one short run per query, as the session user.
    Otherwise a small helper child of ours (``python -m agent.desktop.programs.x11_idle
    DISPLAY --serve``) keeps one connection open and answers a line per query: cheaper
    than a Python start each time, and correct under Xvfb, which resets its idle time
    whenever a client connects.  *display*: the session's (asked of ``session_fn`` at
    the first query) unless given.
    """

    name = "x11"
    module = "agent.desktop.programs.x11_idle"

    def __init__(self, display: str | None = None, runner=None, xprintidle: str | None = None,
                 session_fn: Callable | None = None):
        super().__init__()
        self._display = display
        self.session_fn = session_fn or (lambda: None)
        self.runner = runner or CommandRunner()
        self.xprintidle = xprintidle if xprintidle is not None else shutil.which("xprintidle")
        self._helper: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def display(self) -> str:
        if self._display is None:
            session = self.session_fn()
            self._display = session.display if session and (session.display or "").startswith(":") else ":0"
        return self._display

    def command(self) -> list[str]:
        if self.xprintidle:
            return [self.xprintidle]
        return [sys.executable, "-m", self.module, self.display, "--serve"]

    def idle_seconds(self) -> float | None:
        if self.xprintidle:
            try:
                argv, env = session_command(self.session_fn(), self.command(), {"DISPLAY": self.display})
                out = self.runner.run(argv, timeout=5, env=env)
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
                self.command(), env=child_env(agent_env({"DISPLAY": self.display})), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1, close_fds=True)
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

    def close(self) -> None:
        with self._lock:
            self._close_helper()


class TkPresenter(Presenter):
    """Runs the Tk windows as the desktop user; a reader thread waits for 'accepted'."""

    module = "agent.desktop.programs.aup_windows"

    def __init__(self, runner=None):
        self.runner = runner or CommandRunner()

    def _spawn(self, session, kind: str, text: str):
        argv, env = session_command(session, [sys.executable, "-m", self.module, kind])
        return self.runner.spawn(argv, env=env, stdin_text=text)

    def notice(self, session, text: str):
        return self._spawn(session, "notice", text)

    def message(self, session, text: str):
        return self._spawn(session, "message", text)

    def dialog(self, session, text: str, on_accept):
        proc = self._spawn(session, "dialog", text)

        def wait():
            for line in proc.stdout or ():
                if line.strip() == "accepted":
                    on_accept()
                    return

        threading.Thread(target=wait, name="aup-dialog", daemon=True).start()
        return proc

    def close(self, proc) -> None:
        if proc.poll() is None:
            proc.terminate()

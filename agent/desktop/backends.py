"""Choosing the desktop: ``detect_kind`` and ``make_desktop``, THE one place a backend is chosen.

``screen_backend`` in agent.yaml names the kind; ``auto`` detects it once, here:

* ``wayland``  -- labwc/wayfire (Raspberry Pi OS): the layer-shell overlay for the
  report blank and for staff and timetable locks (swaylock if its packages are missing,
  the X11 overlay via Xwayland if swaylock is missing too), swaylock for the idle lock,
  swayidle for idle time.
* ``swaylock`` -- Wayland without layer-shell: swaylock blanks (no words, no PIN) and locks.
* ``x11``      -- the Tk overlay blanks and holds staff locks (the display manager's lock
  if it cannot), LightDM's greeter idle locks, XScreenSaver gives idle time.

The overlays of one device share one staff-PIN back-off (agent/desktop/pin.py), kept in
``state_dir`` so a restart does not reset it.
* ``headless`` -- nothing is drawn (servers, simulated devices, tests).

Every graphical kind shows the acceptable-use windows with Tk (Xwayland on Wayland),
speaks through the session's own sound player (agent/desktop/sound.py), and has the
on-screen report button (agent/desktop/button.py: a layer-shell surface on Wayland, a
Tk window on X11 and swaylock-only Wayland), which hides under the blank and the lock.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Callable, Sequence

from . import wayland
from .base import Desktop, ScreenButton
from .button import WaylandButton, X11Button
from .headless import HeadlessButton, HeadlessLock, HeadlessPresenter, HeadlessScreen, NoIdle
from .pin import PinBackoffFile
from .session import Session
from .sound import SilentPlayer, SoundPlayer
from .x11 import TkPresenter, X11Backend, X11Idle, X11Lock

log = logging.getLogger(__name__)

KINDS = ("auto", "wayland", "swaylock", "x11", "headless")


def detect_kind(environ: dict[str, str] | None = None, *, x11_socket: str = "/tmp/.X11-unix/X0",
                compositors: Sequence[str] = ("labwc", "wayfire")) -> str:
    """wayland if a Wayland session is visible, x11 if an X display is, else headless.
    (A systemd service has no DISPLAY, hence the look for the compositor and X socket.)"""
    env = os.environ if environ is None else environ
    if env.get("WAYLAND_DISPLAY") or (compositors and _running(*compositors)):
        return "wayland"
    if env.get("DISPLAY") or (x11_socket and os.path.exists(x11_socket)):
        return "x11"
    return "headless"


def _running(*names: str) -> bool:
    try:
        import psutil

        return any(p.info["name"] in names for p in psutil.process_iter(["name"]))
    except Exception:  # noqa: BLE001 - detection is best effort
        return False


def make_desktop(kind: str = "auto", *, session_user: str | None = None, staff_pin_hash: str | None = None,
                 session_fn: Callable[[], Session | None] | None = None, runner=None,
                 state_dir: str | os.PathLike | None = None) -> Desktop:
    """The backends for *kind* ('auto' detects).  *session_fn* says which session is in
    front of the pupil (the runtime asks agent/policy/sessions.py); *session_user* is
    agent.yaml's, when it names one; *runner* replaces the command runner (tests);
    *state_dir* keeps the staff-PIN back-off across restarts."""
    if kind == "auto":
        kind = detect_kind()
    if kind not in KINDS:
        raise ValueError(f"screen_backend: {kind!r} is not one of {', '.join(KINDS)}")
    session_fn = session_fn or (lambda: None)
    if kind == "headless":
        return Desktop(kind, HeadlessScreen(), HeadlessLock(), NoIdle(), HeadlessPresenter(), HeadlessButton(),
                       SilentPlayer())
    backoff = PinBackoffFile(os.path.join(state_dir, "pin-backoff.json") if state_dir else None)
    screen = _screen(kind, session_user, staff_pin_hash, session_fn, runner, backoff)
    sound = SoundPlayer(runner)
    if kind in ("wayland", "swaylock"):
        overlay = kind == "wayland" and wayland.wayland_overlay_available()
        button = (WaylandButton(session_user, session_fn=session_fn, runner=runner) if overlay
                  else X11Button())  # no layer-shell: a Tk window through Xwayland
        lock = wayland.WaylandLock(session_fn, runner, session_user=session_user, staff_pin_hash=staff_pin_hash,
                                   pin_backoff=backoff, overlay=overlay)
        _follow(button, screen, lock.overlay)
        return Desktop(kind, screen, lock, wayland.SwayIdle(session_fn, runner), TkPresenter(runner), button, sound)
    idle = X11Idle(runner=runner, session_fn=session_fn)
    button = X11Button()
    lock = X11Lock(session_fn, staff_pin_hash, runner=runner, idle_fn=idle.idle_seconds, pin_backoff=backoff)
    lock.companion, lock.ignore_windows = button.cover, button.windows  # given to its overlay when made
    _follow(button, screen)
    return Desktop(kind, screen, lock, idle, TkPresenter(runner), button, sound)


def _follow(button: ScreenButton, *overlays) -> None:
    """The button hides while any of *overlays* covers the screen; they leave its window be."""
    for overlay in overlays:
        if overlay is not None and hasattr(overlay, "companion"):
            overlay.companion = button.cover
            overlay.ignore_windows = button.windows


def _screen(kind: str, session_user, staff_pin_hash, session_fn, runner, backoff: PinBackoffFile):
    if kind == "wayland" and not wayland.wayland_overlay_available():
        log.warning("the Wayland overlay needs python3-gi and gir1.2-gtklayershell-0.1; "
                    "blanking with swaylock, which shows no message and takes no PIN")
        kind = "swaylock"
    if kind == "swaylock" and not shutil.which("swaylock"):
        log.warning("swaylock is not installed; using the X11 overlay via XWayland")
        kind = "x11"
    if kind == "wayland":
        return wayland.WaylandBackend(session_user, staff_pin_hash, session_fn=session_fn, runner=runner,
                                      pin_backoff=backoff)
    if kind == "swaylock":
        return wayland.SwaylockBackend(session_user, runner, session_fn=session_fn)
    return X11Backend(staff_pin_hash, session_fn=session_fn, runner=runner, pin_backoff=backoff)

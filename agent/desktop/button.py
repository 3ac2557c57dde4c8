"""The on-screen "I saw something" button, from the agent's side (the desktop's fifth role).

Classroom PCs have no GPIO button, and a pupil who cannot find a key needs something to
press: a small, bright, always-on-top button in a corner of the screen (source
``screen``).  Like the blank it is a child process run as the agent's own user
(programs/button_x11.py: Tk; programs/button_wayland.py: GTK on a layer-shell surface),
so the pupil can neither close nor kill it, and it is held up exactly as the blank is:
it puts itself back when an X client unmaps, moves or covers it, the agent asks it every
second whether it shows and starts it again if it ends (agent/desktop/overlay.py, whose
``OverlayBackend`` both drawings reuse; tamper reports say ``button_...``).

``ScreenButton`` (agent/desktop/base.py) is the role: ``enable(label, hold_ms, corner)``,
``disable()``, ``when_pressed()`` (any thread), and ``cover(who, covering)``: the blank
and the lock overlays (the button's ``companion``) say when they cover the screen, and
the button hides until nothing covers it, so it never sits on a calm blank.  Its X
window (``windows()``) is one the X11 blank must not call "covering it" in the moment
before it hides.  ``HeadlessButton`` (headless.py) remembers what it would show (tests,
``run --simulate``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .base import ScreenButton, Words, picture_of
from .overlay import OverlayBackend
from .wayland import WaylandBackend
from .x11 import X11Backend

log = logging.getLogger(__name__)

__all__ = ["OverlayButton", "WaylandButton", "X11Button"]


class _ButtonOverlay:
    """What both drawings add to their ``OverlayBackend``: the button's show line, its
    events, and its own tamper reports."""

    TAMPER_PREFIX = "button_"
    owner: "OverlayButton"

    def _show_op(self, message: str) -> dict:
        owner = self.owner
        return {"op": "show", "message": message, "picture": picture_of(message) or "screen_button",
                "hold_ms": owner.hold_ms, "corner": owner.corner}

    def handle_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "pressed":
            log.info("on-screen report button pressed")
            self.owner.pressed()
        elif kind == "released":
            # Let go before press_hold_ms: a brush, not a press.
            self.owner.brushes += 1
        elif kind == "shown" and isinstance(event.get("window"), int):
            self.owner.window = event["window"]


class _X11Drawing(_ButtonOverlay, X11Backend):
    name = "x11-button"
    module = "agent.desktop.programs.button_x11"


class _WaylandDrawing(_ButtonOverlay, WaylandBackend):
    name = "wayland-button"
    module = "agent.desktop.programs.button_wayland"


class OverlayButton(ScreenButton):
    """The button drawn by a child process (an ``OverlayBackend`` of its own)."""

    def __init__(self, drawing: OverlayBackend) -> None:
        super().__init__()
        self.window: int | None = None
        self.brushes = 0  # presses let go before press_hold_ms (they count for nothing)
        self.drawing = drawing
        drawing.owner = self
        drawing.fallback = None  # nothing stands in for a button; the watch keeps trying
        drawing.on_event = drawing.handle_event
        drawing.when_tampered = self._tampered

    def _tampered(self, fields: dict) -> None:
        callback = self.when_tampered
        if callback is not None:
            callback(fields)

    def draw(self, label: Words) -> None:
        self.drawing.show(label)

    def undraw(self) -> None:
        self.drawing.hide()

    def windows(self) -> list[int]:
        return [self.window] if self.window else []

    def start(self) -> None:
        self.drawing.start()

    def drawn(self, timeout: float = 5.0) -> dict | None:
        return self.drawing.drawn(timeout)

    def close(self) -> None:
        self.drawing.close()


class X11Button(OverlayButton):
    def __init__(self, display: str | None = None, xauthority: str | None = None) -> None:
        super().__init__(_X11Drawing(None, display, xauthority=xauthority))


class WaylandButton(OverlayButton):
    def __init__(self, session_user: str | None = None, *, wayland_display: str | None = None,
                 session_fn=None, runner=None) -> None:
        super().__init__(_WaylandDrawing(session_user, None, wayland_display=wayland_display,
                                         session_fn=session_fn, runner=runner))

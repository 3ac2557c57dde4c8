"""The on-screen report button's toolkit-free half, shared by its X11 and Wayland drawings.

``button_x11`` (Tk) and ``button_wayland`` (GTK on a layer-shell surface) are child
processes of agent/desktop/button.py, run as the agent's own user like the blank, so
the pupil can neither close nor kill them.  Both hold a ``ButtonCore`` for everything
that is not drawing:

* the conversation with the agent, JSON lines on stdin (the overlay's, overlay_core.py):
  ``{"op":"show","message":LABEL,"picture":"screen_button","hold_ms":N,"corner":C}``,
  ``{"op":"hide"}``, ``{"op":"state","seq":N}``, ``{"op":"quit"}`` (``config`` is
  accepted and ignored: the button takes no PIN); and JSON lines back: ``ready``,
  ``shown`` (on X11 with ``window``, the X window the blank must not call covering it),
  ``hidden``, ``pressed``, ``released`` (let go before the hold time: not a press),
  ``tampered`` and ``state``;
* press and hold: a press counts once the button has been held ``hold_ms`` (the
  device's ``press_hold_ms``: a brush of a hand or a sleeve does nothing); while held,
  a bar fills so the child sees it working; letting go early empties it.  With
  ``hold_ms`` 0 the press counts at once.  A press is said once; the button shows it
  was pressed until the agent hides it (the blank comes up over everything).

Standard library only (plus ``overlay_core.picture_path``): the Wayland drawing runs on
the system Python.
"""

from __future__ import annotations

import json
import sys
import time

from agent.desktop.programs.overlay_core import picture_path

BG = "#f2c14e"           # the pictogram's warm yellow: easy to find, not alarming
FG = "#2d3a4f"
BAR = "#5fb37c"
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
MARGIN = 16
TICK_MS = 40              # how often the hold bar moves


class ButtonCore:
    """Everything but the drawing.  A toolkit subclass provides ``draw_label(text)``,
    ``draw_picture(path)``, ``draw_progress(fraction)``, ``draw_show(corner)``,
    ``draw_hide()``, ``drawn()`` and ``quit()``, calls ``down()`` / ``up()`` on the
    pointer (or touch) going down and up, and ``tick()`` every ``TICK_MS`` while
    ``holding``."""

    def __init__(self, *, clock=time.monotonic, out=None) -> None:
        self.clock = clock
        self.out = out or sys.stdout
        self.label = ""
        self.picture: str | None = None
        self.hold_ms = 0
        self.corner = "bottom-right"
        self.shown = False
        self.stdin_open = True
        self.pressed = False          # said "pressed" since it was last shown
        self._down_at: float | None = None
        self._buf = b""

    # ------------------------------------------------------------------ drawing hooks
    def draw_label(self, text: str) -> None:
        raise NotImplementedError

    def draw_picture(self, path: str | None) -> None:
        raise NotImplementedError

    def draw_progress(self, fraction: float) -> None:
        raise NotImplementedError

    def draw_show(self, corner: str) -> None:
        raise NotImplementedError

    def draw_hide(self) -> None:
        raise NotImplementedError

    def drawn(self) -> dict:
        raise NotImplementedError

    def quit(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ agent side
    def say(self, **event) -> None:
        try:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            self.stdin_open = False
            self.quit()  # the agent has gone: a button nobody hears must not be pressed
            return
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
                self.handle(req)
            except (ValueError, TypeError) as exc:
                print(f"button: ignored bad line {line[:80]!r}: {exc}", file=sys.stderr)

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if op == "config":
            return
        if op == "show":
            self.label = str(req.get("message") or "")
            hold = req.get("hold_ms")
            self.hold_ms = hold if isinstance(hold, int) and 0 <= hold <= 10000 else 0
            corner = req.get("corner")
            self.corner = corner if corner in CORNERS else "bottom-right"
            path = picture_path(req.get("picture"))
            self.picture = req.get("picture") if path else None
            self.draw_picture(path)
            self.draw_label(self.label)
            self.show()
        elif op == "hide":
            self.hide()
        elif op == "state":
            seq = req.get("seq")
            self.say(event="state", **self.drawn(), **({"seq": seq} if isinstance(seq, int) else {}))
        elif op == "quit":
            self.quit()
        elif op != "message":
            raise ValueError(f"unknown op {op!r}")

    def show(self) -> None:
        self.pressed = False
        self._down_at = None
        self.draw_progress(0.0)
        self.shown = True
        self.draw_show(self.corner)
        self.say(event="shown", **self.shown_info())

    def shown_info(self) -> dict:
        """Extra fields for ``shown`` (X11: the window the blank must not call covering it)."""
        return {}

    def hide(self) -> None:
        self.shown = False
        self._down_at = None
        self.draw_hide()
        self.say(event="hidden")

    # ------------------------------------------------------------------ press and hold
    @property
    def holding(self) -> bool:
        return self._down_at is not None

    def down(self) -> None:
        if not self.shown or self.pressed:
            return
        self._down_at = self.clock()
        if self.hold_ms <= 0:
            self._fire()
        else:
            self.draw_progress(0.0)

    def tick(self) -> None:
        """While held: move the bar, and count the press once held long enough."""
        if self._down_at is None or self.pressed:
            return
        held_ms = (self.clock() - self._down_at) * 1000
        if held_ms >= self.hold_ms:
            self._fire()
        else:
            self.draw_progress(held_ms / self.hold_ms)

    def up(self) -> None:
        if self._down_at is None:
            return
        if not self.pressed:
            self.tick()  # held long enough since the last tick: it counts
        if not self.pressed:
            held_ms = round((self.clock() - self._down_at) * 1000)
            self._down_at = None
            self.draw_progress(0.0)
            self.say(event="released", held_ms=held_ms, hold_ms=self.hold_ms)
            return
        self._down_at = None

    def _fire(self) -> None:
        self.pressed = True
        self.draw_progress(1.0)
        self.say(event="pressed")

"""The blank-screen overlay's toolkit-free half, shared by both drawings of it.

``overlay_x11`` draws the overlay with Tk on X11 and ``overlay_wayland`` with GTK on a
Wayland layer-shell surface; both are child processes of agent/desktop/overlay.py and
both hold an ``OverlayCore`` for everything that is not drawing:

* the conversation with the agent, JSON lines on stdin: ``{"op":"config","pin_hash":...,
  "backoff":...}``, ``{"op":"show","message":...,"picture":...,"pin":...,"backoff":...}``,
  ``{"op":"message","message":...,"picture":...,"pin":...}`` (``picture``: a pictogram's name,
  agent/desktop/pictograms.py; any op may carry ``ignore``, X windows of ours that may
  sit above the overlay: the on-screen button), ``{"op":"hide"}``, ``{"op":"state","seq":N}``, ``{"op":"quit"}``; and
  JSON lines back on stdout: ``ready``, ``shown``, ``hidden``, ``{"event":"pin_wrong",
  "backoff":...}``, ``{"event":"cleared","by":"staff-pin","backoff":...}``,
  ``{"event":"tampered","what":[...]}`` (a drawing that had to put itself back) and
  ``{"event":"state",...}``;
* the staff PIN typed on the device: digits, Backspace, Enter; every other key is
  swallowed; wrong tries cost a growing wait (agent/desktop/pin.py: ``PinBackoff``),
  which the agent keeps across restarts and hands over in ``backoff``.  A show or message
  with ``"pin": false`` (the DSL's hold on the device) takes no PIN: digits are swallowed
  like any other key and the hint says the PIN cannot unlock it, so a hold is never lifted
  on the screen, not even for the moment before the agent would lock again.

If the agent goes away while the overlay is shown, the overlay stays up (the pupil must
not see the page again) and the PIN still clears it.

This module imports nothing outside the standard library and ``agent.desktop.pin``,
because the Wayland drawing runs on the system Python (where GTK lives), not the
agent's virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from agent.desktop.pin import PinBackoff, verify_pin

BG = "#10213f"          # calm dark blue, not an alarming black or red
FG = "#ffffff"
HINT_FG = "#8fa3c7"
STAFF_HINT = "Staff: type the PIN and press Enter"
WAIT_HINT = "Too many tries. Wait a moment."
WRONG_HINT = "Staff: that PIN was not right"
HELD_HINT = "Staff: the PIN cannot unlock this device now"
MAX_PIN = 12
# The shipped pictograms (agent/desktop/assets/pictograms), found from here: this module
# also runs on the system Python, which does not import agent.desktop.pictograms' package.
PICTOGRAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "pictograms")
_PICTURE_NAME = re.compile(r"^[a-z_]{1,40}$")


def picture_path(name) -> str | None:
    """The PNG of pictogram *name*, or None (no such picture, or not a picture's name)."""
    if not isinstance(name, str) or not _PICTURE_NAME.match(name):
        return None
    path = os.path.join(PICTOGRAMS, name + ".png")
    return path if os.path.exists(path) else None


class OverlayCore:
    """Everything but the drawing.  A toolkit subclass provides ``draw_show()``,
    ``draw_hide()``, ``draw_message(text)``, ``draw_hint(text)``, ``drawn()`` (what its
    widgets show now) and ``quit()``."""

    def __init__(self, *, clock=time.time, out=None) -> None:
        self.clock = clock  # wall clock: the agent keeps the back-off across restarts
        self.out = out or sys.stdout
        self.pin_hash: str | None = None
        self.pin_allowed = True  # False while the agent says no PIN (the DSL's hold)
        self.typed = ""
        self.backoff = PinBackoff()
        self.shown = False
        self.stdin_open = True
        self.picture: str | None = None   # the pictogram's name now drawn
        self.ignore: tuple[int, ...] = ()  # X windows of ours allowed above (the on-screen button)
        self._buf = b""

    # ------------------------------------------------------------------ drawing hooks
    def draw_show(self) -> None:
        raise NotImplementedError

    def draw_hide(self) -> None:
        raise NotImplementedError

    def draw_message(self, text: str) -> None:
        raise NotImplementedError

    def draw_hint(self, text: str) -> None:
        raise NotImplementedError

    def draw_picture(self, path: str | None) -> None:
        """Show the PNG at *path* above the words (None: no picture)."""

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
            pass  # the agent has gone; the overlay still does its job

    def feed(self, chunk: bytes) -> None:
        """Bytes from stdin; an empty chunk means the agent closed it."""
        if not chunk:
            self.stdin_open = False
            if not self.shown:
                self.quit()
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
                # Never the PIN hash in a log, even from a mangled config line.
                shown = line[:80] if b"pin_hash" not in line else b"(a config line, not shown)"
                print(f"overlay: ignored bad line {shown!r}: {exc}", file=sys.stderr)

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if "backoff" in req:
            self.backoff = PinBackoff.from_dict(req["backoff"])  # the device's, from the agent
        if isinstance(req.get("ignore"), list):
            self.ignore = tuple(w for w in req["ignore"] if isinstance(w, int))
        if op == "config":
            pin_hash = req.get("pin_hash")
            self.pin_hash = pin_hash if isinstance(pin_hash, str) else None
        elif op == "show":
            self.set_picture(req.get("picture"))
            self.draw_message(str(req.get("message") or ""))
            self.set_pin_allowed(req.get("pin") is not False)
            self.show()
        elif op == "message":
            if "picture" in req:
                self.set_picture(req.get("picture"))
            self.draw_message(str(req.get("message") or ""))
            if "pin" in req:
                self.set_pin_allowed(req.get("pin") is not False)
        elif op == "hide":
            self.hide()
        elif op == "state":
            seq = req.get("seq")
            self.say(event="state", **self.drawn(), **({"seq": seq} if isinstance(seq, int) else {}))
        elif op == "quit":
            self.quit()
        else:
            raise ValueError(f"unknown op {op!r}")

    def set_pin_allowed(self, allowed: bool) -> None:
        self.pin_allowed = allowed
        self.typed = ""
        self.draw_hint(STAFF_HINT if allowed else HELD_HINT)

    def set_picture(self, name) -> None:
        path = picture_path(name)
        self.picture = name if path else None
        self.draw_picture(path)

    def show(self) -> None:
        self.typed = ""
        self.shown = True
        self.draw_show()
        self.announce_shown()

    def announce_shown(self) -> None:
        """Say ``shown``; a drawing that maps its window later says it from there."""
        self.say(event="shown")

    def hide(self) -> None:
        self.shown = False
        self.typed = ""
        self.pin_allowed = True
        self.draw_hint(STAFF_HINT)
        self.draw_hide()
        self.say(event="hidden")
        if not self.stdin_open:
            self.quit()

    # ------------------------------------------------------------------ staff PIN
    def key(self, keysym: str, char: str = "") -> None:
        """One key press while shown.  Everything that is not part of a PIN is ignored,
        which is how Escape, Alt+F4, Alt+Tab and Ctrl+W do nothing."""
        if not self.shown:
            return
        if not self.pin_allowed:
            self.draw_hint(HELD_HINT)  # no PIN is taken, so none is typed (or checked, or counted)
            return
        if keysym in ("Return", "KP_Enter"):
            self.check_pin()
            return
        if keysym == "BackSpace":
            self.typed = self.typed[:-1]
        elif len(self.typed) < MAX_PIN:
            if len(char) == 1 and char.isdigit():
                self.typed += char
            elif keysym.startswith("KP_") and keysym[3:].isdigit():
                self.typed += keysym[3:]
        self.draw_hint("\u25cf" * len(self.typed) if self.typed else STAFF_HINT)

    def check_pin(self) -> None:
        typed, self.typed = self.typed, ""
        now = self.clock()
        if self.backoff.wait(now) > 0:
            self.draw_hint(WAIT_HINT)  # not even checked: a wait is a wait
            return
        if verify_pin(typed, self.pin_hash):
            self.backoff.succeeded()
            self.say(event="cleared", by="staff-pin", backoff=self.backoff.to_dict())
            self.hide()
            return
        self.backoff.failed(now)
        self.say(event="pin_wrong", backoff=self.backoff.to_dict())
        self.draw_hint(WAIT_HINT if self.backoff.wait(now) > 0 else WRONG_HINT)

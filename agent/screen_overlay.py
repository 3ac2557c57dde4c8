"""The X11 blank-screen overlay process (``python -m agent.screen_overlay``).

Run by agent/screen.py's X11 backend, as the session user.  It starts hidden and takes
JSON lines on stdin: ``{"op":"config","pin_hash":...}``, ``{"op":"show","message":...}``,
``{"op":"message","message":...}``, ``{"op":"hide"}``, ``{"op":"quit"}``.  It answers
with JSON lines on stdout: ``ready``, ``shown``, ``hidden``, ``pin_wrong``, and
``{"event":"cleared","by":"staff-pin"}`` when staff type the right PIN and press Enter.

While shown it covers every screen, stays on top (re-raised twice a second), grabs the
keyboard and pointer, and no key closes it: Escape, Alt+F4, Alt+Tab and the window
manager's close button are all swallowed.  If the agent dies while it is shown it stays
up (the pupil must not see the page again); the PIN still clears it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tkinter as tk

from agent.screen import verify_pin

BG = "#10213f"          # calm dark blue, not an alarming black or red
FG = "#ffffff"
MAX_TRIES = 5
LOCKOUT_SECONDS = 30


class Overlay:
    def __init__(self) -> None:
        self.root = tk.Tk(className="classroom-safety-overlay")
        self.root.withdraw()
        self.root.title("classroom-safety")
        self.root.configure(bg=BG, cursor="none")
        self.root.overrideredirect(True)
        self.root.protocol("WM_DELETE_WINDOW", lambda: None)
        width = self.root.winfo_screenwidth()
        self.message = tk.Label(self.root, text="", fg=FG, bg=BG, wraplength=int(width * 0.8), justify="center",
                                font=("DejaVu Sans", max(28, width // 28), "bold"))
        self.message.place(relx=0.5, rely=0.45, anchor="center")
        self.staff = tk.Label(self.root, text="Staff: type the PIN and press Enter", fg="#8fa3c7", bg=BG,
                              font=("DejaVu Sans", 14))
        self.staff.place(relx=0.5, rely=0.92, anchor="center")
        for seq in ("<Key>", "<Alt-F4>", "<Escape>", "<Alt-Tab>", "<Control-w>", "<Control-q>"):
            self.root.bind_all(seq, self.on_key)
        self.pin_hash: str | None = None
        self.typed = ""
        self.tries = 0
        self.locked_until = 0.0
        self.shown = False
        self.stdin_open = True
        self._buf = b""
        self.root.tk.createfilehandler(sys.stdin.fileno(), tk.READABLE, self.on_stdin)

    # ------------------------------------------------------------------ agent side
    def say(self, **event) -> None:
        try:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            pass  # the agent has gone; the overlay still does its job

    def on_stdin(self, fd, mask) -> None:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            self.root.tk.deletefilehandler(sys.stdin.fileno())
            self.stdin_open = False
            if not self.shown:
                self.root.destroy()
            return
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                self.handle(json.loads(line))
            except (ValueError, AttributeError):
                print(f"screen_overlay: ignored bad line {line[:80]!r}", file=sys.stderr)

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if op == "config":
            self.pin_hash = req.get("pin_hash")
        elif op == "show":
            self.message.configure(text=req.get("message") or "")
            self.show()
        elif op == "message":
            self.message.configure(text=req.get("message") or "")
        elif op == "hide":
            self.hide()
        elif op == "quit":
            self.root.destroy()

    # ------------------------------------------------------------------ window
    def show(self) -> None:
        self.typed = ""
        self.root.geometry(f"{self.root.winfo_screenwidth()}x{self.root.winfo_screenheight()}+0+0")
        self.root.deiconify()
        self.root.attributes("-topmost", True)
        self.shown = True
        self.keep_on_top()
        self.say(event="shown")

    def keep_on_top(self) -> None:
        if not self.shown:
            return
        self.root.lift()
        self.root.attributes("-topmost", True)
        self.root.focus_force()
        try:
            self.root.grab_set_global()
        except tk.TclError:
            pass  # another client holds a grab; we retry on the next tick
        self.root.after(500, self.keep_on_top)

    def hide(self) -> None:
        self.shown = False
        self.typed = ""
        try:
            self.root.grab_release()
        except tk.TclError:
            pass
        self.root.withdraw()
        self.staff.configure(text="Staff: type the PIN and press Enter")
        self.say(event="hidden")
        if not self.stdin_open:
            self.root.destroy()

    # ------------------------------------------------------------------ staff PIN
    def on_key(self, event) -> str:
        if not self.shown:
            return "break"
        key = event.keysym
        if key in ("Return", "KP_Enter"):
            self.check_pin()
        elif key == "BackSpace":
            self.typed = self.typed[:-1]
        elif event.char and event.char.isdigit() and len(self.typed) < 12:
            self.typed += event.char
        elif key.startswith("KP_") and key[3:].isdigit() and len(self.typed) < 12:
            self.typed += key[3:]
        if self.typed:
            self.staff.configure(text="\u25cf" * len(self.typed))
        return "break"  # swallow everything: Escape, Alt+F4, Alt+Tab, Ctrl+W ...

    def check_pin(self) -> None:
        typed, self.typed = self.typed, ""
        if time.monotonic() < self.locked_until:
            self.staff.configure(text="Too many tries. Wait a moment.")
            return
        if verify_pin(typed, self.pin_hash):
            self.tries = 0
            self.say(event="cleared", by="staff-pin")
            self.hide()
            return
        self.tries += 1
        self.say(event="pin_wrong")
        if self.tries >= MAX_TRIES:
            self.tries = 0
            self.locked_until = time.monotonic() + LOCKOUT_SECONDS
        self.staff.configure(text="Staff: that PIN was not right")

    def run(self) -> None:
        self.say(event="ready")
        self.root.mainloop()


def main() -> int:
    try:
        overlay = Overlay()
    except tk.TclError as exc:
        print(f"screen_overlay: error: cannot open the display: {exc}", file=sys.stderr)
        return 1
    overlay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

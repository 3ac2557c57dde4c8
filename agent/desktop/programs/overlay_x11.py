"""The X11 blank-screen overlay process (``python -m agent.desktop.programs.overlay_x11``): the Tk drawing.

Run by agent/desktop/x11.py (the report blank and the staff lock) as the agent's own
user, so the pupil cannot kill it.  The conversation with the agent and the staff PIN
live in overlay_core.py.

While shown it covers every screen, stays on top (re-raised twice a second), grabs the
keyboard and pointer, and no key closes it: Escape, Alt+F4, Alt+Tab and the window
manager's close button are all swallowed.
"""

from __future__ import annotations

import os
import sys
import tkinter as tk

from agent.desktop.programs.overlay_core import BG, FG, HINT_FG, STAFF_HINT, OverlayCore


class Overlay(OverlayCore):
    def __init__(self) -> None:
        super().__init__()
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
        self.hint = tk.Label(self.root, text=STAFF_HINT, fg=HINT_FG, bg=BG, font=("DejaVu Sans", 14))
        self.hint.place(relx=0.5, rely=0.92, anchor="center")
        for seq in ("<Key>", "<Alt-F4>", "<Escape>", "<Alt-Tab>", "<Control-w>", "<Control-q>"):
            self.root.bind_all(seq, self.on_key)
        self.root.tk.createfilehandler(sys.stdin.fileno(), tk.READABLE, self.on_stdin)

    def on_stdin(self, fd, mask) -> None:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            self.root.tk.deletefilehandler(sys.stdin.fileno())
        self.feed(chunk)

    def on_key(self, event) -> str:
        self.key(event.keysym, event.char or "")
        return "break"  # swallow everything

    # ------------------------------------------------------------------ drawing
    def draw_message(self, text: str) -> None:
        self.message.configure(text=text)

    def draw_hint(self, text: str) -> None:
        self.hint.configure(text=text)

    def drawn(self) -> dict:
        return {"shown": self.root.winfo_viewable() == 1, "message": self.message.cget("text"),
                "hint": self.hint.cget("text")}

    def draw_show(self) -> None:
        self.root.geometry(f"{self.root.winfo_screenwidth()}x{self.root.winfo_screenheight()}+0+0")
        self.root.deiconify()
        self.root.attributes("-topmost", True)
        self.keep_on_top()

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

    def draw_hide(self) -> None:
        try:
            self.root.grab_release()
        except tk.TclError:
            pass
        self.root.withdraw()

    def quit(self) -> None:
        self.root.destroy()

    def run(self) -> None:
        self.say(event="ready")
        self.root.mainloop()


def main() -> int:
    try:
        overlay = Overlay()
    except tk.TclError as exc:
        print(f"overlay_x11: error: cannot open the display: {exc}", file=sys.stderr)
        return 1
    overlay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

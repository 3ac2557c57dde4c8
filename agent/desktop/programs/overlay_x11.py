"""The X11 blank-screen overlay process (``python -m agent.desktop.programs.overlay_x11``): the Tk drawing.

Run by agent/desktop/x11.py (the report blank and the staff lock) as the agent's own
user, so the pupil cannot kill it.  The conversation with the agent and the staff PIN
live in overlay_core.py.

While shown it covers every screen, grabs the keyboard and pointer, and no key closes
it: Escape, Alt+F4, Alt+Tab and the window manager's close button are all swallowed.
Five times a second, and at once when X says something changed (unmapped, moved,
resized, obscured), it asks the X server whether its window is still mapped, on top,
at full size and a child of the root (programs/x11_watch.py); if not it puts it back
and says ``{"event":"tampered","what":[...]}``, which the agent reports.
"""

from __future__ import annotations

import os
import sys
import tkinter as tk

from agent.desktop.programs.overlay_core import BG, FG, HINT_FG, STAFF_HINT, OverlayCore

CHECK_MS = 200


class Overlay(OverlayCore):
    def __init__(self) -> None:
        super().__init__()
        self.watch = None
        try:
            from agent.desktop.programs.x11_watch import WindowWatch

            self.watch = WindowWatch(os.environ.get("DISPLAY", ":0"))
        except OSError as exc:
            print(f"overlay_x11: cannot watch the window ({exc}); it is only re-raised", file=sys.stderr)
        self._check_pending = False
        self._tick = None
        self._outer: int | None = None
        self.root = tk.Tk(className="classroom-safety-overlay")
        self.root.withdraw()
        self.root.title("classroom-safety")
        self.root.configure(bg=BG, cursor="none")
        self.root.overrideredirect(True)
        self.root.protocol("WM_DELETE_WINDOW", lambda: None)
        width = self.root.winfo_screenwidth()
        # The pictogram above the words (drawn by draw_picture), for children who cannot read yet.
        self.image = None
        self.picture_label = tk.Label(self.root, bg=BG, borderwidth=0)
        self.message = tk.Label(self.root, text="", fg=FG, bg=BG, wraplength=int(width * 0.8), justify="center",
                                font=("DejaVu Sans", max(28, width // 28), "bold"))
        self.message.place(relx=0.5, rely=0.45, anchor="center")
        self.hint = tk.Label(self.root, text=STAFF_HINT, fg=HINT_FG, bg=BG, font=("DejaVu Sans", 14))
        self.hint.place(relx=0.5, rely=0.92, anchor="center")
        for seq in ("<Key>", "<Alt-F4>", "<Escape>", "<Alt-Tab>", "<Control-w>", "<Control-q>"):
            self.root.bind_all(seq, self.on_key)
        for seq in ("<Unmap>", "<Configure>", "<Visibility>"):
            self.root.bind(seq, self.on_changed)
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

    def draw_picture(self, path: str | None) -> None:
        if path is None:
            self.image = None
            self.picture_label.place_forget()
            self.message.place_configure(rely=0.45)
            return
        try:
            self.image = tk.PhotoImage(file=path)
        except tk.TclError as exc:
            print(f"overlay_x11: cannot load {path}: {exc}", file=sys.stderr)
            self.image = None
            return
        self.picture_label.configure(image=self.image)
        self.picture_label.place(relx=0.5, rely=0.32, anchor="center")
        self.message.place_configure(rely=0.62)

    def drawn(self) -> dict:
        drawn = {"shown": self.root.winfo_viewable() == 1, "message": self.message.cget("text"),
                 "hint": self.hint.cget("text")}
        if self.image is not None:
            drawn["picture"] = self.picture  # the pictogram's name, when one is drawn
        return drawn

    def draw_show(self) -> None:
        self.root.geometry(f"{self.root.winfo_screenwidth()}x{self.root.winfo_screenheight()}+0+0")
        self.root.deiconify()
        self.root.attributes("-topmost", True)
        self.root.update_idletasks()
        if self._tick is None:
            self.keep_on_top()

    def on_changed(self, event) -> None:
        """X says the window changed: check now rather than at the next tick."""
        if self.shown and not self._check_pending:
            self._check_pending = True
            self.root.after_idle(self.check)

    def windows(self) -> tuple[int, int]:
        """(Tk's wrapper, a child of the root; Tk's own window inside it).  The wrapper is
        learnt once, the first time the window is up, before anyone could move it."""
        inner = self.root.winfo_id()
        if self._outer is None and self.watch is not None:
            self._outer = self.watch.toplevel(inner)
        return self._outer or inner, inner

    def check(self) -> None:
        """Is the window still mapped, on top, full size, ours?  Put it back if not."""
        self._check_pending = False
        if not self.shown or self.watch is None:
            return
        # A round trip on Tk's own connection first, so the X server has done everything
        # Tk asked (our watch is a second connection, and would otherwise see old state).
        self.root.winfo_pointerxy()
        width, height = self.root.winfo_screenwidth(), self.root.winfo_screenheight()
        outer, inner = self.windows()
        problems = self.watch.inspect(outer, inner, width, height, ignore=self.ignore)
        if not problems:
            return
        self.watch.restore(outer, inner, width, height)
        # Tk keeps its own idea of the window; make it agree with what was put back.
        self.root.geometry(f"{width}x{height}+0+0")
        self.root.deiconify()
        self.grab()
        self.say(event="tampered", what=problems)

    def grab(self) -> None:
        self.root.focus_force()
        try:
            self.root.grab_set_global()
        except tk.TclError:
            pass  # another client holds a grab; we retry on the next tick

    def keep_on_top(self) -> None:
        self._tick = None
        if not self.shown:
            return
        self.check()
        self.grab()
        self._tick = self.root.after(CHECK_MS, self.keep_on_top)

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

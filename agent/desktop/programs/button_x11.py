"""The on-screen report button on X11 (``python -m agent.desktop.programs.button_x11``): the Tk drawing.

Run by agent/desktop/button.py as the agent's own user, so the pupil cannot close or
kill it.  A small window with no frame (override-redirect: no window manager button
closes it) in a corner of the screen: the raised-hand pictogram, the words ("I saw
something") and a bar that fills while it is held.  The conversation and press-and-hold
are button_core.py's.

X11 lets any client unmap, move, resize or cover any window, so four times a second,
and at once when X says something changed, it asks the X server whether its window is
still mapped, in its corner, at its size and on top (programs/x11_watch.py) and puts
it back if not, saying ``tampered`` (the agent reports it).
"""

from __future__ import annotations

import os
import sys
import tkinter as tk

from agent.desktop.programs.button_core import BAR, BG, FG, MARGIN, TICK_MS, ButtonCore

CHECK_MS = 250
WIDTH, HEIGHT = 300, 120


class Button(ButtonCore):
    def __init__(self) -> None:
        super().__init__()
        self.watch = None
        try:
            from agent.desktop.programs.x11_watch import WindowWatch

            self.watch = WindowWatch(os.environ.get("DISPLAY", ":0"))
        except OSError as exc:
            print(f"button_x11: cannot watch the window ({exc}); it is only re-raised", file=sys.stderr)
        self._outer: int | None = None
        self._check_pending = False
        self._tick = None
        self._hold_tick = None
        self.root = tk.Tk(className="classroom-safety-button")
        self.root.withdraw()
        self.root.title("I saw something")
        self.root.overrideredirect(True)
        self.root.configure(bg=FG, cursor="hand2")
        self.root.protocol("WM_DELETE_WINDOW", lambda: None)
        self.frame = tk.Frame(self.root, bg=BG, highlightthickness=0)
        self.frame.place(x=4, y=4, width=WIDTH - 8, height=HEIGHT - 8)
        self.image = None
        self.icon = tk.Label(self.frame, bg=BG, borderwidth=0)
        self.icon.place(x=8, rely=0.45, anchor="w")
        self.text = tk.Label(self.frame, text="", fg=FG, bg=BG, font=("DejaVu Sans", 17, "bold"),
                             wraplength=WIDTH - 110, justify="left")
        self.text.place(x=96, rely=0.45, anchor="w")
        self.bar = tk.Canvas(self.frame, height=10, bg=BG, highlightthickness=0)
        self.bar.place(x=8, rely=1.0, y=-16, width=WIDTH - 24)
        self.fill = self.bar.create_rectangle(0, 0, 0, 10, fill=BAR, width=0)
        for widget in (self.root, self.frame, self.icon, self.text, self.bar):
            widget.bind("<ButtonPress-1>", lambda _e: self.on_down())
            widget.bind("<ButtonRelease-1>", lambda _e: self.on_up())
        for seq in ("<Unmap>", "<Configure>", "<Visibility>"):
            self.root.bind(seq, self.on_changed)
        self.root.tk.createfilehandler(sys.stdin.fileno(), tk.READABLE, self.on_stdin)

    def on_stdin(self, fd, mask) -> None:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            self.root.tk.deletefilehandler(sys.stdin.fileno())
        self.feed(chunk)

    # ------------------------------------------------------------------ press and hold
    def on_down(self) -> None:
        self.down()
        if self.holding and not self.pressed and self._hold_tick is None:
            self._hold_tick = self.root.after(TICK_MS, self.on_tick)

    def on_tick(self) -> None:
        self._hold_tick = None
        self.tick()
        if self.holding and not self.pressed:
            self._hold_tick = self.root.after(TICK_MS, self.on_tick)

    def on_up(self) -> None:
        if self._hold_tick is not None:
            self.root.after_cancel(self._hold_tick)
            self._hold_tick = None
        self.up()

    # ------------------------------------------------------------------ drawing
    def draw_label(self, text: str) -> None:
        self.text.configure(text=text)

    def draw_picture(self, path: str | None) -> None:
        if path is None:
            self.image = None
            self.icon.configure(image="")
            return
        try:
            self.image = tk.PhotoImage(file=path).subsample(3)  # 256 -> 85 pixels
        except tk.TclError as exc:
            print(f"button_x11: cannot load {path}: {exc}", file=sys.stderr)
            return
        self.icon.configure(image=self.image)

    def draw_progress(self, fraction: float) -> None:
        width = int((WIDTH - 24) * max(0.0, min(1.0, fraction)))
        self.bar.coords(self.fill, 0, 0, width, 10)

    def position(self) -> tuple[int, int]:
        sw, sh = self.root.winfo_screenwidth(), self.root.winfo_screenheight()
        x = MARGIN if self.corner.endswith("left") else sw - WIDTH - MARGIN
        y = MARGIN if self.corner.startswith("top") else sh - HEIGHT - MARGIN
        return x, y

    def draw_show(self, corner: str) -> None:
        x, y = self.position()
        self.root.geometry(f"{WIDTH}x{HEIGHT}+{x}+{y}")
        self.root.deiconify()
        self.root.attributes("-topmost", True)
        self.root.lift()
        self.root.update_idletasks()
        if self._tick is None:
            self.keep_on_top()

    def draw_hide(self) -> None:
        self.root.withdraw()

    def drawn(self) -> dict:
        outer = self.windows()[0] if self.shown else self._outer
        return {"shown": self.root.winfo_viewable() == 1, "message": self.text.cget("text"),
                "picture": self.picture if self.image is not None else None, "hold_ms": self.hold_ms,
                "corner": self.corner, "pressed": self.pressed, "window": outer}

    # ------------------------------------------------------------------ holding its place
    def on_changed(self, event) -> None:
        if self.shown and not self._check_pending:
            self._check_pending = True
            self.root.after_idle(self.check)

    def windows(self) -> tuple[int, int]:
        inner = self.root.winfo_id()
        if self._outer is None and self.watch is not None:
            self._outer = self.watch.toplevel(inner)
        return self._outer or inner, inner

    def check(self) -> None:
        self._check_pending = False
        if not self.shown or self.watch is None:
            return
        self.root.winfo_pointerxy()  # a round trip on Tk's connection first (see overlay_x11)
        x, y = self.position()
        outer, inner = self.windows()
        problems = self.watch.inspect(outer, inner, WIDTH, HEIGHT, x, y)
        if not problems:
            return
        self.watch.restore(outer, inner, WIDTH, HEIGHT, x, y)
        self.root.geometry(f"{WIDTH}x{HEIGHT}+{x}+{y}")
        self.root.deiconify()
        self.say(event="tampered", what=problems)

    def keep_on_top(self) -> None:
        self._tick = None
        if not self.shown:
            return
        self.check()
        self._tick = self.root.after(CHECK_MS, self.keep_on_top)

    def quit(self) -> None:
        self.root.destroy()

    def shown_info(self) -> dict:
        return {"window": self.windows()[0]}

    def run(self) -> None:
        self.say(event="ready")
        self.root.mainloop()


def main() -> int:
    try:
        button = Button()
    except tk.TclError as exc:
        print(f"button_x11: error: cannot open the display: {exc}", file=sys.stderr)
        return 1
    button.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

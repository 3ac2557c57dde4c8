"""The on-screen report button on Wayland (``python3 -m agent.desktop.programs.button_wayland``):
the GTK drawing on a wlr-layer-shell surface.

Run by agent/desktop/button.py on the system Python (python3-gi, gtk-layer-shell), as the
agent's own user like the blank (agent/desktop/wayland.py says how it reaches the
session's socket).  A layer-shell surface on the ``overlay`` layer, anchored in a
corner: above every window, full-screen ones included, and no client of the pupil's can
move, hide or close another client's surface.  It takes no keyboard (the pupil's typing
is not ours) and reserves no space.  If the compositor closes it (its output went away)
it is made again and says ``tampered``.  The conversation and press-and-hold are
button_core.py's; the pointer and touch both press it (GTK turns a touch into a press).
"""

from __future__ import annotations

import os
import sys

import gi

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
gi.require_version("GtkLayerShell", "0.1")
from gi.repository import Gdk, GLib, Gtk, GtkLayerShell  # noqa: E402

from agent.desktop.programs.button_core import BAR, BG, FG, MARGIN, TICK_MS, ButtonCore  # noqa: E402

CSS = """
window { background-color: %(fg)s; }
#face { background-color: %(bg)s; margin: 4px; }
#label { color: %(fg)s; font-family: "DejaVu Sans"; font-weight: bold; font-size: 17pt; }
progressbar trough { min-height: 10px; background-color: %(bg)s; border: none; }
progressbar progress { min-height: 10px; background-color: %(bar)s; border: none; }
"""
WIDTH, HEIGHT = 300, 120


class WaylandButton(ButtonCore):
    def __init__(self) -> None:
        super().__init__()
        if not GtkLayerShell.is_supported():
            raise RuntimeError("this compositor has no wlr-layer-shell")
        provider = Gtk.CssProvider()
        provider.load_from_data((CSS % {"bg": BG, "fg": FG, "bar": BAR}).encode())
        Gtk.StyleContext.add_provider_for_screen(Gdk.Screen.get_default(), provider,
                                                 Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)
        self._picture: str | None = None
        self._hold_source = None
        self._make()
        GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                          self.on_stdin)

    def _make(self) -> None:
        win = Gtk.Window(title="I saw something")
        GtkLayerShell.init_for_window(win)
        GtkLayerShell.set_namespace(win, "classroom-safety-button")
        GtkLayerShell.set_layer(win, GtkLayerShell.Layer.OVERLAY)
        GtkLayerShell.set_keyboard_mode(win, GtkLayerShell.KeyboardMode.NONE)
        GtkLayerShell.set_exclusive_zone(win, 0)
        win.set_size_request(WIDTH, HEIGHT)
        face = Gtk.EventBox(name="face")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, margin=8, spacing=6)
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=10)
        self.icon = Gtk.Image()
        self.text = Gtk.Label(name="label", label=self.label, wrap=True, max_width_chars=14, xalign=0)
        row.pack_start(self.icon, False, False, 0)
        row.pack_start(self.text, True, True, 0)
        self.bar = Gtk.ProgressBar()
        box.pack_start(row, True, True, 0)
        box.pack_end(self.bar, False, False, 0)
        face.add(box)
        win.add(face)
        face.connect("button-press-event", lambda *_: self.on_down() or True)
        face.connect("button-release-event", lambda *_: self.on_up() or True)
        win.connect("delete-event", self.on_closed)
        face.show_all()
        self.win = win
        self._anchor()
        if self._picture:
            self.draw_picture(self._picture)

    def _anchor(self) -> None:
        edges = {"top": GtkLayerShell.Edge.TOP, "bottom": GtkLayerShell.Edge.BOTTOM,
                 "left": GtkLayerShell.Edge.LEFT, "right": GtkLayerShell.Edge.RIGHT}
        vertical, horizontal = self.corner.split("-")
        for name, edge in edges.items():
            on = name in (vertical, horizontal)
            GtkLayerShell.set_anchor(self.win, edge, on)
            GtkLayerShell.set_margin(self.win, edge, MARGIN if on else 0)

    def on_closed(self, win, event) -> bool:
        if self.shown:
            GLib.idle_add(self._remake)
        return True

    def _remake(self) -> bool:
        old = self.win
        self._make()
        old.destroy()
        if self.shown:
            self.win.show()
        self.say(event="tampered", what=["closed"])
        return False

    def on_stdin(self, fd, condition) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        self.feed(chunk)
        return bool(chunk)

    # ------------------------------------------------------------------ press and hold
    def on_down(self) -> None:
        self.down()
        if self.holding and not self.pressed and self._hold_source is None:
            self._hold_source = GLib.timeout_add(TICK_MS, self.on_tick)

    def on_tick(self) -> bool:
        self.tick()
        if self.holding and not self.pressed:
            return True
        self._hold_source = None
        return False

    def on_up(self) -> None:
        if self._hold_source is not None:
            GLib.source_remove(self._hold_source)
            self._hold_source = None
        self.up()

    # ------------------------------------------------------------------ drawing
    def draw_label(self, text: str) -> None:
        self.text.set_text(text)

    def draw_picture(self, path: str | None) -> None:
        self._picture = path
        if path is None:
            self.icon.clear()
            return
        from gi.repository import GdkPixbuf

        self.icon.set_from_pixbuf(GdkPixbuf.Pixbuf.new_from_file_at_size(path, 84, 84))

    def draw_progress(self, fraction: float) -> None:
        self.bar.set_fraction(max(0.0, min(1.0, fraction)))

    def draw_show(self, corner: str) -> None:
        self._anchor()
        self.win.show()

    def draw_hide(self) -> None:
        self.win.hide()

    def drawn(self) -> dict:
        return {"shown": bool(self.win.get_mapped()), "message": self.text.get_text(),
                "picture": self.picture if self._picture else None, "hold_ms": self.hold_ms,
                "corner": self.corner, "pressed": self.pressed}

    def quit(self) -> None:
        Gtk.main_quit()

    def run(self) -> None:
        self.say(event="ready")
        Gtk.main()


def main() -> int:
    try:
        if not Gtk.init_check(sys.argv)[0]:
            raise RuntimeError("cannot open the Wayland display "
                               f"{os.environ.get('WAYLAND_DISPLAY') or '(WAYLAND_DISPLAY is not set)'}")
        button = WaylandButton()
    except RuntimeError as exc:
        print(f"button_wayland: error: {exc}", file=sys.stderr)
        return 1
    button.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

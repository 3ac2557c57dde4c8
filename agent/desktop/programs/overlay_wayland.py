"""The Wayland blank-screen overlay process (``python3 -m agent.desktop.programs.overlay_wayland``):
the GTK drawing on a wlr-layer-shell surface.

Run by agent/desktop/wayland.py on the system Python (GTK and gtk-layer-shell come from
Debian: ``python3-gi``, ``gir1.2-gtklayershell-0.1``), as the agent's own user so the
pupil cannot kill it; the desktop session lets that user reach its Wayland socket
(docs/deploy-pi.md, "Wayland overlay").  The conversation with the agent and the staff
PIN live in overlay_core.py.

Why a layer-shell surface: labwc and wayfire (Raspberry Pi OS) and sway put the
``overlay`` layer above every window, full-screen ones included, and a surface with
exclusive keyboard interactivity gets every key.  So the page the pupil saw is covered,
Alt+F4 and Alt+Tab act on windows underneath that nobody can see, and the words and the
PIN box are ours to draw, which ``swaylock`` cannot do.  One surface per monitor; the
first takes the keyboard.  A monitor that appears later (plugged in, or an output the
pupil's session creates or switches back on) gets a surface at once, shown if the
overlay is; a surface the compositor closes (its output went away) while shown is made
again; both are said as ``tampered`` for the agent to report.  ``state`` says ``shown``
only when every monitor has a mapped surface.
"""

from __future__ import annotations

import os
import sys

import gi

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
gi.require_version("GtkLayerShell", "0.1")
from gi.repository import Gdk, GLib, Gtk, GtkLayerShell  # noqa: E402

from agent.desktop.programs.overlay_core import BG, FG, HINT_FG, STAFF_HINT, OverlayCore  # noqa: E402

CSS = """
window { background-color: %(bg)s; }
#message { color: %(fg)s; font-family: "DejaVu Sans"; font-weight: bold; font-size: %(size)dpx; }
#hint { color: %(hint)s; font-family: "DejaVu Sans"; font-size: 14pt; }
"""


class WaylandOverlay(OverlayCore):
    def __init__(self) -> None:
        super().__init__()
        display = Gdk.Display.get_default()  # open: main() checked Gtk.init_check
        if not GtkLayerShell.is_supported():
            raise RuntimeError("this compositor has no wlr-layer-shell; use screen_backend: swaylock")
        first = display.get_monitor(0) if display.get_n_monitors() else None
        width = first.get_geometry().width if first is not None else 1280
        provider = Gtk.CssProvider()
        css = CSS % {"bg": BG, "fg": FG, "hint": HINT_FG, "size": max(28, width // 28)}
        provider.load_from_data(css.encode())
        Gtk.StyleContext.add_provider_for_screen(Gdk.Screen.get_default(), provider,
                                                 Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)
        self.display = display
        self.windows: list[Gtk.Window] = []
        self.messages: list[Gtk.Label] = []
        self.hints: list[Gtk.Label] = []
        self.monitors: list = []  # the monitor of each window, in the same order
        self.pictures: list[Gtk.Image] = []
        self._picture: str | None = None  # the PNG drawn above the words
        self._announce = False
        self._message = ""
        self._hint = STAFF_HINT
        monitors = [display.get_monitor(i) for i in range(display.get_n_monitors())] or [None]
        for monitor in monitors:
            self._add_window(monitor)
        self._give_keyboard()
        display.connect("monitor-added", self.on_monitor_added)
        display.connect("monitor-removed", self.on_monitor_removed)
        # Default priority, not HIGH: GDK's Wayland source prepares a read before each
        # poll and only a source of at least its priority gets it cancelled; a HIGH
        # watch that maps a window deadlocks GTK in a roundtrip.
        GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                          self.on_stdin)

    def _add_window(self, monitor) -> Gtk.Window:
        win = Gtk.Window(title="classroom-safety")
        GtkLayerShell.init_for_window(win)
        GtkLayerShell.set_namespace(win, "classroom-safety")
        GtkLayerShell.set_layer(win, GtkLayerShell.Layer.OVERLAY)
        for edge in (GtkLayerShell.Edge.LEFT, GtkLayerShell.Edge.RIGHT,
                     GtkLayerShell.Edge.TOP, GtkLayerShell.Edge.BOTTOM):
            GtkLayerShell.set_anchor(win, edge, True)
        GtkLayerShell.set_exclusive_zone(win, -1)  # cover panels too, not just the windows
        GtkLayerShell.set_keyboard_mode(win, GtkLayerShell.KeyboardMode.NONE)
        if monitor is not None:
            GtkLayerShell.set_monitor(win, monitor)
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
        picture = Gtk.Image(valign=Gtk.Align.END, vexpand=True, margin_bottom=24)
        if self._picture:
            picture.set_from_file(self._picture)
        message = Gtk.Label(name="message", label=self._message, wrap=True, justify=Gtk.Justification.CENTER,
                            max_width_chars=30, vexpand=True, valign=Gtk.Align.START)
        hint = Gtk.Label(name="hint", label=self._hint, margin_bottom=24)
        box.pack_start(picture, True, True, 0)
        box.pack_start(message, True, True, 0)
        box.pack_end(hint, False, False, 0)
        win.add(box)
        win.connect("key-press-event", self.on_key)
        # Nothing closes it but staff.  gtk-layer-shell asks this too when the compositor
        # closes the surface (its output went away): then it is made again.
        win.connect("delete-event", self.on_closed)
        win.connect("realize", lambda w: w.get_frame_clock().connect("after-paint", self.on_painted, w))
        box.show_all()
        self.windows.append(win)
        self.messages.append(message)
        self.hints.append(hint)
        self.pictures.append(picture)
        self.monitors.append(monitor)
        if not self._picture:
            picture.hide()
        return win

    def _remove_window(self, index: int) -> None:
        win = self.windows.pop(index)
        self.messages.pop(index)
        self.hints.pop(index)
        self.pictures.pop(index)
        self.monitors.pop(index)
        win.destroy()

    def _give_keyboard(self) -> None:
        """Exactly one surface takes every key: the first."""
        for index, win in enumerate(self.windows):
            GtkLayerShell.set_keyboard_mode(win, GtkLayerShell.KeyboardMode.EXCLUSIVE if index == 0
                                            else GtkLayerShell.KeyboardMode.NONE)

    # ------------------------------------------------------------------ monitors
    def on_monitor_added(self, display, monitor) -> None:
        win = self._add_window(monitor)
        self._give_keyboard()
        if self.shown:
            win.show()
            self.say(event="tampered", what=["output_added"])

    def on_monitor_removed(self, display, monitor) -> None:
        if monitor in self.monitors:
            self._remove_window(self.monitors.index(monitor))
            self._give_keyboard()

    def on_closed(self, win, event) -> bool:
        if self.shown and win in self.windows:
            # Made again from idle: not from inside the handler of the surface going away.
            GLib.idle_add(self._remake, win)
        return True

    def _remake(self, win) -> bool:
        if win in self.windows:
            index = self.windows.index(win)
            monitor = self.monitors[index]
            self._remove_window(index)
            monitors = [self.display.get_monitor(i) for i in range(self.display.get_n_monitors())]
            if monitor is None or monitor in monitors:
                new = self._add_window(monitor)
                self._give_keyboard()
                if self.shown:
                    new.show()
            self.say(event="tampered", what=["closed"])
        return False

    # ------------------------------------------------------------------ events
    def on_stdin(self, fd, condition) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        self.feed(chunk)
        return bool(chunk)  # False removes the watch at end of input

    def on_key(self, widget, event) -> bool:
        name = Gdk.keyval_name(event.keyval) or ""
        char = chr(Gdk.keyval_to_unicode(event.keyval) or 0).strip("\0")
        self.key(name, char)
        return True  # swallow everything

    def on_painted(self, clock, widget) -> None:
        # The first frame painted after show() is at the size the compositor gave the
        # surface (the whole output): that is when the pupil's page is covered.
        if self._announce and self.shown:
            self._announce = False
            alloc = widget.get_allocation()
            self.say(event="shown", width=alloc.width, height=alloc.height)

    # ------------------------------------------------------------------ drawing
    def announce_shown(self) -> None:
        self._announce = True  # said from on_painted, once the compositor has put it up

    def draw_message(self, text: str) -> None:
        self._message = text
        for label in self.messages:
            label.set_text(text)

    def draw_hint(self, text: str) -> None:
        self._hint = text
        for label in self.hints:
            label.set_text(text)

    def draw_picture(self, path: str | None) -> None:
        self._picture = path
        for image in self.pictures:
            if path:
                image.set_from_file(path)
                image.show()
            else:
                image.clear()
                image.hide()

    def drawn(self) -> dict:
        # Shown means every monitor there is now has a mapped surface of ours.
        covered = bool(self.windows) and all(win.get_mapped() for win in self.windows) \
            and len(self.windows) >= self.display.get_n_monitors()
        drawn = {"shown": covered, "message": self._message, "hint": self._hint, "windows": len(self.windows)}
        if self._picture:
            drawn["picture"] = self.picture
        return drawn

    def draw_show(self) -> None:
        for win in self.windows:
            win.show()

    def draw_hide(self) -> None:
        for win in self.windows:
            win.hide()

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
        overlay = WaylandOverlay()
    except RuntimeError as exc:
        print(f"overlay_wayland: error: {exc}", file=sys.stderr)
        return 1
    overlay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

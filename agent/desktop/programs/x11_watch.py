"""The X11 overlay's watch on its own window: still mapped, on top, at full size, a child of the root?

X11 lets any client of a display unmap, move, resize, restack or reparent any window,
the pupil's included (``xdotool windowunmap``, ``windowmove``, ``windowsize``,
``windowlower``, a window raised over ours).  Tk hears about only some of that, and
believes its own idea of the window afterwards, so the overlay (programs/overlay_x11.py)
asks the X server itself, through libX11 with ctypes on a second connection of its own:
``WindowWatch.inspect()`` says what is wrong, ``restore()`` puts it back.  Standard
library only.  If this connection is killed (``xkill``) Xlib ends the process, and the
agent starts the overlay again (agent/desktop/overlay.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["WindowWatch"]

IS_VIEWABLE = 2
INPUT_ONLY = 2


class _Attributes(ctypes.Structure):  # XWindowAttributes
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int),
                ("border_width", ctypes.c_int), ("depth", ctypes.c_int), ("visual", ctypes.c_void_p),
                ("root", ctypes.c_ulong), ("class_", ctypes.c_int), ("bit_gravity", ctypes.c_int),
                ("win_gravity", ctypes.c_int), ("backing_store", ctypes.c_int),
                ("backing_planes", ctypes.c_ulong), ("backing_pixel", ctypes.c_ulong),
                ("save_under", ctypes.c_int), ("colormap", ctypes.c_ulong), ("map_installed", ctypes.c_int),
                ("map_state", ctypes.c_int), ("all_event_masks", ctypes.c_long),
                ("your_event_mask", ctypes.c_long), ("do_not_propagate_mask", ctypes.c_long),
                ("override_redirect", ctypes.c_int), ("screen", ctypes.c_void_p)]


_ERROR_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@_ERROR_HANDLER
def _ignore_error(display, event):
    # A window that went away between two requests is BadWindow: the next check says so.
    return 0


class WindowWatch:
    """A second connection to *display* that checks and restores one toplevel."""

    def __init__(self, display: str):
        xlib = self.xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        xlib.XOpenDisplay.restype = ctypes.c_void_p
        xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
        xlib.XDefaultRootWindow.restype = ctypes.c_ulong
        xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        xlib.XGetWindowAttributes.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_Attributes)]
        xlib.XQueryTree.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong),
                                    ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.POINTER(ctypes.c_ulong)),
                                    ctypes.POINTER(ctypes.c_uint)]
        xlib.XFree.argtypes = [ctypes.c_void_p]
        for name in ("XMapWindow", "XMapRaised", "XRaiseWindow"):
            getattr(xlib, name).argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        xlib.XMoveResizeWindow.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint]
        xlib.XReparentWindow.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int, ctypes.c_int]
        xlib.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        xlib.XSetErrorHandler.argtypes = [_ERROR_HANDLER]
        xlib.XSetErrorHandler(_ignore_error)
        self.dpy = xlib.XOpenDisplay(display.encode())
        if not self.dpy:
            raise OSError(f"cannot open X display {display}")
        self.root = xlib.XDefaultRootWindow(self.dpy)

    def _attributes(self, window: int) -> _Attributes | None:
        attrs = _Attributes()
        if not self.xlib.XGetWindowAttributes(self.dpy, window, ctypes.byref(attrs)):
            return None
        return attrs

    def _tree(self, window: int) -> tuple[int, list[int]] | None:
        """(parent, children bottom to top) of *window*."""
        root, parent = ctypes.c_ulong(), ctypes.c_ulong()
        children, count = ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
        if not self.xlib.XQueryTree(self.dpy, window, ctypes.byref(root), ctypes.byref(parent),
                                    ctypes.byref(children), ctypes.byref(count)):
            return None
        found = [children[i] for i in range(count.value)]
        if children:
            self.xlib.XFree(children)
        return parent.value, found

    def toplevel(self, window: int) -> int | None:
        """The ancestor of *window* (itself included) whose parent is the root: Tk's
        wrapper around its toplevel.  None if the window does not exist."""
        for _ in range(16):
            tree = self._tree(window)
            if tree is None:
                return None
            if tree[0] in (0, self.root):
                return window
            window = tree[0]
        return None

    def inspect(self, outer: int, inner: int, width: int, height: int, x: int = 0, y: int = 0,
                ignore=()) -> list[str]:
        """What is wrong with the window (*outer*: Tk's wrapper, a child of the root;
        *inner*: Tk's own window in it; it belongs at *x*, *y*, *width* x *height*): any of
        ``gone``, ``reparented``, ``unmapped``, ``moved``, ``resized``, ``covered`` (a
        window above it, other than those in *ignore*: our own on-screen button, which
        hides itself when the blank shows).  Empty: it is where it belongs, on top."""
        outer_attrs, inner_attrs = self._attributes(outer), self._attributes(inner)
        tree = self._tree(outer)
        if outer_attrs is None or inner_attrs is None or tree is None:
            return ["gone"]
        problems = []
        if tree[0] != self.root:
            problems.append("reparented")
        if outer_attrs.map_state != IS_VIEWABLE or inner_attrs.map_state != IS_VIEWABLE:
            problems.append("unmapped")
        if (outer_attrs.x, outer_attrs.y, inner_attrs.x, inner_attrs.y) != (x, y, 0, 0):
            problems.append("moved")
        if (outer_attrs.width, outer_attrs.height, inner_attrs.width, inner_attrs.height) != \
                (width, height, width, height):
            problems.append("resized")
        siblings = self._tree(self.root)
        if siblings is not None and outer in siblings[1]:
            above = siblings[1][siblings[1].index(outer) + 1:]
            for window in above:
                if window in ignore:
                    continue
                attrs = self._attributes(window)
                if attrs is not None and attrs.map_state == IS_VIEWABLE and attrs.class_ != INPUT_ONLY:
                    problems.append("covered")
                    break
        return problems

    def restore(self, outer: int, inner: int, width: int, height: int, x: int = 0, y: int = 0) -> None:
        """Put the window back: a child of the root, at *x*, *y* (the overlay: 0,0 and full
        size), mapped, on top."""
        xlib = self.xlib
        tree = self._tree(outer)
        if tree is not None and tree[0] != self.root:
            xlib.XReparentWindow(self.dpy, outer, self.root, x, y)
        xlib.XMoveResizeWindow(self.dpy, outer, x, y, width, height)
        xlib.XMoveResizeWindow(self.dpy, inner, 0, 0, width, height)
        xlib.XMapWindow(self.dpy, inner)
        xlib.XMapRaised(self.dpy, outer)
        xlib.XRaiseWindow(self.dpy, outer)
        xlib.XSync(self.dpy, 0)

    def sync(self) -> None:
        self.xlib.XSync(self.dpy, 0)

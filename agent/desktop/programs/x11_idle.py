"""X11 idle time from the XScreenSaver extension, through libXss with ctypes.

``python -m agent.desktop.programs.x11_idle DISPLAY`` prints the milliseconds since the
last input once; with ``--serve`` it answers one line per line read on stdin over one
long-lived connection (agent/desktop/x11.py's ``X11Idle`` keeps such a helper when
xprintidle is not installed).  A child process because Xlib exits the whole process
when the X server goes away, which must not take the agent with it.  Standard library
only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["x11_idle_ms"]


class _XScreenSaverInfo(ctypes.Structure):
    _fields_ = [("window", ctypes.c_ulong), ("state", ctypes.c_int), ("kind", ctypes.c_int),
                ("til_or_since", ctypes.c_ulong), ("idle", ctypes.c_ulong), ("eventMask", ctypes.c_ulong)]


def _open(display: str):
    """(xlib, xss, display pointer, info buffer) for *display*; OSError if unusable."""
    xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    xss = ctypes.CDLL(ctypes.util.find_library("Xss") or "libXss.so.1")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XDefaultRootWindow.restype = ctypes.c_ulong
    xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xlib.XFree.argtypes = [ctypes.c_void_p]
    xss.XScreenSaverQueryExtension.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                               ctypes.POINTER(ctypes.c_int)]
    xss.XScreenSaverAllocInfo.restype = ctypes.POINTER(_XScreenSaverInfo)
    xss.XScreenSaverQueryInfo.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_XScreenSaverInfo)]
    dpy = xlib.XOpenDisplay(display.encode())
    if not dpy:
        raise OSError(f"cannot open X display {display}")
    event_base, error_base = ctypes.c_int(), ctypes.c_int()
    if not xss.XScreenSaverQueryExtension(dpy, ctypes.byref(event_base), ctypes.byref(error_base)):
        xlib.XCloseDisplay(dpy)
        raise OSError(f"X display {display} has no MIT-SCREEN-SAVER extension")
    return xlib, xss, dpy, xss.XScreenSaverAllocInfo()


def x11_idle_ms(display: str) -> int:
    """Milliseconds since the last input on *display* (XScreenSaverQueryInfo).  Raises OSError."""
    xlib, xss, dpy, info = _open(display)
    try:
        if not xss.XScreenSaverQueryInfo(dpy, xlib.XDefaultRootWindow(dpy), info):
            raise OSError("XScreenSaverQueryInfo failed")
        return int(info.contents.idle)
    finally:
        xlib.XFree(info)
        xlib.XCloseDisplay(dpy)


def _serve(display: str) -> int:
    """Answer one idle time per input line over one long-lived connection."""
    xlib, xss, dpy, info = _open(display)
    root = xlib.XDefaultRootWindow(dpy)
    for _ in sys.stdin:
        if not xss.XScreenSaverQueryInfo(dpy, root, info):
            return 1
        print(int(info.contents.idle), flush=True)
    return 0


if __name__ == "__main__":  # python -m agent.desktop.programs.x11_idle :0 [--serve]
    try:
        if "--serve" in sys.argv:
            sys.exit(_serve(sys.argv[1]))
        print(x11_idle_ms(sys.argv[1] if len(sys.argv) > 1 else ":0"))
    except OSError as exc:
        print(f"x11_idle: error: {exc}", file=sys.stderr)
        sys.exit(1)

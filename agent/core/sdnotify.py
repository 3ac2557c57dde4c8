"""sd_notify(3) with the standard library: tell systemd we are ready, alive or stopping.

The unit is ``Type=notify`` with ``WatchdogSec=``: systemd waits for ``READY=1`` before it
counts the agent as started, and restarts it if ``WATCHDOG=1`` stops arriving (a hung
event queue must not leave a classroom without its report button).  The protocol is one
datagram of ``KEY=value`` lines to the unix socket named by ``$NOTIFY_SOCKET``; a leading
``@`` means a Linux abstract socket.  Outside systemd every call is a harmless no-op.
"""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier", "notify", "watchdog_interval"]


def _address(name: str) -> str | bytes:
    # Abstract namespace: the leading '@' stands for the NUL byte in the kernel's name.
    return "\0" + name[1:] if name.startswith("@") else name


def notify(state: str, socket_path: str | None = None) -> bool:
    """Send *state* (``"READY=1"``, ``"STATUS=...\\nWATCHDOG=1"``) to systemd.

    Returns True if a datagram was sent, False when not running under systemd.
    Errors sending are swallowed: a missing supervisor must never crash the agent.
    """
    name = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not name or not state:
        return False
    if not (name.startswith("/") or name.startswith("@")):
        return False  # vsock and other exotic addresses: not on a classroom Pi
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(name))
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def watchdog_interval(environ: dict | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings systemd expects (half of WatchdogSec), or None.

    Honours ``WATCHDOG_PID`` as sd_watchdog_enabled(3) does: the timeout applies only to
    the process systemd named, not to children that inherited the environment.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return usec / 2_000_000


class Notifier:
    """The agent's line to systemd; the runtime calls ``ready()`` once, ``watchdog()`` often."""

    def __init__(self, socket_path: str | None = None):
        self.socket_path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self.interval = watchdog_interval()

    @property
    def is_enabled(self) -> bool:
        return bool(self.socket_path)

    def send(self, *lines: str) -> bool:
        return notify("\n".join(lines), self.socket_path or "")

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        # STATUS is one line in `systemctl status`; newlines would start new assignments.
        return self.send("STATUS=" + " ".join(text.split()))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

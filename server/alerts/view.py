"""The teacher's screen: a short table of the board, redrawn on every change; or one JSON
object per change (``--json``, for scripts and the demo).

Times are shown in the site's timezone (``--timezone``, e.g. Europe/London: the time on
the classroom clock, BST or GMT), else the computer's own; the wire is always UTC.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, tzinfo

from agent.protocol import ProtocolError, parse_ts

from . import PROG
from .board import Alert, AlertBoard


def local_time(ts: str, tz: tzinfo | None = None) -> str:
    """An event time as HH:MM:SS in *tz* (the computer's own zone if None); the raw text if it does not parse."""
    try:
        return parse_ts(ts).astimezone(tz).strftime("%H:%M:%S")
    except ProtocolError:
        return ts


class TerminalView:
    """The teacher's screen: a short table, redrawn on every change; or JSON lines."""

    def __init__(self, out=None, *, as_json: bool = False, title: str = "", tz: tzinfo | None = None) -> None:
        self.out = out or sys.stdout
        self.as_json = as_json
        self.title = title
        self.tz = tz
        self.ansi = not as_json and hasattr(self.out, "isatty") and self.out.isatty()
        self.lock = threading.Lock()

    def emit(self, kind: str, **fields) -> None:
        if self.as_json:
            with self.lock:
                self.out.write(json.dumps({"event": kind, **fields}, sort_keys=True) + "\n")
                self.out.flush()

    def alert(self, alert: Alert, board: AlertBoard) -> None:
        if self.as_json:
            self.emit("alert", **alert.to_dict(), time=local_time(alert.ts, self.tz))
        else:
            self.render(board)

    def message(self, text: str) -> None:
        if self.as_json:
            self.emit("message", text=text)
        else:
            with self.lock:
                self.out.write(text + "\n")
                self.out.flush()

    def render(self, board: AlertBoard) -> None:
        if self.as_json:
            return
        lines = []
        if self.ansi:
            lines.append("\x1b[2J\x1b[H")
        lines.append(f"{PROG}  {self.title}  {datetime.now(self.tz).strftime('%H:%M:%S')}")
        listing = board.listing()
        if not listing:
            lines.append("  no reports")
        else:
            lines.append(f" {'#':>2}  {'STATE':<13} {'ROOM':<10} {'SEAT':<16} {'DEVICE':<16} {'TIME':<8}  NOTE")
            for n, a in enumerate(listing, 1):
                note = ""
                if a.state == "escalated":
                    note = f"escalated to {a.escalated_to or 'the DSL'}"
                elif a.state in ("acknowledged", "cleared") and a.by:
                    note = f"by {a.by}"
                state = a.state.upper()
                if self.ansi and a.is_unanswered:
                    state = f"\x1b[1;31m{state:<13}\x1b[0m"
                else:
                    state = f"{state:<13}"
                lines.append(f" {n:>2}  {state} {a.room:<10} {a.seat[:16]:<16} {a.device:<16} "
                             f"{local_time(a.ts, self.tz):<8}  {note}")
        with board.lock:
            online = sum(1 for s in board.devices.values() if s == "online")
            offline = sorted(d for d, s in board.devices.items() if s != "online")
        lines.append(f"devices: {online} online" + (f", offline: {', '.join(offline)}" if offline else ""))
        lines.append("keys: a [N] = I'm coming (acknowledge)   c [N] = clear   l = list   q = quit")
        with self.lock:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

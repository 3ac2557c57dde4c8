"""A teacher's one-line message on the pupil's screen ("Tidy up in two minutes").

``{"cmd": "message", "text", "seconds", "by", "id"}`` from the collector (the room page's
"Message to every screen") shows *text* as a banner across the top of the screen of whoever
is logged in, for *seconds* (default ``DEFAULT_SECONDS``), then takes it down.  A newer
message replaces the one showing.  The words are the teacher's, checked by the contract
(agent/protocol.py: one line, at most ``TEXT_MAX`` characters); nothing is written to disk.

Drawing is the desktop's ``Presenter.message`` (agent/desktop/base.py), the one the runtime
built: a Tk banner run as the desktop user (agent/desktop/programs/aup_windows.py), or, on
a headless device, a record of what would be shown.  With nobody logged in there is no
screen to write on: the command is refused (``CommandRefused``), so the teacher's room
page says so instead of showing a tick.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from ..protocol import CommandRefused

if TYPE_CHECKING:
    from ..core.interfaces import RuntimeAPI, TimerHandle
    from ..desktop.base import Presenter
    from ..desktop.session import Session

log = logging.getLogger(__name__)

__all__ = ["TeacherMessage", "DEFAULT_SECONDS"]

DEFAULT_SECONDS = 60


class TeacherMessage:
    """The ``message`` command as a runtime component (agent/core/interfaces.py: ``Component``).

    *session*: who is at the device (the sessions source's ``desktop``); *presenter*: the
    runtime's desktop presenter unless given."""

    name = "message"

    def __init__(self, session: Callable[[], Session | None] | None = None, presenter: Presenter | None = None):
        self.session = session or (lambda: None)
        self.presenter = presenter
        self.runtime: RuntimeAPI | None = None
        self.showing: tuple[object, TimerHandle] | None = None

    def start(self, runtime: RuntimeAPI) -> None:
        self.runtime = runtime
        if self.presenter is None:
            self.presenter = runtime.desktop.presenter

    def stop(self) -> None:
        self._take_down()

    def on_policy(self, policy) -> None:
        pass

    def on_command(self, cmd: dict) -> bool:
        if cmd.get("cmd") != "message":
            return False
        session = self.session()
        if session is None:
            raise CommandRefused("nobody is logged in on this device")
        self._take_down()
        seconds = cmd.get("seconds") if isinstance(cmd.get("seconds"), int) else DEFAULT_SECONDS
        handle = self.presenter.message(session, str(cmd.get("text") or ""))
        self.showing = (handle, self.runtime.call_later(seconds, self._expired, handle))
        log.info("message from %s shown to %s for %d s", cmd.get("by"), session.user, seconds)
        return True

    def _expired(self, handle) -> None:
        if self.showing is not None and self.showing[0] is handle:
            self._take_down()

    def _take_down(self) -> None:
        showing, self.showing = self.showing, None
        if showing is None:
            return
        handle, timer = showing
        timer.cancel()
        try:
            self.presenter.close(handle)
        except Exception:  # noqa: BLE001 - a banner that will not close must not stop the next one
            log.exception("closing the message banner failed")

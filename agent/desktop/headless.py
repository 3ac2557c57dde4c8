"""The desktop with no screen: servers, simulated devices (``run --simulate``) and tests.

Each backend keeps the state a real one would show and does nothing else:
``HeadlessScreen`` (blank or not, and the words), ``HeadlessLock`` (with ``simulate_*``
for the user's side in tests), ``NoIdle`` (idle time unknown, so the idle lock never
fires), ``HeadlessIdle`` (driven by a clock and ``touch()``, for tests) and
``HeadlessPresenter`` (what would be shown; nobody ever agrees) and ``HeadlessButton``
(the on-screen button: shown or not, its words; ``simulate_press()``).
"""

from __future__ import annotations

from typing import Callable

from .base import STAFF_MODE, IdleSource, LockBackend, Presenter, ScreenBackend, ScreenButton, Words


class HeadlessScreen(ScreenBackend):
    """What the screen would show now: ``is_shown`` and ``message``."""

    name = "headless"

    def __init__(self) -> None:
        super().__init__()
        self.is_shown = False
        self.message: str | None = None

    def show(self, message: str) -> None:
        self.is_shown, self.message = True, message

    @property
    def picture(self) -> str | None:
        """The pictogram that would be drawn above the words."""
        return getattr(self.message, "picture", None)

    def set_message(self, message: str) -> None:
        self.message = message

    def hide(self) -> None:
        self.is_shown, self.message = False, None


class HeadlessLock(LockBackend):
    """Remembers what a lock screen would do; tests use simulate_* for the user side."""

    name = "headless"

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None
        self.calls: list[tuple] = []
        self._pending: tuple[str, str] | None = None

    def lock(self, mode: str, message: str) -> None:
        self.calls.append(("lock", mode, message))
        self.is_locked, self.mode, self.message = True, mode, message

    def unlock(self) -> None:
        self.calls.append(("unlock",))
        self.is_locked, self.mode, self.message = False, None, None

    def poll(self) -> tuple[str, str] | None:
        pending, self._pending = self._pending, None
        if pending is not None:
            reason, by = pending
            if self.mode == STAFF_MODE and reason == "login":
                # A pupil's password does not lift a staff or timetable lock.
                self.calls.append(("relock", self.mode))
                return None
            self.is_locked, self.mode = False, None
        return pending

    def simulate_login(self, user: str) -> None:
        self._pending = ("login", user)
        self.when_changed()

    def simulate_pin(self) -> None:
        self._pending = ("staff_pin", "staff-pin")
        self.when_changed()


class NoIdle(IdleSource):
    """No input device to watch (servers, simulated devices): idle time is unknown, so
    the idle lock never fires.  Timetable and staff locks still work."""

    name = "none"

    def idle_seconds(self) -> float | None:
        return None


class HeadlessIdle(IdleSource):
    """Idle time on a (fake) clock: input happens when a test says ``touch()``."""

    name = "headless"

    def __init__(self, clock: Callable):
        super().__init__()
        self.clock = clock
        self.last_input = clock()

    def touch(self) -> None:
        """Input happened now."""
        self.last_input = self.clock()

    def idle_seconds(self) -> float | None:
        return (self.clock() - self.last_input).total_seconds()


class HeadlessPresenter(Presenter):
    """No screen: remember what would be shown; nobody agrees."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, str, str]] = []
        self.closed: list = []

    def notice(self, session, text: str):
        self.shown.append(("notice", session.id, text))
        return ("notice", session.id)

    def dialog(self, session, text: str, on_accept):
        self.shown.append(("dialog", session.id, text))
        return ("dialog", session.id)

    def message(self, session, text: str):
        self.shown.append(("message", session.id, text))
        return ("message", session.id, len(self.shown))

    def close(self, handle) -> None:
        self.closed.append(handle)


class HeadlessButton(ScreenButton):
    """No screen: ``is_shown`` and ``shown_label`` say what would be there; a test presses
    it with ``simulate_press()``."""

    def __init__(self) -> None:
        super().__init__()
        self.is_shown = False
        self.shown_label: str | None = None

    def draw(self, label: Words) -> None:
        self.is_shown, self.shown_label = True, str(label)

    def undraw(self) -> None:
        self.is_shown, self.shown_label = False, None

    def simulate_press(self) -> None:
        if self.is_shown:
            self.pressed()

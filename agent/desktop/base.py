"""The desktop's four roles as abstract base classes, and ``Desktop``, one backend per role.

gpiozero puts every pin library behind one ``Factory``; the desktop does the same with
its backends (agent/desktop/headless.py, x11.py, wayland.py), so the callers (the
report's ``Screen``, the lock component, the AUP) are written once against these:

* ``ScreenBackend`` -- the report blank: ``show(message)``, ``set_message(message)``,
  ``hide()``; ``start()`` gets it ready ahead of a press (an overlay starts hidden, so a
  press is one line down a pipe); ``when_cleared(by)`` is called when staff clear it on
  the device itself (the PIN).
* ``LockBackend`` -- staff, timetable and idle locks: ``lock(mode, message)``,
  ``unlock()``, and ``poll()`` for what the user did meanwhile (``("login", user)`` or
  ``("staff_pin", by)``); it calls ``when_changed()`` from any thread when ``poll`` has
  something to say.

Both call ``when_tampered(fields)`` (any thread) when something undid what they show and
they put it back: ``{"what": ..., "action": ...}`` plus details; the guard
(agent/policy/guard.py) reports it as a ``tamper`` event.
* ``IdleSource`` -- seconds since the last input (None: unknown, so never lock on a
  guess); ``set_timeout`` tells a push source (swayidle) the threshold; it may call
  ``when_changed()`` as well.
* ``Presenter`` -- the acceptable-use dialog and the monitoring notice:
  ``notice(session, text)``, ``dialog(session, text, on_accept)``, ``close(handle)``; and a
  teacher's one-line message to the room, ``message(session, text)`` (a banner).
* ``ScreenButton`` -- the on-screen "I saw something" button (agent/desktop/button.py):
  ``enable(label, hold_ms, corner)``, ``disable()``, ``when_pressed()``, and
  ``cover(who, covering)`` from the blank and lock overlays, so it hides under them.

Words on a pupil screen are a ``Words``: a ``str`` that also names the pictogram drawn
above it (``picture``); a backend that draws no pictures shows the words as before.
The desktop's ``sound`` (agent/desktop/sound.py) speaks them.

``backends.make_desktop(kind, ...)`` builds a ``Desktop``; the runtime builds one, once.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

# Lock modes.  A *staff* lock (a teacher's lock, the timetable) is lifted by nothing a
# pupil knows; a *session* lock (idle) is the desktop's own locker, lifted by the user's
# own password.
STAFF_MODE = "staff"
SESSION_MODE = "session"


def _nothing() -> None:
    pass


class Words(str):
    """The words a pupil screen shows, with the pictogram drawn above them (``picture``: a
    name in agent/desktop/assets/pictograms, such as ``report_raised``; None: words only).
    A ``str``, so every backend that knows nothing of pictures shows the words as before.
    ``pin``: False when the staff PIN must not lift the screen they are shown on (the DSL's
    hold, agent/policy/lock.py): the overlay then takes no PIN at all."""

    picture: str | None
    pin: bool

    def __new__(cls, text: str, picture: str | None = None, *, pin: bool = True) -> "Words":
        words = super().__new__(cls, text)
        words.picture = picture
        words.pin = pin
        return words


def picture_of(message) -> str | None:
    """The pictogram that goes with *message* (a ``Words``), else None."""
    return getattr(message, "picture", None)


def pin_allowed(message) -> bool:
    """Whether the staff PIN may lift a screen showing *message* (plain text: yes)."""
    return getattr(message, "pin", True) is not False


TamperCallback = Callable[[dict], None]


class ScreenBackend(ABC):
    """Whatever hides the pupil's screen.  Every method returns without waiting on anything
    but a local pipe or a process start: it runs on the pressing thread."""

    name = "screen"

    def __init__(self) -> None:
        # Set by the Screen: staff cleared it on the device (the PIN), with who did it.
        self.when_cleared: Callable[[str], None] | None = None
        # Set by the guard: something undid the blank and it was put back.
        self.when_tampered: TamperCallback | None = None

    @property
    def description(self) -> str:
        """The name ``status`` shows (an overlay says when its fallback is what blanks)."""
        return self.name

    def start(self) -> None:
        """Get ready ahead of a press; nothing to do by default."""

    @abstractmethod
    def show(self, message: str) -> None:
        """Cover the screen with *message*."""

    @abstractmethod
    def set_message(self, message: str) -> None:
        """Change the words while shown."""

    @abstractmethod
    def hide(self) -> None:
        """Give the screen back."""

    def close(self) -> None:
        """Release whatever the backend runs (the agent is stopping)."""


class LockBackend(ABC):
    """Whatever locks the device.  ``is_locked`` and ``mode`` say what it is doing now."""

    name = "lock"

    def __init__(self) -> None:
        self.is_locked = False
        self.mode: str | None = None
        self.when_changed: Callable[[], None] = _nothing
        self.when_tampered: TamperCallback | None = None  # set by the guard, as for a screen

    def tampered(self, fields: dict) -> None:
        """Report *fields* through ``when_tampered`` (for the backends and their overlays)."""
        callback = self.when_tampered
        if callback is not None:
            callback(fields)

    @abstractmethod
    def lock(self, mode: str, message: str) -> None:
        """Lock in *mode* (STAFF_MODE or SESSION_MODE), showing *message* where it can."""

    @abstractmethod
    def unlock(self) -> None:
        """Lift the lock (a staff unlock or the timetable opening)."""

    @abstractmethod
    def poll(self) -> tuple[str, str] | None:
        """What the user did since the last poll: ``("login", user)``, ``("staff_pin", by)``, or None."""

    def close(self) -> None:
        """The agent is stopping; a locked screen stays locked."""


class IdleSource(ABC):
    """How long since the user last touched the keyboard or mouse."""

    name = "idle"

    def __init__(self) -> None:
        self.when_changed: Callable[[], None] = _nothing

    @abstractmethod
    def idle_seconds(self) -> float | None:
        """Seconds without input; None when unknown (never lock on a guess)."""

    def set_timeout(self, seconds: int) -> None:
        """The idle-lock threshold (a push source reports crossing it)."""

    def close(self) -> None:
        """Stop whatever the source runs."""


class Presenter(ABC):
    """Shows the acceptable-use rules and the monitoring notice on a session's screen."""

    @abstractmethod
    def notice(self, session, text: str) -> Any:
        """Show the notice for the whole session; returns a handle for ``close``."""

    @abstractmethod
    def dialog(self, session, text: str, on_accept: Callable[[], None]) -> Any:
        """Show the rules with an "I agree" button; ``on_accept()`` (any thread) when pressed."""

    @abstractmethod
    def close(self, handle) -> None:
        """Take a notice or dialog down."""

    def message(self, session, text: str) -> Any:
        """Show a teacher's one-line message across the screen until ``close``; a presenter
        without a banner of its own shows it as a notice."""
        return self.notice(session, text)


class ScreenButton:
    """The role: shows a labelled button when enabled and nothing covers the screen."""

    name = "button"

    def __init__(self) -> None:
        self.when_pressed: Callable[[], None] | None = None
        self.when_tampered: Callable[[dict], None] | None = None
        self.label: Words | None = None
        self.hold_ms = 0
        self.corner = "bottom-right"
        self.is_enabled = False
        self._covers: set[int] = set()
        self._cover_lock = threading.Lock()

    # ------------------------------------------------------------------ for the runtime
    def enable(self, label: str, hold_ms: int = 0, corner: str = "bottom-right") -> None:
        """Show *label* (with its pictogram) whenever nothing covers the screen."""
        changed = (label, picture_of(label), hold_ms, corner) != (self.label, picture_of(self.label),
                                                                   self.hold_ms, self.corner)
        self.label = label if isinstance(label, Words) else Words(label, "screen_button")
        self.hold_ms, self.corner = hold_ms, corner
        if changed or not self.is_enabled:
            self.is_enabled = True
            self._update()

    def disable(self) -> None:
        self.is_enabled = False
        self._update()

    def cover(self, who, covering: bool) -> None:
        """*who* (a blank or lock overlay) covers the screen now, or stopped covering it."""
        with self._cover_lock:
            before = bool(self._covers)
            (self._covers.add if covering else self._covers.discard)(id(who))
            after = bool(self._covers)
        if before != after:
            self._update()

    @property
    def is_covered(self) -> bool:
        return bool(self._covers)

    @property
    def is_wanted(self) -> bool:
        return self.is_enabled and not self._covers

    def pressed(self) -> None:
        callback = self.when_pressed
        if callback is not None and self.is_wanted:
            callback()

    def windows(self) -> list[int]:
        """X windows of the button (for the blank's check); none elsewhere."""
        return []

    # ------------------------------------------------------------------ for a drawing
    def _update(self) -> None:
        if self.is_wanted:
            self.draw(self.label)
        else:
            self.undraw()

    def draw(self, label: Words) -> None:
        raise NotImplementedError

    def undraw(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Get ready (start the drawing's process hidden)."""

    def close(self) -> None:
        """The agent is stopping."""


@dataclass(frozen=True)
class Desktop:
    """One backend per role, chosen together (agent/desktop/backends.py)."""

    kind: str  # wayland | swaylock | x11 | headless: what was detected or configured
    screen: ScreenBackend
    lock: LockBackend
    idle: IdleSource
    presenter: Presenter
    button: ScreenButton | None = None   # the on-screen report button (agent/desktop/button.py)
    sound: Any = None                    # a SoundPlayer (agent/desktop/sound.py)

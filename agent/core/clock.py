"""Time for the agent: the wall clock the runtime reads, and a fake one for tests.

The runtime never calls ``datetime.now`` directly; it calls ``runtime.clock()``.  That
one seam lets tests move time forward (escalation after 60 s, the timetable's next
lock) without sleeping.  Both clocks return aware UTC datetimes.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Callable


class SystemClock:
    """The real wall clock.  ``is_fake`` lets the runtime wait on real time."""

    is_fake = False

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc)

    def subscribe(self, fn: Callable[[], None]) -> None:
        """Real time needs no wake-ups: the runtime computes its own timeouts."""


class FakeClock:
    """A clock that only moves when told to; ``advance`` wakes the runtime so timers fire."""

    is_fake = True

    def __init__(self, start: datetime | None = None):
        self._now = (start or datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)).astimezone(timezone.utc)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def subscribe(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment.astimezone(timezone.utc)
        for fn in list(self._listeners):
            fn()

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            now = self._now
        for fn in list(self._listeners):
            fn()
        return now

"""Coalescing blocked attempts: one event per domain per window, with a count.

A page that retries a blocked address 200 times must be one entry in the DSL's log, not
200.  Per domain, a window of ``coalesce_seconds`` opens at the first attempt.  The
event for it is sent once the attempts have settled (no repeat for ``settle_seconds``,
so the DSL sees it within a couple of seconds) or when the window closes, whichever is
first.  Repeats that arrive after that event but inside the same window are counted
into one more event when the window closes, so nothing is lost and the log stays short.

``BlockedCoalescer`` is pure logic driven by the caller's clock: tests move time, the
component ticks it.  ``BlockedEvents`` is the filter's use of it: refused names in,
batches out to whoever builds the event, and the names the agent's own checks look up
left out (they are not a pupil's attempts).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterable


@dataclass
class Batch:
    """What one ``blocked`` event reports."""

    domain: str
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass
class _Window:
    end: datetime
    sent: bool = False
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None


class BlockedCoalescer:
    def __init__(self, window_seconds: float, settle_seconds: float = 1.0, max_domains: int = 5000):
        self.window = timedelta(seconds=window_seconds)
        self.settle = timedelta(seconds=min(settle_seconds, window_seconds))
        self.max_domains = max_domains
        self._open: dict[str, _Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, domain: str, now: datetime) -> list[Batch]:
        """Record one attempt; returns batches that had to be flushed early (window turnover, memory bound)."""
        out: list[Batch] = []
        w = self._open.get(domain)
        if w is not None and now >= w.end:
            if w.count:
                out.append(self._take(domain, w))
            del self._open[domain]
            w = None
        if w is None:
            if len(self._open) >= self.max_domains:
                # Bounded memory under a flood of distinct names: flush the oldest window.
                oldest = next(iter(self._open))
                ow = self._open.pop(oldest)
                if ow.count:
                    out.append(self._take(oldest, ow))
            w = self._open[domain] = _Window(end=now + self.window)
        if not w.count:
            w.first = now
        w.count += 1
        w.last = now
        return out

    def due(self, now: datetime) -> list[Batch]:
        """Batches whose event should be sent now; closed windows are forgotten."""
        out: list[Batch] = []
        for domain, w in list(self._open.items()):
            closing = now >= w.end
            if w.count and (closing or (not w.sent and now - w.last >= self.settle)):
                out.append(self._take(domain, w))
            if closing:
                del self._open[domain]
        return out

    def flush_all(self) -> list[Batch]:
        """Everything pending (agent stopping): nothing counted is lost."""
        out = [self._take(d, w) for d, w in self._open.items() if w.count]
        self._open.clear()
        return out

    @staticmethod
    def _take(domain: str, w: _Window) -> Batch:
        batch = Batch(domain, w.count, w.first, w.last)
        w.sent, w.count, w.first, w.last = True, 0, None, None
        return batch


class BlockedEvents:
    """Refused look-ups to ``send(batch)`` calls, coalesced (queue thread, but for
    ``expect`` / ``is_expected``, which any thread may call)."""

    def __init__(self, send: Callable[[Batch], None], window_seconds: float = 60, settle_seconds: float = 1.0):
        self.send = send
        self.coalescer = BlockedCoalescer(window_seconds, settle_seconds)
        self._expected: dict[str, float] = {}   # name -> monotonic time until which it is ours
        self._expected_lock = threading.Lock()

    def configure(self, window_seconds: float, settle_seconds: float) -> None:
        self.coalescer.window = timedelta(seconds=window_seconds)
        self.coalescer.settle = timedelta(seconds=min(settle_seconds, window_seconds))

    @property
    def is_gathering(self) -> bool:
        """Some window is open: attempts are being counted."""
        return len(self.coalescer) > 0

    def add(self, names: Iterable[str], now: datetime) -> bool:
        """Count refused *names*; True when the first window opened (time to tick faster)."""
        idle = not self.is_gathering
        for name in names:
            for batch in self.coalescer.add(name, now):
                self.send(batch)
        return idle and self.is_gathering

    def flush_due(self, now: datetime) -> None:
        for batch in self.coalescer.due(now):
            self.send(batch)

    def flush_all(self) -> None:
        """Everything counted so far (stopping): nothing is lost."""
        for batch in self.coalescer.flush_all():
            self.send(batch)

    def expect(self, names: Iterable[str], seconds: float) -> None:
        """The agent itself looks *names* up for the next *seconds*: not pupil attempts."""
        until = time.monotonic() + seconds
        with self._expected_lock:
            for name in names:
                self._expected[name] = until

    def is_expected(self, name: str) -> bool:
        with self._expected_lock:
            until = self._expected.get(name)
            return until is not None and until > time.monotonic()

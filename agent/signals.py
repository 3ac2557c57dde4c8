"""SIGTERM and SIGINT for a daemon's main thread: the one way the agent, an ingest worker
process and the benches' device processes wait to be told to stop.

Why not ``signal.signal(SIGTERM, lambda *_: event.set())`` and ``event.wait()``: a Python
signal handler runs in the main thread between two bytecodes.  If that thread is inside
``Event.wait`` at a moment it holds the event's lock, ``Event.set`` in the handler waits for
that same lock for ever.  An ingest worker that polled every 0.5 s met it: a SIGTERM (and
the next two) left it hung with its MQTT thread still running, its serve process exited
without it, and it went on reconnecting with its client id and taking a share of the
messages -- found by the suite, an orphaned worker minutes after its test had ended.

Here the handler does nothing in Python: CPython's C-level handler writes the signal's
number to a pipe (``signal.set_wakeup_fd``) and ``wait`` selects on that pipe.  No lock is
taken in a handler, so the signal can come at any instant.  Blocking the signals and
``sigtimedwait`` would also work, but a blocked mask is inherited across ``exec``: every
dnsmasq, browser and helper the agent starts would then ignore SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _noop(signum, frame) -> None:
    """A Python handler must be set for the wakeup pipe to be written; the pipe is the news."""


class StopSignals:
    """Install in the main thread (``signal`` allows no other); then ``wait()`` there.

    ``received`` is the first stop signal's number once one came (``None`` until then)."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.received: int | None = None
        self._previous_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._signals = signals
        self._previous = {sig: signal.signal(sig, _noop) for sig in signals}

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop signal came; False after *timeout* seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.received is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # select() is retried by Python after a signal's handler ran (PEP 475) and the
            # pipe is readable by then.
            readable, _, _ = select.select([self._r], [], [], left)
            if not readable:
                return False
            try:
                data = os.read(self._r, 512)
            except BlockingIOError:
                continue
            for signum in data:
                if signum in self._signals:
                    self.received = signum
                    break
            # Another signal with a Python handler of its own also writes here: keep waiting.
        return True

    def close(self) -> None:
        """Put back the handlers and wakeup fd there were before (tests install this more than once)."""
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._r)
        os.close(self._w)

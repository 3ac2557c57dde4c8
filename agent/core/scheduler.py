"""The runtime's queue thread: jobs posted from any thread, timers, deferred housekeeping.

Everything that changes agent state runs on this one thread, so components need no
locks of their own; threads at the edges (gpiozero's pin thread, paho's network thread,
the control socket, the overlay readers) hand work over with ``post(fn, *args)``, or
``call(fn, *args)`` to wait for the result.

Timers: ``call_later``/``call_at`` run on the runtime clock (a ``FakeClock`` in tests,
so policy times can be stepped).  ``defer(seconds, ...)`` runs after real seconds
whatever the clock says: it is for housekeeping (agent/uplink/link.py's settling, the
report's evidence), never for policy.  Scheduling wakes the queue thread only when the
job is due before the thread's next turn, and only once however many are scheduled:
several jobs are scheduled at once after a press, and each extra wake-up was an extra
turn of this thread beside the broker and the teacher's client.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["Scheduler", "Timer", "safely"]

_STOP = object()
# Longest the queue thread sleeps without re-reading the wall clock (NTP steps, suspend).
_MAX_WAIT = 30.0


class Timer:
    """A job due at a clock time; ``cancel()`` it any time before it runs."""

    __slots__ = ("due", "seq", "fn", "args", "cancelled")

    def __init__(self, due: datetime, seq: int, fn: Callable, args: tuple):
        self.due, self.seq, self.fn, self.args, self.cancelled = due, seq, fn, args, False

    def __lt__(self, other: "Timer") -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


def safely(fn: Callable, args: tuple = ()) -> None:
    """Run ``fn(*args)``; log, do not raise, if it fails: one failing job must not stop the agent."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        log.exception("runtime job %s failed", getattr(fn, "__qualname__", fn))


class Scheduler:
    """The queue thread (``start()`` / ``stop()``) and the jobs waiting for it."""

    def __init__(self, clock, name: str = "runtime"):
        self.clock = clock
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._timers: list[Timer] = []
        self._deferred: list[tuple[float, int, Callable, tuple]] = []  # (monotonic due, seq, fn, args)
        self._wake_pending = False
        self._wake_at = 0.0  # monotonic time of the queue thread's next turn
        self._timer_lock = threading.Lock()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        clock.subscribe(self._wake)  # a fake clock's advance() wakes us to run what fell due

    # ------------------------------------------------------------------ jobs
    def post(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the queue thread (from any thread)."""
        self._queue.put((fn, args))

    def call(self, fn: Callable, *args, timeout: float = 10.0):
        """Run ``fn(*args)`` on the queue thread and return its result (from another thread;
        on the queue thread itself, or before it starts, it runs at once)."""
        if threading.current_thread() is self._thread or self._thread is None:
            return fn(*args)
        fut: Future = Future()

        def run():
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001
                fut.set_exception(exc)
        self.post(run)
        return fut.result(timeout)

    def call_at(self, when: datetime, fn: Callable, *args) -> Timer:
        """Run ``fn(*args)`` on the queue thread once the clock reaches *when*."""
        timer = Timer(when, next(self._seq), fn, args)
        with self._timer_lock:
            heapq.heappush(self._timers, timer)
            early = self.clock.is_fake or (when - self.clock()).total_seconds() < self._wake_at - time.monotonic()
        if early:
            self._wake()  # otherwise the thread's next turn comes first and sees it
        return timer

    def call_later(self, seconds: float, fn: Callable, *args) -> Timer:
        """Run ``fn(*args)`` on the queue thread *seconds* from now on the clock."""
        return self.call_at(self.clock() + timedelta(seconds=seconds), fn, *args)

    def defer(self, seconds: float, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the queue thread after *seconds* of real time."""
        with self._timer_lock:
            heapq.heappush(self._deferred, (time.monotonic() + seconds, next(self._seq), fn, args))
            early = seconds < self._wake_at - time.monotonic()
        if early:
            self._wake()

    @property
    def is_idle(self) -> bool:
        """No deferred housekeeping is waiting (tests and benches: the agent has settled)."""
        with self._timer_lock:
            return not self._deferred

    def on_queue_thread(self) -> bool:
        """Whether the caller is running on the queue thread."""
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------------ the thread
    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the queue finish what is already posted, then end the thread."""
        if self.is_running:
            self._queue.put((_STOP, ()))
            self._thread.join(timeout)

    def _wake(self) -> None:
        # One token is enough: the loop reads every timer after taking it.
        if not self._wake_pending:
            self._wake_pending = True
            self._queue.put((None, ()))

    def _next_wait(self) -> float | None:
        with self._timer_lock:
            while self._timers and self._timers[0].cancelled:
                heapq.heappop(self._timers)
            if not self._timers:
                wait = None if self.clock.is_fake else _MAX_WAIT
            elif self.clock.is_fake:
                # Fake time moves only by advance(), which wakes us; but a due timer runs now.
                wait = 0 if self._timers[0].due <= self.clock() else None
            else:
                wait = max(0.0, min(_MAX_WAIT, (self._timers[0].due - self.clock()).total_seconds()))
            if self._deferred:
                real = max(0.0, self._deferred[0][0] - time.monotonic())
                wait = real if wait is None else min(wait, real)
            self._wake_at = float("inf") if wait is None else time.monotonic() + wait
            return wait

    def _run_due(self) -> None:
        now = self.clock()
        while True:
            with self._timer_lock:
                if not self._timers or self._timers[0].due > now:
                    break
                timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                safely(timer.fn, timer.args)
        moment = time.monotonic()
        while True:
            with self._timer_lock:
                if not self._deferred or self._deferred[0][0] > moment:
                    return
                _, _, fn, args = self._deferred[0]
            safely(fn, args)
            with self._timer_lock:  # popped only now, so is_idle covers a job that is running
                heapq.heappop(self._deferred)

    def _loop(self) -> None:
        while True:
            try:
                fn, args = self._queue.get(timeout=self._next_wait())
            except queue.Empty:
                fn, args = None, ()
            if fn is _STOP:
                return
            if fn is None:
                self._wake_pending = False  # before reading the timers: see _wake
            else:
                safely(fn, args)
            self._run_due()

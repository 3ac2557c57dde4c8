"""The blank screen as the report sees it: hide whatever upset the pupil, show a calm
message, until staff clear it.

DESIGN rule 1, "blank first, network second": ``Screen.blank()`` is called on the
button's own thread before the alert touches the network, and every backend returns
without waiting on anything but a local pipe or process start.

The drawing is the desktop's ``ScreenBackend`` (agent/desktop/base.py), passed in: the
runtime's desktop (agent/desktop/backends.py chooses it) or, by default, a headless one.
No backend ever captures the screen.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..desktop.base import ScreenBackend
from ..desktop.headless import HeadlessScreen
from ..desktop.pin import verify_pin

log = logging.getLogger(__name__)

__all__ = ["Screen"]


class Screen:
    """The device's screen as the report sees it.

    ``blank(message)``, ``set_message(message)``, ``unblank()``; ``is_blank``, ``message``,
    ``blank_issued_at`` (``time.perf_counter_ns()`` when the last blank was issued, for the
    latency bench).  ``when_cleared(by)`` is called when staff clear it on the device
    (the PIN), from the overlay's reader thread.
    """

    def __init__(self, backend: ScreenBackend | None = None):
        self.backend = backend if backend is not None else HeadlessScreen()
        self._lock = threading.Lock()
        self.is_blank = False
        self.message: str | None = None
        self.blank_issued_at: int | None = None
        self.when_cleared: Callable[[str], None] | None = None
        self.backend.when_cleared = self.staff_cleared

    @property
    def backend_name(self) -> str:
        return self.backend.description

    def start(self) -> None:
        self.backend.start()

    def blank(self, message: str) -> None:
        with self._lock:
            self.blank_issued_at = time.perf_counter_ns()
            self.is_blank = True
            self.message = message
            try:
                self.backend.show(message)
            except Exception:  # noqa: BLE001 - the state is recorded; the report still goes out
                log.exception("screen backend %s failed to blank", self.backend.name)

    def set_message(self, message: str) -> None:
        with self._lock:
            self.message = message
            if self.is_blank:
                try:
                    self.backend.set_message(message)
                except Exception:  # noqa: BLE001
                    log.exception("screen backend %s failed to change the message", self.backend.name)

    def unblank(self) -> None:
        with self._lock:
            self.is_blank = False
            self.message = None
            try:
                self.backend.hide()
            except Exception:  # noqa: BLE001
                log.exception("screen backend %s failed to unblank", self.backend.name)

    def staff_cleared(self, by: str = "staff-pin") -> None:
        """The screen was cleared on the device itself (PIN accepted)."""
        with self._lock:
            self.is_blank = False
            self.message = None
        if self.when_cleared is not None:
            self.when_cleared(by)

    def try_pin(self, pin: str, stored_hash: str | None) -> bool:
        """Headless equivalent of typing the PIN on the overlay."""
        if self.is_blank and verify_pin(pin, stored_hash):
            try:
                self.backend.hide()
            finally:
                self.staff_cleared("staff-pin")
            return True
        return False

    def close(self) -> None:
        self.backend.close()

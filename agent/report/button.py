"""The "I saw something" button, its keyboard/switch twin, and the button's LED.

gpiozero idioms throughout: device nouns, ``when_pressed``, ``is_pressed``/``is_lit``
and a pluggable pin factory (``pin_factory`` in agent.yaml, else gpiozero's own
``GPIOZERO_PIN_FACTORY``; tests use ``MockFactory``).

The key path: pupils who cannot use the GPIO button (and PCs without GPIO) press a
configured key or an accessibility switch that sends one.  The desktop binds that key
(labwc ``rc.xml`` keybind, or the X11 session's hotkey tool) to ``classroom-agent press
--source key``, which reaches ``ReportButton.press`` through the control socket.  Every
source ends in the same ``when_pressed(source)`` callback.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

SOURCES = ("button", "key", "control")



class ReportButton:
    """The report button on *pin* (pull-up: wire the switch between the pin and ground).

    ``when_pressed`` is called as ``when_pressed(source)`` on gpiozero's thread for the
    GPIO button, or on the caller's thread for ``press(source)``; it must not block.
    ``pin=None`` makes a button with no GPIO (PCs): only the key/control path.
    """

    def __init__(self, pin=None, *, bounce_ms: int = 30, pin_factory=None,
                 when_pressed: Callable[[str], None] | None = None):
        self.when_pressed = when_pressed
        self.presses = 0
        self._lock = threading.Lock()
        self._button = None
        if pin is not None:
            from gpiozero import Button

            # bounce_time keeps one push from being several reports (20-50 ms).
            self._button = Button(pin, pull_up=True, bounce_time=max(20, min(50, bounce_ms)) / 1000,
                                  pin_factory=pin_factory)
            self._button.when_pressed = lambda: self.press("button")

    @property
    def pin(self):
        return self._button.pin if self._button is not None else None

    @property
    def is_pressed(self) -> bool:
        return bool(self._button is not None and self._button.is_pressed)

    def press(self, source: str = "control") -> None:
        """A press from any source: the GPIO edge, the report key, the control socket."""
        with self._lock:
            self.presses += 1
        callback = self.when_pressed
        if callback is not None:
            callback(source if source in SOURCES else "control")

    def close(self) -> None:
        if self._button is not None:
            self._button.close()
            self._button = None


class StatusLED:
    """The button's LED: steady while a report is raised, slow pulse once acknowledged,
    off when cleared.  ``state`` is 'off' | 'raised' | 'acknowledged'."""

    def __init__(self, pin, *, pin_factory=None):
        from gpiozero import LED

        self._led = LED(pin, pin_factory=pin_factory)
        self.state = "off"

    @property
    def is_lit(self) -> bool:
        return bool(self._led.is_lit)

    @property
    def is_blinking(self) -> bool:
        return self.state == "acknowledged"

    def show(self, alert_state: str | None) -> None:
        """Follow an alert state (raised/escalated -> on, acknowledged -> pulse, else off)."""
        if alert_state in ("raised", "escalated"):
            self.state = "raised"
            self._led.on()
        elif alert_state == "acknowledged":
            self.state = "acknowledged"
            self._led.blink(on_time=1, off_time=1)
        else:
            self.state = "off"
            self._led.off()

    def close(self) -> None:
        self._led.close()

"""The "I saw something" button, its keyboard/switch and on-screen twins, and the button's LED.

gpiozero idioms throughout: device nouns, ``when_pressed``, ``is_pressed``/``is_lit``
and a pluggable pin factory (``pin_factory`` in agent.yaml, else gpiozero's own
``GPIOZERO_PIN_FACTORY``; tests use ``MockFactory``).

The key path: pupils who cannot use the GPIO button (and PCs without GPIO) press a
configured key or an accessibility switch that sends one.  The desktop binds that key
(labwc ``rc.xml`` keybind, or the X11 session's hotkey tool) to ``classroom-agent press
--source key``, which reaches ``ReportButton.press`` through the control socket.  Every
source ends in the same ``when_pressed(source)`` callback.

A single switch (SEND pupils): a USB switch interface that sends one key code is the
key path (docs/deploy-pi.md, "A single switch"): set the interface to send the device's
``report_key`` (F13 by convention: no program uses it), and the desktop's binding does
the rest.

``press_hold_ms`` (the device's hardware settings): a press counts only once the GPIO
button has been held that long (gpiozero's ``hold_time`` and ``when_held``), or the
on-screen button (its drawing measures the hold itself), so a brush of a hand or a sleeve
does nothing.  The key path has no release to measure: a switch interface's own
"acceptance delay" does that job there.

``OnScreenButton`` is the on-screen twin's component (source ``screen``): it shows the
desktop's ``ScreenButton`` (agent/desktop/button.py) with the key stage's words where
the device has no GPIO button, or wherever the room's file asks for it.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

SOURCES = ("button", "key", "control", "screen")



class ReportButton:
    """The report button on *pin* (pull-up: wire the switch between the pin and ground).

    ``when_pressed`` is called as ``when_pressed(source)`` on gpiozero's thread for the
    GPIO button, or on the caller's thread for ``press(source)``; it must not block.
    ``pin=None`` makes a button with no GPIO (PCs): only the key/control path.
    """

    def __init__(self, pin=None, *, bounce_ms: int = 30, pin_factory=None, hold_ms: int = 0,
                 when_pressed: Callable[[str], None] | None = None):
        self.when_pressed = when_pressed
        self.presses = 0
        self.hold_ms = hold_ms
        self._lock = threading.Lock()
        self._button = None
        if pin is not None:
            from gpiozero import Button

            # bounce_time keeps one push from being several reports (20-50 ms).
            self._button = Button(pin, pull_up=True, bounce_time=max(20, min(50, bounce_ms)) / 1000,
                                  hold_time=max(hold_ms, 1) / 1000, pin_factory=pin_factory)
            if hold_ms > 0:
                # Held long enough: a press (once per hold; gpiozero's hold_repeat is off).
                self._button.when_held = lambda: self.press("button")
            else:
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


class OnScreenButton:
    """Runtime component (name 'screen-button'): the on-screen report button.

    Shown (``backend.enable``) with the key stage's ``screen_button`` words and the
    device's ``press_hold_ms`` and ``screen_button_corner`` when the device's
    ``screen_button`` is on, or not set and there is no GPIO button; a press calls
    ``runtime.press("screen")`` on the drawing's reader thread, like a GPIO edge."""

    name = "screen-button"

    def __init__(self, backend):
        self.backend = backend
        self.runtime = None

    @property
    def is_enabled(self) -> bool:
        return self.backend.is_enabled

    def start(self, runtime) -> None:
        self.runtime = runtime
        self.backend.when_pressed = lambda: runtime.press("screen")
        try:
            self.backend.start()
        except Exception:  # noqa: BLE001 - the GPIO and key paths still work
            log.exception("the on-screen report button could not start")

    def stop(self) -> None:
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001
            log.exception("closing the on-screen report button failed")

    def on_policy(self, policy) -> None:
        hardware = policy.hardware
        wanted = hardware.screen_button if hardware.screen_button is not None else hardware.button_pin is None
        if not wanted:
            self.backend.disable()
            return
        self.backend.enable(self.runtime.words("screen_button"), hardware.press_hold_ms,
                            hardware.screen_button_corner)

    def on_command(self, cmd: dict) -> bool:
        return False

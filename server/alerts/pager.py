"""The staff-room pager: a buzzer and an LED on while an alert is unanswered, and a button
that says "I'm coming"."""

from __future__ import annotations

from typing import Callable


class Pager:
    """Staff-room pager: buzzer and LED on while an alert is unanswered; its button acknowledges.

    gpiozero devices with a pluggable pin factory (MockFactory in tests)."""

    def __init__(self, *, buzzer_pin=None, led_pin=None, button_pin=None, pin_factory=None,
                 on_ack: Callable[[], object] | None = None) -> None:
        from gpiozero import LED, Button, Buzzer

        self.buzzer = Buzzer(buzzer_pin, pin_factory=pin_factory) if buzzer_pin is not None else None
        self.led = LED(led_pin, pin_factory=pin_factory) if led_pin is not None else None
        self.button = Button(button_pin, pin_factory=pin_factory) if button_pin is not None else None
        if self.button is not None:
            self.button.when_pressed = lambda: on_ack and on_ack()

    @property
    def is_active(self) -> bool:
        return bool((self.buzzer and self.buzzer.is_active) or (self.led and self.led.is_lit))

    def update(self, alarming: bool) -> None:
        for dev in (self.buzzer, self.led):
            if dev is not None:
                dev.on() if alarming else dev.off()

    def close(self) -> None:
        for dev in (self.buzzer, self.led, self.button):
            if dev is not None:
                dev.close()

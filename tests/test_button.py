"""The report button (gpiozero MockFactory), its key/control twin, and the status LED."""

import pytest
from gpiozero.pins.mock import MockFactory

from agent.report.button import ReportButton, StatusLED
from agent.config.pins import make_pin_factory
from agent.errors import UserError


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.close()


def test_gpio_press_calls_when_pressed_with_source(factory):
    seen = []
    button = ReportButton(17, bounce_ms=30, pin_factory=factory, when_pressed=seen.append)
    assert not button.is_pressed
    factory.pin(17).drive_low()          # pull-up: pressing connects the pin to ground
    assert button.is_pressed
    assert seen == ["button"]
    factory.pin(17).drive_high()
    assert not button.is_pressed
    assert button.presses == 1
    button.close()


def test_bounce_time_is_configured_and_clamped(factory):
    # MockPin stores the bounce time but does not simulate bouncing; the real pin
    # drivers (lgpio) filter with it.  Check the value reaches the pin, in range.
    for asked, expected in ((30, 0.03), (5, 0.02), (200, 0.05)):
        button = ReportButton(17, bounce_ms=asked, pin_factory=factory)
        assert factory.pin(17).bounce == pytest.approx(expected)
        button.close()


def test_key_and_control_presses_share_the_callback():
    seen = []
    button = ReportButton(None, when_pressed=seen.append)   # a PC: no GPIO at all
    assert button.pin is None and not button.is_pressed
    button.press("key")
    button.press("control")
    button.press("something-else")       # unknown sources are reported as control
    assert seen == ["key", "control", "control"]
    assert button.presses == 3


def test_led_follows_alert_states(factory):
    led = StatusLED(27, pin_factory=factory)
    assert not led.is_lit and led.state == "off"
    led.show("raised")
    assert led.is_lit and led.state == "raised" and not led.is_blinking
    led.show("escalated")
    assert led.is_lit and led.state == "raised"
    led.show("acknowledged")
    assert led.is_blinking and led.state == "acknowledged"
    led.show("cleared")
    assert not led.is_lit and led.state == "off" and not led.is_blinking
    assert factory.pin(27).state == 0
    led.close()


def test_pin_factory_by_name():
    assert make_pin_factory(None) is None
    assert isinstance(make_pin_factory("mock"), MockFactory)
    with pytest.raises(UserError, match=r"pin_factory: unknown gpiozero pin factory 'gpio-magic' \(known: .*mock"):
        make_pin_factory("gpio-magic")

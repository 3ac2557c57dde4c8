"""The on-screen report button under headless sway (issue 16 item 4), against the real agent.

The runtime of a classroom PC with no GPIO button, on a real Wayland desktop (sway, as an
unprivileged user): the button is a layer-shell surface of the agent's own user in the
bottom-right corner, above the pupil's windows.  A pointer the pupil's session owns (a
virtual one through the compositor: wayland_fixtures.VirtualPointer) presses it: a brush shorter than
``press_hold_ms`` does nothing, a hold raises the alert (source ``screen``) and the blank
covers the screen while the button hides; it comes back once staff clear the alert.
"""

from __future__ import annotations

import pytest

from agent.core.runtime import Runtime
from agent.desktop.backends import make_desktop
from agent.desktop.wayland import wayland_overlay_available
from runtime_fixtures import bootstrap
from services import require_binary, skip_or_fail, wait_until
from test_screen_button import DEVICE, config_with
from wayland_fixtures import VirtualPointer, sway_session  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WIDTH, HEIGHT, MARGIN = 300, 120, 16
CENTRE = (800 - WIDTH - MARGIN + WIDTH // 2, 600 - HEIGHT - MARGIN + HEIGHT // 2)


@pytest.fixture
def agent(sway_session, tmp_path):
    if not wayland_overlay_available():
        skip_or_fail("the Wayland overlay needs python3-gi and gir1.2-gtklayershell-0.1")
    require_binary("wayvnc")
    boot = bootstrap(tmp_path, device=DEVICE, config_dir=str(config_with(tmp_path, "{press_hold_ms: 600}")),
                     screen_backend="wayland")
    desktop = make_desktop("wayland", session_fn=lambda: sway_session, state_dir=tmp_path)
    rt = Runtime(boot, desktop=desktop, connect=False, control=False, components=[])
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def mouse(sway_session, tmp_path):
    pointer = VirtualPointer(sway_session, tmp_path / "wayvnc.log")
    try:
        yield pointer
    finally:
        pointer.close()


def test_the_layer_shell_button_is_pressed_by_a_hold_not_a_brush(agent, sway_session, mouse):
    button = agent.desktop.button
    wait_until(lambda: (button.drawn() or {}).get("shown"), timeout=30, message="the on-screen button never showed")
    drawn = button.drawn()
    assert (drawn["message"], drawn["picture"], drawn["hold_ms"], drawn["corner"]) == \
        ("I saw something", "screen_button", 600, "bottom-right")

    mouse.move(*CENTRE)
    mouse.down()
    mouse.up()
    wait_until(lambda: button.brushes >= 1, timeout=10, message="the button never felt the brush")
    assert agent.report.alert is None and not agent.screen.is_blank

    mouse.down()
    try:
        alert = wait_until(lambda: agent.report.alert, timeout=15, message="holding the button raised nothing")
    finally:
        mouse.up()
    assert (alert["source"], alert["state"]) == ("screen", "raised")
    blank = agent.desktop.screen
    wait_until(lambda: (blank.drawn() or {}).get("shown"), timeout=15, message="the blank never covered the screen")
    assert blank.drawn()["picture"] == "report_raised"
    wait_until(lambda: not (button.drawn() or {}).get("shown"), timeout=10, message="the button stayed over the blank")

    agent.call(agent.report.on_command, {"cmd": "clear", "alert_id": alert["id"], "by": "a.jones"})
    wait_until(lambda: (button.drawn() or {}).get("shown"), timeout=15, message="the button did not come back")
    assert not (blank.drawn() or {}).get("shown")

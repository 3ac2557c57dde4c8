"""The on-screen "I saw something" button (issue 16 item 4), against the real agent.

Under Xvfb: the runtime (report + on-screen button components, the guard) of a classroom
PC with no GPIO button shows the button in a corner of the pupil's display, as the
agent's own user.  The pupil (``nobody``, with their own X cookie) presses it with the
real pointer through xdotool: a brush shorter than ``press_hold_ms`` does nothing, a
hold raises the alert (source ``screen``) and blanks the screen, and the button hides
under the blank until staff clear it.  The pupil's X clients unmapping or moving it get
it put back, reported as ``tamper`` with ``screen: button``.

Under headless sway (tests/test_screen_button_wayland.py has the Wayland half).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.core.runtime import Runtime
from agent.desktop.backends import make_desktop
from agent.desktop.session import Session
from agent.policy.guard import Guard
from lock_fixtures import x11_session  # noqa: F401 - a fixture
from runtime_fixtures import CONFIG_DIR, bootstrap
from services import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]

DEVICE = "1a-pc-01"   # the teacher-desk PC of room 1a: no GPIO button, so the on-screen one
WIDTH, HEIGHT, MARGIN = 300, 120, 16
CENTRE = (1024 - WIDTH - MARGIN + WIDTH // 2, 768 - HEIGHT - MARGIN + HEIGHT // 2)


def config_with(tmp_path, hardware: str):
    tree = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, tree)
    room = tree / "rooms" / "1a.yaml"
    room.write_text(room.read_text().replace("hardware: {report_key: ctrl+alt+r}", f"hardware: {hardware}"))
    return tree


def xwininfo(session, *argv) -> dict:
    out = subprocess.run(["xwininfo", *argv], capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin", "DISPLAY": session.display,
                              "XAUTHORITY": str(session.agent_cookie)}).stdout
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def button_window(session) -> str | None:
    ids = session.pupil("xdotool", "search", "--name", "^I saw something$", check=False).stdout.split()
    return ids[0] if ids else None


def button_in_its_corner(session) -> bool:
    window = button_window(session)
    if window is None:
        return False
    info = xwininfo(session, "-id", window)
    return (info.get("Map State"), info.get("Absolute upper-left X"), info.get("Absolute upper-left Y"),
            info.get("Width"), info.get("Height")) == ("IsViewable", str(1024 - WIDTH - MARGIN),
                                                       str(768 - HEIGHT - MARGIN), str(WIDTH), str(HEIGHT))


class Agent:
    """The real runtime on the pupil's X display, with the guard to report tamper."""

    def __init__(self, session, tmp_path, monkeypatch, hardware: str):
        monkeypatch.setenv("DISPLAY", session.display)
        monkeypatch.delenv("XAUTHORITY", raising=False)
        pupil = Session(id="7", user=session.user, uid=session.uid, type="x11", display=session.display,
                        seat="seat0")
        boot = bootstrap(tmp_path, device=DEVICE, config_dir=str(config_with(tmp_path, hardware)),
                         screen_backend="x11")
        desktop = make_desktop("x11", session_fn=lambda: pupil, state_dir=tmp_path)
        self.guard = Guard(bypass_processes=[], watch_mounts=[], use_watchdog=False, poll_seconds=3600)
        self.rt = Runtime(boot, desktop=desktop, connect=False, control=False, components=[self.guard])
        self.rt.start()
        self.button = desktop.button

    def rt_events(self, kind: str) -> list[dict]:
        """Events of *kind* the agent has stored to send (it is not connected)."""
        import json

        return [e for e in (json.loads(p.payload) for p in self.rt.outbox.pending() if p.kind == "event")
                if e.get("type") == kind]

    def close(self):
        self.rt.stop()


@pytest.fixture
def agent(x11_session, tmp_path, monkeypatch, request):
    x11_session.grant()  # the session lets the agent's user draw (scripts/session-grant.sh)
    a = Agent(x11_session, tmp_path, monkeypatch, getattr(request, "param", "{press_hold_ms: 600}"))
    try:
        yield a
    finally:
        a.close()


def test_the_button_shows_in_its_corner_and_a_brush_does_nothing_but_a_hold_reports(agent, x11_session):
    session = x11_session
    wait_until(lambda: button_in_its_corner(session), timeout=30, message="the on-screen button never showed")
    drawn = agent.button.drawn()
    assert drawn["message"] == "I saw something" and drawn["picture"] == "screen_button"
    assert drawn["hold_ms"] == 600

    # A brush: pressed and let go at once, as a sleeve would.
    x, y = map(str, CENTRE)
    session.pupil("xdotool", "mousemove", x, y, "click", "1")
    wait_until(lambda: agent.button.brushes >= 1, timeout=10, message="the button never felt the brush")
    assert agent.rt.report.alert is None and not agent.rt.screen.is_blank

    # A hold: the press counts once held press_hold_ms, while the finger is still down.
    session.pupil("xdotool", "mousemove", x, y, "mousedown", "1")
    try:
        alert = wait_until(lambda: agent.rt.report.alert, timeout=15, message="holding the button raised nothing")
    finally:
        session.pupil("xdotool", "mouseup", "1")
    assert alert["source"] == "screen" and alert["state"] == "raised"
    assert agent.rt.screen.is_blank and agent.rt.screen.message == "Well done for telling. A grown-up is coming."
    assert agent.rt.screen.message.picture == "report_raised"
    # The button hides under the blank, and comes back once staff clear it.
    wait_until(lambda: not button_in_its_corner(session), timeout=10, message="the button stayed over the blank")
    agent.rt.call(agent.rt.report.on_command, {"cmd": "clear", "alert_id": alert["id"], "by": "a.jones"})
    wait_until(lambda: button_in_its_corner(session), timeout=15, message="the button did not come back")
    assert agent.rt.report.alert is None


@pytest.mark.parametrize("attack,what", [
    (("windowunmap",), "button_unmapped"),
    (("windowmove", "0", "0"), "button_moved"),
])
def test_a_pupils_x_client_cannot_take_the_button_away(agent, x11_session, attack, what):
    session = x11_session
    wait_until(lambda: button_in_its_corner(session), timeout=30, message="the on-screen button never showed")
    window = button_window(session)
    session.pupil("xdotool", attack[0], window, *attack[1:])
    wait_until(lambda: button_in_its_corner(session), timeout=10, message=f"{attack[0]} took the button away")
    tamper = wait_until(lambda: [e for e in agent.rt_events("tamper") if e.get("screen") == "button"],
                        timeout=10, message="no tamper event for the button")
    assert tamper[0]["what"].startswith(what[:len("button_")]) and what in tamper[0]["what"]
    assert tamper[0]["action"] == "restored"

"""A teacher's room commands on the REAL agent runtime over a real mosquitto: "Eyes on me"
(a timed lock with the teacher's words, ending by itself on the runtime's own timer), a
one-line message on the pupil's screen, and the ``cmd_result`` every command with an id is
answered with (done, refused with the reason, unsupported), as the collector sees them on
the device's event topic."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from gpiozero.pins.mock import MockFactory

from agent import protocol
from agent.core.clock import FakeClock
from agent.core.runtime import Runtime
from agent.desktop.headless import HeadlessIdle, HeadlessLock
from agent.desktop.session import Session
from agent.policy.lock import LockComponent
from agent.policy.sessions import SessionsComponent
from agent.policy.teacher_message import TeacherMessage
from agent.report.screen import Screen
from runtime_fixtures import PREFIX, Subscriber, bootstrap, publish
from services import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def device(tmp_path, mosquitto):
    clock = FakeClock(datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc))  # a Tuesday lesson
    pins = MockFactory()
    table = [Session(id="c1", user="amira.k", uid=1001, type="x11", display=":0", seat="seat0")]
    sessions = SessionsComponent(reader=lambda: list(table), poll_seconds=3600)
    lock = LockComponent(backend=HeadlessLock(), idle=HeadlessIdle(clock))
    message = TeacherMessage(session=sessions.desktop)
    rt = Runtime(bootstrap(tmp_path, mosquitto), clock=clock, screen=Screen(), pin_factory=pins, sessions=sessions,
                 components=[lock, message])
    sub = Subscriber(mosquitto)
    rt.start()
    sub.wait_for("status", state="online")
    yield rt, clock, sub, table
    sub.close()
    rt.stop()
    pins.close()


def send(mosquitto, **cmd) -> str:
    cmd.setdefault("id", protocol.new_id())
    protocol.validate("cmd", cmd)  # exactly what the collector may send
    publish(mosquitto, f"{PREFIX}/cmd", cmd)
    return cmd["id"]


def component(rt, name):
    return next(c for c in rt.components if getattr(c, "name", None) == name)


def test_eyes_on_me_locks_with_the_words_answers_and_unlocks_itself(device, mosquitto):
    rt, clock, sub, _ = device
    lock = component(rt, "lock")
    cmd_id = send(mosquitto, cmd="lock", by="m.khan", minutes=2, message="Eyes on me, please")
    result = sub.wait_for("event", type="cmd_result", cmd_id=cmd_id)
    assert (result["cmd"], result["result"], result["by"]) == ("lock", "done", "m.khan")
    assert "error" not in result
    ev = sub.wait_for("event", type="lock", by="m.khan")
    assert ev["until"] == "2026-11-24T10:02:00.000Z" and ev["reason"] == "staff"
    assert lock.is_locked and lock.backend.message == "Eyes on me, please"
    # Its own answer comes after the lock it reports on (one device's events keep their order).
    kinds = [p["type"] for p in sub.payloads("event") if p["type"] in ("lock", "cmd_result")]
    assert kinds == ["lock", "cmd_result"]
    # Two minutes later, on the runtime's own timer, with no command at all.
    lock.idle.touch()
    clock.advance(120)
    ev = sub.wait_for("event", type="unlock", reason="expired")
    assert ev["by"] == "m.khan" and ev["previous"] == "staff"
    assert not lock.is_locked


def test_a_message_reaches_the_pupils_screen_and_goes_by_itself(device, mosquitto):
    rt, clock, sub, _ = device
    presenter = rt.desktop.presenter
    sub.wait_for("event", type="login", user="amira.k")
    cmd_id = send(mosquitto, cmd="message", by="m.khan", text="Tidy up in two minutes", seconds=30)
    assert sub.wait_for("event", type="cmd_result", cmd_id=cmd_id)["result"] == "done"
    shown = ("message", "c1", "Tidy up in two minutes")
    assert shown in presenter.shown
    handle = ("message", "c1", presenter.shown.index(shown) + 1)  # what HeadlessPresenter.message returned
    assert handle not in presenter.closed
    clock.advance(29)
    rt.call(lambda: None)
    assert handle not in presenter.closed
    clock.advance(1)
    wait_until(lambda: handle in presenter.closed, 5, message="the message stayed up")
    # A newer message replaces the one showing at once.
    first = send(mosquitto, cmd="message", by="m.khan", text="Line up by the door")
    second = send(mosquitto, cmd="message", by="m.khan", text="Coats on")
    sub.wait_for("event", type="cmd_result", cmd_id=second)
    assert sub.wait_for("event", type="cmd_result", cmd_id=first)["result"] == "done"
    older = ("message", "c1", presenter.shown.index(("message", "c1", "Line up by the door")) + 1)
    assert older in presenter.closed and presenter.shown[-1] == ("message", "c1", "Coats on")


def test_refused_and_unsupported_commands_say_why(device, mosquitto):
    rt, clock, sub, table = device
    sub.wait_for("event", type="login", user="amira.k")
    table.clear()  # the pupil logs out
    rt.call(component(rt, "sessions").refresh)
    sub.wait_for("event", type="logout", user="amira.k")
    refused = send(mosquitto, cmd="message", by="m.khan", text="Anyone there?")
    result = sub.wait_for("event", type="cmd_result", cmd_id=refused)
    assert result["result"] == "refused" and result["error"] == "nobody is logged in on this device"
    # No filter on this device: an allow is answered, not left for the teacher to guess.
    unsupported = send(mosquitto, cmd="allow", by="m.khan", domain="example.org", minutes=10)
    result = sub.wait_for("event", type="cmd_result", cmd_id=unsupported)
    assert result["result"] == "unsupported" and "allow" in result["error"]
    # A command without an id (a collector older than cmd_result) is acted on, not answered.
    publish(mosquitto, f"{PREFIX}/cmd", {"cmd": "lock", "by": "j.smith"})
    sub.wait_for("event", type="lock", by="j.smith")
    answered = {p["cmd_id"] for p in sub.payloads("event") if p["type"] == "cmd_result"}
    assert answered == {refused, unsupported}
    for payload in sub.payloads("event"):
        protocol.validate("event", payload)


def test_a_held_device_answers_a_teachers_unlock_refused_and_stays_held(device, mosquitto):
    # The DSL's hold (agent/policy/lock.py, issue 15) outranks the teacher's controls: "Eyes on
    # me" goes underneath it (done), an unlock is refused with the reason, and the hold stays.
    rt, clock, sub, _ = device
    lock = component(rt, "lock")
    hold_id = protocol.new_id()
    publish(mosquitto, f"{PREFIX}/cmd", {"cmd": "hold", "by": "s.patel", "hold_id": hold_id,
                                         "incident": protocol.new_id()})
    sub.wait_for("event", type="lock", reason="hold")
    eyes = send(mosquitto, cmd="lock", by="m.khan", minutes=2, message="Eyes on me, please")
    assert sub.wait_for("event", type="cmd_result", cmd_id=eyes)["result"] == "done"
    assert lock.current.reason == "hold" and lock.backend.message.pin is False
    unlock = send(mosquitto, cmd="unlock", by="m.khan")
    result = sub.wait_for("event", type="cmd_result", cmd_id=unlock)
    assert result["result"] == "refused" and "on hold" in result["error"]
    assert sub.wait_for("event", type="unlock_refused", by="m.khan")["how"] == "unlock"
    assert lock.is_held and lock.backend.is_locked
    assert [p for p in sub.payloads("event") if p["type"] == "unlock"] == []

"""The lock, sessions and guard components inside the REAL agent runtime, against a real
mosquitto: a teacher's lock/unlock commands over MQTT, the timetable lock firing from the
runtime's own timer on a fake clock, a bypass tool ended, and the events arriving on the
device's event topic as the server would see them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from gpiozero.pins.mock import MockFactory

from agent.core.clock import FakeClock
from agent.core.runtime import Runtime
from agent.desktop.headless import HeadlessIdle, HeadlessLock
from agent.desktop.session import Session
from agent.policy.guard import Guard
from agent.policy.lock import LockComponent
from agent.policy.sessions import SessionsComponent
from agent.report.screen import Screen
from lock_fixtures import PupilTool
from runtime_fixtures import PREFIX, Subscriber, bootstrap, publish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _has(rt, name):
    return any(getattr(c, "name", None) == name for c in rt.components)


@pytest.fixture
def device(tmp_path, mosquitto):
    clock = FakeClock(datetime(2026, 11, 24, 15, 50, tzinfo=timezone.utc))  # 15:50 GMT, in school
    pins = MockFactory()
    table = [Session(id="c1", user="amira.k", uid=1001, type="x11", display=":0", seat="seat0")]
    # The runtime is given its sessions source, as `classroom-agent run` gives it one.
    sessions = SessionsComponent(reader=lambda: list(table), poll_seconds=3600)
    rt = Runtime(bootstrap(tmp_path, mosquitto), clock=clock, screen=Screen(), pin_factory=pins, sessions=sessions)
    backend = HeadlessLock()
    idle = HeadlessIdle(clock)
    # Whatever the runtime registers itself (after integration), these are the instances
    # under test; duplicates are not added.
    if not _has(rt, "lock"):
        rt.add_component(LockComponent(backend=backend, idle=idle))
    if not _has(rt, "guard"):
        rt.add_component(Guard(bypass_processes=["tor"], end_bypass_processes=True, watch_mounts=[],
                               poll_seconds=0.2))
    sub = Subscriber(mosquitto)
    rt.start()
    yield rt, clock, sub
    sub.close()
    rt.stop()
    pins.close()


def component(rt, name):
    return next(c for c in rt.components if getattr(c, "name", None) == name)


def test_staff_lock_and_unlock_over_mqtt(device, mosquitto):
    rt, clock, sub = device
    lock = component(rt, "lock")
    assert sub.wait_for("event", type="login", user="amira.k")["session"] == "c1"
    publish(mosquitto, f"{PREFIX}/cmd", {"cmd": "lock", "by": "j.smith"})
    ev = sub.wait_for("event", type="lock", by="j.smith")
    assert ev["reason"] == "staff" and ev["mode"] == "staff" and ev["device"] == "1a-pi-01"
    assert lock.is_locked
    publish(mosquitto, f"{PREFIX}/cmd", {"cmd": "unlock", "by": "j.smith"})
    ev = sub.wait_for("event", type="unlock", by="j.smith")
    assert ev["reason"] == "staff" and ev["previous"] == "staff"
    assert not lock.is_locked


def test_the_timetable_lock_fires_from_the_runtime_clock(device):
    rt, clock, sub = device
    lock = component(rt, "lock")
    assert not lock.is_locked and rt.policy.next_change == datetime(2026, 11, 24, 16, 0, tzinfo=timezone.utc)
    if isinstance(lock.idle, HeadlessIdle):
        lock.idle.touch()
    clock.advance(10 * 60)  # 16:00: the runtime re-evaluates the policy by its own timer
    ev = sub.wait_for("event", type="lock", reason="out_of_hours")
    assert ev["by"] == "schedule" and ev["mode"] == "staff"


def test_a_bypass_tool_is_ended_by_the_running_agent(device, tmp_path):
    rt, clock, sub = device
    guard = component(rt, "guard")
    assert "tor" in guard.bypass  # config/site.yaml lists it; this test depends on that
    tool = PupilTool("tor")
    try:
        ev = sub.wait_for("event", type="bypass_process", pid=tool.pid, timeout=20)
        assert ev["action"] == "ended" and ev["name"] == "tor" and ev["user"] == "nobody"
        assert tool.wrapper.wait(timeout=10) is not None
    finally:
        tool.close()


def test_the_production_set_has_sessions_lock_and_guard_and_knows_the_user(device):
    from agent.core.runtime import default_components

    names = [getattr(c, "name", None) for c in default_components()]
    assert {"sessions", "lock", "guard"} <= set(names)
    rt, clock, sub = device
    sub.wait_for("event", type="login", user="amira.k")
    assert rt.current_user() == "amira.k"  # from the session records, for heartbeats and events


def test_malformed_lock_commands_change_nothing(device, mosquitto):
    rt, clock, sub = device
    lock = component(rt, "lock")
    for bad in (b"not json", b'{"cmd": "lock"}', b'{"cmd": "lokc", "by": "x"}', b'["lock"]',
                b'{"cmd": "lock", "by": 7}'):
        publish(mosquitto, f"{PREFIX}/cmd", bad)
    # A good command after the bad ones proves they were read (and dropped), in order.
    publish(mosquitto, f"{PREFIX}/cmd", {"cmd": "lock", "by": "j.smith"})
    sub.wait_for("event", type="lock", by="j.smith")
    assert [e["by"] for e in sub.payloads("event") if e["type"] == "lock"] == ["j.smith"]
    assert lock.is_locked

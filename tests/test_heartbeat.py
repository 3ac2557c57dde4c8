"""Heartbeat payload: every field the contract names, valid per agent.protocol, and never
who is logged in (device health only: issue 15 item 2, data minimisation)."""

from __future__ import annotations

import time

import psutil
import pytest

from agent import protocol
from agent.uplink import heartbeat

pytestmark = pytest.mark.timeout(20)


def test_collect_has_every_field_and_passes_the_wire_validator():
    hb = heartbeat.collect("abc123def456")
    assert set(hb) == {"ts", "cpu", "mem", "temp", "disk", "uptime", "config_version"}
    protocol.validate("heartbeat", hb)
    assert hb["config_version"] == "abc123def456"
    assert 0 <= hb["cpu"] <= 100 and 0 < hb["mem"] <= 100 and 0 <= hb["disk"] <= 100
    assert abs(hb["uptime"] - (time.time() - psutil.boot_time())) < 5
    assert abs(protocol.parse_ts(hb["ts"]).timestamp() - time.time()) < 5
    # The payload must go over the wire as JSON.
    assert protocol.decode(protocol.encode(hb)) == hb


def test_no_config_is_allowed_and_there_is_no_user_to_give():
    hb = heartbeat.collect(None)
    protocol.validate("heartbeat", hb)
    assert hb["config_version"] is None and "user" not in hb
    with pytest.raises(TypeError):
        heartbeat.collect("pupil1", "abc123def456")  # the old signature: a user has no place here


def test_temperature_prefers_the_cpu_thermal_zone(tmp_path):
    for i, (kind, milli) in enumerate([("gpu-thermal", "61000"), ("cpu-thermal", "48312")]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert heartbeat.temperature(tmp_path) == 48.3


def test_temperature_ignores_broken_zones_and_returns_none_without_sensors(tmp_path, monkeypatch):
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("not a number\n")
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    assert heartbeat.temperature(tmp_path) is None
    # And on this machine (real /sys) it is a number or None, never an exception.
    real = heartbeat.temperature()
    assert real is None or isinstance(real, float)


def test_unreadable_disk_path_gives_none_not_a_crash():
    hb = heartbeat.collect("v", disk_path="/no/such/dir")
    assert hb["disk"] is None
    protocol.validate("heartbeat", hb)


@pytest.mark.integration
def test_the_running_agent_sends_it_every_heartbeat_seconds(tmp_path, mosquitto):
    from gpiozero.pins.mock import MockFactory

    from agent.core.clock import FakeClock
    from agent.core.runtime import Runtime
    from agent.desktop.session import Session
    from agent.policy.sessions import SessionsComponent
    from agent.report.screen import Screen
    from runtime_fixtures import Subscriber, bootstrap
    from services import wait_until

    clock = FakeClock()
    pins = MockFactory()
    sub = Subscriber(mosquitto)
    # Someone is logged in: the agent knows who, and still the heartbeat does not say.
    table = [Session(id="c1", user="amira.k", uid=1001, type="x11", display=":0", seat="seat0")]
    sessions = SessionsComponent(reader=lambda: list(table), poll_seconds=3600)
    rt = Runtime(bootstrap(tmp_path, mosquitto), clock=clock, screen=Screen(), pin_factory=pins,
                 sessions=sessions).start()
    try:
        assert rt.tree.site.heartbeat_seconds == 30
        sub.wait_for("status", state="online")
        clock.advance(30)
        hb = sub.wait_for("heartbeat")
        assert set(hb) == {"ts", "cpu", "mem", "temp", "disk", "uptime", "config_version"}
        assert rt.current_user() == "amira.k"
        assert sub.wait_for("event", type="login")["user"] == "amira.k"  # where the user has a purpose
        assert hb["config_version"] == rt.tree.version
        protocol.validate("heartbeat", hb)
        clock.advance(30)
        wait_until(lambda: len(sub.payloads("heartbeat")) >= 2, timeout=10)
    finally:
        sub.close()
        rt.stop()
        pins.close()

"""The DSL's hold end to end with the REAL agent runtime, a real mosquitto and the real
collector (ingest + app): issue 15 item 7.

The DSL places the hold on the collector; the device locks (a ``hold`` lock event reaches
the store); a teacher's unlock and the staff PIN are refused (``unlock_refused`` events);
the agent is restarted and is locked again before anything is said to it (the hold is on
its disk); with its state lost (a new SD card), the collector tells it again as soon as it
comes online; the DSL lifts the hold and the device unlocks.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from gpiozero.pins.mock import MockFactory

from agent import protocol
from agent.core.clock import FakeClock
from agent.core.runtime import Runtime
from agent.desktop.headless import HeadlessIdle, HeadlessLock
from agent.policy.lock import HOLDS_FILE, LockComponent
from agent.report.screen import Screen
from runtime_fixtures import bootstrap
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import make_alert
from services import wait_until
from web_fixtures import collector  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCHOOL_TIME = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
DEVICE, ROOM = "1a-pi-01", "1a"


class Device:
    """The real agent for 1a-pi-01, with a recording lock backend; ``restart()`` keeps its state_dir."""

    def __init__(self, tmp_path, broker):
        self.boot = bootstrap(tmp_path, broker)
        self.pins = MockFactory()
        self.rt = None
        self.start()

    def start(self):
        self.backend = HeadlessLock()
        self.lock = LockComponent(backend=self.backend, idle=HeadlessIdle(FakeClock(SCHOOL_TIME)))
        self.rt = Runtime(self.boot, clock=FakeClock(SCHOOL_TIME), screen=Screen(), pin_factory=self.pins,
                          components=[self.lock]).start()
        return self

    def connected(self):
        return self.rt.link is not None and self.rt.link.is_connected

    def stop(self):
        if self.rt is not None:
            self.rt.stop()
            self.rt = None

    def close(self):
        self.stop()
        self.pins.close()


def _events(store, kind):
    return [e for e in store.events(type=kind, limit=100) if e["device"] == DEVICE]


def test_a_hold_locks_the_real_agent_survives_a_restart_and_only_the_dsl_lifts_it(collector, tmp_path, staff_client):
    store = collector.store
    alert = make_alert(room=ROOM, device=DEVICE, seat="Table 1", ts=protocol.now_ts(SCHOOL_TIME))
    store.record_alert(alert)
    device = Device(tmp_path, collector.broker)
    dsl = staff_client(collector.app, "dsl")
    try:
        wait_until(device.connected, 15)
        wait_until(lambda: store.get_device(DEVICE) and store.get_device(DEVICE)["status"] == "online", 15)
        assert not device.lock.is_locked

        r = dsl.post(f"/api/v1/incidents/{alert['id']}/hold", json={"reason": "Police advice sought"})
        assert r.status_code == 201 and r.json()["sent"] is True
        hold = r.json()["hold"]
        wait_until(lambda: device.lock.is_held and device.backend.is_locked, 10)
        [locked] = wait_until(lambda: _events(store, "lock"), 10)
        assert (locked["data"]["reason"], locked["data"]["by"], locked["data"]["hold_id"]) == \
            ("hold", "s.patel", hold["id"])

        # A teacher's unlock, as the collector would send it for them: refused on the device.
        collector.ingest.publish(protocol.topic(protocol.DEFAULT_PREFIX, "penny-acres", ROOM, DEVICE, "cmd"),
                                 protocol.encode({"cmd": "unlock", "by": "a.jones"}), 1)
        refused = wait_until(lambda: _events(store, "unlock_refused"), 10)
        assert refused[0]["data"]["by"] == "a.jones" and refused[0]["data"]["how"] == "unlock"
        # The staff PIN typed on the lock screen: refused, locked again.
        device.backend.simulate_pin()
        wait_until(lambda: len(_events(store, "unlock_refused")) == 2, 10)
        assert device.lock.is_locked and device.backend.is_locked and _events(store, "unlock") == []

        # Restart the agent (a reboot): locked from its own disk, before any command.
        device.stop()
        assert (tmp_path / "state" / HOLDS_FILE).exists()
        device.start()
        assert device.lock.is_held and device.backend.is_locked
        wait_until(device.connected, 15)

        # The restart locked from its own disk and said so (place.json gives the device its room
        # before any config arrives): a second `lock` event, naming the same hold.
        wait_until(lambda: len(_events(store, "lock")) == 2, 10)

        # Its state lost (a new SD card): the collector holds it again when it comes online; the
        # hold arrives anew, so the device announces it again (a third `lock` event) once the
        # collector's copy lands.
        device.stop()
        (tmp_path / "state" / HOLDS_FILE).unlink()
        device.start()
        wait_until(lambda: device.lock.is_held and device.backend.is_locked, 15,
                   message="the collector did not re-assert the hold when the device came online")
        again = wait_until(lambda: len(_events(store, "lock")) == 3 and _events(store, "lock"), 10)
        assert {e["data"]["hold_id"] for e in again} == {hold["id"]}
        assert {e["data"]["reason"] for e in again} == {"hold"}

        # The DSL lifts it: unlocked, and said so.
        r = dsl.post(f"/api/v1/holds/{hold['id']}/lift", json={"reason": "No further action"})
        assert r.status_code == 200 and r.json()["sent"] is True
        wait_until(lambda: not device.lock.is_locked and not device.backend.is_locked, 10)
        [unlocked] = wait_until(lambda: _events(store, "unlock"), 10)
        assert (unlocked["data"]["reason"], unlocked["data"]["by"]) == ("hold_lifted", "s.patel")
    finally:
        device.close()

"""The DSL's hold on a device (issue 15 item 7), in the lock component with a fake clock:
it outranks every other lock, a teacher's unlock and the staff PIN are refused (and said
so), only its release lifts it, and it is kept in state_dir so a restarted agent (or a
rebooted device) is still held before any config arrives."""

from __future__ import annotations

import json
import stat
import uuid
from datetime import datetime, timezone

import pytest

from agent import protocol
from agent.desktop.headless import HeadlessIdle, HeadlessLock
from agent.policy.lock import HOLDS_FILE, LockComponent
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(30)


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


def hold_cmd(hold_id=None, by="s.patel", incident="71915604-fef3-41f8-8304-8f922a553b01"):
    cmd = {"cmd": "hold", "by": by, "hold_id": hold_id or str(uuid.uuid4()), "incident": incident}
    return protocol.validate_cmd(cmd)


def release_cmd(hold_id, by="s.patel"):
    return protocol.validate_cmd({"cmd": "release", "by": by, "hold_id": hold_id})


def rig_at(tmp_path, moment=None):
    rt = FakeRuntime(tmp_path, start=moment or utc(2026, 11, 24, 10, 0))
    backend = HeadlessLock()
    comp = LockComponent(backend=backend, idle=HeadlessIdle(rt.clock))
    comp.start(rt)
    return rt, comp, backend


def test_a_hold_locks_and_only_its_release_lifts_it(tmp_path):
    rt, comp, backend = rig_at(tmp_path)
    cmd = hold_cmd()
    assert comp.on_command(cmd) is True
    assert comp.is_locked and comp.is_held and backend.is_locked and backend.mode == "staff"
    ev = rt.of_type("lock")[-1]
    assert (ev["reason"], ev["by"], ev["hold_id"], ev["incident"]) == ("hold", "s.patel", cmd["hold_id"],
                                                                       cmd["incident"])

    # A teacher's unlock: refused (the teacher's cmd_result says so), said so, nothing changes.
    with pytest.raises(protocol.CommandRefused, match="on hold"):
        comp.on_command({"cmd": "unlock", "by": "m.khan"})
    assert comp.is_locked and backend.is_locked and rt.of_type("unlock") == []
    refused = rt.of_type("unlock_refused")[-1]
    assert (refused["by"], refused["how"], refused["holds"]) == ("m.khan", "unlock", [cmd["hold_id"]])

    # The lock screen says no PIN (the overlays take none: test_overlay_core)...
    assert backend.message.pin is False
    # ...and a staff PIN that got through anyway (a backend without that): locked again at once.
    backend.simulate_pin()
    comp.tick()
    assert comp.is_locked and backend.is_locked and backend.mode == "staff"
    assert backend.calls[-1][0] == "lock" and rt.of_type("unlock") == []
    assert backend.message.pin is False
    assert rt.of_type("unlock_refused")[-1]["how"] == "staff_pin"

    # A release for another hold id changes nothing; the right one unlocks.
    comp.on_command(release_cmd(str(uuid.uuid4())))
    assert comp.is_locked
    comp.on_command(release_cmd(cmd["hold_id"]))
    assert not comp.is_locked and not comp.is_held and not backend.is_locked
    ev = rt.of_type("unlock")[-1]
    assert (ev["reason"], ev["by"], ev["previous"]) == ("hold_lifted", "s.patel", "hold")


def test_a_hold_outranks_a_staff_lock_and_the_timetable_and_leaves_them_underneath(tmp_path):
    rt, comp, backend = rig_at(tmp_path)
    comp.on_command({"cmd": "lock", "by": "m.khan"})
    cmd = hold_cmd()
    comp.on_command(cmd)
    assert comp.current.reason == "hold"
    assert [e["reason"] for e in rt.of_type("lock")] == ["staff", "hold"]  # the hold is always announced
    assert backend.message.pin is False  # the lock screen takes no staff PIN under the hold
    comp.on_command(release_cmd(cmd["hold_id"]))
    assert comp.current.reason == "staff"  # the teacher's lock was never lifted by anyone
    assert backend.calls[-1][0] == "lock" and backend.message.pin is True  # the PIN lifts a staff lock again
    # After school the timetable lock would follow; a hold placed then still wins.
    policy = rt.set_time(utc(2026, 11, 24, 17, 0))
    comp.on_command({"cmd": "unlock", "by": "m.khan"})
    comp.on_policy(policy)
    comp.on_command(hold_cmd("6a0c61b8-6b4d-4a53-9d4f-3c3c1e2b9b11"))
    assert comp.current.reason == "hold"


def test_a_repeated_hold_is_one_hold_and_a_repeated_release_is_harmless(tmp_path):
    rt, comp, backend = rig_at(tmp_path)
    cmd = hold_cmd()
    comp.on_command(cmd)
    comp.on_command(dict(cmd))  # the collector sends it again when the device reconnects
    assert len(rt.of_type("lock")) == 1 and len(comp.state.holds) == 1
    comp.on_command(release_cmd(cmd["hold_id"]))
    comp.on_command(release_cmd(cmd["hold_id"]))
    assert len(rt.of_type("unlock")) == 1 and not comp.is_locked


def test_the_hold_is_kept_on_disk_and_a_new_agent_is_held_before_any_config(tmp_path):
    rt, comp, backend = rig_at(tmp_path)
    cmd = hold_cmd()
    comp.on_command(cmd)
    path = rt.state_dir / HOLDS_FILE
    saved = json.loads(path.read_text())
    assert list(saved) == [cmd["hold_id"]] and saved[cmd["hold_id"]]["by"] == "s.patel"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the agent's own: the pupil cannot remove it
    comp.stop()

    # A new agent (restart, reboot) on the same state_dir: locked at start, with no policy yet.
    rt2 = FakeRuntime(tmp_path, start=utc(2026, 11, 24, 10, 5))
    rt2.policy = None
    backend2 = HeadlessLock()
    comp2 = LockComponent(backend=backend2, idle=HeadlessIdle(rt2.clock))
    comp2.start(rt2)
    assert comp2.is_held and comp2.is_locked and backend2.is_locked and backend2.mode == "staff"
    assert backend2.message == ""  # no config yet: no words, but locked
    rt2.policy = rt2.evaluate()
    comp2.on_policy(rt2.policy)
    assert comp2.is_locked and comp2.current.reason == "hold"
    assert backend2.message == rt2.policy.messages["locked"]  # the config's words once it is there
    with pytest.raises(protocol.CommandRefused):
        comp2.on_command({"cmd": "unlock", "by": "m.khan"})
    assert comp2.is_locked
    comp2.on_command(release_cmd(cmd["hold_id"]))
    assert not comp2.is_locked and json.loads(path.read_text()) == {}


def test_an_unreadable_holds_file_is_not_mistaken_for_a_hold_and_does_not_stop_the_lock(tmp_path):
    rt, comp, backend = rig_at(tmp_path)
    (rt.state_dir / HOLDS_FILE).write_text("{not json")
    comp2 = LockComponent(backend=HeadlessLock(), idle=HeadlessIdle(rt.clock))
    comp2.start(rt)
    assert not comp2.is_held
    comp2.on_command({"cmd": "lock", "by": "m.khan"})
    assert comp2.is_locked


@pytest.mark.parametrize("cmd, error", [
    ({"cmd": "hold", "by": "s.patel"}, "hold_id: is required"),
    ({"cmd": "hold", "by": "s.patel", "hold_id": "not-a-uuid"}, "hold_id: 'not-a-uuid' is not a UUID"),
    ({"cmd": "release", "hold_id": str(uuid.UUID(int=1))}, "by: is required"),
    ({"cmd": "hold", "by": "s.patel", "hold_id": str(uuid.UUID(int=1)), "incident": 7}, "incident: 7 is not a str"),
])
def test_malformed_hold_commands_are_refused_by_the_contract(cmd, error):
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.validate_cmd(cmd)
    assert str(exc.value) == error

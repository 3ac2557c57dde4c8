"""Lock policy with a fake clock: idle lock, the timetable (school hours, weekends, half
term, term dates, both clock changes) and staff lock/unlock, through the real config
tree and effective_policy, into a recording (headless) lock backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from agent.desktop.headless import HeadlessIdle
from agent.desktop.headless import HeadlessLock
from agent.policy.lock import STAFF_OVERRIDE, LockState
from agent.policy.lock import LockComponent
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(30)
UTC = timezone.utc
LONDON = ZoneInfo("Europe/London")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def rig(tmp_path):
    # Tuesday 24 Nov 2026, 10:00 GMT: in term, in school hours, unlocked.
    rt = FakeRuntime(tmp_path, start=utc(2026, 11, 24, 10, 0))
    backend = HeadlessLock()
    idle = HeadlessIdle(rt.clock)
    comp = LockComponent(backend=backend, idle=idle)
    comp.start(rt)
    return rt, comp, backend, idle


def at(rt, comp, moment, active=None):
    """Move the fake clock and deliver the policy for that moment, as the runtime does.

    *active*: a HeadlessIdle that saw input just now (someone is using the device)."""
    policy = rt.set_time(moment)
    if active is not None:
        active.touch()
    comp.on_policy(policy)


# --------------------------------------------------------------------------- idle


def test_idle_lock_exactly_at_the_profiles_minutes_and_user_login_unlocks(rig):
    rt, comp, backend, idle = rig
    assert rt.policy.idle_lock_minutes == 15 and not comp.is_locked
    rt.clock.advance(15 * 60 - 1)
    delay = comp.tick()
    assert not comp.is_locked and delay == 1.0  # next check exactly when the threshold is reached
    rt.clock.advance(1)
    comp.tick()
    assert comp.is_locked and backend.mode == "session"
    assert backend.message == rt.policy.messages["locked"]
    [ev] = rt.of_type("lock")
    assert (ev["reason"], ev["by"], ev["mode"], ev["user"]) == ("idle", "idle", "session", "pupil1")
    # The pupil logs back in through the desktop's own lock screen.
    backend.simulate_login("pupil1")
    idle.touch()
    comp.tick()
    assert not comp.is_locked
    [ev] = rt.of_type("unlock")
    assert (ev["reason"], ev["by"], ev["previous"]) == ("login", "pupil1", "idle")


def test_input_resets_the_idle_countdown(rig):
    rt, comp, backend, idle = rig
    rt.clock.advance(14 * 60)
    idle.touch()
    rt.clock.advance(10 * 60)
    assert comp.tick() == 60  # 5 minutes to go; never sleep past the 60 s re-check
    assert not comp.is_locked and rt.of_type("lock") == []


def test_idle_minutes_follow_the_profile(tmp_path):
    rt = FakeRuntime(tmp_path, device="reception-pi-01", start=utc(2026, 11, 24, 10, 0))
    backend = HeadlessLock()
    comp = LockComponent(backend=backend, idle=HeadlessIdle(rt.clock))
    comp.start(rt)
    assert rt.policy.idle_lock_minutes == 5  # EYFS
    rt.clock.advance(5 * 60)
    comp.tick()
    assert comp.is_locked and rt.of_type("lock")[0]["reason"] == "idle"


def test_tick_schedules_itself_on_the_runtime_timer(rig):
    rt, comp, backend, idle = rig
    comp.tick()
    live = [t for t in rt.timers if not t.cancelled]
    assert len(live) == 1 and live[0].due == rt.clock() + timedelta(seconds=60)
    rt.clock.advance(15 * 60)
    # Driving time only through the runtime's timers locks the device.
    while rt.run_due():
        pass
    assert comp.is_locked


# --------------------------------------------------------------------------- timetable


def test_out_of_hours_lock_and_unlock_at_the_bell_across_the_autumn_clock_change(rig):
    rt, comp, backend, idle = rig
    # Friday 23 Oct 2026 is BST: school opens 08:15 local = 07:15 UTC.
    at(rt, comp, utc(2026, 10, 23, 7, 14, 59))
    assert comp.is_locked and rt.of_type("lock")[-1]["reason"] == "out_of_hours"
    assert backend.message == rt.policy.messages["out_of_hours"] and backend.mode == "staff"
    at(rt, comp, utc(2026, 10, 23, 7, 15), active=idle)
    assert not comp.is_locked
    ev = rt.of_type("unlock")[-1]
    assert (ev["reason"], ev["by"]) == ("schedule", "schedule")
    # 16:00 BST = 15:00 UTC.
    at(rt, comp, utc(2026, 10, 23, 14, 59), active=idle)
    assert not comp.is_locked
    at(rt, comp, utc(2026, 10, 23, 15, 0))
    assert comp.is_locked
    at(rt, comp, utc(2026, 10, 24, 10, 0))
    assert rt.of_type("lock")[-1]["reason"] == "out_of_hours"  # still the same lock: no new event
    assert comp.current.reason == "weekend"
    # Half term (26-30 Oct) is a closure: locked all day.
    at(rt, comp, utc(2026, 10, 27, 10, 0))
    assert comp.current.reason == "closure"
    # Monday 2 Nov is GMT: 08:15 local = 08:15 UTC, not 07:15.
    at(rt, comp, utc(2026, 11, 2, 7, 15))
    assert comp.is_locked and comp.current.reason == "out_of_hours"
    at(rt, comp, utc(2026, 11, 2, 8, 15), active=idle)
    assert not comp.is_locked


def test_term_dates_and_the_spring_clock_change(rig):
    rt, comp, backend, idle = rig
    at(rt, comp, utc(2026, 12, 18, 15, 59), active=idle)  # last afternoon of the autumn term
    assert not comp.is_locked
    at(rt, comp, utc(2026, 12, 21, 10, 0))  # Christmas holiday, a Monday
    assert comp.current.reason == "holiday"
    at(rt, comp, utc(2027, 1, 5, 8, 15), active=idle)  # spring term, first morning (GMT)
    assert not comp.is_locked
    # Summer term opens 12 Apr 2027, after the clocks went forward on 28 Mar: 08:15 BST = 07:15 UTC.
    at(rt, comp, utc(2027, 4, 12, 7, 14))
    assert comp.current.reason == "out_of_hours"
    at(rt, comp, utc(2027, 4, 12, 7, 15), active=idle)
    assert not comp.is_locked
    reasons = [e["reason"] for e in rt.of_type("lock")]
    assert reasons == ["holiday", "out_of_hours"]


def test_pupil_login_does_not_lift_a_timetable_lock(rig):
    rt, comp, backend, idle = rig
    at(rt, comp, utc(2026, 11, 24, 17, 0))
    assert comp.is_locked
    backend.simulate_login("pupil1")
    comp.tick()
    assert comp.is_locked and backend.is_locked and ("relock", "staff") in backend.calls
    assert rt.of_type("unlock") == []


# --------------------------------------------------------------------------- staff


def test_staff_lock_and_unlock_commands(rig):
    rt, comp, backend, idle = rig
    assert comp.on_command({"cmd": "lock", "by": "m.khan"}) is True
    assert comp.is_locked and backend.mode == "staff"
    ev = rt.of_type("lock")[-1]
    assert (ev["reason"], ev["by"], ev["mode"]) == ("staff", "m.khan", "staff")
    backend.simulate_login("pupil1")  # the pupil's password is not enough
    comp.tick()
    assert comp.is_locked
    assert comp.on_command({"cmd": "unlock", "by": "m.khan"}) is True
    assert not comp.is_locked and backend.calls[-1] == ("unlock",)
    ev = rt.of_type("unlock")[-1]
    assert (ev["reason"], ev["by"]) == ("staff", "m.khan")


def test_eyes_on_me_shows_the_teachers_words_and_unlocks_itself_on_the_dot(rig):
    rt, comp, backend, idle = rig
    assert comp.on_command({"cmd": "lock", "by": "m.khan", "minutes": 2, "message": "Eyes on me, please"}) is True
    assert comp.is_locked and backend.mode == "staff" and backend.message == "Eyes on me, please"
    ev = rt.of_type("lock")[-1]
    assert (ev["reason"], ev["by"], ev["until"]) == ("staff", "m.khan", "2026-11-24T10:02:00.000Z")
    # The runtime's timer is due no later than the lock's end.
    assert min(t.due for t in rt.timers if not t.cancelled) <= utc(2026, 11, 24, 10, 2)
    rt.clock.advance(119)
    idle.touch()
    rt.run_due()
    assert comp.is_locked and rt.of_type("unlock") == []
    rt.clock.advance(1)
    idle.touch()
    assert rt.run_due() >= 1
    assert not comp.is_locked and backend.calls[-1] == ("unlock",)
    ev = rt.of_type("unlock")[-1]
    assert (ev["reason"], ev["by"], ev["previous"]) == ("expired", "m.khan", "staff")


def test_a_timed_lock_ending_leaves_the_idle_lock_underneath(rig):
    rt, comp, backend, idle = rig
    rt.clock.advance(15 * 60)
    comp.tick()
    assert comp.current.reason == "idle"
    comp.on_command({"cmd": "lock", "by": "m.khan", "minutes": 1})
    assert comp.current.reason == "staff" and backend.message == rt.policy.messages["locked"]
    rt.clock.advance(60)
    rt.run_due()
    # The pupil had walked away: the session lock comes back, not an open desktop.
    assert comp.current.reason == "idle" and backend.mode == "session"
    assert rt.of_type("unlock") == []


def test_a_new_eyes_on_me_replaces_the_words_and_the_time(rig):
    rt, comp, backend, idle = rig
    comp.on_command({"cmd": "lock", "by": "m.khan", "minutes": 1, "message": "Eyes on me"})
    comp.on_command({"cmd": "lock", "by": "m.khan", "minutes": 5, "message": "Tidy up time"})
    assert backend.message == "Tidy up time"
    assert [e["until"] for e in rt.of_type("lock")] == ["2026-11-24T10:01:00.000Z", "2026-11-24T10:05:00.000Z"]
    rt.clock.advance(60)
    idle.touch()
    rt.run_due()
    assert comp.is_locked  # the first one's end no longer applies
    # A plain lock (no minutes) stays until a staff unlock.
    comp.on_command({"cmd": "lock", "by": "m.khan"})
    rt.clock.advance(3600)
    idle.touch()
    comp.tick()
    assert comp.is_locked and "until" not in rt.of_type("lock")[-1]


def test_staff_lock_outranks_idle_and_unlock_clears_both(rig):
    rt, comp, backend, idle = rig
    rt.clock.advance(15 * 60)
    comp.tick()
    assert comp.current.reason == "idle"
    comp.on_command({"cmd": "lock", "by": "m.khan"})
    assert comp.current.reason == "staff" and backend.mode == "staff"
    comp.on_command({"cmd": "unlock", "by": "m.khan"})
    idle.touch()
    assert not comp.is_locked


def test_staff_pin_on_the_device_unlocks(rig):
    rt, comp, backend, idle = rig
    comp.on_command({"cmd": "lock", "by": "m.khan"})
    backend.simulate_pin()
    idle.touch()
    comp.tick()
    assert not comp.is_locked
    ev = rt.of_type("unlock")[-1]
    assert (ev["reason"], ev["by"]) == ("staff_pin", "staff-pin")


def test_staff_unlock_out_of_hours_lasts_an_hour_at_most(rig):
    rt, comp, backend, idle = rig
    at(rt, comp, utc(2026, 11, 24, 17, 0))  # after school
    assert comp.current.reason == "out_of_hours"
    comp.on_command({"cmd": "unlock", "by": "m.khan"})
    assert not comp.is_locked
    at(rt, comp, utc(2026, 11, 24, 17, 0) + STAFF_OVERRIDE - timedelta(seconds=1), active=idle)
    assert not comp.is_locked
    at(rt, comp, utc(2026, 11, 24, 18, 0))
    assert comp.is_locked and comp.current.reason == "out_of_hours"


def test_staff_unlock_override_never_outlives_the_next_timetable_change():
    state = LockState()
    now = utc(2026, 11, 24, 7, 45)  # 07:45 GMT; school opens 08:15
    state.set_schedule(True, "out_of_hours", now)
    state.staff_unlock(now, next_change=utc(2026, 11, 24, 8, 15))
    assert state.override_until == utc(2026, 11, 24, 8, 15)
    assert state.decide(now) is None


def test_other_commands_are_not_ours(rig):
    rt, comp, backend, idle = rig
    assert comp.on_command({"cmd": "allow", "domain": "bbc.co.uk", "by": "x"}) is False
    assert comp.on_command({"cmd": "ack", "alert_id": "x", "by": "x"}) is False
    assert rt.events == []


def test_backend_failure_still_reports_the_lock(tmp_path):
    class Broken(HeadlessLock):
        def lock(self, mode, message):
            raise OSError("swaylock missing")

    rt = FakeRuntime(tmp_path, start=utc(2026, 11, 24, 10, 0))
    comp = LockComponent(backend=Broken(), idle=HeadlessIdle(rt.clock))
    comp.start(rt)
    with pytest.raises(OSError):
        comp.on_command({"cmd": "lock", "by": "m.khan"})
    assert rt.of_type("lock")[-1]["by"] == "m.khan"


def test_command_without_by_is_attributed_to_staff_not_dropped(rig):
    rt, comp, backend, idle = rig
    assert comp.on_command({"cmd": "lock"}) is True
    assert rt.of_type("lock")[-1]["by"] == "staff"


def test_the_override_ends_on_the_runtime_timer_exactly(rig):
    rt, comp, backend, idle = rig
    at(rt, comp, utc(2026, 11, 24, 17, 0))
    comp.on_command({"cmd": "unlock", "by": "m.khan"})
    rt.clock.advance(STAFF_OVERRIDE.total_seconds() - 30)
    idle.touch()
    assert comp.tick() == 30.0  # not the usual 60 s re-check
    rt.clock.advance(30)
    idle.touch()
    assert rt.run_due() >= 1
    assert comp.is_locked and rt.of_type("lock")[-1]["reason"] == "out_of_hours"

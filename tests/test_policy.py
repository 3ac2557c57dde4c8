"""Effective policy: a pure function of (tree, device, moment), across terms,
weekends, closures, room schedules and the clock change."""

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import ConfigTree, effective_policy, load_tree

EXAMPLE = Path(__file__).resolve().parent.parent / "config"
LONDON = ZoneInfo("Europe/London")
UTC = timezone.utc


@pytest.fixture(scope="module")
def tree():
    return load_tree(EXAMPLE)


def at_local(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON)


def test_in_school_hours_ks2(tree):
    p = effective_policy(tree, "5b-pi-01", at_local(2026, 11, 24, 10, 0))  # a Tuesday in term
    assert (p.locked, p.lock_reason, p.in_school_hours) == (False, None, True)
    assert p.key_stage == "ks2" and p.profile_name == "Key Stage 2"
    assert "swiggle.org.uk" in p.allow_domains and "bbc.co.uk" in p.allow_domains
    assert p.idle_lock_minutes == 15 and p.shared_login_allowed is False
    assert p.messages["report_raised"] == "Well done for telling. A grown-up is coming."
    assert p.alert_staff == ("m.khan",) and p.escalation_timeout_seconds == 60
    assert p.seat == "Table 1" and p.hardware.button_pin == 17
    assert p.next_change == at_local(2026, 11, 24, 16, 0).astimezone(UTC)
    assert p.config_version == tree.version


def test_eyfs_allows_shared_login(tree):
    p = effective_policy(tree, "reception-pi-01", at_local(2026, 11, 24, 10, 0))
    assert p.key_stage == "eyfs" and p.shared_login_allowed and "reception" in p.shared_accounts
    assert "swiggle.org.uk" not in p.allow_domains


@pytest.mark.parametrize("moment, reason", [
    (at_local(2026, 11, 24, 7, 59), "out_of_hours"),
    (at_local(2026, 11, 24, 16, 0), "out_of_hours"),
    (at_local(2026, 11, 28, 11, 0), "weekend"),
    (at_local(2026, 10, 27, 11, 0), "closure"),       # October half term
    (at_local(2026, 12, 25, 11, 0), "holiday"),       # between terms
    (at_local(2027, 5, 3, 11, 0), "closure"),         # bank holiday Monday
])
def test_locked_outside_school(tree, moment, reason):
    p = effective_policy(tree, "1a-pi-01", moment)
    assert (p.locked, p.lock_reason, p.in_school_hours) == (True, reason, False)


def test_term_boundaries_are_inclusive(tree):
    assert not effective_policy(tree, "1a-pi-01", at_local(2026, 9, 2, 9, 0)).locked   # first day
    assert not effective_policy(tree, "1a-pi-01", at_local(2026, 12, 18, 15, 59)).locked  # last day
    assert effective_policy(tree, "1a-pi-01", at_local(2026, 9, 1, 9, 0)).lock_reason == "holiday"


def test_room_schedule_open_and_locked(tree):
    club = effective_policy(tree, "5b-pi-01", at_local(2026, 11, 25, 16, 30))  # Wednesday club
    assert (club.locked, club.schedule_slot, club.in_school_hours) == (False, "After-school coding club", False)
    assert club.next_change == at_local(2026, 11, 25, 17, 15).astimezone(UTC)
    assembly = effective_policy(tree, "5b-pi-01", at_local(2026, 11, 27, 9, 10))  # Friday assembly
    assert (assembly.locked, assembly.lock_reason) == (True, "schedule")
    # Other rooms are not affected by 5b's club.
    assert effective_policy(tree, "1a-pi-01", at_local(2026, 11, 25, 16, 30)).locked


def test_clock_change_autumn(tree):
    """Clocks go back on Sunday 25 October 2026: school start stays 08:15 local."""
    friday = effective_policy(tree, "1a-pi-01", at_local(2026, 10, 23, 17, 0))
    # Half term follows, so the next unlock is Monday 2 November, 08:15 GMT (= UTC).
    assert friday.next_change == datetime(2026, 11, 2, 8, 15, tzinfo=UTC)
    # Before the change, 08:15 local is 07:15 UTC.
    thursday_night = effective_policy(tree, "1a-pi-01", at_local(2026, 10, 21, 20, 0))
    assert thursday_night.next_change == datetime(2026, 10, 22, 7, 15, tzinfo=UTC)
    # The same UTC instant is in hours in winter but not in summer.
    assert not effective_policy(tree, "1a-pi-01", datetime(2026, 11, 3, 8, 0, tzinfo=UTC)).in_school_hours
    assert effective_policy(tree, "1a-pi-01", datetime(2026, 11, 3, 8, 20, tzinfo=UTC)).in_school_hours
    assert effective_policy(tree, "1a-pi-01", datetime(2026, 10, 22, 7, 20, tzinfo=UTC)).in_school_hours


def test_clock_change_spring(tree, tmp_path):
    """Clocks go forward on Sunday 28 March 2027; a Monday term day right after."""
    data = tree.to_dict()
    data["site"]["terms"].append({"name": "Easter club", "start": "2027-03-29", "end": "2027-04-02"})
    moved = ConfigTree.from_dict(data)
    sunday = effective_policy(moved, "1a-pi-01", at_local(2027, 3, 28, 12, 0))
    assert sunday.lock_reason == "holiday"  # between Spring term and the club
    assert sunday.next_change == datetime(2027, 3, 29, 7, 15, tzinfo=UTC)  # 08:15 BST


def test_next_change_walks_every_boundary(tree):
    """Stepping through a school week by next_change visits each state change once."""
    moment = at_local(2026, 11, 23, 0, 0)
    seen = []
    for _ in range(12):
        p = effective_policy(tree, "5b-pi-01", moment)
        seen.append((moment.astimezone(LONDON).strftime("%a %H:%M"), p.locked))
        moment = p.next_change
    assert seen[:6] == [("Mon 00:00", True), ("Mon 08:15", False), ("Mon 16:00", True),
                        ("Tue 08:15", False), ("Tue 16:00", True), ("Wed 08:15", False)]
    # Wednesday: the club keeps 5b open until 17:15; Friday assembly locks 09:00-09:30.
    assert ("Wed 17:15", True) in seen and ("Fri 09:00", True) in seen and ("Fri 09:30", False) in seen


def test_naive_datetime_refused(tree):
    with pytest.raises(ValueError, match="timezone-aware"):
        effective_policy(tree, "1a-pi-01", datetime(2026, 11, 24, 10, 0))


def test_unknown_device_has_hint(tree):
    with pytest.raises(KeyError, match="did you mean '5b-pi-01'"):
        effective_policy(tree, "5b-pi-1", at_local(2026, 11, 24, 10, 0))


def test_compiled_device_config_round_trip(tree):
    compiled = tree.for_device("5b-pi-02")
    assert compiled["version"] == tree.version and list(compiled["rooms"]) == ["5b"]
    small = ConfigTree.from_dict(compiled)
    moment = at_local(2026, 11, 25, 16, 30)
    assert effective_policy(small, "5b-pi-02", moment).to_dict() | {"config_version": ""} == \
        effective_policy(tree, "5b-pi-02", moment).to_dict() | {"config_version": ""}


def test_version_is_a_content_hash(tree):
    again = load_tree(EXAMPLE)
    assert again.version == tree.version
    data = tree.to_dict()
    data["rooms"]["5b"]["name"] = "Year 5 Birch"
    assert ConfigTree.from_dict(data).version != tree.version


def test_every_day_of_a_year_is_computable(tree):
    """No crash and a sensible next_change for every hour across a school year."""
    moment = datetime(2026, 9, 1, tzinfo=UTC)
    while moment < datetime(2027, 8, 31, tzinfo=UTC):
        p = effective_policy(tree, "reception-pi-02", moment)
        assert p.next_change is None or p.next_change > moment
        moment += timedelta(hours=7)

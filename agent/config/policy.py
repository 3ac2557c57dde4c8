"""Effective policy: what one device must enforce at one moment.

A pure function of (config tree, device id, moment).  No clocks are read here, so the
agent, the server and the tests all get the same answer for the same inputs, including
across the clock change (local school hours are resolved in the site's timezone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from .schema import WEEKDAYS, Contact, Hardware, hhmm_to_time
from .tree import ConfigTree
from .words import words_for

# How far ahead next_change looks; the summer holiday is the longest quiet spell.
_HORIZON_DAYS = 120


@dataclass(frozen=True)
class EffectivePolicy:
    site: str
    room: str
    device: str
    seat: str
    key_stage: str
    profile_name: str
    allow_domains: tuple[str, ...]
    allow_urls: tuple[str, ...]
    safe_search: bool
    youtube_restrict: str
    idle_lock_minutes: int
    shared_login_allowed: bool
    shared_accounts: tuple[str, ...]
    messages: dict[str, str]  # every pupil-screen key, in the device's ``language`` (words.py)
    # Lock state from the timetable (idle and staff locks are layered on by the agent).
    locked: bool
    lock_reason: str | None  # "weekend", "holiday", "closure", "out_of_hours", "schedule"
    in_school_hours: bool
    schedule_slot: str | None
    next_change: datetime | None  # UTC; when `locked` or `key_stage` next changes
    alert_staff: tuple[str, ...]
    escalation_timeout_seconds: int
    escalation_contacts: tuple[Contact, ...]
    hardware: Hardware
    timezone: str
    config_version: str = field(default="")
    mode: str = "allowlist"                       # allowlist | upstream (the school's filter decides)
    block_domains: tuple[str, ...] = ()           # refused on top of the school's filter (upstream)
    sound_play: bool = True
    sound_volume: int = 60
    language: str = "en"                          # the screens': the pupil's group's, else device, room, site
    site_language: str = "en"                     # the language ``messages`` are written in
    school_messages: dict[str, str] = field(default_factory=dict)          # the profile's, site language
    translations: dict[str, dict[str, str]] = field(default_factory=dict)  # the profile's, by language
    language_groups: dict[str, str] = field(default_factory=dict)          # unix group -> language
    staff: bool = False                           # a staff login: the site's staff profile applies
    staff_accounts: tuple[str, ...] = ()
    staff_groups: tuple[str, ...] = ()

    def words(self, language: str | None = None) -> dict[str, str]:
        """Every pupil-screen text in *language* (None: the device's); words.py says the order."""
        if language in (None, self.language):
            return self.messages
        return words_for(language, self.site_language, self.school_messages, self.translations)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["next_change"] = self.next_change.isoformat() if self.next_change else None
        out["escalation_contacts"] = [c.model_dump() for c in self.escalation_contacts]
        out["hardware"] = self.hardware.model_dump()
        out["allow_domains"] = list(self.allow_domains)
        out["allow_urls"] = list(self.allow_urls)
        out["shared_accounts"] = list(self.shared_accounts)
        out["alert_staff"] = list(self.alert_staff)
        out["block_domains"] = list(self.block_domains)
        out["staff_accounts"] = list(self.staff_accounts)
        out["staff_groups"] = list(self.staff_groups)
        return out


def _in_ranges(day: date, ranges) -> object | None:
    for r in ranges:
        if r.start <= day <= r.end:
            return r
    return None


def term_key(terms, day: date) -> str:
    """The term *day* falls in ('Autumn 2026'), else the academic term by month.

    The acceptable-use record is per term: the device (agent/policy/aup.py) and the
    collector (its /aup page, the list devices fetch) must name a term alike, so this is
    part of the contract.  Outside term (holiday clubs) the next term's name would be
    wrong, so the month rule applies: Sep-Dec autumn, Jan-Mar spring, Apr-Aug summer.
    """
    for term in terms or ():
        if term.start <= day <= term.end:
            return term.name
    season = "autumn" if day.month >= 9 else "spring" if day.month <= 3 else "summer"
    return f"{season} {day.year}"


def _timetable(tree: ConfigTree, room, device, local: datetime):
    """(locked, reason, in_hours, slot, key_stage) at a local wall-clock moment."""
    site = tree.site
    day, now = local.date(), local.time()
    weekday = WEEKDAYS[local.weekday()]
    term = _in_ranges(day, site.terms)
    closure = _in_ranges(day, site.closures)
    teaching_day = term is not None and closure is None
    hours = site.school_hours
    in_hours = (teaching_day and weekday in hours.days
                and hhmm_to_time(hours.start) <= now < hhmm_to_time(hours.end))
    slot = None
    if teaching_day:
        for s in room.schedule:
            if weekday in s.days and hhmm_to_time(s.start) <= now < hhmm_to_time(s.end):
                slot = s
                break
    key_stage = (slot.key_stage if slot and slot.key_stage else None) or device.key_stage or room.key_stage
    if slot is not None and slot.mode == "locked":
        return True, "schedule", in_hours, slot.name, key_stage
    if slot is not None and slot.mode == "open":
        return False, None, in_hours, slot.name, key_stage
    if in_hours or not site.out_of_hours_lock:
        return False, None, in_hours, None, key_stage
    if term is None:
        reason = "holiday"
    elif closure is not None:
        reason = "closure"
    elif weekday not in hours.days:
        reason = "weekend"
    else:
        reason = "out_of_hours"
    return True, reason, in_hours, None, key_stage


def _boundaries(tree: ConfigTree, room, tz: ZoneInfo, start_local: datetime):
    """Local wall-clock moments at which the timetable can change, in order."""
    marks = {time(0, 0), hhmm_to_time(tree.site.school_hours.start), hhmm_to_time(tree.site.school_hours.end)}
    for s in room.schedule:
        marks.add(hhmm_to_time(s.start))
        marks.add(hhmm_to_time(s.end))
    ordered = sorted(marks)
    for offset in range(_HORIZON_DAYS + 1):
        day = start_local.date() + timedelta(days=offset)
        for mark in ordered:
            # fold=0 and a round trip through UTC give the real instant even on the
            # clock-change night (a wall time that does not exist moves forward).
            moment = datetime.combine(day, mark, tzinfo=tz)
            moment = moment.astimezone(timezone.utc).astimezone(tz)
            if moment > start_local:
                yield moment


def is_staff(site, user: str | None, groups=()) -> bool:
    """Whether *user* (in unix *groups*) is staff by the site's ``staff`` settings."""
    if not user:
        return False
    return user in site.staff.accounts or any(g in site.staff.groups for g in groups)


def effective_policy(tree: ConfigTree, device_id: str, at: datetime, *, user: str | None = None,
                     groups=()) -> EffectivePolicy:
    """What *device_id* must enforce at the aware datetime *at*, with *user* (in unix
    *groups*) at it: a staff login gets the site's ``staff.profile`` instead of the
    pupils' (when one is set); a pupil in one of the site's ``language_groups`` sees the
    screens in that language."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("effective_policy needs a timezone-aware datetime")
    room, device = tree.find_device(device_id)
    tz = ZoneInfo(tree.site.timezone)
    local = at.astimezone(tz)
    locked, reason, in_hours, slot, key_stage = _timetable(tree, room, device, local)

    next_change = None
    for moment in _boundaries(tree, room, tz, local):
        state = _timetable(tree, room, device, moment)
        if (state[0], state[4]) != (locked, key_stage):
            next_change = moment.astimezone(timezone.utc)
            break

    site = tree.site
    staff = is_staff(site, user, groups)
    if staff and site.staff.profile:
        key_stage = site.staff.profile
    profile = tree.profiles[key_stage]
    language = next((site.language_groups[g] for g in groups if g in site.language_groups),
                    device.language or room.language or site.language)
    school = profile.messages.model_dump(exclude_none=True)
    translations = {lang: m.model_dump(exclude_none=True) for lang, m in profile.translations.items()}
    sound = profile.sound
    return EffectivePolicy(
        site=tree.site.site,
        room=room.room,
        device=device.id,
        seat=device.seat,
        key_stage=key_stage,
        profile_name=profile.name,
        allow_domains=tuple(profile.allow_domains),
        allow_urls=tuple(profile.allow_urls),
        safe_search=True if profile.safe_search is None else profile.safe_search,
        youtube_restrict=profile.youtube_restrict or "strict",
        idle_lock_minutes=profile.idle_lock_minutes or 10,
        shared_login_allowed=bool(profile.shared_login_allowed),
        shared_accounts=tuple(profile.shared_accounts),
        messages=words_for(language, site.language, school, translations),
        locked=locked,
        lock_reason=reason,
        in_school_hours=in_hours,
        schedule_slot=slot,
        next_change=next_change,
        alert_staff=tuple(room.alert_staff),
        escalation_timeout_seconds=room.escalation_timeout_seconds or tree.site.escalation.timeout_seconds,
        escalation_contacts=tuple(tree.site.escalation.contacts),
        hardware=device.hardware,
        timezone=tree.site.timezone,
        config_version=tree.version,
        mode=profile.mode or "allowlist",
        block_domains=tuple(profile.block_domains),
        sound_play=sound.play if sound is not None else True,
        sound_volume=sound.volume if sound is not None else 60,
        language=language,
        site_language=site.language,
        school_messages=school,
        translations=translations,
        language_groups=dict(site.language_groups),
        staff=staff,
        staff_accounts=tuple(site.staff.accounts),
        staff_groups=tuple(site.staff.groups),
    )

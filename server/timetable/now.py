"""Who is teaching in a room now, and where a teacher is now: the timetable and cover at a moment.

Lessons count from ``CHANGEOVER`` before they start until ``CHANGEOVER`` after they end (a
teacher walks in early, a lesson runs late), in the school's own zone (site.yaml
``timezone``).  Cover (``/cover``) counts on its date only.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ..localtime import zone
from .mis import clock_text

CHANGEOVER = timedelta(minutes=5)


def school_now(tree, now: datetime | None = None) -> datetime:
    return (now or datetime.now(timezone.utc)).astimezone(zone(tree.site.timezone))


def _hhmm(moment: datetime) -> str:
    return f"{moment.hour:02d}:{moment.minute:02d}"


def _window(local: datetime, margin: timedelta) -> tuple[str, str]:
    """(start at or before, end after) in HH:MM for lessons running at *local*, widened by *margin*."""
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    early = max(day_start, local - margin)
    late = min(day_start + timedelta(hours=23, minutes=59), local + margin)
    return _hhmm(late), _hhmm(early)


def teaching_now(store, tree, now: datetime | None = None, *, staff: str | None = None, room: str | None = None,
                 margin: timedelta = CHANGEOVER) -> list[dict]:
    """Lessons and cover running now (with the changeover *margin*), of *staff* or in *room*."""
    if tree is None:
        return []
    local = school_now(tree, now)
    start_before, end_after = _window(local, margin)
    return store.teaching(tree.site.site, local.weekday(), local.date().isoformat(), start_before, end_after,
                          staff=staff, room=room)


def rooms_now(store, tree, username: str, now: datetime | None = None) -> tuple[str, ...]:
    """The rooms *username* is timetabled in, or covering, now (the changeover included)."""
    try:
        found = teaching_now(store, tree, now, staff=username)
    except Exception:  # noqa: BLE001 - a busy store must not lock a teacher out of their alert_staff rooms
        return ()
    return tuple(sorted({row["room"] for row in found if row["room"] in tree.rooms}))


def staff_now(store, tree, room: str, now: datetime | None = None) -> list[dict]:
    """Who is teaching in *room* now besides its alert_staff: ``[{staff, source, until}]``."""
    out: dict[str, dict] = {}
    for row in teaching_now(store, tree, now, room=room):
        item = out.setdefault(row["staff"], {"staff": row["staff"], "source": row["source"],
                                             "until": row["end_time"]})
        item["until"] = max(item["until"], row["end_time"])
        if row["source"] == "cover":
            item["source"] = "cover"
    return sorted(out.values(), key=lambda r: r["staff"])


def lesson_end(store, tree, room: str, now: datetime | None = None) -> datetime | None:
    """When the lesson in *room* now ends (UTC), from the timetable and cover; None if none is running."""
    if tree is None:
        return None
    local = school_now(tree, now)
    running = teaching_now(store, tree, now, room=room, margin=timedelta(0))
    if not running:
        return None
    end = max(row["end_time"] for row in running)
    hour, minute = (int(x) for x in end.split(":"))
    return local.replace(hour=hour, minute=minute, second=0, microsecond=0).astimezone(timezone.utc)


def parse_clock(value: Any) -> str | None:
    """A form's time ('09:05', '9:05') as HH:MM, or None."""
    return clock_text(value) if isinstance(value, str) and value.strip() else None

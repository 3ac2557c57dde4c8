"""Times as staff read them: in the school's own timezone (``site.timezone``), never UTC.

Everything the collector stores and sends over the API is RFC 3339 UTC (it sorts, and
machines read it); everything a person reads (dashboard pages, the weekly report, the
escalation e-mails and webhooks) goes through here, so a press at 09:31 in a British
summer reads "09:31 BST" everywhere and not "08:31 UTC".  The zone's own abbreviation
(GMT/BST) is shown, so a reader never has to guess.
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Europe/London"


def zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or DEFAULT_TZ)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TZ)


def to_local(value, tz: str | None) -> datetime | None:
    """An RFC 3339 text or an aware datetime in *tz*; None for anything else."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, str) and len(value) >= 16:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    else:
        return None
    return moment.astimezone(zone(tz))


def local_ts(value, tz: str | None = None, *, seconds: bool = False) -> str:
    """'2026-07-01T08:31:05Z' -> '2026-07-01 09:31 BST' (tolerant: garbage comes back as it was)."""
    moment = to_local(value, tz)
    if moment is None:
        return value if isinstance(value, str) else ("" if value is None else str(value))
    return moment.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "") + " %Z")


def local_long(value, tz: str | None = None) -> str:
    """For a message a person reads away from the dashboard: 'Wed 1 Jul 2026, 09:31:05 BST'."""
    moment = to_local(value, tz)
    if moment is None:
        return local_ts(value, tz)
    return f"{moment:%a} {moment.day} {moment:%b %Y, %H:%M:%S %Z}"

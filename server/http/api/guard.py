"""The guard's log over the API: bypass tools, tampering, removable media, shared and
ordinary logins, searchable by user, device, room, type and dates, as JSON or CSV
(server/safecsv.py).  For the DSL and technicians (issue 15, item 3); every search that
names a user is written to the audit log.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from ...safecsv import to_csv
from ...store.guard import GUARD_TYPES
from .. import state
from ..auth import User, require
from . import API

PUBLIC: frozenset = frozenset()
CSV_FIELDS = ["time_utc", "type", "room", "device", "user", "details"]


def day_bound(value: str | None, tz: str, end: bool = False) -> str | None:
    """A ``YYYY-MM-DD`` (school day) or RFC 3339 time as a stored ts; *end*: the day after."""
    from datetime import date, time, timedelta
    from zoneinfo import ZoneInfo

    from agent.protocol import ProtocolError, now_ts, parse_ts

    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        try:
            return now_ts(parse_ts(value, "date"))
        except ProtocolError:
            raise HTTPException(400, f"{value[:40]!r} is not a date (2026-11-24) or time") from None
    if end:
        day += timedelta(days=1)
    return now_ts(datetime.combine(day, time(0), ZoneInfo(tz)).astimezone(timezone.utc))


def details(row: dict) -> str:
    """What a guard event says, in a few words (never a screen or a file's content)."""
    data = row.get("data") or {}
    parts = []
    for key in ("name", "path", "mountpoint", "label", "action", "change", "reason", "session_type", "shared"):
        value = data.get(key)
        if value not in (None, "", False):
            parts.append(f"{key}={value}")
    return " ".join(parts)[:300]


def search(request: Request, user: User, *, type: str | None, user_name: str | None, device: str | None,
           room: str | None, since: str | None, until: str | None, limit: int) -> list[dict]:
    site, tz = state.site_and_timezone(request)
    if type is not None and type not in GUARD_TYPES:
        raise HTTPException(400, f"type: one of {', '.join(GUARD_TYPES)}")
    rows = state.store(request).guard_events(site, types=(type,) if type else GUARD_TYPES, user=user_name,
                                             device=device, room=room, since=day_bound(since, tz),
                                             until=day_bound(until, tz, end=True), limit=limit)
    if user_name:
        state.store(request).audit(user.username, "guard.search", None, {"user": user_name, "rows": len(rows)},
                                       site=user.site)
    for row in rows:
        row["details"] = details(row)
    return rows


def rows_csv(rows: list[dict]) -> str:
    return to_csv(CSV_FIELDS, ([r["ts"], r["type"], r["room"], r["device"], r["user_name"] or "", r["details"]]
                               for r in rows))


def router() -> APIRouter:
    r = APIRouter(prefix=API, tags=["guard"])
    viewers = require("dsl", "technician")

    @r.get("/guard-events")
    def guard_events(request: Request, user: User = Depends(viewers),
                     type: str | None = Query(None, max_length=32), user_name: str | None = Query(None, alias="user",
                                                                                                 max_length=64),
                     device: str | None = Query(None, max_length=64), room: str | None = Query(None, max_length=64),
                     since: str | None = Query(None, max_length=40), until: str | None = Query(None, max_length=40),
                     limit: int = Query(500, ge=1, le=5000), format: str = Query("json", pattern="^(json|csv)$")):
        rows = search(request, user, type=type, user_name=user_name, device=device, room=room, since=since,
                      until=until, limit=limit)
        if format == "csv":
            return PlainTextResponse(rows_csv(rows), media_type="text/csv; charset=utf-8")
        return rows

    return r

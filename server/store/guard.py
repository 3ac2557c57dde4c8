"""Reading the guard's events: the searchable log the DSL and technicians read (issue 15, item 3).

The guard (agent/policy/guard.py, agent/policy/sessions.py) sends ``bypass_process``,
``tamper``, ``removable_media``, ``shared_login`` and ``login`` events; they are stored in
``events`` like any other (events.py).  Here are the queries over them: the log filtered by
user, device, room, type and dates, and the week's counts for the weekly report.  Every
query takes the site.
"""

from __future__ import annotations

import json
from typing import Sequence

GUARD_TYPES = ("bypass_process", "tamper", "removable_media", "shared_login", "login")


class GuardTable:
    """Store methods over the guard's events (mixed into ``Store``)."""

    def guard_events(self, site: str, *, types: Sequence[str] = GUARD_TYPES, user: str | None = None,
                     device: str | None = None, room: str | None = None, since: str | None = None,
                     until: str | None = None, limit: int = 500) -> list[dict]:
        """Guard events newest first, ``data`` parsed."""
        types = [t for t in types if t in GUARD_TYPES] or list(GUARD_TYPES)
        where = ["site = ?", "type IN (" + ", ".join("?" for _ in types) + ")"]
        params: list = [site, *types]
        for column, value in (("user_name", user), ("device", device), ("room", room)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("ts >= ?")
            params.append(since)
        if until:
            where.append("ts < ?")
            params.append(until)
        rows = self.query("SELECT id, type, ts, site, room, device, user_name, data FROM events WHERE "
                          + " AND ".join(where) + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))
        for row in rows:
            try:
                row["data"] = json.loads(row["data"])
            except (TypeError, ValueError):
                row["data"] = {}
        return rows

    def guard_counts_between(self, site: str | None, start: str, end: str) -> list[dict]:
        """``{type, room, device, n}`` for the guard events (not logins) in [start, end)."""
        types = [t for t in GUARD_TYPES if t != "login"]
        sql = ("SELECT type, room, device, COUNT(*) AS n FROM events WHERE type IN ("
               + ", ".join("?" for _ in types) + ") AND ts >= ? AND ts < ?")
        params: list = [*types, start, end]
        if site:
            sql += " AND site = ?"
            params.append(site)
        return self.query(sql + " GROUP BY type, room, device ORDER BY type, room, device", params)

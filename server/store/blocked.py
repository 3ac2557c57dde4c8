"""Blocked attempts as the DSL searches them, and the high-risk notification windows.

``search_blocked`` is the DfE blocked-attempt log: every ``blocked`` event of a site with
its log fields (device, IP, user, time, domain, count), by pupil, device, room, risk list,
domain and dates (server/http/api/blocked.py decides who may see the user column).

``high_risk_received`` is what server/notify/risk.py polls: blocked events tagged with a
notifying risk list, in the order the collector received them (any ingest worker, any
process: it reads the shared store, not one process's listeners).  ``take_risk_window`` is
how at most one message per device per risk list per window is kept across restarts and
collectors: one conditional upsert on ``risk_windows`` that only one caller can win.
"""

from __future__ import annotations

import json
from typing import Sequence

from .engine import Tx


def _data(row: dict) -> dict:
    try:
        data = json.loads(row.pop("data") or "{}")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


class BlockedTable:
    """Store methods for the blocked-attempt search and high-risk windows (mixed into ``Store``)."""

    def search_blocked(self, site: str, *, user: str | None = None, device: str | None = None,
                       room: str | None = None, category: str | None = None, domain: str | None = None,
                       since: str | None = None, until: str | None = None, limit: int = 500) -> list[dict]:
        """Blocked attempts at *site*, newest first: ``{id, ts, room, device, device_name, device_ip,
        user, domain, profile, category, count, first_seen, last_seen}``.  *domain* matches the
        domain and its subdomains; *since*/*until* bound ``ts`` as [since, until)."""
        where, params = ["type = ?", "site = ?"], ["blocked", site]
        for column, value in (("user_name", user), ("device", device), ("room", room), ("category", category)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if domain is not None:
            where.append("(domain = ? OR domain LIKE ?)")
            params += [domain, "%." + domain]
        if since:
            where.append("ts >= ?")
            params.append(since)
        if until:
            where.append("ts < ?")
            params.append(until)
        rows = self.query("SELECT id, ts, room, device, user_name, domain, profile, category, data FROM events "
                          "WHERE " + " AND ".join(where) + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))
        out = []
        for row in rows:
            data = _data(row)
            out.append({"id": row["id"], "ts": row["ts"], "room": row["room"], "device": row["device"],
                        "device_name": _text(data.get("device_name")), "device_ip": _text(data.get("device_ip")),
                        "user": row["user_name"], "domain": row["domain"], "profile": row["profile"],
                        "category": row["category"], "count": _int(data.get("count")),
                        "first_seen": _text(data.get("first_seen")) or row["ts"],
                        "last_seen": _text(data.get("last_seen")) or row["ts"]})
        return out

    def high_risk_received(self, categories: Sequence[str], after: tuple[str, str], limit: int = 1000) -> list[dict]:
        """Blocked events of *categories* stored after *after* = (received_at, id), in that order:
        ``{id, ts, site, room, device, category, received_at, count}`` (keyset pages: a batch
        shares one received_at)."""
        if not categories:
            return []
        marks = ", ".join("?" for _ in categories)
        received, last_id = after
        # Only blocked events have a category (events.event_row): no type term, so the planner
        # has nothing to prefer over the small partial index on (category, received_at).
        rows = self.query(f"SELECT id, ts, site, room, device, category, received_at, data FROM events "
                          f"WHERE category IN ({marks}) AND received_at >= ? AND (received_at > ? OR id > ?) "
                          f"ORDER BY received_at, id LIMIT ?",
                          (*categories, received, received, last_id, int(limit)))
        for row in rows:
            row["count"] = _int(_data(row).get("count"))
        return rows

    def take_risk_window(self, site: str, device: str, category: str, now: str, reopen_before: str) -> bool:
        """Open a notification window for (*site*, *device*, *category*) at *now* unless one was
        opened after *reopen_before*; True for the one caller that opened it."""

        def run(tx: Tx) -> bool:
            return tx.execute(
                "INSERT INTO risk_windows (site, device, category, opened_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site, device, category) DO UPDATE SET opened_at = excluded.opened_at "
                "WHERE risk_windows.opened_at <= ?", (site, device, category, now, reopen_before)) == 1

        return self.write(run)

    def count_blocked(self, site: str, device: str, category: str, since: str) -> int:
        """Attempts (the events' summed counts) of *device*'s *category* with ts from *since* on."""
        rows = self.query("SELECT data FROM events WHERE type = ? AND site = ? AND device = ? AND category = ? "
                          "AND ts >= ? LIMIT 10000", ("blocked", site, device, category, since))
        return sum(_int(_data(r).get("count")) for r in rows)

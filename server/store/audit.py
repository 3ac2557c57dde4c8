"""The ``audit`` table: who did what, when (DESIGN rule 6).

Every staff action that reads or changes a record, every rollout (with its diff) and
every retention purge is appended here, with the school (``site``) it concerns, so each
school's DSL and admin read only their own school's entries; nothing updates or deletes an entry except the
audit log's own retention period.  ``add_audit(tx, ...)`` is the one INSERT, used both
by ``Store.audit`` and inside other writes that must be audited in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .engine import Tx
from .schema import new_id, utcnow


def add_audit(tx: Tx, actor: str, action: str, target: str | None, details: str | None, ts: str,
              site: str | None = None) -> None:
    tx.execute("INSERT INTO audit (id, ts, actor, action, target, details, site) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (new_id(), ts, actor, action, target, details, site))


class AuditTable:
    """Store methods for the audit log (mixed into ``Store``)."""

    def audit(self, actor: str, action: str, target: str | None = None, details: Any = None,
              wait: bool = True, site: str | None = None) -> None:
        """Append to the audit log (who, when, what, details as JSON, and the school it
        concerns: *site*; None for what concerns the collector as a whole)."""
        text = details if isinstance(details, str) or details is None else json.dumps(details, default=str)
        self.write(lambda tx: add_audit(tx, actor, action, target, text, utcnow(), site), wait=wait)

    def list_audit(self, *, since: str | None = None, action: str | None = None, limit: int = 500,
                   sites: Sequence[str | None] | None = None) -> list[dict]:
        """Entries newest first; with *sites*, only those of these sites (None in it: the
        collector-wide entries, such as failed logins and purges)."""
        where, params = [], []
        if sites is not None:
            named = [s for s in sites if s is not None]
            parts = ["site IN (" + ", ".join("?" for _ in named) + ")"] if named else []
            if None in sites:
                parts.append("site IS NULL")
            if not parts:
                return []
            where.append("(" + " OR ".join(parts) + ")")
            params.extend(named)
        if since:
            where.append("ts >= ?")
            params.append(since)
        if action:
            where.append("action = ?")
            params.append(action)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        return self.query(sql + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))

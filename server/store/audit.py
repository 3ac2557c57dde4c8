"""The ``audit`` table: who did what, when (DESIGN rule 6).

Every staff action that reads or changes a record, every rollout (with its diff) and
every retention purge is appended here; nothing updates or deletes an entry except the
audit log's own retention period.  ``add_audit(tx, ...)`` is the one INSERT, used both
by ``Store.audit`` and inside other writes that must be audited in the same transaction.
"""

from __future__ import annotations

import json
from typing import Any

from .engine import Tx
from .schema import new_id, utcnow


def add_audit(tx: Tx, actor: str, action: str, target: str | None, details: str | None, ts: str) -> None:
    tx.execute("INSERT INTO audit (id, ts, actor, action, target, details) VALUES (?, ?, ?, ?, ?, ?)",
               (new_id(), ts, actor, action, target, details))


class AuditTable:
    """Store methods for the audit log (mixed into ``Store``)."""

    def audit(self, actor: str, action: str, target: str | None = None, details: Any = None,
              wait: bool = True) -> None:
        """Append to the audit log (who, when, what, details as JSON)."""
        text = details if isinstance(details, str) or details is None else json.dumps(details, default=str)
        self.write(lambda tx: add_audit(tx, actor, action, target, text, utcnow()), wait=wait)

    def list_audit(self, *, since: str | None = None, action: str | None = None, limit: int = 500) -> list[dict]:
        where, params = [], []
        if since:
            where.append("ts >= ?")
            params.append(since)
        if action:
            where.append("action = ?")
            params.append(action)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        return self.query(sql + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))

"""The ``exports`` table: every time a record left the collector for the school's own
safeguarding system (CPOMS, MyConcern, Arbor), as a PDF or CSV chronology.

One row per export: who, when, an incident or a pupil's incidents, the format, whether the
evidence domains were ticked in, and which incidents it held.  The incident page shows
them (the DSL's record), and the audit log gets a line too.
"""

from __future__ import annotations

import json
from typing import Sequence

from .schema import new_id, utcnow


class ExportsTable:
    """Store methods for the export log (mixed into ``Store``)."""

    def record_export(self, *, site: str, actor: str, kind: str, target: str, format: str,
                      with_evidence: bool, incidents: Sequence[str]) -> dict:
        row = {"id": new_id(), "site": site, "ts": utcnow(), "actor": actor, "kind": kind, "target": target,
               "format": format, "with_evidence": int(with_evidence), "incidents": json.dumps(list(incidents))}
        columns = list(row)
        self.execute(f"INSERT INTO exports ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                     [row[c] for c in columns])
        return {**row, "with_evidence": bool(with_evidence), "incidents": list(incidents)}

    def list_exports(self, site: str, *, incident_id: str | None = None, limit: int = 200) -> list[dict]:
        sql, params = "SELECT * FROM exports WHERE site = ?", [site]
        if incident_id is not None:
            # Exports of this incident alone, or of a pupil's incidents that held it.
            sql += " AND (target = ? OR incidents LIKE ?)"
            params += [incident_id, f'%"{incident_id}"%']
        rows = self.query(sql + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))
        for row in rows:
            row["with_evidence"] = bool(row["with_evidence"])
            row["incidents"] = json.loads(row["incidents"] or "[]")
        return rows

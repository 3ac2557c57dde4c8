"""The ``allowlist_changes`` table: every change to what pupils may reach, who asked, who agreed.

Policy 000 §7.3.1: changes to filtering are made "with consent from the leadership team;
all changes to the filtering policy are logged and recorded".  A row is a technician's
proposal (``kind`` ``domains``: add or remove domains in key stages; ``files``: a whole
config tree as YAML), the DSL's decision, and the rollout version it was published as.
A publish that changed an allow list without going through a proposal is recorded too
(``source`` ``publish``, status ``published``, no approver), so the change log is whole.
What a change means and how it is published is server/allowlist.py; here is how it is kept.
"""

from __future__ import annotations

import json
from typing import Any

from .engine import Tx
from .schema import new_id, utcnow

STATUSES = ("proposed", "approved", "rejected", "published")


def _row(row: dict | None) -> dict | None:
    if row is None:
        return None
    for key in ("key_stages", "add_domains", "remove_domains"):
        try:
            row[key] = json.loads(row[key] or "[]")
        except ValueError:
            row[key] = []
    row["files"] = json.loads(row["files"]) if row.get("files") else None
    return row


class AllowlistTable:
    """Store methods for allowlist change requests (mixed into ``Store``)."""

    def add_allowlist_change(self, *, site: str, kind: str, reason: str, source: str, proposed_by: str,
                             key_stages: list[str] = (), add_domains: list[str] = (),
                             remove_domains: list[str] = (), files: dict[str, str] | None = None,
                             status: str = "proposed", published_version: str | None = None,
                             base_version: str | None = None) -> dict:
        now = utcnow()
        row = {"id": new_id(), "site": site, "kind": kind, "key_stages": json.dumps(list(key_stages)),
               "add_domains": json.dumps(list(add_domains)), "remove_domains": json.dumps(list(remove_domains)),
               "files": json.dumps(files) if files is not None else None, "reason": reason, "source": source,
               "proposed_by": proposed_by, "proposed_at": now, "status": status,
               "base_version": base_version, "published_version": published_version,
               "published_at": now if status == "published" else None}
        columns = list(row)
        self.execute(f"INSERT INTO allowlist_changes ({', '.join(columns)}) VALUES "
                     f"({', '.join('?' for _ in columns)})", [row[c] for c in columns])
        return self.get_allowlist_change(row["id"], site)

    def get_allowlist_change(self, change_id: str, site: str) -> dict | None:
        return _row(self.query_one("SELECT * FROM allowlist_changes WHERE id = ? AND site = ?", (change_id, site)))

    def list_allowlist_changes(self, site: str, *, status: str | None = None, limit: int = 500) -> list[dict]:
        sql, params = "SELECT * FROM allowlist_changes WHERE site = ?", [site]
        if status:
            sql += " AND status = ?"
            params.append(status)
        rows = self.query(sql + " ORDER BY proposed_at DESC, id LIMIT ?", (*params, int(limit)))
        return [_row(r) for r in rows]

    def decide_allowlist_change(self, change_id: str, site: str, *, actor: str, approve: bool,
                                note: str | None) -> dict | None:
        """The DSL's decision on a proposal still open; None if there is no such open proposal."""
        now = utcnow()

        def run(tx: Tx) -> bool:
            return tx.execute("UPDATE allowlist_changes SET status = ?, decided_by = ?, decided_at = ?, "
                              "decision_note = ? WHERE id = ? AND site = ? AND status = 'proposed'",
                              ("approved" if approve else "rejected", actor, now, note, change_id, site)) == 1

        return self.get_allowlist_change(change_id, site) if self.write(run) else None

    def mark_allowlist_published(self, change_id: str, site: str, version: str) -> Any:
        return self.execute("UPDATE allowlist_changes SET status = 'published', published_version = ?, "
                            "published_at = ? WHERE id = ? AND site = ? AND status = 'approved'",
                            (version, utcnow(), change_id, site))

    def override_events(self, site: str, limit: int = 500) -> list[dict]:
        """Teachers' overrides (the agent's ``override_opened/closed/rejected`` events) at *site*,
        newest first, ``data`` parsed: the override history the DSL reads with the change log."""
        rows = self.query("SELECT id, type, ts, room, device, data FROM events WHERE site = ? AND type IN "
                          "('override_opened', 'override_closed', 'override_rejected') ORDER BY ts DESC, id LIMIT ?",
                          (site, int(limit)))
        for row in rows:
            try:
                row["data"] = json.loads(row["data"])
            except (TypeError, ValueError):
                row["data"] = {}
        return rows

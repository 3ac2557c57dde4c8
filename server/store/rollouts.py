"""The ``config_versions`` and ``rollouts`` tables: every config tree published, and each
publish or rollback that made one live.

``config_versions`` keeps each distinct tree once (content-addressed by its version):
the tree JSON devices are compiled from and the YAML files as published (for diffs).
``rollouts`` is append-only; per school (``site``), the highest ``seq`` is the live version.  ``add_rollout``
stores a version, its rollout record and the audit entry in ONE transaction, reading the
live version inside it, so two technicians publishing at once get consecutive ``seq``
numbers and the right ``previous``.  What a valid tree is, and telling devices, is
server/rollout.py's business.
"""

from __future__ import annotations

import json
from typing import Callable

from .audit import add_audit
from .engine import Tx


class RolloutsTable:
    """Store methods for config versions and rollouts (mixed into ``Store``).

    Each school (site) has its own config tree: "live" and "previous" are per site, and
    ``seq`` orders every rollout of the collector."""

    def current_rollout(self, site: str | None = None) -> dict | None:
        """The live rollout row of *site* (highest seq), or None before its first publish."""
        if site is None:
            return self.query_one("SELECT * FROM rollouts ORDER BY seq DESC LIMIT 1")
        return self.query_one("SELECT * FROM rollouts WHERE site = ? ORDER BY seq DESC LIMIT 1", (site,))

    def live_rollouts(self) -> dict[str, dict]:
        """{site: live rollout row} for every site that has had a rollout."""
        rows = self.query("SELECT * FROM rollouts r WHERE site IS NOT NULL AND seq = "
                          "(SELECT MAX(seq) FROM rollouts r2 WHERE r2.site = r.site)")
        return {r["site"]: r for r in rows}

    def list_rollouts(self, limit: int = 200, site: str | None = None) -> list[dict]:
        """Rollout rows (of *site*), newest first."""
        if site is None:
            return self.query("SELECT * FROM rollouts ORDER BY seq DESC LIMIT ?", (limit,))
        return self.query("SELECT * FROM rollouts WHERE site = ? ORDER BY seq DESC LIMIT ?", (site, limit))

    def unsited_rollout_versions(self) -> list[str]:
        """Versions of rollouts written before tenancy (no site yet)."""
        return [r["version"] for r in self.query("SELECT DISTINCT version FROM rollouts WHERE site IS NULL")]

    def set_rollout_site(self, version: str, site: str) -> int:
        return self.execute("UPDATE rollouts SET site = ? WHERE version = ? AND site IS NULL", (site, version))

    def config_files(self, version: str) -> dict[str, str] | None:
        """{path: YAML text} of a published version, or None if unknown."""
        row = self.query_one("SELECT files FROM config_versions WHERE version = ?", (version,))
        return json.loads(row["files"]) if row else None

    def config_tree(self, version: str) -> dict | None:
        """The tree JSON (ConfigTree.to_dict()) of a published version, or None if unknown."""
        row = self.query_one("SELECT tree FROM config_versions WHERE version = ?", (version,))
        return json.loads(row["tree"]) if row else None

    def add_rollout(self, *, rollout_id: str, ts: str, version: str, tree_json: str, files_json: str, kind: str,
                    actor: str, why: str, devices: int, site: str,
                    audit_details: Callable[[str | None, dict[str, str]], str]) -> dict | None:
        """Make *version* live for *site*: store it (once), append the rollout record and its
        audit entry.

        ``audit_details(previous, previous_files)`` gives the audit entry's details (it
        runs inside the transaction).  Returns the rollout row, or None if *version* is
        already live (then nothing is stored)."""

        def run(tx: Tx) -> dict | None:
            cur = tx.query_one("SELECT version FROM rollouts WHERE site = ? ORDER BY seq DESC LIMIT 1", (site,))
            previous = cur["version"] if cur else None
            if previous == version:
                return None
            old_files = {}
            if previous:
                row = tx.query_one("SELECT files FROM config_versions WHERE version = ?", (previous,))
                old_files = json.loads(row["files"]) if row else {}
            top = tx.query_one("SELECT MAX(seq) AS seq FROM rollouts")
            seq = int(top["seq"] or 0) + 1 if top else 1
            tx.execute("INSERT INTO config_versions (version, tree, files, created_at, created_by) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
                       (version, tree_json, files_json, ts, actor))
            tx.execute("INSERT INTO rollouts (id, seq, ts, version, previous, kind, actor, why, devices, site) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (rollout_id, seq, ts, version, previous, kind, actor, why, devices, site))
            add_audit(tx, actor, f"config.{kind}", version, audit_details(previous, old_files), ts, site)
            return {"id": rollout_id, "seq": seq, "ts": ts, "version": version, "previous": previous, "kind": kind,
                    "actor": actor, "why": why, "devices": devices, "site": site}

        return self.write(run)

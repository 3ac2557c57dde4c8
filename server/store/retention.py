"""Deleting rows whose time is up: the SQL of retention.

Which rows go when (site.yaml ``retention``) is decided in server/retention.py; here is
how: each purgeable table's time column (``PURGEABLE``), event purges by type, and the
purge of closed incidents together with their timeline, notes, evidence events and the
escalation messages sent about them (deliveries and their attempts).  Each school sets
its own periods, so every purge can be limited to one ``site`` (``SITE_WHERE`` says how a
table's rows belong to a site).

A device the DSL holds (holds.py) keeps every row from the hold's ``held_from`` on: each
purge of a device table carries ``held_clause``, so nothing of a held device goes until
the hold is lifted, and then only what the periods say.

A table purge deletes in batches of ``PURGE_BATCH`` rows, one transaction each, until a
batch comes back short: a school's year of blocked attempts is millions of rows, and one
DELETE of them all would hold SQLite's one writer (so ingest) for minutes and make one huge
PostgreSQL transaction.  Between batches ingest commits as usual.  A batch picks its rows by
their physical row id (SQLite ``rowid``, PostgreSQL ``ctid`` through ``= ANY(ARRAY(...))``,
which PostgreSQL fetches directly rather than scanning the table for each batch).
"""

from __future__ import annotations

from typing import Sequence

from .engine import StoreError, Tx
from .holds import held_clause

# Rows deleted per transaction by a table purge (see the module docstring).
PURGE_BATCH = 5000

# Tables with a time column retention may purge, and that column.
PURGEABLE = {"heartbeats": "ts", "events": "ts", "incidents": "closed_at", "audit": "ts",
             "alert_transitions": "ts", "incident_actions": "ts", "device_alerts": "raised_at",
             "sessions": "expires_at", "enrol_tokens": "expires_at", "oidc_flows": "expires_at",
             "it_queue": "done_at", "exports": "ts", "allowlist_changes": "proposed_at", "reviews": "recorded_at",
             "check_actions": "ts", "filter_tests": "started_at", "aup_acceptances": "accepted_at",
             "room_commands": "sent_at", "cover": "created_at", "holds": "lifted_at", "risk_windows": "opened_at"}


# How a row of each table belongs to a school, for a purge limited to one site.
SITE_WHERE = {"heartbeats": "device IN (SELECT id FROM devices WHERE site = ?)", "events": "site = ?",
              "incidents": "site = ?", "audit": "site = ?", "alert_transitions": "site = ?",
              "device_alerts": "site = ?", "enrol_tokens": "site = ?", "it_queue": "site = ?",
              "exports": "site = ?", "allowlist_changes": "site = ?", "reviews": "site = ?",
              "check_actions": "site = ?", "filter_tests": "site = ?", "aup_acceptances": "site = ?",
              "room_commands": "site = ?", "cover": "site = ?", "holds": "site = ?", "risk_windows": "site = ?"}


def _marks(values: Sequence) -> str:
    return "(" + ", ".join("?" for _ in values) + ")"


class RetentionTable:
    """Store methods for retention purges (mixed into ``Store``).  With *site*, a purge
    touches that school's rows only (None: every row, a single-school install)."""

    purge_batch = PURGE_BATCH

    def purge(self, table: str, before: str, site: str | None = None) -> int:
        """Delete rows of *table* whose time column is older than *before*; returns rows deleted."""
        return self._purge(table, before, site=site)

    def purge_events(self, before: str, *, types: Sequence[str] = (), except_types: Sequence[str] = (),
                     site: str | None = None) -> int:
        """Delete events older than *before* of *types* (or of any type but *except_types*)."""
        if types:
            return self._purge("events", before, f"type IN {_marks(types)}", types, site)
        return self._purge("events", before, f"type NOT IN {_marks(except_types)}", except_types, site)

    def purge_collector_audit(self, before: str) -> int:
        """Delete audit entries that concern no school (site NULL) older than *before*."""
        return self._purge("audit", before, "site IS NULL")

    def purge_cleared_device_alerts(self, before: str, site: str | None = None) -> int:
        """Delete technician alerts raised before *before* that have been cleared."""
        return self._purge("device_alerts", before, "cleared_at IS NOT NULL", (), site)

    def purge_closed_incidents(self, before: str, evidence_types: Sequence[str], site: str | None = None) -> int:
        """Delete incidents closed before *before* with their timeline, actions, evidence events
        (events of *evidence_types* carrying the alert id) and escalation deliveries; returns
        incidents deleted."""

        def run(tx: Tx) -> int:
            sql = ("SELECT id FROM incidents WHERE status = 'closed' AND closed_at IS NOT NULL AND closed_at < ? AND "
                   + held_clause("incidents", "raised_at"))
            params: tuple = (before,)
            if site is not None:
                sql, params = sql + " AND site = ?", (before, site)
            ids = [row["id"] for row in tx.query(sql, params)]
            for incident_id in ids:
                tx.execute("DELETE FROM incident_actions WHERE incident_id = ?", (incident_id,))
                tx.execute("DELETE FROM concerns WHERE incident_id = ?", (incident_id,))
                tx.execute("DELETE FROM alert_transitions WHERE alert_id = ?", (incident_id,))
                tx.execute("DELETE FROM delivery_attempts WHERE delivery_id IN "
                           "(SELECT id FROM deliveries WHERE alert_id = ?)", (incident_id,))
                tx.execute("DELETE FROM deliveries WHERE alert_id = ?", (incident_id,))
                tx.execute(f"DELETE FROM events WHERE alert_id = ? AND type IN {_marks(evidence_types)}",
                           (incident_id, *evidence_types))
                tx.execute("DELETE FROM incidents WHERE id = ?", (incident_id,))
            return len(ids)

        return self.write(run)

    def purge_notice_deliveries(self, before: str, reasons: Sequence[str], site: str | None = None) -> int:
        """Delete the deliveries (and their attempts) of *reasons* created before *before* (of
        *site*): the messages about guard events, failed checks and high-risk blocked attempts,
        which belong to no incident."""

        def run(tx: Tx) -> int:
            where = f"reason IN {_marks(reasons)} AND created_at < ?"
            params: tuple = (*reasons, before)
            if site is not None:
                where, params = where + " AND site = ?", (*params, site)
            tx.execute(f"DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE {where})",
                       params)
            return tx.execute(f"DELETE FROM deliveries WHERE {where}", params)

        return self.write(run)

    def _purge(self, table: str, before: str, where: str = "", params: Sequence = (),
               site: str | None = None) -> int:
        column = PURGEABLE.get(table)
        if column is None:
            raise StoreError(f"{table!r} has no retention rule")
        sql = f"{column} IS NOT NULL AND {column} < ?"
        if where:
            sql += f" AND ({where})"
        held = held_clause(table, column)
        if held:
            sql += f" AND {held}"
        params = (before, *params)
        if site is not None:
            if table not in SITE_WHERE:
                raise StoreError(f"{table!r} rows belong to no school; purge it without a site")
            sql += f" AND {SITE_WHERE[table]}"
            params = (*params, site)
        batch = int(self.purge_batch)
        if self.dialect == "postgresql":
            sql = f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {sql} LIMIT {batch}))"
        else:
            sql = f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {sql} LIMIT {batch})"
        total = 0
        while True:
            deleted = self.execute(sql, params)
            total += deleted
            if deleted < batch:
                return total

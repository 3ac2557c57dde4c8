"""The ``holds`` table: the DSL's hold on an incident's device (policy 000 §11.4).

A hold is placed on one incident and covers its device: the device stays locked until the
DSL lifts it (server/holds.py sends the commands), and every record of that device from
``held_from`` (24 hours before the press) on is kept out of the retention purge while the
hold is in force (``HELD_TABLES`` and ``held_clause``, used by retention.py).  A lifted hold
stays as a record (who placed it, why, who lifted it and why) as long as the audit log.
Every query takes the site: a DSL of one school never sees or lifts another's.
"""

from __future__ import annotations

from datetime import timedelta

from agent.protocol import parse_ts

from .engine import Tx
from .schema import iso, new_id, utcnow

# Records from this long before the press are kept while the hold is in force.
HOLD_BEFORE = timedelta(hours=24)

# Device tables retention purges, and whether they have a site column: while a hold is in
# force, their rows for the held device from held_from on are not purged.
HELD_TABLES = {"events": True, "heartbeats": False, "alert_transitions": True, "device_alerts": False,
               "incidents": True}


def held_clause(table: str, column: str) -> str:
    """SQL that is true for a row of *table* no hold in force keeps (``""`` for other tables)."""
    if table not in HELD_TABLES:
        return ""
    site = f" AND h.site = {table}.site" if HELD_TABLES[table] else ""
    return (f"NOT EXISTS (SELECT 1 FROM holds h WHERE h.lifted_at IS NULL AND h.device = {table}.device{site} "
            f"AND {table}.{column} >= h.held_from)")


class HoldsTable:
    """Store methods for holds (mixed into ``Store``)."""

    def place_hold(self, incident: dict, by: str, reason: str, now: str | None = None) -> dict:
        """A new hold on *incident*'s device (an incident row: id, site, room, device, raised_at)."""
        now = now or utcnow()
        row = {"id": new_id(), "site": incident["site"], "incident_id": incident["id"], "room": incident["room"],
               "device": incident["device"], "held_from": iso(parse_ts(incident["raised_at"]) - HOLD_BEFORE),
               "placed_at": now, "placed_by": by, "reason": reason, "lifted_at": None, "lifted_by": None,
               "lift_reason": None}
        columns = list(row)
        self.execute(f"INSERT INTO holds ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                     [row[c] for c in columns])
        return row

    def lift_hold(self, site: str, hold_id: str, by: str, reason: str, now: str | None = None) -> dict | None:
        """Lift a hold in force; the lifted row, or None if there is none in force by that id at *site*."""
        now = now or utcnow()

        def run(tx: Tx) -> dict | None:
            if tx.execute("UPDATE holds SET lifted_at = ?, lifted_by = ?, lift_reason = ? "
                          "WHERE id = ? AND site = ? AND lifted_at IS NULL", (now, by, reason, hold_id, site)) != 1:
                return None
            return tx.query_one("SELECT * FROM holds WHERE id = ?", (hold_id,))

        return self.write(run)

    def get_hold(self, site: str, hold_id: str) -> dict | None:
        return self.query_one("SELECT * FROM holds WHERE id = ? AND site = ?", (hold_id, site))

    def holds_for_incident(self, site: str, incident_id: str) -> list[dict]:
        """Every hold placed on the incident, newest first."""
        return self.query("SELECT * FROM holds WHERE site = ? AND incident_id = ? ORDER BY placed_at DESC, id",
                          (site, incident_id))

    def list_holds(self, site: str, *, active: bool | None = None, limit: int = 500) -> list[dict]:
        """Holds at *site*, newest first; *active*: only those in force (True) or lifted (False)."""
        where = "site = ?" + {None: "", True: " AND lifted_at IS NULL", False: " AND lifted_at IS NOT NULL"}[active]
        return self.query(f"SELECT * FROM holds WHERE {where} ORDER BY placed_at DESC, id LIMIT ?", (site, int(limit)))

    def device_holds(self, site: str, device: str, lifted_since: str) -> list[dict]:
        """The device's holds in force and those lifted since *lifted_since* (what a reconnecting
        device is told again), oldest first."""
        return self.query("SELECT * FROM holds WHERE site = ? AND device = ? AND (lifted_at IS NULL OR lifted_at >= ?) "
                          "ORDER BY placed_at, id", (site, device, lifted_since))

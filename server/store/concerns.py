"""The ``concerns`` and ``it_queue`` tables: concerns staff log by hand, and the technicians' queue.

A concern is an incident that did not start from a button press (policy 000 §7.3.2: staff
"report the concern (including the URL...) to the DSL"; 002 §6.1).  ``log_concern`` writes,
in one transaction, the incident row (so it has the normal record and checklist), one
``alert_transitions`` row in state ``logged`` (its timeline: when, and by whom), the
concern's own row (what happened, the URL or domain) and, when staff ticked "tell IT" and
gave a domain, a row in the technicians' queue.  Every query takes the site.
"""

from __future__ import annotations

from typing import Sequence

from .engine import Tx
from .schema import new_id, utcnow

# The alert_state of an incident staff logged by hand: not an alert, never open on a room view.
LOGGED = "logged"
IT_STATUSES = ("open", "done")


class ConcernsTable:
    """Store methods for staff-logged concerns and the IT queue (mixed into ``Store``)."""

    def log_concern(self, *, site: str, room: str, logged_by: str, what: str, device: str | None = None,
                    url: str | None = None, domain: str | None = None, happened_at: str | None = None,
                    tell_it: bool = False, category: str | None = None) -> str:
        """Record a concern; returns the new incident's id."""
        now = utcnow()
        incident_id = new_id()
        when = happened_at or now

        def run(tx: Tx) -> None:
            tx.execute("INSERT INTO incidents (id, site, room, device, seat, raised_at, alert_state, category, "
                       "created_at, updated_at) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                       (incident_id, site, room, device or "", when, LOGGED, category, now, now))
            tx.execute("INSERT INTO alert_transitions (alert_id, state, ts, by_whom, site, room, device, seat, "
                       "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                       (incident_id, LOGGED, when, logged_by, site, room, device or "", now))
            tx.execute("INSERT INTO concerns (incident_id, site, room, device, logged_by, logged_at, happened_at, "
                       "what, url, domain, tell_it) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (incident_id, site, room, device, logged_by, now, when, what, url, domain, int(tell_it)))
            if category:
                tx.execute("INSERT INTO incident_actions (id, incident_id, ts, actor, kind, item, text) "
                           "VALUES (?, ?, ?, ?, 'set', 'category', ?)",
                           (new_id(), incident_id, now, logged_by, category))
            if tell_it and (domain or url):
                tx.execute("INSERT INTO it_queue (id, site, domain, url, room, device, incident_id, asked_by, "
                           "asked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (new_id(), site, domain, url, room, device, incident_id, logged_by, now))

        self.write(run)
        return incident_id

    def get_concern(self, incident_id: str, site: str | None = None) -> dict | None:
        """The concern behind an incident (None for a button press)."""
        sql, params = "SELECT * FROM concerns WHERE incident_id = ?", [incident_id]
        if site is not None:
            sql += " AND site = ?"
            params.append(site)
        row = self.query_one(sql, params)
        if row is not None:
            row["tell_it"] = bool(row["tell_it"])
        return row

    # ------------------------------------------------------------------ the IT queue

    def list_it_queue(self, site: str, *, status: str | None = None, limit: int = 500) -> list[dict]:
        sql, params = "SELECT * FROM it_queue WHERE site = ?", [site]
        if status:
            sql += " AND status = ?"
            params.append(status)
        return self.query(sql + " ORDER BY asked_at DESC, id LIMIT ?", (*params, int(limit)))

    def add_it_request(self, *, site: str, asked_by: str, domain: str | None = None, url: str | None = None,
                       room: str | None = None, device: str | None = None, incident_id: str | None = None) -> str:
        row_id = new_id()
        self.execute("INSERT INTO it_queue (id, site, domain, url, room, device, incident_id, asked_by, asked_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (row_id, site, domain, url, room, device, incident_id, asked_by, utcnow()))
        return row_id

    def close_it_request(self, item_id: str, site: str, actor: str, note: str | None) -> bool:
        """Mark a queue item done (with what IT did); False if it is not this site's open item."""
        return self.execute("UPDATE it_queue SET status = 'done', done_by = ?, done_at = ?, note = ? "
                            "WHERE id = ? AND site = ? AND status = 'open'",
                            (actor, utcnow(), note, item_id, site)) == 1

    def concerns_for(self, incident_ids: Sequence[str]) -> dict[str, dict]:
        """``{incident_id: concern}`` for those of *incident_ids* staff logged."""
        if not incident_ids:
            return {}
        rows = self.query("SELECT * FROM concerns WHERE incident_id IN (" + ", ".join("?" for _ in incident_ids)
                          + ")", list(incident_ids))
        return {r["incident_id"]: r for r in rows}

"""The ``alert_transitions``, ``incidents`` and ``incident_actions`` tables: the DSL's record.

Each alert id becomes one incident (id = alert id) as its transitions are ingested
(``record_alert``, also called inside the ingest batch).  Transitions are de-duplicated
by ``(alert_id, state)``; resends can arrive out of order, so the incident always shows
the latest transition by device time and the raise time once it is known.  An incident belongs to the
device that raised it: a transition or evidence from another device naming its id is
refused (in the ingest batch: counted and logged by ingest, ``refused`` in its result), and
evidence is read back only from the incident's own device.  Staff changes (category, tags, status, outcome) are recorded as
actions next to notes and checklist ticks.  What staff may see of it is decided in server/incidents.py, not here.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

from .engine import StoreError, Tx
from .schema import new_id, str_or_none, utcnow

log = logging.getLogger(__name__)

# Incident fields staff may change (PATCH); everything else comes from the device.
INCIDENT_FIELDS = ("category", "tags", "status", "outcome")

# Transitions with the same device timestamp (ms) sort in lifecycle order.
STATE_ORDER = ("CASE state WHEN 'raised' THEN 0 WHEN 'escalated' THEN 1 WHEN 'acknowledged' THEN 2 "
               "WHEN 'cleared' THEN 3 ELSE 4 END")


class IncidentsTable:
    """Store methods for alert transitions and incidents (mixed into ``Store``)."""

    # ------------------------------------------------------------------ from devices

    def record_alert(self, alert: dict) -> bool:
        """Store one validated alert transition; False if it was a duplicate."""
        now = utcnow()
        new = self.write(lambda tx: self._record_alert(tx, alert, now))
        self._bump(alerts_inserted=int(new), alerts_duplicate=int(not new))
        return new

    def _record_alert(self, tx: Tx, alert: dict, now: str, refused: list | None = None) -> bool:
        owner = _other_owner(tx, alert["id"], alert["site"], alert["room"], alert["device"])
        if owner is not None:
            # One device's credentials must not change another device's incident by
            # reusing its alert id (ingest has already checked the payload names the
            # device whose topic it came on).  The caller logs and counts *refused*.
            why = (f"alert {alert['id']} {alert['state']} from {alert['site']}/{alert['room']}/{alert['device']} "
                   f"refused: that incident belongs to {owner['site']}/{owner['room']}/{owner['device']}")
            if refused is None:
                log.warning("%s", why)
            else:
                refused.append(why)
            return False
        inserted = tx.execute(
            "INSERT INTO alert_transitions (alert_id, state, ts, by_whom, site, room, device, seat, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id, state) DO NOTHING",
            (alert["id"], alert["state"], alert["ts"], str_or_none(alert.get("by")), alert["site"], alert["room"],
             alert["device"], str_or_none(alert.get("seat")), now),
        )
        if inserted != 1:
            return False
        tx.execute(
            "INSERT INTO incidents (id, site, room, device, seat, raised_at, alert_state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (alert["id"], alert["site"], alert["room"], alert["device"], str_or_none(alert.get("seat")),
             alert["ts"], alert["state"], now, now),
        )
        # Resends can arrive out of order: the incident shows the latest transition by
        # device time, and the raise time once it is known.
        tx.execute(
            "UPDATE incidents SET updated_at = ?, "
            "alert_state = (SELECT state FROM alert_transitions WHERE alert_id = ? ORDER BY ts DESC, "
            + STATE_ORDER + " DESC LIMIT 1), "
            "raised_at = (SELECT MIN(ts) FROM alert_transitions WHERE alert_id = ?), "
            "seat = COALESCE(seat, ?) WHERE id = ?",
            (now, alert["id"], alert["id"], str_or_none(alert.get("seat")), alert["id"]),
        )
        return True

    # ------------------------------------------------------------------ reading

    def list_incidents(self, *, site: str | None = None, rooms: Sequence[str] | None = None,
                       status: str | None = None, since: str | None = None, received_since: str | None = None,
                       limit: int = 200) -> list[dict]:
        """Incidents with their timelines, newest first, of *site* (and of its *rooms*: a room
        id is a school's own, so staff-facing callers always give the site).  *since* compares
        the device's raise time; *received_since* the collector's (``created_at``: a device
        clock that is wrong does not move it)."""
        where, params = [], []
        if site is not None:
            where.append("site = ?")
            params.append(site)
        if rooms is not None:
            if not rooms:
                return []
            where.append("room IN (" + ", ".join("?" for _ in rooms) + ")")
            params.extend(rooms)
        if status:
            where.append("status = ?")
            params.append(status)
        if since:
            where.append("raised_at >= ?")
            params.append(since)
        if received_since:
            where.append("created_at >= ?")
            params.append(received_since)
        sql = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.query(sql + " ORDER BY raised_at DESC, id LIMIT ?", (*params, int(limit)))
        if rows:
            ids = [r["id"] for r in rows]
            transitions = self.query(
                "SELECT * FROM alert_transitions WHERE alert_id IN (" + ", ".join("?" for _ in ids) + ") "
                "ORDER BY ts, " + STATE_ORDER, ids)
            by_id: dict[str, list] = {}
            for t in transitions:
                by_id.setdefault(t["alert_id"], []).append(_transition(t))
            for row in rows:
                _incident_row(row)
                row["timeline"] = by_id.get(row["id"], [])
        return rows

    def get_incident(self, incident_id: str) -> dict | None:
        row = self.query_one("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if row is None:
            return None
        _incident_row(row)
        row["timeline"] = [_transition(t) for t in self.query(
            "SELECT * FROM alert_transitions WHERE alert_id = ? ORDER BY ts, " + STATE_ORDER, (incident_id,))]
        row["actions"] = self.query(
            "SELECT id, ts, actor, kind, item, text FROM incident_actions WHERE incident_id = ? ORDER BY ts, id",
            (incident_id,))
        # The DSL's record (server/incidents.py VISIBLE_FIELDS): who was logged in at the press,
        # the concern staff wrote if they logged it by hand, and every export of it.
        row["session_user"] = self.session_user(incident_id)
        row["concern"] = self.get_concern(incident_id, row["site"])
        row["exports"] = self.list_exports(row["site"], incident_id=incident_id)
        return row

    def session_user(self, incident_id: str) -> str | None:
        """Who was logged in on the device at the press: the user its report_evidence names
        (only the incident's own device's evidence counts, as for ``evidence``)."""
        row = self.query_one("SELECT e.user_name FROM events e JOIN incidents i ON i.id = e.alert_id "
                             "WHERE e.type = 'report_evidence' AND e.alert_id = ? AND e.site = i.site "
                             "AND e.room = i.room AND e.device = i.device AND e.user_name IS NOT NULL "
                             "ORDER BY e.ts DESC LIMIT 1", (incident_id,))
        return row["user_name"] if row else None

    def incidents_of_user(self, site: str, user: str, limit: int = 500) -> list[str]:
        """Ids of the incidents at *site* whose press was made while *user* was logged in, oldest first."""
        rows = self.query("SELECT DISTINCT i.id, i.raised_at FROM incidents i JOIN events e ON e.alert_id = i.id "
                          "WHERE e.type = 'report_evidence' AND e.user_name = ? AND i.site = ? AND e.site = i.site "
                          "AND e.room = i.room AND e.device = i.device ORDER BY i.raised_at LIMIT ?",
                          (user, site, int(limit)))
        return [r["id"] for r in rows]

    def evidence(self, incident_id: str) -> list[dict]:
        """report_evidence events for an alert: domains and times only (never imagery), and only
        those sent by the incident's own device (another device naming this alert id is not evidence)."""
        rows = self.query("SELECT e.id, e.ts, e.device, e.data FROM events e JOIN incidents i ON i.id = e.alert_id "
                          "WHERE e.type = 'report_evidence' AND e.alert_id = ? AND e.site = i.site "
                          "AND e.room = i.room AND e.device = i.device ORDER BY e.ts", (incident_id,))
        out = []
        for row in rows:
            data = json.loads(row["data"])
            out.append({"event_id": row["id"], "ts": row["ts"], "device": row["device"],
                        "minutes": data.get("minutes"),
                        "domains": [{k: d.get(k) for k in ("domain", "ts", "count") if k in d}
                                    for d in data.get("domains", []) if isinstance(d, dict)]})
        return out

    def incidents_raised_between(self, start: str, end: str, site: str | None = None) -> list[dict]:
        """Incidents raised in [start, end) (of *site*): room, category, status, alert_state,
        raised_at (the weekly report)."""
        sql = ("SELECT room, category, status, alert_state, raised_at FROM incidents "
               "WHERE raised_at >= ? AND raised_at < ?")
        if site is not None:
            return self.query(sql + " AND site = ?", [start, end, site])
        return self.query(sql, [start, end])

    # ------------------------------------------------------------------ staff changes

    def update_incident(self, incident_id: str, actor: str, changes: dict) -> dict | None:
        """Apply staff changes (category/tags/status/outcome) and record each as an action."""
        unknown = set(changes) - set(INCIDENT_FIELDS)
        if unknown:
            raise StoreError(f"cannot change {', '.join(sorted(unknown))}")
        now = utcnow()

        def run(tx: Tx) -> bool:
            if tx.query_one("SELECT id FROM incidents WHERE id = ?", (incident_id,)) is None:
                return False
            for key, value in changes.items():
                stored = json.dumps(value) if key == "tags" else value
                tx.execute(f"UPDATE incidents SET {key} = ?, updated_at = ? WHERE id = ?", (stored, now, incident_id))
                tx.execute("INSERT INTO incident_actions (id, incident_id, ts, actor, kind, item, text) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (new_id(), incident_id, now, actor, "set", key,
                            json.dumps(value) if not isinstance(value, str) else value))
            if changes.get("status") == "closed":
                tx.execute("UPDATE incidents SET closed_at = ? WHERE id = ?", (now, incident_id))
            elif "status" in changes:
                tx.execute("UPDATE incidents SET closed_at = NULL WHERE id = ?", (incident_id,))
            return True

        return self.get_incident(incident_id) if self.write(run) else None

    def add_incident_action(self, incident_id: str, actor: str, kind: str, item: str | None = None,
                            text: str | None = None) -> dict | None:
        now = utcnow()
        action = {"id": new_id(), "ts": now, "actor": actor, "kind": kind, "item": item, "text": text}

        def run(tx: Tx) -> bool:
            if tx.query_one("SELECT id FROM incidents WHERE id = ?", (incident_id,)) is None:
                return False
            tx.execute("INSERT INTO incident_actions (id, incident_id, ts, actor, kind, item, text) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (action["id"], incident_id, now, actor, kind, item, text))
            tx.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (now, incident_id))
            return True

        return action if self.write(run) else None


def _other_owner(tx: Tx, alert_id: str, site: str, room: str, device: str) -> dict | None:
    """The incident's (site, room, device) if *alert_id* is already another device's incident."""
    row = tx.query_one("SELECT site, room, device FROM incidents WHERE id = ?", (alert_id,))
    if row is None or (row["site"], row["room"], row["device"]) == (site, room, device):
        return None
    return row


def foreign_evidence(tx: Tx, rows: Sequence[tuple], columns: Sequence[str]) -> dict[int, str]:
    """``{index: why}`` for the ``report_evidence`` event *rows* (tuples in *columns* order)
    whose alert id is another device's incident: the caller drops them, logs and counts."""
    col = {name: i for i, name in enumerate(columns)}
    refused = {}
    for index, row in enumerate(rows):
        if row[col["type"]] != "report_evidence" or not row[col["alert_id"]]:
            continue
        owner = _other_owner(tx, row[col["alert_id"]], row[col["site"]], row[col["room"]], row[col["device"]])
        if owner is not None:
            refused[index] = (f"report_evidence {row[col['id']]} from {row[col['site']]}/{row[col['room']]}/"
                              f"{row[col['device']]} refused: alert {row[col['alert_id']]} belongs to "
                              f"{owner['site']}/{owner['room']}/{owner['device']}")
    return refused


def _transition(row: dict) -> dict:
    return {"state": row["state"], "ts": row["ts"], "by": row["by_whom"], "received_at": row["received_at"]}


def _incident_row(row: dict) -> None:
    try:
        row["tags"] = json.loads(row["tags"] or "[]")
    except ValueError:
        row["tags"] = []

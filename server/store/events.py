"""The ``events`` table, and the ingest batch: what MQTT ingest hands the store.

``ingest(items)`` stores one batch of validated ``(Topic, payload)`` pairs in ONE
transaction across the tables they touch: events (here), alert transitions and incidents
(incidents.py), device status, heartbeats and last-seen (devices.py), and the answers
(``cmd_result``) to a teacher's room commands and each device's lock (commands.py).  This is the hot
path (bench/ingest.py): rows are built before the write task is queued, so the writer
thread only runs SQL, and big event batches take the engine's bulk path (engine.py).

An event's ``id`` is the agent's UUID: the primary key is the de-duplication (DESIGN
rule 5), so a resend after a reconnect is skipped, never stored twice.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from typing import Sequence

from .aup import AUP_EVENT, aup_rows
from .engine import Tx
from .incidents import foreign_evidence
from .schema import str_or_none, utcnow

log = logging.getLogger(__name__)

# Columns of the events table, in insert order.
EVENT_COLUMNS = ("id", "type", "ts", "site", "room", "device", "user_name", "domain", "profile", "alert_id",
                 "data", "received_at", "category")


def event_row(event: dict, received_at: str, raw: bytes | str | None = None) -> tuple:
    """One events row from a validated event payload (*raw*: its JSON as received, stored as is)."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8")
    return (
        event["id"], event["type"], event["ts"], event["site"], event["room"], event["device"],
        str_or_none(event.get("user")), str_or_none(event.get("domain")), str_or_none(event.get("profile")),
        str_or_none(event.get("alert_id")),
        raw if raw is not None else json.dumps(event, separators=(",", ":"), ensure_ascii=False), received_at,
        # The risk list a blocked attempt matched (agent/filter/risk.py); validated as an id.
        str_or_none(event.get("category")) if event["type"] == "blocked" else None,
    )


class EventsTable:
    """Store methods for events and the ingest batch (mixed into ``Store``)."""

    def _insert_event_rows(self, tx: Tx, rows: list[tuple], refused: list | None = None) -> int:
        # Evidence naming another device's alert is not that alert's evidence (incidents.py).
        foreign = foreign_evidence(tx, rows, EVENT_COLUMNS)
        if foreign:
            rows = [row for i, row in enumerate(rows) if i not in foreign]
            if refused is None:
                for why in foreign.values():
                    log.warning("%s", why)
            else:
                refused.extend(foreign.values())
        if not rows:
            return 0
        inserted = tx.insert_new("events", EVENT_COLUMNS, "id", rows)
        # Acceptable use per pupil per term (aup.py), in the same transaction as its event.
        if any(row[1] == AUP_EVENT for row in rows):
            self._record_aup(tx, aup_rows(rows, EVENT_COLUMNS))
        return inserted

    # ------------------------------------------------------------------ ingest

    def insert_events(self, events: Sequence[dict], wait: bool = True) -> int | Future:
        """Store validated event payloads; duplicates (same id) are skipped.  Returns rows inserted."""
        now = utcnow()
        rows = [event_row(e, now) for e in events]

        def run(tx: Tx) -> int:
            inserted = self._insert_event_rows(tx, rows) if rows else 0
            self._touch_devices(tx, [(e["site"], e["room"], e["device"]) for e in events], now)
            return inserted

        result = self.write(run, wait=wait)
        if wait:
            self._bump(events_inserted=result, events_duplicate=len(rows) - result)
        return result

    def ingest(self, items: Sequence[tuple], wait: bool = True) -> dict | Future:
        """Store a batch of validated ``(Topic, payload)`` pairs (or ``(Topic, payload, raw_bytes)``)
        in ONE transaction.

        Returns ``{"events": inserted, "duplicates": n, "alerts": [new transitions],
        "alert_duplicates": n, "status": n, "heartbeats": n, "refused": [one line per transition
        or evidence refused because it names another device's incident]}``."""
        now = utcnow()
        events, alerts, statuses, beats, touched, answers, locks = [], [], [], [], [], [], []
        for item in items:
            where, data = item[0], item[1]
            if where.kind not in ("event", "alert", "status", "heartbeat"):
                continue  # e.g. a receiver's presence: read by the listeners, not stored
            touched.append((where.site, where.room, where.device))
            if where.kind == "event":
                events.append(event_row(data, now, item[2] if len(item) > 2 else None))
                if data["type"] == "cmd_result":
                    answers.append(data)
                elif data["type"] in ("lock", "unlock"):
                    locks.append(data)
            elif where.kind == "alert":
                alerts.append(data)
            elif where.kind == "status":
                statuses.append((where, data))
            elif where.kind == "heartbeat":
                beats.append((where, data))

        def run(tx: Tx) -> dict:
            refused: list[str] = []
            inserted = self._insert_event_rows(tx, events, refused) if events else 0
            events_refused = len(refused)
            new_alerts = [a for a in alerts if self._record_alert(tx, a, now, refused)]
            for where, data in statuses:
                self._record_status(tx, where.site, where.room, where.device, data)
            if beats:
                self._record_heartbeats(tx, beats, now)
            if answers:
                self._record_cmd_results(tx, answers, now)
            if locks:
                self._record_locks(tx, locks)
            self._touch_devices(tx, touched, now)
            alerts_refused = len(refused) - events_refused
            return {"events": inserted, "duplicates": len(events) - inserted - events_refused, "alerts": new_alerts,
                    "alert_duplicates": len(alerts) - len(new_alerts) - alerts_refused, "status": len(statuses),
                    "heartbeats": len(beats), "refused": refused}

        if not wait:
            return self.write(run, wait=False)
        result = self.write(run)
        self._bump(events_inserted=result["events"], events_duplicate=result["duplicates"],
                   alerts_inserted=len(result["alerts"]), alerts_duplicate=result["alert_duplicates"],
                   heartbeats=result["heartbeats"], status=result["status"], refused=len(result["refused"]))
        return result

    # ------------------------------------------------------------------ reading

    def events(self, *, type: str | None = None, device: str | None = None, room: str | None = None,
               since: str | None = None, until: str | None = None, limit: int = 1000) -> list[dict]:
        where, params = [], []
        for column, value in (("type", type), ("device", device), ("room", room)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("ts >= ?")
            params.append(since)
        if until:
            where.append("ts < ?")
            params.append(until)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY ts DESC, id LIMIT ?"
        rows = self.query(sql, (*params, int(limit)))
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows

    def get_event(self, event_id: str) -> dict | None:
        row = self.query_one("SELECT * FROM events WHERE id = ?", (event_id,))
        if row:
            row["data"] = json.loads(row["data"])
        return row

    def latest_events(self, types: tuple[str, ...], site: str | None = None) -> dict[str, dict]:
        """The newest event of *types* per device (of *site*), ``{device: {device, type, ts, data}}``
        (one indexed query)."""
        marks = ", ".join("?" for _ in types)
        where_site, params = ("AND e.site = ? ", (site,)) if site is not None else ("", ())
        rows = self.query(
            f"SELECT device, type, ts, data FROM events e WHERE type IN ({marks}) {where_site}"
            f"AND ts = (SELECT MAX(ts) FROM events e2 WHERE e2.device = e.device AND e2.type IN ({marks}))",
            (*types, *params, *types))
        return {r["device"]: r for r in rows}

    def blocked_between(self, start: str, end: str, site: str | None = None) -> list[dict]:
        """``blocked`` events with ts in [start, end) (of *site*), data as stored JSON text (the weekly report)."""
        return self._between("SELECT room, profile, domain, device, ts, data, category FROM events", "blocked", start,
                             end, site)

    def filter_checks_between(self, start: str, end: str, site: str | None = None) -> list[dict]:
        """``filter_check`` events with ts in [start, end) (of *site*) (the weekly report's filtering check log)."""
        return self._between("SELECT id, ts, room, device, user_name, domain, data FROM events", "filter_check",
                             start, end, site)

    def _between(self, select: str, type: str, start: str, end: str, site: str | None) -> list[dict]:
        if site is not None:
            return self.query(select + " WHERE type = ? AND ts >= ? AND ts < ? AND site = ?", [type, start, end, site])
        return self.query(select + " WHERE type = ? AND ts >= ? AND ts < ?", [type, start, end])

"""The ``deliveries``, ``delivery_attempts`` and ``room_viewers`` tables: escalation beyond the room.

A delivery is one message about one alert transition to one recipient on one channel
(``UNIQUE (alert_id, state, channel, recipient)``): adding the same one again changes
nothing, which is what keeps a restarted collector, or a second one on the same
PostgreSQL, from sending it twice.  A sender *claims* a due delivery for a short lease
before it tries (``claim_delivery``), so two processes never try the same one at once,
and a process killed mid-attempt leaves a claim that simply runs out.  Every attempt is
a row of its own (``delivery_attempts``).  What to send, to whom and when to retry is
decided in server/notify/; here is only how it is kept.

``room_viewers`` holds the dashboard tabs that show a room's live view (server/presence.py).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .engine import Tx
from .schema import new_id, utcnow

DELIVERY_STATUSES = ("pending", "sent", "failed")


class DeliveriesTable:
    """Store methods for escalation deliveries and room viewers (mixed into ``Store``)."""

    # ------------------------------------------------------------------ deliveries

    def add_deliveries(self, alert: dict, reason: str, recipients: Iterable[tuple[str, str]],
                       first_attempt_at: str | None = None) -> list[dict]:
        """One pending delivery per ``(channel, recipient)`` for this alert transition, unless it
        already exists; returns the rows that were new."""
        now = first_attempt_at or utcnow()
        due = now
        rows = [{"id": new_id(), "alert_id": alert["id"], "state": alert["state"], "reason": reason,
                 "channel": channel, "recipient": recipient, "site": alert["site"], "room": alert["room"],
                 "device": alert["device"], "created_at": now, "status": "pending", "attempts": 0,
                 "next_attempt_at": due} for channel, recipient in recipients]

        def run(tx: Tx) -> list[dict]:
            new = []
            for row in rows:
                if tx.execute(
                        "INSERT INTO deliveries (id, alert_id, state, reason, channel, recipient, site, room, device, "
                        "created_at, status, attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (alert_id, state, channel, recipient) DO NOTHING",
                        (row["id"], row["alert_id"], row["state"], row["reason"], row["channel"], row["recipient"],
                         row["site"], row["room"], row["device"], row["created_at"], "pending", 0, due)) == 1:
                    new.append(row)
            return new

        return self.write(run) if rows else []

    def due_deliveries(self, now: str, limit: int = 50) -> list[dict]:
        """Pending deliveries whose next attempt is due and that nobody holds a claim on."""
        return self.query(
            "SELECT * FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? "
            "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY next_attempt_at, id LIMIT ?",
            (now, now, int(limit)))

    def next_delivery_due(self) -> str | None:
        """When the next pending delivery falls due (for the sender's sleep), or None."""
        # A row another sender holds is due again only when its claim runs out.
        row = self.query_one("SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at "
                             "THEN claimed_until ELSE next_attempt_at END) AS due FROM deliveries "
                             "WHERE status = 'pending'")
        return row["due"] if row else None

    def claim_delivery(self, delivery_id: str, now: str, until: str) -> dict | None:
        """Take a due delivery for an attempt (a lease until *until*); None if it is not due or
        someone else holds it."""

        def run(tx: Tx) -> dict | None:
            if tx.execute("UPDATE deliveries SET claimed_until = ? WHERE id = ? AND status = 'pending' "
                          "AND (claimed_until IS NULL OR claimed_until < ?)", (until, delivery_id, now)) != 1:
                return None
            return tx.query_one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,))

        return self.write(run)

    def record_attempt(self, delivery_id: str, *, sent: bool, error: str | None, next_attempt_at: str | None,
                       give_up: bool = False) -> dict:
        """Write one attempt and its outcome: sent, retry at *next_attempt_at*, or (give_up) failed."""
        now = utcnow()
        attempt = {"id": new_id(), "delivery_id": delivery_id, "ts": now, "result": "sent" if sent else "failed",
                   "error": error}
        status = "sent" if sent else ("failed" if give_up else "pending")

        def run(tx: Tx) -> None:
            tx.execute("INSERT INTO delivery_attempts (id, delivery_id, ts, result, error) VALUES (?, ?, ?, ?, ?)",
                       (attempt["id"], delivery_id, now, attempt["result"], error))
            tx.execute("UPDATE deliveries SET attempts = attempts + 1, status = ?, claimed_until = NULL, "
                       "next_attempt_at = ?, sent_at = ?, last_error = ? WHERE id = ?",
                       (status, None if status != "pending" else next_attempt_at, now if sent else None,
                        None if sent else error, delivery_id))

        self.write(run)
        return attempt

    def list_deliveries(self, *, site: str | None = None, alert_id: str | None = None, status: str | None = None,
                        since: str | None = None, limit: int = 200) -> list[dict]:
        """Deliveries of *site* (staff-facing callers always give it), newest first, each with
        its ``attempt_log`` (oldest first)."""
        where, params = [], []
        for column, value in (("site", site), ("alert_id", alert_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("created_at >= ?")
            params.append(since)
        sql = "SELECT * FROM deliveries" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.query(sql + " ORDER BY created_at DESC, id LIMIT ?", (*params, int(limit)))
        if rows:
            ids = [r["id"] for r in rows]
            attempts = self.query("SELECT * FROM delivery_attempts WHERE delivery_id IN ("
                                  + ", ".join("?" for _ in ids) + ") ORDER BY ts, id", ids)
            by_id: dict[str, list] = {}
            for a in attempts:
                by_id.setdefault(a["delivery_id"], []).append(
                    {"ts": a["ts"], "result": a["result"], "error": a["error"]})
            for row in rows:
                row.pop("claimed_until", None)
                row["attempt_log"] = by_id.get(row["id"], [])
        return rows

    def recent_deliveries(self, reason: str, key_prefix: str, since: str) -> list[dict]:
        """Deliveries of *reason* whose key (``alert_id``) starts with *key_prefix*, created since
        *since*, newest first (server/notify/events.py: the coalescing window survives a restart)."""
        return self.query("SELECT alert_id, created_at FROM deliveries WHERE reason = ? AND created_at >= ? "
                          "AND substr(alert_id, 1, ?) = ? ORDER BY created_at DESC LIMIT 1",
                          (reason, since, len(key_prefix), key_prefix))

    def escalated_without_deliveries(self, since: str, states: Sequence[str] = ("escalated",)) -> list[dict]:
        """Alert transitions of *states* received since *since* that have no delivery yet (a
        collector that died between storing one and queueing its messages catches up)."""
        marks = ", ".join("?" for _ in states)
        return self.query(
            f"SELECT alert_id AS id, state, ts, by_whom AS by, site, room, device, seat FROM alert_transitions t "
            f"WHERE state IN ({marks}) AND received_at >= ? AND NOT EXISTS "
            f"(SELECT 1 FROM deliveries d WHERE d.alert_id = t.alert_id AND d.state = t.state)",
            (*states, since))

    # ------------------------------------------------------------------ room viewers

    def room_viewer_seen(self, site: str, room: str, username: str, now: str | None = None) -> None:
        """A dashboard tab of *username* shows *room*'s live view at *now*."""
        self.execute("INSERT INTO room_viewers (site, room, username, seen_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (site, room, username) DO UPDATE SET seen_at = excluded.seen_at",
                     (site, room, username, now or utcnow()))

    def room_viewers(self, since: str, site: str | None = None) -> list[dict]:
        """``{site, room, username, seen_at}`` of every tab (of *site*'s rooms, if given) seen since *since*."""
        if site is None:
            return self.query("SELECT site, room, username, seen_at FROM room_viewers WHERE seen_at >= ? "
                              "ORDER BY site, room, username", (since,))
        return self.query("SELECT site, room, username, seen_at FROM room_viewers WHERE site = ? AND seen_at >= ? "
                          "ORDER BY room, username", (site, since))

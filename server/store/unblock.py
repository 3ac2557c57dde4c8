"""Pupils' "Ask my teacher" requests from the block page, and the teacher's answers.

A request is the device's ``unblock_request`` event (events.py stores it like any other:
domain, user, seat, profile); ``unblock_answers`` holds the teacher's answer to it,
``allowed`` (the site was opened for the lesson) or ``dismissed``.  A request with no
answer, received within ``OPEN_HOURS``, is open: the room page lists it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from .schema import iso, utcnow

OPEN_HOURS = 8      # a request left unanswered all day is not shown the next morning
ANSWERS = ("allowed", "dismissed")


class UnblockTable:
    """Store methods for unblock requests (mixed into ``Store``)."""

    def open_unblock_requests(self, site: str, room: str, now: datetime | None = None, limit: int = 50) -> list[dict]:
        """Unanswered requests of *room* at *site*, newest first."""
        since = iso((now or datetime.now(timezone.utc)) - timedelta(hours=OPEN_HOURS))
        rows = self.query(
            "SELECT e.id, e.ts, e.site, e.room, e.device, e.user_name, e.domain, e.data, e.received_at "
            "FROM events e LEFT JOIN unblock_answers a ON a.request_id = e.id "
            "WHERE e.type = 'unblock_request' AND e.site = ? AND e.room = ? AND e.received_at >= ? "
            "AND a.request_id IS NULL ORDER BY e.received_at DESC, e.id LIMIT ?",
            (site, room, since, limit))
        out = []
        for r in rows:
            data = json.loads(r["data"]) if r.get("data") else {}
            out.append({"id": r["id"], "ts": r["ts"], "site": r["site"], "room": r["room"], "device": r["device"],
                        "seat": data.get("seat") or data.get("device_name") or r["device"],
                        "user": r["user_name"], "domain": r["domain"], "received_at": r["received_at"]})
        return out

    def unblock_request(self, request_id: str, site: str) -> dict | None:
        row = self.query_one(
            "SELECT e.id, e.ts, e.site, e.room, e.device, e.user_name, e.domain, a.answer, a.by_whom "
            "FROM events e LEFT JOIN unblock_answers a ON a.request_id = e.id "
            "WHERE e.id = ? AND e.type = 'unblock_request' AND e.site = ?", (request_id, site))
        return row

    def answer_unblock_request(self, request_id: str, site: str, room: str, answer: str, by: str) -> bool:
        """Record *by*'s answer; False if the request was answered already (the first answer stands)."""
        if answer not in ANSWERS:
            raise ValueError(f"answer: {answer!r} is not one of {', '.join(ANSWERS)}")
        now = utcnow()

        def run(tx) -> int:
            return tx.insert_new("unblock_answers", ("request_id", "site", "room", "answer", "by_whom", "answered_at"),
                                 "request_id", [(request_id, site, room, answer, by, now)])

        return self.write(run) == 1

"""The ``room_commands`` and ``device_locks`` tables: a teacher's commands to a room's
devices, their answers, and each device's lock.

One row per (command id, device): the collector records what it sent
(server/http/api/commands.py) before it publishes, and ingest fills in the device's answer
(its ``cmd_result`` event: done, refused, unsupported, failed) in the same transaction as
the event itself (events.py), only for the device that sent it and only once.  A row
without an answer after ``ANSWER_SECONDS`` is "not reachable" on the room page.

``device_locks`` is each device's lock as its latest ``lock`` / ``unlock`` event says
(kept by ingest in the same way; an older event never overwrites a newer one), so the room
page shows who locked which device, and until when, without searching the events.
"""

from __future__ import annotations

import json
from typing import Sequence

from .engine import Tx
from .schema import utcnow

ANSWER_SECONDS = 2.0  # a device that has not answered by then is "not reachable" (the room page)


class CommandsTable:
    """Store methods for room commands (mixed into ``Store``)."""

    def add_room_command(self, cmd_id: str, site: str, room: str, devices: Sequence[str], cmd: str, by: str,
                         details: dict | None = None, sent_at: str | None = None) -> str:
        """Record a command sent to *devices* of *site*'s *room*; returns its sent_at."""
        sent_at = sent_at or utcnow()
        text = json.dumps(details or {}, separators=(",", ":"), ensure_ascii=False)
        rows = [(cmd_id, device, site, room, cmd, by, sent_at, text) for device in devices]

        def run(tx: Tx) -> None:
            tx.executemany("INSERT INTO room_commands (id, device, site, room, cmd, by_whom, sent_at, details) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

        self.write(run)
        return sent_at

    def _record_cmd_results(self, tx: Tx, results: list[dict], now: str) -> int:
        """Ingest: each ``cmd_result`` event answers its own device's row of its command (a
        device cannot answer for another: site, room and device come from its topic)."""
        done = 0
        for event in results:
            done += tx.execute(
                "UPDATE room_commands SET result = ?, error = ?, answered_at = ? "
                "WHERE id = ? AND device = ? AND site = ? AND room = ? AND result IS NULL",
                (event["result"], event.get("error") if isinstance(event.get("error"), str) else None, now,
                 event["cmd_id"], event["device"], event["site"], event["room"]))
        return done

    def _record_locks(self, tx: Tx, events: list[dict]) -> None:
        """Ingest: a device's lock/unlock event becomes its lock state, if it is the newest."""
        for event in events:
            until = event.get("until") if isinstance(event.get("until"), str) else None
            tx.execute(
                "INSERT INTO device_locks (device, site, room, locked, reason, by_whom, until, ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET site = excluded.site, "
                "room = excluded.room, locked = excluded.locked, reason = excluded.reason, "
                "by_whom = excluded.by_whom, until = excluded.until, ts = excluded.ts "
                "WHERE device_locks.ts <= excluded.ts",
                (event["device"], event["site"], event["room"], 1 if event["type"] == "lock" else 0,
                 event.get("reason") if isinstance(event.get("reason"), str) else None,
                 event.get("by") if isinstance(event.get("by"), str) else None, until if event["type"] == "lock"
                 else None, event["ts"]))

    def device_locks(self, site: str, room: str) -> dict[str, dict]:
        """``{device: {locked, reason, by, until, ts}}`` of the room's devices that ever reported a lock."""
        rows = self.query("SELECT * FROM device_locks WHERE site = ? AND room = ?", (site, room))
        return {r["device"]: {"locked": bool(r["locked"]), "reason": r["reason"], "by": r["by_whom"],
                              "until": r["until"], "ts": r["ts"]} for r in rows}

    def room_commands(self, site: str, room: str, *, since: str | None = None, limit: int = 20) -> list[dict]:
        """The room's latest commands, newest first: ``{id, cmd, by, sent_at, details,
        devices: [{device, result, error, answered_at}]}``."""
        params: list = [site, room]
        where = "site = ? AND room = ?"
        if since:
            where += " AND sent_at >= ?"
            params.append(since)
        ids = self.query(f"SELECT id, MAX(sent_at) AS sent_at FROM room_commands WHERE {where} "
                         "GROUP BY id ORDER BY MAX(sent_at) DESC, id LIMIT ?", (*params, int(limit)))
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        rows = self.query(f"SELECT * FROM room_commands WHERE site = ? AND room = ? AND id IN ({marks}) "
                          "ORDER BY device", (site, room, *[r["id"] for r in ids]))
        out: dict[str, dict] = {r["id"]: {} for r in ids}
        for row in rows:
            item = out[row["id"]]
            if not item:
                item.update({"id": row["id"], "cmd": row["cmd"], "by": row["by_whom"], "sent_at": row["sent_at"],
                             "details": json.loads(row["details"] or "{}"), "devices": []})
            item["devices"].append({"device": row["device"], "result": row["result"], "error": row["error"],
                                    "answered_at": row["answered_at"]})
        return [item for item in out.values() if item]

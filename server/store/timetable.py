"""The ``timetable_lessons``, ``timetable_imports`` and ``cover`` tables: who teaches where, when.

The timetable is the school's MIS export as last imported (server/timetable.py checks it
first): a weekly pattern, ``day`` 0 = Monday, times ``HH:MM`` in the school's zone.  An
import replaces a school's whole timetable in one transaction, so a bad file (refused
before it gets here) or a failure half-way leaves the last good one in force.  Cover is
the office's entry for one date.  Both are audited in the same transaction as the change.

``staff_in`` / ``rooms_of`` answer "who is teaching in this room now" and "where is this
teacher now" with plain comparisons on the ``HH:MM`` text (it sorts as time does).
"""

from __future__ import annotations

import json
from typing import Sequence

from .audit import add_audit
from .engine import Tx
from .schema import new_id, utcnow

LESSON_COLUMNS = ("site", "day", "start_time", "end_time", "room", "staff", "period", "label")


class TimetableTable:
    """Store methods for the timetable and cover (mixed into ``Store``)."""

    # ------------------------------------------------------------------ the timetable

    def replace_timetable(self, site: str, lessons: Sequence[dict], *, by: str, source: str, sha256: str) -> str:
        """Make *lessons* (dicts with the LESSON_COLUMNS but site) *site*'s timetable; returns the import id."""
        import_id = new_id()
        rows = [(site, int(x["day"]), x["start_time"], x["end_time"], x["room"], x["staff"], x.get("period"),
                 x.get("label")) for x in lessons]

        def run(tx: Tx) -> None:
            tx.execute("DELETE FROM timetable_lessons WHERE site = ?", (site,))
            if rows:
                tx.executemany(f"INSERT INTO timetable_lessons ({', '.join(LESSON_COLUMNS)}) "
                               f"VALUES ({', '.join('?' for _ in LESSON_COLUMNS)})", rows)
            now = utcnow()
            tx.execute("INSERT INTO timetable_imports (id, site, ts, by_whom, source, sha256, lessons) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (import_id, site, now, by, source, sha256, len(rows)))
            add_audit(tx, by, "timetable.import", import_id,
                      json.dumps({"site": site, "source": source, "sha256": sha256, "lessons": len(rows)}), now)

        self.write(run)
        return import_id

    def timetable(self, site: str, *, room: str | None = None, staff: str | None = None) -> list[dict]:
        where, params = ["site = ?"], [site]
        for column, value in (("room", room), ("staff", staff)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return self.query(f"SELECT {', '.join(LESSON_COLUMNS)} FROM timetable_lessons WHERE {' AND '.join(where)} "
                          "ORDER BY day, start_time, room, staff", params)

    def last_timetable_import(self, site: str) -> dict | None:
        return self.query_one("SELECT * FROM timetable_imports WHERE site = ? ORDER BY ts DESC, id LIMIT 1", (site,))

    def timetabled_rooms(self, site: str, from_day: str) -> dict[str, list[str]]:
        """``{staff: [rooms]}``: every room each member of staff teaches in during the week,
        or covers on *from_day* (``YYYY-MM-DD``) or later (the broker's ACL: broker_config.py)."""
        rows = self.query("SELECT DISTINCT staff, room FROM timetable_lessons WHERE site = ? "
                          "UNION SELECT DISTINCT staff, room FROM cover WHERE site = ? AND day >= ?",
                          (site, site, from_day))
        out: dict[str, set[str]] = {}
        for row in rows:
            out.setdefault(row["staff"], set()).add(row["room"])
        return {staff: sorted(rooms) for staff, rooms in sorted(out.items())}

    # ------------------------------------------------------------------ cover

    def add_cover(self, site: str, day: str, start_time: str, end_time: str, room: str, staff: str, *, by: str,
                  note: str | None = None) -> str:
        cover_id = new_id()

        def run(tx: Tx) -> None:
            now = utcnow()
            tx.execute("INSERT INTO cover (id, site, day, start_time, end_time, room, staff, by_whom, created_at, note) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (cover_id, site, day, start_time, end_time, room, staff, by, now, note))
            add_audit(tx, by, "cover.add", cover_id, json.dumps(
                {"site": site, "day": day, "start": start_time, "end": end_time, "room": room, "staff": staff}), now)

        self.write(run)
        return cover_id

    def remove_cover(self, cover_id: str, site: str, *, by: str) -> bool:
        def run(tx: Tx) -> bool:
            row = tx.query_one("SELECT * FROM cover WHERE id = ? AND site = ?", (cover_id, site))
            if row is None:
                return False
            tx.execute("DELETE FROM cover WHERE id = ? AND site = ?", (cover_id, site))
            add_audit(tx, by, "cover.remove", cover_id, json.dumps(
                {"site": site, "day": row["day"], "room": row["room"], "staff": row["staff"]}), utcnow())
            return True

        return self.write(run)

    def covers(self, site: str, day: str) -> list[dict]:
        return self.query("SELECT * FROM cover WHERE site = ? AND day = ? ORDER BY start_time, room, staff",
                          (site, day))

    # ------------------------------------------------------------------ now

    def teaching(self, site: str, weekday: int, day: str, start_before: str, end_after: str, *,
                 staff: str | None = None, room: str | None = None) -> list[dict]:
        """Lessons and cover of *site* on *weekday* / date *day* that start at or before
        *start_before* and end after *end_after* (``HH:MM``): ``[{room, staff, start_time,
        end_time, source: timetable|cover}]``, optionally of one member of *staff* or one *room*."""
        extra, params = "", []
        for column, value in (("staff", staff), ("room", room)):
            if value is not None:
                extra += f" AND {column} = ?"
                params.append(value)
        return self.query(
            "SELECT room, staff, start_time, end_time, 'timetable' AS source FROM timetable_lessons "
            f"WHERE site = ? AND day = ? AND start_time <= ? AND end_time > ?{extra} "
            "UNION ALL SELECT room, staff, start_time, end_time, 'cover' AS source FROM cover "
            f"WHERE site = ? AND day = ? AND start_time <= ? AND end_time > ?{extra}",
            (site, weekday, start_before, end_after, *params, site, day, start_before, end_after, *params))

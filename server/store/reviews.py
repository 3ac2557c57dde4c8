"""The ``reviews``, ``check_actions`` and ``filter_tests`` tables: what the DfE filtering and
monitoring standard asks a school to keep besides the incidents.

* ``reviews``: the annual filtering and monitoring review (who attended by role, findings,
  actions, the date of the next review);
* ``check_actions``: the check log's "actions taken", a note staff add to a ``filter_check``
  event (or to a test run) after it showed something to fix;
* ``filter_tests``: the SWGfL test-filtering runs a technician started from a device (with a
  10-minute override for the test site only) and the result they recorded.

Every query takes the site.
"""

from __future__ import annotations

import json
from typing import Sequence

from .schema import new_id, utcnow


class ReviewsTable:
    """Store methods for reviews, check actions and test runs (mixed into ``Store``)."""

    # ------------------------------------------------------------------ reviews

    def add_review(self, *, site: str, held_on: str, attendees: list[dict], findings: str, actions: str,
                   next_review: str, recorded_by: str) -> dict:
        row = {"id": new_id(), "site": site, "held_on": held_on, "attendees": json.dumps(attendees),
               "findings": findings, "actions": actions, "next_review": next_review, "recorded_by": recorded_by,
               "recorded_at": utcnow()}
        columns = list(row)
        self.execute(f"INSERT INTO reviews ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                     [row[c] for c in columns])
        return {**row, "attendees": attendees}

    def list_reviews(self, site: str, limit: int = 100) -> list[dict]:
        rows = self.query("SELECT * FROM reviews WHERE site = ? ORDER BY held_on DESC, id LIMIT ?", (site, int(limit)))
        for row in rows:
            row["attendees"] = json.loads(row["attendees"] or "[]")
        return rows

    # ------------------------------------------------------------------ the check log's actions

    def add_check_action(self, *, site: str, check_id: str, actor: str, text: str) -> dict:
        row = {"id": new_id(), "site": site, "check_id": check_id, "ts": utcnow(), "actor": actor, "text": text}
        self.execute("INSERT INTO check_actions (id, site, check_id, ts, actor, text) VALUES (?, ?, ?, ?, ?, ?)",
                     (row["id"], site, check_id, row["ts"], actor, text))
        return row

    def check_actions_for(self, site: str, check_ids: Sequence[str]) -> dict[str, list[dict]]:
        """``{check_id: [action, ...]}`` oldest first."""
        if not check_ids:
            return {}
        rows = self.query("SELECT * FROM check_actions WHERE site = ? AND check_id IN ("
                          + ", ".join("?" for _ in check_ids) + ") ORDER BY ts, id", (site, *check_ids))
        out: dict[str, list[dict]] = {}
        for row in rows:
            out.setdefault(row["check_id"], []).append(row)
        return out

    def filter_checks(self, site: str, *, since: str | None = None, until: str | None = None,
                      limit: int = 200) -> list[dict]:
        """``filter_check`` events of the site, newest first (data as JSON text)."""
        sql, params = "SELECT id, ts, room, device, user_name, domain, data FROM events WHERE type = ? AND site = ?", \
            ["filter_check", site]
        if since:
            sql += " AND ts >= ?"
            params.append(since)
        if until:
            sql += " AND ts < ?"
            params.append(until)
        return self.query(sql + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))

    def is_check(self, site: str, check_id: str) -> bool:
        """True if *check_id* is a ``filter_check`` event or a test run of *site* (actions attach to either)."""
        return bool(self.query("SELECT id FROM events WHERE id = ? AND site = ? AND type = 'filter_check' "
                               "UNION SELECT id FROM filter_tests WHERE id = ? AND site = ?",
                               (check_id, site, check_id, site)))

    # ------------------------------------------------------------------ SWGfL test runs

    def start_filter_test(self, *, site: str, room: str, device: str, domain: str, started_by: str) -> dict:
        row = {"id": new_id(), "site": site, "room": room, "device": device, "domain": domain,
               "started_by": started_by, "started_at": utcnow()}
        self.execute("INSERT INTO filter_tests (id, site, room, device, domain, started_by, started_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", [row[c] for c in row])
        return row

    def record_filter_test(self, test_id: str, site: str, *, actor: str, result: str, details: str | None) -> bool:
        return self.execute("UPDATE filter_tests SET result = ?, details = ?, recorded_by = ?, recorded_at = ? "
                            "WHERE id = ? AND site = ?", (result, details, actor, utcnow(), test_id, site)) == 1

    def list_filter_tests(self, site: str, *, since: str | None = None, until: str | None = None,
                          limit: int = 200) -> list[dict]:
        sql, params = "SELECT * FROM filter_tests WHERE site = ?", [site]
        if since:
            sql += " AND started_at >= ?"
            params.append(since)
        if until:
            sql += " AND started_at < ?"
            params.append(until)
        return self.query(sql + " ORDER BY started_at DESC, id LIMIT ?", (*params, int(limit)))

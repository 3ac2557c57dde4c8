"""The ``aup_acceptances`` table: which pupil accepted the acceptable use rules, which term.

A device sends ``aup_accepted`` (user, term, key stage) when a pupil agrees; the ingest
batch (events.py) writes one row per (site, term, user), the first acceptance winning, in
the same transaction as the event.  Devices fetch this term's names
(``GET /api/v1/devices/{id}/aup``) so a pupil who accepted on one device is not asked
again on another, even while that device is offline later (it keeps the list on disk:
agent/policy/aup.py).  The DSL's ``/aup`` page lists who has logged in this term and not
accepted.  Every query takes the site.
"""

from __future__ import annotations

import json
from typing import Sequence

from .engine import Tx

AUP_EVENT = "aup_accepted"


def aup_rows(event_rows: Sequence[tuple], columns: Sequence[str]) -> list[tuple]:
    """``aup_acceptances`` rows for the ``aup_accepted`` event rows among *event_rows*."""
    col = {name: i for i, name in enumerate(columns)}
    out = []
    for row in event_rows:
        if row[col["type"]] != AUP_EVENT or not row[col["user_name"]]:
            continue
        try:
            data = json.loads(row[col["data"]])
        except (TypeError, ValueError):
            continue
        term = data.get("term") if isinstance(data, dict) else None
        if not isinstance(term, str) or not term.strip() or len(term) > 64:
            continue
        key_stage = data.get("key_stage") if isinstance(data.get("key_stage"), str) else None
        out.append((row[col["site"]], row[col["user_name"]], term, row[col["ts"]], row[col["room"]],
                    row[col["device"]], key_stage, row[col["id"]]))
    return out


class AupTable:
    """Store methods for acceptable-use acceptances (mixed into ``Store``)."""

    def _record_aup(self, tx: Tx, rows: list[tuple]) -> int:
        if not rows:
            return 0
        return tx.executemany(
            "INSERT INTO aup_acceptances (site, user_name, term, accepted_at, room, device, key_stage, event_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, term, user_name) DO NOTHING", rows)

    def aup_accepted(self, site: str, term: str) -> list[dict]:
        """This term's acceptances at *site*: user, when, where, key stage."""
        return self.query("SELECT user_name, accepted_at, room, device, key_stage FROM aup_acceptances "
                          "WHERE site = ? AND term = ? ORDER BY user_name", (site, term))

    def aup_not_accepted(self, site: str, term: str, since: str) -> list[dict]:
        """Pupils who logged in at *site* since *since* (the term's start) and have not accepted
        *term*'s rules: user, last login, where."""
        return self.query(
            "SELECT user_name, MAX(ts) AS last_login, MAX(room) AS room, COUNT(*) AS logins FROM events "
            "WHERE type = 'login' AND site = ? AND ts >= ? AND user_name IS NOT NULL AND user_name NOT IN "
            "(SELECT user_name FROM aup_acceptances WHERE site = ? AND term = ?) "
            "GROUP BY user_name ORDER BY user_name", (site, since, site, term))

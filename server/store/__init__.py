"""The collector's store: THE database layer, one public API over SQLite (default) and
PostgreSQL (trusts, LAs).

``Store.open("sqlite:////var/lib/classroom/server.db")`` or
``Store.open("postgresql://user@host/db")`` applies the schema (schema.py: one idempotent
SQL string plus numbered migrations) and returns the one object everything holds:
ingest, the HTTP API, the dashboard, rollout, reports, retention.

Where things are:

* engine.py: connections, the single SQLite writer thread, ``Tx``, and every SQLite /
  PostgreSQL difference;
* schema.py: the tables, migrations, and the id/timestamp formats;
* one module per group of tables, each a mixin of ``Store`` holding that table's SQL:
  events.py (events + the ingest batch), incidents.py (alert transitions, incidents,
  actions), devices.py (registry, heartbeats, enrolment tokens, technician alerts),
  staff.py (users, their schools and roles, sessions, sign-on flows), audit.py,
  rollouts.py (config versions, rollouts per school), reports.py (report runs, the term
  report's figures), retention.py (purges), deliveries.py (escalation e-mails and webhooks
  with every attempt, and the dashboard tabs watching a room), unblock.py (pupils' "Ask my
  teacher" requests and the teacher's answers), blocked.py (the blocked-attempt search,
  high-risk notification windows), holds.py (the DSL's holds); the DSL's record (issue 15):
  concerns.py (staff-logged concerns, the IT queue), guard.py (the guard's events),
  allowlist.py (allowlist change requests), exports.py (the export log), reviews.py (annual
  reviews, check actions, test-filtering runs), aup.py (acceptable use per pupil per term);
  the teacher in control (issue 16): commands.py (a teacher's room commands and the
  devices' answers), timetable.py (the imported timetable and the office's cover).

Code outside this package calls these methods and never writes SQL of its own.  Every
record belongs to one school (a ``site`` column, or its device's or incident's); the
methods staff-facing code uses take ``site=`` and return that school's rows only.  Every
write goes through ``write(fn)``, where ``fn(tx)`` runs inside a transaction (on the
writer thread for SQLite); ``query`` reads on the calling thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

from .allowlist import AllowlistTable
from .audit import AuditTable
from .aup import AupTable
from .blocked import BlockedTable
from .commands import CommandsTable
from .concerns import ConcernsTable
from .deliveries import DeliveriesTable
from .devices import DevicesTable
from .engine import Engine, StoreError, Tx, connect
from .events import EventsTable
from .exports import ExportsTable
from .guard import GuardTable
from .holds import HoldsTable
from .incidents import IncidentsTable
from .reports import ReportsTable
from .retention import RetentionTable
from .reviews import ReviewsTable
from .rollouts import RolloutsTable
from .schema import apply as apply_schema
from .schema import iso, new_id, utcnow
from .staff import StaffTable
from .timetable import TimetableTable
from .unblock import UnblockTable

__all__ = ["Store", "StoreError", "Tx", "iso", "new_id", "utcnow"]


class Store(EventsTable, IncidentsTable, DevicesTable, StaffTable, AuditTable, RolloutsTable, ReportsTable,
            RetentionTable, DeliveriesTable, ConcernsTable, GuardTable, AllowlistTable, ExportsTable, ReviewsTable,
            AupTable, UnblockTable, CommandsTable, TimetableTable, BlockedTable, HoldsTable):
    """Backend-neutral API.  Use ``Store.open(url)``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url
        self.dialect = engine.dialect
        self.stats = {"events_inserted": 0, "events_duplicate": 0, "alerts_inserted": 0, "alerts_duplicate": 0,
                      "heartbeats": 0, "status": 0}
        self._stats_lock = threading.Lock()

    @staticmethod
    def open(url: str) -> "Store":
        store = Store(connect(url))
        store.migrate()
        return store

    # ------------------------------------------------------------------ the engine

    def write(self, fn: Callable[[Tx], Any], wait: bool = True) -> Any:
        """Run ``fn(tx)`` in a transaction; its result (or a Future of it when not *wait*)."""
        return self.engine.write(fn, wait)

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        return self.engine.query(sql, params)

    def query_one(self, sql: str, params: Sequence = ()) -> dict | None:
        rows = self.engine.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence = ()) -> int:
        return self.engine.write(lambda tx: tx.execute(sql, params))

    def close(self) -> None:
        self.engine.close()

    @property
    def queue_depth(self) -> int:
        return self.engine.queue_depth

    def ping(self) -> bool:
        """True if the database answers a query (for /healthz)."""
        return self.query_one("SELECT 1 AS ok") is not None

    # ------------------------------------------------------------------ schema

    def migrate(self) -> None:
        self.write(apply_schema)

    @property
    def schema_version(self) -> int:
        row = self.query_one("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"] or 0) if row else 0

    def count(self, table: str, where: str = "", params: Sequence = ()) -> int:
        if not table.isidentifier():
            raise StoreError(f"bad table name {table!r}")
        row = self.query_one(f"SELECT COUNT(*) AS n FROM {table}" + (f" WHERE {where}" if where else ""), params)
        return int(row["n"]) if row else 0

    def _bump(self, **counts: int) -> None:
        with self._stats_lock:
            for key, value in counts.items():
                self.stats[key] = self.stats.get(key, 0) + value

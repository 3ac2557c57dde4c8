"""The durable outbox: every message the agent sends is on disk before it is sent.

DESIGN rule 5 (at-least-once).  A row is committed before the MQTT publish and deleted
only when the broker's PUBACK arrives, so a broker restart, a Wi-Fi drop, ``kill -9`` or
a power cut loses nothing: on the next connection every remaining row is sent again, in
order, with its original payload (same event id; the server de-duplicates by id).

Power loss: alerts and events are fsynced unless the broker has them first.  The link
commits the row (safe against a crash: it is in the OS), publishes, and only then
fsyncs (``put(sync=False)`` + ``sync()``): an fsync on an SD card can take 10-20 ms, and
the report must not wait for it.  The running agent goes one step further
(agent/uplink/link.py, "settling"): it looks again ``SETTLE_SECONDS`` after the send and
fsyncs only if the broker has not acknowledged the row by then.  Neither is less safe
than fsync-then-publish: a power cut before the fsync completes loses the row either
way, and here the message is usually at the broker before an SD card would have
finished.  A row written while offline is fsynced at once.

The table is bounded.  When it is full the oldest heartbeat goes first, then the oldest
ordinary event; alerts and report evidence are never evicted, even if that means the
table grows past its bound.

Beside the messages, a small ``kept`` table holds local state that must match what was
sent: the open alert (agent/report/alert.py).  ``put(..., keep=("alert", state))`` stores the
message and the state in one transaction, so a crash can never leave a raised alert on
its way to the teacher that the restarted agent does not know about (and one commit is
cheaper than a file write plus a commit, on the press's path).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

# Eviction classes: higher is evicted first; PROTECTED rows are never evicted.
PROTECTED = 0      # alerts, report_evidence
EVENT = 1          # ordinary events (blocked, login, config_applied, ...)
HEARTBEAT = 2      # heartbeats: stale after a minute anyway

# Every table and index is a page written on the alert's commit: no AUTOINCREMENT (its
# sqlite_sequence page), no eviction index (eviction is rare and scans at most
# max_rows), and ``kept`` is WITHOUT ROWID (no separate index for its key).
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    qos      INTEGER NOT NULL,
    retain   INTEGER NOT NULL DEFAULT 0,
    kind     TEXT    NOT NULL,
    priority INTEGER NOT NULL,
    created  TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS kept (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    priority: int
    created: str


def priority_for(kind: str, event_type: str | None = None) -> int:
    if kind == "alert" or event_type == "report_evidence":
        return PROTECTED
    if kind == "heartbeat":
        return HEARTBEAT
    return EVENT


class Outbox:
    """SQLite outbox at *path*.  Thread-safe: one connection behind one lock (single writer)."""

    def __init__(self, path: str | Path, max_rows: int = 10_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        # One agent owns its outbox: an exclusive lock, taken once, instead of six lock
        # calls per commit; and a second agent on the same state directory fails here.
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise UserError(f"{self.path}: in use by another classroom-agent "
                                "(one agent per state_dir)") from None
            raise UserError(f"{self.path}: {exc}") from None
        # No automatic checkpoints: one would fsync inside whichever commit crossed the
        # threshold, possibly an alert's.  ``checkpoint()`` runs from the heartbeat timer.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        # The row count, kept here (one writer) instead of a count(*) scan per message.
        (self._rows,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        self._sync = ""
        self.evicted = 0

    def _synchronous(self, level: str) -> None:
        # FULL fsyncs the WAL on every commit: an alert must survive a power cut.
        # Heartbeats only need NORMAL (safe against a crash, may lose the last one on power loss).
        if self._sync != level:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    def put(self, topic: str, payload: bytes, qos: int, kind: str, *, priority: int | None = None,
            retain: bool = False, sync: bool = True, keep: tuple[str, dict | None] | None = None) -> int:
        """Store one message; return its row id.  Evicts per the bound before inserting.
        ``sync=False``: commit without fsync; call ``sync()`` after publishing.
        ``keep=(key, value)``: set (or with None, remove) kept state in the same transaction."""
        if priority is None:
            priority = priority_for(kind)
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._lock:
            self._synchronous("FULL" if sync and priority != HEARTBEAT else "NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                evicted = self._evict_locked()
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, kind, priority, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (topic, bytes(payload), qos, int(retain), kind, priority, created))
                if keep is not None:
                    self._keep_locked(*keep)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._rows += 1 - len(evicted)
            for what in evicted:
                self.evicted += 1
                log.warning("outbox full (%d rows): dropped oldest %s", self.max_rows, what)
            return int(cur.lastrowid)

    def keep(self, key: str, value: dict | None, *, sync: bool = True) -> None:
        """Set (or with None, remove) one piece of kept state on its own."""
        with self._lock:
            self._synchronous("FULL" if sync else "NORMAL")
            self._keep_locked(key, value)

    def _keep_locked(self, key: str, value: dict | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM kept WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO kept (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def kept(self, key: str) -> dict | None:
        """Kept state, or None; a value that does not parse is logged and treated as None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM kept WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
            if not isinstance(value, dict):
                raise ValueError("not an object")
            return value
        except ValueError as exc:
            log.warning("%s: kept %s is unreadable (%s); ignoring it", self.path, key, exc)
            return None

    def _evict_locked(self) -> list[str]:
        """Make room for one row; returns the kinds of the rows deleted (counted once committed)."""
        count, evicted = self._rows, []
        while count >= self.max_rows:
            row = self._db.execute(
                "SELECT id, kind, priority FROM outbox WHERE priority > ? ORDER BY priority DESC, id LIMIT 1",
                (PROTECTED,)).fetchone()
            if row is None:
                # Only protected rows left: keep them all (and the new one) rather than lose a report.
                break
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            evicted.append(row[1])
            count -= 1
        return evicted

    def sync(self) -> None:
        """Make every committed row durable against power loss (fsync the WAL)."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing in the WAL: everything is in the main file already
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (off the press path)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def delete(self, row_id: int) -> bool:
        """Forget a row once the broker has it (PUBACK).  Returns whether it existed."""
        with self._lock:
            self._synchronous("NORMAL")
            cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._rows -= cur.rowcount
            return cur.rowcount > 0

    def delete_many(self, row_ids: list[int]) -> int:
        """Forget several acknowledged rows in one transaction; returns how many existed."""
        with self._lock:
            self._synchronous("NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = sum(self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
                        for row_id in row_ids)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._rows -= n
            return n

    def pending(self) -> list[Pending]:
        """Every stored row, oldest first (send order)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, kind, priority, created FROM outbox ORDER BY id").fetchall()
        return [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7]) for r in rows]

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            return self._db.execute("SELECT count(*) FROM outbox WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

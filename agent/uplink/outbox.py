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

A full or damaged disk never stops a message (issue 13, "nothing lost on the device"):

* **The reserve.**  ``outbox.reserve`` beside the database is a preallocated file
  (``RESERVE_BYTES``).  When a commit fails because the disk is full, the reserve is
  deleted and the commit tried again, so the alert still reaches the disk; it is made
  again once there is room.
* **Memory.**  When even that fails (or the database cannot be opened at all), the row
  is kept in memory and published all the same; rows and kept state are written to disk
  in one transaction, in order, as soon as a write succeeds again (``recover()``, which
  the runtime calls every ``RETRY_SECONDS`` while the outbox is in trouble).  Nothing is
  written to disk while rows wait in memory, so row ids, and the send order, stay the
  order of the calls.
* **A damaged database** (not a database, malformed, failing ``quick_check``) is moved
  aside as ``outbox.db.damaged-<UTC time>`` (with its ``-wal``/``-shm``), logged with
  that path, and a fresh one is started.  A truncated WAL needs nothing: SQLite ignores
  the frames it cannot check; what they held of the open alert comes back from its
  second copy (agent/report/alert_copy.py).
* Every problem (and the end of one) goes to ``on_problem(file, cause, ongoing)``,
  which the runtime turns into a ``state_degraded`` event and the ``degraded`` field of
  the retained status.  Only another agent holding the database makes the constructor
  fail: one agent per state directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import UserError

log = logging.getLogger(__name__)

# Eviction classes: higher is evicted first; PROTECTED rows are never evicted.
PROTECTED = 0      # alerts, report_evidence
EVENT = 1          # ordinary events (blocked, login, config_applied, ...)
HEARTBEAT = 2      # heartbeats: stale after a minute anyway

RESERVE_BYTES = 2 * 1024 * 1024  # a few thousand alerts' worth of WAL frames
RESERVE_NAME = "outbox.reserve"
RETRY_SECONDS = 2.0              # how often a disk that failed is tried again

# Every table and index is a page written on the alert's commit: no AUTOINCREMENT (its
# sqlite_sequence page), no eviction index (eviction is rare and scans at most
# max_rows), and ``kept`` is WITHOUT ROWID (no separate index for its key).  Row ids are
# given by the outbox itself, so rows kept in memory for a while keep their place.
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

# SQLite's primary result codes that say what went wrong with the file.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 5, 6, 11, 13, 26


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


class _Damaged(sqlite3.DatabaseError):
    """The database answers, but what it holds is not sound (quick_check)."""


def _trouble_kind(exc: BaseException) -> str:
    """'full', 'damaged', 'locked' or 'failed' for an error from SQLite or the OS."""
    if isinstance(exc, _Damaged):
        return "damaged"
    if isinstance(exc, OSError):
        return "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "failed"
    code = getattr(exc, "sqlite_errorcode", None)
    code = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if code == _SQLITE_FULL or "disk is full" in text:
        return "full"
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        return "damaged"
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        return "locked"
    return "failed"


class Outbox:
    """SQLite outbox at *path*.  Thread-safe: one connection behind one lock (single writer).

    *reserve_bytes*: size of the reserve file (0: none); *on_problem(file, cause,
    ongoing)*: told of every trouble with the database and of its end (``ongoing`` False
    with cause ``recovered``); called with the outbox's lock held, so it must not block."""

    def __init__(self, path: str | Path, max_rows: int = 10_000, *, reserve_bytes: int = RESERVE_BYTES,
                 on_problem: Callable[[str, str, bool], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve_path = self.path.parent / RESERVE_NAME
        self.max_rows = max_rows
        self.reserve_bytes = reserve_bytes
        self.on_problem = on_problem
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._rows = 0                              # rows on disk (one writer: counted here)
        self._next_id = 1
        self._mem: dict[int, Pending] = {}          # rows waiting for the disk, in id order
        self.memory_total = 0                       # rows ever kept in memory (the status shows it)
        self._mem_kept: dict[str, str | None] = {}  # kept state waiting for the disk (None: delete)
        self._undeleted: set[int] = set()           # acknowledged rows the disk would not delete yet
        self._retry_at = 0.0
        self._damaged = False
        self.problem: str | None = None             # what is wrong now, for the status; None when fine
        self._sync = ""
        self.evicted = 0
        self.moved_aside: list[Path] = []
        with self._lock:
            self._connect_locked()
            if self._db is not None:
                self._make_reserve_locked()

    # ------------------------------------------------------------------ opening
    def _open_db(self) -> sqlite3.Connection:
        # timeout: sqlite3's 5 s default only delayed the "in use by another agent" line (the
        # exclusive lock below means no other connection ever shares this file).
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=1.0)
        try:
            # One agent owns its outbox: an exclusive lock, taken once, instead of six lock
            # calls per commit; and a second agent on the same state directory fails here.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise _Damaged(f"quick_check: {verdict}")
            # No automatic checkpoints: one would fsync inside whichever commit crossed the
            # threshold, possibly an alert's.  ``checkpoint()`` runs from the heartbeat timer.
            db.execute("PRAGMA wal_autocheckpoint=0")
            count, top = db.execute("SELECT count(*), coalesce(max(id), 0) FROM outbox").fetchone()
        except BaseException:
            db.close()
            raise
        self._rows = count
        self._next_id = max(self._next_id, top + 1)
        self._sync = ""
        return db

    def _connect_locked(self) -> None:
        """Open the database; move a damaged one aside; fall back to memory if the disk will not have it."""
        for _attempt in range(3):
            try:
                self._db = self._open_db()
                self._damaged = False
                return
            except (sqlite3.Error, OSError) as exc:
                kind = _trouble_kind(exc)
                if kind == "locked":
                    raise UserError(f"{self.path}: in use by another classroom-agent "
                                    "(one agent per state_dir)") from None
                if kind == "damaged":
                    if self._move_aside_locked(exc):
                        continue
                elif kind == "full" and self._release_reserve_locked():
                    continue
                self._db = None
                self._trouble_locked(kind, exc)
                return

    def _move_aside_locked(self, exc: BaseException) -> bool:
        """Rename the damaged database (and its -wal/-shm) out of the way; True if done."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dest = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while dest.exists():
            n += 1
            dest = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, Path(f"{dest}{suffix}"))
        except OSError as err:
            log.error("%s is damaged (%s) and cannot be moved aside: %s", self.path, exc, err)
            return False
        self.moved_aside.append(dest)
        log.error("%s was damaged (%s): moved aside to %s; starting a fresh outbox", self.path, exc, dest)
        self._notify("damaged", f"damaged ({exc}); moved aside to {dest.name}, started afresh", False)
        return True

    # ------------------------------------------------------------------ the reserve
    def _make_reserve_locked(self) -> bool:
        """Preallocate the reserve if it is missing and the disk has room to spare."""
        if not self.reserve_bytes:
            return True
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        try:
            fs = os.statvfs(self.path.parent)
            if fs.f_bavail * fs.f_frsize < 2 * self.reserve_bytes:
                return False  # leave the space to the messages
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.reserve_bytes)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.write(fd, bytes(self.reserve_bytes))  # a filesystem without fallocate
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            try:
                self.reserve_path.unlink()
            except OSError:
                pass
            log.debug("no outbox reserve yet: %s", exc)
            return False
        return True

    def _release_reserve_locked(self) -> bool:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("%s: cannot release the reserve: %s", self.reserve_path, exc)
            return False
        log.error("%s: the disk is full: released the %d-byte reserve so messages still reach the disk",
                  self.path, self.reserve_bytes)
        self._notify("full", "disk full: the outbox is using its reserve", True)
        return True

    # ------------------------------------------------------------------ trouble
    def _notify(self, kind: str, cause: str, ongoing: bool) -> None:
        if ongoing:
            self.problem = cause
        if self.on_problem is not None:
            try:
                self.on_problem(self.path.name, cause, ongoing)
            except Exception:  # noqa: BLE001 - a report about the disk must not stop a message
                log.exception("outbox problem handler failed")

    def _trouble_locked(self, kind: str, exc: BaseException) -> None:
        """A write or open failed: keep going from memory, try the disk again later."""
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if kind == "damaged":
            self._damaged = True
        if kind == "full":
            cause = "disk full: messages kept in memory until there is room"
        elif kind == "damaged":
            cause = f"damaged ({exc}): messages kept in memory"
        else:
            cause = f"cannot write ({type(exc).__name__}: {exc}): messages kept in memory"
        if cause != self.problem:
            log.error("%s: %s", self.path, cause)
            self._notify(kind, cause, True)

    @property
    def in_memory(self) -> int:
        """How many rows wait in memory for the disk."""
        with self._lock:
            return len(self._mem)

    # ------------------------------------------------------------------ writing
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
        ``keep=(key, value)``: set (or with None, remove) kept state in the same transaction.
        Never fails for the disk's sake: a row the disk will not take waits in memory."""
        if priority is None:
            priority = priority_for(kind)
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        kept = [] if keep is None else [(keep[0], None if keep[1] is None else json.dumps(keep[1]))]
        with self._lock:
            row = Pending(self._next_id, topic, bytes(payload), qos, bool(retain), kind, priority, created)
            self._next_id += 1
            level = "FULL" if sync and priority != HEARTBEAT else "NORMAL"
            if not self._write_locked([row], kept, level):
                self._remember_locked(row, kept)
            return row.id

    def keep(self, key: str, value: dict | None, *, sync: bool = True) -> None:
        """Set (or with None, remove) one piece of kept state on its own."""
        kept = [(key, None if value is None else json.dumps(value))]
        with self._lock:
            if not self._write_locked([], kept, "FULL" if sync else "NORMAL"):
                self._mem_kept.update(kept)

    def _write_locked(self, rows: list[Pending], kept: list[tuple[str, str | None]], level: str,
                      *, force: bool = False) -> bool:
        """One transaction: whatever waits in memory first, then *rows* and *kept*.  False
        (and nothing written) if the disk would not take it; the caller keeps it in memory."""
        if self._db is None or self._damaged:
            return False
        waiting = bool(self._mem or self._mem_kept or self._undeleted)
        if waiting and not force and time.monotonic() < self._retry_at:
            return False  # the disk failed moments ago: do not make every message wait for it again
        all_rows = [*self._mem.values(), *rows]
        all_kept = [*self._mem_kept.items(), *kept]
        deletes = sorted(self._undeleted)
        for _attempt in range(2):
            try:
                self._synchronous(level)
                self._db.execute("BEGIN IMMEDIATE")
                removed = sum(self._db.execute("DELETE FROM outbox WHERE id = ?", (i,)).rowcount for i in deletes)
                evicted = self._evict_locked(self._rows - removed, len(all_rows))
                self._db.executemany(
                    "INSERT INTO outbox (id, topic, payload, qos, retain, kind, priority, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.id, r.topic, r.payload, r.qos, int(r.retain), r.kind, r.priority, r.created)
                     for r in all_rows])
                for key, value in all_kept:
                    self._keep_locked(key, value)
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                # SQLite may already have rolled back by itself (a failed COMMIT on a full
                # disk does): "cannot rollback - no transaction is active" otherwise.
                self._rollback_locked()
                kind = _trouble_kind(exc)
                if kind == "full" and self._release_reserve_locked():
                    continue
                self._trouble_locked(kind, exc)
                return False
            except BaseException:
                self._rollback_locked()
                raise
            break
        self._rows += len(all_rows) - removed - len(evicted)
        for what in evicted:
            self.evicted += 1
            log.warning("outbox full (%d rows): dropped oldest %s", self.max_rows, what)
        if waiting:
            log.warning("%s: the disk takes writes again: %d message(s) and %d kept item(s) written from memory",
                        self.path, len(self._mem), len(self._mem_kept))
        self._mem.clear()
        self._mem_kept.clear()
        self._undeleted.clear()
        return True

    def _rollback_locked(self) -> None:
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("%s: rollback failed: %s", self.path, exc)

    def _remember_locked(self, row: Pending, kept: list[tuple[str, str | None]]) -> None:
        """Keep a row (and its kept state) in memory, within the bound."""
        while len(self._mem) + self._rows >= self.max_rows:
            victims = [r for r in self._mem.values() if r.priority > PROTECTED]
            if not victims:
                break
            victim = min(victims, key=lambda r: (-r.priority, r.id))
            del self._mem[victim.id]
            self.evicted += 1
            log.warning("outbox full (%d rows): dropped oldest %s", self.max_rows, victim.kind)
        self._mem[row.id] = row
        self.memory_total += 1
        self._mem_kept.update(kept)

    def _keep_locked(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM kept WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO kept (key, value) VALUES (?, ?)", (key, value))

    def kept(self, key: str) -> dict | None:
        """Kept state, or None; a value that does not parse is logged and treated as None."""
        with self._lock:
            if key in self._mem_kept:
                text = self._mem_kept[key]
            elif self._db is None or self._damaged:
                text = None
            else:
                try:
                    row = self._db.execute("SELECT value FROM kept WHERE key = ?", (key,)).fetchone()
                except sqlite3.Error as exc:
                    self._trouble_locked(_trouble_kind(exc), exc)
                    row = None
                text = row[0] if row is not None else None
        if text is None:
            return None
        try:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not an object")
            return value
        except ValueError as exc:
            log.warning("%s: kept %s is unreadable (%s); ignoring it", self.path, key, exc)
            return None

    def _evict_locked(self, count: int, incoming: int) -> list[str]:
        """Make room for *incoming* rows; returns the kinds of the rows deleted (counted once committed)."""
        evicted: list[str] = []
        while count + incoming > self.max_rows:
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

    # ------------------------------------------------------------------ durability
    def sync(self) -> None:
        """Make every committed row durable against power loss (fsync the WAL)."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except OSError:
            return  # nothing in the WAL: everything is in the main file already
        try:
            os.fsync(fd)
        except OSError as exc:
            log.warning("%s: fsync failed: %s", self.path, exc)
        finally:
            os.close(fd)

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (off the press path)."""
        with self._lock:
            if self._db is None or self._damaged or self._mem:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                self._trouble_locked(_trouble_kind(exc), exc)

    def recover(self) -> bool:
        """Try the disk again (the runtime calls this while there is trouble): reopen a
        database that failed, move a damaged one aside, write what waits in memory, make
        the reserve again.  True when everything is back on disk with a reserve."""
        with self._lock:
            if self.problem is None and not self._mem and not self._mem_kept:
                return True
            if self._damaged and self._db is not None:
                # Reopen: a fresh look decides whether it is damaged (and moves it aside).
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None
            if self._db is None:
                self._connect_locked()
                if self._db is None:
                    return False
            if (self._mem or self._mem_kept or self._undeleted) and not self._write_locked([], [], "FULL", force=True):
                return False
            if not self._make_reserve_locked():
                return False
            if self.problem is not None:
                log.warning("%s: recovered (%s); on disk with a reserve again", self.path, self.problem)
                self.problem = None
                self._notify("recovered", "recovered", False)
            return True

    # ------------------------------------------------------------------ acknowledged rows
    def delete(self, row_id: int) -> bool:
        """Forget a row once the broker has it (PUBACK).  Returns whether it existed."""
        return self.delete_many([row_id]) > 0

    def delete_many(self, row_ids: list[int]) -> int:
        """Forget several acknowledged rows in one transaction; returns how many existed."""
        with self._lock:
            n = 0
            on_disk = []
            for row_id in row_ids:
                if self._mem.pop(row_id, None) is not None:
                    n += 1
                elif row_id not in self._undeleted:
                    on_disk.append(row_id)
            if not on_disk:
                return n
            if self._db is None or self._damaged or self._mem or self._mem_kept:
                # The disk is in trouble: forget them here and delete them once it is back.
                self._undeleted.update(on_disk)
                return n + len(on_disk)
            try:
                self._synchronous("NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                gone = sum(self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
                           for row_id in on_disk)
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._rollback_locked()
                self._trouble_locked(_trouble_kind(exc), exc)
                self._undeleted.update(on_disk)
                return n + len(on_disk)
            self._rows -= gone
            return n + gone

    # ------------------------------------------------------------------ reading
    def pending(self) -> list[Pending]:
        """Every stored row, oldest first (send order): on disk, then waiting in memory."""
        with self._lock:
            rows: list[Pending] = []
            if self._db is not None and not self._damaged:
                try:
                    found = self._db.execute("SELECT id, topic, payload, qos, retain, kind, priority, created"
                                             " FROM outbox ORDER BY id").fetchall()
                except sqlite3.Error as exc:
                    self._trouble_locked(_trouble_kind(exc), exc)
                    found = []
                rows = [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7])
                        for r in found if r[0] not in self._undeleted]
            rows.extend(self._mem.values())
            return rows

    def count(self, kind: str | None = None) -> int:
        return sum(1 for row in self.pending() if kind is None or row.kind == kind)

    def close(self) -> None:
        with self._lock:
            if self._mem or self._mem_kept:
                self._write_locked([], [], "FULL", force=True)
            if self._mem:
                log.error("%s: %d message(s) could not be written to disk and are lost with this run",
                          self.path, len(self._mem))
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
                self._db = None

"""The database engines under the store: connections, the SQLite writer thread, ``Tx``,
and everything that differs between SQLite and PostgreSQL.

``connect(url)`` gives a ``SQLiteEngine`` for ``sqlite:///PATH`` (SQLAlchemy's convention:
three slashes then the path, so an absolute path shows four; ``sqlite:///server.db`` is
relative) or a ``PostgresEngine`` for ``postgresql://user@host/db``.  The table modules
next to this one never see which: they write SQL once, with ``?`` placeholders (the
PostgreSQL engine rewrites them to ``%s``), and go through ``write(fn)`` / ``query``.

SQLite (datasette idiom): WAL, ONE writer thread fed by a queue; the writer runs every
queued task in one transaction (a SAVEPOINT each, so one failing task does not undo the
others) and commits the lot, which is what makes 20k events/s possible.  Big row
batches go in as ONE ``INSERT ... SELECT ... FROM json_each(?)`` statement, because
``executemany`` gives up and re-takes the GIL for every row, which stalls behind the busy
ingest threads.  Readers use their own per-thread connections and never block on the writer.

PostgreSQL: psycopg 3, one autocommit connection per thread; a write is one
transaction on the calling thread (several ingest workers may write concurrently);
big row batches go through ``COPY`` into a temp table and ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store URL or database problem, one line."""


# --------------------------------------------------------------------------- transactions


class Tx:
    """What a write function gets: execute/executemany/query on the open transaction."""

    def __init__(self, engine: "Engine", cursor) -> None:
        self.engine = engine
        self.cursor = cursor

    def execute(self, sql: str, params: Sequence = ()) -> int:
        self.cursor.execute(self.engine.sql(sql), params)
        return self.cursor.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        if self.engine.dialect == "sqlite":
            self.cursor.executemany(sql, rows)
            return self.cursor.rowcount
        # psycopg's executemany pipelines; returning=False keeps rowcount the sum.
        self.cursor.executemany(self.engine.sql(sql), rows)
        return self.cursor.rowcount

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        self.cursor.execute(self.engine.sql(sql), params)
        return [dict(r) for r in self.cursor.fetchall()]

    def query_one(self, sql: str, params: Sequence = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def insert_new(self, table: str, columns: Sequence[str], key: str, rows: list[tuple]) -> int:
        """Insert *rows*, skipping any whose *key* is already stored; returns rows inserted."""
        return self.engine.insert_new(self, table, columns, key, rows)


# --------------------------------------------------------------------------- base


class Engine:
    """One database: ``write(fn)`` runs ``fn(tx)`` in a transaction, ``query`` reads."""

    dialect = "?"

    def __init__(self, url: str) -> None:
        self.url = url
        self._insert_sql: dict[tuple, str] = {}

    def sql(self, sql: str) -> str:
        return sql

    def write(self, fn: Callable[[Tx], Any], wait: bool = True) -> Any:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def queue_depth(self) -> int:
        return 0

    def insert_new(self, tx: Tx, table: str, columns: Sequence[str], key: str, rows: list[tuple]) -> int:
        sql = self._insert_sql.get((table, key))
        if sql is None:
            sql = self._insert_sql[(table, key)] = (
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                f"ON CONFLICT ({key}) DO NOTHING")
        return tx.executemany(sql, rows)


def connect(url: str) -> Engine:
    """The engine for a store URL (sqlite:///PATH or postgresql://...)."""
    if url.startswith("sqlite:///"):
        return SQLiteEngine(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(url)
    raise StoreError(f"--db {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


# --------------------------------------------------------------------------- SQLite


class SQLiteEngine(Engine):
    dialect = "sqlite"
    MAX_TASKS_PER_COMMIT = 500
    JSON_BATCH_THRESHOLD = 50

    def insert_new(self, tx: Tx, table: str, columns: Sequence[str], key: str, rows: list[tuple]) -> int:
        # executemany releases and re-takes the GIL around every row's sqlite3_step;
        # with ingest's parser thread busy, each re-take can wait a whole switch
        # interval, which made inserts 7x slower than a lone loader.  One INSERT ...
        # SELECT over json_each() stores the whole batch in a single step instead.
        if len(rows) < self.JSON_BATCH_THRESHOLD:
            return super().insert_new(tx, table, columns, key, rows)
        sql = self._insert_sql.get((table, key, "json"))
        if sql is None:
            values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
            sql = self._insert_sql[(table, key, "json")] = (
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} FROM json_each(?) WHERE true "
                f"ON CONFLICT ({key}) DO NOTHING")
        return tx.execute(sql, (json.dumps(rows, separators=(",", ":"), ensure_ascii=False),))

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = url[len("sqlite:///"):]
        if not self.path or self.path == ":memory:":
            raise StoreError("sqlite: give a file path (sqlite:////var/lib/classroom/server.db); readers need a file")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._queue: "queue.Queue[tuple[Callable, Future] | None]" = queue.Queue()
        try:
            self._writer_conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from None
        # Switching to WAL needs an exclusive lock and ignores the busy timeout; several
        # workers opening a new database together must take turns.
        for attempt in range(300):
            try:
                self._writer_conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 299:
                    raise StoreError(f"sqlite {self.path}: {exc}") from None
                time.sleep(0.1)
        self._writer_conn.execute("PRAGMA synchronous = NORMAL")
        self._writer_conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def write(self, fn: Callable[[Tx], Any], wait: bool = True) -> Any:
        if self._closed:
            raise StoreError("store is closed")
        future: Future = Future()
        self._queue.put((fn, future))
        return future.result() if wait else future

    def _write_loop(self) -> None:
        conn = self._writer_conn
        cursor = conn.cursor()
        tx = Tx(self, cursor)
        while True:
            task = self._queue.get()
            if task is None:
                break
            tasks = [task]
            stop = False
            while len(tasks) < self.MAX_TASKS_PER_COMMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                tasks.append(more)
            results: list[tuple[Future, Any, BaseException | None]] = []
            try:
                cursor.execute("BEGIN IMMEDIATE")
                for fn, future in tasks:
                    cursor.execute("SAVEPOINT task")
                    try:
                        value = fn(tx)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        cursor.execute("ROLLBACK TO task")
                        cursor.execute("RELEASE task")
                        results.append((future, None, exc))
                    else:
                        cursor.execute("RELEASE task")
                        results.append((future, value, None))
                cursor.execute("COMMIT")
            except sqlite3.Error as exc:
                log.error("store: commit failed: %s", exc)
                try:
                    cursor.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                results = [(future, None, exc) for _, future in tasks]
            # Callers are released only after COMMIT, so "returned" means "durable".
            for future, value, exc in results:
                if exc is not None:
                    future.set_exception(exc)
                else:
                    future.set_result(value)
            if stop:
                break
        conn.close()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        cursor = self._reader().execute(sql, params)
        return [dict(r) for r in cursor.fetchall()]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        with self._readers_lock:
            for conn in self._readers:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._readers.clear()


# --------------------------------------------------------------------------- PostgreSQL


class PostgresEngine(Engine):
    dialect = "postgresql"
    COPY_THRESHOLD = 200

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'classroom-safety[server]'") from None
        self._local = threading.local()
        self._conns: list = []
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0
        self._conn()  # fail fast on a bad URL

    def sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def _conn(self):
        import psycopg
        from psycopg.rows import dict_row

        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        except psycopg.Error as exc:
            raise StoreError(f"postgresql: {str(exc).strip().splitlines()[0]}") from None
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    @property
    def queue_depth(self) -> int:
        return self._pending

    def write(self, fn: Callable[[Tx], Any], wait: bool = True) -> Any:
        if self._closed:
            raise StoreError("store is closed")
        conn = self._conn()
        with self._lock:
            self._pending += 1
        import psycopg

        try:
            with conn.transaction():
                with conn.cursor() as cursor:
                    value = fn(Tx(self, cursor))
        except psycopg.DataError as exc:
            # e.g. a NUL character, which PostgreSQL text cannot hold: bad input, not a crash.
            raise StoreError(f"postgresql: {str(exc).strip().splitlines()[0]}") from None
        except psycopg.OperationalError:
            self._drop_conn(conn)  # the server went away: reconnect on the next call
            raise
        finally:
            with self._lock:
                self._pending -= 1
        if wait:
            return value
        future: Future = Future()
        future.set_result(value)
        return future

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        import psycopg

        try:
            with self._conn().cursor() as cursor:
                cursor.execute(self.sql(sql), params)
                return list(cursor.fetchall())
        except psycopg.DataError as exc:
            raise StoreError(f"postgresql: {str(exc).strip().splitlines()[0]}") from None
        except psycopg.OperationalError:
            self._drop_conn(self._local.conn)
            raise

    def _drop_conn(self, conn) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    def insert_new(self, tx: Tx, table: str, columns: Sequence[str], key: str, rows: list[tuple]) -> int:
        if len(rows) < self.COPY_THRESHOLD:
            return super().insert_new(tx, table, columns, key, rows)
        cursor = tx.cursor
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}_stage (LIKE {table}) ON COMMIT DELETE ROWS")
        names = ", ".join(columns)
        with cursor.copy(f"COPY {table}_stage ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {table}_stage "
                       f"ON CONFLICT ({key}) DO NOTHING")
        inserted = cursor.rowcount
        cursor.execute(f"DELETE FROM {table}_stage")
        return inserted

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self._conns.clear()

"""The collector's store: one public API over SQLite (default) and PostgreSQL (trusts, LAs).

``Store.open("sqlite:////var/lib/classroom/server.db")`` (SQLAlchemy's convention: three
slashes then the path, so an absolute path shows four; ``sqlite:///server.db`` is relative) or
``Store.open("postgresql://user@host/db")``.  The schema (server/schema.py) is applied
and migrations run on open.

SQLite (datasette idiom): WAL, ONE writer thread fed by a queue; the writer runs every
queued task in one transaction (a SAVEPOINT each, so one failing task does not undo the
others) and commits the lot, which is what makes 20k events/s possible.  Big event
batches go in as ONE ``INSERT ... SELECT ... FROM json_each(?)`` statement, because
``executemany`` gives up and re-takes the GIL for every row, which stalls behind the busy
ingest threads.  Readers use their own per-thread connections and never block on the writer.

PostgreSQL: psycopg 3, one autocommit connection per thread; a write is one
transaction on the calling thread (several ingest workers may write concurrently);
event batches go through ``COPY`` into a temp table and ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING``.

SQL in this module and in callers is written once, with ``?`` placeholders; the
PostgreSQL backend rewrites them to ``%s``.  Extensions (rollout, reports) use
``store.query`` / ``store.query_one`` / ``store.write(fn)`` where ``fn(tx)`` gets a
``Tx`` with ``execute``, ``executemany``, ``query``, ``query_one``.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from .schema import MIGRATIONS, SCHEMA

log = logging.getLogger(__name__)

# Columns of the events table, in insert order.
EVENT_COLUMNS = ("id", "type", "ts", "site", "room", "device", "user_name", "domain", "profile", "alert_id",
                 "data", "received_at")
# Incident fields staff may change (PATCH); everything else comes from the device.
INCIDENT_FIELDS = ("category", "tags", "status", "outcome")
# Tables with a time column retention may purge, and that column.
PURGEABLE = {"heartbeats": "ts", "events": "ts", "incidents": "closed_at", "audit": "ts",
             "alert_transitions": "ts", "incident_actions": "ts", "device_alerts": "raised_at",
             "sessions": "expires_at", "enrol_tokens": "expires_at"}


# Transitions with the same device timestamp (ms) sort in lifecycle order.
STATE_ORDER = ("CASE state WHEN 'raised' THEN 0 WHEN 'escalated' THEN 1 WHEN 'acknowledged' THEN 2 "
               "WHEN 'cleared' THEN 3 ELSE 4 END")


class StoreError(RuntimeError):
    """A store URL or database problem, one line."""


def utcnow() -> str:
    """Server timestamps: RFC 3339 UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def event_row(event: dict, received_at: str, raw: bytes | str | None = None) -> tuple:
    """One events row from a validated event payload (*raw*: its JSON as received, stored as is)."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8")
    return (
        event["id"], event["type"], event["ts"], event["site"], event["room"], event["device"],
        _str_or_none(event.get("user")), _str_or_none(event.get("domain")), _str_or_none(event.get("profile")),
        _str_or_none(event.get("alert_id")),
        raw if raw is not None else json.dumps(event, separators=(",", ":"), ensure_ascii=False), received_at,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- transactions


class Tx:
    """What a write function gets: execute/executemany/query on the open transaction."""

    def __init__(self, store: "Store", cursor) -> None:
        self.store = store
        self.cursor = cursor

    def execute(self, sql: str, params: Sequence = ()) -> int:
        self.cursor.execute(self.store._sql(sql), params)
        return self.cursor.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        if self.store.dialect == "sqlite":
            self.cursor.executemany(sql, rows)
            return self.cursor.rowcount
        total = 0
        # psycopg's executemany pipelines; returning=False keeps rowcount the sum.
        self.cursor.executemany(self.store._sql(sql), rows)
        total = self.cursor.rowcount
        return total

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        self.cursor.execute(self.store._sql(sql), params)
        return [dict(r) for r in self.cursor.fetchall()]

    def query_one(self, sql: str, params: Sequence = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None


# --------------------------------------------------------------------------- base


class Store:
    """Backend-neutral API.  Use ``Store.open(url)``."""

    dialect = "?"

    def __init__(self, url: str) -> None:
        self.url = url
        self.stats = {"events_inserted": 0, "events_duplicate": 0, "alerts_inserted": 0, "alerts_duplicate": 0,
                      "heartbeats": 0, "status": 0}
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ factory

    @staticmethod
    def open(url: str) -> "Store":
        if url.startswith("sqlite:///"):
            store: Store = SQLiteStore(url)
        elif url.startswith(("postgresql://", "postgres://")):
            store = PostgresStore(url)
        else:
            raise StoreError(f"--db {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
        store.migrate()
        return store

    # ------------------------------------------------------------------ backend hooks

    def _sql(self, sql: str) -> str:
        return sql

    def write(self, fn: Callable[[Tx], Any], wait: bool = True) -> Any:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        raise NotImplementedError

    def query_one(self, sql: str, params: Sequence = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence = ()) -> int:
        return self.write(lambda tx: tx.execute(sql, params))

    def close(self) -> None:
        pass

    def _insert_event_rows(self, tx: Tx, rows: list[tuple]) -> int:
        placeholders = ", ".join("?" for _ in EVENT_COLUMNS)
        return tx.executemany(
            f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING",
            rows,
        )

    @property
    def queue_depth(self) -> int:
        return 0

    # ------------------------------------------------------------------ schema

    def migrate(self) -> None:
        statements = split_sql(SCHEMA)

        def run(tx: Tx) -> None:
            if self.dialect == "postgresql":
                # Several workers may start at once; CREATE ... IF NOT EXISTS is not safe
                # against itself, so migrations take a transaction-scoped advisory lock.
                tx.execute("SELECT pg_advisory_xact_lock(72430001)")
            for statement in statements:
                tx.execute(statement)
            done = {r["version"] for r in tx.query("SELECT version FROM schema_version")}
            for version, migration in MIGRATIONS:
                if version in done:
                    continue
                for statement in migration:
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?) "
                           "ON CONFLICT (version) DO NOTHING", (version, utcnow()))

        self.write(run)

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

    # ------------------------------------------------------------------ ingest

    def insert_events(self, events: Sequence[dict], wait: bool = True) -> int | Future:
        """Store validated event payloads; duplicates (same id) are skipped.  Returns rows inserted."""
        now = utcnow()
        rows = [event_row(e, now) for e in events]

        def run(tx: Tx) -> int:
            inserted = self._insert_event_rows(tx, rows) if rows else 0
            self._touch_devices(tx, [(e["site"], e["room"], e["device"]) for e in events], now)
            return inserted

        result = self.write(run, wait=wait)
        if wait:
            self._bump(events_inserted=result, events_duplicate=len(rows) - result)
        return result

    def ingest(self, items: Sequence[tuple], wait: bool = True) -> dict | Future:
        """Store a batch of validated ``(Topic, payload)`` pairs (or ``(Topic, payload, raw_bytes)``)
        in ONE transaction.

        Returns ``{"events": inserted, "duplicates": n, "alerts": [new transitions],
        "status": n, "heartbeats": n}``."""
        now = utcnow()
        events, alerts, statuses, beats, touched = [], [], [], [], []
        for item in items:
            where, data = item[0], item[1]
            touched.append((where.site, where.room, where.device))
            if where.kind == "event":
                events.append(event_row(data, now, item[2] if len(item) > 2 else None))
            elif where.kind == "alert":
                alerts.append(data)
            elif where.kind == "status":
                statuses.append((where, data))
            elif where.kind == "heartbeat":
                beats.append((where, data))

        def run(tx: Tx) -> dict:
            inserted = self._insert_event_rows(tx, events) if events else 0
            new_alerts = [a for a in alerts if self._record_alert(tx, a, now)]
            for where, data in statuses:
                self._record_status(tx, where.site, where.room, where.device, data)
            if beats:
                self._record_heartbeats(tx, beats, now)
            self._touch_devices(tx, touched, now)
            return {"events": inserted, "duplicates": len(events) - inserted, "alerts": new_alerts,
                    "alert_duplicates": len(alerts) - len(new_alerts), "status": len(statuses),
                    "heartbeats": len(beats)}

        if not wait:
            return self.write(run, wait=False)
        result = self.write(run)
        self._bump(events_inserted=result["events"], events_duplicate=result["duplicates"],
                   alerts_inserted=len(result["alerts"]), alerts_duplicate=result["alert_duplicates"],
                   heartbeats=result["heartbeats"], status=result["status"])
        return result

    def _touch_devices(self, tx: Tx, places: Iterable[tuple[str, str, str]], now: str) -> None:
        # Once per device per batch: this is what dark-device detection reads.
        unique = {device: (site, room) for site, room, device in places}
        if not unique:
            return
        tx.executemany(
            "INSERT INTO devices (id, site, room, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, site = excluded.site, "
            "room = excluded.room",
            # Sorted: concurrent workers then lock device rows in the same order (no deadlock).
            [(device, site, room, now) for device, (site, room) in sorted(unique.items())],
        )

    def record_alert(self, alert: dict) -> bool:
        """Store one validated alert transition; False if it was a duplicate."""
        now = utcnow()
        new = self.write(lambda tx: self._record_alert(tx, alert, now))
        self._bump(alerts_inserted=int(new), alerts_duplicate=int(not new))
        return new

    def _record_alert(self, tx: Tx, alert: dict, now: str) -> bool:
        inserted = tx.execute(
            "INSERT INTO alert_transitions (alert_id, state, ts, by_whom, site, room, device, seat, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id, state) DO NOTHING",
            (alert["id"], alert["state"], alert["ts"], _str_or_none(alert.get("by")), alert["site"], alert["room"],
             alert["device"], _str_or_none(alert.get("seat")), now),
        )
        if inserted != 1:
            return False
        tx.execute(
            "INSERT INTO incidents (id, site, room, device, seat, raised_at, alert_state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (alert["id"], alert["site"], alert["room"], alert["device"], _str_or_none(alert.get("seat")),
             alert["ts"], alert["state"], now, now),
        )
        # Resends can arrive out of order: the incident shows the latest transition by
        # device time, and the raise time once it is known.
        tx.execute(
            "UPDATE incidents SET updated_at = ?, "
            "alert_state = (SELECT state FROM alert_transitions WHERE alert_id = ? ORDER BY ts DESC, "
            + STATE_ORDER + " DESC LIMIT 1), "
            "raised_at = (SELECT MIN(ts) FROM alert_transitions WHERE alert_id = ?), "
            "seat = COALESCE(seat, ?) WHERE id = ?",
            (now, alert["id"], alert["id"], _str_or_none(alert.get("seat")), alert["id"]),
        )
        return True

    def record_status(self, site: str, room: str, device: str, data: dict) -> None:
        self.write(lambda tx: self._record_status(tx, site, room, device, data))

    def _record_status(self, tx: Tx, site: str, room: str, device: str, data: dict) -> None:
        # Retained status and Last Will may be replayed: only a newer ts wins.
        tx.execute(
            "INSERT INTO devices (id, site, room, status, status_ts, agent_version, config_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "status = excluded.status, status_ts = excluded.status_ts, "
            "agent_version = COALESCE(excluded.agent_version, devices.agent_version), "
            "config_version = COALESCE(excluded.config_version, devices.config_version) "
            "WHERE devices.status_ts IS NULL OR devices.status_ts <= excluded.status_ts",
            (device, site, room, data["state"], data["ts"], _str_or_none(data.get("agent_version")),
             _str_or_none(data.get("config_version"))),
        )

    def _record_heartbeats(self, tx: Tx, beats: list[tuple[Any, dict]], now: str) -> None:
        def num(v):
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        tx.executemany(
            "INSERT INTO heartbeats (device, ts, cpu, mem, temp, uptime, user_name, config_version, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, ts) DO NOTHING",
            [(w.device, d["ts"], num(d.get("cpu")), num(d.get("mem")), num(d.get("temp")), num(d.get("uptime")),
              _str_or_none(d.get("user")), _str_or_none(d.get("config_version")), now) for w, d in beats],
        )
        latest: dict[str, dict] = {}
        for w, d in beats:
            latest[w.device] = d
        tx.executemany(
            "UPDATE devices SET last_heartbeat = ?, config_version = COALESCE(?, config_version) WHERE id = ?",
            [(json.dumps(d, separators=(",", ":")), _str_or_none(d.get("config_version")), dev)
             for dev, d in sorted(latest.items())],
        )

    # ------------------------------------------------------------------ events

    def events(self, *, type: str | None = None, device: str | None = None, room: str | None = None,
               since: str | None = None, until: str | None = None, limit: int = 1000) -> list[dict]:
        where, params = [], []
        for column, value in (("type", type), ("device", device), ("room", room)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since:
            where.append("ts >= ?")
            params.append(since)
        if until:
            where.append("ts < ?")
            params.append(until)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY ts DESC, id LIMIT ?"
        rows = self.query(sql, (*params, int(limit)))
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows

    def get_event(self, event_id: str) -> dict | None:
        row = self.query_one("SELECT * FROM events WHERE id = ?", (event_id,))
        if row:
            row["data"] = json.loads(row["data"])
        return row

    # ------------------------------------------------------------------ incidents

    def list_incidents(self, *, rooms: Sequence[str] | None = None, status: str | None = None,
                       since: str | None = None, limit: int = 200) -> list[dict]:
        where, params = [], []
        if rooms is not None:
            if not rooms:
                return []
            where.append("room IN (" + ", ".join("?" for _ in rooms) + ")")
            params.extend(rooms)
        if status:
            where.append("status = ?")
            params.append(status)
        if since:
            where.append("raised_at >= ?")
            params.append(since)
        sql = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.query(sql + " ORDER BY raised_at DESC, id LIMIT ?", (*params, int(limit)))
        if rows:
            ids = [r["id"] for r in rows]
            transitions = self.query(
                "SELECT * FROM alert_transitions WHERE alert_id IN (" + ", ".join("?" for _ in ids) + ") "
                "ORDER BY ts, " + STATE_ORDER, ids)
            by_id: dict[str, list] = {}
            for t in transitions:
                by_id.setdefault(t["alert_id"], []).append(_transition(t))
            for row in rows:
                _incident_row(row)
                row["timeline"] = by_id.get(row["id"], [])
        return rows

    def get_incident(self, incident_id: str) -> dict | None:
        row = self.query_one("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if row is None:
            return None
        _incident_row(row)
        row["timeline"] = [_transition(t) for t in self.query(
            "SELECT * FROM alert_transitions WHERE alert_id = ? ORDER BY ts, " + STATE_ORDER, (incident_id,))]
        row["actions"] = self.query(
            "SELECT id, ts, actor, kind, item, text FROM incident_actions WHERE incident_id = ? ORDER BY ts, id",
            (incident_id,))
        return row

    def update_incident(self, incident_id: str, actor: str, changes: dict) -> dict | None:
        """Apply staff changes (category/tags/status/outcome) and record each as an action."""
        unknown = set(changes) - set(INCIDENT_FIELDS)
        if unknown:
            raise StoreError(f"cannot change {', '.join(sorted(unknown))}")
        now = utcnow()

        def run(tx: Tx) -> bool:
            if tx.query_one("SELECT id FROM incidents WHERE id = ?", (incident_id,)) is None:
                return False
            for key, value in changes.items():
                stored = json.dumps(value) if key == "tags" else value
                tx.execute(f"UPDATE incidents SET {key} = ?, updated_at = ? WHERE id = ?", (stored, now, incident_id))
                tx.execute("INSERT INTO incident_actions (id, incident_id, ts, actor, kind, item, text) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (new_id(), incident_id, now, actor, "set", key,
                            json.dumps(value) if not isinstance(value, str) else value))
            if changes.get("status") == "closed":
                tx.execute("UPDATE incidents SET closed_at = ? WHERE id = ?", (now, incident_id))
            elif "status" in changes:
                tx.execute("UPDATE incidents SET closed_at = NULL WHERE id = ?", (incident_id,))
            return True

        return self.get_incident(incident_id) if self.write(run) else None

    def add_incident_action(self, incident_id: str, actor: str, kind: str, item: str | None = None,
                            text: str | None = None) -> dict | None:
        now = utcnow()
        action = {"id": new_id(), "ts": now, "actor": actor, "kind": kind, "item": item, "text": text}

        def run(tx: Tx) -> bool:
            if tx.query_one("SELECT id FROM incidents WHERE id = ?", (incident_id,)) is None:
                return False
            tx.execute("INSERT INTO incident_actions (id, incident_id, ts, actor, kind, item, text) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (action["id"], incident_id, now, actor, kind, item, text))
            tx.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (now, incident_id))
            return True

        return action if self.write(run) else None

    def evidence(self, incident_id: str) -> list[dict]:
        """report_evidence events for an alert: domains and times only (never imagery)."""
        rows = self.query("SELECT id, ts, device, data FROM events WHERE type = 'report_evidence' AND alert_id = ? "
                          "ORDER BY ts", (incident_id,))
        out = []
        for row in rows:
            data = json.loads(row["data"])
            out.append({"event_id": row["id"], "ts": row["ts"], "device": row["device"],
                        "minutes": data.get("minutes"),
                        "domains": [{k: d.get(k) for k in ("domain", "ts", "count") if k in d}
                                    for d in data.get("domains", []) if isinstance(d, dict)]})
        return out

    # ------------------------------------------------------------------ devices

    def upsert_device(self, device: str, *, site: str | None = None, room: str | None = None) -> None:
        self.execute("INSERT INTO devices (id, site, room) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                     "site = COALESCE(excluded.site, devices.site), room = COALESCE(excluded.room, devices.room)",
                     (device, site, room))

    def get_device(self, device: str) -> dict | None:
        return self.query_one("SELECT * FROM devices WHERE id = ?", (device,))

    def list_devices(self, rooms: Sequence[str] | None = None) -> list[dict]:
        rows = self.query("SELECT id, site, room, enrolled_at, enrolled_by, status, status_ts, agent_version, "
                          "config_version, last_seen, last_heartbeat FROM devices ORDER BY room, id")
        if rooms is not None:
            rows = [r for r in rows if r["room"] in rooms]
        for row in rows:
            row["last_heartbeat"] = json.loads(row["last_heartbeat"]) if row["last_heartbeat"] else None
        return rows

    def set_device_credentials(self, device: str, password_hash: str, by: str, site: str | None = None,
                               room: str | None = None) -> None:
        now = utcnow()
        self.execute("INSERT INTO devices (id, site, room, password_hash, enrolled_at, enrolled_by) "
                     "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash, "
                     "enrolled_at = excluded.enrolled_at, enrolled_by = excluded.enrolled_by, "
                     "site = COALESCE(excluded.site, devices.site), room = COALESCE(excluded.room, devices.room)",
                     (device, site, room, password_hash, now, by))

    def add_enrol_token(self, token_hash: str, device: str, created_by: str, expires_at: str) -> None:
        self.execute("INSERT INTO enrol_tokens (token_hash, device, created_by, created_at, expires_at) "
                     "VALUES (?, ?, ?, ?, ?)", (token_hash, device, created_by, utcnow(), expires_at))

    def use_enrol_token(self, token_hash: str, now: str | None = None) -> str | None:
        """Consume a token atomically; return its device, or None if unknown/used/expired."""
        now = now or utcnow()

        def run(tx: Tx) -> str | None:
            row = tx.query_one("SELECT device, expires_at, used_at FROM enrol_tokens WHERE token_hash = ?",
                               (token_hash,))
            if row is None or row["used_at"] is not None or row["expires_at"] <= now:
                return None
            if tx.execute("UPDATE enrol_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                          (now, token_hash)) != 1:
                return None
            return row["device"]

        return self.write(run)

    def list_enrol_tokens(self) -> list[dict]:
        return self.query("SELECT device, created_by, created_at, expires_at, used_at FROM enrol_tokens "
                          "ORDER BY created_at DESC")

    def raise_device_alert(self, kind: str, device: str, room: str | None, message: str) -> dict | None:
        """Open a technician alert unless one of this kind is already open for the device."""
        alert = {"id": new_id(), "kind": kind, "device": device, "room": room, "message": message,
                 "raised_at": utcnow(), "cleared_at": None}

        def run(tx: Tx) -> bool:
            if tx.query_one("SELECT id FROM device_alerts WHERE kind = ? AND device = ? AND cleared_at IS NULL",
                            (kind, device)):
                return False
            tx.execute("INSERT INTO device_alerts (id, kind, device, room, message, raised_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (alert["id"], kind, device, room, message, alert["raised_at"]))
            return True

        return alert if self.write(run) else None

    def clear_device_alerts(self, kind: str, device: str) -> int:
        return self.execute("UPDATE device_alerts SET cleared_at = ? WHERE kind = ? AND device = ? "
                            "AND cleared_at IS NULL", (utcnow(), kind, device))

    def list_device_alerts(self, open_only: bool = True) -> list[dict]:
        sql = "SELECT * FROM device_alerts" + (" WHERE cleared_at IS NULL" if open_only else "")
        return self.query(sql + " ORDER BY raised_at DESC")

    # ------------------------------------------------------------------ users and sessions

    def add_user(self, username: str, role: str, password_hash: str, display_name: str | None = None) -> None:
        self.execute("INSERT INTO users (username, role, display_name, password_hash, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", (username, role, display_name, password_hash, utcnow()))

    def get_user(self, username: str) -> dict | None:
        return self.query_one("SELECT * FROM users WHERE username = ?", (username,))

    def list_users(self) -> list[dict]:
        return self.query("SELECT username, role, display_name, created_at, disabled FROM users ORDER BY username")

    def update_user(self, username: str, **fields: Any) -> bool:
        allowed = {"role", "display_name", "password_hash", "disabled"}
        fields = {k: v for k, v in fields.items() if k in allowed}
        if not fields:
            return self.get_user(username) is not None
        sets = ", ".join(f"{k} = ?" for k in fields)
        return self.execute(f"UPDATE users SET {sets} WHERE username = ?", (*fields.values(), username)) == 1

    def add_session(self, token_hash: str, username: str, expires_at: str) -> None:
        self.execute("INSERT INTO sessions (token_hash, username, created_at, expires_at) VALUES (?, ?, ?, ?)",
                     (token_hash, username, utcnow(), expires_at))

    def get_session(self, token_hash: str, now: str | None = None) -> dict | None:
        return self.query_one(
            "SELECT s.username, s.expires_at, u.role, u.display_name, u.disabled FROM sessions s "
            "JOIN users u ON u.username = s.username WHERE s.token_hash = ? AND s.expires_at > ?",
            (token_hash, now or utcnow()))

    def delete_session(self, token_hash: str) -> int:
        return self.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_user_sessions(self, username: str) -> int:
        return self.execute("DELETE FROM sessions WHERE username = ?", (username,))

    # ------------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, target: str | None = None, details: Any = None,
              wait: bool = True) -> None:
        """Append to the audit log (who, when, what, details as JSON)."""
        text = details if isinstance(details, str) or details is None else json.dumps(details, default=str)
        self.write(lambda tx: tx.execute(
            "INSERT INTO audit (id, ts, actor, action, target, details) VALUES (?, ?, ?, ?, ?, ?)",
            (new_id(), utcnow(), actor, action, target, text)), wait=wait)

    def list_audit(self, *, since: str | None = None, action: str | None = None, limit: int = 500) -> list[dict]:
        where, params = [], []
        if since:
            where.append("ts >= ?")
            params.append(since)
        if action:
            where.append("action = ?")
            params.append(action)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        return self.query(sql + " ORDER BY ts DESC, id LIMIT ?", (*params, int(limit)))

    # ------------------------------------------------------------------ retention

    def purge(self, table: str, before: str, extra_where: str = "") -> int:
        """Delete rows of *table* whose time column is older than *before*; returns rows deleted."""
        column = PURGEABLE.get(table)
        if column is None:
            raise StoreError(f"{table!r} has no retention rule")
        sql = f"DELETE FROM {table} WHERE {column} IS NOT NULL AND {column} < ?"
        if extra_where:
            sql += f" AND ({extra_where})"
        return self.execute(sql, (before,))


def split_sql(script: str) -> list[str]:
    """Statements of a schema script: ``--`` comments dropped first (they may hold ';')."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _transition(row: dict) -> dict:
    return {"state": row["state"], "ts": row["ts"], "by": row["by_whom"], "received_at": row["received_at"]}


def _incident_row(row: dict) -> None:
    try:
        row["tags"] = json.loads(row["tags"] or "[]")
    except ValueError:
        row["tags"] = []


# --------------------------------------------------------------------------- SQLite


class SQLiteStore(Store):
    dialect = "sqlite"
    MAX_TASKS_PER_COMMIT = 500
    JSON_BATCH_THRESHOLD = 50

    def _insert_event_rows(self, tx: Tx, rows: list[tuple]) -> int:
        # executemany releases and re-takes the GIL around every row's sqlite3_step;
        # with ingest's parser thread busy, each re-take can wait a whole switch
        # interval, which made inserts 7x slower than a lone loader.  One INSERT ...
        # SELECT over json_each() stores the whole batch in a single step instead.
        if len(rows) < self.JSON_BATCH_THRESHOLD:
            return super()._insert_event_rows(tx, rows)
        columns = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(EVENT_COLUMNS)))
        return tx.execute(
            f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT {columns} FROM json_each(?) WHERE true "
            "ON CONFLICT (id) DO NOTHING",
            (json.dumps(rows, separators=(",", ":"), ensure_ascii=False),),
        )

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


class PostgresStore(Store):
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

    def _sql(self, sql: str) -> str:
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
                cursor.execute(self._sql(sql), params)
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

    def _insert_event_rows(self, tx: Tx, rows: list[tuple]) -> int:
        if len(rows) < self.COPY_THRESHOLD:
            return super()._insert_event_rows(tx, rows)
        cursor = tx.cursor
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS events_stage (LIKE events) ON COMMIT DELETE ROWS")
        columns = ", ".join(EVENT_COLUMNS)
        with cursor.copy(f"COPY events_stage ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO events ({columns}) SELECT {columns} FROM events_stage "
                       "ON CONFLICT (id) DO NOTHING")
        inserted = cursor.rowcount
        cursor.execute("DELETE FROM events_stage")
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

"""bench/ingest.py: sustained events/s from MQTT into the store, SQLite and PostgreSQL.

Starts its own mosquitto and PostgreSQL on free loopback ports (tests/services.py),
runs the server's real ingest worker (server/ingest.py) against a fresh store, and has
several publisher processes (``mosquitto_pub``, one per simulated device) send N ``blocked``
events with QoS 1 (as the outbox does).
Measured from the first message ingest receives to the moment the last one is
committed.  The baseline, on the same machine in the same run, loads the very same
rows with a raw loader: ``executemany`` in one transaction (SQLite) and ``COPY``
(PostgreSQL).  Prints a few lines and, last,

    ingest sqlite_eps=... sqlite_ratio=... pg_eps=... pg_ratio=...

Targets (DESIGN.md): sqlite_eps >= 20000, sqlite_ratio >= 0.2.  Usage:
``python bench/ingest.py [--events N] [--pg-events N] [--publishers P]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent import protocol  # noqa: E402
from server.ingest import Ingest  # noqa: E402
from server.store import EVENT_COLUMNS, Store, event_row, split_sql, utcnow  # noqa: E402
from server.schema import SCHEMA  # noqa: E402
from services import find_binary  # noqa: E402

SITE = "bench-school"
ROOMS = [f"r{i}" for i in range(10)]


def make_events(n: int, seed: int) -> list[tuple[str, bytes]]:
    """n blocked events from ONE device (publisher *seed*), as its outbox would send them."""
    out = []
    base = protocol.now_ts()
    room = ROOMS[seed % len(ROOMS)]
    device = f"{room}-pi-{seed:02d}"
    where = protocol.topic(protocol.DEFAULT_PREFIX, SITE, room, device, "event")
    for i in range(n):
        event = {"id": str(uuid.UUID(int=(seed << 64) | i)), "type": "blocked", "ts": base, "site": SITE,
                 "room": room, "device": device, "domain": f"site{i % 997}.example.com", "profile": "ks2",
                 "user": f"pupil{i % 300}", "ip": "10.1.2.3", "count": 1}
        out.append((where, protocol.encode(event)))
    return out


def start_publishers(broker, n: int, publishers: int, directory: str) -> list[subprocess.Popen]:
    """One mosquitto_pub process per simulated device, QoS 1, one message per line.

    mosquitto_pub (C) rather than paho: a Python publisher tops out near 5k msg/s per
    process and would measure itself, not the collector."""
    tool = find_binary("mosquitto_pub")
    if tool is None:
        raise SystemExit("bench: mosquitto_pub is not installed (apt install mosquitto-clients)")
    procs = []
    for seed in range(1, publishers + 1):
        messages = make_events(n // publishers, seed)
        path = Path(directory) / f"pub-{seed}.txt"
        path.write_bytes(b"\n".join(payload for _, payload in messages) + b"\n")
        procs.append((messages[0][0], path))
    return [subprocess.Popen([tool, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-V", "5", "-M", "1000",
                              "-i", f"bench-pub-{i}", "-t", where, "-l"], stdin=open(path, "rb"))
            for i, (where, path) in enumerate(procs)]


class TimedIngest(Ingest):
    first_receive: float | None = None

    def _on_message(self, client, userdata, message) -> None:
        if self.first_receive is None:
            self.first_receive = time.perf_counter()
        super()._on_message(client, userdata, message)


def run_ingest(store: Store, broker, n: int, publishers: int) -> float:
    ingest = TimedIngest(store, f"mqtt://{broker.host}:{broker.port}", batch_size=5000).start()
    if not ingest.subscribed.wait(10):
        raise SystemExit("bench: ingest did not subscribe")
    per = n // publishers
    procs = start_publishers(broker, n, publishers, tempfile.mkdtemp(prefix="bench-pub-"))
    total = per * publishers
    deadline = time.monotonic() + 120
    while ingest.processed < total and time.monotonic() < deadline:
        time.sleep(0.002)
    end = time.perf_counter()
    for p in procs:
        p.wait(30)
    ingest.stop()
    stored = store.count("events")
    if stored != total:
        raise SystemExit(f"bench: stored {stored} of {total} events")
    return total / (end - ingest.first_receive)


def rows_for(n: int, publishers: int) -> list[tuple]:
    per = n // publishers
    now = utcnow()
    rows = []
    for seed in range(1, publishers + 1):
        for _, payload in make_events(per, seed):
            rows.append(event_row(json.loads(payload), now))
    return rows


def raw_sqlite(rows: list[tuple], directory: str) -> float:
    path = os.path.join(directory, "raw.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in split_sql(SCHEMA):
        conn.execute(statement)
    conn.commit()
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
    start = time.perf_counter()
    conn.executemany(sql, rows)
    conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def raw_pg(rows: list[tuple], dsn: str) -> float:
    import psycopg

    store = Store.open(dsn)  # the same schema and indexes
    store.close()
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - start
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events for the SQLite run")
    parser.add_argument("--pg-events", type=int, default=100_000, help="events for the PostgreSQL run")
    parser.add_argument("--publishers", type=int, default=8, help="publisher processes (one device each)")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from services import Mosquitto, Postgres  # noqa: F811

    work = tempfile.mkdtemp(prefix="bench-ingest-")
    broker = Mosquitto(Path(work) / "mqtt", persistence=False,
                       extra_config="max_queued_messages 0\nmax_inflight_messages 0\n").start()
    pg = Postgres().start()
    try:
        started = time.monotonic()
        store = Store.open(f"sqlite:///{work}/ingest.db")
        sqlite_eps = run_ingest(store, broker, args.events, args.publishers)
        store.close()
        sqlite_raw = raw_sqlite(rows_for(args.events, args.publishers), work)
        print(f"sqlite: ingest {sqlite_eps:,.0f} events/s, raw executemany {sqlite_raw:,.0f} rows/s "
              f"({args.events} events, {args.publishers} publisher processes)")

        store = Store.open(pg.new_database("bench"))
        pg_eps = run_ingest(store, broker, args.pg_events, args.publishers)
        store.close()
        pg_raw = raw_pg(rows_for(args.pg_events, args.publishers), pg.new_database("raw"))
        print(f"postgresql: ingest {pg_eps:,.0f} events/s, raw COPY {pg_raw:,.0f} rows/s ({args.pg_events} events)")
        print(f"total bench time {time.monotonic() - started:.1f}s on {os.cpu_count()} cores")
        print(f"ingest sqlite_eps={sqlite_eps:.0f} sqlite_ratio={sqlite_eps / sqlite_raw:.3f} "
              f"pg_eps={pg_eps:.0f} pg_ratio={pg_eps / pg_raw:.3f}")
    finally:
        broker.stop()
        pg.cleanup()


if __name__ == "__main__":
    main()

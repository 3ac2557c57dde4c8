"""bench/ingest.py: sustained events/s from MQTT into the store, SQLite and PostgreSQL.

Starts its own mosquitto and PostgreSQL on free loopback ports (tests/services.py),
runs the server's real ingest workers (server/ingest/; two processes by default, as
``classroom-server serve --ingest-workers 2`` does on a 2-core machine) against a fresh store, and has
several publisher processes (``mosquitto_pub``, one per simulated device) send N ``blocked``
events with QoS 1 (as the outbox does).
Measured from the first message ingest receives to the moment the last one is
committed.  The baseline, on the same machine in the same run, loads the very same
rows with a raw loader: ``executemany`` in one transaction (SQLite) and ``COPY``
(PostgreSQL).  Prints a few lines and, last,

    ingest sqlite_eps=... sqlite_ratio=... pg_eps=... pg_ratio=... sqlite_batch_ratio=... pg_batch_ratio=...

(the ``_batch`` ratios: the same events again, sent as a device sends its backlog, ``--batch``
to a message; docs/protocol.md, "Batches").

Targets (DESIGN.md): sqlite_eps >= 20000, sqlite_ratio >= 0.2.  Usage:
``python bench/ingest.py [--events N] [--pg-events N] [--publishers P] [--workers W]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent import protocol  # noqa: E402
from server.ingest import Ingest  # noqa: E402
from server.store import Store  # noqa: E402
from server.store.events import EVENT_COLUMNS, event_row  # noqa: E402
from server.store.schema import MIGRATIONS, SCHEMA, split_sql, utcnow  # noqa: E402
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


def start_publishers(broker, n: int, publishers: int, directory: str, batch: int = 1) -> list[subprocess.Popen]:
    """One mosquitto_pub process per simulated device, QoS 1, one message per line; with
    *batch* > 1 each line is a batch of that many events, as the agent sends a backlog
    (agent/protocol.py, encode_batch).

    mosquitto_pub (C) rather than paho: a Python publisher tops out near 5k msg/s per
    process and would measure itself, not the collector."""
    tool = find_binary("mosquitto_pub")
    if tool is None:
        raise SystemExit("bench: mosquitto_pub is not installed (apt install mosquitto-clients)")
    procs = []
    for seed in range(1, publishers + 1):
        messages = make_events(n // publishers, seed)
        path = Path(directory) / f"pub-{seed}.txt"
        lines = [payload for _, payload in messages]
        if batch > 1:
            lines = [protocol.encode_batch(lines[i:i + batch]) for i in range(0, len(lines), batch)]
        path.write_bytes(b"\n".join(lines) + b"\n")
        procs.append((messages[0][0], path))
    return [subprocess.Popen([tool, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-V", "5", "-M", "1000",
                              "-i", f"bench-pub-{i}", "-t", where, "-l"], stdin=open(path, "rb"))
            for i, (where, path) in enumerate(procs)]


def ingest_worker(url: str, host: str, port: int, index: int, processed, first, ready, stop) -> None:
    """One ingest worker process, exactly as ``classroom-server serve`` runs it."""
    store = Store.open(url)
    ingest = Ingest(store, f"mqtt://{host}:{port}", batch_size=5000, client_id=f"bench-ingest-{index}").start()
    if ingest.subscribed.wait(10):
        ready.release()
    while not stop.is_set():
        processed.value = int(ingest.metrics.get("ingest_events_stored_total"))  # events, not messages (batches)
        first.value = ingest.first_arrival or 0.0
        time.sleep(0.001)
    ingest.stop()
    store.close()


def run_ingest(url: str, broker, n: int, publishers: int, workers: int, batch: int = 1) -> float:
    """Events/s from the first message any worker receives to the last one committed."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Semaphore(0), ctx.Event()
    processed = [ctx.Value("q", 0, lock=False) for _ in range(workers)]
    first = [ctx.Value("d", 0.0, lock=False) for _ in range(workers)]
    procs = [ctx.Process(target=ingest_worker, args=(url, broker.host, broker.port, i, processed[i], first[i],
                                                     ready, stop)) for i in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=30):
            raise SystemExit("bench: an ingest worker did not subscribe")
    per = n // publishers
    pub_dir = tempfile.mkdtemp(prefix="bench-pub-")
    publishers_procs = start_publishers(broker, n, publishers, pub_dir, batch)
    total = per * publishers
    deadline = time.monotonic() + 120
    while sum(v.value for v in processed) < total and time.monotonic() < deadline:
        time.sleep(0.001)
    end = time.perf_counter()
    start = min(v.value for v in first if v.value)
    for p in publishers_procs:
        p.wait(30)
    shutil.rmtree(pub_dir, ignore_errors=True)
    stop.set()
    for p in procs:
        p.join(30)
    store = Store.open(url)
    stored = store.count("events")
    store.close()
    if stored != total:
        raise SystemExit(f"bench: stored {stored} of {total} events")
    return total / (end - start)


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
    # The same schema and indexes as the store's: SCHEMA, then every migration.
    for statement in split_sql(SCHEMA) + [st for _, migration in MIGRATIONS for st in migration]:
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
    parser.add_argument("--batch", type=int, default=protocol.BATCH_MAX,
                        help="events per message in the second, backlog run (site.yaml broker.batch_events)")
    parser.add_argument("--workers", type=int, default=2,
                        help="ingest worker processes on the MQTT 5 shared subscription, as "
                             "`classroom-server serve --ingest-workers N` runs them (default 2: one per core)")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from services import Mosquitto, Postgres  # noqa: F811

    work = tempfile.mkdtemp(prefix="bench-ingest-")
    # The publishers outrun ingest at first; mosquitto's default queue of 1000 messages per
    # client would DROP the excess (see docs/server.md), so the broker may queue without limit.
    broker = Mosquitto(Path(work) / "mqtt", persistence=False,
                       extra_config="max_queued_messages 0\n").start()
    pg = Postgres().start()
    try:
        started = time.monotonic()
        sqlite_eps = run_ingest(f"sqlite:///{work}/ingest.db", broker, args.events, args.publishers, args.workers)
        sqlite_raw = raw_sqlite(rows_for(args.events, args.publishers), work)
        print(f"sqlite: ingest {sqlite_eps:,.0f} events/s, raw executemany {sqlite_raw:,.0f} rows/s "
              f"({args.events} events, {args.publishers} publisher processes, {args.workers} ingest workers)")

        pg_eps = run_ingest(pg.new_database("bench"), broker, args.pg_events, args.publishers, args.workers)
        pg_raw = raw_pg(rows_for(args.pg_events, args.publishers), pg.new_database("raw"))
        print(f"postgresql: ingest {pg_eps:,.0f} events/s, raw COPY {pg_raw:,.0f} rows/s ({args.pg_events} events)")
        # The same events as a device's backlog goes: batches (docs/protocol.md, "Batches").
        sqlite_batch = run_ingest(f"sqlite:///{work}/batch.db", broker, args.events, args.publishers, args.workers,
                                  args.batch)
        pg_batch = run_ingest(pg.new_database("batch"), broker, args.pg_events, args.publishers, args.workers,
                              args.batch)
        print(f"as backlogs in batches of {args.batch}: sqlite {sqlite_batch:,.0f} events/s, "
              f"postgresql {pg_batch:,.0f} events/s")
        print(f"total bench time {time.monotonic() - started:.1f}s on {os.cpu_count()} cores")
        print(f"ingest sqlite_eps={sqlite_eps:.0f} sqlite_ratio={sqlite_eps / sqlite_raw:.3f} "
              f"pg_eps={pg_eps:.0f} pg_ratio={pg_eps / pg_raw:.3f} "
              f"sqlite_batch_ratio={sqlite_batch / sqlite_raw:.3f} pg_batch_ratio={pg_batch / pg_raw:.3f}")
    finally:
        broker.stop()
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

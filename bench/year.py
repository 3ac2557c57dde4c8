"""bench/year.py: one school's year of data on PostgreSQL: the reports' queries and a year's purge.

Fills a fresh PostgreSQL database (its own cluster, tests/services.py) with one school's year:
``--events`` blocked attempts (default 5,000,000) from ``--rooms`` x ``--devices`` devices spread
evenly over the 365 days before now, and one filtering check per device per day.  The rows
are made inside PostgreSQL (``INSERT ... SELECT FROM generate_series``, indexes built after, as
a restore would), then ``VACUUM ANALYZE`` as autovacuum leaves a table that has been written
for a year.  It then measures, on that year:

* the weekly report of the last full week (``server.reports.collect``: every blocked attempt
  of the week, the checks, incidents and guard events) and the governors' term report of the
  last 13 weeks (``collect_term``, with the term before it for comparison);
* the daily retention pass once a year has built up (``server.retention.Retention.run``,
  blocked_days 90: three quarters of the rows go), while a real ingest worker keeps storing
  events a publisher sends at ``--rate`` events/s throughout; every one of them must be stored.

Last line::

    year events=N report_week_s=... report_term_s=... purge_year_s=... purged=N stored_during_purge=N

Targets (issue 17): both reports <= 2 s; the purge does not stop ingest.  Usage:
``python bench/year.py [--events N] [--rooms R] [--devices D] [--rate EPS]``; ``trust.py`` runs it too.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from agent import protocol  # noqa: E402

SITE = "bench-school"


def fill_year(dsn: str, events: int, rooms: int, devices: int, now: datetime) -> float:
    """Seconds to make one school's year of rows in *dsn* (schema first, indexes after)."""
    import psycopg

    from server.store import Store

    Store.open(dsn).close()  # the schema and every migration, as serve makes it
    start = time.perf_counter()
    year_start = now - timedelta(days=365)
    with psycopg.connect(dsn, autocommit=True) as conn:
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
                               "AND indexname <> 'events_pkey'").fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("ALTER TABLE events DROP CONSTRAINT events_pkey")
        conn.execute("SET maintenance_work_mem = '512MB'")
        ts = ("to_char((%(start)s::timestamptz + (g::float8 / %(n)s::float8) * interval '365 days') AT TIME ZONE 'UTC', "
              "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
        conn.execute(
            "INSERT INTO events (id, type, ts, site, room, device, user_name, domain, profile, alert_id, data, "
            "received_at, category) "
            "SELECT id, 'blocked', ts, %(site)s, room, device, usr, domain, 'ks2', NULL, "
            "json_build_object('id', id, 'type', 'blocked', 'ts', ts, 'site', %(site)s::text, 'room', room, "
            "'device', device, 'domain', domain, 'profile', 'ks2', 'user', usr, 'ip', '10.1.2.3', "
            "'count', 1)::text, ts, CASE WHEN g %% 997 = 0 THEN 'self-harm' END "
            f"FROM (SELECT g, md5('b' || g)::uuid::text AS id, {ts} AS ts, "
            "'r' || (g %% %(rooms)s) AS room, 'r' || (g %% %(rooms)s) || '-pi-' || ((g / %(rooms)s) %% %(devices)s) "
            "AS device, 'pupil' || (g %% 997) AS usr, 'site' || (g %% 2003) || '.example.com' AS domain "
            "FROM generate_series(0, %(n)s::int - 1) AS g) AS s",
            {"site": SITE, "n": events, "rooms": rooms, "devices": devices, "start": year_start})
        checks = rooms * devices * 365
        conn.execute(
            "INSERT INTO events (id, type, ts, site, room, device, user_name, domain, profile, alert_id, data, "
            "received_at) SELECT id, 'filter_check', ts, %(site)s, room, device, NULL, NULL, NULL, NULL, "
            "json_build_object('id', id, 'type', 'filter_check', 'ts', ts, 'result', 'pass')::text, ts "
            f"FROM (SELECT md5('c' || g)::uuid::text AS id, {ts} AS ts, 'r' || (g %% %(rooms)s) AS room, "
            "'r' || (g %% %(rooms)s) || '-pi-' || ((g / %(rooms)s) %% %(devices)s) AS device "
            "FROM generate_series(0, %(n)s::int - 1) AS g) AS s",
            {"site": SITE, "n": checks, "rooms": rooms, "devices": devices, "start": year_start})
        conn.execute("ALTER TABLE events ADD PRIMARY KEY (id)")
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - start


def report_times(store, now: datetime) -> tuple[float, float, int]:
    """(weekly report s, term report s, blocked attempts in that week)."""
    from server.reports.data import Week, collect
    from server.reports.term import Term, collect_term

    week = Week.containing(now - timedelta(days=7))
    start = time.perf_counter()
    report = collect(store, week, SITE)
    week_s = time.perf_counter() - start
    today = now.date()
    term = Term("Last 13 weeks", today - timedelta(weeks=13), today - timedelta(days=1))
    before = Term("The 13 weeks before", today - timedelta(weeks=26), today - timedelta(weeks=13, days=1))
    start = time.perf_counter()
    collect_term(store, SITE, "Bench School", term, before)
    term_s = time.perf_counter() - start
    return week_s, term_s, report.total_attempts


class _Tree:
    """The example config tree as school SITE, blocked attempts kept 90 days."""

    def __init__(self) -> None:
        from agent.config import load_tree

        tree = load_tree(ROOT / "config")
        retention = tree.site.retention.model_copy(update={"blocked_days": 90})
        self.site = tree.site.model_copy(update={"site": SITE, "retention": retention})


def purge_with_ingest(dsn: str, broker, rate: int, now: datetime) -> tuple[float, int, int, int]:
    """Run the retention pass on the year while a real ingest worker stores *rate* events/s.
    (seconds, rows purged, events sent during the purge, of them stored)."""
    from server.ingest import Ingest
    from server.retention import Retention
    from server.store import Store
    from services import close_client, mqtt_client

    store = Store.open(dsn)
    ingest = Ingest(store, f"mqtt://{broker.host}:{broker.port}", client_id="bench-year-ingest").start()
    if not ingest.subscribed.wait(30):
        raise SystemExit("year: the ingest worker did not subscribe")
    device = mqtt_client(broker)
    sent: list[str] = []
    purging = threading.Event()
    done = threading.Event()

    def publish() -> None:
        where = protocol.topic(protocol.DEFAULT_PREFIX, SITE, "r1", "r1-pi-1", "event")
        next_at = time.monotonic()
        while not done.is_set():
            event = {"id": str(uuid.uuid4()), "type": "blocked", "ts": protocol.now_ts(), "site": SITE,
                     "room": "r1", "device": "r1-pi-1", "domain": "during-purge.example", "profile": "ks2",
                     "user": "pupil1"}
            device.publish(where, protocol.encode(event), qos=1)
            if purging.is_set():
                sent.append(event["id"])
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    sender = threading.Thread(target=publish, daemon=True)
    sender.start()
    try:
        purging.set()
        start = time.perf_counter()
        done_rows = Retention(store, lambda: _Tree()).run(now)
        purge_s = time.perf_counter() - start
        purging.clear()
        ids = list(sent)
        done.set()
        sender.join(10)
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline:
            stored = store.count("events", "domain = 'during-purge.example' AND id = ANY(?)",
                                 (ids,)) if ids else 0
            if stored == len(ids):
                break
            time.sleep(0.2)
    finally:
        close_client(device)
        ingest.stop()
        store.close()
    return purge_s, done_rows.get("blocked_events", 0), len(ids), stored


def run(events: int, rooms: int, devices: int, rate: int, pg=None, broker=None) -> dict:
    """The whole bench; *pg* / *broker* are started here when not given."""
    from services import Mosquitto, Postgres

    own = []
    work = tempfile.mkdtemp(prefix="bench-year-")
    try:
        if pg is None:
            pg = Postgres().start()
            own.append(pg.cleanup)
        if broker is None:
            broker = Mosquitto(Path(work) / "mqtt", persistence=False, extra_config="max_queued_messages 0\n").start()
            own.append(broker.stop)
        dsn = pg.new_database("year")
        now = datetime.now(timezone.utc)
        fill_s = fill_year(dsn, events, rooms, devices, now)
        print(f"year: {events:,} blocked attempts and {rooms * devices * 365:,} filtering checks made in {fill_s:.1f}s",
              flush=True)
        from server.store import Store

        store = Store.open(dsn)
        try:
            report_times(store, now)  # once to warm the cache, as a server that has been running
            week_s, term_s, in_week = report_times(store, now)
        finally:
            store.close()
        print(f"year: weekly report {week_s:.2f}s ({in_week:,} attempts that week), term report {term_s:.2f}s",
              flush=True)
        purge_s, purged, sent, stored = purge_with_ingest(dsn, broker, rate, now)
        print(f"year: retention purged {purged:,} blocked attempts in {purge_s:.1f}s; ingest stored {stored} of the "
              f"{sent} events sent meanwhile", flush=True)
        return {"events": events, "report_week_s": week_s, "report_term_s": term_s, "purge_year_s": purge_s,
                "purged": purged, "sent_during_purge": sent, "stored_during_purge": stored}
    finally:
        for stop in reversed(own):
            stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="blocked attempts in the year")
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--devices", type=int, default=8, help="devices per room")
    parser.add_argument("--rate", type=int, default=200, help="events/s ingest stores while the purge runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = run(args.events, args.rooms, args.devices, args.rate)
    if r["stored_during_purge"] != r["sent_during_purge"]:
        raise SystemExit(f"year: ingest stored {r['stored_during_purge']} of {r['sent_during_purge']} events "
                         "sent during the purge")
    print(f"year events={r['events']} report_week_s={r['report_week_s']:.2f} report_term_s={r['report_term_s']:.2f} "
          f"purge_year_s={r['purge_year_s']:.1f} purged={r['purged']} stored_during_purge={r['stored_during_purge']}")


if __name__ == "__main__":
    main()

"""Several ingest workers on one PostgreSQL database, as `classroom-server serve` runs them: a
burst from many devices, a worker SIGKILLed mid-burst, every event stored exactly once; and
/metrics adding up a serve process's workers.

Real mosquitto, real PostgreSQL, real `serve` processes (docs/server.md "Ingest")."""

from __future__ import annotations

import json
import signal
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from agent import protocol
from services import close_client, free_port, mqtt_client, spawn, terminate, wait_until

from server_fixtures import *  # noqa: F401,F403
from server_fixtures import REPO, make_event, topic_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CLI = str(Path(sys.executable).parent / "classroom-server")
PUBLISHERS = 20


class Serve:
    """One `classroom-server serve` process on *db*, with its log and its /metrics."""

    def __init__(self, tmp_path: Path, db: str, broker, ingest_id: str, workers: int) -> None:
        self.port = free_port()
        self.log = tmp_path / f"serve-{ingest_id}.log"
        self.argv = [CLI, "serve", "--db", db, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--port",
                     str(self.port), "--ingest-id", ingest_id, "--ingest-workers", str(workers),
                     "--reports-dir", str(tmp_path / f"reports-{ingest_id}")]
        self.workers = workers
        self.proc = None

    def start(self) -> "Serve":
        self.proc = spawn(self.argv, log_path=self.log, cwd=str(REPO))
        wait_until(lambda: self.metric("ingest_workers_connected") == self.workers, 60,
                   message=lambda: self.log.read_text())
        return self

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return {k: float(v) for k, v in (line.split(" ", 1) for line in lines if not line.startswith("#"))}

    def metric(self, name: str) -> float | None:
        try:
            return self.metrics().get(f"classroom_{name}")
        except OSError:
            return None

    def worker_pids(self) -> list[int]:
        """The extra ingest worker processes (multiprocessing's spawned children)."""
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline:
                    pids.append(int(pid))
        return sorted(pids)

    def stop(self) -> None:
        terminate(self.proc)


def devices() -> list[str]:
    return [f"5b-pi-{i:02d}" for i in range(1, PUBLISHERS + 1)]


def make_burst(total: int) -> list[tuple[str, dict]]:
    """*total* blocked events spread over the publishers' devices."""
    names = devices()
    return [(names[i % len(names)], make_event(device=names[i % len(names)], domain=f"d{i}.example"))
            for i in range(total)]


def publish(broker, burst: list[tuple[str, dict]]) -> None:
    """Each device publishes its own events on its own connection, all at once (QoS 1)."""
    by_device: dict[str, list[dict]] = {}
    for device, event in burst:
        by_device.setdefault(device, []).append(event)
    errors = []

    def run(device: str, events: list[dict]) -> None:
        client = mqtt_client(broker, client_id=f"pub-{device}")
        try:
            infos = [client.publish(topic_of("5b", device, "event"), protocol.encode(e), qos=1) for e in events]
            for info in infos:
                info.wait_for_publish(60)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        finally:
            close_client(client)

    threads = [threading.Thread(target=run, args=item) for item in by_device.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)


def assert_stored_exactly_once(store, burst) -> None:
    counts = store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM events")[0]
    assert counts == {"n": len(burst), "ids": len(burst)}
    assert {r["id"] for r in store.query("SELECT id FROM events")} == {e["id"] for _, e in burst}


@pytest.fixture
def broker(mosquitto_factory):
    # Unlimited queues: what the broker holds for a dead worker's session must not be dropped
    # (classroom-server broker-config writes a large max_queued_messages for the same reason).
    return mosquitto_factory("max_queued_messages 0\n")


@pytest.fixture
def pg_db(postgres):
    from server.store import Store

    dsn = postgres.new_database("workers")
    store = Store.open(dsn)  # the schema, before two serve processes race for it
    yield dsn, store
    store.close()


def test_three_workers_on_postgresql_one_killed_mid_burst_store_every_event_once(broker, pg_db, tmp_path):
    dsn, store = pg_db
    serve = Serve(tmp_path, dsn, broker, "srv", workers=3).start()
    try:
        pids = serve.worker_pids()
        assert len(pids) == 2
        burst = make_burst(5000)
        first, second = burst[:2500], burst[2500:]
        sender = threading.Thread(target=publish, args=(broker, first))
        sender.start()
        # Mid-burst: events are being stored, not all of them yet.
        wait_until(lambda: store.count("events") >= 300, 60, message=lambda: serve.log.read_text())
        import os

        os.kill(pids[0], signal.SIGKILL)
        stored_at_kill = store.count("events")
        sender.join(120)
        publish(broker, second)  # devices keep sending while the worker is dead or restarting
        assert 0 < stored_at_kill < len(burst)
        # serve starts the dead worker again with its client id; it takes up its broker session.
        wait_until(lambda: serve.metric("ingest_worker_restarts_total") == 1, 60,
                   message=lambda: serve.log.read_text())
        wait_until(lambda: len(serve.worker_pids()) == 2 and pids[0] not in serve.worker_pids(), 30)
        wait_until(lambda: serve.metric("ingest_workers_connected") == 3, 60, message=lambda: serve.log.read_text())
        wait_until(lambda: store.count("events") == len(burst), 90, message=lambda: serve.log.read_text())
        wait_until(lambda: serve.metric("ingest_queue_depth") == 0, 30)
        assert_stored_exactly_once(store, burst)
        metrics = serve.metrics()
        # A batch committed just before the kill may be counted as a duplicate when it comes again.
        stored = metrics["classroom_ingest_events_stored_total"]
        assert stored <= len(burst) and stored + metrics["classroom_ingest_duplicates_total"] >= len(burst)
        assert "worker ingest-1 (pid" in serve.log.read_text() or "worker ingest-2 (pid" in serve.log.read_text()
    finally:
        serve.stop()
    broker_log = broker.log_path.read_text()
    assert all(f" as {cid} " in broker_log for cid in ("srv", "srv-1", "srv-2"))


def test_two_serve_processes_share_the_subscription_one_killed_mid_burst(broker, pg_db, tmp_path):
    dsn, store = pg_db
    a = Serve(tmp_path, dsn, broker, "srv-a", workers=1).start()
    b = Serve(tmp_path, dsn, broker, "srv-b", workers=1).start()
    try:
        burst = make_burst(5000)
        first, second = burst[:2500], burst[2500:]
        sender = threading.Thread(target=publish, args=(broker, first))
        sender.start()
        wait_until(lambda: store.count("events") >= 300, 60, message=lambda: b.log.read_text())
        b.proc.send_signal(signal.SIGKILL)  # the whole serve process, HTTP and all
        b.proc.wait(10)
        stored_at_kill = store.count("events")
        sender.join(120)
        publish(broker, second)
        assert 0 < stored_at_kill < len(burst)
        b.start()  # the same --ingest-id: the broker kept its session and what it had not acknowledged
        wait_until(lambda: store.count("events") == len(burst), 90,
                   message=lambda: a.log.read_text()[-3000:] + b.log.read_text()[-3000:])
        assert_stored_exactly_once(store, burst)
        # Both took a share of the load (the shared subscription split it).
        assert a.metric("ingest_events_stored_total") > 0
    finally:
        a.stop()
        b.stop()


def test_metrics_add_up_a_serve_processs_workers_and_two_serve_processes_each_show_their_own(
        broker, pg_db, tmp_path):
    dsn, store = pg_db
    a = Serve(tmp_path, dsn, broker, "m-a", workers=3).start()
    b = Serve(tmp_path, dsn, broker, "m-b", workers=1).start()
    try:
        burst = make_burst(3000)
        publish(broker, burst)
        wait_until(lambda: store.count("events") == len(burst), 60)
        wait_until(lambda: a.metric("ingest_queue_depth") == 0 and b.metric("ingest_queue_depth") == 0, 30)
        ma, mb = a.metrics(), b.metrics()
        # Four workers in the share group: serve a's three and serve b's one.  Each serve process
        # shows its own workers' sum; added, they are every event, each counted once.
        assert ma["classroom_ingest_events_stored_total"] + mb["classroom_ingest_events_stored_total"] == len(burst)
        assert ma["classroom_ingest_events_stored_total"] > mb["classroom_ingest_events_stored_total"] > 0
        assert ma["classroom_ingest_workers_connected"] == 3 and mb["classroom_ingest_workers_connected"] == 1
        assert ma["classroom_ingest_duplicates_total"] == mb["classroom_ingest_duplicates_total"] == 0
        assert ma["classroom_ingest_worker_restarts_total"] == 0
        # The totals in the database are the same from either process: it is one store.
        assert ma["classroom_devices_known"] == mb["classroom_devices_known"]
    finally:
        a.stop()
        b.stop()


def test_metrics_of_worker_processes_are_shared_and_stay_monotonic():
    import multiprocessing

    from server.ingest import Metrics

    ctx = multiprocessing.get_context("spawn")
    parent = Metrics()
    block = Metrics.shared_block(ctx)
    parent.workers.append(block)
    parent.inc("ingest_events_stored_total", 5)
    worker = Metrics(shared=block)  # as a worker process does (server/ingest/pool.py)
    worker.inc("ingest_events_stored_total", 7)
    worker.set_gauges(queue_depth=4, connected=True)
    assert parent.get("ingest_events_stored_total") == 5 and worker.get("ingest_events_stored_total") == 7
    assert parent.total("ingest_events_stored_total") == 12
    assert parent.worker_gauges() == (4, 1)
    assert "classroom_ingest_events_stored_total 12" in parent.render().splitlines()
    # The worker dies and is started again on the same block: the total does not go back.
    restarted = Metrics(shared=block)
    restarted.inc("ingest_events_stored_total", 1)
    assert parent.total("ingest_events_stored_total") == 13
    with pytest.raises(KeyError):
        restarted.inc("no_such_counter")


def test_a_worker_taken_away_for_good_is_drained_by_running_its_id_once_with_session_expiry_0(
        broker, sqlite_store):
    """A stopped worker's stored session keeps what the shared subscription gave it (here it is
    the group's only member while the devices send, so everything); running its id once with
    session expiry 0 ingests that and ends the session, after which the worker that stays gets
    everything."""
    from server.ingest import Ingest

    url = f"mqtt://{broker.host}:{broker.port}"
    leaving = Ingest(sqlite_store, url, client_id="srv-2", session_expiry=600).start()
    assert leaving.subscribed.wait(10)
    leaving.stop()  # taken away: its session stays on the broker, a member of the group
    burst = make_burst(400)
    publish(broker, burst)
    stays = Ingest(sqlite_store, url, client_id="srv", session_expiry=600).start()
    try:
        assert stays.subscribed.wait(10)
        assert sqlite_store.count("events") == 0  # all kept for the stopped worker
        drain = Ingest(sqlite_store, url, client_id="srv-2", session_expiry=0).start()

        def progress() -> str:
            # Enough to tell a lost message (received < sent) from a slow store (queue_depth).
            counts = {name: {"received": w.metrics.get("ingest_received_total"),
                             "stored": w.metrics.get("ingest_events_stored_total"),
                             "queue_depth": w.queue_depth} for name, w in (("stays", stays), ("drain", drain))}
            return (f"{sqlite_store.count('events')} events stored; {counts}; broker log:\n"
                    + broker.log_path.read_text()[-3000:])

        try:
            wait_until(lambda: sqlite_store.count("events") == len(burst), 60, message=progress)
            assert drain.flush(10) and drain.metrics.get("ingest_events_stored_total") == len(burst)
        finally:
            drain.stop()
        # Its session ended with it: everything now goes to the worker that stays.
        more = make_burst(200)
        publish(broker, more)
        wait_until(lambda: sqlite_store.count("events") == len(burst) + len(more), 60, message=progress)
        assert stays.flush(10) and stays.metrics.get("ingest_events_stored_total") == len(more)
        assert_stored_exactly_once(sqlite_store, burst + more)
    finally:
        stays.stop()


@pytest.mark.timeout(500)
def test_trust_bench_runs_and_prints_its_summary_line():
    # The numbers are the bench's business (no timed assertions in tests); this keeps it runnable.
    import re
    import subprocess

    from services import require_binary

    for binary in ("mosquitto", "mosquitto_pub", "initdb"):
        require_binary(binary)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "trust.py"), "--schools", "2", "--devices", "5",
                        "--heartbeat", "2", "--presses", "4", "--burst", "400", "--year-events", "2000"],
                       capture_output=True, text=True, timeout=450)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"trust devices=10 alert_p99_ms=[\d.]+ ingest_eps=\d+ pg_ratio=[\d.]+ report_year_s=[\d.]+ "
                        r"purge_year_s=[\d.]+ rss_mb_per_1k_devices=[\d.]+", last), last


def test_restart_delay_backs_off_for_a_worker_that_keeps_dying_and_resets_after_a_stable_run():
    from server.ingest.pool import MAX_RESTART_DELAY, STABLE_SECONDS, restart_delay

    delays, previous = [], 0.0
    for _ in range(9):
        previous = restart_delay(0.5, previous)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 32, MAX_RESTART_DELAY, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    assert restart_delay(STABLE_SECONDS, MAX_RESTART_DELAY) == 0  # it had been running: at once
    assert restart_delay(0.5, 0.0) == 1


@pytest.mark.timeout(60)
def test_a_worker_that_cannot_open_the_database_is_restarted_ever_more_slowly(caplog, tmp_path):
    # The database down (nothing listens on the port): each start of the worker dies at once.
    import logging
    import re

    from server.ingest.metrics import Metrics
    from server.ingest.pool import WorkerPool

    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nope?connect_timeout=2"
    metrics = Metrics()
    pool = WorkerPool(down, "mqtt://127.0.0.1:1", 2, lambda i: {"client_id": f"worker-{i}"}, metrics)
    with caplog.at_level(logging.WARNING, logger="server.ingest"):
        pool.start()
        try:
            wait_until(lambda: metrics.get("ingest_worker_restarts_total") >= 2
                       and len(re.findall(r"died \(exit \d+\)", caplog.text)) >= 3, 45,
                       message=lambda: caplog.text[-2000:])
        finally:
            pool.stop()
    waits = [float(w) for w in re.findall(r"starting it again with its client id in (\d+) s", caplog.text)]
    assert waits[:3] == [1, 2, 4]


def _will_not_stop(db: str, broker: str, options: dict, shared) -> None:
    """A worker process that ignores SIGTERM (as one hung in a signal handler did)."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(options["ready"]).write_text("ignoring SIGTERM")
    time.sleep(120)


@pytest.mark.timeout(60)
def test_stop_kills_a_worker_that_does_not_stop_on_sigterm(caplog, tmp_path):
    # A worker left running after serve would keep its client id's session and its share of
    # the messages (a hung one was found doing just that).
    import logging

    from server.ingest.metrics import Metrics
    from server.ingest.pool import WorkerPool

    class Stubborn(WorkerPool):
        target = staticmethod(_will_not_stop)

    ready = tmp_path / "ready"
    pool = Stubborn("sqlite:///unused", "mqtt://127.0.0.1:1", 2, lambda i: {"ready": str(ready)}, Metrics())
    with caplog.at_level(logging.ERROR, logger="server.ingest"):
        pool.start()
        proc = pool.procs[1]
        try:
            wait_until(ready.exists, 30, message="the worker never started")
        finally:
            pool.stop(timeout=1)
    assert not proc.is_alive() and proc.exitcode == -signal.SIGKILL
    assert f"worker ingest-1 (pid {proc.pid}) did not stop within 1s of SIGTERM; killing it" in caplog.text

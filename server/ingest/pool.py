"""The extra ingest worker processes of one ``serve`` (``--ingest-workers N``), kept running.

paho's packet handling and validation are CPU-bound in one Python process, so ``serve``
runs its own worker and N-1 more in processes of their own, all on the same store and the
same shared subscription.  ``WorkerPool`` starts them, and starts a worker again, with the
same MQTT client id, when it dies (a crash, the OOM killer, a SIGKILL): the broker has kept
that id's session, with the messages the dead worker had not acknowledged (committed or not)
and those the shared subscription gave it while it was down, so nothing is lost and the
event ids drop what was already stored.  A worker that keeps dying is started again at most
once every ``RESTART_DELAY`` seconds.

Each worker counts into a shared block the serve process adds up on /metrics (metrics.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time

from .metrics import Metrics

log = logging.getLogger("server.ingest")

RESTART_DELAY = 1.0


def run_worker(db: str, broker: str, options: dict, shared) -> None:
    """One extra ingest worker process: same store, same shared subscription; dies with
    its serve process, even when that is killed."""
    import ctypes
    import signal

    from ..store import Store
    from .worker import Ingest

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = Store.open(db)  # the serve process opened it first: errors were said there
    metrics = Metrics(shared=shared)
    ingest = Ingest(store, broker, metrics=metrics, **options).start()
    try:
        while not stop.wait(0.5):
            metrics.set_gauges(ingest.queue_depth, ingest.connected.is_set())
    finally:
        metrics.set_gauges(0, False)
        ingest.stop()
        store.close()


class WorkerPool:
    """Worker processes ``1 .. count-1`` of one serve process (the serve process is worker 0).

    ``options_for(i)`` gives worker *i*'s ``Ingest`` keyword arguments (its client id and
    broker account); the same ones every time it is started."""

    def __init__(self, db: str, broker: str, count: int, options_for, metrics: Metrics) -> None:
        self.db, self.broker = db, broker
        self.options_for = options_for
        self.metrics = metrics
        self.ctx = multiprocessing.get_context("spawn")
        self.blocks = {i: Metrics.shared_block(self.ctx) for i in range(1, count)}
        metrics.workers.extend(self.blocks.values())
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "WorkerPool":
        for i in self.blocks:
            self._spawn(i)
        self._thread = threading.Thread(target=self._watch, name="ingest-pool", daemon=True)
        self._thread.start()
        return self

    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self.procs.items()}

    def _spawn(self, i: int) -> None:
        proc = self.ctx.Process(target=run_worker, args=(self.db, self.broker, self.options_for(i), self.blocks[i]),
                                name=f"ingest-{i}", daemon=True)
        proc.start()
        self.procs[i] = proc

    def _watch(self) -> None:
        from multiprocessing.connection import wait

        last_start: dict[int, float] = {}
        while not self._stop.is_set():
            by_sentinel = {p.sentinel: i for i, p in self.procs.items()}
            for sentinel in wait(list(by_sentinel), timeout=1.0):
                if self._stop.is_set():
                    return
                i = by_sentinel[sentinel]
                proc = self.procs[i]
                proc.join(0)
                # A dead worker's gauges say nothing now; its counters stay (monotonic).
                Metrics(shared=self.blocks[i]).set_gauges(0, False)
                log.warning("ingest: worker %s (pid %s) died (exit %s); starting it again with its client id",
                            proc.name, proc.pid, proc.exitcode)
                wait_s = RESTART_DELAY - (time.monotonic() - last_start.get(i, 0.0))
                if wait_s > 0 and self._stop.wait(wait_s):
                    return
                last_start[i] = time.monotonic()
                self.metrics.inc("ingest_worker_restarts_total")
                self._spawn(i)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.join(timeout)

"""The extra ingest worker processes of one ``serve`` (``--ingest-workers N``), kept running.

paho's packet handling and validation are CPU-bound in one Python process, so ``serve``
runs its own worker and N-1 more in processes of their own, all on the same store and the
same shared subscription.  ``WorkerPool`` starts them, and starts a worker again, with the
same MQTT client id, when it dies (a crash, the OOM killer, a SIGKILL): the broker has kept
that id's session, with the messages the dead worker had not acknowledged (committed or not)
and those the shared subscription gave it while it was down, so nothing is lost and the
event ids drop what was already stored.

A worker that had run for ``STABLE_SECONDS`` is started again at once.  One that keeps
dying soon after its start (the database down when it opens the store, a broken install)
waits ``RESTART_DELAY`` seconds, then twice as long each time, up to ``MAX_RESTART_DELAY``:
a Python process start costs about half a second of CPU, so restarting every second while
PostgreSQL is down would keep a core busy and fill the log for nothing.  Each restart says
how long it waited.

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
MAX_RESTART_DELAY = 60.0
STABLE_SECONDS = 30.0


def restart_delay(ran_s: float, previous: float) -> float:
    """Seconds to wait before starting again a worker that died after running *ran_s*
    seconds, when its previous wait was *previous* (0 at first)."""
    if ran_s >= STABLE_SECONDS:
        return 0.0
    return min(MAX_RESTART_DELAY, max(RESTART_DELAY, previous * 2))


def run_worker(db: str, broker: str, options: dict, shared) -> None:
    """One extra ingest worker process: same store, same shared subscription; dies with
    its serve process, even when that is killed."""
    import ctypes
    import signal

    from agent.signals import StopSignals

    from ..store import Store
    from .worker import Ingest

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = StopSignals()  # agent/signals.py: why not an Event set from a handler
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

    target = staticmethod(run_worker)  # what each worker process runs (a test swaps it)

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
        proc = self.ctx.Process(target=self.target, args=(self.db, self.broker, self.options_for(i), self.blocks[i]),
                                name=f"ingest-{i}", daemon=True)
        proc.start()
        self.procs[i] = proc

    def _watch(self) -> None:
        from multiprocessing.connection import wait

        started = {i: time.monotonic() for i in self.procs}
        delays = {i: 0.0 for i in self.procs}
        due: dict[int, float] = {}  # dead workers -> when to start them again
        while not self._stop.is_set():
            now = time.monotonic()
            for i, when in sorted(due.items()):
                if when <= now:
                    del due[i]
                    started[i] = now
                    self.metrics.inc("ingest_worker_restarts_total")
                    self._spawn(i)
            alive = {p.sentinel: i for i, p in self.procs.items() if i not in due}
            timeout = min([1.0, *(when - now for when in due.values())])
            for sentinel in wait(list(alive), timeout=max(0.0, timeout)):
                if self._stop.is_set():
                    return
                i = alive[sentinel]
                proc = self.procs[i]
                proc.join(0)
                # A dead worker's gauges say nothing now; its counters stay (monotonic).
                Metrics(shared=self.blocks[i]).set_gauges(0, False)
                ran = time.monotonic() - started[i]
                delays[i] = restart_delay(ran, delays[i])
                log.warning("ingest: worker %s (pid %s) died (exit %s) after %.0f s; starting it again with its "
                            "client id %s", proc.name, proc.pid, proc.exitcode, ran,
                            f"in {delays[i]:.0f} s" if delays[i] else "now")
                due[i] = time.monotonic() + delays[i]

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.join(timeout)
            if proc.is_alive():
                # A worker left running would keep its client id's session and its share of
                # the messages after serve has gone: never leave one behind.
                log.error("ingest: worker %s (pid %s) did not stop within %ss of SIGTERM; killing it",
                          proc.name, proc.pid, timeout)
                proc.kill()
                proc.join(timeout)

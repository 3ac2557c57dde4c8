"""Ingest's counters (Prometheus text on /metrics) and its rate-limited malformed-message log.

Kept apart from the worker because the HTTP app renders ``Metrics`` without running ingest.

``serve --ingest-workers N`` runs N-1 ingest workers in processes of their own
(server/ingest/pool.py); each counts into a block of shared memory (``shared_block``) that
the serve process adds to its own counters when it renders /metrics, so one scrape of one
``serve`` shows the sum of all its workers.  A block outlives its worker, so the totals stay
monotonic (as Prometheus counters must) when a worker dies and is started again."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("server.ingest")


class Metrics:
    """Counters for /metrics (Prometheus text).  Thread-safe, cheap."""

    HELP = {
        "ingest_received_total": "MQTT messages received by ingest",
        "ingest_malformed_total": "messages dropped because they broke the protocol",
        "ingest_ignored_total": "well-formed messages ingest does not store (cmd)",
        "ingest_events_stored_total": "device events stored",
        "ingest_duplicates_total": "events and alert transitions dropped as duplicates (same id)",
        "ingest_alerts_stored_total": "alert transitions stored",
        "ingest_heartbeats_total": "heartbeats stored",
        "ingest_status_total": "status messages applied",
        "ingest_batches_total": "store transactions written by ingest",
        "ingest_store_errors_total": "failed store writes (retried)",
        "ingest_refused_total": "alert transitions and evidence refused: they named another device's incident",
        "ingest_worker_restarts_total": "ingest worker processes that died and were started again",
    }

    # A worker process's shared block: these counters, then its gauges (``GAUGES``).
    GAUGES = ("queue_depth", "connected")

    def __init__(self, shared=None) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {name: 0 for name in self.HELP}
        self._shared = shared  # this worker process counts into its serve process's block
        self._index = {name: i for i, name in enumerate(self.HELP)}
        self.workers: list = []  # the blocks of this serve process's other worker processes

    @classmethod
    def shared_block(cls, ctx):
        """Shared memory for one worker process's counters and gauges (*ctx*: a
        multiprocessing context); give it to ``Metrics(shared=...)`` in the worker and to
        ``workers`` in the serve process."""
        return ctx.Array("q", len(cls.HELP) + len(cls.GAUGES))

    def inc(self, name: str, value: int = 1) -> None:
        if self._shared is not None:
            with self._shared.get_lock():
                self._shared[self._index[name]] += value
            return
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + value

    def get(self, name: str) -> int:
        """This worker's count (not its serve process's other workers: ``total`` is that)."""
        if self._shared is not None:
            with self._shared.get_lock():
                return self._shared[self._index[name]]
        with self._lock:
            return self.counters.get(name, 0)

    def set_gauges(self, queue_depth: int, connected: bool) -> None:
        """A worker process's gauges, for its serve process's /metrics."""
        if self._shared is not None:
            base = len(self.HELP)
            with self._shared.get_lock():
                self._shared[base], self._shared[base + 1] = int(queue_depth), int(connected)

    def total(self, name: str) -> int:
        """This process's count plus every worker process's."""
        return self._totals()[name]

    def worker_gauges(self) -> tuple[int, int]:
        """(queue depth, workers connected) summed over the worker processes."""
        depth = connected = 0
        base = len(self.HELP)
        for block in list(self.workers):
            with block.get_lock():
                depth += block[base]
                connected += block[base + 1]
        return depth, connected

    def _totals(self) -> dict[str, int]:
        with self._lock:
            counters = dict(self.counters)
        for block in list(self.workers):
            with block.get_lock():
                values = block[:len(self.HELP)]
            for name, value in zip(self.HELP, values):
                counters[name] = counters.get(name, 0) + value
        return counters

    def render(self, gauges: dict[str, tuple[float, str]] | None = None) -> str:
        lines = []
        counters = self._totals()
        for name, value in counters.items():
            lines += [f"# HELP classroom_{name} {self.HELP.get(name, name)}", f"# TYPE classroom_{name} counter",
                      f"classroom_{name} {value}"]
        for name, (value, help_text) in (gauges or {}).items():
            lines += [f"# HELP classroom_{name} {help_text}", f"# TYPE classroom_{name} gauge",
                      f"classroom_{name} {value}"]
        return "\n".join(lines) + "\n"


class LogLimiter:
    """At most *rate* malformed-message lines per second, then a count of what was skipped."""

    def __init__(self, rate: int = 20) -> None:
        self.rate = rate
        self.window = 0.0
        self.count = 0
        self.skipped = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.skipped:
                log.warning("ingest: %d more malformed messages not logged", self.skipped)
            self.window, self.count, self.skipped = now, 0, 0
        self.count += 1
        if self.count > self.rate:
            self.skipped += 1
            return False
        return True

"""Ingest's counters (Prometheus text on /metrics) and its rate-limited malformed-message log.

Kept apart from the worker because the HTTP app renders ``Metrics`` without running ingest."""

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
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {name: 0 for name in self.HELP}

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + value

    def get(self, name: str) -> int:
        with self._lock:
            return self.counters.get(name, 0)

    def render(self, gauges: dict[str, tuple[float, str]] | None = None) -> str:
        lines = []
        with self._lock:
            counters = dict(self.counters)
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

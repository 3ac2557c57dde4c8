"""Evidence: the domains this device resolved in the last N minutes (domains and times only).

When a pupil presses the button, the DSL gets the list of domains looked up just before
(DESIGN rule 2: never images, never page content).  Memory is bounded: one small entry
per distinct domain, at most ``max_domains`` of them, oldest evicted first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta

from ..protocol import now_ts


class Evidence:
    def __init__(self, max_domains: int = 2000, keep_minutes: int = 60):
        self.max_domains = max_domains
        self.keep = timedelta(minutes=keep_minutes)
        # domain -> [first_seen, last_seen, count, blocked]; ordered by last_seen
        self._entries: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()  # written by the query-log thread, read by the queue thread

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, domain: str, when: datetime, blocked: bool = False) -> None:
        with self._lock:
            entry = self._entries.get(domain)
            if entry is None or when - entry[1] > self.keep:
                entry = [when, when, 0, False]
                self._entries[domain] = entry
            entry[1] = when
            entry[2] += 1
            entry[3] = entry[3] or blocked
            self._entries.move_to_end(domain)
            while len(self._entries) > self.max_domains:
                self._entries.popitem(last=False)

    def mark_blocked(self, domain: str) -> None:
        """The query for *domain* was refused (its query line was already counted)."""
        with self._lock:
            entry = self._entries.get(domain)
            if entry is not None:
                entry[3] = True

    def recent(self, minutes: int, now: datetime) -> list[dict]:
        """[{"domain", "ts", "first_seen", "count", "blocked"}] seen in the last *minutes*, oldest first."""
        since = now - timedelta(minutes=minutes)
        with self._lock:
            rows = [(d, e[:]) for d, e in self._entries.items() if e[1] >= since]
        return [{"domain": d, "ts": now_ts(e[1]), "first_seen": now_ts(max(e[0], since)), "count": e[2],
                 "blocked": e[3]} for d, e in rows]

"""Who is watching each room right now: the live receivers the collector knows of.

The promise (DESIGN.md) is that a press is heard within a second by a live receiver for
its room, and that if nobody is watching the room the office and the DSL are told another
way.  So the collector keeps, per room, the receivers that are live:

* **Teacher clients** (``classroom-alerts``, a pager): each publishes, retained,
  ``{prefix}/{site}/{room}/_watch/{staff}`` = ``{"state": "watching"}`` for each of its rooms,
  with a Last Will ``gone`` (agent/protocol.py).  Ingest subscribes to them without sharing
  and hands each to ``Presence.listener`` in the order the broker sent them on that one
  connection, so the last one received is the truth.  (Payload times cannot order them: a
  Last Will carries the time its client connected, before its own ``watching``.)  They are
  kept in memory: the broker sends the retained ones again at every (re)connect, before
  the retained alerts (ingest subscribes to ``_watch`` first).
* **Dashboard tabs** showing a room's live view: its event stream records the viewer in the
  store (``room_viewers``) when it opens and at each keep-alive, so every collector process
  on the same database sees it; a tab counts for ``VIEWER_SECONDS`` after it was last seen
  (streams end every 20 s and reconnect at once, server/web/pages/rooms.py).

Rooms are keyed by ``(site, room)`` everywhere: a collector may serve several schools
(server/sites.py) and "5b" is a room in most of them, so a teacher watching one school's 5b
says nothing about another's.  Every reading names its site.

The office board (server/web/pages/office.py) is not a receiver for any room: it is what
shows the rooms that have none.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from .store import iso

log = logging.getLogger(__name__)

VIEWER_SECONDS = 45.0


class Presence:
    """Live receivers per ``(site, room)``.  ``listener`` goes on ingest's listeners."""

    def __init__(self, store, clock: Callable[[], datetime] | None = None,
                 viewer_seconds: float = VIEWER_SECONDS) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.viewer_seconds = viewer_seconds
        self._clients: dict[tuple[str, str], dict[str, dict]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ teacher clients

    def listener(self, kind: str, where, data: dict) -> None:
        """Ingest listener: a ``watch`` message (``where`` is an agent.protocol.StaffTopic)."""
        if kind != "watch":
            return
        key = (where.site, where.room)
        with self._lock:
            room = self._clients.setdefault(key, {})
            if data.get("state") == "watching":
                room[where.staff] = {"kind": "client", "who": where.staff, "client": data.get("client"),
                                     "since": data.get("ts")}
            else:
                room.pop(where.staff, None)
                if not room:
                    self._clients.pop(key, None)

    # ------------------------------------------------------------------ dashboard tabs

    def viewer_seen(self, site: str, room: str, username: str) -> None:
        """A dashboard tab of *username* is showing *room* now (blocking: call off the event loop)."""
        self.store.room_viewer_seen(site, room, username, iso(self.clock()))

    # ------------------------------------------------------------------ reading

    def receivers(self, site: str) -> dict[str, list[dict]]:
        """``{room: [receiver, ...]}`` of *site*'s rooms with a live receiver (one school's
        rooms only: room ids repeat across schools).  A receiver is ``{"kind":
        "client"|"dashboard", "who": staff, "client", "since"}``."""
        out: dict[str, list[dict]] = {}
        with self._lock:
            for (s, room), clients in self._clients.items():
                if s == site:
                    out.setdefault(room, []).extend(dict(c) for c in clients.values())
        since = iso(self.clock() - timedelta(seconds=self.viewer_seconds))
        for row in self.store.room_viewers(since, site=site):
            out.setdefault(row["room"], []).append({"kind": "dashboard", "who": row["username"], "client": None,
                                                    "since": row["seen_at"]})
        for receivers in out.values():
            receivers.sort(key=lambda r: (r["kind"], r["who"]))
        return out

    def is_watched(self, site: str, room: str) -> bool:
        with self._lock:
            if self._clients.get((site, room)):
                return True
        return bool(self.receivers(site).get(room))

"""In-process pub/sub that feeds the dashboard's server-sent events.

Ingest (any thread) calls ``broadcaster.publish(kind, data)`` once per alert transition
or device status change; every open SSE connection holds a small asyncio queue and is
woken directly, so an alert reaches the browser without anyone polling the database.
A slow or stuck browser only loses its own oldest messages (bounded queue); it never
blocks ingest.

One broadcaster per app (``app.state.live``); ``get_broadcaster(app)`` creates it on
first use so ingest and the web routes agree on the same object.  ``live_listener(app)``
is the ingest listener (``app.state.listeners``) that feeds it: alert transitions, device
status, receivers' presence (``presence``), a device's answer to a teacher's command
(``cmd_result``) and its lock changing (``lock``); the API adds the commands a teacher sends
(``command``, server/http/api/commands.py); the room pages' and the office board's event
streams (pages/rooms.py, pages/office.py) read it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

QUEUE_SIZE = 256


@dataclass(eq=False)
class Subscription:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    accept: Callable[[str, dict], bool]
    id: int = 0
    dropped: int = field(default=0)

    async def get(self, timeout: float | None = None):
        """Next (kind, data), or None after *timeout* seconds (for keep-alives)."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None


class Broadcaster:
    """Thread-safe fan-out from ingest threads to asyncio subscribers."""

    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.published = 0

    def subscribe(self, accept: Callable[[str, dict], bool] | None = None) -> Subscription:
        """Call from the event loop that will read the subscription."""
        sub = Subscription(asyncio.get_running_loop(), asyncio.Queue(QUEUE_SIZE), accept or (lambda k, d: True))
        with self._lock:
            sub.id = next(self._ids)
            self._subs[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.pop(sub.id, None)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, data: dict[str, Any]) -> int:
        """Hand (kind, data) to every interested subscriber; returns how many. Never raises."""
        self.published += 1
        with self._lock:
            subs = list(self._subs.values())
        delivered = 0
        for sub in subs:
            try:
                if not sub.accept(kind, data):
                    continue
                sub.loop.call_soon_threadsafe(_put, sub, (kind, data))
                delivered += 1
            except RuntimeError:  # loop closed: the connection is gone
                self.unsubscribe(sub)
            except Exception:  # noqa: BLE001 - a bad filter must not hurt ingest
                log.exception("live subscriber %s failed", sub.id)
        return delivered


def _put(sub: Subscription, item) -> None:
    if sub.queue.full():
        # Keep the newest: an old "raised" is less useful than the latest state.
        try:
            sub.queue.get_nowait()
            sub.dropped += 1
        except asyncio.QueueEmpty:
            pass
    sub.queue.put_nowait(item)


def get_broadcaster(app) -> Broadcaster:
    """The app's broadcaster, created on first use."""
    live = getattr(app.state, "live", None)
    if live is None:
        live = app.state.live = Broadcaster()
    return live


def live_listener(app):
    """The ingest listener ``(kind, topic, data)`` that feeds the broadcaster."""
    live = get_broadcaster(app)

    def listener(kind: str, where, data: dict) -> None:
        if kind == "alert":
            live.publish("alert", {k: data.get(k) for k in ("id", "state", "room", "device", "seat", "ts", "by")})
        elif kind == "status":
            live.publish("status", {"device": where.device, "room": where.room, "state": data.get("state"),
                                    "ts": data.get("ts")})
        elif kind == "watch":  # a teacher client came or went (server/presence.py): the office board
            live.publish("presence", {"room": where.room, "who": where.staff, "state": data.get("state"),
                                      "kind": "client"})
        elif kind == "event" and data.get("type") == "cmd_result":  # the room page: did it obey?
            live.publish("cmd_result", {k: data.get(k) for k in ("site", "room", "device", "cmd_id", "cmd", "result",
                                                                 "error", "ts")})
        elif kind == "event" and data.get("type") in ("lock", "unlock"):
            live.publish("lock", {"site": data.get("site"), "room": data.get("room"), "device": data.get("device"),
                                  "locked": data["type"] == "lock", "reason": data.get("reason"),
                                  "by": data.get("by"), "until": data.get("until") if data["type"] == "lock" else None,
                                  "ts": data.get("ts")})

    listener.is_live_feed = True  # type: ignore[attr-defined]
    return listener

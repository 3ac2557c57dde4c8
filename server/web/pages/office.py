"""The office board: every room of the school at once, live, for the school office, the DSL and admin.

Each room shows its open alerts (seat, state, how long ago it was pressed, who is coming)
and its live receivers (server/presence.py: teacher clients and dashboard tabs showing
that room).  A room with none is marked: a press there is heard by nobody in the room's
own chain, so during school hours the collector also e-mails the office and the DSL at once
(server/notify/).  The board itself is not a receiver for any room; it is how the office
sees the rooms that have none.

Live: ``/office/events`` (server-sent events) starts with the whole board, then sends each
alert transition of any room as ingest stores it, a room's receivers whenever a teacher
client comes or goes or a dashboard tab opens, and the whole board again at each keep-alive
(a tab closed without a word drops out by time, not by a message).  Ages are counted in the
browser from the press time and the server's clock.

One school's board: the rooms of the school the session acts in (its live tree), its
alerts and its receivers, keyed by (site, room) like everything about a room (room ids
repeat across the schools of one collector); the stream passes on that school's alerts
and presence only.  The trust level has no board: it sees each school's totals (open
alerts, rooms nobody is watching) on /trust (server/http/api/sites.py), never an alert's
room or seat.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ...http import state
from ...incidents import is_live_alert
from ...http.auth import User
from ...notify.notifier import in_school_hours
from ...store import iso
from ..live import get_broadcaster
from .base import page, render

PUBLIC: frozenset = frozenset()

KEEPALIVE_SECONDS = 10.0
STREAM_SECONDS = 20.0  # as the room view: the browser reconnects at once (pages/rooms.py says why)
OPEN_ALERT_HOURS = 24


def _coming(timeline: list[dict]) -> str | None:
    """Who acknowledged the alert (is on their way), from its timeline."""
    return next((t["by"] for t in reversed(timeline) if t["state"] == "acknowledged" and t.get("by")), None)


def board_state(store, tree, presence, now: datetime | None = None) -> dict:
    """Every room of one school's live *tree* with its open alerts and live receivers."""
    now = now or datetime.now(timezone.utc)
    if tree is None:
        return {"now": iso(now), "in_school_hours": False, "rooms": []}
    site = tree.site.site
    receivers = presence.receivers(site)
    since = iso(now - timedelta(hours=OPEN_ALERT_HOURS))
    alerts: dict[str, list[dict]] = {}
    for row in store.list_incidents(site=site, since=since, limit=500):
        if not is_live_alert(row["alert_state"]):
            continue  # cleared, or a concern staff logged by hand
        alerts.setdefault(row["room"], []).append(
            {"id": row["id"], "state": row["alert_state"], "room": row["room"], "device": row["device"],
             "seat": row.get("seat"), "ts": row["raised_at"], "by": _coming(row.get("timeline") or [])})
    rooms = []
    for room_id, room in sorted(tree.rooms.items()):
        here = receivers.get(room_id, [])
        rooms.append({"room": room_id, "name": room.name or room_id, "receivers": here, "watched": bool(here),
                      "alerts": alerts.get(room_id, [])})
    return {"now": iso(now), "in_school_hours": in_school_hours(tree, None, now), "rooms": rooms}


def _sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    board_view = page("office", "dsl", "admin")

    @r.get("/office")
    def office(request: Request, user: User = Depends(board_view)):
        board = board_state(state.store(request), state.tree(request), state.presence(request))
        return render(request, "office.html", board=board, board_json=json.dumps(board, separators=(",", ":")))

    @r.get("/office/events")
    async def office_events(request: Request, user: User = Depends(board_view)):
        live = get_broadcaster(request.app)
        site = user.site
        # This school's alerts and receivers only: another school's "5b" is another room.
        sub = live.subscribe(lambda kind, data: kind in ("alert", "presence") and data.get("site") == site)
        store, presence = state.store(request), state.presence(request)

        def snapshot() -> dict:
            return board_state(store, state.tree(request), presence)

        def one_room(room: str) -> dict:
            here = presence.receivers(site).get(room, [])
            return {"room": room, "receivers": here, "watched": bool(here)}

        async def stream():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STREAM_SECONDS
            try:
                yield "retry: 500\n\n"
                # Subscribed first, then the board: a transition in between comes twice
                # (the same id and state), never not at all.
                yield _sse("board", await asyncio.to_thread(snapshot))
                while (left := deadline - loop.time()) > 0:
                    item = await sub.get(min(KEEPALIVE_SECONDS, left))
                    if item is None:
                        if await request.is_disconnected():
                            break
                        yield _sse("board", await asyncio.to_thread(snapshot))
                        continue
                    kind, data = item
                    if kind == "alert":
                        yield _sse("alert", data)
                    elif data.get("room"):
                        yield _sse("room", await asyncio.to_thread(one_room, data["room"]))
            finally:
                live.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return r
